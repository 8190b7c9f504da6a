//! Signing and verification (issue #8, item 2).

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use mamori_artifact::sign::{check_base, read_model_dir, verify_model_at};
use mamori_artifact::{
    open_model, sign_model, verify_files, ArtifactError, SignaturePolicy, SigningKeyPair,
    TrustStore,
};

const T0: u64 = 1_700_000_000;
const DAY: u64 = 86_400;

fn signed_model(dir: &Path, signing: &Path) -> SigningKeyPair {
    common::write_model(dir);
    let (key, _) = SigningKeyPair::create_in(signing, "release", T0, 30 * DAY).unwrap();
    sign_model(dir, &key, None, T0 + 1).unwrap();
    key
}

#[test]
fn manifest_records_files_card_base_and_datasets() {
    let d = tempfile::tempdir().unwrap();
    let (m, s) = (d.path().join("m"), d.path().join("signing"));
    let key = signed_model(&m, &s);
    let trust = TrustStore::load(&s).unwrap();
    let man = verify_model_at(&m, &trust, T0 + 2).unwrap();
    assert_eq!(man.key_id, key.info.key_id);
    assert_eq!(man.model_name, "tiny");
    let names: Vec<_> = man.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["model.json", "model.safetensors"]);
    assert_eq!(man.card, common::card());
    assert_eq!(
        man.base_model.as_ref().unwrap().reference,
        "fmnist-cnn-base"
    );
    assert_eq!(man.datasets[0].files[0].path, "digits/optdigits.tra");

    // --base DIR records the base's file digests, and check_base detects a changed base.
    let base = d.path().join("base");
    common::write_model(&base);
    let man = sign_model(&m, &key, Some(&base), T0 + 3).unwrap();
    assert_eq!(man.base_model.as_ref().unwrap().files.len(), 2);
    check_base(&man, &base).unwrap();
    fs::write(base.join("model.safetensors"), b"swapped base").unwrap();
    let err = check_base(&man, &base).unwrap_err();
    assert!(
        err.to_string()
            .contains("model.safetensors was tampered with"),
        "{err}"
    );
}

#[test]
fn every_flipped_byte_of_a_signed_model_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let (m, s) = (d.path().join("m"), d.path().join("signing"));
    signed_model(&m, &s);
    let trust = TrustStore::load(&s).unwrap();
    let files = read_model_dir(&m).unwrap();
    assert_eq!(files.len(), 4);
    let mut checked = 0;
    for name in files.keys() {
        for i in 0..files[name].len() {
            let mut f: HashMap<String, Vec<u8>> = files.clone();
            f.get_mut(name).unwrap()[i] ^= 0x01;
            let err = verify_files(&m, &f, &trust, T0 + 2)
                .expect_err(&format!("flip of byte {i} of {name} went unnoticed"));
            if name == "model.json" || name == "model.safetensors" {
                assert_eq!(
                    err.to_string().split(':').next().unwrap(),
                    format!("model file {name} was tampered with"),
                    "{err}"
                );
            }
            if name == "manifest.json" {
                assert!(
                    matches!(err, ArtifactError::TamperedManifest { .. }),
                    "{err}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 1000, "{checked}");
    verify_files(&m, &files, &trust, T0 + 2).unwrap();
}

#[test]
fn named_errors_for_unsigned_tampered_unknown_expired_revoked() {
    let d = tempfile::tempdir().unwrap();
    let (m, s) = (d.path().join("m"), d.path().join("signing"));
    let key = signed_model(&m, &s);
    let trust = TrustStore::load(&s).unwrap();
    let id = &key.info.key_id;

    // Tampered file, named with both hashes.
    let w = m.join("model.safetensors");
    let orig = fs::read(&w).unwrap();
    fs::write(&w, b"stolen and fine-tuned").unwrap();
    let err = verify_model_at(&m, &trust, T0 + 2).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("model file model.safetensors was tampered with: sha256 "),
        "{err}"
    );
    fs::write(&w, &orig).unwrap();

    // Unlisted extra file; missing listed file.
    fs::write(m.join("backdoor.bin"), b"x").unwrap();
    let err = verify_model_at(&m, &trust, T0 + 2).unwrap_err();
    assert_eq!(
        err.to_string(),
        "model file backdoor.bin was tampered with: not listed in the signed manifest"
    );
    fs::remove_file(m.join("backdoor.bin")).unwrap();
    fs::remove_file(&w).unwrap();
    let err = verify_model_at(&m, &trust, T0 + 2).unwrap_err();
    assert_eq!(
        err.to_string(),
        "model file model.safetensors was tampered with: listed in the signed manifest but missing"
    );
    fs::write(&w, &orig).unwrap();

    // Tampered manifest: edit the recorded hash to match a swapped file.
    let mp = m.join("manifest.json");
    let mtext = fs::read_to_string(&mp).unwrap();
    fs::write(&mp, mtext.replace("\"tiny\"", "\"tinier\"")).unwrap();
    let err = verify_model_at(&m, &trust, T0 + 2).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("signed manifest was tampered with: the signature in manifest.sig does not match manifest.json (key {id})")
    );
    fs::write(&mp, &mtext).unwrap();

    // Unknown key: a verifier that trusts someone else.
    let err = verify_model_at(&m, &TrustStore::default(), T0 + 2).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("model signed by unknown key {id}: it is not in the trusted keys (add it with `mamori model keys trust`)")
    );

    // Expired key.
    let err = verify_model_at(&m, &trust, T0 + 30 * DAY).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("signing key {id} expired at 2023-12-14T22:13:20Z")
    );
    // Signing with an expired key is refused too.
    let err = sign_model(&m, &key, None, T0 + 31 * DAY).unwrap_err();
    assert!(matches!(err, ArtifactError::ExpiredKey { .. }), "{err}");

    // Revoked key.
    let mut t2 = trust.clone();
    t2.revoke(id, "key leaked", T0 + 5);
    t2.save(&s).unwrap();
    let t2 = TrustStore::load(&s).unwrap();
    let err = verify_model_at(&m, &t2, T0 + 6).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("signing key {id} was revoked at 2023-11-14T22:13:25Z: key leaked")
    );

    // Unsigned.
    fs::remove_file(m.join("manifest.sig")).unwrap();
    let err = verify_model_at(&m, &trust, T0 + 2).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "model {} is unsigned: manifest.sig not found (sign it with `mamori model sign`)",
            m.display()
        )
    );
    fs::remove_file(m.join("manifest.json")).unwrap();
    let err = verify_model_at(&m, &trust, T0 + 2).unwrap_err();
    assert!(matches!(err, ArtifactError::UnsignedModel { .. }), "{err}");
}

#[test]
fn gateway_policy_refuses_unsigned_unless_configured() {
    let d = tempfile::tempdir().unwrap();
    let (m, s, u) = (
        d.path().join("m"),
        d.path().join("signing"),
        d.path().join("u"),
    );
    signed_model(&m, &s);
    common::write_model(&u);
    let trust = TrustStore::load(&s).unwrap();
    let now = mamori_artifact::files::now_unix();
    // The fixture key is valid from T0 for 30 days: use a fresh key for "now".
    let (k, _) = SigningKeyPair::create_in(&s, "now", now, DAY).unwrap();
    sign_model(&m, &k, None, now).unwrap();
    let trust2 = TrustStore::load(&s).unwrap();
    assert_ne!(trust, trust2);

    let opened = open_model(&m, None, &SignaturePolicy::Require(trust2.clone())).unwrap();
    assert!(opened.manifest.is_some() && !opened.encrypted);
    let err = open_model(&u, None, &SignaturePolicy::Require(trust2.clone())).unwrap_err();
    assert!(matches!(err, ArtifactError::UnsignedModel { .. }), "{err}");
    let opened = open_model(&u, None, &SignaturePolicy::VerifyIfSigned(trust2.clone())).unwrap();
    assert!(opened.manifest.is_none());
    assert!(open_model(&u, None, &SignaturePolicy::Skip).is_ok());
    // A signed but tampered model is refused even under VerifyIfSigned.
    fs::write(m.join("model.safetensors"), b"evil").unwrap();
    let err = open_model(&m, None, &SignaturePolicy::VerifyIfSigned(trust2)).unwrap_err();
    assert!(matches!(err, ArtifactError::TamperedFile { .. }), "{err}");
}

#[test]
fn signed_then_encrypted_model_verifies_in_memory() {
    let d = tempfile::tempdir().unwrap();
    let (m, s, e) = (
        d.path().join("m"),
        d.path().join("signing"),
        d.path().join("e"),
    );
    common::write_model(&m);
    let now = mamori_artifact::files::now_unix();
    let (k, _) = SigningKeyPair::create_in(&s, "now", now, DAY).unwrap();
    sign_model(&m, &k, None, now).unwrap();
    let key = mamori_artifact::ModelKey::generate();
    mamori_artifact::encrypt_model(&m, &key, &e, false).unwrap();
    let trust = TrustStore::load(&s).unwrap();
    let opened = open_model(&e, Some(&key), &SignaturePolicy::Require(trust)).unwrap();
    assert!(opened.encrypted);
    assert_eq!(opened.manifest.unwrap().key_id, k.info.key_id);
    assert_eq!(
        opened.files.get("model.safetensors").unwrap(),
        &fs::read(m.join("model.safetensors")).unwrap()[..]
    );
}

#[test]
fn malformed_signature_files_are_tampered_manifests() {
    let d = tempfile::tempdir().unwrap();
    let (m, s) = (d.path().join("m"), d.path().join("signing"));
    signed_model(&m, &s);
    let trust = TrustStore::load(&s).unwrap();
    let sp = m.join("manifest.sig");
    let orig = fs::read_to_string(&sp).unwrap();
    for (from, to, want) in [
        (
            "\"ed25519\"",
            "\"rsa\"",
            "unsupported version 1 / algorithm \"rsa\"",
        ),
        (
            "\"signature\": \"",
            "\"signature\": \"zz",
            "signature is not 128 hex digits",
        ),
        ("{", "[", "manifest.sig is not valid"),
    ] {
        fs::write(&sp, orig.replacen(from, to, 1)).unwrap();
        let err = verify_model_at(&m, &trust, T0 + 2).unwrap_err();
        assert!(
            matches!(err, ArtifactError::TamperedManifest { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(want), "{err}");
    }
    // A model without a card cannot be signed.
    let bare = d.path().join("bare");
    fs::create_dir(&bare).unwrap();
    fs::write(bare.join("model.safetensors"), b"w").unwrap();
    let (k, _) = SigningKeyPair::create_in(&s, "k", T0, DAY).unwrap();
    let err = sign_model(&bare, &k, None, T0 + 1).unwrap_err();
    assert!(
        err.to_string()
            .contains("needs its model card to be signed (model.json"),
        "{err}"
    );
    // Nor an ONNX model directory without its `<file>.onnx.json`.
    let onnx = d.path().join("onnx");
    fs::create_dir(&onnx).unwrap();
    fs::write(onnx.join("m.onnx"), b"graph").unwrap();
    let err = sign_model(&onnx, &k, None, T0 + 1).unwrap_err();
    assert!(err.to_string().contains("<file>.onnx.json"), "{err}");
}
