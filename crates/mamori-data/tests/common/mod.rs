//! A tiny HTTP/1.1 file server on 127.0.0.1:0 for fetch tests (no internet needed).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A running test server.
pub struct Server {
    /// `http://127.0.0.1:PORT/`.
    pub base: String,
    /// Requests served so far.
    pub requests: Arc<AtomicUsize>,
}

/// Serves files under `root`. Files whose name is in `corrupt` are served with one byte
/// flipped. The server stops after `max_requests` connections (a bounded loop).
pub fn serve(root: PathBuf, corrupt: &[&str], max_requests: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    let corrupt: Vec<String> = corrupt.iter().map(|s| s.to_string()).collect();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut s) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
                if req.len() > 16 * 1024 {
                    break;
                }
            }
            let line = String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            let file = root.join(&path);
            let body = if path.split('/').any(|c| c == "..") {
                None
            } else {
                std::fs::read(&file).ok()
            };
            match body {
                Some(mut b) => {
                    let name = file
                        .file_name()
                        .map(|n| n.to_string_lossy().to_string())
                        .unwrap_or_default();
                    if corrupt.contains(&name) && !b.is_empty() {
                        let mid = b.len() / 2;
                        b[mid] ^= 0x5a;
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                        b.len()
                    );
                    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(&b));
                }
                None => {
                    let _ = s.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
            }
        }
    });
    Server { base, requests }
}

/// The shared data directory (`../shared/data` from the repository root).
pub fn shared_data() -> PathBuf {
    let d = mamori_data::resolve_data_dir(None);
    assert!(
        d.join("mnist").is_dir(),
        "test data not found at {}",
        d.display()
    );
    d
}
