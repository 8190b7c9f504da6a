//! The gateway over HTTPS (`server.tls_cert` / `server.tls_key`), and with mutual TLS
//! (`server.tls_client_ca`): answers to a client that trusts its CA, nothing in clear text,
//! nothing to a client that does not trust it, a silent connection holds up no one, the peer
//! address still reaches the audit log, and bad settings are configuration errors naming the
//! file.

mod common;

use common::*;
use mamori_gateway::{GatewayConfig, GatewayError};
use std::path::{Path, PathBuf};

/// Writes the test PKI into `dir`: (CA, server cert, server key, client identity PEM).
fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf, String) {
    let (ca, cert, key, client_cert, client_key) = test_pki_with_client();
    let paths = ["ca.pem", "cert.pem", "key.pem"].map(|f| dir.join(f));
    for (p, text) in paths.iter().zip([&ca, &cert, &key]) {
        std::fs::write(p, text).unwrap();
    }
    let [ca, cert, key] = paths;
    (ca, cert, key, format!("{client_cert}{client_key}"))
}

fn tls_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> GatewayConfig {
    let mut cfg = GatewayConfig::default();
    cfg.server.tls_cert = Some(cert.to_path_buf());
    cfg.server.tls_key = Some(key.to_path_buf());
    cfg.server.tls_client_ca = client_ca.map(Path::to_path_buf);
    cfg
}

fn client(ca: &Path, identity: Option<&str>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .timeout(std::time::Duration::from_secs(5));
    if let Some(id) = identity {
        b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

async fn infer(c: &reqwest::Client, url: &str, key: &str) -> reqwest::Result<u16> {
    Ok(c.post(format!("{url}/v2/models/lin/infer"))
        .bearer_auth(key)
        .json(&fp32_body(&[sample(0)]))
        .send()
        .await?
        .status()
        .as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_speaks_https_and_nothing_in_clear_text() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key, _) = pki(dir.path());
    let mut env = start(tls_config(&cert, &key, None), vec![lin_spec()]).await;
    let (_, api_key) = env.keys.create("alice", None, "full", &[]).unwrap();
    let https = env.server.as_ref().unwrap().url();
    assert!(https.starts_with("https://"), "{https}");
    let trusted = client(&ca, None);
    // A connection that never starts its handshake does not hold up the next client.
    let addr = env.url.trim_start_matches("http://").to_string();
    let _silent = std::net::TcpStream::connect(&addr).unwrap();
    assert_eq!(infer(&trusted, &https, &api_key).await.unwrap(), 200);
    let live = trusted
        .get(format!("{https}/v2/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status().as_u16(), 200);
    // Clear text to the TLS port gets no answer.
    assert!(infer(&reqwest::Client::new(), &env.url, &api_key)
        .await
        .is_err());
    // A client that does not trust the gateway's CA does not talk to it.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _, _) = pki(other.path());
    assert!(infer(&client(&other_ca, None), &https, &api_key)
        .await
        .is_err());
    // The peer address reaches the audit log as over plain TCP.
    let reqs = env.audited_requests();
    assert_eq!(
        reqs.len(),
        1,
        "only the HTTPS request was answered: {reqs:?}"
    );
    assert_eq!(reqs[0].peer.as_deref(), Some("127.0.0.1"));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key, identity) = pki(dir.path());
    let mut env = start(tls_config(&cert, &key, Some(&ca)), vec![lin_spec()]).await;
    let (_, api_key) = env.keys.create("alice", None, "full", &[]).unwrap();
    let https = env.url.replacen("http://", "https://", 1);
    assert!(infer(&client(&ca, None), &https, &api_key).await.is_err());
    assert_eq!(
        infer(&client(&ca, Some(&identity)), &https, &api_key)
            .await
            .unwrap(),
        200
    );
    // A certificate from another CA is refused.
    let (_, _, _, stranger) = pki(tempfile::tempdir().unwrap().path());
    assert!(infer(&client(&ca, Some(&stranger)), &https, &api_key)
        .await
        .is_err());
    // The certificate does not replace the API key.
    assert_eq!(
        infer(&client(&ca, Some(&identity)), &https, "mk_wrong")
            .await
            .unwrap(),
        401
    );
    env.shutdown().await;
}

#[test]
fn bad_tls_settings_are_configuration_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key, _) = pki(dir.path());
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let missing = dir.path().join("missing.pem");
    let other = tempfile::tempdir().unwrap();
    let (_, other_cert, _, _) = pki(other.path());
    let check = |cfg: GatewayConfig| cfg.check().unwrap_err();
    let mut only_cert = GatewayConfig::default();
    only_cert.server.tls_cert = Some(cert.clone());
    let e = check(only_cert);
    assert!(
        e.to_string()
            .contains("server.tls_cert and server.tls_key go together"),
        "{e}"
    );
    let mut only_ca = GatewayConfig::default();
    only_ca.server.tls_client_ca = Some(ca.clone());
    assert!(check(only_ca)
        .to_string()
        .contains("server.tls_client_ca needs"));
    for (cfg, names) in [
        (tls_config(&junk, &key, None), junk.clone()),
        (tls_config(&missing, &key, None), missing.clone()),
        (tls_config(&cert, &junk, None), junk.clone()),
        (tls_config(&other_cert, &key, None), other_cert.clone()),
        (tls_config(&cert, &key, Some(&junk)), junk.clone()),
    ] {
        let e = check(cfg);
        assert!(matches!(e, GatewayError::Config(_)), "{e}");
        assert!(e.to_string().contains(&names.display().to_string()), "{e}");
    }
}
