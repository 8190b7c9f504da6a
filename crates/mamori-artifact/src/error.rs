//! The one error type of this crate: every failure names the file, key or field at fault.

use std::path::PathBuf;

/// Everything that can go wrong while protecting a model artifact.
///
/// Variants are grouped by feature. The `Display` text of each is stable enough to assert on in
/// tests and is what the CLI prints; none of them ever contains key material.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    // ----- I/O and parsing -------------------------------------------------------------------
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file (manifest, key file, trust store...) could not be parsed or written.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A directory entry of a kind this crate does not handle (sub-directory, symlink, ...).
    #[error("{}: unsupported entry: {reason}", path.display())]
    UnsupportedEntry {
        /// The entry.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// Refusing to write into a directory that already holds files.
    #[error("destination {} is not empty (pass --force to overwrite)", dir.display())]
    DestinationNotEmpty {
        /// The destination directory.
        dir: PathBuf,
    },

    // ----- encryption at rest ----------------------------------------------------------------
    /// No model key was given.
    #[error("missing model key: pass --key-file, or set MAMORI_MODEL_KEY_FILE (a key file path) or MAMORI_MODEL_KEY (the key as 64 hex digits)")]
    MissingKey,
    /// A model key file or variable does not hold a valid key.
    #[error("bad model key from {origin}: {reason}")]
    BadKey {
        /// Where the key came from (a path or an environment variable name).
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The model was encrypted with a different key.
    #[error("wrong model key for {file}: it was encrypted with key id {expected}, the key given has id {actual}")]
    WrongKey {
        /// The encrypted file.
        file: String,
        /// Key id recorded in the file.
        expected: String,
        /// Key id of the key given.
        actual: String,
    },
    /// The ciphertext or its header failed authentication: the file was modified (or swapped
    /// with another file of the model).
    #[error("encrypted file {file} failed authentication: it was tampered with or renamed")]
    TamperedCiphertext {
        /// The encrypted file.
        file: String,
    },
    /// The bytes are not a mamori encrypted container (bad magic, version, algorithm, length).
    #[error("{file}: not a valid encrypted container: {reason}")]
    BadContainer {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The set of encrypted files does not match the encrypted index (file deleted, added,
    /// or replaced by a file from another encryption of the model).
    #[error("encrypted model {}: {reason}", dir.display())]
    EncryptedSetMismatch {
        /// The encrypted model directory.
        dir: PathBuf,
        /// What differs.
        reason: String,
    },

    // ----- signing ---------------------------------------------------------------------------
    /// The model carries no signature (`manifest.json` / `manifest.sig` missing).
    #[error("model {} is unsigned: {missing} not found (sign it with `mamori model sign`)", dir.display())]
    UnsignedModel {
        /// The model directory.
        dir: PathBuf,
        /// The missing file.
        missing: String,
    },
    /// A model file does not match the signed manifest.
    #[error("model file {file} was tampered with: {reason}")]
    TamperedFile {
        /// The file name inside the model directory.
        file: String,
        /// What differs (expected and actual hash, missing, unlisted).
        reason: String,
    },
    /// The manifest or its signature does not verify.
    #[error("signed manifest was tampered with: {reason}")]
    TamperedManifest {
        /// What failed.
        reason: String,
    },
    /// The signature was made with a key that is not in the trusted-keys file.
    #[error("model signed by unknown key {key_id}: it is not in the trusted keys (add it with `mamori model keys trust`)")]
    UnknownKey {
        /// The signing key's id.
        key_id: String,
    },
    /// The signing key expired.
    #[error("signing key {key_id} expired at {expired_at}")]
    ExpiredKey {
        /// The key id.
        key_id: String,
        /// Expiry (UTC, ISO 8601).
        expired_at: String,
    },
    /// The signing key is on the revocation list.
    #[error("signing key {key_id} was revoked at {revoked_at}: {reason}")]
    RevokedKey {
        /// The key id.
        key_id: String,
        /// Revocation time (UTC, ISO 8601).
        revoked_at: String,
        /// The reason recorded with the revocation.
        reason: String,
    },
    /// No usable signing key was found.
    #[error("no usable signing key in {}: create one with `mamori model keys create` or pass --signing-key", dir.display())]
    NoSigningKey {
        /// The directory searched.
        dir: PathBuf,
    },
    /// A signing key file or trust store file is malformed.
    #[error("{}: {reason}", path.display())]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    // ----- pins ------------------------------------------------------------------------------
    /// A file's SHA-256 differs from its pin.
    #[error("pin mismatch for {file}: expected sha256 {expected}, got {actual}")]
    PinMismatch {
        /// The file.
        file: String,
        /// The pinned hash.
        expected: String,
        /// The file's hash.
        actual: String,
    },
    /// A file has no pin in the pin file.
    #[error("{file} is not pinned in {}", pin_file.display())]
    Unpinned {
        /// The file.
        file: String,
        /// The pin file.
        pin_file: PathBuf,
    },
    /// The pin file is malformed.
    #[error("{}: bad pin file: {reason}", path.display())]
    BadPinFile {
        /// The pin file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    // ----- backups ---------------------------------------------------------------------------
    /// A SQLite operation failed.
    #[error("{}: sqlite: {source}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        source: rusqlite::Error,
    },
    /// `PRAGMA integrity_check` did not answer `ok`.
    #[error("{}: sqlite integrity check failed: {result}", path.display())]
    IntegrityCheckFailed {
        /// The database file.
        path: PathBuf,
        /// What the check reported.
        result: String,
    },
    /// The archive is malformed (no manifest, unsafe path, duplicate entry...).
    #[error("bad backup archive {}: {reason}", path.display())]
    BadArchive {
        /// The archive.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A restored file differs from the backup manifest.
    #[error("restored file {file} does not match the backup manifest: {reason}")]
    BackupMismatch {
        /// The file, relative to the restore directory.
        file: String,
        /// Expected and actual hash, or missing.
        reason: String,
    },
    /// Two model directories given to a backup share a name.
    #[error("two model directories are both named {name}; rename one before backing up")]
    DuplicateModelName {
        /// The shared directory name.
        name: String,
    },
}

/// Shorthand for this crate's results.
pub type Result<T, E = ArtifactError> = std::result::Result<T, E>;

/// Wraps an I/O error with its path.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ArtifactError {
    let path = path.into();
    move |source| ArtifactError::Io { path, source }
}
