//! The built-in endpoints of a gateway with no routes configured: `/health` and the `/ws`
//! WebSocket echo (a stand-in until the hub exists).

use std::time::Duration;

use http::{header, HeaderValue, Method, Request, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::context::ConnectionSlot;
use crate::http::error::HttpError;
use crate::http::{builtin_response, full, websocket, Response};

/// What the echo endpoint needs, built once per configuration.
#[derive(Debug, Clone)]
pub struct EchoContext {
    pub shutdown: CancellationToken,
    /// Upgraded connections run as tasks here, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

/// `GET`/`HEAD /health`.
pub fn health(method: &Method) -> Result<Response, HttpError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(HttpError::MethodNotAllowed);
    }
    let mut response = builtin_response(
        StatusCode::OK,
        "application/json",
        &b"{\"status\":\"healthy\"}"[..],
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `/ws`: a WebSocket that sends back what it receives, closed after `idle` without traffic.
pub fn echo<B: Send + 'static>(
    context: &EchoContext,
    mut request: Request<B>,
    idle: Duration,
) -> Result<Response, HttpError> {
    let accept = websocket::check_upgrade(&request)?;
    Ok(accept_websocket(
        context,
        &mut request,
        Some(accept),
        move |upgraded, shutdown| websocket::echo(upgraded, idle, shutdown),
    ))
}

/// Accepts a WebSocket opening (an HTTP/1.1 upgrade or an HTTP/2 extended CONNECT) only to
/// close it at once with `code` and `reason`; no target is contacted. `bearer` selects the
/// `bearer` subprotocol the client offered (a browser fails an answer that selects none).
pub fn close_websocket<B>(
    context: &EchoContext,
    request: &mut Request<B>,
    code: u16,
    reason: &'static str,
    bearer: bool,
) -> Result<Response, HttpError> {
    let accept = opening_accept(request)?;
    let mut response = accept_websocket(context, request, accept, move |upgraded, shutdown| {
        websocket::close_at_once(upgraded, code, reason, shutdown)
    });
    if bearer {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("bearer"),
        );
    }
    Ok(response)
}

/// Checks a WebSocket opening of either kind: the `Sec-WebSocket-Accept` for an HTTP/1.1
/// upgrade, none for an extended CONNECT.
pub(super) fn opening_accept<B>(request: &Request<B>) -> Result<Option<HeaderValue>, HttpError> {
    if request.method() == Method::CONNECT {
        websocket::check_opening(request)?;
        Ok(None)
    } else {
        websocket::check_upgrade(request).map(Some)
    }
}

/// The answer to a checked WebSocket opening, with `run` spawned on the upgraded connection
/// (holding the connection's slot): a `101` with `accept` for an HTTP/1.1 upgrade, a `200`
/// for an extended CONNECT (`accept` none).
pub(super) fn accept_websocket<B, F, Fut>(
    context: &EchoContext,
    request: &mut Request<B>,
    accept: Option<HeaderValue>,
    run: F,
) -> Response
where
    F: FnOnce(hyper::upgrade::Upgraded, CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let on_upgrade = hyper::upgrade::on(&mut *request);
    let slot = request.extensions_mut().remove::<ConnectionSlot>();
    let shutdown = context.shutdown.clone();
    context.tasks.spawn(async move {
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => run(upgraded, shutdown).await,
            Err(error) => tracing::debug!(%error, "WebSocket upgrade did not complete"),
        }
    });
    let mut response = hyper::Response::new(full(Vec::new()));
    if let Some(accept) = accept {
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}
