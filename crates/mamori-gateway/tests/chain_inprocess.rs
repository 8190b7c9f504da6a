//! The chain in-process (no HTTP): ChainOracle, detectors per client and per group, the
//! escalation policy's actions, postprocessors by tier, watermark ledger, model isolation of
//! detector state, and the upstream proxy.

mod common;

use common::*;
use mamori_core::{
    Action, Disclosure, Oracle, OracleError, PostContext, Postprocessor, Tensor, Watermark,
    WatermarkMark,
};
use mamori_gateway::{
    BlockingServer, Chain, ChainBuilder, ChainMode, ChainOracle, GatewayConfig, KeyStore,
    ModelSpec, OnAlarm, UpstreamModel,
};
use std::sync::Arc;

/// Test-only postprocessor: rounds to one decimal and renormalises.
struct RoundOne;

impl Postprocessor for RoundOne {
    fn name(&self) -> String {
        "round1".into()
    }
    fn keeps_top1(&self) -> bool {
        true
    }
    fn apply(&self, _ctx: &PostContext<'_>, probs: &mut [f32]) {
        for p in probs.iter_mut() {
            *p = (*p * 10.0).round() / 10.0;
        }
        let s: f32 = probs.iter().sum();
        if s > 0.0 {
            for p in probs.iter_mut() {
                *p /= s;
            }
        }
    }
}

/// Test-only watermark: answers `(label + 1) % c` for inputs whose first value is ≥ 0.5.
struct ShiftMark;

impl Watermark for ShiftMark {
    fn name(&self) -> String {
        "shift".into()
    }
    fn apply(&self, input: &[f32], probs: &mut [f32]) -> Option<WatermarkMark> {
        if input[0] < 0.5 {
            return None;
        }
        let t = Tensor::new(vec![1, probs.len()], probs.to_vec())
            .ok()?
            .argmax_rows()[0];
        let g = (t + 1) % probs.len();
        probs.swap(t, g);
        Some(WatermarkMark {
            input_sha256: mamori_core::hash::sha256_f32(input),
            true_label: t,
            given_label: g,
        })
    }
}

fn batch(ks: &[usize]) -> Tensor {
    let rows: Vec<Vec<f32>> = ks.iter().map(|k| sample(*k)).collect();
    Tensor::from_rows(&SHAPE, rows.iter().map(|r| r.as_slice())).unwrap()
}

fn chain_with(spec: ModelSpec, cfg: GatewayConfig) -> (Arc<Chain>, Arc<KeyStore>) {
    let keys = Arc::new(KeyStore::in_memory());
    let registry: mamori_gateway::PostprocessorRegistry = Arc::new(|n: &str| match n {
        "round1" => Some(Arc::new(RoundOne) as Arc<dyn Postprocessor>),
        _ => None,
    });
    let chain = ChainBuilder::new(cfg)
        .keys(keys.clone())
        .postprocessors(registry)
        .model(spec)
        .build()
        .unwrap();
    (Arc::new(chain), keys)
}

fn spec_with(threshold: u64, action: Action) -> ModelSpec {
    let mut s = lin_spec();
    s.detectors = vec![Arc::new(CountDetector { threshold })];
    s.policy = Box::new(OnAlarm(action));
    s
}

#[test]
fn chain_oracle_answers_like_the_model_and_counts_queries() {
    let (chain, keys) = chain_with(lin_spec(), GatewayConfig::default());
    let (_, k) = keys.create("eval", None, "full", &[]).unwrap();
    let mut o = ChainOracle::new(chain.clone(), &k, None)
        .unwrap()
        .with_budget(5);
    assert_eq!(o.input_shape(), SHAPE.to_vec());
    assert_eq!(o.num_classes(), CLASSES);
    let x = batch(&[1, 2, 3]);
    let a = o.query(&x).unwrap();
    let want = expected_probs("lin", &[sample(1), sample(2), sample(3)]);
    assert_eq!(a.disclosure, Disclosure::Probabilities);
    assert_eq!(a.labels, want.argmax_rows());
    for (p, q) in a.probs.data().iter().zip(want.data()) {
        assert!((p - q).abs() < 1e-6);
    }
    assert_eq!(o.queries_used(), 3);
    assert!(matches!(
        o.query(&x),
        Err(OracleError::BudgetExhausted { .. })
    ));
    assert_eq!(o.remaining(), Some(2));
    // Stage list is the documented one.
    assert_eq!(chain.stage_names().len(), 8);
    // Label tier via the oracle: one-hot answers.
    let (_, kl) = keys.create("eval2", None, "label", &[]).unwrap();
    let mut o = ChainOracle::new(chain, &kl, Some("lin")).unwrap();
    let a = o.query(&batch(&[4])).unwrap();
    assert_eq!(a.disclosure, Disclosure::Label);
    assert_eq!(a.probs.data().iter().filter(|v| **v == 1.0).count(), 1);
    assert_eq!(a.probs.data().iter().sum::<f32>(), 1.0);
}

#[test]
fn invalid_tensor_input_is_refused_in_process() {
    let (chain, keys) = chain_with(lin_spec(), GatewayConfig::default());
    let (_, k) = keys.create("eval", None, "full", &[]).unwrap();
    let mut o = ChainOracle::new(chain, &k, None).unwrap();
    let mut x = batch(&[1]);
    x.data_mut()[0] = f32::NAN;
    let e = o.query(&x).unwrap_err().to_string();
    assert!(e.contains("not finite"), "{e}");
    x.data_mut()[0] = 2.0;
    assert!(o.query(&x).unwrap_err().to_string().contains("outside"));
    let bad = Tensor::zeros(vec![1, 16]);
    assert!(o
        .query(&bad)
        .unwrap_err()
        .to_string()
        .contains("per-sample shape"));
}

#[test]
fn block_policy_refuses_and_records_alert_and_block() {
    let (chain, keys) = chain_with(spec_with(5, Action::Block), GatewayConfig::default());
    let (_, k) = keys.create("thief", None, "full", &[]).unwrap();
    let (_, kb) = keys.create("benign", None, "full", &[]).unwrap();
    let mut thief = ChainOracle::new(chain.clone(), &k, None).unwrap();
    let mut benign = ChainOracle::new(chain.clone(), &kb, None).unwrap();
    thief.query(&batch(&[1, 2, 3, 4])).unwrap();
    // The 5th query trips the alarm: this answer is withheld and the client blocked.
    match thief.query(&batch(&[5])) {
        Err(OracleError::Refused(m)) => assert!(m.contains("thief is blocked")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        thief.query(&batch(&[6])),
        Err(OracleError::Refused(_))
    ));
    // Per-client state: the benign client is unaffected.
    benign.query(&batch(&[1, 2])).unwrap();
    chain.flush_audit();
    let (alerts, blocks) = chain
        .shared()
        .audit
        .with_store(|s| (s.alerts().unwrap(), s.blocks().unwrap()));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].client, "thief");
    assert_eq!(alerts[0].detector, "count");
    assert_eq!(alerts[0].queries, 5);
    assert_eq!(alerts[0].action, "block");
    assert!((alerts[0].score - 1.0).abs() < 1e-9);
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].by, "policy");
    assert_eq!(chain.blocked()[0].1, "thief");
    // Administrator override: unblock, and the policy's Block becomes an Alert.
    chain.admin_unblock("thief", None).unwrap();
    let a = thief.query(&batch(&[7])).unwrap();
    assert_eq!(a.labels.len(), 1);
    let m = chain.shared().metrics.encode();
    assert!(
        m.contains("mamori_alerts_total{model=\"lin\",detector=\"count\"}"),
        "{m}"
    );
}

#[test]
fn degrade_forces_label_only_and_the_degrade_postprocessors() {
    let mut cfg = GatewayConfig::default();
    cfg.detect.degrade_postprocessors = vec!["round1".into()];
    let (chain, keys) = chain_with(spec_with(3, Action::Degrade), cfg);
    let (_, k) = keys.create("c", None, "full", &[]).unwrap();
    let mut o = ChainOracle::new(chain, &k, None).unwrap();
    let a = o.query(&batch(&[1, 2])).unwrap();
    assert_eq!(a.disclosure, Disclosure::Probabilities);
    let a = o.query(&batch(&[3])).unwrap();
    assert_eq!(a.disclosure, Disclosure::Label);
    assert_eq!(a.probs.data().iter().filter(|v| **v == 1.0).count(), 1);
}

#[test]
fn throttle_tightens_the_bucket() {
    let mut cfg = GatewayConfig::default();
    let t = cfg.tiers.get_mut("full").unwrap();
    t.rate_per_s = 0.001;
    t.burst = 100;
    cfg.detect.throttle_factor = 0.05; // burst 100 → 5
    let (chain, keys) = chain_with(spec_with(2, Action::Throttle), cfg);
    let (_, k) = keys.create("c", None, "full", &[]).unwrap();
    let mut o = ChainOracle::new(chain, &k, None).unwrap();
    o.query(&batch(&[1, 2])).unwrap(); // alarm → throttled
                                       // 98 tokens left, but the throttled bucket holds at most 5.
    o.query(&batch(&[1, 2, 3, 4, 5])).unwrap();
    match o.query(&batch(&[1])) {
        Err(OracleError::RateLimited(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn group_state_sees_every_client_of_the_group() {
    let (chain, keys) = chain_with(spec_with(6, Action::Block), GatewayConfig::default());
    let (_, k1) = keys.create("sybil-1", Some("acme"), "full", &[]).unwrap();
    let (_, k2) = keys.create("sybil-2", Some("acme"), "full", &[]).unwrap();
    let mut a = ChainOracle::new(chain.clone(), &k1, None).unwrap();
    let mut b = ChainOracle::new(chain.clone(), &k2, None).unwrap();
    a.query(&batch(&[1, 2, 3])).unwrap();
    b.query(&batch(&[1, 2])).unwrap();
    // Neither client alone reached 6, but the group did.
    assert!(matches!(
        b.query(&batch(&[3])),
        Err(OracleError::Refused(_))
    ));
    chain.flush_audit();
    let alerts = chain.shared().audit.with_store(|s| s.alerts().unwrap());
    assert_eq!(alerts[0].client, "group:acme");
    assert_eq!(alerts[0].queries, 6);
}

#[test]
fn tier_postprocessors_and_watermark_ledger() {
    let mut cfg = GatewayConfig::default();
    cfg.tiers.get_mut("full").unwrap().postprocessors = vec!["round1".into()];
    let mut spec = lin_spec();
    spec.watermark = Some(Arc::new(ShiftMark));
    let (chain, keys) = chain_with(spec, cfg);
    let (_, k) = keys.create("c", None, "full", &[]).unwrap();
    let mut o = ChainOracle::new(chain.clone(), &k, None).unwrap();
    let mut x = batch(&[1, 2]);
    x.row_mut(0)[0] = 0.9; // watermarked
    x.row_mut(1)[0] = 0.1; // not watermarked
    let a = o.query(&x).unwrap();
    for v in a.probs.data() {
        let scaled = v * 10.0;
        assert!(
            (scaled - scaled.round()).abs() < 1e-3 || *v < 1.0,
            "rounded: {v}"
        );
    }
    let truth = LinearModel::new("lin");
    let want = mamori_core::Model::predict(&truth, &x)
        .unwrap()
        .argmax_rows();
    assert_eq!(a.labels[0], (want[0] + 1) % CLASSES);
    assert_eq!(a.labels[1], want[1]);
    chain.flush_audit();
    let ledger = chain
        .shared()
        .audit
        .with_store(|s| s.ledger(Some("lin")).unwrap());
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].client, "c");
    assert_eq!(
        ledger[0].input_sha256,
        mamori_core::hash::sha256_f32(x.row(0))
    );
    assert_eq!(ledger[0].true_label as usize, want[0]);
}

#[test]
fn unknown_postprocessor_in_config_is_a_named_error() {
    let mut cfg = GatewayConfig::default();
    cfg.tiers.get_mut("label").unwrap().postprocessors = vec!["nonesuch".into()];
    let e = ChainBuilder::new(cfg)
        .model(lin_spec())
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("tier label") && e.contains("nonesuch"), "{e}");
    let e = ChainBuilder::new(GatewayConfig::default())
        .model(ModelSpec::new(Arc::new(LinearModel::new("x")), "t"))
        .model(ModelSpec::new(Arc::new(LinearModel::new("x")), "t"))
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("two models are named \"x\""), "{e}");
}

#[test]
fn detector_state_is_per_model() {
    let keys = Arc::new(KeyStore::in_memory());
    let mk = |name: &str| {
        let mut s = ModelSpec::new(Arc::new(LinearModel::new(name)), "test");
        s.detectors = vec![Arc::new(CountDetector { threshold: 4 })];
        s.policy = Box::new(OnAlarm(Action::Block));
        s
    };
    let chain = Arc::new(
        ChainBuilder::new(GatewayConfig::default())
            .keys(keys.clone())
            .model(mk("alpha"))
            .model(mk("beta"))
            .build()
            .unwrap(),
    );
    let (_, k) = keys.create("c", None, "full", &[]).unwrap();
    let mut a = ChainOracle::new(chain.clone(), &k, Some("alpha")).unwrap();
    let mut b = ChainOracle::new(chain, &k, Some("beta")).unwrap();
    a.query(&batch(&[1, 2, 3])).unwrap();
    b.query(&batch(&[1, 2, 3])).unwrap();
    // 6 queries in total, but each model's detector has seen only 3.
    assert!(matches!(
        a.query(&batch(&[4])),
        Err(OracleError::Refused(_))
    ));
    // Blocked on alpha only.
    assert!(matches!(
        a.query(&batch(&[5])),
        Err(OracleError::Refused(_))
    ));
    assert!(matches!(
        b.query(&batch(&[4])),
        Err(OracleError::Refused(_))
    ));
}

#[test]
fn disabled_chain_only_infers() {
    let chain = ChainBuilder::new(GatewayConfig::default())
        .mode(ChainMode::Disabled)
        .model(lin_spec())
        .build()
        .unwrap();
    assert_eq!(chain.stage_names(), vec!["infer"]);
    let r = chain
        .handle(mamori_gateway::InferRequest {
            credential: None,
            model: "lin".into(),
            version: None,
            payload: mamori_gateway::Payload::Tensor {
                input: batch(&[1]),
                id: Some("x".into()),
            },
            peer: None,
        })
        .unwrap();
    assert_eq!(r.id.as_deref(), Some("x"));
    assert_eq!(
        r.labels.unwrap(),
        expected_probs("lin", &[sample(1)]).argmax_rows()
    );
}

#[test]
fn upstream_proxy_through_another_gateway() {
    // Upstream: a mamori gateway serving the model, open to one key.
    let (up_chain, up_keys) = chain_with(lin_spec(), GatewayConfig::default());
    let (_, up_key) = up_keys.create("proxy", None, "full", &[]).unwrap();
    let upstream = BlockingServer::start(up_chain.clone(), "127.0.0.1:0").unwrap();
    let proxied = UpstreamModel::connect(&upstream.url(), "lin", Some(up_key), [0.0, 1.0]).unwrap();
    assert_eq!(
        mamori_core::Model::card(&proxied).input_shape,
        SHAPE.to_vec()
    );
    assert_eq!(
        mamori_core::Model::card(&proxied).class_names,
        vec!["a", "b", "c"]
    );
    // Front gateway with its own keys and a label-only client.
    let (front, keys) = chain_with(
        ModelSpec::new(Arc::new(proxied), "upstream"),
        GatewayConfig::default(),
    );
    let (_, k) = keys.create("client", None, "full", &[]).unwrap();
    let mut o = ChainOracle::new(front.clone(), &k, None).unwrap();
    let a = o.query(&batch(&[1, 2])).unwrap();
    let want = expected_probs("lin", &[sample(1), sample(2)]);
    for (p, q) in a.probs.data().iter().zip(want.data()) {
        assert!((p - q).abs() < 1e-5);
    }
    drop(o);
    front.shutdown();
    upstream.shutdown().unwrap();
    // The upstream audited the proxy's queries.
    let n = up_chain
        .shared()
        .audit
        .with_store(|s| s.requests(Some("proxy"), 0).unwrap().len());
    assert_eq!(n, 1);
}

#[test]
fn detector_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::in_memory());
    let (_, k) = keys.create("c", None, "full", &[]).unwrap();
    let build = || {
        Arc::new(
            ChainBuilder::new(GatewayConfig::default())
                .keys(keys.clone())
                .state_dir(dir.path())
                .model(spec_with(5, Action::Block))
                .build()
                .unwrap(),
        )
    };
    let chain = build();
    ChainOracle::new(chain.clone(), &k, None)
        .unwrap()
        .query(&batch(&[1, 2, 3]))
        .unwrap();
    chain.shutdown();
    let file = dir
        .path()
        .join("lin.states")
        .join(mamori_gateway::state_codec::file_name("c"));
    assert!(file.is_file());
    let chain = build();
    let mut o = ChainOracle::new(chain, &k, None).unwrap();
    o.query(&batch(&[4])).unwrap();
    // 3 before the restart + 1 + 1 = 5: alarm.
    assert!(matches!(
        o.query(&batch(&[5])),
        Err(OracleError::Refused(_))
    ));
}

/// A checkpoint writes the state files of the subjects observed since the last one only; the
/// first format's `<model>.json` is read and replaced by files at the next save; a damaged
/// state file stops the start, naming it.
#[test]
fn state_files_are_written_per_subject_when_changed_and_the_first_format_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::in_memory());
    let (_, k) = keys.create("c", None, "full", &[]).unwrap();
    let build = || {
        ChainBuilder::new(GatewayConfig::default())
            .keys(keys.clone())
            .state_dir(dir.path())
            .model(spec_with(5, Action::Block))
            .build()
            .map(Arc::new)
    };
    let file = dir
        .path()
        .join("lin.states")
        .join(mamori_gateway::state_codec::file_name("c"));
    let chain = build().unwrap();
    let mut o = ChainOracle::new(chain.clone(), &k, None).unwrap();
    o.query(&batch(&[1, 2])).unwrap();
    chain.save_states().unwrap();
    assert!(file.is_file());
    // Nothing observed since: the next checkpoint does not rewrite it.
    std::fs::remove_file(&file).unwrap();
    chain.save_states().unwrap();
    assert!(!file.exists());
    o.query(&batch(&[3])).unwrap();
    chain.save_states().unwrap();
    let (subject, snaps) =
        mamori_gateway::state_codec::decode_file(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(subject, "c");
    drop(o);
    chain.shutdown();

    // The first format (every subject in one JSON map of hex snapshots), as an older gateway
    // left it: taken over (3 queries: her 5th overall is refused), moved into a file at the
    // next save, and the old file removed.
    std::fs::remove_dir_all(dir.path().join("lin.states")).unwrap();
    let hex_map: std::collections::BTreeMap<String, String> = snaps
        .iter()
        .map(|(name, b)| (name.clone(), hex::encode(b)))
        .collect();
    let legacy = dir.path().join("lin.json");
    std::fs::write(
        &legacy,
        serde_json::to_vec(&serde_json::json!({ "c": hex_map })).unwrap(),
    )
    .unwrap();
    let chain = build().unwrap();
    chain.save_states().unwrap();
    assert!(file.is_file() && !legacy.exists());
    let mut o = ChainOracle::new(chain.clone(), &k, None).unwrap();
    o.query(&batch(&[4])).unwrap();
    assert!(matches!(
        o.query(&batch(&[5])),
        Err(OracleError::Refused(_))
    ));
    drop(o);
    chain.shutdown();

    // A damaged state file: the start is refused, naming the file.
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 3);
    std::fs::write(&file, bytes).unwrap();
    let e = build().err().unwrap().to_string();
    assert!(
        e.contains(&file.display().to_string()) && e.contains("invalid detector state"),
        "{e}"
    );
}

/// A gateway with a state directory, `detect.max_resident_subjects` = `max` and the counting
/// detector (alarm at 6, alert), and a key for each client named.
struct Evicting {
    dir: tempfile::TempDir,
    store: Arc<KeyStore>,
    keys: Vec<String>,
    cfg: GatewayConfig,
}

impl Evicting {
    fn new(names: &[&str], max: usize) -> Self {
        let store = Arc::new(KeyStore::in_memory());
        let keys = names
            .iter()
            .map(|n| store.create(n, None, "full", &[]).unwrap().1)
            .collect();
        let mut cfg = GatewayConfig::default();
        cfg.detect.max_resident_subjects = max;
        Self {
            dir: tempfile::tempdir().unwrap(),
            store,
            keys,
            cfg,
        }
    }

    /// A gateway on the directory (a restart when one was built before).
    fn build(&self) -> Arc<Chain> {
        Arc::new(
            ChainBuilder::new(self.cfg.clone())
                .keys(self.store.clone())
                .state_dir(self.dir.path())
                .model(spec_with(6, Action::Alert))
                .build()
                .unwrap(),
        )
    }
}

/// Dates `path` back to 1970, so that it is the oldest state file: among those not loaded at
/// start when there are more than `detect.max_resident_subjects`.
fn make_oldest(path: &std::path::Path) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1))
        .unwrap();
}

/// `detect.max_resident_subjects`: at a checkpoint the least recently observed subjects beyond
/// the limit leave memory (saved first); the admin listing keeps them; on its next request a
/// subject's states come back from its file — its history goes on, and an alarm it already
/// raised is not alerted again. At start only the newest files up to the limit are loaded;
/// the others on their subject's first request. A damaged file met then is moved aside and the
/// subject starts fresh; a file that cannot be read fails the request instead.
#[test]
fn idle_subjects_leave_memory_at_checkpoints_and_come_back_with_their_history() {
    let names = ["c0", "c1", "c2", "c3", "c4"];
    let setup = Evicting::new(&names, 2);
    let (dir, ks) = (&setup.dir, &setup.keys);
    let build = || setup.build();
    let info = |chain: &Chain, who: &str| chain.clients().into_iter().find(|c| c.subject == who);
    let alerts = |chain: &Chain, who: &str| {
        chain.flush_audit();
        chain
            .shared()
            .audit
            .with_store(|s| s.alerts().unwrap())
            .iter()
            .filter(|a| a.client == who)
            .count()
    };
    let chain = build();
    // c0 alarms at its 6th query (one alert); then c1 … c4, one query each, in that order.
    for q in 0..6 {
        infer_sample(&chain, &ks[0], q).unwrap();
    }
    assert_eq!(alerts(&chain, "c0"), 1);
    for (i, k) in ks[1..].iter().enumerate() {
        std::thread::sleep(std::time::Duration::from_millis(3));
        infer_sample(&chain, k, 0).unwrap();
        // A checkpoint is due early beyond twice the cap of 2 subjects: at the fifth.
        assert_eq!(chain.memory_pressure(), i + 2 > 4, "{} subjects", i + 2);
    }
    // Nothing leaves memory before a checkpoint has saved it; the checkpoint ends the
    // pressure.
    assert!(chain.clients().iter().all(|c| c.resident));
    chain.save_states().unwrap();
    assert!(!chain.memory_pressure());
    let listed = chain.clients();
    assert_eq!(listed.len(), 5, "{listed:?}");
    let resident: Vec<&str> = listed
        .iter()
        .filter(|c| c.resident)
        .map(|c| c.subject.as_str())
        .collect();
    assert_eq!(
        resident,
        ["c3", "c4"],
        "the two most recently observed stay"
    );
    let c0 = info(&chain, "c0").unwrap();
    assert_eq!(
        (c0.queries, c0.alarmed.clone(), c0.last_action.as_deref()),
        (6, vec!["count".to_string()], Some("alert"))
    );
    // c0 comes back: its 7th query (a fresh state would count 1), no second alert.
    infer_sample(&chain, &ks[0], 6).unwrap();
    let c0 = info(&chain, "c0").unwrap();
    assert!(c0.resident);
    assert_eq!(c0.queries, 7);
    assert_eq!(
        alerts(&chain, "c0"),
        1,
        "an alarm raised before eviction is not re-alerted"
    );
    chain.shutdown();
    drop(chain);

    // A restart loads the newest 2 files; the others are listed from their files' headers,
    // with their query counts, and loaded on their first request.
    let chain = build();
    let listed = chain.clients();
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert_eq!(
        listed.iter().filter(|c| c.resident).count(),
        2,
        "{listed:?}"
    );
    for c in &listed {
        let want = if c.subject == "c0" { 7 } else { 1 };
        assert_eq!(c.queries, want, "{}", c.subject);
    }
    let unloaded: Vec<usize> = (1..5)
        .filter(|&i| !info(&chain, names[i]).unwrap().resident)
        .collect();
    assert!(unloaded.len() >= 2);
    let i = unloaded[0];
    infer_sample(&chain, &ks[i], 1).unwrap();
    assert_eq!(info(&chain, names[i]).unwrap().queries, 2);

    // A damaged file: moved aside, the subject starts fresh, the request is answered.
    let j = unloaded[1];
    let states = dir.path().join("lin.states");
    let file = states.join(mamori_gateway::state_codec::file_name(names[j]));
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 3);
    std::fs::write(&file, bytes).unwrap();
    infer_sample(&chain, &ks[j], 1).unwrap();
    assert_eq!(info(&chain, names[j]).unwrap().queries, 1);
    assert!(file.with_extension("mss.damaged").is_file() && !file.exists());
    chain.shutdown();
    drop(chain);

    // A state file that cannot be read (here a directory in its place): the request fails
    // with a storage error naming it, and nothing replaces the subject's states.
    let chain = build();
    let unloaded: Vec<usize> = (0..5)
        .filter(|&i| info(&chain, names[i]).is_some_and(|c| !c.resident))
        .collect();
    let k = unloaded[0];
    let file = states.join(mamori_gateway::state_codec::file_name(names[k]));
    let kept = file.with_extension("kept");
    std::fs::rename(&file, &kept).unwrap();
    std::fs::create_dir(&file).unwrap();
    let e = infer_sample(&chain, &ks[k], 1).unwrap_err();
    assert!(
        matches!(&e, mamori_gateway::GatewayError::Storage(m) if m.contains(&file.display().to_string())),
        "{e}"
    );
    assert!(!info(&chain, names[k]).unwrap().resident);
    // Once the file is back, the subject's history goes on.
    std::fs::remove_dir(&file).unwrap();
    std::fs::rename(&kept, &file).unwrap();
    let before = mamori_gateway::state_codec::decode_file(&std::fs::read(&file).unwrap())
        .unwrap()
        .1;
    assert!(!before.is_empty());
    infer_sample(&chain, &ks[k], 2).unwrap();
    assert!(info(&chain, names[k]).unwrap().queries >= 2);
}

/// A state file that is not loaded at start is listed under the subject its header names only
/// when the file has that subject's name: a file renamed by hand would never be read for that
/// subject, so it is not listed (and the subject, when it comes, starts fresh).
#[test]
fn a_renamed_state_file_is_not_listed_for_its_subject() {
    let setup = Evicting::new(&["c0", "c1", "c2"], 1);
    let (dir, ks) = (&setup.dir, &setup.keys);
    let build = || setup.build();
    let chain = build();
    for k in ks {
        infer_sample(&chain, k, 0).unwrap();
        infer_sample(&chain, k, 1).unwrap();
    }
    chain.shutdown();
    drop(chain);
    let states = dir.path().join("lin.states");
    let real = states.join(mamori_gateway::state_codec::file_name("c0"));
    let renamed = states.join(format!("{}.mss", "f".repeat(32)));
    std::fs::rename(&real, &renamed).unwrap();
    make_oldest(&renamed);
    let chain = build();
    let mut listed: Vec<(String, u64)> = chain
        .clients()
        .into_iter()
        .map(|c| (c.subject, c.queries))
        .collect();
    listed.sort();
    assert_eq!(listed, [("c1".to_string(), 2), ("c2".to_string(), 2)]);
    infer_sample(&chain, &ks[0], 2).unwrap();
    let c0 = chain
        .clients()
        .into_iter()
        .find(|c| c.subject == "c0")
        .unwrap();
    assert_eq!(c0.queries, 1, "c0 starts fresh");
}

/// During the migration from the first format, a subject both in `<model>.json` and in a
/// state file not loaded at start (more files than the cap) is taken from its file, the newer:
/// listed with the file's count, and its next query counts on from there, not from the old
/// JSON states (which the next checkpoint would otherwise write over the file).
#[test]
fn a_state_file_not_loaded_at_start_wins_over_the_first_format() {
    let setup = Evicting::new(&["c0", "c1"], 1);
    let chain = setup.build();
    for q in 0..3 {
        infer_sample(&chain, &setup.keys[0], q).unwrap();
    }
    infer_sample(&chain, &setup.keys[1], 0).unwrap();
    chain.shutdown();
    drop(chain);
    // c0's file the oldest, so not loaded; the JSON holds an older c0 (one query).
    let file = setup
        .dir
        .path()
        .join("lin.states")
        .join(mamori_gateway::state_codec::file_name("c0"));
    make_oldest(&file);
    std::fs::write(
        setup.dir.path().join("lin.json"),
        serde_json::to_vec(&serde_json::json!({
            "c0": { "count": hex::encode(1u64.to_le_bytes()) }
        }))
        .unwrap(),
    )
    .unwrap();
    let chain = setup.build();
    let c0 = || {
        chain
            .clients()
            .into_iter()
            .find(|c| c.subject == "c0")
            .unwrap()
    };
    assert_eq!((c0().queries, c0().resident), (3, false));
    infer_sample(&chain, &setup.keys[0], 3).unwrap();
    assert_eq!(c0().queries, 4);
}

/// Checkpoints that evict (limit 1) running all the while four clients query from their own
/// threads: no observation is lost — a subject with a request in flight, or observed since the
/// last save, stays in memory — so every client's count ends at what it sent.
#[test]
fn eviction_under_concurrent_requests_loses_no_observation() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::in_memory());
    let ks: Vec<String> = (0..4)
        .map(|i| keys.create(&format!("c{i}"), None, "full", &[]).unwrap().1)
        .collect();
    let mut cfg = GatewayConfig::default();
    cfg.detect.max_resident_subjects = 1;
    let chain = Arc::new(
        ChainBuilder::new(cfg)
            .keys(keys.clone())
            .state_dir(dir.path())
            .model(spec_with(1_000_000, Action::Alert))
            .build()
            .unwrap(),
    );
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let done = Arc::new(AtomicBool::new(false));
    let saves = Arc::new(AtomicUsize::new(0));
    let saver = {
        let (chain, done, saves) = (chain.clone(), done.clone(), saves.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                chain.save_states().unwrap();
                saves.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Each client queries at least 100 times and until 10 checkpoints have run (a query a
    // millisecond at most, under the tier's rate limit).
    let clients: Vec<_> = ks
        .iter()
        .map(|k| {
            let (chain, k, saves) = (chain.clone(), k.clone(), saves.clone());
            std::thread::spawn(move || {
                let mut sent = 0;
                while sent < 100 || saves.load(Ordering::Relaxed) < 10 {
                    infer_sample(&chain, &k, sent).unwrap();
                    sent += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                sent
            })
        })
        .collect();
    let sent: Vec<usize> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    saver.join().unwrap();
    chain.save_states().unwrap();
    let listed = chain.clients();
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert_eq!(
        listed.iter().filter(|c| c.resident).count(),
        1,
        "{listed:?}"
    );
    for (i, n) in sent.iter().enumerate() {
        let c = listed
            .iter()
            .find(|c| c.subject == format!("c{i}"))
            .unwrap();
        assert_eq!(c.queries, *n as u64, "{c:?}");
    }
    // And each one's states, loaded back, count the same.
    for (i, k) in ks.iter().enumerate() {
        infer_sample(&chain, k, sent[i]).unwrap();
        let c = chain
            .clients()
            .into_iter()
            .find(|c| c.subject == format!("c{i}"))
            .unwrap();
        assert_eq!(c.queries, sent[i] as u64 + 1);
    }
}

/// The exact-repeat rule (`ModelSpec::skip_exact_repeats`): a client retrying one input is
/// counted by the volume detector at every retry, while the other detectors see it once and
/// answer their last verdict — so retries raise no similarity alarm — and see every new input
/// after them. Without the rule every retry reaches every detector.
#[test]
fn exact_repeats_reach_only_the_volume_detector() {
    for skip in [true, false] {
        let mut spec = lin_spec();
        spec.detectors = vec![
            Arc::new(mamori_detect::rate::RateDetector::new(Default::default())),
            Arc::new(CountDetector { threshold: 3 }),
        ];
        spec.policy = Box::new(OnAlarm(Action::Alert));
        spec.skip_exact_repeats = skip;
        let (chain, keys) = chain_with(spec, GatewayConfig::default());
        let (_, k) = keys.create("retry", None, "full", &[]).unwrap();
        let mut o = ChainOracle::new(chain.clone(), &k, None).unwrap();
        for _ in 0..5 {
            o.query(&batch(&[1])).unwrap();
        }
        let count_alerts = || {
            chain.flush_audit();
            chain.shared().audit.with_store(|s| s.alerts().unwrap())
        };
        let listed = chain.clients();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].queries, 5,
            "the volume detector counts every retry"
        );
        if skip {
            assert!(count_alerts().is_empty(), "{:?}", count_alerts());
            // Two new inputs: the third distinct query reaches the threshold.
            o.query(&batch(&[2])).unwrap();
            assert!(count_alerts().is_empty());
            o.query(&batch(&[3])).unwrap();
        }
        let alerts = count_alerts();
        assert_eq!(alerts.len(), 1, "skip {skip}: {alerts:?}");
        assert_eq!(alerts[0].detector, "count");
        assert_eq!(alerts[0].queries, 3, "skip {skip}");
    }
}

/// `detect.max_resident_bytes`: the subject count alone does not bound memory (one client's
/// detector states grow with its history), so a checkpoint also evicts the least recently
/// observed saved subjects while a model's detector states hold more bytes than the budget,
/// and a checkpoint is due early beyond twice the budget. The bytes are each subject's
/// measured heap (`DetectorState::heap_bytes`), listed per subject and summed in a metric.
#[test]
fn idle_subjects_leave_memory_beyond_the_byte_budget() {
    let spec = || {
        let mut s = lin_spec();
        s.detectors = vec![
            Arc::new(mamori_detect::knn::KnnDetector::new(Default::default())),
            Arc::new(mamori_detect::blacklight::BlacklightDetector::new(
                Default::default(),
            )),
        ];
        s.policy = Box::new(OnAlarm(Action::Alert));
        s
    };
    let (big, small) = (1500, 20);
    let names = ["big", "small1", "small2"];
    let run = |budget: u64| {
        let setup = Evicting::new(&names, 0);
        let mut cfg = setup.cfg.clone();
        cfg.detect.max_resident_bytes = budget;
        let chain = Arc::new(
            ChainBuilder::new(cfg)
                .keys(setup.store.clone())
                .state_dir(setup.dir.path())
                .model(spec())
                .build()
                .unwrap(),
        );
        for (who, n) in [(0, big), (1, small), (2, small)] {
            std::thread::sleep(std::time::Duration::from_millis(3));
            for q in 0..n {
                infer_sample(&chain, &setup.keys[who], q).unwrap();
            }
        }
        (chain, setup)
    };
    let bytes = |chain: &Chain, who: &str| {
        let c = chain
            .clients()
            .into_iter()
            .find(|c| c.subject == who)
            .unwrap();
        (c.resident, c.state_bytes)
    };

    // Without a budget: everything stays; a longer history holds more.
    let (chain, _setup) = run(0);
    chain.save_states().unwrap();
    let (_, b_big) = bytes(&chain, "big");
    let (_, b_small) = bytes(&chain, "small1");
    assert_eq!(bytes(&chain, "small2"), (true, b_small));
    assert!(b_small > 0 && b_big > 4 * b_small, "{b_big} vs {b_small}");
    assert!(!chain.memory_pressure());
    let metrics = chain.shared().metrics.encode();
    let total = b_big + 2 * b_small;
    assert!(
        metrics.contains(&format!(
            "mamori_detector_state_bytes{{model=\"lin\"}} {total}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("mamori_resident_subjects{model=\"lin\"} 3"));
    drop(chain);

    // A budget the two small subjects fit in: pressure (beyond twice it), and the checkpoint
    // evicts the oldest, the big one, and keeps the two newest.
    let budget = 2 * b_small + b_small / 2;
    assert!(total > 2 * budget);
    let (chain, setup) = run(budget);
    assert!(chain.memory_pressure());
    chain.save_states().unwrap();
    assert!(!chain.memory_pressure());
    assert_eq!(bytes(&chain, "big"), (false, 0));
    assert_eq!(bytes(&chain, "small1"), (true, b_small));
    assert_eq!(bytes(&chain, "small2"), (true, b_small));
    // The big subject comes back with its history on its next request.
    infer_sample(&chain, &setup.keys[0], 7).unwrap();
    let c = chain
        .clients()
        .into_iter()
        .find(|c| c.subject == "big")
        .unwrap();
    assert!(c.resident && c.state_bytes > 4 * b_small);
    assert_eq!(c.queries, big as u64 + 1);
}
