//! `mamori detectors` (issue #5): the catalogue as a table and as JSON, one row per detector
//! of the default set, each with its paper, target, stage and data needs.

mod common;

use common::{mamori, ok};

#[test]
fn the_catalogue_lists_every_detector_with_its_taxonomy() {
    let home = tempfile::tempdir().unwrap();
    let json = ok(mamori(home.path())
        .args(["detectors", "--json"])
        .output()
        .unwrap());
    let cat: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = cat.iter().map(|d| d["name"].as_str().unwrap()).collect();
    for want in ["prada", "knn", "blacklight", "ood", "hoda", "rate"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for d in &cat {
        assert!(!d["paper"].as_str().unwrap().is_empty(), "{d}");
        assert!(!d["targets"].as_str().unwrap().is_empty(), "{d}");
        assert!(!d["needs"].as_array().unwrap().is_empty(), "{d}");
        assert!(d["stage"].is_string(), "{d}");
    }
    let prada = cat.iter().find(|d| d["name"] == "prada").unwrap();
    assert!(
        prada["paper"].as_str().unwrap().contains("Juuti"),
        "{prada}"
    );
    let table = ok(mamori(home.path()).arg("detectors").output().unwrap());
    let lines: Vec<&str> = table.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines[0].starts_with("name") && lines[0].contains("stage"),
        "{table}"
    );
    for n in &names {
        assert!(
            lines.iter().any(|l| l.starts_with(n)),
            "{n} not in the table:\n{table}"
        );
    }
    assert!(
        table.contains("precursor") || table.contains("symptom"),
        "{table}"
    );
}
