//! DAWN turned on by the gateway configuration (`[watermark]` in `mamori.toml`) and by
//! `mamori serve --watermark dawn`, through the binary (issue #6's interface note): the log
//! says so, marked answers carry the ledger's watermark label, the model's own ledger fills;
//! a bad rate is refused naming the key; `kind = "none"` turns the policy's DAWN off and the
//! command line wins over it.

mod common;

use common::{
    create_key, infer_json, output_data, read_json, serve_refuses, start_serve_logged, stop,
    tiny_model,
};
use mamori_defense::dawn::DawnPaths;
use mamori_defense::{Ledger, SecretKey};
use std::ffi::OsString;
use std::path::Path;

fn serve_args(model_dir: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "--allow-unsigned".into(),
        "--model".into(),
        model_dir.into(),
    ];
    a.extend(extra.iter().map(OsString::from));
    a
}

/// Sample `k` of a deterministic stream in [0, 1].
fn sample(k: usize) -> Vec<f32> {
    (0..16)
        .map(|i| ((i * 37 + k * 101) % 997) as f32 / 997.0)
        .collect()
}

/// The probabilities `wm-mlp` at `url` answers for `rows` (3 per row).
fn infer_rows(url: &str, key: &str, rows: &[Vec<f32>]) -> Vec<f32> {
    output_data(&infer_json(url, "wm-mlp", key, rows))
        .into_iter()
        .map(|p| p as f32)
        .collect()
}

#[test]
fn the_gateway_config_turns_dawn_on_and_a_bad_rate_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let model_dir = tmp.path().join("model");
    tiny_model(&model_dir, "wm-mlp");
    let key = create_key(&home, "alice");

    // A bad rate stops `serve`, naming the key.
    std::fs::write(
        home.join("mamori.toml"),
        "[watermark]\nkind = \"dawn\"\nrate = 1.5\n",
    )
    .unwrap();
    let err = serve_refuses(&home, &serve_args(&model_dir, &["--policy", "none"]));
    assert!(
        err.contains("watermark.rate") && err.contains("1.5"),
        "{err}"
    );

    // DAWN from the configuration, at a high test rate, on top of the `none` policy.
    std::fs::write(
        home.join("mamori.toml"),
        "[watermark]\nkind = \"dawn\"\nrate = 0.4\nfingerprint = 0.0\n",
    )
    .unwrap();
    let (child, url, log) =
        start_serve_logged(&home, &serve_args(&model_dir, &["--policy", "none"]));
    let log = log.join("\n");
    assert!(
        log.contains("DAWN watermarking from [watermark] in the gateway configuration: rate 0.4"),
        "{log}"
    );
    assert!(
        log.contains("DAWN watermarking on; one ledger per model"),
        "{log}"
    );
    let mut answers = Vec::new();
    for batch in 0..5 {
        let rows: Vec<Vec<f32>> = (0..20).map(|i| sample(batch * 20 + i)).collect();
        let probs = infer_rows(&url, &key, &rows);
        for (row, p) in rows.into_iter().zip(probs.chunks(3)) {
            answers.push((row, p.to_vec()));
        }
    }
    stop(child);

    // The model's own ledger holds the marks, and each marked answer carried its label.
    let paths = DawnPaths::for_model(&home, "wm-mlp");
    let ledger = Ledger::open(&paths.ledger, &SecretKey::load(&paths.ledger_key).unwrap()).unwrap();
    let records = ledger.records();
    // 100 queries at r = 0.4: 40 expected; below 20 is a 1e-5 event.
    assert!(
        records.len() >= 20 && records.len() <= 65,
        "{}",
        records.len()
    );
    assert!(!DawnPaths::in_home(&home).ledger.exists());
    for r in records {
        assert_eq!(r.model.as_deref(), Some("wm-mlp"));
        let (_, p) = answers
            .iter()
            .find(|(x, _)| *x == r.input)
            .expect("every record is a query we sent");
        let top = (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        assert_eq!(top, r.given_label, "{p:?}");
        assert_ne!(r.given_label, r.true_label);
    }
}

#[test]
fn kind_none_turns_the_policy_dawn_off_and_the_watermark_flag_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let model_dir = tmp.path().join("model");
    tiny_model(&model_dir, "wm-mlp");
    create_key(&home, "alice");
    std::fs::write(home.join("mamori.toml"), "[watermark]\nkind = \"none\"\n").unwrap();
    let ledger = DawnPaths::for_model(&home, "wm-mlp").ledger;

    let (child, _, log) = start_serve_logged(&home, &serve_args(&model_dir, &["--policy", "dawn"]));
    let log = log.join("\n");
    assert!(!log.contains("DAWN watermarking"), "{log}");
    stop(child);
    assert!(!ledger.exists());

    let (child, _, log) = start_serve_logged(
        &home,
        &serve_args(&model_dir, &["--policy", "none", "--watermark", "dawn"]),
    );
    let log = log.join("\n");
    assert!(
        log.contains("DAWN watermarking from --watermark dawn: rate 0.005"),
        "{log}"
    );
    stop(child);
    assert!(ledger.is_file());
}

/// `mamori watermark verify --suspect http://…` (issue #6: "--suspect PATH|URL"): the
/// watermarked gateway itself, queried over HTTP on its ledger's inputs, is convicted; the same
/// model served by a gateway without DAWN is not.
#[test]
fn verify_queries_a_suspect_over_http() {
    use common::{mamori, ok};
    let tmp = tempfile::tempdir().unwrap();
    let (home, other) = (tmp.path().join("home"), tmp.path().join("other"));
    let model_dir = tmp.path().join("model");
    tiny_model(&model_dir, "wm-mlp");
    let key = create_key(&home, "alice");
    let other_key = create_key(&other, "suspect-owner");
    std::fs::write(
        home.join("mamori.toml"),
        "[watermark]\nkind = \"dawn\"\nrate = 0.4\nfingerprint = 0.0\n",
    )
    .unwrap();
    let (child, url, _) = start_serve_logged(&home, &serve_args(&model_dir, &["--policy", "none"]));
    let rows: Vec<Vec<f32>> = (0..100).map(sample).collect();
    infer_rows(&url, &key, &rows);
    let verify = |suspect_url: &str, api_key: &str, out: &Path| {
        mamori(&home)
            .args(["watermark", "verify", "--model", "wm-mlp", "--suspect"])
            .arg(format!("{suspect_url}/v2/models/wm-mlp"))
            .args(["--api-key", api_key, "--json"])
            .arg(out)
            .output()
            .unwrap()
    };
    // The watermarked gateway answers its marks with their watermark labels.
    let json_a = tmp.path().join("a.json");
    let out = verify(&url, &key, &json_a);
    stop(child);
    ok(out);
    let a = read_json(&json_a);
    assert!(a["queried"].as_u64().unwrap() >= 20, "{a}");
    assert_eq!(a["top1"]["matches"], a["queried"], "{a}");
    assert_ne!(a["verdict"], "not_found", "{a}");
    assert!(a["p_value"].as_f64().unwrap() < 1e-6, "{a}");
    // The same model behind a gateway without DAWN gives no watermark labels.
    let (child, url_b, _) =
        start_serve_logged(&other, &serve_args(&model_dir, &["--policy", "none"]));
    let json_b = tmp.path().join("b.json");
    let out = verify(&url_b, &other_key, &json_b);
    stop(child);
    ok(out);
    let b = read_json(&json_b);
    assert_eq!(b["queried"], a["queried"]);
    assert_eq!(b["top1"]["matches"], 0, "{b}");
    assert_eq!(b["verdict"], "not_found", "{b}");
    assert!(b["p_value"].as_f64().unwrap() > 0.01, "{b}");
}
