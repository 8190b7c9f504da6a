//! The HTTP server: Open Inference Protocol v2 REST in front of the [`Chain`], the admin API
//! and `/metrics`.
//!
//! Routes:
//!
//! | verb | path | |
//! |---|---|---|
//! | GET | `/v2/health/live`, `/v2/health/ready` | health |
//! | GET | `/v2` | server metadata |
//! | GET | `/v2/models/{name}[/versions/{v}]` | model metadata |
//! | GET | `/v2/models/{name}[/versions/{v}]/ready` | model ready |
//! | POST | `/v2/models/{name}[/versions/{v}]/infer` | inference (API key) |
//! | GET | `/metrics` | Prometheus |
//! | GET/POST | `/admin/keys`, POST `/admin/keys/{id}/revoke` | keys (admin token) |
//! | GET | `/admin/alerts`, `/admin/blocks` | alerts and blocks (admin token) |
//! | POST | `/admin/block`, `/admin/unblock` | block / unblock override (admin token) |
//!
//! Errors are `{"error": "..."}` with the status of [`GatewayError::status`], in one place
//! ([`error_response`]).

use crate::chain::{Chain, InferRequest, InferResponse, Payload};
use crate::error::GatewayError;
use crate::oip;
use crate::validate::OutputSelection;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Turns an error into the protocol's error response.
pub fn error_response(e: &GatewayError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::error!("{e}");
    } else {
        tracing::debug!("refused: {e}");
    }
    let mut resp = (status, Json(oip::error_body(&e.public_message()))).into_response();
    match e {
        GatewayError::RateLimited { retry_after_s, .. } => {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(*retry_after_s));
        }
        GatewayError::MissingCredential
        | GatewayError::InvalidCredential
        | GatewayError::RevokedKey(_) => {
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    resp
}

struct ApiError(GatewayError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(&self.0)
    }
}

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> Self {
        ApiError(e)
    }
}

type ApiResult = Result<Response, ApiError>;

/// The credential in `Authorization: Bearer <key>` or `x-api-key: <key>`.
pub fn credential(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if let Some(k) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(k.trim().to_string());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// A URL path parameter whose rejection (a name that is not UTF-8 once percent-decoded, say)
/// is a JSON 400 like every other refusal, not axum's plain-text one.
struct UrlPath<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for UrlPath<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(UrlPath(v)),
            Err(e) => Err(error_response(&GatewayError::BadRequest(format!(
                "invalid URL path: {}",
                e.body_text()
            )))),
        }
    }
}

/// Builds the router for a chain.
pub fn router(chain: Arc<Chain>) -> Router {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_meta))
        .route("/v2/models/{name}", get(model_meta))
        .route("/v2/models/{name}/versions/{version}", get(model_meta_v))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_v))
        .route("/metrics", get(metrics))
        .route("/admin/keys", get(admin_keys).post(admin_create_key))
        .route("/admin/keys/{id}/revoke", post(admin_revoke))
        .route("/admin/alerts", get(admin_alerts))
        .route("/admin/blocks", get(admin_blocks))
        .route("/admin/clients", get(admin_clients))
        .route("/admin/block", post(admin_block))
        .route("/admin/unblock", post(admin_unblock))
        .fallback(|| async { error_response(&GatewayError::NotFound("no such endpoint".into())) })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(oip::error_body("method not allowed on this endpoint")),
            )
        })
        .with_state(chain)
}

async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

async fn ready(State(c): State<Arc<Chain>>) -> Response {
    let ready = !c.shared().models.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready}))).into_response()
}

async fn server_meta() -> Json<Value> {
    Json(oip::server_metadata())
}

fn find_model(
    c: &Chain,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<crate::chain::ModelEntry>, GatewayError> {
    let e = c
        .shared()
        .models
        .get(name)
        .ok_or_else(|| GatewayError::NotFound(format!("unknown model {name:?}")))?;
    if let Some(v) = version {
        if v != oip::MODEL_VERSION {
            return Err(GatewayError::NotFound(format!(
                "model {name:?} has no version {v:?} (versions: [\"{}\"])",
                oip::MODEL_VERSION
            )));
        }
    }
    Ok(e.clone())
}

async fn model_meta(State(c): State<Arc<Chain>>, UrlPath(name): UrlPath<String>) -> ApiResult {
    meta(&c, &name, None)
}

async fn model_meta_v(
    State(c): State<Arc<Chain>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
) -> ApiResult {
    meta(&c, &name, Some(&version))
}

fn meta(c: &Chain, name: &str, version: Option<&str>) -> ApiResult {
    let e = find_model(c, name, version)?;
    Ok(Json(oip::model_metadata(e.card(), &e.platform, false)).into_response())
}

async fn model_ready(State(c): State<Arc<Chain>>, UrlPath(name): UrlPath<String>) -> ApiResult {
    let e = find_model(&c, &name, None)?;
    Ok(Json(json!({"name": e.name, "ready": true})).into_response())
}

async fn model_ready_v(
    State(c): State<Arc<Chain>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
) -> ApiResult {
    let e = find_model(&c, &name, Some(&version))?;
    Ok(Json(json!({"name": e.name, "ready": true})).into_response())
}

async fn infer(
    State(c): State<Arc<Chain>>,
    UrlPath(name): UrlPath<String>,
    req: axum::extract::Request,
) -> Response {
    run_infer(c, name, None, req).await
}

async fn infer_v(
    State(c): State<Arc<Chain>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
    req: axum::extract::Request,
) -> Response {
    run_infer(c, name, Some(version), req).await
}

/// The client's address: the TCP peer, or — when the peer is a trusted proxy — the last
/// address of `X-Forwarded-For` that is not itself a trusted proxy (addresses a client put
/// first in the header are not believed); the first one when every hop is trusted (a client
/// inside the proxies' network). A malformed header counts as absent.
pub fn client_ip(
    peer: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    trusted: &[ipnet::IpNet],
) -> Option<std::net::IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut hops: Vec<std::net::IpAddr> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(text) = v.to_str() else {
            return Some(peer);
        };
        for part in text.split(',') {
            match part.trim().parse::<std::net::IpAddr>() {
                Ok(ip) => hops.push(ip),
                // A malformed chain: believe only the proxy itself.
                Err(_) => return Some(peer),
            }
        }
    }
    Some(
        hops.iter()
            .rev()
            .find(|ip| !is_trusted(ip))
            .or(hops.first())
            .copied()
            .unwrap_or(peer),
    )
}

async fn run_infer(
    c: Arc<Chain>,
    model: String,
    version: Option<String>,
    req: axum::extract::Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let peer = client_ip(
        parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip()),
        &headers,
        &c.shared().trusted_proxies,
    );
    let limit = c.shared().config.server.max_body_bytes;
    let binary_header_len = match headers.get("inference-header-content-length") {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()) {
            Some(n) => Some(n),
            None => {
                return error_response(&GatewayError::BadRequest(
                    "Inference-Header-Content-Length must be a non-negative integer".into(),
                ))
            }
        },
    };
    let payload = match axum::body::to_bytes(body, limit).await {
        Ok(b) => Payload::Oip {
            body: b.to_vec(),
            binary_header_len,
        },
        Err(_) => Payload::Oversized {
            got: headers
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(limit + 1),
        },
    };
    let req = InferRequest {
        credential: credential(&headers),
        model,
        version,
        payload,
        peer,
    };
    let chain = c.clone();
    let result = tokio::task::spawn_blocking(move || chain.handle(req)).await;
    match result {
        Ok(Ok(r)) => infer_response(&r),
        Ok(Err(e)) => error_response(&e),
        Err(e) => error_response(&GatewayError::Inference(format!("worker failed: {e}"))),
    }
}

/// The Open Inference Protocol response body of an answer, every output as JSON.
pub fn response_json(r: &InferResponse) -> Value {
    response_value(r, OutputSelection::NONE, &mut Vec::new())
}

/// The encoded response body of an answer and, when some outputs were requested as binary
/// tensor data, the length of its JSON header (the `Inference-Header-Content-Length` value):
/// the body is then the JSON header followed by those outputs' raw little-endian bytes, in
/// output order, each output announcing its `binary_data_size` (Triton's binary tensor data
/// extension).
pub fn response_body(r: &InferResponse) -> (Vec<u8>, Option<usize>) {
    let mut raw = Vec::new();
    let v = response_value(r, r.binary_outputs, &mut raw);
    let mut body = serde_json::to_vec(&v).unwrap_or_default();
    if r.binary_outputs == OutputSelection::NONE {
        return (body, None);
    }
    let header_len = body.len();
    body.extend_from_slice(&raw);
    (body, Some(header_len))
}

fn response_value(r: &InferResponse, binary: OutputSelection, raw: &mut Vec<u8>) -> Value {
    let mut outputs = Vec::new();
    if let Some(p) = &r.probabilities {
        let mut o = json!({
            "name": oip::OUTPUT_PROBABILITIES,
            "shape": p.shape(),
            "datatype": "FP32",
        });
        if binary.probabilities {
            o["parameters"] = json!({"binary_data_size": p.data().len() * 4});
            for v in p.data() {
                raw.extend_from_slice(&v.to_le_bytes());
            }
        } else {
            o["data"] = json!(p.data());
        }
        outputs.push(o);
    }
    if let Some(l) = &r.labels {
        let mut o = json!({
            "name": oip::OUTPUT_LABEL,
            "shape": [l.len()],
            "datatype": "INT64",
        });
        if binary.label {
            o["parameters"] = json!({"binary_data_size": l.len() * 8});
            for v in l {
                raw.extend_from_slice(&(*v as i64).to_le_bytes());
            }
        } else {
            o["data"] = json!(l);
        }
        outputs.push(o);
    }
    let disclosure = match r.disclosure {
        mamori_core::Disclosure::Probabilities => "probabilities".to_string(),
        mamori_core::Disclosure::TopK(k) => format!("top_{k}"),
        mamori_core::Disclosure::Label => "label".to_string(),
    };
    let mut v = json!({
        "model_name": r.model_name,
        "model_version": r.model_version,
        "parameters": {"disclosure": disclosure},
        "outputs": outputs,
    });
    if let Some(id) = &r.id {
        v["id"] = json!(id);
    }
    v
}

/// The HTTP response of an answer ([`response_body`]).
fn infer_response(r: &InferResponse) -> Response {
    let (body, header_len) = response_body(r);
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    match header_len {
        None => {
            h.insert("content-type", HeaderValue::from_static("application/json"));
        }
        Some(n) => {
            h.insert(
                "content-type",
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert("inference-header-content-length", HeaderValue::from(n));
        }
    }
    resp
}

async fn metrics(State(c): State<Arc<Chain>>) -> Response {
    let mut r = c.shared().metrics.encode().into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

fn require_admin(c: &Chain, headers: &HeaderMap) -> Result<(), GatewayError> {
    let token = credential(headers).ok_or(GatewayError::MissingCredential)?;
    if c.shared().keys.is_admin(&token) {
        Ok(())
    } else {
        Err(GatewayError::Forbidden(
            "the admin API needs the admin token".into(),
        ))
    }
}

async fn admin_keys(State(c): State<Arc<Chain>>, headers: HeaderMap) -> ApiResult {
    require_admin(&c, &headers)?;
    Ok(Json(json!(c.shared().keys.list())).into_response())
}

#[derive(Deserialize)]
struct CreateKey {
    client: String,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    models: Vec<String>,
}

async fn admin_create_key(
    State(c): State<Arc<Chain>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    require_admin(&c, &headers)?;
    let req: CreateKey = serde_json::from_slice(&body)
        .map_err(|e| GatewayError::BadRequest(format!("invalid key request: {e}")))?;
    let cfg = &c.shared().config;
    let tier = req.tier.unwrap_or_else(|| cfg.default_tier.clone());
    if !cfg.tiers.contains_key(&tier) {
        return Err(GatewayError::BadRequest(format!("unknown tier {tier:?}")).into());
    }
    let (rec, key) =
        c.shared()
            .keys
            .create(&req.client, req.group.as_deref(), &tier, &req.models)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"key": key, "record": rec})),
    )
        .into_response())
}

async fn admin_revoke(
    State(c): State<Arc<Chain>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> ApiResult {
    require_admin(&c, &headers)?;
    let rec = c.shared().keys.revoke(&id)?;
    Ok(Json(json!(rec)).into_response())
}

async fn admin_alerts(State(c): State<Arc<Chain>>, headers: HeaderMap) -> ApiResult {
    require_admin(&c, &headers)?;
    let c2 = c.clone();
    let alerts = tokio::task::spawn_blocking(move || {
        c2.flush_audit();
        c2.shared().audit.with_store(|s| s.alerts())
    })
    .await
    .map_err(|e| GatewayError::Storage(e.to_string()))??;
    Ok(Json(json!(alerts)).into_response())
}

async fn admin_blocks(State(c): State<Arc<Chain>>, headers: HeaderMap) -> ApiResult {
    require_admin(&c, &headers)?;
    let b: Vec<Value> = c
        .blocked()
        .into_iter()
        .map(|(m, cl, r)| json!({"model": m, "client": cl, "reason": r}))
        .collect();
    Ok(Json(json!(b)).into_response())
}

async fn admin_clients(State(c): State<Arc<Chain>>, headers: HeaderMap) -> ApiResult {
    require_admin(&c, &headers)?;
    let chain = c.clone();
    let clients = tokio::task::spawn_blocking(move || chain.clients())
        .await
        .map_err(|e| GatewayError::Inference(format!("worker failed: {e}")))?;
    Ok(Json(json!(clients)).into_response())
}

#[derive(Deserialize)]
struct BlockReq {
    client: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

async fn admin_block(
    State(c): State<Arc<Chain>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    block_common(c, headers, body, true).await
}

async fn admin_unblock(
    State(c): State<Arc<Chain>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    block_common(c, headers, body, false).await
}

async fn block_common(
    c: Arc<Chain>,
    headers: HeaderMap,
    body: axum::body::Bytes,
    block: bool,
) -> ApiResult {
    require_admin(&c, &headers)?;
    let req: BlockReq = serde_json::from_slice(&body)
        .map_err(|e| GatewayError::BadRequest(format!("invalid block request: {e}")))?;
    let n = tokio::task::spawn_blocking(move || {
        if block {
            c.admin_block(
                &req.client,
                req.model.as_deref(),
                req.reason.as_deref().unwrap_or("administrator"),
            )
        } else {
            c.admin_unblock(&req.client, req.model.as_deref())
        }
    })
    .await
    .map_err(|e| GatewayError::Storage(e.to_string()))??;
    Ok(Json(json!({"models": n})).into_response())
}

/// A server running on a tokio runtime.
pub struct RunningServer {
    addr: SocketAddr,
    /// Whether it speaks HTTPS (`server.tls_cert`).
    https: bool,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    chain: Arc<Chain>,
}

/// Binds `addr` (port 0 picks a free port) and serves `chain` until shut down.
pub async fn start(chain: Arc<Chain>, addr: &str) -> Result<RunningServer, GatewayError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| GatewayError::Config(format!("cannot bind {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    let (tx, rx) = oneshot::channel::<()>();
    let app = router(chain.clone());
    let tls = crate::tls::server_config(&chain.shared().config.server)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let stopped = async {
        let _ = rx.await;
    };
    let task = match tls {
        None => tokio::spawn(serve_until(listener, app, stopped)),
        Some(config) => {
            use axum::serve::ListenerExt;
            // `tap_io` (a no-op here) gives the listener axum's peer-address support.
            let listener = crate::tls::TlsListener::new(listener, config)
                .map_err(|e| GatewayError::Config(format!("cannot listen on {addr}: {e}")))?
                .tap_io(|_| {});
            tokio::spawn(serve_until(listener, app, stopped))
        }
    };
    tracing::info!("mamori gateway listening on {scheme}://{bound}");
    Ok(RunningServer {
        addr: bound,
        https: scheme == "https",
        stop: Some(tx),
        task,
        chain,
    })
}

/// Serves `app` on `listener`, with each connection's peer address, until `stopped`
/// resolves, then lets in-flight requests finish.
async fn serve_until<L>(
    listener: L,
    app: Router,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    for<'a> SocketAddr: axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopped)
    .await
}

impl RunningServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `https://127.0.0.1:43123` (`http` without TLS).
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The chain served.
    pub fn chain(&self) -> &Arc<Chain> {
        &self.chain
    }

    /// Stops accepting connections, lets in-flight requests finish, and flushes the audit log.
    pub async fn shutdown(mut self) -> Result<(), GatewayError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let r = (&mut self.task)
            .await
            .map_err(|e| GatewayError::Config(format!("server task failed: {e}")))?;
        let chain = self.chain.clone();
        tokio::task::spawn_blocking(move || chain.shutdown())
            .await
            .map_err(|e| GatewayError::Storage(e.to_string()))?;
        r.map_err(|e| GatewayError::Config(format!("server error: {e}")))
    }

    /// Serves until SIGTERM or ctrl-c, then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<(), GatewayError> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `signal` resolves (e.g. [`shutdown_signal`], taken before the server
    /// announces itself), then shuts down gracefully.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), GatewayError> {
        signal.await;
        tracing::info!("shutting down: finishing requests and flushing the audit log");
        self.shutdown().await
    }
}

/// A future that resolves on SIGTERM or SIGINT (ctrl-c). On Unix the handlers are installed
/// when this function is called, not when the future is first polled: a process that calls
/// it before announcing that it listens is never killed by the default action of a SIGTERM
/// sent right after the announcement (a supervisor stopping a fresh replica) — it shuts down
/// gracefully instead. Call it inside the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let term = async {
                match term {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let int = async {
                match int {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            };
            tokio::select! {
                _ = term => {},
                _ = int => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A server on its own runtime thread, for synchronous callers (demo, evaluation).
pub struct BlockingServer {
    addr: SocketAddr,
    url: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), GatewayError>>>,
}

impl BlockingServer {
    /// Starts `chain` on `addr` (port 0: any free port) on a new thread.
    pub fn start(chain: Arc<Chain>, addr: &str) -> Result<Self, GatewayError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let addr = addr.to_string();
        let thread = std::thread::Builder::new()
            .name("mamori-gateway".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| GatewayError::Config(e.to_string()))?;
                rt.block_on(async move {
                    let server = match start(chain, &addr).await {
                        Ok(s) => s,
                        Err(e) => {
                            let msg = e.to_string();
                            let _ = ready_tx.send(Err(e));
                            return Err(GatewayError::Config(msg));
                        }
                    };
                    let _ = ready_tx.send(Ok((server.local_addr(), server.url())));
                    let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                    server.shutdown().await
                })
            })
            .map_err(|e| GatewayError::Config(e.to_string()))?;
        let (addr, url) = ready_rx
            .recv()
            .map_err(|_| GatewayError::Config("server thread died".into()))??;
        Ok(Self {
            addr,
            url,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:43123` (`https` with `server.tls_cert`).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Graceful shutdown (in-flight requests finish, audit flushed).
    pub fn shutdown(mut self) -> Result<(), GatewayError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), GatewayError> {
        self.stop.take();
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| GatewayError::Config("server thread panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for BlockingServer {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}
