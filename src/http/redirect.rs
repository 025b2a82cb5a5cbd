//! The plain-HTTP listener: redirect to HTTPS (or refuse), keeping path and query, and keeping
//! `/.well-known/acme-challenge/` for ACME. Never sends HSTS (RFC 6797 §7.2).

use http::{header, HeaderValue, Method, Request, StatusCode};

use super::error::HttpError;
use super::{text_response, Response};
use crate::config::HttpMode;

pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The response to a plain-HTTP request. `https_port` is the port written into redirects.
pub fn respond<B>(mode: HttpMode, request: &Request<B>, https_port: u16) -> Response {
    if request.uri().path().starts_with(ACME_CHALLENGE_PREFIX) {
        // Reserved for ACME HTTP-01; no challenge is pending until ACME exists.
        return HttpError::NotFound.into_response();
    }
    if mode == HttpMode::Reject {
        return HttpError::TlsRequired.into_response();
    }
    let Some(host) = request_host(request) else {
        return HttpError::BadRequest("missing or invalid Host header").into_response();
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let location = format!("https://{host}{port}{path}");
    let Ok(location) = HeaderValue::from_str(&location) else {
        return HttpError::BadRequest("invalid request target").into_response();
    };
    // 301 as browsers expect for GET/HEAD; 308 elsewhere so a POST stays a POST.
    let status = if request.method() == Method::GET || request.method() == Method::HEAD {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut response = text_response(status, "Moved to HTTPS");
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// The request's host without port, if it is a plausible host name or IP literal. Anything
/// else is refused rather than reflected into a `Location` header.
fn request_host<B>(request: &Request<B>) -> Option<String> {
    let host = super::authority_host(request)?;
    let valid = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    };
    valid.then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str, host: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        builder.body(()).unwrap()
    }

    fn location(response: &Response) -> &str {
        response.headers()["location"].to_str().unwrap()
    }

    #[test]
    fn redirect_keeps_path_and_query_and_adds_port() {
        let r = respond(
            HttpMode::Redirect,
            &request(Method::GET, "/a/b?x=1&y=2", Some("example.com:8080")),
            8443,
        );
        assert_eq!(r.status(), 301);
        assert_eq!(location(&r), "https://example.com:8443/a/b?x=1&y=2");
        let r = respond(
            HttpMode::Redirect,
            &request(Method::GET, "/", Some("Example.com")),
            443,
        );
        assert_eq!(location(&r), "https://example.com/");
        let r = respond(
            HttpMode::Redirect,
            &request(Method::POST, "/api", Some("[::1]:80")),
            443,
        );
        assert_eq!(r.status(), 308);
        assert_eq!(location(&r), "https://[::1]/api");
    }

    #[test]
    fn bad_hosts_are_not_reflected() {
        for host in [None, Some("evil.com/x"), Some("a b"), Some("")] {
            let r = respond(HttpMode::Redirect, &request(Method::GET, "/", host), 443);
            assert_eq!(r.status(), 400, "{host:?}");
        }
    }

    #[test]
    fn reject_mode_and_acme_prefix() {
        let r = respond(
            HttpMode::Reject,
            &request(Method::GET, "/", Some("a.com")),
            443,
        );
        assert_eq!(r.status(), 403);
        let r = respond(
            HttpMode::Redirect,
            &request(
                Method::GET,
                "/.well-known/acme-challenge/tok",
                Some("a.com"),
            ),
            443,
        );
        assert_eq!(r.status(), 404);
        assert!(r.headers().get("location").is_none());
    }
}
