//! Alert webhook: every alert the escalation records (issue #5: "alert — stored, webhook POST,
//! metric") is also POSTed as JSON to the operator's endpoint (a SIEM, an incident tool, a
//! Slack incoming webhook: the payload carries a `text` line), off the request path, delivered
//! **at least once** and in order.
//!
//! - **Durable outbox.** An alert is appended (and `fsync`ed) to `<home>/alert-outbox.jsonl`
//!   before any delivery attempt and removed once the endpoint answered 2xx; whatever is still
//!   there at shutdown (endpoint down) is delivered by the next `serve`. A crash between a
//!   delivery and the outbox's rewrite delivers that alert again: each delivery carries a
//!   stable `id` (also in the `X-Mamori-Delivery` header) for the receiver to de-duplicate.
//! - **Retries.** Network errors, timeouts, 408, 429 and 5xx are retried with exponential
//!   backoff (1 s doubling to 60 s), keeping the order. Other answers (400, 401, 404, …) will not
//!   change by retrying: the alert is moved to `<home>/alert-outbox.dead.jsonl` with the
//!   status, logged and counted, and the queue goes on.
//! - **Authenticity.** With a secret (`alerts.webhook_secret`), each request carries
//!   `X-Mamori-Signature: sha256=<hex HMAC-SHA-256(secret, body)>` (the scheme GitHub and
//!   others use), so the receiver can reject forged alerts. The secret never appears in logs.
//! - **Metrics**: `mamori_alert_webhook_delivered_total`, `mamori_alert_webhook_failures_total`
//!   (each failed attempt), `mamori_alert_webhook_dead_total`, and the gauge
//!   `mamori_alert_webhook_pending`.

use crate::audit::AlertEvent;
use crate::error::GatewayError;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// First retry delay; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where and how alerts are POSTed.
#[derive(Clone)]
pub struct WebhookSettings {
    /// The endpoint (`http://` or `https://`).
    pub url: String,
    /// HMAC key of the `X-Mamori-Signature` header (none: unsigned).
    pub secret: Option<String>,
    /// Timeout of one delivery attempt.
    pub timeout: Duration,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &crate::config::redact_password(&self.url))
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Counters and gauge the dispatcher keeps up to date (registered by
/// [`crate::metrics::Metrics`]).
#[derive(Clone, Debug, Default)]
pub struct WebhookHealth {
    /// Alerts the endpoint accepted (2xx).
    pub delivered: prometheus_client::metrics::counter::Counter,
    /// Failed delivery attempts (each retry counts).
    pub failures: prometheus_client::metrics::counter::Counter,
    /// Alerts given up on (a final 4xx answer), kept in the dead-letter file.
    pub dead: prometheus_client::metrics::counter::Counter,
    /// Alerts waiting for delivery.
    pub pending: prometheus_client::metrics::gauge::Gauge,
}

/// One alert as delivered (and as kept in the outbox).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Stable id of this alert's delivery (the same on every attempt).
    pub id: String,
    /// Always `mamori.alert`.
    #[serde(rename = "type")]
    pub kind: String,
    /// One line for humans (Slack and similar tools show it).
    pub text: String,
    /// The alert, as stored in the audit log.
    pub alert: AlertEvent,
}

impl Delivery {
    fn new(alert: AlertEvent) -> Self {
        let text = format!(
            "mamori: client {} tripped detector {} on model {} after {} queries (score {:.3}); action: {}",
            alert.client, alert.detector, alert.model, alert.queries, alert.score, alert.action
        );
        Self {
            id: hex::encode(rand::random::<[u8; 16]>()),
            kind: "mamori.alert".into(),
            text,
            alert,
        }
    }
}

/// The signature header's value for `body` under `secret`: `sha256=<hex>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

enum Msg {
    Alert(Box<AlertEvent>),
    Flush(mpsc::Sender<()>),
}

/// The dispatcher: a thread delivering queued alerts (see the module documentation).
pub struct AlertWebhook {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What one attempt came to.
enum Outcome {
    Delivered,
    Retry(String),
    Dead(String),
}

struct Dispatcher {
    settings: WebhookSettings,
    client: reqwest::blocking::Client,
    outbox: Option<PathBuf>,
    dead: Option<PathBuf>,
    pending: VecDeque<Delivery>,
    health: WebhookHealth,
}

fn write_lines(path: &std::path::Path, items: &VecDeque<Delivery>) -> std::io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let text: String = items
        .iter()
        .filter_map(|d| serde_json::to_string(d).ok())
        .map(|l| l + "\n")
        .collect();
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn append_line(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(line.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_data()
}

impl Dispatcher {
    fn set_pending(&self) {
        self.health
            .pending
            .set(i64::try_from(self.pending.len()).unwrap_or(i64::MAX));
    }

    /// Queues an alert, writing it to the outbox first.
    fn enqueue(&mut self, alert: AlertEvent) {
        let d = Delivery::new(alert);
        if let Some(p) = &self.outbox {
            match serde_json::to_string(&d) {
                Ok(line) => {
                    if let Err(e) = append_line(p, &line) {
                        tracing::error!(
                            "alert outbox {}: {e} (alert {} kept in memory only)",
                            p.display(),
                            d.id
                        );
                    }
                }
                Err(e) => tracing::error!("alert not serialisable: {e}"),
            }
        }
        self.pending.push_back(d);
        self.set_pending();
    }

    /// Removes the front alert (delivered or dead) and rewrites the outbox.
    fn pop(&mut self) {
        self.pending.pop_front();
        self.set_pending();
        if let Some(p) = &self.outbox {
            let r = if self.pending.is_empty() {
                std::fs::remove_file(p).or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
            } else {
                write_lines(p, &self.pending)
            };
            if let Err(e) = r {
                tracing::error!("alert outbox {}: {e}", p.display());
            }
        }
    }

    fn attempt(&self, d: &Delivery) -> Outcome {
        let body = match serde_json::to_vec(d) {
            Ok(b) => b,
            Err(e) => return Outcome::Dead(format!("not serialisable: {e}")),
        };
        let mut req = self
            .client
            .post(&self.settings.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Mamori-Delivery", &d.id);
        if let Some(s) = &self.settings.secret {
            req = req.header("X-Mamori-Signature", signature(s, &body));
        }
        match req.body(body).send() {
            Ok(r) if r.status().is_success() => Outcome::Delivered,
            Ok(r) => {
                let s = r.status();
                let why = format!("HTTP {}", s.as_u16());
                if s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429 {
                    Outcome::Retry(why)
                } else {
                    Outcome::Dead(why)
                }
            }
            // The URL is hidden in reqwest's error text on purpose: it may carry a token.
            Err(e) => Outcome::Retry(e.without_url().to_string()),
        }
    }

    /// Tries the front alert once; returns whether the queue may go on at once.
    fn deliver_front(&mut self) -> bool {
        let Some(d) = self.pending.front().cloned() else {
            return false;
        };
        match self.attempt(&d) {
            Outcome::Delivered => {
                self.health.delivered.inc();
                self.pop();
                true
            }
            Outcome::Dead(why) => {
                self.health.failures.inc();
                self.health.dead.inc();
                tracing::error!(
                    "alert webhook refused alert {} ({why}); kept in {}",
                    d.id,
                    self.dead
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "the audit log only".into())
                );
                if let Some(p) = &self.dead {
                    let line = serde_json::json!({"delivery": d, "error": why}).to_string();
                    if let Err(e) = append_line(p, &line) {
                        tracing::error!("alert dead-letter file {}: {e}", p.display());
                    }
                }
                self.pop();
                true
            }
            Outcome::Retry(why) => {
                self.health.failures.inc();
                tracing::warn!(
                    "alert webhook: delivery of {} failed ({why}); will retry",
                    d.id
                );
                false
            }
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut backoff = FIRST_BACKOFF;
        let mut next_try = Instant::now();
        let mut waiters: Vec<mpsc::Sender<()>> = Vec::new();
        loop {
            // Wait for news, or until the next retry is due.
            let msg = if self.pending.is_empty() {
                rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(next_try.saturating_duration_since(Instant::now()))
            };
            let closed = match msg {
                Ok(Msg::Alert(a)) => {
                    self.enqueue(*a);
                    false
                }
                Ok(Msg::Flush(w)) => {
                    waiters.push(w);
                    false
                }
                Err(mpsc::RecvTimeoutError::Timeout) => false,
                Err(mpsc::RecvTimeoutError::Disconnected) => true,
            };
            while let Ok(m) = rx.try_recv() {
                match m {
                    Msg::Alert(a) => self.enqueue(*a),
                    Msg::Flush(w) => waiters.push(w),
                }
            }
            // A new alert or a flush tries at once when nothing is backing off.
            if Instant::now() >= next_try || closed {
                while !self.pending.is_empty() {
                    if self.deliver_front() {
                        backoff = FIRST_BACKOFF;
                    } else {
                        next_try = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        break;
                    }
                }
            }
            if self.pending.is_empty() {
                for w in waiters.drain(..) {
                    let _ = w.send(());
                }
            }
            if closed {
                if !self.pending.is_empty() {
                    tracing::warn!(
                        "alert webhook: {} alerts not delivered at shutdown; {}",
                        self.pending.len(),
                        match &self.outbox {
                            Some(p) => format!("the next start delivers them from {}", p.display()),
                            None => "they are in the audit log".into(),
                        }
                    );
                }
                return;
            }
        }
    }
}

impl AlertWebhook {
    /// Starts the dispatcher. With `home`, alerts go through `<home>/alert-outbox.jsonl` (and
    /// what an earlier run left there is delivered first); without, the queue is in memory.
    /// Errors: a URL that is not `http(s)://…`, an unreadable outbox.
    pub fn start(
        settings: WebhookSettings,
        home: Option<&std::path::Path>,
        health: WebhookHealth,
    ) -> Result<Self, GatewayError> {
        check_url(&settings.url)?;
        let client = reqwest::blocking::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("mamori/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GatewayError::Config(format!("alerts.webhook_url: {e}")))?;
        let outbox = home.map(|h| h.join("alert-outbox.jsonl"));
        let dead = home.map(|h| h.join("alert-outbox.dead.jsonl"));
        let mut pending = VecDeque::new();
        if let Some(p) = &outbox {
            match std::fs::read_to_string(p) {
                Ok(text) => {
                    for (i, line) in text
                        .lines()
                        .enumerate()
                        .filter(|(_, l)| !l.trim().is_empty())
                    {
                        match serde_json::from_str::<Delivery>(line) {
                            Ok(d) => pending.push_back(d),
                            // A torn last line (crash while appending).
                            Err(e) => tracing::error!(
                                "alert outbox {} line {}: {e} (skipped)",
                                p.display(),
                                i + 1
                            ),
                        }
                    }
                    if !pending.is_empty() {
                        tracing::warn!(
                            "alert webhook: {} alerts left undelivered by the last run",
                            pending.len()
                        );
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(GatewayError::Storage(format!("{}: {e}", p.display())));
                }
            }
        }
        let d = Dispatcher {
            settings,
            client,
            outbox,
            dead,
            pending,
            health,
        };
        d.set_pending();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mamori-webhook".into())
            .spawn(move || d.run(rx))
            .map_err(|e| GatewayError::Storage(format!("starting the webhook thread: {e}")))?;
        // What the last run left is tried at once.
        let _ = tx.send(Msg::Flush(mpsc::channel().0));
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `alert` for delivery (never blocks the request path).
    pub fn send(&self, alert: &AlertEvent) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(Msg::Alert(Box::new(alert.clone())));
        }
    }

    /// Waits up to `timeout` until every queued alert is delivered (or given up on); returns
    /// whether the queue emptied.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (w, r) = mpsc::channel();
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.send(Msg::Flush(w)).is_ok());
        sent && r.recv_timeout(timeout).is_ok()
    }

    /// Stops the dispatcher after one last attempt at what is pending (the rest stays in the
    /// outbox for the next start).
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for AlertWebhook {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Checks that `url` is an `http://` or `https://` URL with a host.
pub fn check_url(url: &str) -> Result<(), GatewayError> {
    let shown = crate::config::redact_password(url);
    let u = reqwest::Url::parse(url)
        .map_err(|e| GatewayError::Config(format!("alerts.webhook_url {shown:?}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(GatewayError::Config(format!(
            "alerts.webhook_url {shown:?}: must be an http:// or https:// URL"
        )));
    }
    Ok(())
}
