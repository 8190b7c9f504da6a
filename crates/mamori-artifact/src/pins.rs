//! Supply-chain pins: expected SHA-256 of pre-trained bases and dataset files (OWASP ML07).
//!
//! A pin file is TOML:
//!
//! ```toml
//! version = 1
//! [files]
//! "fashion-mnist/train-images-idx3-ubyte.gz" = "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
//! "bases/fmnist-cnn/model.safetensors" = "…"
//! ```
//!
//! A file is matched to a pin by its path exactly as given, else by the pin whose key ends
//! with the same trailing path components (so a pin written as `data/mnist/x.gz` matches
//! `/abs/data/mnist/x.gz`), the longest suffix winning and ties being refused as ambiguous.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, ArtifactError, Result};
use crate::files::sha256_file;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinToml {
    version: u32,
    files: BTreeMap<String, String>,
}

/// A loaded pin file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinSet {
    /// Path or name → expected lowercase hex SHA-256.
    pub pins: BTreeMap<String, String>,
    /// Where it was read from (for errors).
    pub origin: PathBuf,
}

fn components(p: &str) -> Vec<String> {
    Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

impl PinSet {
    /// Reads and validates a pin file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        let bad = |reason: String| ArtifactError::BadPinFile {
            path: path.to_owned(),
            reason,
        };
        let parsed: PinToml = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if parsed.version != 1 {
            return Err(bad(format!("unsupported version {}", parsed.version)));
        }
        for (name, h) in &parsed.files {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "pin for {name} is not a SHA-256 (64 hex digits): {h:?}"
                )));
            }
        }
        Ok(Self {
            pins: parsed
                .files
                .into_iter()
                .map(|(k, v)| (k, v.to_ascii_lowercase()))
                .collect(),
            origin: path.to_owned(),
        })
    }

    /// Pins `files` (directories expand to every regular file below them, sorted) under the
    /// paths as given.
    pub fn create(files: &[PathBuf]) -> Result<Self> {
        let mut pins = BTreeMap::new();
        for f in files {
            for file in expand(f)? {
                pins.insert(file.display().to_string(), sha256_file(&file)?);
            }
        }
        Ok(Self {
            pins,
            origin: PathBuf::new(),
        })
    }

    /// The TOML text of this pin set.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(&PinToml {
            version: 1,
            files: self.pins.clone(),
        })
        .expect("pins serialise");
        format!("# mamori supply-chain pins: file → SHA-256 (`mamori model pin`)\n{body}")
    }

    /// The pinned hash for `file`, following the matching rule of the module docs.
    pub fn lookup(&self, file: &Path) -> Result<&str> {
        let shown = file.display().to_string();
        if let Some(h) = self.pins.get(&shown) {
            return Ok(h);
        }
        let want = components(&shown);
        let mut best: Option<(usize, &str, &str)> = None;
        let mut tie = false;
        for (k, h) in &self.pins {
            let kc = components(k);
            if kc.is_empty() || kc.len() > want.len() || want[want.len() - kc.len()..] != kc[..] {
                continue;
            }
            match best {
                Some((n, _, _)) if n > kc.len() => {}
                Some((n, _, _)) if n == kc.len() => tie = true,
                _ => {
                    best = Some((kc.len(), k, h));
                    tie = false;
                }
            }
        }
        match best {
            Some((_, k, _)) if tie => Err(ArtifactError::BadPinFile {
                path: self.origin.clone(),
                reason: format!("{shown} matches several pins as well as {k}; pin it by full path"),
            }),
            Some((_, _, h)) => Ok(h),
            None => Err(ArtifactError::Unpinned {
                file: shown,
                pin_file: self.origin.clone(),
            }),
        }
    }

    /// Checks one file against its pin.
    pub fn check_file(&self, file: &Path) -> Result<()> {
        self.lookup(file)?;
        self.check_digest(file, &sha256_file(file)?)
    }

    /// Checks a hash already computed for `file` (e.g. the digest a loader computed over the
    /// exact bytes it read, which leaves no window between check and use).
    pub fn check_digest(&self, file: &Path, actual: &str) -> Result<()> {
        let expected = self.lookup(file)?;
        let actual = actual.to_ascii_lowercase();
        if actual != expected {
            return Err(ArtifactError::PinMismatch {
                file: file.display().to_string(),
                expected: expected.to_owned(),
                actual,
            });
        }
        Ok(())
    }
}

fn expand(p: &Path) -> Result<Vec<PathBuf>> {
    let meta = fs::metadata(p).map_err(io_err(p))?;
    if meta.is_file() {
        return Ok(vec![p.to_owned()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(p)
        .map_err(io_err(p))?
        .map(|e| e.map(|e| e.path()).map_err(io_err(p)))
        .collect::<Result<_>>()?;
    entries.sort();
    for e in entries {
        out.extend(expand(&e)?);
    }
    Ok(out)
}

/// One call for training: loads `pin_file` and checks every file in `files` (directories
/// expand to the files below them). The first unpinned or mismatching file stops the check
/// with [`ArtifactError::Unpinned`] or [`ArtifactError::PinMismatch`].
pub fn check_pins(pin_file: &Path, files: &[PathBuf]) -> Result<()> {
    let pins = PinSet::load(pin_file)?;
    for f in files {
        for file in expand(f)? {
            pins.check_file(&file)?;
        }
    }
    Ok(())
}

/// One call after loading a dataset: checks the digests the loader recorded
/// (`mamori_data::Dataset::files`, `ModelCard::dataset.files`) against `pin_file`.
pub fn check_pinned_digests(pin_file: &Path, digests: &[mamori_core::FileDigest]) -> Result<()> {
    let pins = PinSet::load(pin_file)?;
    for d in digests {
        pins.check_digest(Path::new(&d.path), &d.sha256)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_check_and_mismatch() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.bin");
        let sub = d.path().join("base");
        fs::create_dir(&sub).unwrap();
        fs::write(&a, b"dataset").unwrap();
        fs::write(sub.join("model.safetensors"), b"weights").unwrap();
        let pins = PinSet::create(&[a.clone(), sub.clone()]).unwrap();
        assert_eq!(pins.pins.len(), 2);
        let pf = d.path().join("pins.toml");
        fs::write(&pf, pins.to_toml()).unwrap();
        check_pins(&pf, &[a.clone(), sub.clone()]).unwrap();

        fs::write(&a, b"poisoned").unwrap();
        let e = check_pins(&pf, std::slice::from_ref(&a)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "pin mismatch for {}: expected sha256 {}, got {}",
                a.display(),
                mamori_core::hash::sha256_hex(b"dataset"),
                mamori_core::hash::sha256_hex(b"poisoned")
            )
        );
        let other = d.path().join("other.bin");
        fs::write(&other, b"x").unwrap();
        let e = check_pins(&pf, std::slice::from_ref(&other)).unwrap_err();
        assert!(matches!(e, ArtifactError::Unpinned { .. }));
        assert!(e.to_string().contains("other.bin is not pinned in"), "{e}");
    }

    #[test]
    fn recorded_digests_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let pf = d.path().join("p.toml");
        let h = mamori_core::hash::sha256_hex(b"train");
        fs::write(
            &pf,
            format!("version = 1\n[files]\n\"digits/optdigits.tra\" = \"{h}\"\n"),
        )
        .unwrap();
        let good = mamori_core::FileDigest {
            path: "/data/digits/optdigits.tra".into(),
            sha256: h.clone(),
        };
        check_pinned_digests(&pf, std::slice::from_ref(&good)).unwrap();
        let bad = mamori_core::FileDigest {
            sha256: mamori_core::hash::sha256_hex(b"poisoned"),
            ..good
        };
        let e = check_pinned_digests(&pf, &[bad]).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "pin mismatch for /data/digits/optdigits.tra: expected sha256 {h}, got "
            )),
            "{e}"
        );
    }

    #[test]
    fn suffix_matching() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("mnist").join("x.gz");
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, b"x").unwrap();
        let h = mamori_core::hash::sha256_hex(b"x");
        let pf = d.path().join("p.toml");
        fs::write(
            &pf,
            format!("version = 1\n[files]\n\"data/mnist/x.gz\" = \"{h}\"\n"),
        )
        .unwrap();
        // `data/mnist/x.gz` does not end `<tmp>/mnist/x.gz`; `mnist/x.gz` would.
        assert!(check_pins(&pf, std::slice::from_ref(&f)).is_err());
        fs::write(
            &pf,
            format!("version = 1\n[files]\n\"mnist/x.gz\" = \"{h}\"\n"),
        )
        .unwrap();
        check_pins(&pf, std::slice::from_ref(&f)).unwrap();
        fs::write(
            &pf,
            format!("version = 1\n[files]\n\"mnist/x.gz\" = \"{h}\"\n\"a/mnist/x.gz\" = \"{h}\"\n\"b/mnist/x.gz\" = \"{h}\"\n"),
        )
        .unwrap();
        // Different leading dirs on both: only the 2-component suffix matches.
        check_pins(&pf, &[f]).unwrap();
    }

    #[test]
    fn bad_pin_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let pf = d.path().join("p.toml");
        fs::write(&pf, "version = 1\n[files]\n\"a\" = \"abc\"\n").unwrap();
        let e = PinSet::load(&pf).unwrap_err();
        assert!(e.to_string().contains("pin for a is not a SHA-256"), "{e}");
        fs::write(&pf, "version = 2\n[files]\n").unwrap();
        let e = PinSet::load(&pf).unwrap_err();
        assert!(e.to_string().contains("unsupported version 2"), "{e}");
        fs::write(&pf, "files = 3").unwrap();
        let e = PinSet::load(&pf).unwrap_err();
        assert!(e.to_string().contains("bad pin file"), "{e}");
        let e = check_pins(&d.path().join("missing.toml"), &[]).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
    }
}
