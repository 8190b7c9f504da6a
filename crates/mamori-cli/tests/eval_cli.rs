//! `mamori eval` through the binary (issue #7): a tiny configuration (digits, one attacker,
//! three policies) runs in process and over HTTP through a live gateway, writes its reports,
//! and both transports reach the same outcome in every cell; a bad configuration is an error
//! naming the key.

mod common;

use common::{mamori_with_data, ok};
use std::path::Path;

fn eval(home: &Path, config: &Path, out: &Path, http: bool) -> std::process::Output {
    let mut c = mamori_with_data(home);
    c.arg("eval")
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .arg("--quiet");
    if http {
        c.arg("--http");
    }
    c.output().unwrap()
}

fn cells(out: &Path) -> Vec<serde_json::Value> {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    r["cells"].as_array().unwrap().clone()
}

#[test]
fn eval_runs_the_matrix_in_process_and_over_http_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/eval-tiny.toml");
    let (a, b) = (tmp.path().join("in-process"), tmp.path().join("http"));
    ok(eval(&home, &config, &a, false));
    ok(eval(&home, &config, &b, true));
    for dir in [&a, &b] {
        for f in [
            "report.md",
            "report.html",
            "report.json",
            "fidelity-random.png",
        ] {
            assert!(dir.join(f).is_file(), "{}/{f} missing", dir.display());
        }
    }
    let (ca, cb) = (cells(&a), cells(&b));
    let policies: Vec<&str> = ca.iter().map(|c| c["policy"].as_str().unwrap()).collect();
    assert_eq!(policies, ["none", "gaussian_noise", "default"]);
    for (x, y) in ca.iter().zip(&cb) {
        for k in [
            "policy",
            "queries",
            "fidelity",
            "substitute_accuracy",
            "first_alarm",
            "blocked_at",
        ] {
            assert_eq!(x[k], y[k], "{k}: {x} vs {y}");
        }
    }
    // Without protection benign users lose nothing; noise costs them something.
    let cost = |p: &str| {
        ca.iter().find(|c| c["policy"] == p).unwrap()["benign_accuracy_cost"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(cost("none"), 0.0);
    assert!(cost("gaussian_noise") > 0.0);
    // A configuration naming an unknown policy is refused with the key.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("\"gaussian_noise\"", "\"no_such_policy\""),
    )
    .unwrap();
    let out = eval(&home, &bad, &tmp.path().join("bad-out"), false);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no_such_policy"), "{err}");
}
