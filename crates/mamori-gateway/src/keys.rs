//! API keys: issued once, stored only as SHA-256 hashes, compared in constant time.
//!
//! A key looks like `mk_<id>_<secret>`: `id` is 8 hex characters (the key id shown in logs,
//! the audit trail and `mamori keys list`), `secret` is 32 bytes from the OS random generator
//! (256 bits, hex). Because keys are high-entropy random values and not passwords, a single
//! SHA-256 is a sufficient one-way hash: nobody can brute-force a 256-bit secret, so a slow
//! password hash would only add latency. The store keeps `sha256(key)`; lookup finds the record
//! by id and compares digests with [`subtle::ConstantTimeEq`].
//!
//! The store is a JSON file (`keys.json` under the home directory) written atomically; the
//! gateway reloads it when its modification time changes, so `mamori keys revoke` takes effect
//! on a running server within a second.

use crate::error::GatewayError;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};
use subtle::ConstantTimeEq;

/// One stored key (never the key itself).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public key id (8 hex characters).
    pub id: String,
    /// SHA-256 of the full key, hex.
    pub sha256: String,
    /// Client name (detector state and audit records are per client).
    pub client: String,
    /// Group of clients (organisation) watched together by the detectors, if any.
    #[serde(default)]
    pub group: Option<String>,
    /// Tier name.
    pub tier: String,
    /// Models this key may query; empty = every model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// Revocation time, if revoked.
    #[serde(default)]
    pub revoked_ms: Option<u64>,
}

impl KeyRecord {
    /// Whether the key may query `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

/// What authentication establishes about a caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    /// Key id.
    pub key_id: String,
    /// Client name.
    pub client: String,
    /// Group, if any.
    pub group: Option<String>,
    /// Tier name.
    pub tier: String,
    /// Allowed models (empty = all).
    pub models: Vec<String>,
}

/// The persistent file format.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct KeyFile {
    #[serde(default)]
    keys: Vec<KeyRecord>,
    /// SHA-256 of the admin token, if one was issued.
    #[serde(default)]
    admin_sha256: Option<String>,
}

/// What authentication needs of one key, prepared when the file is (re)loaded so that a
/// lookup allocates nothing.
struct IndexEntry {
    /// Hex SHA-256 of the key, as stored.
    sha256: String,
    /// The principal handed to the chain.
    principal: Arc<Principal>,
    /// Whether the key is revoked.
    revoked: bool,
}

/// Records by key id (the first record wins if a hand-edited file repeats an id, as a
/// linear search would).
fn index(file: &KeyFile) -> HashMap<String, IndexEntry> {
    let mut m = HashMap::with_capacity(file.keys.len());
    for r in &file.keys {
        m.entry(r.id.clone()).or_insert_with(|| IndexEntry {
            sha256: r.sha256.clone(),
            principal: Arc::new(Principal {
                key_id: r.id.clone(),
                client: r.client.clone(),
                group: r.group.clone(),
                tier: r.tier.clone(),
                models: r.models.clone(),
            }),
            revoked: r.revoked_ms.is_some(),
        });
    }
    m
}

/// The loaded file, its modification time, the last reload check and the lookup index.
type State = (
    KeyFile,
    Option<SystemTime>,
    Instant,
    HashMap<String, IndexEntry>,
);

/// Key store backed by a JSON file.
pub struct KeyStore {
    path: Option<PathBuf>,
    state: RwLock<State>,
}

/// Current time in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn ct_eq_hex(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

impl KeyStore {
    /// A store that lives only in memory (tests, in-process evaluation).
    pub fn in_memory() -> Self {
        Self {
            path: None,
            state: RwLock::new((KeyFile::default(), None, Instant::now(), HashMap::new())),
        }
    }

    /// Opens (or prepares to create) `home/keys.json`.
    pub fn open(home: &Path) -> Result<Self, GatewayError> {
        let path = home.join("keys.json");
        let (file, mtime) = read_file(&path)?;
        let idx = index(&file);
        Ok(Self {
            path: Some(path),
            state: RwLock::new((file, mtime, Instant::now(), idx)),
        })
    }

    /// Reloads the file when it changed on disk (checked at most once per second).
    fn maybe_reload(&self) {
        let Some(path) = &self.path else { return };
        {
            let st = self.state.read().unwrap_or_else(|e| e.into_inner());
            if st.2.elapsed().as_millis() < 1000 {
                return;
            }
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.2 = Instant::now();
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if mtime != st.1 {
            match read_file(path) {
                Ok((f, m)) => {
                    st.3 = index(&f);
                    st.0 = f;
                    st.1 = m;
                }
                Err(e) => tracing::warn!("key store reload failed, keeping old keys: {e}"),
            }
        }
    }

    fn save(&self, file: &KeyFile) -> Result<Option<SystemTime>, GatewayError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| GatewayError::Storage(format!("{}: {e}", dir.display())))?;
        }
        let tmp = path.with_extension("json.tmp");
        let text =
            serde_json::to_string_pretty(file).map_err(|e| GatewayError::Storage(e.to_string()))?;
        std::fs::write(&tmp, text)
            .map_err(|e| GatewayError::Storage(format!("{}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| GatewayError::Storage(format!("{}: {e}", path.display())))?;
        Ok(std::fs::metadata(path).and_then(|m| m.modified()).ok())
    }

    fn mutate<R>(
        &self,
        f: impl FnOnce(&mut KeyFile) -> Result<R, GatewayError>,
    ) -> Result<R, GatewayError> {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        // Start from the newest file contents so concurrent CLI edits are not lost.
        if let Some(path) = &self.path {
            let (f2, m) = read_file(path)?;
            st.0 = f2;
            st.1 = m;
        }
        let r = f(&mut st.0);
        st.3 = index(&st.0);
        let r = r?;
        st.1 = self.save(&st.0)?;
        Ok(r)
    }

    /// Issues a new client key; returns the record and the key (shown once, never stored).
    pub fn create(
        &self,
        client: &str,
        group: Option<&str>,
        tier: &str,
        models: &[String],
    ) -> Result<(KeyRecord, String), GatewayError> {
        check_name("client", client)?;
        if let Some(g) = group {
            check_name("group", g)?;
        }
        self.mutate(|file| {
            let mut id = random_hex(4);
            while file.keys.iter().any(|k| k.id == id) {
                id = random_hex(4);
            }
            let key = format!("mk_{id}_{}", random_hex(32));
            let rec = KeyRecord {
                id,
                sha256: sha256_hex(&key),
                client: client.to_string(),
                group: group.map(str::to_string),
                tier: tier.to_string(),
                models: models.to_vec(),
                created_ms: now_ms(),
                revoked_ms: None,
            };
            file.keys.push(rec.clone());
            Ok((rec, key))
        })
    }

    /// Revokes a key by id.
    pub fn revoke(&self, id: &str) -> Result<KeyRecord, GatewayError> {
        self.mutate(|file| {
            let rec = file
                .keys
                .iter_mut()
                .find(|k| k.id == id)
                .ok_or_else(|| GatewayError::NotFound(format!("no key with id {id:?}")))?;
            if rec.revoked_ms.is_none() {
                rec.revoked_ms = Some(now_ms());
            }
            Ok(rec.clone())
        })
    }

    /// All key records.
    pub fn list(&self) -> Vec<KeyRecord> {
        self.maybe_reload();
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .keys
            .clone()
    }

    /// Issues (or rotates) the admin token; returns it (shown once).
    pub fn create_admin_token(&self) -> Result<String, GatewayError> {
        let token = format!("mka_{}", random_hex(32));
        let digest = sha256_hex(&token);
        self.mutate(|f| {
            f.admin_sha256 = Some(digest);
            Ok(())
        })?;
        Ok(token)
    }

    /// Whether `token` is the admin token (constant-time). Client keys never match.
    pub fn is_admin(&self, token: &str) -> bool {
        self.maybe_reload();
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        match &st.0.admin_sha256 {
            Some(h) => ct_eq_hex(&sha256_hex(token), h),
            None => false,
        }
    }

    /// Authenticates a client key.
    pub fn authenticate(&self, key: &str) -> Result<Principal, GatewayError> {
        self.authenticate_shared(key).map(|p| (*p).clone())
    }

    /// Authenticates a client key; the principal is shared, so a lookup allocates nothing
    /// (the request path's form of [`KeyStore::authenticate`]).
    pub fn authenticate_shared(&self, key: &str) -> Result<Arc<Principal>, GatewayError> {
        self.maybe_reload();
        let mut digest = [0u8; 64];
        hex::encode_to_slice(Sha256::digest(key.as_bytes()), &mut digest)
            .map_err(|e| GatewayError::Config(e.to_string()))?;
        let id = key
            .strip_prefix("mk_")
            .and_then(|rest| rest.split('_').next())
            .unwrap_or("");
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        let rec = st.3.get(id);
        // Compare against a dummy digest when the id is unknown, so timing does not tell
        // whether an id exists.
        const DUMMY: [u8; 64] = [b'0'; 64];
        let stored = rec.map(|r| r.sha256.as_bytes()).unwrap_or(&DUMMY);
        let ok = stored.len() == digest.len() && bool::from(digest.ct_eq(stored));
        match rec {
            Some(r) if ok => {
                if r.revoked {
                    return Err(GatewayError::RevokedKey(r.principal.key_id.clone()));
                }
                Ok(r.principal.clone())
            }
            _ => Err(GatewayError::InvalidCredential),
        }
    }
}

fn read_file(path: &Path) -> Result<(KeyFile, Option<SystemTime>), GatewayError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let f: KeyFile = serde_json::from_str(&text).map_err(|e| {
                GatewayError::Storage(format!("{}: invalid key store: {e}", path.display()))
            })?;
            let m = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            Ok((f, m))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((KeyFile::default(), None)),
        Err(e) => Err(GatewayError::Storage(format!("{}: {e}", path.display()))),
    }
}

/// The longest client or group name, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// Client and group names end up in audit exports, alert tables, metrics labels and logs: they
/// must be non-empty, at most [`MAX_NAME_CHARS`] characters, without surrounding whitespace,
/// control characters (a newline could forge a log line) or bidirectional-text controls (which
/// make a name display as another).
pub fn check_name(what: &str, name: &str) -> Result<(), GatewayError> {
    let bad = |why: &str| {
        Err(GatewayError::BadRequest(format!(
            "{what} name {name:?} {why}"
        )))
    };
    if name.trim().is_empty() {
        return Err(GatewayError::BadRequest(format!(
            "{what} name must not be empty"
        )));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return bad(&format!("is longer than {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    if name
        .chars()
        .any(|c| matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
    {
        return bad("contains a bidirectional-text control character");
    }
    if name.trim() != name {
        return bad("has leading or trailing whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_forge_or_disguise_a_log_line_are_refused() {
        let ks = KeyStore::in_memory();
        for (name, why) in [
            ("", "empty"),
            ("   ", "empty"),
            (" alice", "whitespace"),
            ("alice\nALERT mallory blocked", "control"),
            ("ali\u{0}ce", "control"),
            ("alice\u{202e}ecila", "bidirectional"),
            ("a\u{2066}b", "bidirectional"),
        ] {
            let e = ks.create(name, None, "full", &[]).unwrap_err();
            assert!(matches!(e, GatewayError::BadRequest(_)), "{name:?}: {e}");
            assert!(e.to_string().contains(why), "{name:?}: {e}");
            let e = ks.create("alice", Some(name), "full", &[]).unwrap_err();
            assert!(e.to_string().contains(why), "group {name:?}: {e}");
        }
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        assert!(ks.create(&long, None, "full", &[]).is_err());
        // Ordinary names, including non-Latin ones, are fine.
        for ok in [
            "alice",
            "team-7/ci bot",
            "名前",
            "x".repeat(MAX_NAME_CHARS).as_str(),
        ] {
            ks.create(ok, Some(ok), "full", &[]).unwrap();
        }
        assert_eq!(ks.list().len(), 4);
    }

    #[test]
    fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        let (rec, key) = store.create("alice", None, "full", &[]).unwrap();
        let text = std::fs::read_to_string(dir.path().join("keys.json")).unwrap();
        assert!(!text.contains(&key), "the key itself must never be stored");
        assert!(text.contains(&rec.sha256));
        assert_eq!(store.authenticate(&key).unwrap().client, "alice");
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push('x');
        assert!(matches!(
            store.authenticate(&wrong),
            Err(GatewayError::InvalidCredential)
        ));
        assert!(store.authenticate("garbage").is_err());
        // A second handle (the CLI) revokes; the first sees it after reload.
        let other = KeyStore::open(dir.path()).unwrap();
        other.revoke(&rec.id).unwrap();
        let reopened = KeyStore::open(dir.path()).unwrap();
        assert!(matches!(
            reopened.authenticate(&key),
            Err(GatewayError::RevokedKey(_))
        ));
    }

    #[test]
    fn admin_token_is_separate() {
        let store = KeyStore::in_memory();
        let (_, key) = store.create("bob", None, "full", &[]).unwrap();
        assert!(!store.is_admin(&key));
        let admin = store.create_admin_token().unwrap();
        assert!(store.is_admin(&admin));
        assert!(!store.is_admin(&key));
        assert!(store.authenticate(&admin).is_err());
    }
}
