//! `mamori demo --quick` end to end through the binary (issue #7): it runs on the embedded
//! defaults with the shared Fashion-MNIST/MNIST data, prints its outcome, and the printed
//! numbers are the report's (JSON and Markdown), with the plots beside them.

mod common;

use common::{mamori_with_data, ok};

#[test]
fn the_quick_demo_runs_and_prints_what_its_report_says() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("report");
    let stdout = ok(mamori_with_data(&tmp.path().join("home"))
        .args(["demo", "--quick", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap());
    assert!(stdout.contains("== Outcome"), "{stdout}");
    for f in [
        "report.md",
        "report.html",
        "report.json",
        "fidelity-knockoff.png",
        "detection-delay.png",
        "benign-cost.png",
    ] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    let cells = r["cells"].as_array().unwrap();
    let cell = |p: &str| cells.iter().find(|c| c["policy"] == p).unwrap();
    let (guarded, open) = (cell("default"), cell("none"));
    let pct = |v: &serde_json::Value| format!("{:.1}%", v.as_f64().unwrap() * 100.0);
    // The printed copy line carries both cells' fidelity, as the report has them.
    let copy = stdout.lines().find(|l| l.starts_with("copy:")).unwrap();
    assert!(
        copy.contains(&pct(&guarded["fidelity"])) && copy.contains(&pct(&open["fidelity"])),
        "{copy} vs {guarded} / {open}"
    );
    // The printed detection is the guarded cell's.
    let flagged = stdout.lines().find(|l| l.starts_with("flagged:")).unwrap();
    match guarded["first_alarm"].as_u64() {
        Some(q) => assert!(flagged.contains(&format!("after {q} queries")), "{flagged}"),
        None => assert!(flagged.contains("not"), "{flagged}"),
    }
    // The unprotected gateway never acts; the report's comparison table says the same.
    assert!(
        open["first_alarm"].is_null() && open["blocked_at"].is_null(),
        "{open}"
    );
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(
        md.contains("## Comparison by attack type") && md.contains("| knockoff |"),
        "{md}"
    );
}
