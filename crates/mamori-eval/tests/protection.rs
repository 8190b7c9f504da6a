//! `mamori_gateway::protection`: named policies become chains that behave as named.

use mamori_core::{Model, Oracle};
use mamori_gateway::protection::{self, ProtectionContext, BUILTIN_POLICIES};
use mamori_gateway::{ChainOracle, KeyStore};
use mamori_ml::{Arch, NativeModel, TrainConfig};
use std::collections::BTreeMap;
use std::sync::Arc;

fn victim() -> (Arc<NativeModel>, mamori_data::Split) {
    let split = mamori_data::load("digits", &mamori_data::resolve_data_dir(None)).unwrap();
    let cfg = TrainConfig {
        epochs: 3,
        ..Default::default()
    };
    let m = mamori_attack::experiment::train_victim(
        &Arch::Mlp { hidden: vec![32] },
        &split.train,
        &split.test,
        &cfg,
        "digits-victim",
    )
    .unwrap();
    (Arc::new(m), split)
}

fn chain_for(
    policy: &str,
    model: &Arc<NativeModel>,
    home: &std::path::Path,
) -> (
    Arc<mamori_gateway::Chain>,
    String,
    Option<Arc<mamori_defense::Dawn>>,
) {
    let spec = protection::resolve(policy, &BTreeMap::new()).unwrap();
    let ctx = ProtectionContext {
        home: home.to_path_buf(),
        secret: Some(mamori_eval::runner::secret_for_seed(1)),
        calibration: None,
        model_calibrations: Default::default(),
        network: Some(Arc::new(model.network.clone())),
        fingerprint_dims: Vec::new(),
    };
    let m: Arc<dyn Model> = model.clone();
    let p = protection::protect(
        mamori_eval::runner::eval_gateway_config(),
        vec![(m, "mamori-native".into())],
        &spec,
        &ctx,
    )
    .unwrap();
    let dawn = p.dawn.values().next().cloned();
    let keys = Arc::new(KeyStore::in_memory());
    let (_, key) = keys.create("c", None, "eval", &[]).unwrap();
    let chain = Arc::new(p.builder().keys(keys).build().unwrap());
    (chain, key, dawn)
}

#[test]
fn every_builtin_policy_builds_a_chain_that_answers() {
    let (model, split) = victim();
    let dir = tempfile::tempdir().unwrap();
    let x = split.test.x.slice_rows(0, 50);
    let bare = model.predict(&x).unwrap();
    for name in BUILTIN_POLICIES {
        let (chain, key, dawn) = chain_for(name, &model, &dir.path().join(name));
        let mut o = ChainOracle::new(chain.clone(), &key, None).unwrap();
        let a = o.query(&x).unwrap();
        assert_eq!(a.labels.len(), 50, "{name}");
        let same = a.probs.data() == bare.data();
        match *name {
            "none" | "detect" => assert!(same, "{name} changed the answers"),
            "dawn" => assert!(dawn.is_some()),
            _ => assert!(!same || dawn.is_some(), "{name} did not change any answer"),
        }
        assert_eq!(
            dawn.is_some(),
            matches!(*name, "dawn" | "default"),
            "{name}"
        );
        chain.shutdown();
    }
}

#[test]
fn label_only_policy_discloses_labels_and_keeps_them() {
    let (model, split) = victim();
    let dir = tempfile::tempdir().unwrap();
    let (chain, key, _) = chain_for("label_only", &model, dir.path());
    let x = split.test.x.slice_rows(0, 40);
    let mut o = ChainOracle::new(chain, &key, None).unwrap();
    let a = o.query(&x).unwrap();
    assert_eq!(
        a.labels,
        mamori_ml::predict_labels(model.as_ref(), &x).unwrap()
    );
    for row in a.probs.rows() {
        assert_eq!(row.iter().filter(|v| **v == 1.0).count(), 1);
    }
}

#[test]
fn unknown_postprocessor_names_in_the_config_are_refused() {
    let (model, _) = victim();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = mamori_eval::runner::eval_gateway_config();
    cfg.tiers.get_mut("eval").unwrap().postprocessors = vec!["sparkles".into()];
    let m: Arc<dyn Model> = model.clone();
    let e = protection::protect(
        cfg,
        vec![(m, "mamori-native".into())],
        &protection::builtin("none").unwrap(),
        &ProtectionContext::new(dir.path()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("sparkles"), "{e}");
    // A built-in name in the configuration resolves.
    let mut cfg = mamori_eval::runner::eval_gateway_config();
    cfg.tiers.get_mut("eval").unwrap().postprocessors = vec!["rounding".into()];
    let m: Arc<dyn Model> = model;
    assert!(protection::protect(
        cfg,
        vec![(m, "mamori-native".into())],
        &protection::builtin("none").unwrap(),
        &ProtectionContext::new(dir.path()),
    )
    .is_ok());
}
