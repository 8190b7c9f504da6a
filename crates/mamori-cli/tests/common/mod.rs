//! Helpers shared by the binary's end-to-end tests: run `mamori`, make a tiny model, start and
//! stop a real gateway process.
#![allow(dead_code)]

use mamori_core::ModelCard;
use mamori_ml::{Arch, NativeModel, Network};
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A started `mamori serve` process: killed and reaped when dropped, so a test that fails
/// midway leaves no server running (a leaked one would keep the test harness's output open
/// and hang the run instead of failing it). Derefs to the [`Child`].
pub struct Served(Child);

impl Deref for Served {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Served {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // Both fail harmlessly for a server the test already stopped and waited for.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mamori --home HOME`.
pub fn mamori(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mamori"));
    c.arg("--home").arg(home);
    c
}

/// The shared datasets (`../shared/data` or `MAMORI_DATA`).
pub fn data_dir() -> std::path::PathBuf {
    mamori_data::resolve_data_dir(None)
}

/// `mamori --home HOME --data-dir <shared data>`.
pub fn mamori_with_data(home: &Path) -> Command {
    let mut c = mamori(home);
    c.arg("--data-dir").arg(data_dir());
    c
}

/// POSTs `rows` (each a `[1, 4, 4]` sample) to `url`'s model `model` with `key`, expects 200,
/// and returns the answer's JSON.
pub fn infer_json(url: &str, model: &str, key: &str, rows: &[Vec<f32>]) -> serde_json::Value {
    let body = serde_json::json!({
        "inputs": [{"name": "input", "shape": [rows.len(), 1, 4, 4], "datatype": "FP32",
                    "data": rows.iter().flatten().copied().collect::<Vec<f32>>()}]
    });
    let r = reqwest::blocking::Client::new()
        .post(format!("{url}/v2/models/{model}/infer"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().unwrap()
}

/// The first output's data of an answer's JSON.
pub fn output_data(answer: &serde_json::Value) -> Vec<f64> {
    answer["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Saves a small MLP (input `[1, 4, 4]`, 3 classes) named `name` into `dir`.
pub fn tiny_model(dir: &Path, name: &str) {
    let card = ModelCard {
        class_names: vec!["a".into(), "b".into(), "c".into()],
        ..ModelCard::classifier(name, "mlp", &[1, 4, 4], 3)
    };
    let net = Network::new(&Arch::Mlp { hidden: vec![8] }, &[1, 4, 4], 3, 3);
    NativeModel::new(net, card).save(dir).unwrap();
}

/// `mamori keys create --client CLIENT --tier full`; returns the key (last line).
pub fn create_key(home: &Path, client: &str) -> String {
    let out = mamori(home)
        .args(["keys", "create", "--client", client, "--tier", "full"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string()
}

/// `mamori --home HOME serve --addr 127.0.0.1:0 ARGS...`.
fn serve_command(home: &Path, args: &[OsString]) -> Command {
    let mut c = mamori(home);
    c.args(["serve", "--addr", "127.0.0.1:0"]).args(args);
    c
}

/// Starts `mamori serve --allow-unsigned --addr 127.0.0.1:0 --model DIR`; returns the child
/// and the base URL it printed.
pub fn start_serve(home: &Path, model_dir: &Path) -> (Served, String) {
    start_serve_with(
        home,
        &[
            "--allow-unsigned".into(),
            "--model".into(),
            model_dir.into(),
        ],
    )
}

/// Starts `mamori serve --addr 127.0.0.1:0 ARGS...`; returns the child and the base URL it
/// printed (panics if the server exits instead).
pub fn start_serve_with(home: &Path, args: &[OsString]) -> (Served, String) {
    let (child, url, _) = start_serve_logged(home, args);
    (child, url)
}

/// Like [`start_serve_with`], also returning what the server logged before it listened.
pub fn start_serve_logged(home: &Path, args: &[OsString]) -> (Served, String, Vec<String>) {
    let mut log = Vec::new();
    let mut child = serve_command(home, args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    for _ in 0..200 {
        line.clear();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        log.push(line.trim().to_string());
        if let Some(a) = line.trim().strip_prefix("mamori gateway listening on ") {
            let url = a.to_string();
            // Keep draining stderr so the server never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut sink = String::new();
                while err.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                    sink.clear();
                }
            });
            return (Served(child), url, log);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server did not start: {line}");
}

/// Sends SIGTERM and checks the gateway exits cleanly (graceful shutdown flushes the audit log).
pub fn stop(mut child: Served) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
}

/// Runs `mamori serve --addr 127.0.0.1:0 ARGS...` expecting it to refuse to start: returns its
/// stderr once it has exited with a failure (panics if it starts serving or succeeds).
pub fn serve_refuses(home: &Path, args: &[OsString]) -> String {
    let mut child = serve_command(home, args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            assert!(!status.success(), "serve exited successfully: {err}");
            eprintln!("serve refused: {}", err.trim());
            return err;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve did not refuse to start within 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Asserts a finished command succeeded (printing its output otherwise); returns its stdout.
/// The JSON document in the file at `path`.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

pub fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
