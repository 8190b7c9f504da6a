//! A throwaway PostgreSQL server for tests: `initdb` into a fresh directory, `postgres` on a
//! free local port, stopped and deleted on drop.
//!
//! The binaries come from `MAMORI_PG_BINDIR`, else the `pgserver` Python package (what
//! `.ci/run` installs: PostgreSQL in a wheel), else `initdb` on the `PATH`. PostgreSQL refuses
//! to run as root, so under root the server runs as `nobody` (through `setpriv`), from a
//! world-readable copy of the installation when the original is not reachable by `nobody`
//! (pip installs under `/root`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running throwaway PostgreSQL server (see the module documentation).
pub struct TempPostgres {
    bindir: PathBuf,
    root: PathBuf,
    port: u16,
    as_nobody: bool,
    durable: bool,
    child: Option<Child>,
}

/// Where the PostgreSQL binaries are, if anywhere.
pub fn postgres_bindir() -> Option<PathBuf> {
    super::locate(
        "MAMORI_PG_BINDIR",
        "import os, pgserver; print(os.path.join(os.path.dirname(pgserver.__file__), 'pginstall', 'bin'))",
        |dir| dir.to_path_buf(),
        |d| d.join("initdb").is_file() && d.join("postgres").is_file(),
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

const NOBODY: u32 = 65534;

fn run_as(as_nobody: bool, program: &Path) -> Command {
    if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn chmod(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to)?;
    chmod(to, 0o755)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ty = e.file_type()?;
        if ty.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ty.is_symlink() {
            let target = std::fs::read_link(&src)?;
            let _ = std::fs::remove_file(&dst);
            std::os::unix::fs::symlink(target, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
            let mode = std::fs::metadata(&src)?.permissions().mode();
            chmod(&dst, (mode & 0o755) | 0o444)?;
        }
    }
    Ok(())
}

/// Whether every directory above `path` lets other users through (`o+x`).
fn reachable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors().all(|a| {
        std::fs::metadata(a)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

fn io_err(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

impl TempPostgres {
    /// Starts a server, or — when no PostgreSQL is installed — returns `None` after printing
    /// `SKIPPED` (in CI, `CI=true`, where `.ci/run` installs it, this panics instead).
    pub fn start_or_skip() -> Option<Self> {
        let Some(bindir) = postgres_bindir() else {
            super::skip_or_fail_in_ci(
                "no PostgreSQL found",
                "pip install pgserver (or set MAMORI_PG_BINDIR)",
            );
            return None;
        };
        Some(Self::start(&bindir).unwrap_or_else(|e| panic!("starting PostgreSQL: {e}")))
    }

    /// Initialises a new cluster with the binaries in `bindir` and starts it with `fsync`
    /// off (tests: faster, and durability is not what they check).
    pub fn start(bindir: &Path) -> std::io::Result<Self> {
        Self::start_with(bindir, false)
    }

    /// Like [`TempPostgres::start`]; `durable` keeps PostgreSQL's default `fsync = on`
    /// (benchmarks).
    pub fn start_with(bindir: &Path, durable: bool) -> std::io::Result<Self> {
        let as_nobody = is_root();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let root = std::env::temp_dir().join(format!("mamori-pg-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&root)?;
        chmod(&root, 0o755)?;
        let started = Self::start_in(bindir, &root, as_nobody, durable);
        if started.is_err() {
            let _ = std::fs::remove_dir_all(&root);
        }
        started
    }

    fn start_in(
        bindir: &Path,
        root: &Path,
        as_nobody: bool,
        durable: bool,
    ) -> std::io::Result<Self> {
        let root = root.to_path_buf();
        let mut bindir = bindir.to_path_buf();
        if as_nobody && !reachable_by_others(&bindir) {
            // Copy the installation (`<prefix>/<pkg>/<install>/bin`) with the shared libraries
            // a wheel keeps beside its package (`<prefix>/<pkg>.libs`, found through the
            // binaries' `$ORIGIN/../../../<pkg>.libs` RPATH), at the same relative places.
            let install = bindir
                .parent()
                .ok_or_else(|| io_err(format!("{}: no parent", bindir.display())))?;
            let pkg = install.parent().unwrap_or(install);
            let prefix = pkg.parent().unwrap_or(pkg);
            let base = root.join("install");
            let copy = base
                .join("pkg")
                .join(install.file_name().unwrap_or_default());
            copy_tree(install, &copy)?;
            for e in std::fs::read_dir(prefix)?.flatten() {
                let name = e.file_name();
                if name.to_string_lossy().ends_with(".libs") && e.path().is_dir() {
                    copy_tree(&e.path(), &base.join(&name))?;
                }
            }
            chmod(&base.join("pkg"), 0o755)?;
            bindir = copy.join("bin");
        }
        let data = root.join("data");
        std::fs::create_dir_all(&data)?;
        chmod(&data, 0o700)?;
        if as_nobody {
            std::os::unix::fs::chown(&data, Some(NOBODY), Some(NOBODY))?;
        }
        let out = run_as(as_nobody, &bindir.join("initdb"))
            .args([
                "-U",
                "mamori",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()?;
        if !out.status.success() {
            return Err(io_err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut pg = Self {
            bindir,
            root,
            port,
            as_nobody,
            durable,
            child: None,
        };
        pg.resume()?;
        Ok(pg)
    }

    /// A connection string for the `postgres` database as the superuser `mamori`.
    pub fn url(&self) -> String {
        format!(
            "postgresql://mamori@127.0.0.1:{}/postgres?connect_timeout=10",
            self.port
        )
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown: open connections are closed), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same data and port; returns once it accepts
    /// connections.
    pub fn resume(&mut self) -> std::io::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let data = self.root.join("data");
        let log = self.root.join("server.log");
        let _ = std::fs::remove_file(&log);
        let log_file = std::fs::File::create(&log)?;
        chmod(&log, 0o666)?;
        let child = run_as(self.as_nobody, &self.bindir.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&data)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                if self.durable {
                    "fsync=on"
                } else {
                    "fsync=off"
                },
                "-c",
                "max_connections=50",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(&log) {
                let _ = f.read_to_string(&mut text);
            }
            if text.contains("ready to accept connections") {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            if exited || Instant::now() > deadline {
                self.child = None;
                return Err(io_err(format!("postgres did not start: {text}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
