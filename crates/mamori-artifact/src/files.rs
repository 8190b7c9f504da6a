//! File helpers shared by every feature: hashing, flat model-directory listing, private
//! writes, time stamps.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::error::{io_err, ArtifactError, Result};

/// Lowercase hex SHA-256 of a file, read in 64 KiB chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The regular files of a flat model directory as `(file name, path)`, sorted by name.
///
/// Sub-directories, symlinks and names that are not UTF-8 are refused: a model directory is
/// flat (`model.safetensors`, `model.json`, signature files), and anything else is suspicious.
/// File names in `skip` are left out.
pub fn list_flat_dir(dir: &Path, skip: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(io_err(&path))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(ArtifactError::UnsupportedEntry {
                path,
                reason: "file name is not UTF-8".into(),
            });
        };
        if skip.contains(&name.as_str()) {
            continue;
        }
        if !ft.is_file() {
            return Err(ArtifactError::UnsupportedEntry {
                path,
                reason: "a model directory may hold only regular files".into(),
            });
        }
        out.push((name, path));
    }
    out.sort();
    Ok(out)
}

/// Whether `dir` is missing or holds no entries.
pub fn dir_is_empty(dir: &Path) -> Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(ArtifactError::Io {
            path: dir.to_owned(),
            source: e,
        }),
    }
}

/// Creates `dir` if needed and refuses a non-empty one unless `force`.
pub fn prepare_out_dir(dir: &Path, force: bool) -> Result<()> {
    if !force && !dir_is_empty(dir)? {
        return Err(ArtifactError::DestinationNotEmpty {
            dir: dir.to_owned(),
        });
    }
    fs::create_dir_all(dir).map_err(io_err(dir))
}

/// Writes `bytes` to `path` readable by the owner only (mode 0600 on Unix), replacing it.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    // A file that existed before keeps its mode: tighten it explicitly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
    }
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Creates `path` with mode 0600, failing if it exists.
pub fn create_private_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
///
/// Days-to-civil conversion after H. Hinnant, "chrono-Compatible Low-Level Date Algorithms".
pub fn iso8601(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_known_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn flat_listing_refuses_subdirectories() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), b"1").unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        let err = list_flat_dir(d.path(), &[]).unwrap_err();
        assert!(err.to_string().contains("sub"), "{err}");
        assert!(err.to_string().contains("only regular files"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        fs::write(&p, b"old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"new").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let q = d.path().join("n");
        create_private_new(&q, b"x").unwrap();
        assert_eq!(
            fs::metadata(&q).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(create_private_new(&q, b"y").is_err());
    }
}
