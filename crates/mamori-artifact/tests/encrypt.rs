//! Encryption at rest (issue #8, item 1).

mod common;

use std::fs;

use mamori_artifact::encrypt::{decrypt_model_to_dir, encrypt_model, open_encrypted_model};
use mamori_artifact::{ArtifactError, ModelKey};

#[test]
fn round_trip_in_memory_and_to_disk() {
    let d = tempfile::tempdir().unwrap();
    let (m, e, out) = (d.path().join("m"), d.path().join("e"), d.path().join("o"));
    common::write_model(&m);
    let key = ModelKey::generate();
    let names = encrypt_model(&m, &key, &e, false).unwrap();
    assert_eq!(names, ["model.json", "model.safetensors"]);
    // No plaintext file lands in the encrypted directory.
    let weights = fs::read(m.join("model.safetensors")).unwrap();
    for f in fs::read_dir(&e).unwrap() {
        let p = f.unwrap().path();
        assert!(p.to_string_lossy().ends_with(".enc"), "{}", p.display());
        let bytes = fs::read(&p).unwrap();
        assert!(!bytes.windows(16).any(|w| w == &weights[..16]));
        assert!(!bytes.windows(6).any(|w| w == b"\"tiny\""));
    }
    // The key is never written in the clear: neither its bytes nor its hex appear.
    let kf = d.path().join("k.hex");
    key.write_new_file(&kf).unwrap();
    let key_hex = fs::read_to_string(&kf).unwrap().trim().to_owned();
    let mut key_bytes = [0u8; 32];
    hex::decode_to_slice(&key_hex, &mut key_bytes).unwrap();
    for f in fs::read_dir(&e).unwrap() {
        let bytes = fs::read(f.unwrap().path()).unwrap();
        assert!(!bytes.windows(32).any(|w| w == key_bytes));
        assert!(!bytes.windows(64).any(|w| w == key_hex.as_bytes()));
    }
    let opened = open_encrypted_model(&e, &key).unwrap();
    assert_eq!(opened.get("model.safetensors").unwrap(), &weights[..]);
    assert_eq!(
        opened.get("model.json").unwrap(),
        &fs::read(m.join("model.json")).unwrap()[..]
    );
    decrypt_model_to_dir(&e, &key, &out, false).unwrap();
    assert_eq!(fs::read(out.join("model.safetensors")).unwrap(), weights);
    // Output directories must be empty unless forced.
    let err = encrypt_model(&m, &key, &e, false).unwrap_err();
    assert!(
        matches!(err, ArtifactError::DestinationNotEmpty { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--force"), "{err}");
    encrypt_model(&m, &key, &e, true).unwrap();
    let err = decrypt_model_to_dir(&e, &key, &out, false).unwrap_err();
    assert!(
        matches!(err, ArtifactError::DestinationNotEmpty { .. }),
        "{err}"
    );
}

#[test]
fn every_flipped_byte_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let (m, e) = (d.path().join("m"), d.path().join("e"));
    common::write_model(&m);
    let key = ModelKey::generate();
    encrypt_model(&m, &key, &e, false).unwrap();
    let mut checked = 0;
    for entry in fs::read_dir(&e).unwrap() {
        let p = entry.unwrap().path();
        let orig = fs::read(&p).unwrap();
        for i in 0..orig.len() {
            let mut v = orig.clone();
            v[i] ^= 0x01;
            fs::write(&p, &v).unwrap();
            let err = open_encrypted_model(&e, &key).expect_err(&format!(
                "flip of byte {i} of {} went unnoticed",
                p.display()
            ));
            // Header bytes give format / key errors; everything else fails authentication.
            if i >= 30 {
                assert!(
                    matches!(err, ArtifactError::TamperedCiphertext { .. }),
                    "byte {i}: {err}"
                );
            }
            checked += 1;
        }
        // Truncation too.
        fs::write(&p, &orig[..orig.len() - 1]).unwrap();
        assert!(open_encrypted_model(&e, &key).is_err());
        fs::write(&p, &orig).unwrap();
    }
    assert!(checked > 200, "{checked}");
    open_encrypted_model(&e, &key).unwrap();
}

#[test]
fn swapped_deleted_added_and_mixed_files_are_detected() {
    let d = tempfile::tempdir().unwrap();
    let (m, e, e2) = (d.path().join("m"), d.path().join("e"), d.path().join("e2"));
    common::write_model(&m);
    let key = ModelKey::generate();
    encrypt_model(&m, &key, &e, false).unwrap();
    encrypt_model(&m, &key, &e2, false).unwrap();
    let (j, w) = (e.join("model.json.enc"), e.join("model.safetensors.enc"));
    let (jb, wb) = (fs::read(&j).unwrap(), fs::read(&w).unwrap());

    // Swap the two files' contents: the names are bound as associated data.
    fs::write(&j, &wb).unwrap();
    fs::write(&w, &jb).unwrap();
    let err = open_encrypted_model(&e, &key).unwrap_err();
    assert!(
        err.to_string()
            .contains("failed authentication: it was tampered with or renamed"),
        "{err}"
    );
    fs::write(&j, &jb).unwrap();
    fs::write(&w, &wb).unwrap();

    // Delete one.
    fs::remove_file(&w).unwrap();
    let err = open_encrypted_model(&e, &key).unwrap_err();
    assert!(
        err.to_string()
            .contains("model.safetensors.enc is listed in the index but missing"),
        "{err}"
    );
    fs::write(&w, &wb).unwrap();

    // Add one (a valid container under the same key, but not in the index).
    fs::copy(&w, e.join("extra.enc")).unwrap();
    let err = open_encrypted_model(&e, &key).unwrap_err();
    assert!(
        err.to_string()
            .contains("not listed in the encrypted index"),
        "{err}"
    );
    fs::remove_file(e.join("extra.enc")).unwrap();

    // A plaintext file dropped beside them.
    fs::write(e.join("README"), b"hi").unwrap();
    let err = open_encrypted_model(&e, &key).unwrap_err();
    assert!(
        err.to_string()
            .contains("unexpected unencrypted file README"),
        "{err}"
    );
    fs::remove_file(e.join("README")).unwrap();

    // A file from another encryption of a *different* model under the same key.
    let m2 = d.path().join("m2");
    common::write_model(&m2);
    fs::write(m2.join("model.safetensors"), b"other weights").unwrap();
    let e3 = d.path().join("e3");
    encrypt_model(&m2, &key, &e3, false).unwrap();
    fs::copy(e3.join("model.safetensors.enc"), &w).unwrap();
    let err = open_encrypted_model(&e, &key).unwrap_err();
    assert!(
        err.to_string()
            .contains("files from different encryptions were mixed"),
        "{err}"
    );
}

#[test]
fn wrong_key_and_missing_key_are_named() {
    let d = tempfile::tempdir().unwrap();
    let (m, e) = (d.path().join("m"), d.path().join("e"));
    common::write_model(&m);
    let key = ModelKey::generate();
    encrypt_model(&m, &key, &e, false).unwrap();
    let other = ModelKey::generate();
    let err = open_encrypted_model(&e, &other).unwrap_err();
    assert!(matches!(err, ArtifactError::WrongKey { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "wrong model key for mamori-index.enc: it was encrypted with key id {}, the key given has id {}",
            key.id(),
            other.id()
        )
    );
    // The gateway's path: an encrypted directory and no key.
    let err =
        mamori_artifact::open_model(&e, None, &mamori_artifact::SignaturePolicy::Skip).unwrap_err();
    assert!(matches!(err, ArtifactError::MissingKey), "{err}");
    assert!(
        err.to_string()
            .starts_with("missing model key: pass --key-file"),
        "{err}"
    );
    // Not an encrypted directory at all.
    let err = open_encrypted_model(&m, &key).unwrap_err();
    assert!(
        err.to_string().contains("unexpected unencrypted file"),
        "{err}"
    );
    let empty = d.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let err = open_encrypted_model(&empty, &key).unwrap_err();
    assert!(err.to_string().contains("not an encrypted model"), "{err}");
    // Refusals at encryption time.
    let err = encrypt_model(&e, &key, &d.path().join("x"), false).unwrap_err();
    assert!(err.to_string().contains("already encrypted"), "{err}");
    let err = encrypt_model(&empty, &key, &d.path().join("y"), false).unwrap_err();
    assert!(err.to_string().contains("no files to encrypt"), "{err}");
    let err = encrypt_model(&m, &key, &m, true).unwrap_err();
    assert!(err.to_string().contains("must differ"), "{err}");
}
