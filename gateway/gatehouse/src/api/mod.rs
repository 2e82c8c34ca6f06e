//! The REST API for just-in-time approvals (`protocol = "api"` listeners): HTTPS (rustls, the
//! listener's certificate and sealed key from `tls.rs`), HTTP/1.1 (hyper), routes by axum,
//! JSON in and out, every route but `/v1/healthz` authenticated by an OIDC bearer token
//! validated by the same verifier as PostgreSQL logins. The contract is
//! `docs/api/openapi.yaml`.
//!
//! Bounds: TLS handshake and request headers 10 s each, a whole request 30 s, bodies 16 KiB,
//! headers 16 KiB, 256 connections per listener (more are closed at once).

mod error;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

pub use error::ApiError;

use crate::pg::session::ListenerCtx;
use crate::state::Gateway;

/// Largest request body accepted (a decision or a grant is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Largest request head (request line and headers; a JWT with many groups fits).
const MAX_HEAD_BYTES: usize = 32 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_CONNECTIONS: usize = 256;

/// The `/v1` routes with their limits; state is the running gateway.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/healthz", get(routes::healthz))
        .route("/v1/approvals", get(routes::list_approvals))
        .route("/v1/approvals/{id}", get(routes::get_approval))
        .route("/v1/approvals/{id}/approve", post(routes::approve))
        .route("/v1/approvals/{id}/deny", post(routes::deny))
        .route(
            "/v1/grants",
            get(routes::list_grants).post(routes::issue_grant),
        )
        .route("/v1/grants/{id}", delete(routes::revoke_grant))
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(guard))
        .with_state(gw)
}

/// Around every request: the time limit, headers that keep responses (which hold statement
/// text) out of caches, and a JSON error body for rejections produced by the framework.
async fn guard(req: Request, next: Next) -> Response {
    let mut resp = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout.into_response(),
    };
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (resp.status().is_client_error() || resp.status().is_server_error()) && !is_json {
        resp = framework_error(resp.status()).into_response();
    }
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// An axum rejection (bad path encoding, body too large, …) in our error shape.
fn framework_error(status: StatusCode) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::NOT_FOUND => ApiError::NotFound("route"),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable("invalid request".into()),
        s if s.is_client_error() => ApiError::BadRequest("invalid request".into()),
        _ => ApiError::Internal,
    }
}

/// Where a request came from, for audit records (set on every request of a connection).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub listener: String,
    pub peer: SocketAddr,
    /// `https`, or `http` on a loopback development listener.
    pub scheme: &'static str,
}

/// Accepts connections on an `api` listener until the task is aborted.
pub async fn serve(gw: Arc<Gateway>, ctx: Arc<ListenerCtx>, listener: TcpListener) {
    let app = router(gw);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(listener = %ctx.name, %peer, "api: connection limit reached; closing");
                    continue;
                };
                let (ctx, app) = (ctx.clone(), app.clone());
                tokio::spawn(async move {
                    connection(ctx, app, tcp, peer).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "api: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection: TLS (a ClientHello starts with content type 22), or plain HTTP only on a
/// listener with the loopback development option; anything else gets a 400 and is closed.
async fn connection(ctx: Arc<ListenerCtx>, app: Router, mut tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let mut first = [0u8; 1];
    let tls_hello = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == 0x16,
        _ => return,
    };
    if tls_hello {
        let Some(acceptor) = ctx.tls.clone() else {
            return;
        };
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => http(app, TokioIo::new(tls), conn_info(&ctx, peer, "https")).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "api: TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "api: TLS handshake timed out"),
        }
    } else if ctx.allow_plaintext {
        http(app, TokioIo::new(tcp), conn_info(&ctx, peer, "http")).await;
    } else {
        let body = r#"{"error":{"code":"tls_required","message":"use https"}}"#;
        let resp = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(resp.as_bytes())).await;
    }
}

fn conn_info(ctx: &ListenerCtx, peer: SocketAddr, scheme: &'static str) -> ConnInfo {
    ConnInfo {
        listener: ctx.name.clone(),
        peer,
        scheme,
    }
}

async fn http<I>(app: Router, io: TokioIo<I>, info: ConnInfo)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt as _;
    let peer = info.peer;
    let svc = TowerToHyperService::new(app.map_request(
        move |mut r: Request<hyper::body::Incoming>| {
            r.extensions_mut().insert(info.clone());
            r
        },
    ));
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(io, svc)
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "api: connection ended with an error");
    }
}

#[cfg(test)]
mod tests;
