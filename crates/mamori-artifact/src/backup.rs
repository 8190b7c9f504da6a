//! Backups of the gateway home (key store, audit log, watermark ledger, detector state) and
//! model directories, with an online, consistent copy of every SQLite database.
//!
//! The archive is a gzip-compressed tar (readable with `tar tzf`), chosen over a custom
//! format so an operator can inspect or extract a backup with standard tools in an emergency.
//! Its first entry is `MANIFEST.json` (format, creation time, and for every file its path,
//! SHA-256, size and whether it is a SQLite database); then `home/<relative path>` for the home
//! directory and `models/<directory name>/<file>` for each model directory.
//!
//! SQLite files (by extension `.db`, `.sqlite`, `.sqlite3`, or by the `SQLite format 3` header)
//! are copied with SQLite's online backup API in a single step, i.e. within one read
//! transaction: the copy is a consistent snapshot even while a writer is active (in WAL mode
//! the writer is not blocked; in rollback-journal mode it waits on its busy timeout for the
//! duration of the copy). Their `-wal`, `-shm` and `-journal` side files are not archived: the
//! snapshot already contains every committed transaction. Every snapshot passes
//! `PRAGMA integrity_check` before it is archived.
//!
//! Restoring refuses a non-empty directory unless forced, rejects unsafe archive paths, and
//! verifies every file against the manifest (SHA-256) and every database with
//! `PRAGMA integrity_check`.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::encrypt::{decrypt_container, encrypt_container};
use crate::error::{io_err, ArtifactError, Result};
use crate::files::{now_unix, prepare_out_dir, sha256_file, write_private};
use crate::key::ModelKey;

/// Name of the manifest entry.
pub const BACKUP_MANIFEST: &str = "MANIFEST.json";
/// `format` of a backup manifest.
pub const BACKUP_FORMAT: &str = "mamori-backup";
/// Logical file name bound into an encrypted archive's container.
const ENCRYPTED_NAME: &str = "mamori-backup";
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
const BUSY_LIMIT: Duration = Duration::from_secs(30);

/// One archived file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEntry {
    /// Path inside the archive (`home/...` or `models/<name>/...`), `/`-separated.
    pub path: String,
    /// Lowercase hex SHA-256 of the archived bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether it is a SQLite database (checked with `PRAGMA integrity_check` on restore).
    pub sqlite: bool,
}

/// The archive's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    /// Always [`BACKUP_FORMAT`].
    pub format: String,
    /// Manifest version (1).
    pub version: u32,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Every archived file.
    pub entries: Vec<BackupEntry>,
}

/// Whether `path` is a SQLite database, by extension or header.
pub fn is_sqlite(path: &Path) -> bool {
    let by_ext = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("db" | "sqlite" | "sqlite3")
    );
    if by_ext {
        return true;
    }
    let mut head = [0u8; 16];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|_| &head == SQLITE_MAGIC)
        .unwrap_or(false)
}

fn sqlite_err(path: &Path) -> impl FnOnce(rusqlite::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

/// Copies the live database `src` to `dst` with the online backup API in one step (one read
/// transaction, hence a consistent snapshot), retrying while the source is locked by a writer
/// for up to 30 s.
pub fn backup_sqlite(src: &Path, dst: &Path) -> Result<()> {
    let from = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err(src))?;
    from.busy_timeout(Duration::from_secs(5))
        .map_err(sqlite_err(src))?;
    let mut to = Connection::open(dst).map_err(sqlite_err(dst))?;
    {
        let b = Backup::new(&from, &mut to).map_err(sqlite_err(dst))?;
        let start = Instant::now();
        loop {
            match b.step(-1).map_err(sqlite_err(src))? {
                StepResult::Done => break,
                StepResult::More => {}
                _ => {
                    if start.elapsed() > BUSY_LIMIT {
                        return Err(ArtifactError::Sqlite {
                            path: src.to_owned(),
                            source: rusqlite::Error::SqliteFailure(
                                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                                Some("database stayed locked for 30 s during backup".into()),
                            ),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    drop(to);
    integrity_check(dst)
}

/// Runs `PRAGMA integrity_check` on a database file.
pub fn integrity_check(path: &Path) -> Result<()> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sqlite_err(path))?;
    let rows: Vec<String> = {
        let mut st = c
            .prepare("PRAGMA integrity_check")
            .map_err(sqlite_err(path))?;
        let it = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sqlite_err(path))?;
        it.collect::<std::result::Result<_, _>>()
            .map_err(sqlite_err(path))?
    };
    if rows != ["ok"] {
        return Err(ArtifactError::IntegrityCheckFailed {
            path: path.to_owned(),
            result: rows.join("; "),
        });
    }
    Ok(())
}

/// Collects `(archive path, source path)` for every file under `root`, archive paths prefixed
/// with `prefix`. SQLite side files are skipped when their database is present; `exclude`
/// (e.g. the archive being written) is skipped; symlinks are refused.
fn collect(
    root: &Path,
    prefix: &str,
    exclude: &[PathBuf],
    out: &mut Vec<(String, PathBuf)>,
) -> Result<()> {
    let mut stack = vec![(root.to_owned(), prefix.to_owned())];
    while let Some((dir, pre)) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .map(|e| e.map_err(io_err(&dir)))
            .collect::<Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                return Err(ArtifactError::UnsupportedEntry {
                    path,
                    reason: "file name is not UTF-8".into(),
                });
            };
            if exclude.iter().any(|x| same_file(x, &path)) {
                continue;
            }
            let ft = e.file_type().map_err(io_err(&path))?;
            let arch = format!("{pre}/{name}");
            if ft.is_dir() {
                stack.push((path, arch));
            } else if ft.is_file() {
                if is_sqlite_side_file(&path) {
                    continue;
                }
                out.push((arch, path));
            } else {
                return Err(ArtifactError::UnsupportedEntry {
                    path,
                    reason:
                        "backups hold regular files and directories only (symlink or special file)"
                            .into(),
                });
            }
        }
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn is_sqlite_side_file(path: &Path) -> bool {
    let s = path.to_string_lossy();
    for suf in ["-wal", "-shm", "-journal"] {
        if let Some(base) = s.strip_suffix(suf) {
            let base = Path::new(base);
            if base.is_file() && is_sqlite(base) {
                return true;
            }
        }
    }
    false
}

/// Backs up `home` (if given) and each model directory into the archive `out`.
///
/// Files are first copied into a private staging directory (databases through the online
/// backup API, other files with a plain copy), hashed there, and archived from there, so the
/// manifest describes exactly the bytes archived.
///
/// With `key`, the whole archive is encrypted as one AES-256-GCM container (see
/// [`crate::encrypt`], logical name `mamori-backup`): the home directory holds signing keys
/// and API-key hashes, so an archive leaving the machine should be encrypted. Without it, the
/// archive is written with mode 0600.
pub fn create_backup(
    home: Option<&Path>,
    models: &[PathBuf],
    out: &Path,
    key: Option<&ModelKey>,
) -> Result<BackupManifest> {
    let mut sources = Vec::new();
    let exclude = [out.to_owned()];
    if let Some(h) = home {
        collect(h, "home", &exclude, &mut sources)?;
    }
    let mut names = BTreeSet::new();
    for m in models {
        let name = m
            .canonicalize()
            .map_err(io_err(m))?
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| ArtifactError::UnsupportedEntry {
                path: m.clone(),
                reason: "model directory has no UTF-8 name".into(),
            })?;
        if !names.insert(name.clone()) {
            return Err(ArtifactError::DuplicateModelName { name });
        }
        collect(m, &format!("models/{name}"), &exclude, &mut sources)?;
    }
    let stage = tempfile::Builder::new()
        .prefix("mamori-backup-")
        .tempdir()
        .map_err(io_err(std::env::temp_dir()))?;
    let mut entries = Vec::new();
    for (i, (arch, src)) in sources.iter().enumerate() {
        let staged = stage.path().join(i.to_string());
        let sqlite = is_sqlite(src);
        if sqlite {
            backup_sqlite(src, &staged)?;
        } else {
            fs::copy(src, &staged).map_err(io_err(src))?;
        }
        entries.push(BackupEntry {
            path: arch.clone(),
            sha256: sha256_file(&staged)?,
            size: fs::metadata(&staged).map_err(io_err(&staged))?.len(),
            sqlite,
        });
    }
    let manifest = BackupManifest {
        format: BACKUP_FORMAT.into(),
        version: 1,
        created_at: now_unix(),
        entries,
    };
    let tmp_out = out.with_extension("partial");
    match key {
        None => {
            let f = open_private(&tmp_out)?;
            let f = write_archive(f, &manifest, stage.path(), &tmp_out)?;
            f.sync_all().map_err(io_err(&tmp_out))?;
        }
        Some(key) => {
            let plain = Zeroizing::new(write_archive(
                Vec::new(),
                &manifest,
                stage.path(),
                &tmp_out,
            )?);
            write_private(&tmp_out, &encrypt_container(ENCRYPTED_NAME, &plain, key))?;
        }
    }
    fs::rename(&tmp_out, out).map_err(io_err(out))?;
    Ok(manifest)
}

fn open_private(path: &Path) -> Result<fs::File> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map_err(io_err(path))
}

/// Writes the tar.gz (manifest first, then the staged files) into `w`; returns `w`.
fn write_archive<W: Write>(
    w: W,
    manifest: &BackupManifest,
    stage: &Path,
    label: &Path,
) -> Result<W> {
    let gz = flate2::write::GzEncoder::new(w, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mjson = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
    append_bytes(&mut tar, BACKUP_MANIFEST, &mjson, label)?;
    for (i, e) in manifest.entries.iter().enumerate() {
        let staged = stage.join(i.to_string());
        let mut f = fs::File::open(&staged).map_err(io_err(&staged))?;
        let mut h = tar::Header::new_gnu();
        h.set_size(e.size);
        h.set_mode(0o600);
        h.set_mtime(manifest.created_at);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, &e.path, &mut f)
            .map_err(io_err(label))?;
    }
    let gz = tar.into_inner().map_err(io_err(label))?;
    gz.finish().map_err(io_err(label))
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
    out: &Path,
) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o600);
    h.set_mtime(now_unix());
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, bytes).map_err(io_err(out))
}

/// A safe relative path from an archive entry name, or why not.
fn safe_relative(name: &str) -> std::result::Result<PathBuf, String> {
    let p = Path::new(name);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            _ => return Err(format!("unsafe path {name:?} in archive")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(format!("empty path {name:?} in archive"));
    }
    Ok(out)
}

/// Whether an archive file is encrypted (starts with the container magic).
pub fn is_encrypted_archive(archive: &Path) -> Result<bool> {
    let mut head = [0u8; 8];
    let mut f = fs::File::open(archive).map_err(io_err(archive))?;
    match f.read_exact(&mut head) {
        Ok(()) => Ok(&head == crate::encrypt::MAGIC),
        Err(_) => Ok(false),
    }
}

/// Extracts `archive` into `into` (empty unless `force`), then verifies it
/// ([`verify_restored`]). Also writes the manifest as `into/MANIFEST.json`. An encrypted
/// archive needs its `key` ([`ArtifactError::MissingKey`] otherwise) and is decrypted in
/// memory.
pub fn restore_backup(
    archive: &Path,
    into: &Path,
    force: bool,
    key: Option<&ModelKey>,
) -> Result<BackupManifest> {
    if is_encrypted_archive(archive)? {
        let key = key.ok_or(ArtifactError::MissingKey)?;
        let raw = fs::read(archive).map_err(io_err(archive))?;
        let plain = decrypt_container(ENCRYPTED_NAME, &raw, key)?;
        restore_from(&plain[..], archive, into, force)
    } else {
        let f = fs::File::open(archive).map_err(io_err(archive))?;
        restore_from(f, archive, into, force)
    }
}

fn restore_from<R: Read>(
    reader: R,
    archive: &Path,
    into: &Path,
    force: bool,
) -> Result<BackupManifest> {
    let bad = |reason: String| ArtifactError::BadArchive {
        path: archive.to_owned(),
        reason,
    };
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    let mut entries = tar.entries().map_err(|e| bad(e.to_string()))?;
    let mut first = entries
        .next()
        .ok_or_else(|| bad("empty archive".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let name = first
        .path()
        .map_err(|e| bad(e.to_string()))?
        .to_string_lossy()
        .into_owned();
    if name != BACKUP_MANIFEST {
        return Err(bad(format!(
            "first entry is {name:?}, expected {BACKUP_MANIFEST}"
        )));
    }
    let mut mbytes = Vec::new();
    first
        .read_to_end(&mut mbytes)
        .map_err(|e| bad(e.to_string()))?;
    let manifest: BackupManifest =
        serde_json::from_slice(&mbytes).map_err(|e| bad(format!("{BACKUP_MANIFEST}: {e}")))?;
    if manifest.format != BACKUP_FORMAT || manifest.version != 1 {
        return Err(bad(format!(
            "unsupported format {:?} version {}",
            manifest.format, manifest.version
        )));
    }
    let listed: BTreeSet<&str> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
    for e in &manifest.entries {
        safe_relative(&e.path).map_err(bad)?;
    }
    prepare_out_dir(into, force)?;
    let mut seen = BTreeSet::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad(format!("{name}: not a regular file")));
        }
        let rel = safe_relative(&name).map_err(bad)?;
        if !listed.contains(name.as_str()) {
            return Err(bad(format!("{name} is not listed in {BACKUP_MANIFEST}")));
        }
        if !seen.insert(name.clone()) {
            return Err(bad(format!("{name} appears twice")));
        }
        let dest = into.join(rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut buf = Vec::new();
        entry
            .read_to_end(&mut buf)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        write_private(&dest, &buf)?;
    }
    fs::write(into.join(BACKUP_MANIFEST), &mbytes).map_err(io_err(into))?;
    verify_restored(into, &manifest)?;
    Ok(manifest)
}

/// Verifies a restored directory against its manifest: every file present with its SHA-256,
/// every database passing `PRAGMA integrity_check`.
pub fn verify_restored(into: &Path, manifest: &BackupManifest) -> Result<()> {
    for e in &manifest.entries {
        let rel = safe_relative(&e.path).map_err(|reason| ArtifactError::BackupMismatch {
            file: e.path.clone(),
            reason,
        })?;
        let p = into.join(rel);
        if !p.is_file() {
            return Err(ArtifactError::BackupMismatch {
                file: e.path.clone(),
                reason: "missing".into(),
            });
        }
        let actual = sha256_file(&p)?;
        if actual != e.sha256 {
            return Err(ArtifactError::BackupMismatch {
                file: e.path.clone(),
                reason: format!("sha256 {actual}, manifest says {}", e.sha256),
            });
        }
        if e.sqlite {
            integrity_check(&p)?;
        }
    }
    Ok(())
}

/// Reads `into/MANIFEST.json` and verifies the directory against it.
pub fn verify_restored_dir(into: &Path) -> Result<BackupManifest> {
    let p = into.join(BACKUP_MANIFEST);
    let bytes = fs::read(&p).map_err(io_err(&p))?;
    let m: BackupManifest = serde_json::from_slice(&bytes).map_err(|e| ArtifactError::Json {
        path: p.clone(),
        source: e,
    })?;
    verify_restored(into, &m)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_refused() {
        assert!(safe_relative("../etc/passwd").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
        assert!(safe_relative("").is_err());
        assert_eq!(
            safe_relative("home/./a.db").unwrap(),
            PathBuf::from("home/a.db")
        );
    }

    #[test]
    fn sqlite_detection_by_extension_and_header() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.bin");
        Connection::open(&p)
            .unwrap()
            .execute_batch("CREATE TABLE t(x)")
            .unwrap();
        assert!(is_sqlite(&p));
        let q = d.path().join("notes.txt");
        fs::write(&q, b"hello").unwrap();
        assert!(!is_sqlite(&q));
        assert!(is_sqlite(Path::new("whatever.db")));
    }
}
