//! HTTPS for the gateway itself (rustls): `server.tls_cert` and `server.tls_key` (PEM files)
//! turn it on; `server.tls_client_ca` also requires every client to present a certificate that
//! CA signed (mutual TLS, for service-to-service deployments — the API key is still needed).
//!
//! TLS handshakes run concurrently, each in its own task with a deadline
//! ([`HANDSHAKE_TIMEOUT`]): a client that opens a connection and says nothing, or one that
//! fails its handshake, holds up no one else. Completed connections reach the HTTP server
//! through [`TlsListener`], an [`axum::serve::Listener`], so graceful shutdown and the peer
//! address work as over plain TCP.

use crate::config::ServerConfig;
use crate::error::GatewayError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the HTTP server.
const QUEUE: usize = 256;

/// The rustls server configuration `cfg` asks for (`None`: plain HTTP); errors name the
/// setting and the file.
pub fn server_config(
    cfg: &ServerConfig,
) -> Result<Option<Arc<rustls::ServerConfig>>, GatewayError> {
    let (cert, key) = match (cfg.tls_cert.as_deref(), cfg.tls_key.as_deref()) {
        (None, None) => {
            if cfg.tls_client_ca.is_some() {
                return Err(GatewayError::Config(
                    "server.tls_client_ca needs server.tls_cert and server.tls_key".into(),
                ));
            }
            return Ok(None);
        }
        (Some(c), Some(k)) => (c, k),
        _ => {
            return Err(GatewayError::Config(
                "server.tls_cert and server.tls_key go together".into(),
            ))
        }
    };
    let certs = read_certs("server.tls_cert", cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        GatewayError::Config(format!(
            "server.tls_key {}: no PEM private key ({e})",
            key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::Config(format!("TLS: {e}")))?;
    let builder = match cfg.tls_client_ca.as_deref() {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs("server.tls_client_ca", ca)? {
                roots.add(c).map_err(|e| {
                    GatewayError::Config(format!("server.tls_client_ca {}: {e}", ca.display()))
                })?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| {
                        GatewayError::Config(format!("server.tls_client_ca {}: {e}", ca.display()))
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key_der).map_err(|e| {
        GatewayError::Config(format!(
            "server.tls_cert {} and server.tls_key {}: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// The PEM certificates in `path` (at least one), or the configuration error naming `setting`
/// and the file (the gateway's own TLS, and its TLS to the audit database).
pub(crate) fn read_certs(
    setting: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, GatewayError> {
    let bad = |m: String| GatewayError::Config(format!("{setting} {}: {m}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// TCP connections that completed their TLS handshake, for [`axum::serve`].
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Accepts on `tcp` and performs each handshake with `config` in its own task.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(QUEUE);
        let acceptor = TlsAcceptor::from(config);
        let acceptor = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: pause, as axum does.
                        tracing::warn!("accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            local,
            ready,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task never ends on its own; only a dropped listener stops it.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
