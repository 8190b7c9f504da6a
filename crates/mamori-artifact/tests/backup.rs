//! Backups (issue #8, item 4): online SQLite snapshot under concurrent writes, verified
//! restore.

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mamori_artifact::backup::{create_backup, restore_backup, verify_restored_dir};
use mamori_artifact::ArtifactError;
use rusqlite::Connection;

fn rows(db: &Path) -> Vec<(i64, String)> {
    let c = Connection::open(db).unwrap();
    let mut st = c.prepare("SELECT id, body FROM audit ORDER BY id").unwrap();
    let r = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    r
}

/// Backs up a database while a writer inserts pairs of rows in transactions, in WAL and in
/// rollback-journal mode. The restored copy holds a consistent prefix of the source (whole
/// transactions only); a backup after the writer stops holds identical rows.
#[test]
fn live_sqlite_backup_under_concurrent_writes_restores_identical_rows() {
    for mode in ["WAL", "DELETE"] {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("home");
        fs::create_dir_all(home.join("ledger")).unwrap();
        let db = home.join("audit.db");
        {
            let c = Connection::open(&db).unwrap();
            c.pragma_update(None, "journal_mode", mode).unwrap();
            c.execute_batch(
                "CREATE TABLE audit(id INTEGER PRIMARY KEY, body TEXT NOT NULL, pair INTEGER NOT NULL)",
            )
            .unwrap();
        }
        fs::write(home.join("ledger/dawn.jsonl"), b"{\"q\":1}\n").unwrap();
        fs::write(home.join("watermark.key"), b"secret-ledger-key").unwrap();
        let model = d.path().join("fmnist-cnn");
        common::write_model(&model);

        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let writer = {
            let (db, stop, written) = (db.clone(), stop.clone(), written.clone());
            std::thread::spawn(move || {
                let mut c = Connection::open(&db).unwrap();
                c.busy_timeout(Duration::from_secs(30)).unwrap();
                let mut n = 0u64;
                // Bounded: at most 20 000 transactions.
                while !stop.load(Ordering::Relaxed) && n < 20_000 {
                    let tx = c.transaction().unwrap();
                    for half in 0..2 {
                        tx.execute(
                            "INSERT INTO audit(body, pair) VALUES (?1, ?2)",
                            rusqlite::params![
                                format!("event {n}.{half} {}", "x".repeat(200)),
                                n as i64
                            ],
                        )
                        .unwrap();
                    }
                    tx.commit().unwrap();
                    n += 1;
                    written.store(n, Ordering::Relaxed);
                }
            })
        };
        while written.load(Ordering::Relaxed) < 200 {
            std::thread::sleep(Duration::from_millis(2));
        }
        let archive = d.path().join("backup.tar.gz");
        let manifest =
            create_backup(Some(&home), std::slice::from_ref(&model), &archive, None).unwrap();
        let after_backup = written.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(manifest
            .entries
            .iter()
            .any(|e| e.path == "home/audit.db" && e.sqlite));
        assert!(!manifest
            .entries
            .iter()
            .any(|e| e.path.ends_with("-wal") || e.path.ends_with("-shm")));

        let into = d.path().join("restored");
        restore_backup(&archive, &into, false, None).unwrap();
        let restored = rows(&into.join("home/audit.db"));
        let source = rows(&db);
        assert!(restored.len() >= 400, "{mode}: {} rows", restored.len());
        assert_eq!(restored.len() % 2, 0, "{mode}: a transaction was split");
        assert!(restored.len() <= 2 * after_backup as usize + 2);
        assert_eq!(
            restored[..],
            source[..restored.len()],
            "{mode}: not a prefix of the source"
        );
        assert_eq!(
            fs::read(into.join("home/watermark.key")).unwrap(),
            b"secret-ledger-key"
        );
        assert_eq!(
            fs::read(into.join("models/fmnist-cnn/model.safetensors")).unwrap(),
            fs::read(model.join("model.safetensors")).unwrap()
        );
        verify_restored_dir(&into).unwrap();

        // Quiescent backup: identical rows.
        let archive2 = d.path().join("backup2.tar.gz");
        create_backup(Some(&home), &[], &archive2, None).unwrap();
        let into2 = d.path().join("restored2");
        restore_backup(&archive2, &into2, false, None).unwrap();
        assert_eq!(rows(&into2.join("home/audit.db")), source, "{mode}");
    }
}

#[test]
fn restore_refuses_non_empty_and_detects_corruption() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    fs::create_dir_all(&home).unwrap();
    let db = home.join("keys.sqlite");
    Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE k(id TEXT); INSERT INTO k VALUES ('a');")
        .unwrap();
    fs::write(home.join("notes.txt"), b"hello").unwrap();
    let archive = d.path().join("b.tar.gz");
    create_backup(Some(&home), &[], &archive, None).unwrap();

    let into = d.path().join("into");
    fs::create_dir(&into).unwrap();
    fs::write(into.join("existing"), b"x").unwrap();
    let err = restore_backup(&archive, &into, false, None).unwrap_err();
    assert!(
        matches!(err, ArtifactError::DestinationNotEmpty { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "destination {} is not empty (pass --force to overwrite)",
            into.display()
        )
    );
    restore_backup(&archive, &into, true, None).unwrap();

    // Post-restore verification catches a modified file.
    fs::write(into.join("home/notes.txt"), b"hellO").unwrap();
    let err = verify_restored_dir(&into).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("restored file home/notes.txt does not match the backup manifest: sha256"),
        "{err}"
    );
    fs::remove_file(into.join("home/notes.txt")).unwrap();
    let err = verify_restored_dir(&into).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("home/notes.txt does not match the backup manifest: missing"),
        "{err}"
    );

    // A truncated archive is refused.
    let bytes = fs::read(&archive).unwrap();
    let cut = d.path().join("cut.tar.gz");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(restore_backup(&cut, &d.path().join("i2"), false, None).is_err());
    // Not an archive at all.
    let junk = d.path().join("junk.tar.gz");
    fs::write(&junk, b"not gzip").unwrap();
    let err = restore_backup(&junk, &d.path().join("i3"), false, None).unwrap_err();
    assert!(err.to_string().starts_with("bad backup archive"), "{err}");
}

#[test]
fn archive_with_unlisted_or_unsafe_entries_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let archive = d.path().join("evil.tar.gz");
    {
        let f = fs::File::create(&archive).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        let mut t = tar::Builder::new(gz);
        let m = br#"{"format":"mamori-backup","version":1,"created_at":0,"entries":[]}"#;
        let mut h = tar::Header::new_gnu();
        h.set_size(m.len() as u64);
        h.set_mode(0o600);
        t.append_data(&mut h, "MANIFEST.json", &m[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o600);
        t.append_data(&mut h, "home/x", &b"x"[..]).unwrap();
        t.into_inner().unwrap().finish().unwrap();
    }
    let err = restore_backup(&archive, &d.path().join("i"), false, None).unwrap_err();
    assert!(
        err.to_string()
            .contains("home/x is not listed in MANIFEST.json"),
        "{err}"
    );
}

#[test]
fn encrypted_archive_needs_the_right_key_and_hides_contents() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    fs::create_dir_all(&home).unwrap();
    fs::write(home.join("signing.key.json"), b"very secret signing key").unwrap();
    let key = mamori_artifact::ModelKey::generate();
    let archive = d.path().join("b.tar.gz.enc");
    create_backup(Some(&home), &[], &archive, Some(&key)).unwrap();
    let raw = fs::read(&archive).unwrap();
    assert_eq!(&raw[..8], b"MAMORIEC");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&archive).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let err = restore_backup(&archive, &d.path().join("a"), false, None).unwrap_err();
    assert!(matches!(err, ArtifactError::MissingKey), "{err}");
    let other = mamori_artifact::ModelKey::generate();
    let err = restore_backup(&archive, &d.path().join("b"), false, Some(&other)).unwrap_err();
    assert!(matches!(err, ArtifactError::WrongKey { .. }), "{err}");
    let mut bad = raw.clone();
    let n = bad.len();
    bad[n / 2] ^= 1;
    fs::write(&archive, &bad).unwrap();
    let err = restore_backup(&archive, &d.path().join("c"), false, Some(&key)).unwrap_err();
    assert!(
        matches!(err, ArtifactError::TamperedCiphertext { .. }),
        "{err}"
    );
    fs::write(&archive, &raw).unwrap();
    let into = d.path().join("ok");
    restore_backup(&archive, &into, false, Some(&key)).unwrap();
    assert_eq!(
        fs::read(into.join("home/signing.key.json")).unwrap(),
        b"very secret signing key"
    );
}

#[test]
fn bad_inputs_to_backup_are_named() {
    let d = tempfile::tempdir().unwrap();
    // Two model directories with the same name.
    let (a, b) = (d.path().join("a/model"), d.path().join("b/model"));
    common::write_model(&a);
    common::write_model(&b);
    let err = create_backup(None, &[a.clone(), b], &d.path().join("x.tgz"), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "two model directories are both named model; rename one before backing up"
    );
    // A symlink in the home directory.
    #[cfg(unix)]
    {
        let home = d.path().join("home");
        fs::create_dir(&home).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", home.join("link")).unwrap();
        let err = create_backup(Some(&home), &[], &d.path().join("y.tgz"), None).unwrap_err();
        assert!(err.to_string().contains("symlink or special file"), "{err}");
    }
    // An archive whose first entry is not the manifest.
    let archive = d.path().join("nomanifest.tar.gz");
    {
        let f = fs::File::create(&archive).unwrap();
        let mut t = tar::Builder::new(flate2::write::GzEncoder::new(
            f,
            flate2::Compression::default(),
        ));
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o600);
        t.append_data(&mut h, "home/x", &b"x"[..]).unwrap();
        t.into_inner().unwrap().finish().unwrap();
    }
    let err = restore_backup(&archive, &d.path().join("r"), false, None).unwrap_err();
    assert!(
        err.to_string()
            .contains("first entry is \"home/x\", expected MANIFEST.json"),
        "{err}"
    );
}

#[test]
fn corrupt_database_fails_post_restore_verification() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    fs::create_dir(&home).unwrap();
    let db = home.join("ledger.db");
    {
        let mut c = Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX iv ON t(v);")
            .unwrap();
        let tx = c.transaction().unwrap();
        for i in 0..2000 {
            tx.execute("INSERT INTO t(v) VALUES (?1)", [format!("value {i:05}")])
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let archive = d.path().join("b.tgz");
    create_backup(Some(&home), &[], &archive, None).unwrap();
    let into = d.path().join("r");
    restore_backup(&archive, &into, false, None).unwrap();
    // Corrupt a b-tree page and make the manifest hash agree, so only the SQLite check can
    // notice.
    let restored = into.join("home/ledger.db");
    let mut bytes = fs::read(&restored).unwrap();
    for b in &mut bytes[3 * 4096 + 100..3 * 4096 + 400] {
        *b = 0x5A;
    }
    fs::write(&restored, &bytes).unwrap();
    let mpath = into.join("MANIFEST.json");
    let mut m: mamori_artifact::BackupManifest =
        serde_json::from_slice(&fs::read(&mpath).unwrap()).unwrap();
    m.entries[0].sha256 = mamori_core::hash::sha256_hex(&bytes);
    fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    let err = verify_restored_dir(&into).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ledger.db"), "{msg}");
    assert!(
        matches!(
            err,
            ArtifactError::IntegrityCheckFailed { .. } | ArtifactError::Sqlite { .. }
        ),
        "{msg}"
    );
}
