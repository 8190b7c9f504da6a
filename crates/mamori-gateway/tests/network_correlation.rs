//! Cross-account correlation by source network (issue #5: "detectors can also run on a group
//! of keys (same client org, same source network)"): keys without a common group, splitting one
//! stream from one network, are caught as that network; the client address comes from the TCP
//! peer, or from `X-Forwarded-For` only when a trusted proxy sent it; it is in the audit log.

mod common;

use common::*;
use mamori_core::{Action, Oracle, OracleError, Tensor};
use mamori_gateway::chain::network_subject;
use mamori_gateway::config::DetectConfig;
use mamori_gateway::server::client_ip;
use mamori_gateway::{ChainBuilder, ChainOracle, GatewayConfig, KeyStore, OnAlarm};
use std::net::IpAddr;
use std::sync::Arc;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn batch(ks: &[usize]) -> Tensor {
    let rows: Vec<Vec<f32>> = ks.iter().map(|k| sample(*k)).collect();
    Tensor::from_rows(&SHAPE, rows.iter().map(|r| r.as_slice())).unwrap()
}

#[test]
fn addresses_group_into_networks_only_when_configured() {
    let mut d = DetectConfig::default();
    assert_eq!(
        network_subject(ip("203.0.113.77"), &d),
        None,
        "off by default"
    );
    d.network_prefix_v4 = 24;
    d.network_prefix_v6 = 48;
    assert_eq!(
        network_subject(ip("203.0.113.77"), &d).as_deref(),
        Some("net:203.0.113.0/24")
    );
    assert_eq!(
        network_subject(ip("2001:db8:abcd:12::1"), &d).as_deref(),
        Some("net:2001:db8:abcd::/48")
    );
    // An IPv4 client on an IPv6 socket.
    assert_eq!(
        network_subject(ip("::ffff:203.0.113.9"), &d).as_deref(),
        Some("net:203.0.113.0/24")
    );
    let cfg = GatewayConfig::from_toml("[detect]\nnetwork_prefix_v4 = 33\n").unwrap();
    assert!(cfg.check().is_err());
}

#[test]
fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
    let xff = |v: &str| {
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    };
    // A direct client cannot choose its address.
    assert_eq!(
        client_ip(Some(ip("198.51.100.4")), &xff("1.2.3.4"), &trusted),
        Some(ip("198.51.100.4"))
    );
    // Through the load balancer: the last untrusted hop (a spoofed first entry is ignored).
    assert_eq!(
        client_ip(
            Some(ip("10.0.0.2")),
            &xff("6.6.6.6, 1.2.3.4, 10.0.0.9"),
            &trusted
        ),
        Some(ip("1.2.3.4"))
    );
    // Every hop inside: the first.
    assert_eq!(
        client_ip(Some(ip("10.0.0.2")), &xff("10.1.2.3, 10.0.0.9"), &trusted),
        Some(ip("10.1.2.3"))
    );
    // No header, a malformed one, or no peer at all.
    assert_eq!(
        client_ip(
            Some(ip("10.0.0.2")),
            &axum::http::HeaderMap::new(),
            &trusted
        ),
        Some(ip("10.0.0.2"))
    );
    assert_eq!(
        client_ip(Some(ip("10.0.0.2")), &xff("1.2.3.4, garbage"), &trusted),
        Some(ip("10.0.0.2"))
    );
    assert_eq!(client_ip(None, &xff("1.2.3.4"), &trusted), None);
    let cfg = GatewayConfig::from_toml("[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n").unwrap();
    let e = cfg.check().unwrap_err().to_string();
    assert!(e.contains("10.0.0.0/33"), "{e}");
    let cfg =
        GatewayConfig::from_toml("[server]\ntrusted_proxies = [\"10.0.0.1\", \"fd00::/8\"]\n")
            .unwrap();
    assert_eq!(cfg.server.trusted_proxy_nets().unwrap().len(), 2);
}

fn chain(prefix: u8) -> (Arc<mamori_gateway::Chain>, Arc<KeyStore>) {
    let mut cfg = GatewayConfig::default();
    cfg.detect.network_prefix_v4 = prefix;
    let mut spec = lin_spec();
    spec.detectors = vec![Arc::new(CountDetector { threshold: 6 })];
    spec.policy = Box::new(OnAlarm(Action::Block));
    let keys = Arc::new(KeyStore::in_memory());
    let chain = ChainBuilder::new(cfg)
        .keys(keys.clone())
        .model(spec)
        .build()
        .unwrap();
    (Arc::new(chain), keys)
}

/// Two keys of no group from one /24 split a stream of 6 queries: 3 + 3.
fn split_stream(
    prefix: u8,
) -> (
    Result<(), OracleError>,
    Vec<String>,
    Result<(), OracleError>,
) {
    let (chain, keys) = chain(prefix);
    let (_, k1) = keys.create("sybil-1", None, "full", &[]).unwrap();
    let (_, k2) = keys.create("sybil-2", None, "full", &[]).unwrap();
    let (_, k3) = keys.create("elsewhere", None, "full", &[]).unwrap();
    let mut a = ChainOracle::new(chain.clone(), &k1, None).unwrap();
    let mut b = ChainOracle::new(chain.clone(), &k2, None).unwrap();
    let mut c = ChainOracle::new(chain.clone(), &k3, None).unwrap();
    a.peer = Some(ip("203.0.113.10"));
    b.peer = Some(ip("203.0.113.200"));
    c.peer = Some(ip("198.51.100.1"));
    a.query(&batch(&[1, 2, 3])).unwrap();
    b.query(&batch(&[1, 2])).unwrap();
    let last = b.query(&batch(&[3])).map(|_| ());
    // A client of another network is not touched.
    let other = c.query(&batch(&[1, 2, 3, 4])).map(|_| ());
    chain.flush_audit();
    let alerts = chain
        .shared()
        .audit
        .with_store(|s| s.alerts().unwrap())
        .into_iter()
        .map(|a| a.client)
        .collect();
    (last, alerts, other)
}

#[test]
fn keys_splitting_one_stream_from_one_network_are_seen_as_that_network() {
    // Without network grouping neither key reaches 6 queries: nothing is seen.
    let (last, alerts, other) = split_stream(0);
    assert!(last.is_ok());
    assert!(alerts.is_empty(), "{alerts:?}");
    assert!(other.is_ok());
    // With /24 grouping the network's stream reaches 6: alarm and block.
    let (last, alerts, other) = split_stream(24);
    assert!(matches!(last, Err(OracleError::Refused(_))), "{last:?}");
    assert_eq!(alerts, vec!["net:203.0.113.0/24".to_string()]);
    assert!(other.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_keeps_the_client_address_and_spoofed_headers_are_ignored() {
    for (trusted, want) in [
        (vec![], "127.0.0.1"),
        (vec!["127.0.0.1".to_string()], "1.2.3.4"),
    ] {
        let mut cfg = GatewayConfig::default();
        cfg.server.trusted_proxies = trusted;
        let mut env = start(cfg, vec![lin_spec()]).await;
        let (_, key) = env.keys.create("alice", None, "full", &[]).unwrap();
        let r = env
            .client
            .post(env.infer_url("lin"))
            .bearer_auth(&key)
            .header("x-forwarded-for", "6.6.6.6, 1.2.3.4")
            .json(&fp32_body(&[sample(1)]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        env.shutdown().await;
        let chain = env.chain.clone();
        let events = tokio::task::spawn_blocking(move || {
            chain.flush_audit();
            chain
                .shared()
                .audit
                .with_store(|s| s.requests(None, 0).unwrap())
        })
        .await
        .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].peer.as_deref(), Some(want));
    }
}
