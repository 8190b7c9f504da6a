//! Support for tests that need an external Python package (the ONNX reference evaluator,
//! NVIDIA's OIP client, PostgreSQL from the `pgserver` wheel): one rule for all of them.

mod postgres;

pub use postgres::{postgres_bindir, TempPostgres};

use std::process::Command;

/// Whether `python3 -c "import <imports>"` succeeds. When it does not, the test is skipped with
/// a message naming `pip` (what to install) — except in CI (`CI=true`), where `.ci/run` installs
/// the package and its absence is a failure: this panics.
pub fn python_imports_or_skip(imports: &str, pip: &str) -> bool {
    let ok = python_imports(imports);
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but `python3 -c 'import {imports}'` fails: .ci/run must install {pip}");
        }
        eprintln!("SKIPPED: python3 with {imports} is not available (pip install {pip})");
    }
    ok
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
