//! Small shared HTTP pieces: the request context and connection types, security headers, the
//! plain-HTTP redirect, WebSocket checks, the connection activity tracker, and the one place
//! that maps errors to status codes.

pub mod activity;
pub mod context;
pub mod cookie;
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

/// `%XX` escapes decoded (others kept as written, bytes that are not UTF-8 replaced).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: u8| (b as char).to_digit(16);
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path with each segment's `;parameters` removed, for matching only: Java servlet
/// containers read `/ws;x` as `/ws`, so a route (and its policy) must see it so too.
pub fn without_parameters(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains(';') {
        return std::borrow::Cow::Borrowed(path);
    }
    let segments: Vec<&str> = path
        .split('/')
        .map(|segment| segment.split_once(';').map_or(segment, |(name, _)| name))
        .collect();
    std::borrow::Cow::Owned(segments.join("/"))
}

/// A query's `name=value` pairs, names percent-decoded as a backend decodes them (`%74oken`
/// is `token`), values as written.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, &str)> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(n, v)| (percent_decode(n), v))
}

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The Content-Security-Policy of tlsgate's own answers (health, errors, the redirect): they
/// are not pages, so nothing may load in them or frame them. A configured policy replaces it
/// (see `SecurityHeaders::apply`); proxied responses never get this one.
pub const BUILTIN_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// An answer tlsgate makes itself: every one is built here, so each carries [`BUILTIN_CSP`].
pub fn builtin_response(
    status: http::StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response {
    let mut response = hyper::Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(BUILTIN_CSP),
    );
    response
}

/// A short plain-text response.
pub fn text_response(status: http::StatusCode, text: &str) -> Response {
    builtin_response(status, "text/plain; charset=utf-8", format!("{text}\n"))
}

/// A response to `HEAD`: the headers GET would get, no body. hyper's HTTP/1 server drops a
/// HEAD body itself, but its HTTP/2 server sends it as DATA, which clients take as a protocol
/// error (RFC 9113 §8.1.1) and reset the stream over.
pub fn without_body_for_head(response: Response) -> Response {
    use http_body::Body as _;
    if response.body().is_end_stream() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let status = parts.status;
    let has_length = !(status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED);
    if let (true, Some(length)) = (has_length, body.size_hint().exact()) {
        parts
            .headers
            .entry(http::header::CONTENT_LENGTH)
            .or_insert_with(|| http::HeaderValue::from(length));
    }
    hyper::Response::from_parts(parts, full(Bytes::new()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_matching_ignores_segment_parameters() {
        assert_eq!(without_parameters("/ws;x"), "/ws");
        assert_eq!(without_parameters("/a;b=c/d;e"), "/a/d");
        assert_eq!(without_parameters("/plain"), "/plain");
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("a%3Ab,c"), "a:b,c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
