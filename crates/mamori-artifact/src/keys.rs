//! Ed25519 signing keys and the verifier's trust store.
//!
//! Layout of a signing directory (`<home>/signing/` by default):
//!
//! ```text
//! keys/<key_id>.key.json   private key + metadata, mode 0600 (only on the signing machine)
//! keys/<key_id>.pub.json   public key + metadata, to hand to verifiers (`keys trust`)
//! trusted.json             the keys this verifier accepts, each with its expiry
//! revoked.json             the revocation list: key id, when, why
//! ```
//!
//! A key id is the first 8 bytes of SHA-256 of the 32-byte public key, in hex. Expiry and
//! revocation are decided by the verifier's own files: a signature checks out only if its key
//! is trusted, not revoked, and not expired at verification time.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{io_err, ArtifactError, Result};
use crate::files::{create_private_new, iso8601, write_private};

/// Name of the trusted-keys file in a signing directory.
pub const TRUSTED_FILE: &str = "trusted.json";
/// Name of the revocation list in a signing directory.
pub const REVOKED_FILE: &str = "revoked.json";
/// Sub-directory holding key pairs.
pub const KEYS_DIR: &str = "keys";

/// Public facts about a signing key: what verifiers store in `trusted.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Key id (hex, 16 digits).
    pub key_id: String,
    /// Human-readable name given at creation.
    pub name: String,
    /// Ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Expiry, Unix seconds: signatures by this key are refused after it.
    pub expires_at: u64,
}

impl KeyInfo {
    /// Parses the public key.
    pub fn verifying_key(&self, origin: &Path) -> Result<VerifyingKey> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(&self.public_key, &mut b).map_err(|_| ArtifactError::BadKeyFile {
            path: origin.to_owned(),
            reason: format!("key {}: public_key is not 64 hex digits", self.key_id),
        })?;
        let vk = VerifyingKey::from_bytes(&b).map_err(|e| ArtifactError::BadKeyFile {
            path: origin.to_owned(),
            reason: format!("key {}: invalid ed25519 public key: {e}", self.key_id),
        })?;
        if key_id_of(&vk) != self.key_id {
            return Err(ArtifactError::BadKeyFile {
                path: origin.to_owned(),
                reason: format!("key {}: key_id does not match the public key", self.key_id),
            });
        }
        Ok(vk)
    }
}

/// The key id of a public key.
pub fn key_id_of(vk: &VerifyingKey) -> String {
    mamori_core::hash::sha256_hex(vk.as_bytes())[..16].to_owned()
}

/// On-disk form of a key pair.
#[derive(Serialize, Deserialize)]
struct KeyPairFile {
    #[serde(flatten)]
    info: KeyInfo,
    secret_key: String,
}

/// A signing key pair with its metadata. The secret is wiped on drop (ed25519-dalek's
/// `SigningKey` zeroizes itself) and never printed.
pub struct SigningKeyPair {
    /// Public facts.
    pub info: KeyInfo,
    secret: SigningKey,
}

impl fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyPair")
            .field("info", &self.info)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl SigningKeyPair {
    /// A fresh key valid from `now` for `valid_secs` seconds.
    pub fn generate(name: &str, now: u64, valid_secs: u64) -> Self {
        let secret = SigningKey::generate(&mut rand::rngs::OsRng);
        let vk = secret.verifying_key();
        Self {
            info: KeyInfo {
                key_id: key_id_of(&vk),
                name: name.to_owned(),
                public_key: hex::encode(vk.as_bytes()),
                created_at: now,
                expires_at: now.saturating_add(valid_secs),
            },
            secret,
        }
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> ed25519_dalek::Signature {
        use ed25519_dalek::Signer;
        self.secret.sign(msg)
    }

    /// Reads a key pair file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = Zeroizing::new(fs::read_to_string(path).map_err(io_err(path))?);
        let file: KeyPairFile = serde_json::from_str(&text).map_err(|e| ArtifactError::Json {
            path: path.to_owned(),
            source: e,
        })?;
        let secret_hex = Zeroizing::new(file.secret_key);
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(secret_hex.as_str(), seed.as_mut()).map_err(|_| {
            ArtifactError::BadKeyFile {
                path: path.to_owned(),
                reason: "secret_key is not 64 hex digits".into(),
            }
        })?;
        let secret = SigningKey::from_bytes(&seed);
        if hex::encode(secret.verifying_key().as_bytes()) != file.info.public_key
            || key_id_of(&secret.verifying_key()) != file.info.key_id
        {
            return Err(ArtifactError::BadKeyFile {
                path: path.to_owned(),
                reason: "public_key/key_id do not match the secret key".into(),
            });
        }
        Ok(Self {
            info: file.info,
            secret,
        })
    }

    /// Writes the key pair to a new file with mode 0600 (fails if it exists).
    pub fn save_new(&self, path: &Path) -> Result<()> {
        let file = KeyPairFile {
            info: self.info.clone(),
            secret_key: hex::encode(self.secret.to_bytes()),
        };
        let text = Zeroizing::new(serde_json::to_vec_pretty(&file).expect("key serialises"));
        // Wipe the hex copy of the secret too.
        let KeyPairFile { secret_key, .. } = file;
        drop(Zeroizing::new(secret_key));
        create_private_new(path, &text)
    }

    /// Creates a key in `signing_dir/keys/`, writes its public half beside it, and adds it
    /// to `signing_dir/trusted.json`. Returns the pair and the private key file's path.
    pub fn create_in(
        signing_dir: &Path,
        name: &str,
        now: u64,
        valid_secs: u64,
    ) -> Result<(Self, PathBuf)> {
        let keys = signing_dir.join(KEYS_DIR);
        fs::create_dir_all(&keys).map_err(io_err(&keys))?;
        let pair = Self::generate(name, now, valid_secs);
        let path = keys.join(format!("{}.key.json", pair.info.key_id));
        pair.save_new(&path)?;
        let pub_path = keys.join(format!("{}.pub.json", pair.info.key_id));
        let pub_json = serde_json::to_vec_pretty(&pair.info).expect("key info serialises");
        fs::write(&pub_path, pub_json).map_err(io_err(&pub_path))?;
        let mut trust = TrustStore::load(signing_dir)?;
        trust.trust(pair.info.clone());
        trust.save(signing_dir)?;
        Ok((pair, path))
    }

    /// The newest key pair in `signing_dir/keys/` that is neither expired at `now` nor on the
    /// directory's revocation list.
    pub fn find_default(signing_dir: &Path, now: u64) -> Result<(Self, PathBuf)> {
        let keys = signing_dir.join(KEYS_DIR);
        let none = || ArtifactError::NoSigningKey {
            dir: signing_dir.to_owned(),
        };
        let Ok(rd) = fs::read_dir(&keys) else {
            return Err(none());
        };
        let trust = TrustStore::load(signing_dir)?;
        let mut best: Option<(Self, PathBuf)> = None;
        for e in rd {
            let path = e.map_err(io_err(&keys))?.path();
            if !path.to_string_lossy().ends_with(".key.json") {
                continue;
            }
            let pair = Self::load(&path)?;
            if pair.info.expires_at <= now || trust.revocation(&pair.info.key_id).is_some() {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|(b, _)| pair.info.created_at > b.info.created_at)
            {
                best = Some((pair, path));
            }
        }
        best.ok_or_else(none)
    }
}

/// One entry of the revocation list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The revoked key.
    pub key_id: String,
    /// When it was revoked, Unix seconds.
    pub revoked_at: u64,
    /// Why.
    pub reason: String,
}

/// What a verifier trusts: `trusted.json` plus `revoked.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustStore {
    /// Trusted keys.
    pub trusted: Vec<KeyInfo>,
    /// Revoked keys (refused even if trusted).
    pub revoked: Vec<Revocation>,
    /// Where the store was read from (for error messages).
    pub origin: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct TrustedFile {
    keys: Vec<KeyInfo>,
}

#[derive(Serialize, Deserialize)]
struct RevokedFile {
    revoked: Vec<Revocation>,
}

fn read_json_opt<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| ArtifactError::Json {
                path: path.to_owned(),
                source: e,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ArtifactError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

impl TrustStore {
    /// Reads `dir/trusted.json` and `dir/revoked.json` (each optional: missing means empty).
    pub fn load(dir: &Path) -> Result<Self> {
        let trusted_path = dir.join(TRUSTED_FILE);
        let trusted = read_json_opt::<TrustedFile>(&trusted_path)?
            .map(|t| t.keys)
            .unwrap_or_default();
        for k in &trusted {
            k.verifying_key(&trusted_path)?;
        }
        let revoked = read_json_opt::<RevokedFile>(&dir.join(REVOKED_FILE))?
            .map(|r| r.revoked)
            .unwrap_or_default();
        Ok(Self {
            trusted,
            revoked,
            origin: dir.to_owned(),
        })
    }

    /// Writes both files into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let t = serde_json::to_vec_pretty(&TrustedFile {
            keys: self.trusted.clone(),
        })
        .expect("serialises");
        write_private(&dir.join(TRUSTED_FILE), &t)?;
        let r = serde_json::to_vec_pretty(&RevokedFile {
            revoked: self.revoked.clone(),
        })
        .expect("serialises");
        write_private(&dir.join(REVOKED_FILE), &r)
    }

    /// Adds (or replaces) a trusted key.
    pub fn trust(&mut self, info: KeyInfo) {
        self.trusted.retain(|k| k.key_id != info.key_id);
        self.trusted.push(info);
    }

    /// Puts a key on the revocation list (idempotent: the first revocation is kept).
    pub fn revoke(&mut self, key_id: &str, reason: &str, now: u64) {
        if self.revocation(key_id).is_none() {
            self.revoked.push(Revocation {
                key_id: key_id.to_owned(),
                revoked_at: now,
                reason: reason.to_owned(),
            });
        }
    }

    /// The revocation of a key, if any.
    pub fn revocation(&self, key_id: &str) -> Option<&Revocation> {
        self.revoked.iter().find(|r| r.key_id == key_id)
    }

    /// Checks that `key_id` may be used to verify at time `now`: not revoked
    /// ([`ArtifactError::RevokedKey`]), trusted ([`ArtifactError::UnknownKey`]), not expired
    /// ([`ArtifactError::ExpiredKey`]). Returns the public key.
    pub fn check(&self, key_id: &str, now: u64) -> Result<VerifyingKey> {
        if let Some(r) = self.revocation(key_id) {
            return Err(ArtifactError::RevokedKey {
                key_id: key_id.to_owned(),
                revoked_at: iso8601(r.revoked_at),
                reason: r.reason.clone(),
            });
        }
        let Some(info) = self.trusted.iter().find(|k| k.key_id == key_id) else {
            return Err(ArtifactError::UnknownKey {
                key_id: key_id.to_owned(),
            });
        };
        if now >= info.expires_at {
            return Err(ArtifactError::ExpiredKey {
                key_id: key_id.to_owned(),
                expired_at: iso8601(info.expires_at),
            });
        }
        info.verifying_key(&self.origin.join(TRUSTED_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pair_round_trips_and_debug_redacts() {
        let d = tempfile::tempdir().unwrap();
        let (pair, path) = SigningKeyPair::create_in(d.path(), "ci", 1000, 3600).unwrap();
        let back = SigningKeyPair::load(&path).unwrap();
        assert_eq!(back.info, pair.info);
        assert_eq!(back.sign(b"x"), pair.sign(b"x"));
        let secret_hex = hex::encode(pair.secret.to_bytes());
        let dbg = format!("{pair:?}");
        assert!(
            dbg.contains("<redacted>") && !dbg.contains(&secret_hex),
            "{dbg}"
        );
        // The public file does not hold the secret.
        let pub_text =
            fs::read_to_string(path.with_file_name(format!("{}.pub.json", pair.info.key_id)))
                .unwrap();
        assert!(!pub_text.contains(&secret_hex));
        // The new key is trusted in the same directory.
        let t = TrustStore::load(d.path()).unwrap();
        assert!(t.check(&pair.info.key_id, 2000).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn check_reports_revoked_unknown_expired() {
        let p = SigningKeyPair::generate("k", 1_700_000_000, 100);
        let mut t = TrustStore::default();
        let e = t.check(&p.info.key_id, 1_700_000_001).unwrap_err();
        assert!(matches!(e, ArtifactError::UnknownKey { .. }), "{e}");
        t.trust(p.info.clone());
        assert!(t.check(&p.info.key_id, 1_700_000_099).is_ok());
        let e = t.check(&p.info.key_id, 1_700_000_100).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "signing key {} expired at 2023-11-14T22:15:00Z",
                p.info.key_id
            )
        );
        t.revoke(&p.info.key_id, "laptop stolen", 1_700_000_050);
        let e = t.check(&p.info.key_id, 1_700_000_060).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "signing key {} was revoked at 2023-11-14T22:14:10Z: laptop stolen",
                p.info.key_id
            )
        );
    }

    #[test]
    fn default_key_skips_expired_and_revoked() {
        let d = tempfile::tempdir().unwrap();
        let e = SigningKeyPair::find_default(d.path(), 10).unwrap_err();
        assert!(matches!(e, ArtifactError::NoSigningKey { .. }));
        let (old, _) = SigningKeyPair::create_in(d.path(), "old", 100, 1000).unwrap();
        let (new, _) = SigningKeyPair::create_in(d.path(), "new", 200, 50).unwrap();
        // Newest valid key wins.
        let (k, _) = SigningKeyPair::find_default(d.path(), 210).unwrap();
        assert_eq!(k.info.key_id, new.info.key_id);
        // Once it expires, the older one is used.
        let (k, _) = SigningKeyPair::find_default(d.path(), 260).unwrap();
        assert_eq!(k.info.key_id, old.info.key_id);
        // Revoked: none left.
        let mut t = TrustStore::load(d.path()).unwrap();
        t.revoke(&old.info.key_id, "rotated", 300);
        t.save(d.path()).unwrap();
        assert!(SigningKeyPair::find_default(d.path(), 310).is_err());
    }

    #[test]
    fn tampered_key_files_are_rejected() {
        let d = tempfile::tempdir().unwrap();
        let (pair, path) = SigningKeyPair::create_in(d.path(), "k", 1, 100).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let other = SigningKeyPair::generate("o", 1, 100);
        fs::write(
            &path,
            text.replace(&pair.info.public_key, &other.info.public_key),
        )
        .unwrap();
        let e = SigningKeyPair::load(&path).unwrap_err();
        assert!(e.to_string().contains("do not match the secret key"), "{e}");
        // A trusted.json whose key id does not match its public key.
        let tp = d.path().join(TRUSTED_FILE);
        let text = fs::read_to_string(&tp).unwrap();
        fs::write(
            &tp,
            text.replace(&pair.info.public_key, &other.info.public_key),
        )
        .unwrap();
        let e = TrustStore::load(d.path()).unwrap_err();
        assert!(e.to_string().contains("key_id does not match"), "{e}");
        fs::write(&tp, "{").unwrap();
        let e = TrustStore::load(d.path()).unwrap_err();
        assert!(e.to_string().contains("invalid JSON"), "{e}");
    }
}
