//! Verified download of the named datasets, and verification of a data directory.
//!
//! Each file is downloaded from the mirror (the official one by default, or any base URL
//! serving the same file names), written to a temporary file beside its destination, checked
//! against the pinned SHA-256 of [`crate::catalog`], then renamed into place: a file at its
//! final path is always complete and verified. A mismatch deletes the download and retries;
//! after the last attempt the error names the URL and both digests.

use crate::catalog::{self, DatasetSpec, FileSpec, Hashed};
use crate::read::{gunzip, is_gzip};
use crate::DataError;
use mamori_core::hash::sha256_hex;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options of [`fetch`].
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Base URL of the directory holding the files; `None` uses the official mirror.
    pub mirror: Option<String>,
    /// Downloads tried per file before giving up (at least 1).
    pub attempts: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Download even when a verified copy is already present.
    pub force: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            mirror: None,
            attempts: 3,
            timeout: Duration::from_secs(300),
            force: false,
        }
    }
}

/// Progress of [`fetch`], reported to the caller's callback (the CLI draws a progress bar).
#[derive(Clone, Debug, PartialEq)]
pub enum FetchEvent {
    /// A download starts; `total` is the announced size, if any.
    Start {
        /// File name.
        file: String,
        /// URL.
        url: String,
        /// Content-Length, if the server sent one.
        total: Option<u64>,
    },
    /// Bytes received so far for the current file.
    Progress {
        /// File name.
        file: String,
        /// Bytes received.
        bytes: u64,
    },
    /// The file was downloaded and verified.
    Done {
        /// Final path.
        path: PathBuf,
    },
    /// A verified copy was already present; nothing downloaded.
    AlreadyPresent {
        /// Path.
        path: PathBuf,
    },
    /// A download failed and will be retried.
    Retry {
        /// File name.
        file: String,
        /// Attempt that failed (1-based).
        attempt: usize,
        /// Why.
        error: String,
    },
}

/// Downloads every file of the named dataset into `<data_dir>/<name>/`, verifying each against
/// its pinned SHA-256. Returns the final paths.
pub fn fetch(
    name: &str,
    data_dir: &Path,
    opts: &FetchOptions,
    on_event: &mut dyn FnMut(&FetchEvent),
) -> Result<Vec<PathBuf>, DataError> {
    let spec = catalog::spec(name).ok_or_else(|| DataError::UnknownDataset(name.to_string()))?;
    let dir = data_dir.join(spec.name);
    std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
    let base = {
        let b = opts
            .mirror
            .clone()
            .unwrap_or_else(|| spec.mirror.to_string());
        if b.ends_with('/') {
            b
        } else {
            format!("{b}/")
        }
    };
    let client = reqwest::blocking::Client::builder()
        .timeout(opts.timeout)
        .user_agent(concat!("mamori/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| DataError::Download {
            url: base.clone(),
            message: e.to_string(),
        })?;
    let mut out = Vec::new();
    for f in spec.files {
        let dest = dir.join(f.name);
        if !opts.force
            && dest.is_file()
            && file_sha256(&dest, f.hashed).ok().as_deref() == Some(f.sha256)
        {
            on_event(&FetchEvent::AlreadyPresent { path: dest.clone() });
            out.push(dest);
            continue;
        }
        let url = format!("{base}{}", f.name);
        fetch_one(&client, &url, f, &dest, opts.attempts.max(1), on_event)?;
        on_event(&FetchEvent::Done { path: dest.clone() });
        out.push(dest);
    }
    Ok(out)
}

fn fetch_one(
    client: &reqwest::blocking::Client,
    url: &str,
    f: &FileSpec,
    dest: &Path,
    attempts: usize,
    on_event: &mut dyn FnMut(&FetchEvent),
) -> Result<(), DataError> {
    let tmp = dest.with_file_name(format!(".{}.partial-{}", f.name, std::process::id()));
    let mut last = None;
    for attempt in 1..=attempts {
        let result = download(client, url, f.name, &tmp, on_event).and_then(|raw_sha| {
            let actual = match f.hashed {
                Hashed::Raw => raw_sha,
                Hashed::Decompressed => file_sha256(&tmp, Hashed::Decompressed)
                    .unwrap_or_else(|e| format!("(not a valid gzip file: {e})")),
            };
            if actual == f.sha256 {
                Ok(())
            } else {
                Err(DataError::Checksum {
                    url: url.to_string(),
                    expected: f.sha256.to_string(),
                    actual,
                    attempts: attempt,
                })
            }
        });
        match result {
            Ok(()) => {
                return std::fs::rename(&tmp, dest).map_err(|e| DataError::io(dest, e));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                if attempt < attempts {
                    on_event(&FetchEvent::Retry {
                        file: f.name.to_string(),
                        attempt,
                        error: e.to_string(),
                    });
                    std::thread::sleep(Duration::from_millis(200 * attempt as u64));
                }
                last = Some(e);
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Streams `url` into `tmp`, returning the SHA-256 of the bytes received.
fn download(
    client: &reqwest::blocking::Client,
    url: &str,
    file: &str,
    tmp: &Path,
    on_event: &mut dyn FnMut(&FetchEvent),
) -> Result<String, DataError> {
    let derr = |m: String| DataError::Download {
        url: url.to_string(),
        message: m,
    };
    let mut resp = client.get(url).send().map_err(|e| derr(error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(derr(format!("HTTP {}", resp.status())));
    }
    let total = resp.content_length();
    on_event(&FetchEvent::Start {
        file: file.to_string(),
        url: url.to_string(),
        total,
    });
    let mut out = std::fs::File::create(tmp).map_err(|e| DataError::io(tmp, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let n = resp
            .read(&mut buf)
            .map_err(|e| derr(format!("connection broke after {got} bytes: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| DataError::io(tmp, e))?;
        got += n as u64;
        on_event(&FetchEvent::Progress {
            file: file.to_string(),
            bytes: got,
        });
    }
    if let Some(total) = total {
        if got != total {
            return Err(derr(format!("received {got} of {total} bytes")));
        }
    }
    out.sync_all().map_err(|e| DataError::io(tmp, e))?;
    Ok(hex::encode(hasher.finalize()))
}

/// An error and its sources, joined (reqwest's top-level message omits the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// SHA-256 of a file as the catalog pins it: of its bytes, or of its decompressed content.
pub fn file_sha256(path: &Path, hashed: Hashed) -> Result<String, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    Ok(match hashed {
        Hashed::Raw => sha256_hex(&raw),
        Hashed::Decompressed if is_gzip(&raw) => sha256_hex(&gunzip(path, &raw)?),
        Hashed::Decompressed => sha256_hex(&raw),
    })
}

/// Outcome of checking one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckStatus {
    /// The digest matches the pinned one.
    Ok,
    /// The file is absent.
    Missing,
    /// The digest differs.
    Mismatch {
        /// Digest found.
        actual: String,
    },
    /// The file could not be read or decompressed.
    Unreadable {
        /// Why.
        error: String,
    },
}

/// One file checked by [`verify`].
#[derive(Clone, Debug)]
pub struct FileCheck {
    /// Dataset name.
    pub dataset: &'static str,
    /// Path checked.
    pub path: PathBuf,
    /// Pinned digest.
    pub expected: &'static str,
    /// What the digest covers.
    pub hashed: Hashed,
    /// Outcome.
    pub status: CheckStatus,
}

/// Checks the files of the named dataset (or of every dataset when `name` is `None`) in
/// `data_dir` against their pinned SHA-256.
pub fn verify(name: Option<&str>, data_dir: &Path) -> Result<Vec<FileCheck>, DataError> {
    let specs: Vec<&DatasetSpec> = match name {
        Some(n) => vec![catalog::spec(n).ok_or_else(|| DataError::UnknownDataset(n.to_string()))?],
        None => catalog::DATASETS.iter().collect(),
    };
    let mut out = Vec::new();
    for s in specs {
        for f in s.files {
            let path = data_dir.join(s.name).join(f.name);
            let status = if !path.is_file() {
                CheckStatus::Missing
            } else {
                match file_sha256(&path, f.hashed) {
                    Ok(a) if a == f.sha256 => CheckStatus::Ok,
                    Ok(a) => CheckStatus::Mismatch { actual: a },
                    Err(e) => CheckStatus::Unreadable {
                        error: e.to_string(),
                    },
                }
            };
            out.push(FileCheck {
                dataset: s.name,
                path,
                expected: f.sha256,
                hashed: f.hashed,
                status,
            });
        }
    }
    Ok(out)
}
