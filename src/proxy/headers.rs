//! Upstream-bound header rewriting: hop-by-hop removal (RFC 9110 §7.6.1), the `X-Forwarded-*`
//! family (trusted only from configured proxies) and the sticky cookie.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::pool::Pool;
use crate::config::proxy::Balance;
use crate::http::context::RequestContext;

/// Headers that describe one connection, never forwarded (as names, so removing them hashes
/// no strings).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// End-to-end headers that `Connection` may not nominate for removal (RFC 9110 §7.6.1 lets a
/// sender name any field; a client naming these would strip the Host the backend routes by,
/// its own credentials, or the forwarding headers tlsgate guarantees).
const NEVER_HOP_BY_HOP: [HeaderName; 9] = [
    header::HOST,
    header::AUTHORIZATION,
    header::COOKIE,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_REAL_IP,
];

/// Removes hop-by-hop headers, including those the `Connection` header names (except the
/// [`NEVER_HOP_BY_HOP`] ones).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| !NEVER_HOP_BY_HOP.contains(name))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Sets `X-Forwarded-For` (appended), `X-Real-IP`, `X-Forwarded-Proto` and
/// `X-Forwarded-Host`. From an untrusted peer, inbound values are replaced, never believed;
/// from a trusted one, the chain is extended and `X-Real-IP` is the client the pipeline found
/// behind it (`client_ip`).
pub fn set_forwarding(headers: &mut HeaderMap, ctx: &RequestContext) {
    let peer = ctx.conn.peer.ip();
    let host = ctx.host.as_str();
    let scheme = HeaderValue::from_static(if ctx.conn.secure { "https" } else { "http" });
    if ctx.peer_trusted {
        let chain: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let mut joined = chain.join(", ");
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        joined.push_str(&peer.to_string());
        set(headers, X_FORWARDED_FOR, &joined);
        set(headers, X_REAL_IP, &ctx.client_ip.to_string());
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, scheme);
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            set(headers, X_FORWARDED_HOST, host);
        }
    } else {
        headers.remove(header::FORWARDED);
        if let Some(address) = address_value(peer) {
            headers.insert(X_FORWARDED_FOR, address.clone());
            headers.insert(X_REAL_IP, address);
        }
        headers.insert(X_FORWARDED_PROTO, scheme);
        set(headers, X_FORWARDED_HOST, host);
    }
}

/// Upstream-bound headers: the client's minus hop-by-hop, plus forwarding headers. `Host`
/// is always the authority the request was routed by (`:authority` for HTTP/2 and
/// absolute-form requests), so the upstream sees the name that was checked.
pub fn upstream_headers(
    pool: &Pool,
    mut out: HeaderMap,
    uri: &http::Uri,
    ctx: &RequestContext,
) -> HeaderMap {
    // `:authority` (HTTP/2, absolute form) wins over a `Host` header; otherwise `Host` stays.
    if let Some(value) = uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        out.insert(header::HOST, value);
    }
    remove_hop_by_hop(&mut out);
    remove_underscored(&mut out);
    if pool.settings.balance == Balance::Cookie {
        crate::http::cookie::strip(&mut out, &pool.settings.sticky_cookie);
    }
    set_forwarding(&mut out, ctx);
    out
}

/// Removes headers whose names hold an `_` (nginx's `underscores_in_headers off`): CGI, WSGI
/// and PHP servers read `X_Auth_Sub` and `X-Auth-Sub` as the same `HTTP_X_AUTH_SUB`, so a
/// client could shadow an identity header the edge sets (`pass_claims`, client-certificate and
/// forward-auth headers) under a name the edge never cleared.
fn remove_underscored(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .cloned()
        .collect();
    for name in named {
        headers.remove(&name);
    }
}

/// An address as a header value; IPv4, the common case, without the formatting machinery
/// (this runs for every proxied request).
fn address_value(ip: IpAddr) -> Option<HeaderValue> {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                text[len] = b'0' + octet % 10;
                len += 1;
            }
            HeaderValue::from_bytes(&text[..len]).ok()
        }
        IpAddr::V6(v6) => HeaderValue::from_str(&v6.to_string()).ok(),
    }
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for text in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "192.168.1.10",
            "1.20.199.250",
            "::1",
            "2001:db8::7",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(
                address_value(ip).unwrap(),
                ip.to_string().as_str(),
                "{text}"
            );
        }
    }

    #[test]
    fn connection_cannot_nominate_host_credentials_or_forwarding_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            (
                "connection",
                "host, authorization, cookie, x-forwarded-for, x-real-ip, x-debug",
            ),
            ("host", "app.example.com"),
            ("authorization", "Bearer t"),
            ("cookie", "a=b"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-real-ip", "10.0.0.1"),
            ("x-debug", "1"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        remove_hop_by_hop(&mut headers);
        for kept in [
            "host",
            "authorization",
            "cookie",
            "x-forwarded-for",
            "x-real-ip",
        ] {
            assert!(headers.contains_key(kept), "{kept} kept");
        }
        assert!(
            !headers.contains_key("x-debug"),
            "a custom header may be nominated"
        );
        assert!(!headers.contains_key("connection"));
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    fn context(peer: &str, trusted: bool, client: &str) -> RequestContext {
        RequestContext {
            conn: crate::http::context::ConnectionInfo {
                peer: format!("{peer}:40000").parse().unwrap(),
                sni: None,
                secure: true,
                tls_version: Some("1.3"),
                activity: None,
                client_cert: None,
            },
            host: "example.com".into(),
            client_ip: client.parse().unwrap(),
            peer_trusted: trusted,
            route: "test".into(),
            body_limit: 0,
            version: http::Version::HTTP_11,
            started: std::time::Instant::now(),
            claims: None,
            websocket_protocol: None,
            cors_origin: None,
            authorization_sent: false,
        }
    }

    #[test]
    fn underscored_names_never_reach_the_upstream() {
        let mut h = HeaderMap::new();
        h.insert("x-auth-sub", HeaderValue::from_static("alice"));
        h.insert("x_auth_sub", HeaderValue::from_static("admin"));
        h.insert(
            "x_client_cert_subject",
            HeaderValue::from_static("CN=admin"),
        );
        remove_underscored(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-auth-sub"], "alice");
    }

    #[test]
    fn untrusted_peers_cannot_spoof() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        set_forwarding(&mut h, &context("203.0.113.9", false, "203.0.113.9"));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-real-ip"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.com");
    }

    #[test]
    fn trusted_proxies_extend_the_chain() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("198.51.100.1, 10.0.0.2"),
        );
        set_forwarding(&mut h, &context("10.0.0.3", true, "198.51.100.1"));
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 10.0.0.2, 10.0.0.3");
        assert_eq!(h["x-real-ip"], "198.51.100.1");
    }
}
