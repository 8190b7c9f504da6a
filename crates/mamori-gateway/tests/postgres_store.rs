//! The PostgreSQL audit store against a real PostgreSQL server (`TempPostgres`: the
//! `pgserver` wheel in CI): it returns exactly what the SQLite store returns, a gateway on it
//! keeps every acknowledged event through a database outage (spill file, replayed once) and
//! across its own restart (sealed once each in one unbroken tamper-evident chain), sealed chains
//! of two replicas verify after the `JSONB` round trip and show tampering made in SQL, and a
//! wrong address is a clear error without the password.
//! Skipped with a message where no PostgreSQL is installed, except in CI.

mod common;

use common::{infer_sample, test_pki, test_pki_with_client, LinearModel};
use mamori_core::testing::TempPostgres;
use mamori_gateway::audit::{
    AlertEvent, AuditRecord, AuditStore, BlockEvent, LedgerEvent, RequestEvent,
};
use mamori_gateway::{
    ChainBuilder, GatewayConfig, GatewayError, KeyStore, ModelSpec, PostgresStore, SqliteStore,
};
use std::sync::Arc;

fn request(t: u64, client: &str, with_input: bool) -> RequestEvent {
    let mut scores = serde_json::Map::new();
    scores.insert("prada".into(), serde_json::json!(0.125 + t as f64));
    scores.insert("knn".into(), serde_json::json!(3.885134963988631));
    RequestEvent {
        time_ms: 1_700_000_000_000 + t,
        request_id: t.is_multiple_of(2).then(|| format!("req-{t}")),
        client: client.into(),
        key_id: format!("k-{client}"),
        model: "lin".into(),
        batch: 2,
        input_sha256: Some(format!("{t:064x}")),
        input: with_input.then(|| vec![0.0, 0.25, 1.0, 1e-7]),
        output: Some(serde_json::json!({"label": [1, 2], "probabilities": [[0.1, 0.7, 0.2]]})),
        scores,
        decision: if t.is_multiple_of(3) { "alert" } else { "pass" }.into(),
        status: if t == 5 { 429 } else { 200 },
        error: (t == 5).then(|| "rate limit".to_string()),
        latency_us: 1234 + t,
        peer: (t % 3 == 1).then(|| format!("203.0.113.{t}")),
    }
}

fn records() -> Vec<AuditRecord> {
    let mut v = Vec::new();
    for t in 0..8u64 {
        let client = if t.is_multiple_of(2) {
            "alice"
        } else {
            "mallory"
        };
        v.push(AuditRecord::Request(request(t, client, t % 4 == 1)));
    }
    v.push(AuditRecord::Alert(AlertEvent {
        time_ms: 1_700_000_000_100,
        model: "lin".into(),
        client: "mallory".into(),
        detector: "prada".into(),
        score: 0.91,
        queries: 201,
        action: "throttle".into(),
    }));
    v.push(AuditRecord::Block(BlockEvent {
        time_ms: 1_700_000_000_200,
        model: "lin".into(),
        client: "mallory".into(),
        kind: "block".into(),
        by: "policy".into(),
        reason: "risk 0.97".into(),
    }));
    for (m, t) in [("lin", 1u64), ("other", 2), ("lin", 3)] {
        v.push(AuditRecord::Ledger(LedgerEvent {
            time_ms: 1_700_000_000_300 + t,
            model: m.into(),
            client: "alice".into(),
            watermark: "dawn".into(),
            input_sha256: format!("{t:064x}"),
            true_label: 1,
            given_label: 7,
        }));
    }
    v
}

/// The row number of `s`'s first block event.
fn first_block(s: &dyn AuditStore) -> i64 {
    s.numbered_blocks(i64::MIN).unwrap()[0].0
}

/// Every query a reader can make, from one store.
fn read_all(s: &dyn AuditStore) -> serde_json::Value {
    serde_json::json!({
        "all": s.requests(None, 0).unwrap(),
        "mallory": s.requests(Some("mallory"), 0).unwrap(),
        "since": s.requests(None, 1_700_000_000_004).unwrap(),
        "nobody": s.requests(Some("nobody"), 0).unwrap(),
        "alerts": s.alerts().unwrap(),
        "blocks": s.blocks().unwrap(),
        "numbered_blocks": s.numbered_blocks(i64::MIN).unwrap(),
        "numbered_blocks_after_first": s.numbered_blocks(first_block(s)).unwrap(),
        "ledger": s.ledger(None).unwrap(),
        "ledger_lin": s.ledger(Some("lin")).unwrap(),
    })
}

#[test]
fn postgres_returns_exactly_what_sqlite_returns() {
    let Some(pg) = TempPostgres::start_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut lite = SqliteStore::open(&dir.path().join("audit.db")).unwrap();
    let mut post = PostgresStore::connect(&pg.url()).unwrap();
    let mut recs = records();
    // A second block event, so reading after the first returns one.
    recs.push(AuditRecord::Block(BlockEvent {
        time_ms: 1_700_000_000_250,
        model: "lin".into(),
        client: "mallory".into(),
        kind: "unblock".into(),
        by: "admin".into(),
        reason: "appeal".into(),
    }));
    // Two batches, as the writer would send them.
    for chunk in recs.chunks(5) {
        lite.write_batch(chunk).unwrap();
        post.write_batch(chunk).unwrap();
    }
    let expected = read_all(&lite);
    assert_eq!(expected["all"].as_array().unwrap().len(), 8);
    assert_eq!(expected["mallory"].as_array().unwrap().len(), 4);
    assert_eq!(expected["since"].as_array().unwrap().len(), 4);
    assert_eq!(expected["ledger_lin"].as_array().unwrap().len(), 2);
    assert_eq!(expected["numbered_blocks"].as_array().unwrap().len(), 2);
    assert_eq!(
        expected["numbered_blocks_after_first"][0][1]["kind"], "unblock",
        "{expected}"
    );
    assert_eq!(
        expected["numbered_blocks_after_first"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(read_all(&post), expected);
    // A second connection (another replica) sees the same, and the tables already exist.
    let other = PostgresStore::connect(&pg.url()).unwrap();
    assert_eq!(read_all(&other), expected);
    // The typed events come back equal, not just their JSON.
    let all = post.requests(None, 0).unwrap();
    let want: Vec<RequestEvent> = recs
        .iter()
        .filter_map(|r| match r {
            AuditRecord::Request(q) => Some(q.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(all, want);
}

/// Two gateway replicas on one PostgreSQL database: an administrator's block on one is applied
/// by the other at its next `sync_blocks`, and so is the unblock.
#[test]
fn replicas_on_postgres_apply_each_others_blocks() {
    let Some(pg) = TempPostgres::start_or_skip() else {
        return;
    };
    let keys = Arc::new(KeyStore::in_memory());
    let (_, bob) = keys.create("bob", None, "full", &[]).unwrap();
    let build = || {
        Arc::new(
            ChainBuilder::new(GatewayConfig::default())
                .keys(keys.clone())
                .audit_store(Box::new(PostgresStore::connect(&pg.url()).unwrap()))
                .model(ModelSpec::new(Arc::new(LinearModel::new("lin")), "test"))
                .build()
                .unwrap(),
        )
    };
    let (a, b) = (build(), build());
    infer(&b, &bob, 1);
    a.admin_block("bob", None, "abuse report").unwrap();
    assert!(infer_sample(&a, &bob, 2).is_err());
    assert!(infer_sample(&b, &bob, 3).is_ok(), "B has not synced yet");
    // A's audit writer commits within its linger time; the test does not wait for it.
    a.flush_audit();
    assert_eq!(b.sync_blocks().unwrap(), 1);
    let e = infer_sample(&b, &bob, 4).unwrap_err();
    assert_eq!(e.status(), 403, "{e}");
    a.admin_unblock("bob", None).unwrap();
    a.flush_audit();
    assert_eq!(b.sync_blocks().unwrap(), 1);
    infer(&b, &bob, 5);
    assert_eq!(b.sync_blocks().unwrap(), 0);
}

#[test]
fn a_wrong_database_address_is_a_clear_error_without_the_password() {
    // Port 1 on localhost: nothing listens there.
    let e =
        PostgresStore::connect("postgresql://mamori:hunter2@127.0.0.1:1/audit?connect_timeout=5")
            .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, GatewayError::Storage(_)), "{msg}");
    assert!(
        msg.contains("audit database") && msg.contains("connecting"),
        "{msg}"
    );
    assert!(msg.contains("mamori:***@127.0.0.1:1"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(msg.contains("refused"), "the cause is named: {msg}");
    let e = PostgresStore::connect("not a connection string ===").unwrap_err();
    assert!(e.to_string().contains("audit database"), "{e}");
}

fn infer(chain: &mamori_gateway::Chain, key: &str, k: usize) {
    infer_sample(chain, key, k).unwrap();
}

fn build_chain(
    url: &str,
    keys: Arc<KeyStore>,
    spill: std::path::PathBuf,
) -> Arc<mamori_gateway::Chain> {
    Arc::new(
        ChainBuilder::new(GatewayConfig::default())
            .keys(keys)
            .audit_store(Box::new(PostgresStore::connect(url).unwrap()))
            .audit_chain(spill.with_file_name("audit-chain"))
            .audit_spill(spill)
            .model(ModelSpec::new(Arc::new(LinearModel::new("lin")), "test"))
            .build()
            .unwrap(),
    )
}

#[test]
fn a_gateway_on_postgres_loses_nothing_through_an_outage_and_a_restart() {
    let Some(mut pg) = TempPostgres::start_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("audit-spill.jsonl");
    let keys = Arc::new(KeyStore::in_memory());
    let (_, key) = keys.create("alice", None, "full", &[]).unwrap();
    let chain = build_chain(&pg.url(), keys.clone(), spill.clone());

    for k in 0..5 {
        infer(&chain, &key, k);
    }
    chain.flush_audit();
    let reader = PostgresStore::connect(&pg.url()).unwrap();
    assert_eq!(reader.requests(None, 0).unwrap().len(), 5);

    // The database goes away: requests are still answered, their events go to the spill file.
    pg.stop();
    for k in 5..12 {
        infer(&chain, &key, k);
    }
    chain.flush_audit();
    let spilled = std::fs::read_to_string(&spill).unwrap();
    assert_eq!(spilled.lines().count(), 7, "{spilled}");

    // It comes back: the next successful write replays the spill, oldest first, once.
    pg.resume().unwrap();
    infer(&chain, &key, 12);
    chain.flush_audit();
    assert!(!spill.exists(), "the spill file was not replayed");
    let reader = PostgresStore::connect(&pg.url()).unwrap();
    let ids: Vec<String> = reader
        .requests(None, 0)
        .unwrap()
        .into_iter()
        .map(|e| e.request_id.unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_by_key(|s| s[1..].parse::<u32>().unwrap());
    let want: Vec<String> = (0..13).map(|k| format!("q{k}")).collect();
    assert_eq!(sorted, want, "every request exactly once");

    // Down again at shutdown: the last events are spilled, and the next gateway process
    // replays them when it starts.
    pg.stop();
    infer(&chain, &key, 13);
    chain.shutdown();
    drop(chain);
    assert_eq!(std::fs::read_to_string(&spill).unwrap().lines().count(), 1);
    pg.resume().unwrap();
    let chain = build_chain(&pg.url(), keys, spill.clone());
    chain.flush_audit();
    assert!(!spill.exists());
    let n = PostgresStore::connect(&pg.url())
        .unwrap()
        .requests(Some("alice"), 0)
        .unwrap()
        .len();
    assert_eq!(n, 14);
    chain.shutdown();
    // Sealed once each, in one unbroken chain, through both outages and the restart.
    use mamori_gateway::audit_chain::{sealed_through, verify, VerifyKey};
    let chain_dir = dir.path().join("audit-chain");
    let keys = VerifyKey::load_dir(&chain_dir).unwrap();
    assert_eq!(keys.len(), 1);
    let reader = PostgresStore::connect(&pg.url()).unwrap();
    let rep = verify(&reader, &keys, &sealed_through(&chain_dir)).unwrap();
    assert!(rep.intact, "{rep:?}");
    assert_eq!(rep.writers[0].verified, 14);
    assert_eq!(rep.writers[0].duplicates, 0);
    assert_eq!(rep.unsealed, 0);
}

/// A TLS front for the plaintext test server, as a TLS-terminating sidecar would be: it
/// answers PostgreSQL's `SSLRequest` with `S`, performs the TLS handshake with `cert_pem` /
/// `key_pem` (rustls server), and relays the decrypted stream; a client that does not ask for
/// TLS is relayed as it is. (The `pgserver` build has no SSL of its own.)
struct TlsFront {
    port: u16,
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

fn tls_front(upstream: u16, cert_pem: &str, key_pem: &str) -> TlsFront {
    tls_front_with(upstream, cert_pem, key_pem, None)
}

/// Like [`tls_front`]; with `client_ca_pem`, it also demands a client certificate signed by
/// that CA (as `hostssl … cert` would), refusing the handshake otherwise.
fn tls_front_with(
    upstream: u16,
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
) -> TlsFront {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = handshakes.clone();
    rt.spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                client.read_exact(&mut first).await?;
                let mut server = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await?;
                // SSLRequest: length 8, code 80877103.
                if first == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f] {
                    client.write_all(b"S").await?;
                    let mut tls = acceptor.accept(client).await?;
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::io::copy_bidirectional(&mut tls, &mut server).await?;
                } else {
                    server.write_all(&first).await?;
                    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
                }
                Ok::<(), std::io::Error>(())
            });
        }
    });
    TlsFront {
        port,
        handshakes,
        _rt: rt,
    }
}

#[test]
fn tls_to_the_database_is_verified_against_the_configured_ca() {
    let Some(pg) = TempPostgres::start_or_skip() else {
        return;
    };
    let (ca, cert, key) = test_pki();
    let front = tls_front(pg.port(), &cert, &key);
    let handshakes = || front.handshakes.load(std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let url = |mode: &str| {
        format!(
            "postgresql://mamori@127.0.0.1:{}/postgres?connect_timeout=10&sslmode={mode}",
            front.port
        )
    };

    // Our CA: an encrypted connection that works.
    let mut s = PostgresStore::connect_with_ca(&url("require"), Some(&ca_file)).unwrap();
    assert_eq!(handshakes(), 1);
    s.write_batch(&records()).unwrap();
    assert_eq!(s.requests(None, 0).unwrap().len(), 8);
    // The default `prefer` takes TLS too when the server offers it.
    PostgresStore::connect_with_ca(&url("prefer"), Some(&ca_file)).unwrap();
    assert_eq!(handshakes(), 2);
    // `disable`: plaintext, no handshake.
    let plain = PostgresStore::connect(&url("disable")).unwrap();
    assert_eq!(plain.requests(None, 0).unwrap().len(), 8);
    assert_eq!(handshakes(), 2);

    // The web PKI does not know our CA: the certificate is refused, nothing is sent.
    let e = PostgresStore::connect(&url("require"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("connecting") && e.to_lowercase().contains("certificate"),
        "{e}"
    );
    // Another CA: refused as well.
    let (other_ca, _, _) = test_pki();
    let other = dir.path().join("other.pem");
    std::fs::write(&other, other_ca).unwrap();
    let e = PostgresStore::connect_with_ca(&url("require"), Some(&other))
        .unwrap_err()
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    assert_eq!(handshakes(), 2);
    // A CA file that is not PEM, or missing: configuration errors naming the file.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    for f in [junk, dir.path().join("missing.pem")] {
        let e = PostgresStore::connect_with_ca(&url("require"), Some(&f)).unwrap_err();
        assert!(matches!(e, GatewayError::Config(_)), "{e}");
        assert!(e.to_string().contains(&f.display().to_string()), "{e}");
    }
}

/// Two replicas seal their records into one PostgreSQL database: both chains verify after the
/// `JSONB` round trip (negative zeros, tiny and inexact floats included), and an `UPDATE` or
/// `DELETE` made directly in the database is reported.
#[test]
fn sealed_chains_of_two_replicas_verify_on_postgres_and_show_tampering() {
    use mamori_gateway::audit_chain::{verify, ChainWriter, VerifyKey};
    let Some(pg) = TempPostgres::start_or_skip() else {
        return;
    };
    let mut recs = records();
    if let AuditRecord::Request(q) = &mut recs[1] {
        q.input = Some(vec![-0.0, 1e-7, 0.1, 3.4e38, -1.5e-30]);
        q.output = Some(
            serde_json::json!({"probabilities": [[0.1f32 as f64, -0.0, 1e-300]],
                                           "big": 1e19}),
        );
        q.latency_us = u64::MAX;
    }
    let mut store = PostgresStore::connect(&pg.url()).unwrap();
    let mut keys = Vec::new();
    let mut chains: Vec<ChainWriter> = ["replica-a", "replica-b"]
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let k0 = [i as u8 + 1; 32];
            keys.push(VerifyKey {
                writer: w.to_string(),
                key0: hex::encode(k0),
            });
            ChainWriter::in_memory(w, k0)
        })
        .collect();
    // Interleaved batches, as two replicas would commit them.
    for (i, chunk) in recs.chunks(3).enumerate() {
        let c = &mut chains[i % 2];
        let sealed = c.seal(chunk);
        store.write_sealed(chunk, Some(&sealed.seals)).unwrap();
        c.commit(sealed);
    }
    let expected: Vec<(String, u64)> = chains
        .iter()
        .map(|c| (c.writer().to_string(), c.next_seq()))
        .collect();
    let rep = verify(&store, &keys, &expected).unwrap();
    assert!(rep.intact, "{rep:?}");
    assert_eq!(
        rep.writers.iter().map(|w| w.verified).sum::<u64>(),
        recs.len() as u64
    );
    assert_eq!(rep.unsealed, 0);
    // Tampering through SQL, as a database administrator could.
    let mut sql = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    sql.execute(
        "UPDATE mamori_requests SET decision = 'alert'
         WHERE writer = 'replica-a' AND seq = 1",
        &[],
    )
    .unwrap();
    sql.execute(
        "UPDATE mamori_ledger SET given_label = 1 WHERE writer = 'replica-b' AND seq = 4",
        &[],
    )
    .unwrap();
    sql.execute("DELETE FROM mamori_blocks WHERE writer IS NOT NULL", &[])
        .unwrap();
    let rep = verify(&store, &keys, &expected).unwrap();
    assert!(!rep.intact);
    let a = rep
        .writers
        .iter()
        .find(|w| w.writer == "replica-a")
        .unwrap();
    let b = rep
        .writers
        .iter()
        .find(|w| w.writer == "replica-b")
        .unwrap();
    assert_eq!(a.altered.iter().map(|x| x.seq).collect::<Vec<_>>(), vec![1]);
    // recs[9] is the block: first of the fourth batch (recs[9..12] → replica-b, numbers 3..5).
    assert_eq!(b.missing, vec![[3, 3]], "{b:?}");
    assert_eq!(b.altered.iter().map(|x| x.seq).collect::<Vec<_>>(), vec![4]);
}

/// TLS client authentication: a database front that demands a client certificate from our CA
/// lets in the gateway configured with its certificate and key, and refuses it without them or
/// with a certificate from another CA; bad or half-given files are configuration errors naming
/// the file.
#[test]
fn the_gateway_authenticates_itself_to_the_database_by_certificate() {
    use mamori_gateway::audit_postgres::PostgresTls;
    let Some(pg) = TempPostgres::start_or_skip() else {
        return;
    };
    let (ca, cert, key, client_cert, client_key) = test_pki_with_client();
    let front = tls_front_with(pg.port(), &cert, &key, Some(&ca));
    let handshakes = || front.handshakes.load(std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_file = file("ca.pem", &ca);
    let url = format!(
        "postgresql://mamori@127.0.0.1:{}/postgres?connect_timeout=10&sslmode=require",
        front.port
    );
    let tls = PostgresTls {
        ca_file: Some(ca_file.clone()),
        client_cert: Some(file("client.pem", &client_cert)),
        client_key: Some(file("client.key", &client_key)),
    };
    let mut s = PostgresStore::connect_with_tls(&url, &tls).unwrap();
    assert_eq!(handshakes(), 1);
    s.write_batch(&records()).unwrap();
    assert_eq!(s.requests(None, 0).unwrap().len(), 8);
    // No client certificate: the front ends the handshake.
    assert!(PostgresStore::connect_with_ca(&url, Some(&ca_file)).is_err());
    // A client certificate from another CA: refused too.
    let (_, _, _, other_cert, other_key) = test_pki_with_client();
    let other = PostgresTls {
        ca_file: Some(ca_file.clone()),
        client_cert: Some(file("other.pem", &other_cert)),
        client_key: Some(file("other.key", &other_key)),
    };
    assert!(PostgresStore::connect_with_tls(&url, &other).is_err());
    assert_eq!(handshakes(), 1);
    // Files that are not what they should be: configuration errors naming the file.
    let junk = file("junk.pem", "not PEM");
    for (cert, key, named) in [
        (junk.clone(), tls.client_key.clone().unwrap(), junk.clone()),
        (tls.client_cert.clone().unwrap(), junk.clone(), junk.clone()),
        (
            dir.path().join("missing.pem"),
            tls.client_key.clone().unwrap(),
            dir.path().join("missing.pem"),
        ),
    ] {
        let bad = PostgresTls {
            ca_file: Some(ca_file.clone()),
            client_cert: Some(cert),
            client_key: Some(key),
        };
        let e = PostgresStore::connect_with_tls(&url, &bad).unwrap_err();
        assert!(matches!(e, GatewayError::Config(_)), "{e}");
        assert!(e.to_string().contains(&named.display().to_string()), "{e}");
    }
    // The key of another certificate.
    let mismatched = PostgresTls {
        ca_file: Some(ca_file.clone()),
        client_cert: tls.client_cert.clone(),
        client_key: other.client_key.clone(),
    };
    let e = PostgresStore::connect_with_tls(&url, &mismatched);
    assert!(e.is_err());
    // Half given.
    let half = PostgresTls {
        ca_file: Some(ca_file),
        client_cert: tls.client_cert.clone(),
        client_key: None,
    };
    let e = PostgresStore::connect_with_tls(&url, &half)
        .unwrap_err()
        .to_string();
    assert!(e.contains("go together"), "{e}");
    let cfg = GatewayConfig::from_toml(
        "[audit]\nstore = \"postgres\"\npostgres_url = \"postgresql://m@db/a\"\npostgres_client_cert = \"/x.pem\"\n",
    )
    .unwrap();
    assert!(cfg.check().unwrap_err().to_string().contains("go together"));
}

/// Detector states shared by replicas (`detect.shared_state`): PostgreSQL keeps them as SQLite
/// does — the longer history wins, a shorter one never replaces it, models and subjects are
/// kept apart, and a second connection (another replica) reads what the first saved.
#[test]
fn postgres_keeps_detector_states_as_sqlite_does() {
    use mamori_gateway::audit::SharedState;
    let Some(pg) = TempPostgres::start_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lite = SqliteStore::open(&dir.path().join("audit.db")).unwrap();
    let post = PostgresStore::connect(&pg.url()).unwrap();
    let other = PostgresStore::connect(&pg.url()).unwrap();
    let st = |subject: &str, queries: u64, snapshot: &[u8]| SharedState {
        subject: subject.into(),
        queries,
        snapshot: snapshot.to_vec(),
    };
    for (store, reader) in [
        (&lite as &dyn AuditStore, &lite as &dyn AuditStore),
        (&post, &other),
    ] {
        assert!(store.shares_states());
        assert!(reader.get_state("lin", "mallory").unwrap().is_none());
        store
            .put_states(
                "lin",
                "a",
                1,
                &[st("mallory", 3, b"three"), st("bob", 1, b"one")],
            )
            .unwrap();
        store
            .put_states("lin", "b", 2, &[st("mallory", 5, b"five")])
            .unwrap();
        // A stale replica's shorter history does not replace the longer one.
        store
            .put_states("lin", "a", 3, &[st("mallory", 4, b"four")])
            .unwrap();
        store
            .put_states("other", "a", 3, &[st("mallory", 1, &[0, 255, 7])])
            .unwrap();
        assert_eq!(
            reader.get_state("lin", "mallory").unwrap(),
            Some(st("mallory", 5, b"five"))
        );
        assert_eq!(
            reader.get_state("lin", "bob").unwrap(),
            Some(st("bob", 1, b"one"))
        );
        assert_eq!(
            reader.get_state("other", "mallory").unwrap(),
            Some(st("mallory", 1, &[0, 255, 7]))
        );
    }
    // The in-memory store keeps none.
    let mem = mamori_gateway::MemoryStore::default();
    assert!(!mem.shares_states());
    assert!(mem.put_states("lin", "a", 1, &[st("x", 1, b"")]).is_err());
}
