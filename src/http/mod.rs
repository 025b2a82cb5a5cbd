//! Small shared HTTP pieces: the request context and connection types, security headers, the
//! plain-HTTP redirect, WebSocket checks, the connection activity tracker, and the one place
//! that maps errors to status codes.

pub mod activity;
pub mod context;
pub mod error;
pub mod headers;
pub mod redirect;
pub mod websocket;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// The response body type of every handler (boxed, so streaming bodies fit later).
pub type ResponseBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
pub type Response = hyper::Response<ResponseBody>;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A short plain-text response.
pub fn text_response(status: http::StatusCode, text: &str) -> Response {
    let mut response = hyper::Response::new(full(format!("{text}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The host of a request's authority: `:authority` (HTTP/2, absolute-form URIs), else the
/// `Host` header; lower case, without port, IPv6 in brackets. `None` if absent or malformed.
pub fn authority_host<B>(request: &http::Request<B>) -> Option<String> {
    let host = match request.uri().authority() {
        Some(authority) => authority.host().to_ascii_lowercase(),
        None => {
            let value = request.headers().get(http::header::HOST)?;
            http::uri::Authority::try_from(value.as_bytes())
                .ok()?
                .host()
                .to_ascii_lowercase()
        }
    };
    Some(host)
}

/// The request's host, lower case, without port or IPv6 brackets (from `:authority` or `Host`).
pub fn request_host<B>(request: &http::Request<B>) -> Option<String> {
    let host = authority_host(request)?;
    Some(
        match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(inner) => inner.to_owned(),
            None => host,
        },
    )
}
