//! The main listener's handler: built-in endpoints, then security headers on the way out.

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::HttpError;
use super::{builtin_response, full, websocket, Response};

/// The connection's place under `max_connections`, attached to each request; whoever holds
/// a clone keeps the place taken (an upgraded WebSocket outlives its HTTP connection).
#[derive(Clone)]
pub struct ConnectionSlot(pub Arc<dyn std::any::Any + Send + Sync>);

/// The route a response came from, for metrics and the access log (set by the proxy).
#[derive(Debug, Clone)]
pub struct RouteName(pub std::sync::Arc<crate::metrics::RouteStats>);

/// The upstream server that answered, for the access log (set by the proxy).
#[derive(Debug, Clone)]
pub struct UpstreamServer(pub std::sync::Arc<str>);

/// The connection a request arrived on, attached to each request.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer: std::net::SocketAddr,
    /// The TLS server name the client sent, lower case.
    pub sni: Option<std::sync::Arc<str>>,
    pub secure: bool,
    /// `1.2` or `1.3` on TLS connections.
    pub tls_version: Option<&'static str>,
}

/// What the built-in endpoints need, built once per configuration.
#[derive(Debug, Clone)]
pub struct EdgeContext {
    pub websocket_idle_timeout: Duration,
    pub shutdown: CancellationToken,
    /// Upgraded connections run as tasks here, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

/// The built-in endpoints (no routes configured): `/health`, the `/ws` echo, else `404`.
pub fn builtin<B: Send + 'static>(context: &EdgeContext, request: Request<B>) -> Response {
    match request.uri().path() {
        "/health" => health(request.method()),
        "/ws" => websocket_echo(context, request),
        _ => HttpError::NotFound.into_response(),
    }
}

fn health(method: &Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return HttpError::MethodNotAllowed.into_response();
    }
    let mut response = builtin_response(
        StatusCode::OK,
        "application/json",
        &b"{\"status\":\"healthy\"}"[..],
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn websocket_echo<B: Send + 'static>(context: &EdgeContext, mut request: Request<B>) -> Response {
    let accept = match websocket::check_upgrade(&request) {
        Ok(accept) => accept,
        Err(error) => return error.into_response(),
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let slot = request.extensions_mut().remove::<ConnectionSlot>();
    let idle = context.websocket_idle_timeout;
    let shutdown = context.shutdown.clone();
    context.tasks.spawn(async move {
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => websocket::echo(upgraded, idle, shutdown).await,
            Err(error) => tracing::debug!(%error, "WebSocket upgrade did not complete"),
        }
    });
    let mut response = hyper::Response::new(full(Vec::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}
