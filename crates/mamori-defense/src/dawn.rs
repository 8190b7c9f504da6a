//! DAWN: Dynamic Adversarial Watermarking of Neural Networks (Szyller, Atli, Marchal &
//! Asokan, ACM Multimedia 2021).

use crate::error::DefenseError;
use crate::fingerprint::LinearFingerprint;
use crate::key::{unit_interval, SecretKey};
use crate::ledger::{Ledger, LedgerRecord};
use crate::simplex::argmax;
use mamori_core::{Watermark, WatermarkMark};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The default watermarking rate (0.5% of queries), as in the paper.
pub const DEFAULT_RATE: f64 = 0.005;

/// DAWN answer watermarking.
///
/// A query `x` is selected when `u(x) = HMAC-SHA256(k, x)` mapped to `[0, 1)` falls under the
/// rate `r`; its answer's top label `y` is replaced by the wrong label
/// `w(x) = the ((v mod (c−1)))-th label other than y`, where `v` is the next 8 bytes of the same
/// HMAC. Both depend only on the key and the input, so repeating a query gives the same answer
/// (no averaging attack), an attacker without the key cannot tell which answers are marked,
/// and `w(x)` is uniform over the `c − 1` wrong labels and never the true one.
///
/// The probability vector is changed by swapping the values of `y` and `w(x)` (so the answer
/// keeps the shape of a genuine one); if that leaves a tie at the top the answer becomes
/// one-hot on `w(x)`.
///
/// With [`Dawn::with_fingerprint`], every answer also carries the keyed linear fingerprint of
/// [`crate::fingerprint`] (DAWN's complement against least-squares thieves).
///
/// With a ledger attached ([`Dawn::with_ledger`]), every marked answer is appended and synced
/// before [`Watermark::apply`] returns. If the append fails the answer is left unmarked (an
/// unrecorded watermark could never be used as evidence) and the error is logged. The key is
/// never logged and `Debug` redacts it.
///
/// Each served model has its own DAWN ([`Dawn::open_model`]): its own selection key, ledger
/// key and ledger under `home/watermark/models/<model>/` (see [`DawnPaths::for_model`]), and
/// its records name it ([`Dawn::with_model`]). A mark one model gave is never in another's
/// ledger, and the keys of one model are independent random keys, so they reveal nothing
/// about another model's marks.
pub struct Dawn {
    key: SecretKey,
    rate: f64,
    ledger: Option<Mutex<Ledger>>,
    fingerprint: Option<LinearFingerprint>,
    model: Option<String>,
}

impl std::fmt::Debug for Dawn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dawn")
            .field("key", &"<redacted>")
            .field("rate", &self.rate)
            .field("model", &self.model)
            .field("ledger", &self.ledger.as_ref().map(|_| "attached"))
            .field(
                "fingerprint",
                &self.fingerprint.as_ref().map(|f| f.epsilon()),
            )
            .finish()
    }
}

/// File names DAWN uses in a home directory.
///
/// Layout of `home/watermark/`:
///
/// ```text
/// watermark/
///   models/<model>/dawn.key     one model's selection key (hex, 0600)
///   models/<model>/ledger.key   its ledger's encryption key (hex, 0600)
///   models/<model>/ledger.bin   its encrypted ledger
///   signing.key(.pub)           the home's evidence-report signing key (`mamori watermark`)
///   dawn.key, ledger.key, ledger.bin
///                               the single ledger shared by every model, written before each
///                               model had its own (the legacy layout, [`DawnPaths::in_home`])
/// ```
///
/// `<model>` is the model's name with every byte outside `[A-Za-z0-9_.-]` (and a leading `.`)
/// written `%XX` ([`model_dir_name`]), so any name gives one directory of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DawnPaths {
    /// The selection key (hex, `0600`).
    pub key: PathBuf,
    /// The ledger encryption key (hex, `0600`).
    pub ledger_key: PathBuf,
    /// The encrypted ledger.
    pub ledger: PathBuf,
}

/// Name of the directory under `home/watermark/` that holds the per-model ledgers.
pub const MODELS_DIR: &str = "models";

impl DawnPaths {
    /// The legacy, shared layout: `home/watermark/{dawn.key, ledger.key, ledger.bin}`, used by
    /// homes written before each served model had its own ledger (and by
    /// [`Dawn::open_home`]). `mamori serve` moves it to the model's own directory when the
    /// home serves a single model ([`migrate_legacy`]).
    pub fn in_home(home: &Path) -> DawnPaths {
        DawnPaths::in_dir(&home.join("watermark"))
    }

    /// `home/watermark/models/<model_dir_name(model)>/{dawn.key, ledger.key, ledger.bin}`:
    /// one served model's own keys and ledger.
    pub fn for_model(home: &Path, model: &str) -> DawnPaths {
        DawnPaths::in_dir(&models_dir(home).join(model_dir_name(model)))
    }

    /// `dir/{dawn.key, ledger.key, ledger.bin}`.
    pub fn in_dir(dir: &Path) -> DawnPaths {
        DawnPaths {
            key: dir.join("dawn.key"),
            ledger_key: dir.join("ledger.key"),
            ledger: dir.join("ledger.bin"),
        }
    }

    /// Whether any of the three files exists.
    pub fn any_exists(&self) -> bool {
        [&self.key, &self.ledger_key, &self.ledger]
            .iter()
            .any(|p| p.exists())
    }
}

/// `home/watermark/models`: where the per-model ledgers live.
pub fn models_dir(home: &Path) -> PathBuf {
    home.join("watermark").join(MODELS_DIR)
}

/// The directory name of `model`'s ledger: the name with every byte outside
/// `[A-Za-z0-9_.-]` (so `%` too) and a leading `.` written `%XX` (upper-case hex). Injective, so two
/// models never share a directory, and never `.`/`..` or a path with a separator.
pub fn model_dir_name(model: &str) -> String {
    let mut out = String::with_capacity(model.len());
    for (i, b) in model.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The model name of a directory [`model_dir_name`] made; `None` for any other name.
pub fn model_of_dir_name(dir: &str) -> Option<String> {
    let bytes = dir.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = dir.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    (!name.is_empty() && model_dir_name(&name) == dir).then_some(name)
}

/// The DAWN ledgers a home holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HomeLedgers {
    /// Each model's own ledger (those whose `ledger.bin` exists), by model name.
    pub models: BTreeMap<String, DawnPaths>,
    /// The legacy shared ledger ([`DawnPaths::in_home`]), if its `ledger.bin` still exists.
    pub legacy: Option<DawnPaths>,
}

impl HomeLedgers {
    /// Lists the ledgers under `home/watermark/`.
    pub fn find(home: &Path) -> Result<HomeLedgers, DefenseError> {
        let legacy = DawnPaths::in_home(home);
        let mut found = HomeLedgers {
            models: BTreeMap::new(),
            legacy: legacy.ledger.is_file().then_some(legacy),
        };
        let dir = models_dir(home);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(DefenseError::io(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| DefenseError::io(&dir, e))?;
            let Some(model) = entry.file_name().to_str().and_then(model_of_dir_name) else {
                continue;
            };
            let paths = DawnPaths::in_dir(&entry.path());
            if paths.ledger.is_file() {
                found.models.insert(model, paths);
            }
        }
        Ok(found)
    }
}

/// Moves the legacy shared keys and ledger of `home` ([`DawnPaths::in_home`]) to `model`'s
/// own directory ([`DawnPaths::for_model`]), keeping the keys (the same inputs stay marked the
/// same way) and the records. Does nothing and returns `false` when there is no legacy file
/// or the model already has a directory.
///
/// The files are first moved into a staging directory `models/.migrating-<model>` which is
/// then renamed into place, so a crash leaves either the legacy layout, a staging directory
/// the next call completes, or the finished move — never a model directory with a fresh key
/// beside an orphaned ledger.
pub fn migrate_legacy(home: &Path, model: &str) -> Result<bool, DefenseError> {
    let legacy = DawnPaths::in_home(home);
    let dir = models_dir(home);
    let target = dir.join(model_dir_name(model));
    let staging = dir.join(format!(".migrating-{}", model_dir_name(model)));
    if target.exists() || !(legacy.any_exists() || staging.is_dir()) {
        return Ok(false);
    }
    std::fs::create_dir_all(&staging).map_err(|e| DefenseError::io(&staging, e))?;
    let staged = DawnPaths::in_dir(&staging);
    for (from, to) in [
        (&legacy.key, &staged.key),
        (&legacy.ledger_key, &staged.ledger_key),
        (&legacy.ledger, &staged.ledger),
    ] {
        if from.exists() {
            std::fs::rename(from, to).map_err(|e| DefenseError::io(from, e))?;
        }
    }
    std::fs::rename(&staging, &target).map_err(|e| DefenseError::io(&target, e))?;
    sync_dir(&dir);
    sync_dir(&home.join("watermark"));
    Ok(true)
}

/// Best effort: sync a directory so renames in it are durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Dawn {
    /// DAWN with selection key `key` and rate `rate` in `(0, 1)`, without a ledger.
    pub fn new(key: SecretKey, rate: f64) -> Result<Dawn, DefenseError> {
        if !(rate > 0.0 && rate < 1.0) {
            return Err(DefenseError::spec(
                "dawn",
                format!("rate must lie in (0, 1), got {rate}"),
            ));
        }
        Ok(Dawn {
            key,
            rate,
            ledger: None,
            fingerprint: None,
            model: None,
        })
    }

    /// Names the served model whose answers this DAWN marks: every ledger record it writes
    /// carries the name ([`LedgerRecord::model`]).
    pub fn with_model(mut self, model: impl Into<String>) -> Dawn {
        self.model = Some(model.into());
        self
    }

    /// The served model named by [`Dawn::with_model`].
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Adds the keyed linear fingerprint ([`crate::fingerprint`]) of strength `epsilon` to
    /// every answer, keyed by a sub-key of DAWN's key (so the same key file serves both).
    pub fn with_fingerprint(mut self, epsilon: f32, dims: Vec<u32>) -> Result<Dawn, DefenseError> {
        self.fingerprint = Some(
            LinearFingerprint::new(self.key.derive("linear-fingerprint"), epsilon)?.with_dims(dims),
        );
        Ok(self)
    }

    /// The fingerprint added to every answer, if any (for verification).
    pub fn fingerprint(&self) -> Option<&LinearFingerprint> {
        self.fingerprint.as_ref()
    }

    /// The fingerprint DAWN with key `key` uses at strength `epsilon` (what
    /// [`Dawn::with_fingerprint`] adds), for verifying with the key file alone.
    pub fn fingerprint_for_key(
        key: &SecretKey,
        epsilon: f32,
    ) -> Result<LinearFingerprint, DefenseError> {
        LinearFingerprint::new(key.derive("linear-fingerprint"), epsilon)
    }

    /// Attaches the ledger marked answers are recorded in.
    pub fn with_ledger(mut self, ledger: Ledger) -> Dawn {
        self.ledger = Some(Mutex::new(ledger));
        self
    }

    /// DAWN with its keys and ledger in the legacy shared layout of `home` (see
    /// [`DawnPaths::in_home`]), creating the keys on first use. A gateway serving models uses
    /// [`Dawn::open_model`], one per model.
    pub fn open_home(home: &Path, rate: f64) -> Result<Dawn, DefenseError> {
        Dawn::open_paths(&DawnPaths::in_home(home), rate)
    }

    /// DAWN for the served model `model`, with its own keys and ledger in `home` (see
    /// [`DawnPaths::for_model`]; fresh random keys are created on first use, independent of
    /// every other model's), recording the model's name in every record.
    pub fn open_model(home: &Path, model: &str, rate: f64) -> Result<Dawn, DefenseError> {
        Ok(Dawn::open_paths(&DawnPaths::for_model(home, model), rate)?.with_model(model))
    }

    /// DAWN with the keys and ledger at `paths`, creating the keys on first use.
    pub fn open_paths(paths: &DawnPaths, rate: f64) -> Result<Dawn, DefenseError> {
        let key = SecretKey::load_or_create(&paths.key)?;
        let lkey = SecretKey::load_or_create(&paths.ledger_key)?;
        let ledger = Ledger::open(&paths.ledger, &lkey)?;
        Ok(Dawn::new(key, rate)?.with_ledger(ledger))
    }

    /// The watermarking rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Whether `input` is selected, and if so the wrong label for true label `true_label`
    /// among `num_classes` classes.
    pub fn select(&self, input: &[f32], true_label: usize, num_classes: usize) -> Option<usize> {
        if num_classes < 2 || true_label >= num_classes {
            return None;
        }
        let d = self.key.hmac_f32(input);
        if unit_interval(&d) >= self.rate {
            return None;
        }
        let v = u64::from_be_bytes(d[8..16].try_into().expect("8 bytes"));
        let j = (v % (num_classes as u64 - 1)) as usize;
        Some(if j >= true_label { j + 1 } else { j })
    }

    /// Number of records in the attached ledger (0 without one).
    pub fn ledger_len(&self) -> usize {
        self.ledger
            .as_ref()
            .map(|l| l.lock().map(|l| l.records().len()).unwrap_or(0))
            .unwrap_or(0)
    }

    /// Like [`Watermark::apply`], but reports a ledger failure instead of leaving the answer
    /// unmarked. On error `probs` is unchanged.
    pub fn apply_recorded(
        &self,
        input: &[f32],
        probs: &mut [f32],
    ) -> Result<Option<WatermarkMark>, DefenseError> {
        let c = probs.len();
        let true_label = argmax(probs);
        let Some(given) = self.select(input, true_label, c) else {
            if let Some(f) = &self.fingerprint {
                f.apply(input, probs);
            }
            return Ok(None);
        };
        let mark = WatermarkMark {
            input_sha256: mamori_core::hash::sha256_f32(input),
            true_label,
            given_label: given,
        };
        if let Some(ledger) = &self.ledger {
            let unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let mut l = ledger.lock().map_err(|_| DefenseError::Io {
                path: "<ledger>".into(),
                message: "ledger lock poisoned".into(),
            })?;
            l.append(LedgerRecord {
                input_sha256: mark.input_sha256.clone(),
                input: input.to_vec(),
                true_label,
                given_label: given,
                num_classes: c,
                unix_ms,
                model: self.model.clone(),
            })?;
        }
        // The fingerprint keeps the top-1 label, so the mark's labels are unchanged by it.
        if let Some(f) = &self.fingerprint {
            f.apply(input, probs);
        }
        probs.swap(true_label, given);
        if argmax(probs) != given {
            for (i, p) in probs.iter_mut().enumerate() {
                *p = if i == given { 1.0 } else { 0.0 };
            }
        }
        Ok(Some(mark))
    }

    /// A copy of the ledger's records (empty without a ledger).
    pub fn ledger_records(&self) -> Vec<LedgerRecord> {
        self.ledger
            .as_ref()
            .and_then(|l| l.lock().ok().map(|l| l.records().to_vec()))
            .unwrap_or_default()
    }
}

impl Watermark for Dawn {
    fn name(&self) -> String {
        "dawn".into()
    }
    fn apply(&self, input: &[f32], probs: &mut [f32]) -> Option<WatermarkMark> {
        match self.apply_recorded(input, probs) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "DAWN: could not record a watermark; answer left unmarked");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(i: usize) -> Vec<f32> {
        vec![i as f32 * 0.001, (i % 7) as f32, 0.25]
    }

    #[test]
    fn rate_is_respected_and_labels_are_wrong_and_uniform() {
        let d = Dawn::new(SecretKey::from_bytes([4; 32]), 0.05).unwrap();
        let mut selected = 0;
        let mut counts = [0usize; 10];
        for i in 0..20_000 {
            if let Some(w) = d.select(&input(i), 3, 10) {
                assert_ne!(w, 3);
                assert!(w < 10);
                counts[w] += 1;
                selected += 1;
            }
        }
        let rate = selected as f64 / 20_000.0;
        assert!((rate - 0.05).abs() < 0.01, "{rate}");
        assert_eq!(counts[3], 0);
        for (k, &n) in counts.iter().enumerate() {
            if k != 3 {
                // ≈ 1000/9 ≈ 111 each.
                assert!(n > 60 && n < 170, "{counts:?}");
            }
        }
    }

    #[test]
    fn marking_is_deterministic_and_changes_the_label() {
        let d = Dawn::new(SecretKey::from_bytes([4; 32]), 0.5).unwrap();
        let mut marked = 0;
        for i in 0..100 {
            let base = [0.1f32, 0.7, 0.2];
            let (mut a, mut b) = (base, base);
            let ma = d.apply(&input(i), &mut a);
            let mb = d.apply(&input(i), &mut b);
            assert_eq!(a, b);
            assert_eq!(ma, mb);
            if let Some(m) = ma {
                marked += 1;
                assert_eq!(m.true_label, 1);
                assert_eq!(argmax(&a), m.given_label);
                assert_ne!(m.given_label, 1);
            } else {
                assert_eq!(a, base);
            }
        }
        assert!(marked > 30 && marked < 70, "{marked}");
    }

    /// With the fingerprint every answer changes but keeps its label (unmarked) or gets the
    /// same watermark label as without it (marked); the selection is the fingerprint-free one.
    #[test]
    fn fingerprint_changes_every_answer_but_no_label_or_selection() {
        let key = SecretKey::from_bytes([4; 32]);
        let plain = Dawn::new(key.clone(), 0.3).unwrap();
        let fp = Dawn::new(key.clone(), 0.3)
            .unwrap()
            .with_fingerprint(0.5, Vec::new())
            .unwrap();
        assert!(fp.fingerprint().is_some() && plain.fingerprint().is_none());
        assert!(format!("{fp:?}").contains("fingerprint: Some(0.5)"));
        assert!(Dawn::new(key.clone(), 0.3)
            .unwrap()
            .with_fingerprint(-1.0, Vec::new())
            .is_err());
        let mut changed = 0;
        for i in 0..200 {
            let base = [0.1f32, 0.6, 0.2, 0.1];
            let (mut a, mut b) = (base, base);
            let ma = plain.apply(&input(i), &mut a);
            let mb = fp.apply(&input(i), &mut b);
            assert_eq!(ma, mb);
            assert_eq!(argmax(&a), argmax(&b));
            assert!((b.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            changed += usize::from(a != b);
        }
        assert!(changed > 150, "{changed}");
        // The key file alone rebuilds the same fingerprint.
        let again = Dawn::fingerprint_for_key(&key, 0.5).unwrap();
        let (mut x, mut y) = ([0.2f32, 0.5, 0.3], [0.2f32, 0.5, 0.3]);
        fp.fingerprint().unwrap().apply(&input(3), &mut x);
        again.apply(&input(3), &mut y);
        assert_eq!(x, y);
    }

    #[test]
    fn key_changes_the_selection_and_debug_redacts_it() {
        let a = Dawn::new(SecretKey::from_bytes([0xee; 32]), 0.5).unwrap();
        let b = Dawn::new(SecretKey::from_bytes([5; 32]), 0.5).unwrap();
        let differ = (0..64)
            .filter(|&i| a.select(&input(i), 0, 10) != b.select(&input(i), 0, 10))
            .count();
        assert!(differ > 10);
        let s = format!("{a:?}");
        assert!(
            !s.to_lowercase().contains("eeee") && s.contains("redacted"),
            "{s}"
        );
    }

    #[test]
    fn home_ledger_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut acked = Vec::new();
        {
            let d = Dawn::open_home(dir.path(), 0.3).unwrap();
            for i in 0..50 {
                let mut p = [0.2f32, 0.5, 0.3];
                if let Some(m) = d.apply(&input(i), &mut p) {
                    acked.push(m);
                }
            }
            assert_eq!(d.ledger_len(), acked.len());
        }
        assert!(!acked.is_empty());
        let d = Dawn::open_home(dir.path(), 0.3).unwrap();
        let recs = d.ledger_records();
        assert_eq!(recs.len(), acked.len());
        for (r, m) in recs.iter().zip(&acked) {
            assert_eq!(r.input_sha256, m.input_sha256);
            assert_eq!(r.given_label, m.given_label);
            assert_eq!(r.true_label, m.true_label);
            assert_eq!(mamori_core::hash::sha256_f32(&r.input), r.input_sha256);
        }
        // Same key after restart: the same inputs are selected the same way.
        let mut p = [0.2f32, 0.5, 0.3];
        let first = recs[0].clone();
        let m = d.apply_recorded(&first.input, &mut p).unwrap().unwrap();
        assert_eq!(m.given_label, first.given_label);
    }

    /// Each model gets its own keys and ledger; its records name it; the listing finds both.
    #[test]
    fn each_model_has_its_own_keys_and_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let a = Dawn::open_model(dir.path(), "alpha", 0.3).unwrap();
        let b = Dawn::open_model(dir.path(), "beta/../x y", 0.3).unwrap();
        assert_eq!(a.model(), Some("alpha"));
        let (mut na, mut nb) = (0, 0);
        let mut differ = 0;
        for i in 0..200 {
            let (mut p, mut q) = ([0.2f32, 0.5, 0.3], [0.2f32, 0.5, 0.3]);
            let ma = a.apply(&input(i), &mut p);
            let mb = b.apply(&input(i), &mut q);
            na += usize::from(ma.is_some());
            nb += usize::from(mb.is_some());
            differ += usize::from(ma.is_some() != mb.is_some());
        }
        assert!(differ > 20, "{differ}");
        assert_eq!((a.ledger_len(), b.ledger_len()), (na, nb));
        assert!(a
            .ledger_records()
            .iter()
            .all(|r| r.model.as_deref() == Some("alpha")));
        assert!(b
            .ledger_records()
            .iter()
            .all(|r| r.model.as_deref() == Some("beta/../x y")));
        let pa = DawnPaths::for_model(dir.path(), "alpha");
        let pb = DawnPaths::for_model(dir.path(), "beta/../x y");
        assert_ne!(
            SecretKey::load(&pa.key).unwrap(),
            SecretKey::load(&pb.key).unwrap()
        );
        assert_eq!(
            pb.ledger.parent().unwrap().parent().unwrap(),
            models_dir(dir.path())
        );
        // A's ledger key does not open B's ledger.
        let wrong = SecretKey::load(&pa.ledger_key).unwrap();
        assert!(Ledger::open(&pb.ledger, &wrong).is_err());
        let found = HomeLedgers::find(dir.path()).unwrap();
        assert_eq!(
            found.models.keys().collect::<Vec<_>>(),
            ["alpha", "beta/../x y"]
        );
        assert!(found.legacy.is_none());
    }

    #[test]
    fn model_dir_names_are_safe_and_round_trip() {
        for name in [
            "m",
            "fashion-cnn_v2.1",
            ".hidden",
            "..",
            "a/b",
            "a%2Fb",
            "ü ñ",
            "%",
        ] {
            let d = model_dir_name(name);
            assert!(!d.starts_with('.') && !d.contains('/'), "{d}");
            assert_eq!(model_of_dir_name(&d).as_deref(), Some(name), "{d}");
        }
        assert_ne!(model_dir_name("a/b"), model_dir_name("a%2Fb"));
        for bad in ["", ".migrating-m", "a%2fb", "a%zz", "a%2", "x y"] {
            assert_eq!(model_of_dir_name(bad), None, "{bad}");
        }
    }

    /// A legacy home's keys and ledger move to the model's directory: the records are kept and
    /// the same inputs are still marked the same way; a second call does nothing.
    #[test]
    fn legacy_ledger_migrates_to_the_model_with_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = Vec::new();
        {
            let d = Dawn::open_home(dir.path(), 0.3).unwrap();
            for i in 0..40 {
                let mut p = [0.2f32, 0.5, 0.3];
                old.extend(d.apply(&input(i), &mut p));
            }
        }
        assert!(!old.is_empty());
        let before = HomeLedgers::find(dir.path()).unwrap();
        assert!(before.legacy.is_some() && before.models.is_empty());
        assert!(migrate_legacy(dir.path(), "m").unwrap());
        assert!(!DawnPaths::in_home(dir.path()).any_exists());
        assert!(!migrate_legacy(dir.path(), "m").unwrap());
        let d = Dawn::open_model(dir.path(), "m", 0.3).unwrap();
        let recs = d.ledger_records();
        assert_eq!(recs.len(), old.len());
        assert!(recs.iter().all(|r| r.model.is_none()));
        let mut p = [0.2f32, 0.5, 0.3];
        let again = d.apply_recorded(&recs[0].input, &mut p).unwrap().unwrap();
        assert_eq!(again.given_label, recs[0].given_label);
        assert_eq!(
            d.ledger_records().last().unwrap().model.as_deref(),
            Some("m")
        );
        let after = HomeLedgers::find(dir.path()).unwrap();
        assert!(after.legacy.is_none());
        assert_eq!(after.models.keys().collect::<Vec<_>>(), ["m"]);
        // Nothing to migrate in a fresh home; an interrupted move is completed.
        let fresh = tempfile::tempdir().unwrap();
        assert!(!migrate_legacy(fresh.path(), "m").unwrap());
        {
            let d = Dawn::open_home(fresh.path(), 0.3).unwrap();
            let mut p = [0.2f32, 0.5, 0.3];
            for i in 0..20 {
                d.apply(&input(i), &mut p);
            }
        }
        let staging = models_dir(fresh.path()).join(".migrating-m");
        std::fs::create_dir_all(&staging).unwrap();
        let legacy = DawnPaths::in_home(fresh.path());
        std::fs::rename(&legacy.key, staging.join("dawn.key")).unwrap();
        assert!(migrate_legacy(fresh.path(), "m").unwrap());
        let moved = DawnPaths::for_model(fresh.path(), "m");
        assert!(moved.key.is_file() && moved.ledger_key.is_file() && moved.ledger.is_file());
        assert!(!staging.exists());
    }

    #[test]
    fn bad_rate_is_rejected() {
        for r in [0.0, 1.0, f64::NAN] {
            let e = Dawn::new(SecretKey::from_bytes([0; 32]), r)
                .unwrap_err()
                .to_string();
            assert!(e.contains("dawn") && e.contains("rate"), "{e}");
        }
    }
}
