//! The alert webhook against a real HTTP receiver: an alert the escalation records through the
//! chain is POSTed once, signed, with the stored alert's fields; 5xx answers are retried in
//! order until delivered; a final 4xx goes to the dead-letter file and the queue moves on;
//! alerts the endpoint could not take before a shutdown are delivered by the next start from
//! the outbox; bad settings are configuration errors and the secret is never printed.

mod common;

use common::*;
use mamori_core::{Action, Tensor};
use mamori_gateway::alert_webhook::{signature, AlertWebhook, Delivery, WebhookSettings};
use mamori_gateway::audit::AlertEvent;
use mamori_gateway::metrics::Metrics;
use mamori_gateway::{ChainBuilder, GatewayConfig, InferRequest, KeyStore, OnAlarm, Payload};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the receiver got: (headers as lower-case name → value, body).
type Got = Arc<Mutex<Vec<(Vec<(String, String)>, serde_json::Value)>>>;

/// An HTTP receiver on `port` (0: any) answering `status` (changeable while it runs).
struct Receiver {
    port: u16,
    got: Got,
    status: Arc<AtomicU16>,
    _rt: tokio::runtime::Runtime,
}

fn receiver(port: u16) -> Receiver {
    let got: Got = Default::default();
    let status = Arc::new(AtomicU16::new(200));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (g, st) = (got.clone(), status.clone());
    let app =
        axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let (g, st) = (g.clone(), st.clone());
                    async move {
                        let h = headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let code = st.load(Ordering::SeqCst);
                        if code == 200 {
                            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            g.lock().unwrap().push((h, v));
                            // Keep the raw body for the signature check.
                            g.lock().unwrap().last_mut().unwrap().0.push((
                                "raw-body".into(),
                                String::from_utf8(body.to_vec()).unwrap(),
                            ));
                        }
                        axum::http::StatusCode::from_u16(code).unwrap()
                    }
                },
            ),
        );
    rt.spawn(async move { axum::serve(listener, app).await });
    Receiver {
        port,
        got,
        status,
        _rt: rt,
    }
}

fn settings(port: u16, secret: Option<&str>) -> WebhookSettings {
    WebhookSettings {
        url: format!("http://127.0.0.1:{port}/hook"),
        secret: secret.map(str::to_string),
        timeout: Duration::from_secs(2),
    }
}

fn alert(i: u64) -> AlertEvent {
    AlertEvent {
        time_ms: 1_700_000_000_000 + i,
        model: "lin".into(),
        client: format!("client-{i}"),
        detector: "prada".into(),
        score: 0.9,
        queries: 100 + i,
        action: "alert".into(),
    }
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> &'a str {
    h.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

#[test]
fn an_alert_of_the_chain_is_posted_once_and_signed() {
    let r = receiver(0);
    let metrics = Arc::new(Metrics::new());
    let hook = AlertWebhook::start(
        settings(r.port, Some("hook-secret")),
        None,
        metrics.webhook_health(),
    )
    .unwrap();
    let hook = Arc::new(hook);
    let keys = Arc::new(KeyStore::in_memory());
    let (_, key) = keys.create("mallory", None, "full", &[]).unwrap();
    let mut spec = lin_spec();
    spec.detectors = vec![Arc::new(CountDetector { threshold: 3 })];
    spec.policy = Box::new(OnAlarm(Action::Alert));
    let chain = ChainBuilder::new(GatewayConfig::default())
        .keys(keys)
        .metrics(metrics.clone())
        .alert_webhook(hook.clone())
        .model(spec)
        .build()
        .unwrap();
    for k in 0..5 {
        let input = Tensor::from_rows(&SHAPE, [sample(k).as_slice()]).unwrap();
        chain
            .handle(InferRequest {
                credential: Some(key.clone()),
                model: "lin".into(),
                version: None,
                payload: Payload::Tensor { input, id: None },
                peer: None,
            })
            .unwrap();
    }
    assert!(hook.flush(Duration::from_secs(10)));
    chain.flush_audit();
    let stored = chain.shared().audit.with_store(|s| s.alerts().unwrap());
    assert_eq!(stored.len(), 1, "one alarm, recorded once");
    let got = r.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let (h, body) = &got[0];
    let d: Delivery = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(d.alert, stored[0]);
    assert_eq!(d.kind, "mamori.alert");
    assert_eq!(d.alert.client, "mallory");
    assert_eq!(d.alert.detector, "count");
    assert_eq!(d.alert.queries, 3);
    assert!(
        d.text.contains("mallory") && d.text.contains("count"),
        "{}",
        d.text
    );
    assert_eq!(header(h, "x-mamori-delivery"), d.id);
    assert_eq!(header(h, "content-type"), "application/json");
    let raw = header(h, "raw-body");
    assert_eq!(
        header(h, "x-mamori-signature"),
        signature("hook-secret", raw.as_bytes())
    );
    assert_ne!(
        header(h, "x-mamori-signature"),
        signature("another", raw.as_bytes())
    );
    let m = metrics.encode();
    assert!(m.contains("mamori_alert_webhook_delivered_total 1"), "{m}");
    assert!(m.contains("mamori_alert_webhook_pending 0"), "{m}");
    chain.shutdown();
}

#[test]
fn server_errors_are_retried_in_order_and_refusals_go_to_the_dead_letters() {
    let r = receiver(0);
    let home = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let hook = AlertWebhook::start(
        settings(r.port, None),
        Some(home.path()),
        metrics.webhook_health(),
    )
    .unwrap();
    r.status.store(503, Ordering::SeqCst);
    hook.send(&alert(1));
    hook.send(&alert(2));
    // Not deliverable yet: both wait in the outbox.
    assert!(!hook.flush(Duration::from_millis(1500)));
    let outbox = home.path().join("alert-outbox.jsonl");
    assert_eq!(std::fs::read_to_string(&outbox).unwrap().lines().count(), 2);
    r.status.store(200, Ordering::SeqCst);
    assert!(hook.flush(Duration::from_secs(20)));
    let clients: Vec<String> = r
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b["alert"]["client"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(clients, ["client-1", "client-2"]);
    assert!(!outbox.exists());
    assert!(metrics.webhook_health().failures.get() >= 1);
    assert_eq!(metrics.webhook_health().delivered.get(), 2);
    // A refusal that retrying cannot change: dead letter, and the next alert goes through.
    r.status.store(400, Ordering::SeqCst);
    hook.send(&alert(3));
    assert!(hook.flush(Duration::from_secs(10)));
    r.status.store(200, Ordering::SeqCst);
    hook.send(&alert(4));
    assert!(hook.flush(Duration::from_secs(10)));
    let dead = std::fs::read_to_string(home.path().join("alert-outbox.dead.jsonl")).unwrap();
    let dead: serde_json::Value = serde_json::from_str(dead.trim()).unwrap();
    assert_eq!(dead["delivery"]["alert"]["client"], "client-3");
    assert_eq!(dead["error"], "HTTP 400");
    assert_eq!(metrics.webhook_health().dead.get(), 1);
    assert_eq!(r.got.lock().unwrap().len(), 3);
    hook.shutdown();
}

#[test]
fn alerts_the_endpoint_missed_are_delivered_by_the_next_start() {
    // A port with nothing listening yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let home = tempfile::tempdir().unwrap();
    let hook =
        AlertWebhook::start(settings(port, None), Some(home.path()), Default::default()).unwrap();
    for i in 0..3 {
        hook.send(&alert(i));
    }
    assert!(!hook.flush(Duration::from_millis(500)));
    hook.shutdown();
    let outbox = home.path().join("alert-outbox.jsonl");
    let kept: Vec<Delivery> = std::fs::read_to_string(&outbox)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(kept.len(), 3);
    // A torn last line (crash while appending) is skipped, not fatal.
    let mut text = std::fs::read_to_string(&outbox).unwrap();
    text.push_str("{\"id\": \"torn");
    std::fs::write(&outbox, text).unwrap();
    // The endpoint is up when the gateway starts again.
    let r = receiver(port);
    let health = mamori_gateway::alert_webhook::WebhookHealth::default();
    let hook =
        AlertWebhook::start(settings(port, None), Some(home.path()), health.clone()).unwrap();
    assert!(hook.flush(Duration::from_secs(10)));
    let ids: Vec<String> = r
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        kept.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        "same deliveries, same order, same ids"
    );
    assert!(!outbox.exists());
    assert_eq!(health.delivered.get(), 3);
}

#[test]
fn bad_webhook_settings_are_configuration_errors_and_the_secret_stays_hidden() {
    for (url, msg) in [
        ("ftp://hooks.example/x", "http:// or https://"),
        ("not a url", "alerts.webhook_url"),
        ("http://", "alerts.webhook_url"),
    ] {
        let e = AlertWebhook::start(
            WebhookSettings {
                url: url.into(),
                secret: None,
                timeout: Duration::from_secs(1),
            },
            None,
            Default::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains(msg), "{url}: {e}");
        let cfg =
            GatewayConfig::from_toml(&format!("[alerts]\nwebhook_url = \"{url}\"\n")).unwrap();
        assert!(cfg.check().is_err(), "{url}");
    }
    let cfg = GatewayConfig::from_toml("[alerts]\nwebhook_timeout_ms = 0\n").unwrap();
    assert!(cfg
        .check()
        .unwrap_err()
        .to_string()
        .contains("webhook_timeout_ms"));
    let mut cfg = GatewayConfig::default();
    cfg.apply_env(|k| match k {
        "MAMORI_ALERT_WEBHOOK_URL" => Some("https://hooks.example/T0/B0".into()),
        "MAMORI_ALERT_WEBHOOK_SECRET" => Some("top-secret-value".into()),
        _ => None,
    })
    .unwrap();
    cfg.check().unwrap();
    let shown = format!("{cfg:?} {:?}", cfg.alerts.webhook().unwrap());
    assert!(!shown.contains("top-secret-value"), "{shown}");
    assert!(shown.contains("https://hooks.example/T0/B0"), "{shown}");
}
