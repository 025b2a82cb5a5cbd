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
    // hyper decodes the chunked framing; any other coding (`gzip, chunked`) would be lost
    // when the body is framed again upstream, so it is refused, as nginx does.
    let mut chunked = 0;
    for coding in request
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
    {
        if !coding.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(HttpError::NotImplemented(
                "a transfer coding other than chunked",
            ));
        }
        chunked += 1;
    }
    // RFC 9112 §6.1: chunked is applied once; twice is a framing two parsers may read apart.
    if chunked > 1 {
        return Err(HttpError::BadRequest("chunked transfer coding given twice"));
    }
    if websocket {
        websocket::check_opening(request)?;
    }
    Ok(())
}

/// The path routes match and the upstream receives, when it differs from the request's:
/// percent-encoded unreserved characters decoded (RFC 3986 §6.2.2.2, so `/%77s` is `/ws`),
/// other encodings' hex in upper case, and runs of `/` merged (as nginx's `merge_slashes`).
/// Refused with `400`, since backends read them differently: `.`/`..` segments (plain or
/// encoded), an encoded `/` or `\`, a raw `\`, an encoded control character or NUL, and a
/// `%` not followed by two hex digits.
pub fn normalized_path(path: &str) -> Result<Option<String>, HttpError> {
    let bytes = path.as_bytes();
    let plain = !bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' || b == b'\\' || (b == b'/' && bytes.get(i + 1) == Some(&b'/')));
    if plain {
        // The common case: nothing to rewrite, checked without allocating.
        return if has_dot_segments(path) {
            Err(HttpError::BadRequest("path with . or .. segments"))
        } else {
            Ok(None)
        };
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = bytes;
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match byte {
            b'%' => {
                let value = match tail {
                    [high, low, ..] => hex(*high).zip(hex(*low)).map(|(h, l)| h << 4 | l),
                    _ => None,
                }
                .ok_or(HttpError::BadRequest(
                    "malformed percent-encoding in the path",
                ))?;
                rest = &tail[2..];
                match value {
                    b'/' | b'\\' => return Err(HttpError::BadRequest("encoded slash in the path")),
                    0..=0x1f | 0x7f => {
                        return Err(HttpError::BadRequest(
                            "encoded control character in the path",
                        ))
                    }
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        out.push(char::from(value))
                    }
                    _ => {
                        out.push('%');
                        out.push(char::from(HEX_UPPER[usize::from(value >> 4)]));
                        out.push(char::from(HEX_UPPER[usize::from(value & 0xf)]));
                    }
                }
            }
            b'\\' => return Err(HttpError::BadRequest("backslash in the path")),
            b'/' if out.ends_with('/') => {}
            // The URI parser let only ASCII through.
            other => out.push(char::from(other)),
        }
    }
    if has_dot_segments(&out) {
        return Err(HttpError::BadRequest("path with . or .. segments"));
    }
    Ok((out != path).then_some(out))
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
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
    fn paths_are_normalised_as_a_lenient_backend_reads_them_or_refused() {
        for (raw, normal) in [
            ("/%77s", "/ws"),
            ("/%61pi/x", "/api/x"),
            ("//ws", "/ws"),
            ("/a///b//", "/a/b/"),
            ("/%7Euser/%2d", "/~user/-"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
        ] {
            let got = normalized_path(raw).unwrap_or_else(|e| panic!("{raw}: {e:?}"));
            assert_eq!(got.as_deref().unwrap_or(raw), normal, "{raw}");
        }
        for plain in ["/", "/ws", "/api/v2/x", "/a.b/c", "/a%20b", "*"] {
            assert_eq!(normalized_path(plain).unwrap(), None, "{plain}");
        }
        for bad in [
            "/ws%2F",
            "/ws%2f",
            "/x/..%2fws",
            "/x/%2e%2e/ws",
            "/x/../ws",
            "/%2e%2E/ws",
            "/a%5Cb",
            "/a\\b",
            "/a%00b",
            "/a%0ab",
            "/a%7f",
            "/a%",
            "/a%4",
            "/a%zz",
            "/x/%2e",
            "//..//ws",
        ] {
            assert!(
                matches!(normalized_path(bad), Err(HttpError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn transfer_codings_other_than_chunked_are_not_implemented() {
        let with = |te: &str| {
            Request::builder()
                .method(Method::POST)
                .uri("/")
                .header("transfer-encoding", te)
                .body(())
                .unwrap()
        };
        for refused in ["gzip, chunked", "deflate,chunked", "identity"] {
            assert!(
                matches!(
                    sanity(&with(refused), false),
                    Err(HttpError::NotImplemented(_))
                ),
                "{refused}"
            );
        }
        assert!(matches!(
            sanity(&with("chunked, chunked"), false),
            Err(HttpError::BadRequest(_))
        ));
        assert!(sanity(&with("chunked"), false).is_ok());
        assert!(sanity(&with("Chunked"), false).is_ok());
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
            client_cert: None,
        };
        assert!(misdirected(Some("a.test"), &conn).is_ok());
        assert!(matches!(
            misdirected(Some("b.test"), &conn),
            Err(HttpError::MisdirectedRequest)
        ));
        assert!(misdirected(None, &conn).is_ok());
    }
}
