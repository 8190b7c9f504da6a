//! A real native model goes through the whole protection path and keeps its answers:
//! sign → encrypt → back up (with the home's signing keys and a live database) → restore into
//! an empty directory → decrypt in memory and verify against the restored trust store →
//! `NativeModel::from_bytes` → identical logits.

use std::fs;

use mamori_artifact::backup::{create_backup, restore_backup};
use mamori_artifact::files::now_unix;
use mamori_artifact::{
    encrypt_model, open_model, sign_model, ModelKey, SignaturePolicy, SigningKeyPair, TrustStore,
};
use mamori_core::{Model, ModelCard, Tensor};
use mamori_ml::{Arch, NativeModel, Network, CARD_FILE, WEIGHTS_FILE};

fn card() -> ModelCard {
    ModelCard {
        name: "e2e".into(),
        architecture: "cnn".into(),
        architecture_detail: serde_json::Value::Null,
        input_shape: vec![],
        input_dtype: "FP32".into(),
        input_range: [0.0, 1.0],
        normalisation: Default::default(),
        class_names: (0..3).map(|c| format!("c{c}")).collect(),
        output_kind: Default::default(),
        dataset: Default::default(),
        test_accuracy: None,
        training_time_s: None,
        seed: Some(3),
        extra: Default::default(),
    }
}

#[test]
fn restored_encrypted_signed_model_gives_identical_logits() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let plain = d.path().join("plain");
    let model = NativeModel::new(Network::new(&Arch::Cnn, &[1, 12, 12], 3, 5), card());
    model.save(&plain).unwrap();
    let x = Tensor::new(
        vec![4, 1, 12, 12],
        (0..576).map(|i| ((i * 29) % 97) as f32 / 97.0).collect(),
    )
    .unwrap();
    let want = model.logits(&x).unwrap();

    let now = now_unix();
    let (signer, _) =
        SigningKeyPair::create_in(&home.join("signing"), "release", now, 86_400).unwrap();
    sign_model(&plain, &signer, None, now).unwrap();
    let key = ModelKey::generate();
    let enc = d.path().join("e2e.enc");
    encrypt_model(&plain, &key, &enc, false).unwrap();
    rusqlite::Connection::open(home.join("audit.db"))
        .unwrap()
        .execute_batch("CREATE TABLE audit(e TEXT); INSERT INTO audit VALUES ('query 1');")
        .unwrap();

    let archive = d.path().join("backup.tar.gz");
    create_backup(
        Some(&home),
        std::slice::from_ref(&enc),
        &archive,
        Some(&key),
    )
    .unwrap();
    fs::remove_dir_all(&home).unwrap();
    fs::remove_dir_all(&enc).unwrap();

    let into = d.path().join("restored");
    restore_backup(&archive, &into, false, Some(&key)).unwrap();
    let trust = TrustStore::load(&into.join("home/signing")).unwrap();
    let opened = open_model(
        &into.join("models/e2e.enc"),
        Some(&key),
        &SignaturePolicy::Require(trust),
    )
    .unwrap();
    assert!(opened.encrypted);
    assert_eq!(opened.manifest.unwrap().key_id, signer.info.key_id);
    let served = NativeModel::from_bytes(
        opened.files.get(WEIGHTS_FILE).unwrap(),
        opened.files.get(CARD_FILE).unwrap(),
    )
    .unwrap();
    assert_eq!(served.logits(&x).unwrap(), want);
    let rows: String = rusqlite::Connection::open(into.join("home/audit.db"))
        .unwrap()
        .query_row("SELECT e FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, "query 1");
}
