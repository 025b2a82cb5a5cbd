//! What a request carries through the pipeline: the connection it came on, and the context the
//! pipeline builds once per request and hands to the stages and the target by reference.
//!
//! Defined here, below the pipeline, because the targets (`proxy`, later `hub`) read it and
//! must not depend on the pipeline; only the pipeline builds a [`RequestContext`].

use std::any::Any;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;

use super::activity::Activity;

/// The connection's place under `max_connections`, attached to each request; whoever holds
/// a clone keeps the place taken (an upgraded WebSocket outlives its HTTP connection).
#[derive(Clone)]
pub struct ConnectionSlot(pub Arc<dyn Any + Send + Sync>);

/// The connection a request arrived on, attached to each request by the server.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer: std::net::SocketAddr,
    /// The TLS server name the client sent, lower case.
    pub sni: Option<Arc<str>>,
    pub secure: bool,
    /// `1.2` or `1.3` on TLS connections.
    pub tls_version: Option<&'static str>,
    /// The connection's liveness, for response bodies and tunnels that keep it busy or wait
    /// on its client (set by the server for every request).
    pub activity: Option<Arc<Activity>>,
    /// The client certificate the TLS handshake verified (mTLS), if the client sent one.
    pub client_cert: Option<Arc<ClientCertIdentity>>,
}

/// A verified client certificate's identity, read once after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertIdentity {
    /// The subject in RFC 4514 form (`CN=alice,O=Example`), as nginx's `$ssl_client_s_dn`.
    pub subject: String,
    /// `DNS:name`, `email:addr`, `URI:uri`, `IP:addr`, in the certificate's order.
    pub sans: Vec<String>,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint: String,
    /// The serial number, lower-case hex without separators.
    pub serial: String,
    /// The leaf certificate as PEM.
    pub pem: String,
    /// The identity's upstream headers (subject, SANs, fingerprint, serial) as header values,
    /// made by the first request that sends them: the identity is the connection's, so every
    /// later request on it reuses them.
    pub header_values: std::sync::OnceLock<Vec<(http::HeaderName, http::HeaderValue)>>,
    /// The URL-encoded PEM as a header value, made likewise when a route passes it.
    pub pem_value: std::sync::OnceLock<Option<http::HeaderValue>>,
}

/// The upstream server that answered, for the access log (a response extension the proxy
/// sets).
#[derive(Debug, Clone)]
pub struct UpstreamServer(pub Arc<str>);

/// One request's context, built by the pipeline's first stage and read by every later one.
#[derive(Debug)]
pub struct RequestContext {
    pub conn: ConnectionInfo,
    /// The request's host, lower case, without port or IPv6 brackets.
    pub host: String,
    /// The client: the peer, or, from a trusted proxy, the right-most untrusted address of
    /// `X-Forwarded-For`.
    pub client_ip: IpAddr,
    /// Whether the peer is one of `proxy.trusted_proxies` (its forwarding headers are kept).
    pub peer_trusted: bool,
    /// The matched route's name (before routing, or when nothing matched: `none`, or
    /// `builtin` when no routes are configured).
    pub route: Arc<str>,
    /// The most a request body may carry (the route's policy).
    pub body_limit: u64,
    /// The request's HTTP version (an HTTP/2 response body is paced per stream).
    pub version: http::Version,
    pub started: Instant,
    /// The verified token's claims, once the policy stage's authentication passed (later
    /// stages, such as rate-limit zones keyed by a claim, read them).
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// The WebSocket subprotocol the edge answers with when the upstream selects none: the
    /// `bearer` a browser offered with its token (a browser fails an answer selecting none).
    pub websocket_protocol: Option<&'static str>,
    /// The request's `Origin` on a route with a CORS policy, noted by the policy stage for
    /// the response's CORS headers (refusals included, so a page can read their status).
    pub cors_origin: Option<http::HeaderValue>,
    /// Whether the request came with an `Authorization` header. Only such requests' `401`
    /// and `403` answers count towards a ban: a page on another site can make a visitor's
    /// browser send cookies, query tokens, WebSocket subprotocols and foreign Origins, but no
    /// `Authorization` header without a preflight, so it cannot get its visitors banned.
    pub authorization_sent: bool,
}

/// The configured trusted proxies (`proxy.trusted_proxies`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.0.is_empty() {
            return false;
        }
        // An IPv4 client on a dual-stack socket shows as `::ffff:a.b.c.d`.
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`: from a trusted peer, the right-most `X-Forwarded-For`
    /// address that is not itself a trusted proxy (else the left-most); otherwise the peer.
    /// Returns the client and whether the peer is trusted.
    pub fn client_of(&self, peer: IpAddr, headers: &http::HeaderMap) -> (IpAddr, bool) {
        if !self.contains(peer) {
            return (peer, false);
        }
        let addresses: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        let client = addresses
            .iter()
            .rev()
            .find(|ip| !self.contains(**ip))
            .or(addresses.first())
            .copied()
            .unwrap_or(peer);
        (client, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_rightmost_untrusted_forwarded_address() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            http::HeaderValue::from_static("203.0.113.7, 198.51.100.2, 10.0.0.9"),
        );
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            trusted.client_of(proxy, &headers),
            ("198.51.100.2".parse().unwrap(), true)
        );
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(trusted.client_of(stranger, &headers), (stranger, false));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert!(trusted.contains(mapped));
        assert_eq!(
            trusted.client_of(proxy, &http::HeaderMap::new()),
            (proxy, true),
            "no header: the trusted peer itself"
        );
    }
}
