//! Attacks run unchanged against a live `mamori serve` over HTTP (issue #4 acceptance).
//!
//! The real gateway (`mamori_gateway::BlockingServer`, the same server `mamori serve` runs)
//! listens on 127.0.0.1:0 and serves a softmax regression trained here on `digits`. Tramèr's
//! equation solving, random queries, Knockoff Nets and JBDA then query it through
//! [`HttpOracle`] with API keys of different tiers; the oracle's query count is checked against
//! the samples the gateway's audit log says it answered to each client.

use mamori_attack::experiment::{max_prob_distance, train_victim};
use mamori_attack::extract::{
    ExtractionContext, Jbda, KnockoffRandom, NoiseKind, RandomQueries, TramerLr,
};
use mamori_attack::{EvalSet, ExtractionAttack, HttpOracle, HttpOracleConfig};
use mamori_core::{Disclosure, Model, Oracle, OracleError};
use mamori_data::{load, resolve_data_dir};
use mamori_gateway::{
    AuditStore, BlockingServer, ChainBuilder, GatewayConfig, KeyStore, ModelSpec, SqliteStore,
};
use mamori_ml::{agreement, Arch, NativeModel, TrainConfig};
use std::collections::BTreeMap;
use std::sync::Arc;

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        learning_rate: 1e-2,
        weight_decay: 0.0,
        seed: 1,
        progress: false,
    }
}

/// A gateway whose tiers are fast enough not to throttle the test (limits are not what is
/// tested here), serving `victim`, with its key store and home directory.
struct Live {
    server: BlockingServer,
    keys: Arc<KeyStore>,
    chain: Arc<mamori_gateway::Chain>,
    home: tempfile::TempDir,
}

fn start(victim: &NativeModel) -> Live {
    let home = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::open(home.path()).unwrap());
    let mut gc = GatewayConfig::default();
    for t in gc.tiers.values_mut() {
        t.rate_per_s = 1e6;
        t.burst = 1_000_000;
        t.daily_quota = 10_000_000;
    }
    let model: Arc<dyn Model> = Arc::new(victim.clone());
    let chain = Arc::new(
        ChainBuilder::new(gc)
            .keys(keys.clone())
            .audit_store(Box::new(SqliteStore::open_home(home.path()).unwrap()))
            .model(ModelSpec::new(model, "mamori-native"))
            .build()
            .unwrap(),
    );
    let server = BlockingServer::start(chain.clone(), "127.0.0.1:0").unwrap();
    Live {
        server,
        keys,
        chain,
        home,
    }
}

impl Live {
    /// An HTTP oracle on the served model with a fresh key of `tier` for `client`.
    fn oracle(&self, client: &str, tier: &str) -> HttpOracle {
        let (_, key) = self.keys.create(client, None, tier, &[]).unwrap();
        let url = format!("{}/v2/models/digits-victim", self.server.url());
        let mut c = HttpOracleConfig::from_url(&url, None).unwrap();
        c.api_key = Some(key);
        c.batch_size = 100;
        HttpOracle::connect(c).unwrap()
    }
}

#[test]
fn attacks_run_unchanged_against_a_live_gateway() {
    let s = load("digits", &resolve_data_dir(None)).expect("digits dataset");
    let victim = train_victim(&Arch::Softmax, &s.train, &s.test, &cfg(5), "digits-victim").unwrap();
    let live = start(&victim);
    let eval = EvalSet::from_model(&victim, &s.test, 300, [0.0, 1.0], 0).unwrap();
    let d: usize = victim.card.input_shape.iter().product();
    let c = victim.card.class_names.len();
    let mut used: BTreeMap<&str, u64> = BTreeMap::new();

    // Tramèr, full probabilities: an exact copy with c·(d+1) queries over HTTP.
    let mut o = live.oracle("tramer", "full");
    assert_eq!(o.input_shape(), victim.card.input_shape);
    assert_eq!(o.num_classes(), c);
    let e = TramerLr::default()
        .extract(&mut o, &ExtractionContext::new(10_000, Arch::Softmax))
        .unwrap();
    assert_eq!(e.disclosure, Some(Disclosure::Probabilities));
    assert_eq!(e.queries, (c * (d + 1)) as u64);
    assert_eq!(o.queries_used(), e.queries);
    assert!(max_prob_distance(&victim, &e.substitute, &s.test.x).unwrap() < 1e-5);
    assert_eq!(agreement(&victim, &e.substitute, &s.test.x).unwrap(), 1.0);
    used.insert("tramer", o.queries_used());

    // Tramèr against a label-only tier: no equations to solve, so it falls back to label-only
    // retraining within the same budget instead of failing.
    let mut o = live.oracle("tramer-label", "label");
    let mut ctx = ExtractionContext::new(400, Arch::Softmax);
    ctx.train = cfg(20);
    let e = TramerLr::default().extract(&mut o, &ctx).unwrap();
    assert_eq!(e.disclosure, Some(Disclosure::Label));
    assert!(!e.soft_targets);
    assert!(e.queries <= 400 && e.queries > 0, "{}", e.queries);
    assert!(
        e.notes.iter().any(|n| n.contains("label")),
        "no fallback note in {:?}",
        e.notes
    );
    let m = eval.evaluate(&e.substitute).unwrap();
    assert!(
        m.fidelity > 0.2,
        "label-only fallback fidelity {}",
        m.fidelity
    );
    used.insert("tramer-label", o.queries_used());

    // Random (uniform) queries with a budget, top-k tier.
    let mut o = live.oracle("random", "standard").with_budget(Some(300));
    let mut ctx = ExtractionContext::new(1_000, Arch::Softmax);
    ctx.train = cfg(20);
    let e = RandomQueries::new(NoiseKind::Uniform)
        .extract(&mut o, &ctx)
        .unwrap();
    assert_eq!(e.queries, 300, "the oracle's budget caps the attack");
    assert_eq!(e.disclosure, Some(Disclosure::TopK(3)));
    used.insert("random", o.queries_used());

    // Knockoff Nets (random strategy) with natural attacker data, full probabilities.
    let mut o = live.oracle("knockoff", "full");
    let mut ctx = ExtractionContext::new(400, Arch::Softmax);
    ctx.train = cfg(20);
    ctx.query_data = Some(&s.train);
    let e = KnockoffRandom.extract(&mut o, &ctx).unwrap();
    assert_eq!(e.queries, 400);
    assert!(e.soft_targets);
    let m = eval.evaluate(&e.substitute).unwrap();
    assert!(m.fidelity > 0.8, "knockoff fidelity {}", m.fidelity);
    used.insert("knockoff", o.queries_used());

    // JBDA, labels only: 30 seeds, 3 augmentation rounds → 30·2³ queries.
    let mut o = live.oracle("jbda", "label");
    let mut ctx = ExtractionContext::new(100_000, Arch::Mlp { hidden: vec![32] });
    ctx.train = cfg(20);
    ctx.query_data = Some(&s.train);
    let jbda = Jbda {
        seeds: 30,
        rounds: 3,
        ..Default::default()
    };
    let e = jbda.extract(&mut o, &ctx).unwrap();
    assert_eq!(e.queries, 240);
    assert_eq!(e.disclosure, Some(Disclosure::Label));
    let m = eval.evaluate(&e.substitute).unwrap();
    assert!(m.fidelity > 0.3, "jbda fidelity {}", m.fidelity);
    used.insert("jbda", o.queries_used());

    // A blocked client and a revoked key surface as OracleError::Refused, charging nothing.
    let mut o = live.oracle("mallory", "full");
    o.query(&s.test.x.slice_rows(0, 2)).unwrap();
    live.chain.admin_block("mallory", None, "test").unwrap();
    match o.query(&s.test.x.slice_rows(0, 2)) {
        Err(OracleError::Refused(m)) => assert!(m.contains("403"), "{m}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(o.queries_used(), 2);
    used.insert("mallory", 2);
    let (rec, key) = live.keys.create("trudy", None, "full", &[]).unwrap();
    let url = format!("{}/v2/models/digits-victim", live.server.url());
    let mut hc = HttpOracleConfig::from_url(&url, None).unwrap();
    hc.api_key = Some(key);
    let mut o = HttpOracle::connect(hc).unwrap();
    live.keys.revoke(&rec.id).unwrap();
    let mut refused = None;
    // The server re-reads revocations within a second.
    for _ in 0..30 {
        match o.query(&s.test.x.slice_rows(0, 1)) {
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    match refused {
        Some(OracleError::Refused(m)) => assert!(m.contains("401"), "{m}"),
        other => panic!("expected Refused after revocation, got {other:?}"),
    }
    used.insert("trudy", o.queries_used());

    // Exact accounting: the samples the gateway answered (audit log) per client equal the
    // oracle's counts.
    let Live { server, home, .. } = live;
    server.shutdown().unwrap();
    let store = SqliteStore::open_home(home.path()).unwrap();
    for (client, n) in &used {
        let answered: u64 = store
            .requests(Some(client), 0)
            .unwrap()
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.batch)
            .sum();
        assert_eq!(answered, *n, "client {client}");
    }
    let refused = store
        .requests(Some("mallory"), 0)
        .unwrap()
        .iter()
        .filter(|r| r.status == 403)
        .count();
    assert_eq!(refused, 1);
}
