//! What a restart (graceful or not) must not forget: blocks decided by the escalation policy
//! or an administrator, admin overrides, and each client's accumulated escalation risk.
//! Blocks are rebuilt from the audit log (durable before any answer is acknowledged); risk is
//! saved with the detector states (at shutdown and by periodic checkpoints).

mod common;

use common::*;
use mamori_core::{Action, Oracle, OracleError, Tensor};
use mamori_detect::PolicyConfig;
use mamori_gateway::protection::Escalation;
use mamori_gateway::{
    AuditStore, ChainBuilder, ChainOracle, GatewayConfig, KeyStore, ModelSpec, OnAlarm, SqliteStore,
};
use std::sync::Arc;

fn batch(ks: &[usize]) -> Tensor {
    let rows: Vec<Vec<f32>> = ks.iter().map(|k| sample(*k)).collect();
    Tensor::from_rows(&SHAPE, rows.iter().map(|r| r.as_slice())).unwrap()
}

fn spec(threshold: u64, policy: Box<dyn mamori_gateway::Policy>) -> ModelSpec {
    let mut s = lin_spec();
    s.detectors = vec![Arc::new(CountDetector { threshold })];
    s.policy = policy;
    s
}

/// A chain whose policy blocks a client at its 3rd query, on the SQLite audit store of `home`
/// (a restarted gateway, or another replica, opens the same store).
fn blocking_chain(keys: &Arc<KeyStore>, home: &std::path::Path) -> Arc<mamori_gateway::Chain> {
    Arc::new(
        ChainBuilder::new(GatewayConfig::default())
            .keys(keys.clone())
            .audit_store(Box::new(SqliteStore::open_home(home).unwrap()))
            .model(spec(3, Box::new(OnAlarm(Action::Block))))
            .build()
            .unwrap(),
    )
}

fn refused(o: &mut ChainOracle, k: usize) -> bool {
    match o.query(&batch(&[k])) {
        Ok(_) => false,
        Err(OracleError::Refused(_)) => true,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn blocks_and_admin_overrides_survive_a_restart_even_without_a_graceful_shutdown() {
    let home = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::in_memory());
    let (_, mallory) = keys.create("mallory", None, "full", &[]).unwrap();
    let (_, eve) = keys.create("eve", None, "full", &[]).unwrap();
    let (_, bob) = keys.create("bob", None, "full", &[]).unwrap();
    let build = || blocking_chain(&keys, home.path());
    let chain = build();
    let mut m = ChainOracle::new(chain.clone(), &mallory, None).unwrap();
    let mut e = ChainOracle::new(chain.clone(), &eve, None).unwrap();
    let mut b = ChainOracle::new(chain.clone(), &bob, None).unwrap();
    // The policy blocks mallory and eve at their 3rd query.
    for o in [&mut m, &mut e] {
        assert!(!refused(o, 1) && !refused(o, 2));
        assert!(refused(o, 3));
    }
    // An administrator unblocks eve (an override: the policy may not block her again) and
    // blocks bob by hand.
    chain.admin_unblock("eve", None).unwrap();
    chain.admin_block("bob", None, "abuse report").unwrap();
    assert!(refused(&mut b, 1));
    chain.flush_audit();
    // A crash: no shutdown, no saved states.
    drop((m, e, b));
    drop(chain);
    let chain = build();
    let blocked = chain.blocked();
    assert_eq!(blocked.len(), 2, "{blocked:?}");
    assert_eq!(
        blocked[0],
        ("lin".into(), "bob".into(), "abuse report".into())
    );
    assert_eq!((&*blocked[1].0, &*blocked[1].1), ("lin", "mallory"));
    assert!(blocked[1].2.contains("count"), "{blocked:?}");
    let mut m = ChainOracle::new(chain.clone(), &mallory, None).unwrap();
    let mut e = ChainOracle::new(chain.clone(), &eve, None).unwrap();
    let mut b = ChainOracle::new(chain.clone(), &bob, None).unwrap();
    assert!(refused(&mut m, 4), "still blocked after the restart");
    assert!(refused(&mut b, 2), "the admin block holds");
    // Eve's detector state was lost with the crash, but the override holds: three more
    // alarming queries and she is still answered.
    for k in 4..8 {
        assert!(!refused(&mut e, k), "the admin override holds ({k})");
    }
    chain.admin_unblock("bob", None).unwrap();
    chain.flush_audit();
    drop((m, e, b));
    drop(chain);
    let chain = build();
    let mut b = ChainOracle::new(chain.clone(), &bob, None).unwrap();
    assert!(!refused(&mut b, 3), "unblocked for good");
}

#[test]
fn accumulated_escalation_risk_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::in_memory());
    let (_, k) = keys.create("c", None, "full", &[]).unwrap();
    // Every query alarms (threshold 1) and adds 1 to the risk; block at 3.9 (the risk decays a
    // little between the queries, with a half-life of an hour).
    let cfg = PolicyConfig {
        degrade_at: 2.5,
        throttle_at: 3.5,
        block_at: 3.9,
        ..PolicyConfig::default()
    };
    let build = |state: bool| {
        let mut b = ChainBuilder::new(GatewayConfig::default())
            .keys(keys.clone())
            .model(spec(1, Box::new(Escalation::new(cfg.clone()))));
        if state {
            b = b.state_dir(dir.path());
        }
        Arc::new(b.build().unwrap())
    };
    // Baseline without saved state: four fresh queries before the block.
    let chain = build(false);
    let mut o = ChainOracle::new(chain.clone(), &k, None).unwrap();
    let first_refused = (1..10).find(|&q| refused(&mut o, q)).unwrap();
    assert_eq!(first_refused, 4);
    // Two alarming queries, a restart, and the third and fourth reach the block.
    let chain = build(true);
    let mut o = ChainOracle::new(chain.clone(), &k, None).unwrap();
    assert!(!refused(&mut o, 1) && !refused(&mut o, 2));
    chain.shutdown();
    assert!(dir.path().join("lin.policy.json").is_file());
    let chain = build(true);
    let mut o = ChainOracle::new(chain.clone(), &k, None).unwrap();
    assert!(!refused(&mut o, 3));
    assert!(refused(&mut o, 4), "risk 2 carried over + 2 = 4: blocked");
    // A corrupt saved state is an error naming the file, not a silent reset.
    std::fs::write(dir.path().join("lin.policy.json"), "{").unwrap();
    let e = ChainBuilder::new(GatewayConfig::default())
        .keys(keys.clone())
        .state_dir(dir.path())
        .model(spec(1, Box::new(Escalation::new(cfg.clone()))))
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("lin.policy.json"), "{e}");
}

#[test]
fn the_daily_quota_does_not_reset_with_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::in_memory());
    let (_, k) = keys.create("c", None, "full", &[]).unwrap();
    let mut cfg = GatewayConfig::default();
    let t = cfg.tiers.get_mut("full").unwrap();
    t.daily_quota = 5;
    t.burst = 100;
    let build = || {
        Arc::new(
            ChainBuilder::new(cfg.clone())
                .keys(keys.clone())
                .state_dir(dir.path())
                .model(lin_spec())
                .build()
                .unwrap(),
        )
    };
    let quota_hit = |o: &mut ChainOracle, k: usize| match o.query(&batch(&[k])) {
        Ok(_) => false,
        Err(OracleError::RateLimited { .. }) => true,
        Err(e) => panic!("{e}"),
    };
    let chain = build();
    let mut o = ChainOracle::new(chain.clone(), &k, None).unwrap();
    for q in 0..3 {
        assert!(!quota_hit(&mut o, q));
    }
    chain.shutdown();
    assert!(dir.path().join("limits.json").is_file());
    let chain = build();
    let mut o = ChainOracle::new(chain.clone(), &k, None).unwrap();
    assert!(!quota_hit(&mut o, 3) && !quota_hit(&mut o, 4));
    assert!(
        quota_hit(&mut o, 5),
        "3 before the restart + 2 = the day's 5"
    );
}

/// Two replicas behind one load balancer share the audit store: a block decided on one (by
/// the policy or an administrator) reaches the other at its next `sync_blocks`, and so does
/// an administrator's unblock; the later decision wins on both.
#[test]
fn replicas_sharing_the_audit_store_apply_each_others_blocks() {
    let home = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::in_memory());
    let (_, mallory) = keys.create("mallory", None, "full", &[]).unwrap();
    let (_, bob) = keys.create("bob", None, "full", &[]).unwrap();
    let build = || blocking_chain(&keys, home.path());
    let (a, b) = (build(), build());
    let mut ma = ChainOracle::new(a.clone(), &mallory, None).unwrap();
    let mut mb = ChainOracle::new(b.clone(), &mallory, None).unwrap();
    let mut bob_b = ChainOracle::new(b.clone(), &bob, None).unwrap();
    // Nothing to apply yet.
    assert_eq!(a.sync_blocks().unwrap(), 0);
    // Replica A's policy blocks mallory at her 3rd query there; replica B, which saw only one
    // of her queries, still serves her until it syncs.
    assert!(!refused(&mut ma, 1) && !refused(&mut ma, 2));
    assert!(refused(&mut ma, 3));
    assert!(!refused(&mut mb, 4));
    assert_eq!(
        a.sync_blocks().unwrap(),
        0,
        "A's own block changes nothing on A"
    );
    // (A's sync wrote A's queued records; otherwise its writer commits them within its
    // linger time, which the test does not wait for.)
    assert_eq!(b.sync_blocks().unwrap(), 1);
    assert!(refused(&mut mb, 5), "A's block applies on B");
    assert_eq!(b.blocked()[0].1, "mallory");
    // An administrator blocks bob on B: A refuses him after its sync.
    b.admin_block("bob", None, "abuse report").unwrap();
    assert!(refused(&mut bob_b, 1));
    b.flush_audit();
    assert_eq!(a.sync_blocks().unwrap(), 1);
    let mut bob_a = ChainOracle::new(a.clone(), &bob, None).unwrap();
    assert!(refused(&mut bob_a, 2));
    // ... and unblocks mallory on A: B serves her again after its sync, and the override
    // travels too (B's policy may not block her again).
    a.admin_unblock("mallory", None).unwrap();
    assert!(!refused(&mut ma, 6));
    a.flush_audit();
    assert_eq!(
        b.sync_blocks().unwrap(),
        1,
        "bob's block is B's own; mallory's unblock is new"
    );
    assert!(!refused(&mut mb, 7));
    for k in 8..12 {
        assert!(!refused(&mut mb, k), "the override holds on B at query {k}");
    }
    // A further sync finds nothing new; a restarted replica replays the same final state.
    assert_eq!(a.sync_blocks().unwrap(), 0);
    assert_eq!(b.sync_blocks().unwrap(), 0);
    drop((ma, mb, bob_a, bob_b));
    a.flush_audit();
    b.flush_audit();
    let c = build();
    let blocked = c.blocked();
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    assert_eq!(blocked[0].1, "bob");
}

/// A replica of a pair sharing one SQLite audit store, blocking a client at its 5th query,
/// with `detect.shared_state` as given and its own state directory.
fn replica(
    keys: &Arc<KeyStore>,
    store_home: &std::path::Path,
    state_dir: &std::path::Path,
    shared_state: bool,
) -> Arc<mamori_gateway::Chain> {
    let mut cfg = GatewayConfig::default();
    cfg.detect.shared_state = shared_state;
    Arc::new(
        ChainBuilder::new(cfg)
            .keys(keys.clone())
            .audit_store(Box::new(SqliteStore::open_home(store_home).unwrap()))
            .state_dir(state_dir)
            .model(spec(5, Box::new(OnAlarm(Action::Block))))
            .build()
            .unwrap(),
    )
}

/// A client moved from one replica to another (a rolling deploy, a failover) keeps its
/// detector history with `detect.shared_state`: three queries on A, A checkpoints, and B
/// blocks her at her 5th query overall, her 2nd there. Without it, B starts from zero. A
/// replica holding a shorter, stale history does not overwrite the longer one, and an audit
/// store that keeps no states is refused at start.
#[test]
fn a_client_moved_to_another_replica_keeps_its_detector_history_with_shared_state() {
    let store = tempfile::tempdir().unwrap();
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let keys = Arc::new(KeyStore::in_memory());
    let (_, mallory) = keys.create("mallory", None, "full", &[]).unwrap();
    for shared in [true, false] {
        let model_store = tempfile::tempdir().unwrap();
        let home = if shared {
            store.path()
        } else {
            model_store.path()
        };
        let a = replica(&keys, home, sa.path(), shared);
        let b = replica(&keys, home, sb.path(), shared);
        let mut on_a = ChainOracle::new(a.clone(), &mallory, None).unwrap();
        for k in 1..=3 {
            assert!(!refused(&mut on_a, k));
        }
        a.save_states().unwrap();
        let mut on_b = ChainOracle::new(b.clone(), &mallory, None).unwrap();
        assert!(!refused(&mut on_b, 4), "shared {shared}");
        assert_eq!(
            refused(&mut on_b, 5),
            shared,
            "shared {shared}: her 5th query overall is refused only when B took over A's history"
        );
        if !shared {
            continue;
        }
        // B's longer history (5) is saved; A's stale one (3, not observed since) is not
        // rewritten, and would not replace it if it were.
        b.save_states().unwrap();
        a.save_states().unwrap();
        let s = SqliteStore::open_home(home).unwrap();
        let saved = s.get_state("lin", "mallory").unwrap().unwrap();
        assert_eq!(saved.queries, 5);
        s.put_states(
            "lin",
            "stale",
            0,
            &[mamori_gateway::audit::SharedState {
                subject: "mallory".into(),
                queries: 3,
                snapshot: b"{}".to_vec(),
            }],
        )
        .unwrap();
        assert_eq!(s.get_state("lin", "mallory").unwrap().unwrap(), saved);
        assert!(s.get_state("lin", "nobody").unwrap().is_none());

        // States are stored compressed (`MSS1`), and a row in the first format (a JSON map
        // of hex snapshots, written by an older replica) is still taken over: in a store
        // holding only that row, a fresh replica refuses her first query there, her 6th.
        assert!(saved
            .snapshot
            .starts_with(mamori_gateway::state_codec::MAGIC));
        let snaps = mamori_gateway::state_codec::decode(&saved.snapshot).unwrap();
        let legacy: std::collections::BTreeMap<String, String> = snaps
            .iter()
            .map(|(k, v)| (k.clone(), hex::encode(v)))
            .collect();
        for with_row in [true, false] {
            let (home, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            if with_row {
                SqliteStore::open_home(home.path())
                    .unwrap()
                    .put_states(
                        "lin",
                        "old",
                        0,
                        &[mamori_gateway::audit::SharedState {
                            subject: "mallory".into(),
                            queries: 5,
                            snapshot: serde_json::to_vec(&legacy).unwrap(),
                        }],
                    )
                    .unwrap();
            }
            let c = replica(&keys, home.path(), dir.path(), true);
            let mut on_c = ChainOracle::new(c, &mallory, None).unwrap();
            assert_eq!(refused(&mut on_c, 6), with_row, "legacy row {with_row}");
        }
    }
    // The in-memory store keeps no states: refused at start, naming the setting.
    let mut cfg = GatewayConfig::default();
    cfg.detect.shared_state = true;
    let e = ChainBuilder::new(cfg)
        .keys(keys.clone())
        .model(spec(5, Box::new(OnAlarm(Action::Block))))
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("detect.shared_state"), "{e}");
}

/// With `detect.shared_state`, a subject evicted from memory (`detect.max_resident_subjects`)
/// is saved in the shared store first and taken from it again on its next request: its
/// history goes on — here to a block at its 5th query overall.
#[test]
fn an_evicted_subject_comes_back_from_the_shared_store_with_its_history() {
    let (store, sd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let keys = Arc::new(KeyStore::in_memory());
    let (_, mallory) = keys.create("mallory", None, "full", &[]).unwrap();
    let (_, alice) = keys.create("alice", None, "full", &[]).unwrap();
    let mut cfg = GatewayConfig::default();
    cfg.detect.shared_state = true;
    cfg.detect.max_resident_subjects = 1;
    let chain = Arc::new(
        ChainBuilder::new(cfg)
            .keys(keys.clone())
            .audit_store(Box::new(SqliteStore::open_home(store.path()).unwrap()))
            .state_dir(sd.path())
            .model(spec(5, Box::new(OnAlarm(Action::Block))))
            .build()
            .unwrap(),
    );
    let mut m = ChainOracle::new(chain.clone(), &mallory, None).unwrap();
    for k in 1..=3 {
        assert!(!refused(&mut m, k));
    }
    std::thread::sleep(std::time::Duration::from_millis(3));
    let mut a = ChainOracle::new(chain.clone(), &alice, None).unwrap();
    assert!(!refused(&mut a, 1));
    chain.save_states().unwrap();
    let listed = chain.clients();
    let resident = |who: &str| listed.iter().find(|c| c.subject == who).unwrap().resident;
    assert!(!resident("mallory") && resident("alice"), "{listed:?}");
    assert!(!refused(&mut m, 4));
    assert!(refused(&mut m, 5), "her 5th query overall");
}
