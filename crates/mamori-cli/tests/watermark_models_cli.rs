//! DAWN with several served models (issue #8, model isolation): two models served in one
//! chain keep separate keys and ledgers; `mamori watermark verify --model` convicts a copy of
//! one model against its own ledger and not against the other's; a home written before
//! per-model ledgers still verifies (as it is, and after `serve` migrated it); a missing or
//! unknown `--model` is an error naming the choices.

mod common;

use common::{mamori, read_json};
use mamori_core::{ModelCard, Oracle, Tensor};
use mamori_defense::dawn::DawnPaths;
use mamori_defense::{Ledger, LedgerRecord, SecretKey};
use mamori_gateway::protection::{self, PolicySpec, ProtectionContext, WatermarkSpec};
use mamori_gateway::{ChainOracle, GatewayConfig, KeyStore};
use mamori_ml::{Arch, NativeModel, Network, Targets, TrainConfig};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::Arc;

const SHAPE: [usize; 3] = [1, 4, 4];
const CLASSES: usize = 4;

fn model(name: &str, seed: u64) -> NativeModel {
    NativeModel::new(
        Network::new(&Arch::Mlp { hidden: vec![8] }, &SHAPE, CLASSES, seed),
        ModelCard::classifier(name, "mlp", &SHAPE, CLASSES),
    )
}

/// `n` random inputs from stream `seed`.
fn inputs(seed: u64, n: usize) -> Vec<Vec<f32>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..16).map(|_| rng.gen::<f32>()).collect())
        .collect()
}

/// DAWN at rate 0.25 without the fingerprint (enough marks from a few hundred queries).
fn dawn_policy() -> PolicySpec {
    PolicySpec {
        watermark: Some(WatermarkSpec::Dawn {
            rate: 0.25,
            fingerprint: 0.0,
            fingerprint_dims: Vec::new(),
        }),
        ..Default::default()
    }
}

/// An MLP trained on `records`' inputs with their watermark labels until it memorises them.
fn memoriser(dir: &Path, records: &[LedgerRecord]) {
    let mut net = Network::new(&Arch::Mlp { hidden: vec![64] }, &SHAPE, CLASSES, 5);
    let x = Tensor::new(
        vec![records.len(), 1, 4, 4],
        records.iter().flat_map(|r| r.input.clone()).collect(),
    )
    .unwrap();
    let ys: Vec<usize> = records.iter().map(|r| r.given_label).collect();
    let cfg = TrainConfig {
        epochs: 300,
        batch_size: 32,
        learning_rate: 1e-2,
        ..TrainConfig::default()
    };
    mamori_ml::train(&mut net, &x, &Targets::Labels(ys), &cfg).unwrap();
    NativeModel::new(net, ModelCard::classifier("thief", "mlp", &SHAPE, CLASSES))
        .save(dir)
        .unwrap();
}

fn read_ledger(paths: &DawnPaths) -> Vec<LedgerRecord> {
    let key = SecretKey::load(&paths.ledger_key).unwrap();
    Ledger::open(&paths.ledger, &key)
        .unwrap()
        .records()
        .to_vec()
}

/// `mamori watermark ARGS…` → (success, stdout, stderr).
fn run(home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = mamori(home).arg("watermark").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verify(home: &Path, suspect: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["verify", "--suspect", suspect.to_str().unwrap()];
    all.extend_from_slice(args);
    run(home, &all)
}

#[test]
fn two_served_models_keep_separate_ledgers_and_a_copy_is_convicted_only_by_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let protected = protection::protect(
        GatewayConfig::default(),
        vec![
            (Arc::new(model("alpha", 3)), "mamori-native".into()),
            (Arc::new(model("beta", 4)), "mamori-native".into()),
        ],
        &dawn_policy(),
        &ProtectionContext::new(&home),
    )
    .unwrap();
    assert_eq!(protected.dawn.keys().collect::<Vec<_>>(), ["alpha", "beta"]);
    let keys = Arc::new(KeyStore::in_memory());
    let (_, key) = keys.create("c", None, "full", &[]).unwrap();
    let chain = Arc::new(protected.builder().keys(keys).build().unwrap());
    // Each model answers its own stream of 400 queries through the chain.
    let streams = [("alpha", inputs(1, 400)), ("beta", inputs(2, 400))];
    for (name, xs) in &streams {
        let mut o = ChainOracle::new(chain.clone(), &key, Some(name)).unwrap();
        for chunk in xs.chunks(50) {
            let x = Tensor::from_rows(&SHAPE, chunk.iter().map(|r| r.as_slice())).unwrap();
            o.query(&x).unwrap();
        }
    }
    drop(chain);

    // Separate ledgers, separate keys; each holds only its own model's marks.
    let (pa, pb) = (
        DawnPaths::for_model(&home, "alpha"),
        DawnPaths::for_model(&home, "beta"),
    );
    assert!(!DawnPaths::in_home(&home).any_exists());
    assert_ne!(
        SecretKey::load(&pa.key).unwrap(),
        SecretKey::load(&pb.key).unwrap()
    );
    assert!(Ledger::open(&pb.ledger, &SecretKey::load(&pa.ledger_key).unwrap()).is_err());
    let (ra, rb) = (read_ledger(&pa), read_ledger(&pb));
    assert!(
        ra.len() > 60 && rb.len() > 60,
        "{} / {}",
        ra.len(),
        rb.len()
    );
    for (records, name, own) in [(&ra, "alpha", &streams[0].1), (&rb, "beta", &streams[1].1)] {
        for r in records.iter() {
            assert_eq!(r.model.as_deref(), Some(name));
            assert!(
                own.contains(&r.input),
                "a mark of another model in {name}'s ledger"
            );
        }
    }

    // A copy of alpha (memorised alpha's marked answers).
    let thief = tmp.path().join("thief");
    memoriser(&thief, &ra);
    let json = tmp.path().join("a.json");
    let report = tmp.path().join("a.report.json");
    let (ok, out, err) = verify(
        &home,
        &thief,
        &[
            "--model",
            "alpha",
            "--json",
            json.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("watermark found"), "{out}");
    assert!(out.contains("model       alpha"), "{out}");
    let j = read_json(&json);
    assert_eq!(j["model"], "alpha");
    assert!(j["p_value"].as_f64().unwrap() < 1e-9, "{j}");
    let r = read_json(&report);
    assert_eq!(r["report"]["model"], "alpha");
    assert_eq!(r["report"]["version"], 6);
    let pk = home.join("watermark").join("signing.key.pub");
    let (ok, out, err) = run(
        &home,
        &[
            "check-report",
            report.to_str().unwrap(),
            "--public-key",
            pk.to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains("model       alpha"), "{out}{err}");

    // Against beta's ledger the same copy is not accused.
    let (ok, out, err) = verify(
        &home,
        &thief,
        &["--model", "beta", "--json", json.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert!(out.contains("not found at alpha"), "{out}");
    let j = read_json(&json);
    assert_eq!(j["model"], "beta");
    assert!(j["p_value"].as_f64().unwrap() > 1e-3, "{j}");

    // `--ledger PATH` still works, and must agree with `--model`.
    let (ok, out, err) = verify(&home, &thief, &["--ledger", pa.ledger.to_str().unwrap()]);
    assert!(ok && out.contains("watermark found"), "{out}{err}");
    let (ok, _, err) = verify(
        &home,
        &thief,
        &["--ledger", pa.ledger.to_str().unwrap(), "--model", "beta"],
    );
    assert!(
        !ok && err.contains("\"alpha\"") && err.contains("\"beta\""),
        "{err}"
    );

    // Several ledgers and no --model, or an unknown model: errors naming the choices.
    let (ok, _, err) = verify(&home, &thief, &[]);
    assert!(
        !ok && err.contains("--model") && err.contains("alpha, beta"),
        "{err}"
    );
    let (ok, _, err) = verify(&home, &thief, &["--model", "gamma"]);
    assert!(
        !ok && err.contains("\"gamma\"") && err.contains("alpha, beta"),
        "{err}"
    );
    let (ok, out, err) = run(&home, &["ledger", "--model", "beta"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("model       beta") && out.contains(&format!("records     {}", rb.len())),
        "{out}"
    );
}

/// A home with the single shared ledger of before verifies as it is, then — once `serve`
/// code (`protect`) served one model from it — from the model's own directory, with the same
/// keys and records; with several models the shared ledger stays and is named among the
/// choices.
#[test]
fn a_home_with_the_old_single_ledger_still_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let victim = model("victim", 3);
    // The old layout: one Dawn for the home (as `serve` wrote it before per-model ledgers).
    let legacy = DawnPaths::in_home(&home);
    {
        let dawn = mamori_defense::Dawn::open_home(&home, 0.25).unwrap();
        for x in inputs(1, 400) {
            let t = Tensor::new(vec![1, 1, 4, 4], x.clone()).unwrap();
            let mut p = mamori_core::Model::predict(&victim, &t)
                .unwrap()
                .data()
                .to_vec();
            dawn.apply_recorded(&x, &mut p).unwrap();
        }
    }
    let records = read_ledger(&legacy);
    assert!(records.len() > 60 && records.iter().all(|r| r.model.is_none()));
    let thief = tmp.path().join("thief");
    memoriser(&thief, &records);
    let (ok, out, err) = verify(&home, &thief, &[]);
    assert!(ok && out.contains("watermark found"), "{out}{err}");
    assert!(out.contains("model       (not named)"), "{out}");

    // `serve` of a single model adopts it: same key, same records, now under the model.
    let home2 = tmp.path().join("home2");
    copy_dir(&home, &home2);
    let old_key = SecretKey::load(&DawnPaths::in_home(&home2).key).unwrap();
    protection::protect(
        GatewayConfig::default(),
        vec![(Arc::new(model("victim", 3)), "mamori-native".into())],
        &dawn_policy(),
        &ProtectionContext::new(&home2),
    )
    .unwrap();
    let moved = DawnPaths::for_model(&home2, "victim");
    assert!(!DawnPaths::in_home(&home2).any_exists());
    assert_eq!(SecretKey::load(&moved.key).unwrap(), old_key);
    assert_eq!(read_ledger(&moved), records);
    let json = tmp.path().join("v.json");
    let (ok, out, err) = verify(&home2, &thief, &["--json", json.to_str().unwrap()]);
    assert!(ok && out.contains("watermark found"), "{out}{err}");
    let j = read_json(&json);
    assert_eq!(j["model"], "victim");

    // Serving two models leaves the shared ledger in place: it is one of the choices.
    protection::protect(
        GatewayConfig::default(),
        vec![
            (Arc::new(model("a", 3)), "mamori-native".into()),
            (Arc::new(model("b", 4)), "mamori-native".into()),
        ],
        &dawn_policy(),
        &ProtectionContext::new(&home),
    )
    .unwrap();
    assert!(legacy.ledger.is_file());
    assert_eq!(read_ledger(&legacy), records);
    let (ok, _, err) = verify(&home, &thief, &[]);
    assert!(
        !ok && err.contains("a, b") && err.contains(legacy.ledger.to_str().unwrap()),
        "{err}"
    );
    let (ok, out, err) = verify(
        &home,
        &thief,
        &["--ledger", legacy.ledger.to_str().unwrap()],
    );
    assert!(ok && out.contains("watermark found"), "{out}{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}
