//! The pipeline's first stages: requests that no route may see (sanity), and requests on a
//! TLS connection opened for another name (`421`).

use http::{header, Method, Request};

use crate::http::context::ConnectionInfo;
use crate::http::error::HttpError;
use crate::http::websocket;

/// Refuses requests whose meaning is ambiguous or that no gateway should pass on. `websocket`
/// is [`websocket::is_websocket`] of the request.
pub fn sanity<B>(request: &Request<B>, websocket: bool) -> Result<(), HttpError> {
    // A reverse proxy opens no tunnels to arbitrary hosts; only WebSocket's extended CONNECT
    // (RFC 8441) is a CONNECT it takes.
    if request.method() == Method::CONNECT && !websocket {
        return Err(HttpError::NotImplemented("CONNECT"));
    }
    if request.headers().get_all(header::HOST).iter().count() > 1 {
        return Err(HttpError::BadRequest("more than one Host header"));
    }
    if has_dot_segments(request.uri().path()) {
        return Err(HttpError::BadRequest("path with . or .. segments"));
    }
    if websocket {
        websocket::check_opening(request)?;
    }
    Ok(())
}

/// `421` when a request's host is not the name its TLS connection was opened for
/// (RFC 9110 §15.5.20): certificates and routes are chosen per name, so a client must not
/// reuse a connection for another host.
pub fn misdirected(host: Option<&str>, conn: &ConnectionInfo) -> Result<(), HttpError> {
    match (conn.sni.as_deref(), host) {
        (Some(sni), Some(host)) if host != sni => Err(HttpError::MisdirectedRequest),
        _ => Ok(()),
    }
}

/// Paths with `.`/`..` segments (plain or percent-encoded) could match one route and mean
/// another to the upstream; they are refused rather than guessed at.
pub fn has_dot_segments(path: &str) -> bool {
    path.split('/').any(is_dot_segment)
}

/// `.` or `..`, each dot plain or as `%2e`/`%2E` (checked on every request: no allocation).
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', e, tail @ ..] if e.eq_ignore_ascii_case(&b'e') => tail,
            _ => return false,
        };
        dots += 1;
    }
    dots == 1 || dots == 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request_host;

    #[test]
    fn dot_segments_are_spotted_encoded_or_not() {
        for bad in [
            "/x/../ws",
            "/./ws",
            "/x/%2e%2e/ws",
            "/x/%2E/y",
            "/..",
            "/.%2e/x",
            "/%2E./x",
        ] {
            assert!(has_dot_segments(bad), "{bad}");
        }
        for fine in [
            "/ws",
            "/a.b/c",
            "/..x",
            "/x/.well-known/y",
            "/.../x",
            "/%2e%2e%2e",
            "/%2",
            "/%2ex",
            "/%2f",
        ] {
            assert!(!has_dot_segments(fine), "{fine}");
        }
    }

    #[test]
    fn hosts_from_authority_or_header() {
        let r = Request::builder()
            .uri("/x")
            .header("host", "Example.COM:8443")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("example.com"));
        let r = Request::builder()
            .uri("https://[::1]:8443/x")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("::1"));
        let r = Request::builder().uri("/x").body(()).unwrap();
        assert_eq!(request_host(&r), None);
    }

    #[test]
    fn sanity_refuses_what_no_route_may_see() {
        let connect = Request::builder()
            .method(Method::CONNECT)
            .uri("example.com:443")
            .body(())
            .unwrap();
        assert!(matches!(
            sanity(&connect, false),
            Err(HttpError::NotImplemented(_))
        ));
        let two_hosts = Request::builder()
            .uri("/")
            .header("host", "a")
            .header("host", "b")
            .body(())
            .unwrap();
        assert!(matches!(
            sanity(&two_hosts, false),
            Err(HttpError::BadRequest(_))
        ));
        let no_key = Request::builder()
            .uri("/ws")
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        assert!(matches!(
            sanity(&no_key, true),
            Err(HttpError::BadRequest(_))
        ));
        let conn = ConnectionInfo {
            peer: "127.0.0.1:1".parse().unwrap(),
            sni: Some("a.test".into()),
            secure: true,
            tls_version: Some("1.3"),
            activity: None,
        };
        assert!(misdirected(Some("a.test"), &conn).is_ok());
        assert!(matches!(
            misdirected(Some("b.test"), &conn),
            Err(HttpError::MisdirectedRequest)
        ));
        assert!(misdirected(None, &conn).is_ok());
    }
}
