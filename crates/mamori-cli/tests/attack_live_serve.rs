//! `mamori attack extract` through the binary against a live `mamori serve` (issue #4: attacks
//! run unchanged against a running gateway): a softmax victim trained on `digits` with
//! `mamori train`, served by `mamori serve`, stolen over HTTP with an API key (Knockoff Nets
//! with natural digits); the JSON report has the keys, and the gateway's audit log
//! counts exactly the samples the attack and its measurement sent.

mod common;

use common::{create_key, mamori, mamori_with_data, ok, start_serve_with, stop};
use std::path::Path;

fn run(home: &Path, args: &[&str]) -> std::process::Output {
    mamori_with_data(home).args(args).output().unwrap()
}

#[test]
fn the_attack_cli_steals_from_a_live_gateway_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let victim = tmp.path().join("victim");
    let v = victim.to_str().unwrap();
    ok(run(
        &home,
        &[
            "train",
            "--dataset",
            "digits",
            "--arch",
            "softmax",
            "--epochs",
            "20",
            "--name",
            "digits-victim",
            "--out",
            v,
            "--quiet",
        ],
    ));
    // Fast tiers: limits are not what this test is about.
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join("mamori.toml"),
        "default_tier = \"full\"\n[tiers.full]\ndisclosure = \"probabilities\"\n\
         rate_per_s = 1000000.0\nburst = 1000000\ndaily_quota = 100000000\n",
    )
    .unwrap();
    let key = create_key(&home, "thief");
    let (child, url) = start_serve_with(
        &home,
        &[
            "--allow-unsigned".into(),
            "--policy".into(),
            "none".into(),
            "--model".into(),
            victim.clone().into_os_string(),
        ],
    );
    let report = tmp.path().join("steal.json");
    let out = run(
        &home,
        &[
            "attack",
            "extract",
            "--target",
            &format!("{url}/v2/models/digits-victim"),
            "--api-key",
            &key,
            "--strategy",
            "knockoff",
            "--query-data",
            "digits",
            "--budget",
            "600",
            "--arch",
            "softmax",
            "--epochs",
            "60",
            "--patience",
            "0",
            "--eval-data",
            "digits",
            "--uniform-eval",
            "100",
            "--json",
            report.to_str().unwrap(),
            "--quiet",
        ],
    );
    stop(child);
    let stdout = ok(out);
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let row = if r.is_array() { &r[0] } else { &r };
    let row = row.get("points").and_then(|p| p.get(0)).unwrap_or(row);
    let queries = row["queries"].as_u64().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(queries, 600, "{r}");
    let acc = row["substitute_accuracy"].as_f64().unwrap();
    let fid = row["fidelity"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&acc) && (0.0..=1.0).contains(&fid),
        "{r}"
    );
    // A softmax copy of a softmax victim, from its probabilities on natural digits, agrees
    // with it on most test digits.
    assert!(fid > 0.75, "{r}");
    // The gateway answered exactly those samples to the thief, plus the measurement's own
    // queries (the victim's answers on the 451 digits test images and on 100 uniform inputs).
    let lines = ok(mamori(&home)
        .args(["audit", "export", "--client", "thief"])
        .output()
        .unwrap());
    let answered: u64 = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["status"] == 200)
        .map(|e| e["batch"].as_u64().unwrap())
        .sum();
    assert_eq!(answered, 600 + 451 + 100);
}
