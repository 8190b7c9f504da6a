//! Cost of artifact protection on model load and of an online backup.
//!
//! `cargo run -p mamori-artifact --example artifact_bench [-- MiB]`
//!
//! For a model directory with a `MiB`-sized weights file (default 4 MiB; the fashion-MNIST CNN
//! is about 1.7 MiB), times: plain read of the files (baseline), read + SHA-256 + Ed25519
//! verification, in-memory AES-256-GCM decryption, and both together. Then backs up a SQLite
//! database with 200 000 rows while a writer is active, against a plain file copy (baseline,
//! not consistent under writes).

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mamori_artifact::sign::verify_model_at;
use mamori_artifact::{
    encrypt_model, open_encrypted_model, open_model, sign_model, ModelKey, SignaturePolicy,
    SigningKeyPair, TrustStore,
};

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> Duration {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .min()
        .unwrap()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(4);
    let d = tempfile::tempdir()?;
    let m = d.path().join("m");
    fs::create_dir(&m)?;
    let card = serde_json::json!({
        "name": "bench", "architecture": "mlp", "input_shape": [784], "input_dtype": "FP32",
        "input_range": [0.0, 1.0], "normalisation": {"scale": 1.0, "mean": 0.0, "std": 1.0},
        "class_names": ["0","1","2","3","4","5","6","7","8","9"],
        "dataset": {"name": "fashion-mnist", "files": []},
        "test_accuracy": null, "training_time_s": null, "seed": 1, "extra": {}
    });
    fs::write(m.join("model.json"), serde_json::to_vec(&card)?)?;
    let weights: Vec<u8> = (0..mib << 20)
        .map(|i| ((i * 2_654_435_761usize) >> 13) as u8)
        .collect();
    fs::write(m.join("model.safetensors"), &weights)?;
    let signing = d.path().join("signing");
    let now = mamori_artifact::files::now_unix();
    let (k, _) = SigningKeyPair::create_in(&signing, "bench", now, 86_400)?;
    sign_model(&m, &k, None, now)?;
    let trust = TrustStore::load(&signing)?;
    let key = ModelKey::generate();
    let e = d.path().join("e");
    let t = Instant::now();
    encrypt_model(&m, &key, &e, false)?;
    let enc_time = t.elapsed();

    println!("model load, weights {mib} MiB, best of 10:");
    let plain = best_of(10, || {
        (
            fs::read(m.join("model.safetensors")).unwrap(),
            fs::read(m.join("model.json")).unwrap(),
        )
    });
    println!("| plain read (baseline) | {} |", ms(plain));
    let verify = best_of(10, || verify_model_at(&m, &trust, now + 1).unwrap());
    println!("| read + verify signature | {} |", ms(verify));
    let decrypt = best_of(10, || open_encrypted_model(&e, &key).unwrap());
    println!("| read + decrypt in memory | {} |", ms(decrypt));
    let both = best_of(10, || {
        open_model(&e, Some(&key), &SignaturePolicy::Require(trust.clone())).unwrap()
    });
    println!("| read + decrypt + verify (open_model) | {} |", ms(both));
    println!("| encrypt (once) | {} |", ms(enc_time));

    // Backup of a live database.
    let home = d.path().join("home");
    fs::create_dir(&home)?;
    let db = home.join("audit.db");
    {
        let mut c = rusqlite::Connection::open(&db)?;
        c.pragma_update(None, "journal_mode", "WAL")?;
        c.execute_batch("CREATE TABLE audit(id INTEGER PRIMARY KEY, body TEXT)")?;
        let tx = c.transaction()?;
        for i in 0..200_000 {
            tx.execute(
                "INSERT INTO audit(body) VALUES (?1)",
                [format!("query {i} from client-{} hash {:064x}", i % 97, i)],
            )?;
        }
        tx.commit()?;
    }
    let size = fs::metadata(&db)?.len();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(30)).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 1_000_000 {
                c.execute("INSERT INTO audit(body) VALUES ('live')", [])
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let copy = best_of(3, || fs::copy(&db, d.path().join("copy.db")).unwrap());
    let snap = best_of(3, || {
        mamori_artifact::backup::backup_sqlite(&db, &d.path().join("snap.db")).unwrap();
        fs::remove_file(d.path().join("snap.db")).unwrap();
    });
    let full = best_of(3, || {
        let out = d.path().join("b.tar.gz");
        mamori_artifact::create_backup(Some(&home), std::slice::from_ref(&m), &out, None).unwrap()
    });
    stop.store(true, Ordering::Relaxed);
    let live_writes = writer.join().unwrap();
    println!(
        "\nbackup, audit.db {:.1} MiB, writer active ({live_writes} inserts during the run), best of 3:",
        size as f64 / (1 << 20) as f64
    );
    println!(
        "| fs::copy of audit.db (baseline, not consistent) | {} |",
        ms(copy)
    );
    println!("| online snapshot + integrity_check | {} |", ms(snap));
    println!(
        "| full backup create (home + model, tar.gz) | {} |",
        ms(full)
    );
    Ok(())
}
