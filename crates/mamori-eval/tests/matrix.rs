//! The matrix runner on a tiny configuration: real properties of real runs.

use mamori_eval::runner::CellResult;
use mamori_eval::{EvalConfig, EvalResults, RunOptions, Transport};
use std::path::Path;

const TINY: &str = r#"
seed = 3
[victim]
dataset = "fashion-mnist"
arch = { kind = "mlp", hidden = [32] }
epochs = 2
train_limit = 3000
eval_samples = 500
uniform_samples = 200
[substitute]
arch = { kind = "mlp", hidden = [32] }
epochs = 4
query_batch = 50
[calibration]
clients = 30
queries_per_client = 100
max_train = 1000
tail_clients = 200
[benign]
replay_clients = 2
other_clients = 1
other_dataset = "mnist"
bursty_clients = 1
bursty_working_set = 10
queries_per_client = 100
batch = 10
[[attacks]]
strategy = "random"
budget = 800
[[attacks]]
strategy = "knockoff"
budget = 800
query_data = "mnist"
query_limit = 2000
[matrix]
policies = ["none", "label_only", "detect", "dawn"]
checkpoints = [0.25, 1.0]
"#;

fn run(
    transport: Transport,
    policies: Option<&[&str]>,
    attacks: usize,
) -> (EvalResults, tempfile::TempDir) {
    let mut cfg = EvalConfig::from_toml(TINY, "tiny.toml").unwrap();
    if let Some(p) = policies {
        cfg.matrix.policies = p.iter().map(|s| s.to_string()).collect();
    }
    cfg.attacks.truncate(attacks);
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        data_dir: mamori_data::resolve_data_dir(None),
        out_dir: dir.path().join("out"),
        cache_dir: dir.path().join("cache"),
        transport,
        progress: false,
        attack_progress: false,
    };
    (mamori_eval::run(&cfg, &opts).unwrap(), dir)
}

fn cell<'a>(r: &'a EvalResults, attack: &str, policy: &str) -> &'a CellResult {
    r.cells
        .iter()
        .find(|c| c.attack == attack && c.policy == policy)
        .unwrap_or_else(|| panic!("no cell {attack} × {policy}"))
}

#[test]
fn tiny_matrix_in_process_measures_real_differences_and_writes_reports() {
    let (r, dir) = run(Transport::InProcess, None, 2);
    assert_eq!(r.cells.len(), 8);
    assert!(
        r.victim.accuracy > 0.6,
        "victim accuracy {}",
        r.victim.accuracy
    );
    let open = cell(&r, "knockoff", "none");
    // Unprotected Knockoff copies far better than chance (10 classes).
    assert!(open.fidelity > 0.3, "fidelity {}", open.fidelity);
    assert_eq!(open.queries, 800);
    assert!(open.first_alarm.is_none() && open.blocked_at.is_none());
    assert!(open.watermark.is_none());
    // Detection + escalation: the noise attacker alarms (OOD/HODA suspicion from query 100) and
    // is stopped once the volume detector corroborates (600 queries a minute, which the
    // in-process stream exceeds) — before its 800-query budget, so its copy is worse than the
    // unprotected one.
    let det = cell(&r, "random", "detect");
    assert!(det.first_alarm.is_some(), "{det:?}");
    assert!(det.blocked_at.is_some(), "{det:?}");
    assert!(det.queries < 800);
    let det_k = cell(&r, "knockoff", "detect");
    assert!(
        det_k.fidelity < open.fidelity,
        "detect {} vs none {}",
        det_k.fidelity,
        open.fidelity
    );
    // Benign replay clients are never flagged under the detecting policy, nor refused.
    for b in det
        .benign
        .iter()
        .filter(|b| b.client.starts_with("benign-replay"))
    {
        assert!(!b.alarmed, "{b:?}");
        assert_eq!(b.refused, 0);
    }
    // The client sending another dataset (MNIST to the Fashion victim) may raise OOD/HODA
    // suspicion, which the policy does not act on: not a false alarm.
    for b in det
        .benign
        .iter()
        .filter(|b| b.client.starts_with("benign-other"))
    {
        assert!(
            b.alarms.iter().all(|(d, _)| d == "ood" || d == "hoda"),
            "{b:?}"
        );
        assert!(!b.alarmed, "{b:?}");
    }
    assert_eq!(
        det.benign_false_alarms,
        det.benign.iter().filter(|b| b.alarmed).count()
    );
    // Without protection, benign clients get exactly the victim's answers.
    for b in &open.benign {
        assert_eq!(b.agreement, 1.0, "{b:?}");
        assert_eq!(b.accuracy, b.baseline_accuracy);
    }
    // Label-only keeps the labels: no benign cost.
    assert!(cell(&r, "random", "label_only").benign_accuracy_cost.abs() < 1e-9);
    // DAWN marks some answers and verification runs on them.
    let wm = cell(&r, "knockoff", "dawn").watermark.clone().unwrap();
    assert!(wm.p_value > 0.0 && wm.p_value <= 1.0);
    // Curves end at the harvest.
    assert_eq!(open.curve.last().unwrap().queries, 800);
    assert_eq!(r.comparison.len(), 2);
    assert_eq!(r.comparison[1].detection_runs, 1);

    // Reports.
    let out = dir.path().join("out");
    let files = mamori_eval::report::write(&r, &out, "test").unwrap();
    let back: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.json).unwrap()).unwrap();
    assert_eq!(back["cells"].as_array().unwrap().len(), 8);
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    assert!(md.contains("| knockoff |") && md.contains("detection-delay.png"));
    let html = std::fs::read_to_string(&files.html).unwrap();
    assert!(html.contains("data:image/png;base64,") && html.ends_with("</html>\n"));
    assert!(!html.contains("src=\"fidelity-"), "plots must be inline");
    for p in &files.plots {
        let bytes = std::fs::read(p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{}", p.display());
    }
    assert!(Path::new(&files.html).is_file());
}

#[test]
fn tiny_matrix_over_http_goes_through_a_live_gateway() {
    let (r, _dir) = run(Transport::Http, Some(&["none", "detect"]), 1);
    assert_eq!(r.cells.len(), 2);
    let open = cell(&r, "random", "none");
    assert_eq!(open.queries, 800);
    let det = cell(&r, "random", "detect");
    assert!(
        det.first_alarm.is_some() && det.blocked_at.is_some(),
        "{det:?}"
    );
    for b in det
        .benign
        .iter()
        .filter(|b| b.client.starts_with("benign-replay"))
    {
        assert!(!b.alarmed);
    }
}
