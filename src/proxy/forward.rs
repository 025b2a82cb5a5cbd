//! One proxied HTTP exchange: route, forwarding headers, balancing with retries, timeouts, and
//! the response on its way back.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{BodyState, Bounded, ClientFault, Guarded};
use super::headers::{remove_hop_by_hop, set_forwarding};
use super::pool::{Pool, ProxyBody};
use super::routes::Route;
use super::upstream::{self, ResponseBody, UpstreamError};
use super::{tunnel, Proxy};
use crate::config::proxy::Balance;
use crate::http::error::{error_chain, HttpError};
use crate::http::service::ConnectionInfo;
use crate::http::Response;

/// The request's host, lower case, without port or IPv6 brackets (from `:authority` or `Host`).
pub fn request_host<B>(request: &Request<B>) -> Option<String> {
    let host = crate::http::authority_host(request)?;
    Some(
        match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(inner) => inner.to_owned(),
            None => host,
        },
    )
}

/// The value of cookie `name` in the request, if any.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

/// Removes cookie `name` (HAProxy's `indirect`: the backend never sees the sticky cookie).
fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').map(|(k, _)| k) != Some(name))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
        if !kept.is_empty() {
            headers.insert(header::COOKIE, value);
        }
    }
}

pub(super) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Entry point for every request on a listener with routes; `host` is [`request_host`].
pub async fn handle(
    proxy: &Proxy,
    request: Request<Incoming>,
    conn: ConnectionInfo,
    host: Option<String>,
) -> Response {
    // A reverse proxy opens no tunnels to arbitrary hosts; only WebSocket's extended CONNECT
    // (RFC 8441) is a CONNECT it takes.
    if request.method() == Method::CONNECT && !tunnel::is_websocket(&request) {
        return HttpError::NotImplemented("CONNECT").into_response();
    }
    if request.headers().get_all(header::HOST).iter().count() > 1 {
        return HttpError::BadRequest("more than one Host header").into_response();
    }
    if has_dot_segments(request.uri().path()) {
        return HttpError::BadRequest("path with . or .. segments").into_response();
    }
    let Some(host) = host else {
        return HttpError::BadRequest("missing or invalid Host").into_response();
    };
    let Some(route) = proxy.routes.find(&host, request.uri().path()) else {
        return HttpError::NotFound.into_response();
    };
    let mut response = if tunnel::is_websocket(&request) {
        // Boxed: the upgrade's state is several KiB, and every request's future would carry
        // (and copy) that much room for it otherwise.
        Box::pin(tunnel::open(proxy, route, request, &conn, &host)).await
    } else {
        forward(proxy, route, request, &conn, &host).await
    };
    response
        .extensions_mut()
        .insert(crate::http::service::RouteName(route.stats.clone()));
    response
}

/// Upstream-bound headers: the client's minus hop-by-hop, plus forwarding headers. `Host`
/// is always the authority the request was routed by (`:authority` for HTTP/2 and
/// absolute-form requests), so the upstream sees the name that was checked.
pub fn upstream_headers(
    proxy: &Proxy,
    pool: &Pool,
    mut out: HeaderMap,
    uri: &http::Uri,
    conn: &ConnectionInfo,
    host: &str,
) -> (HeaderMap, IpAddr) {
    // `:authority` (HTTP/2, absolute form) wins over a `Host` header; otherwise `Host` stays.
    if let Some(value) = uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        out.insert(header::HOST, value);
    }
    remove_hop_by_hop(&mut out);
    if pool.settings.balance == Balance::Cookie {
        strip_cookie(&mut out, &pool.settings.sticky_cookie);
    }
    let peer = conn.peer.ip();
    let forwarding = set_forwarding(
        &mut out,
        peer,
        proxy.is_trusted(peer),
        &|ip| proxy.is_trusted(ip),
        conn.secure,
        host,
    );
    (out, forwarding.client_ip)
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

/// Whether a failed exchange timed out (connecting, or waiting for the server to take the
/// request): a `504` rather than a `502`.
pub(super) fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        current = e.source();
    }
    false
}

async fn forward(
    proxy: &Proxy,
    route: &Route,
    request: Request<Incoming>,
    conn: &ConnectionInfo,
    host: &str,
) -> Response {
    let pool = &route.pool;
    let declared = request.body().size_hint().exact();
    if declared.is_some_and(|length| length > route.max_body_size) {
        return HttpError::PayloadTooLarge.into_response();
    }
    let (mut parts, body) = request.into_parts();
    let sticky = cookie_value(&parts.headers, &pool.settings.sticky_cookie).map(str::to_owned);
    let client_headers = std::mem::take(&mut parts.headers);
    let (headers, client_ip) =
        upstream_headers(proxy, pool, client_headers, &parts.uri, conn, host);
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let empty_body = body.is_end_stream();
    let can_retry = is_idempotent(&parts.method) && empty_body;
    // Kept for a retry only when one could happen; otherwise the first attempt takes them.
    let mut headers = Some(headers);
    let state = Arc::new(BodyState::default());
    let mut body = Some(
        Bounded::new(
            body,
            route.max_body_size,
            pool.settings.send_timeout,
            state.clone(),
        )
        .boxed(),
    );
    let mut tried = Vec::new();
    loop {
        let Some((index, in_flight)) = pool.acquire(client_ip, sticky.as_deref(), &tried) else {
            tracing::error!(route = %route.name, upstream = %pool.name, "no upstream server available");
            return if tried.is_empty() {
                HttpError::NoUpstream
            } else {
                HttpError::BadGateway
            }
            .into_response();
        };
        let server = &pool.servers[index];
        let retry_possible = can_retry && tried.len() + 1 < pool.servers.len();
        let attempt_headers = if retry_possible {
            headers.clone().unwrap_or_default()
        } else {
            headers.take().unwrap_or_default()
        };
        let mut upstream = Request::builder()
            .method(parts.method.clone())
            .uri(upstream_uri(server, &path))
            .version(if pool.settings.h2c {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            });
        if let Some(target) = upstream.headers_mut() {
            *target = attempt_headers;
        }
        let request_body: ProxyBody = body.take().unwrap_or_else(|| {
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed()
        });
        let Ok(upstream) = upstream.body(request_body) else {
            return HttpError::BadRequest("request cannot be forwarded").into_response();
        };
        let outcome = if pool.settings.h2c {
            exchange(pool, pool.client.request(upstream), &state, empty_body)
                .await
                .map(|result| {
                    result
                        .map(|response| response.map(ResponseBody::H2c))
                        .map_err(UpstreamError::from)
                })
        } else {
            let Some(authority) = &server.authority else {
                return HttpError::BadGateway.into_response();
            };
            let target = upstream::Target {
                host: authority.host(),
                port: authority.port_u16().unwrap_or(80),
                idle: &server.idle,
                connect_timeout: pool.settings.connect_timeout,
                read_timeout: pool.settings.response_timeout,
                send_timeout: pool.settings.send_timeout,
            };
            exchange(pool, upstream::send(target, upstream), &state, empty_body)
                .await
                .map(|result| result.map(|response| response.map(ResponseBody::Http1)))
        };
        if let Some(fault) = state.fault.get() {
            // The client's doing: not the upstream's failure.
            return match fault {
                ClientFault::TooLarge => HttpError::PayloadTooLarge,
                ClientFault::Stalled => HttpError::RequestTimeout,
                ClientFault::Aborted => HttpError::BadRequest("request body aborted"),
            }
            .into_response();
        }
        match outcome {
            Ok(Ok(response)) => {
                pool.record_success(index);
                return respond(
                    pool,
                    index,
                    response,
                    in_flight,
                    sticky.as_deref(),
                    conn.secure,
                );
            }
            Ok(Err(error)) => {
                if error.counts_against_server() {
                    pool.record_failure(index);
                }
                let never_sent = error.is_connect();
                let timed_out = is_timeout(&error);
                tracing::error!(route = %route.name, upstream = %pool.name, server = %server.url, error = %error_chain(&error), "upstream request failed");
                if never_sent && can_retry && tried.len() + 1 < pool.servers.len() {
                    tried.push(index);
                    continue;
                }
                return if timed_out {
                    HttpError::GatewayTimeout
                } else {
                    HttpError::BadGateway
                }
                .into_response();
            }
            Err(()) => {
                pool.record_failure(index);
                tracing::error!(route = %route.name, upstream = %pool.name, server = %server.url, timeout = ?pool.settings.response_timeout, "upstream response timed out");
                return HttpError::GatewayTimeout.into_response();
            }
        }
    }
}

/// The upstream URI for `path` on `server`, assembled from parts (no formatting, no parsing)
/// when the server's authority is known.
fn upstream_uri(server: &super::pool::Server, path: &http::uri::PathAndQuery) -> http::Uri {
    if let Some(authority) = &server.authority {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(path.clone());
        if let Ok(uri) = http::Uri::from_parts(parts) {
            return uri;
        }
    }
    format!("{}{path}", server.url)
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"))
}

/// Sends a request; the response timeout runs from the moment the whole request body has been
/// handed over (at once for an empty body), so a slow upload is not a slow upstream.
async fn exchange<T>(
    pool: &Pool,
    sending: impl std::future::Future<Output = T>,
    state: &BodyState,
    empty_body: bool,
) -> Result<T, ()> {
    tokio::pin!(sending);
    let timeout = pool.settings.response_timeout;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut armed = empty_body;
    loop {
        tokio::select! {
            result = &mut sending => return Ok(result),
            () = state.finished.notified(), if !armed => {
                armed = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
            }
            () = &mut deadline, if armed => return Err(()),
        }
    }
}

pub(super) fn respond<B>(
    pool: &Arc<Pool>,
    index: usize,
    response: hyper::Response<B>,
    in_flight: super::pool::InFlight,
    sticky: Option<&str>,
    secure: bool,
) -> Response
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<super::pool::BoxError>,
{
    let (mut parts, body) = response.into_parts();
    parts
        .extensions
        .insert(crate::http::service::UpstreamServer(
            pool.servers[index].url.clone(),
        ));
    remove_hop_by_hop(&mut parts.headers);
    // As nginx does: the backend's `Server` (often with a version) is not passed on.
    parts.headers.remove(header::SERVER);
    if pool.settings.balance == Balance::Cookie {
        let token = pool.cookie_token(index);
        if sticky != Some(token) {
            let cookie = format!(
                "{}={token}; Path=/; HttpOnly; SameSite=Lax{}",
                pool.settings.sticky_cookie,
                if secure { "; Secure" } else { "" }
            );
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                parts.headers.append(header::SET_COOKIE, value);
            }
            // HAProxy's `nocache`: a response that sets the cookie must not be cached.
            if !parts.headers.contains_key(header::CACHE_CONTROL) {
                parts
                    .headers
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
            }
        }
    }
    hyper::Response::from_parts(
        parts,
        Guarded::new(body, in_flight).map_err(Into::into).boxed(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_cookie_is_read_and_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; SERVERID=abc; b=2"),
        );
        assert_eq!(cookie_value(&h, "SERVERID"), Some("abc"));
        strip_cookie(&mut h, "SERVERID");
        assert_eq!(h[header::COOKIE], "a=1; b=2");
        let mut only = HeaderMap::new();
        only.insert(header::COOKIE, HeaderValue::from_static("SERVERID=abc"));
        strip_cookie(&mut only, "SERVERID");
        assert!(!only.contains_key(header::COOKIE));
    }

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
}
