//! The admin listener's router (default 127.0.0.1:9090): `/metrics`, `/health`, `/ready`,
//! `/certificates`, `POST /reload`, `GET /bans` and `DELETE /bans/{ip}`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Method, StatusCode};
use serde::Serialize;

use crate::certs::inspect::format_time;
use crate::control::ReloadHandle;
use crate::http::error::HttpError;
use crate::http::{full, Response};
use crate::metrics::Metrics;
use crate::tls::CertSummary;

/// What the server currently serves, for `/certificates` and `/ready`.
#[derive(Debug, Default)]
pub struct CertificateState {
    pub served: Vec<CertSummary>,
    /// ACME certificates still on order (their names).
    pub pending: Vec<Vec<String>>,
}

/// What the admin endpoints read and ask for.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub certificates: Arc<ArcSwap<CertificateState>>,
    /// Set once every listener accepts connections.
    pub listening: Arc<AtomicBool>,
    pub reload: ReloadHandle,
    /// `GET /bans`, `DELETE /bans/{ip}`.
    pub bans: Arc<crate::policy::limits::bans::BanTable>,
    /// The publish API, `/hub/*` (one hub for the process's life: reloads hand it over).
    pub hub: Arc<crate::hub::Hub>,
}

#[derive(Serialize)]
struct CertificateView<'a> {
    names: &'a [String],
    file: String,
    subject: &'a str,
    issuer: &'a str,
    serial: &'a str,
    not_after: String,
    not_after_unix: i64,
    days_left: i64,
    default: bool,
    sha256_fingerprint: &'a str,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_renewal: Option<String>,
}

fn json(status: StatusCode, value: &impl Serialize) -> Response {
    let body = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".into());
    let mut response = hyper::Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Why an admin request is refused before it reaches an endpoint.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminRefusal {
    /// DNS rebinding: a page on `attacker.example` whose name now resolves to this machine
    /// reaches the listener with its own name in `Host`. A browser sends an IP literal or
    /// `localhost` only when the page really came from that address.
    #[error("the admin listener answers only a Host that is an IP address or localhost, not `{0}` (DNS-rebinding protection): use http://127.0.0.1:PORT/ or the listener's IP")]
    ForeignHost(String),
    /// Cross-site request forgery: a "simple" POST from another site's page needs no CORS
    /// preflight, so its `Origin` is the only sign of where it came from.
    #[error("cross-site request refused: Origin `{origin}` is not this admin listener's (http://{host})")]
    ForeignOrigin { origin: String, host: String },
}

/// The Host a request names: HTTP/2's `:authority`, else the `Host` header.
fn request_host<B>(request: &hyper::Request<B>) -> Option<String> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.as_str().to_owned());
    }
    request
        .headers()
        .get(header::HOST)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// `host[:port]` without the port, IPv6 brackets removed.
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    }
}

fn is_local_or_ip(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || name.ends_with(".localhost")
}

/// The checks every admin request passes first. A request with no Host at all is let through:
/// browsers always send one, and HTTP/1.0 health checkers (HAProxy's `httpchk`) may not.
///
/// The Host check is for requests from this machine, which is where a rebound name in a local
/// browser comes from; a scraper elsewhere (the admin listening off loopback, as in a
/// container) may use the name it knows the listener by.
pub fn check_request<B>(request: &hyper::Request<B>) -> Result<(), AdminRefusal> {
    let host = request_host(request);
    let from_this_machine = request
        .extensions()
        .get::<crate::http::context::ConnectionInfo>()
        .is_none_or(|conn| conn.peer.ip().to_canonical().is_loopback());
    if let (true, Some(host)) = (from_this_machine, &host) {
        if !is_local_or_ip(host_name(host)) {
            return Err(AdminRefusal::ForeignHost(host.clone()));
        }
    }
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if let (false, Some(origin)) = (safe, request.headers().get(header::ORIGIN)) {
        let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
        let host = host.unwrap_or_default();
        // The admin's own pages are served over plain HTTP from the Host the request names.
        if !origin.eq_ignore_ascii_case(&format!("http://{host}")) {
            return Err(AdminRefusal::ForeignOrigin { origin, host });
        }
    }
    Ok(())
}

/// `%2F` (a prefix's `/`) and `%3A` as written by clients that escape them.
fn percent_decoded(text: &str) -> String {
    text.replace("%2F", "/")
        .replace("%2f", "/")
        .replace("%3A", ":")
        .replace("%3a", ":")
}

/// Answers one admin request.
pub async fn handle<B>(
    context: Arc<AdminState>,
    request: hyper::Request<B>,
) -> Result<Response, Infallible>
where
    B: http_body::Body<Data = bytes::Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Err(refusal) = check_request(&request) {
        tracing::warn!(%refusal, "admin request refused");
        return Ok(HttpError::Forbidden(refusal.to_string()).into_response());
    }
    if crate::hub::api::is_hub_path(request.uri().path()) {
        return Ok(hub_request(&context, request).await);
    }
    let path = request.uri().path();
    let method = request.method();
    let response = match (method, path) {
        (&Method::GET, "/metrics") => {
            let mut response = hyper::Response::new(full(context.metrics.encode()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        (&Method::GET, "/health") => {
            json(StatusCode::OK, &serde_json::json!({"status": "healthy"}))
        }
        (&Method::GET, "/ready") => {
            let state = context.certificates.load();
            let listening = context.listening.load(Ordering::Acquire);
            if listening && state.pending.is_empty() {
                json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
            } else {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({"status": "not ready", "listening": listening, "pending_certificates": state.pending}),
                )
            }
        }
        (&Method::GET, "/certificates") => {
            let state = context.certificates.load();
            let now = crate::certs::inspect::unix_now();
            let served: Vec<CertificateView<'_>> = state
                .served
                .iter()
                .map(|c| CertificateView {
                    names: &c.names,
                    file: c.cert_path.display().to_string(),
                    subject: &c.info.subject,
                    issuer: &c.info.issuer,
                    serial: &c.info.serial,
                    not_after: format_time(c.info.not_after),
                    not_after_unix: c.info.not_after,
                    days_left: c.info.remaining_secs(now).div_euclid(86_400),
                    default: c.is_default,
                    sha256_fingerprint: &c.info.sha256_fingerprint,
                    source: c.source,
                    next_renewal: c.next_renewal().map(format_time),
                })
                .collect();
            json(
                StatusCode::OK,
                &serde_json::json!({"certificates": served, "pending": state.pending}),
            )
        }
        (&Method::POST, "/reload") => match context.reload.reload().await {
            Ok(message) => json(
                StatusCode::OK,
                &serde_json::json!({"result": "success", "message": message}),
            ),
            Err(error) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &serde_json::json!({"result": "failure", "error": error.to_string()}),
            ),
        },
        (_, "/reload") => HttpError::MethodNotAllowed.into_response(),
        (&Method::GET, "/bans") => json(
            StatusCode::OK,
            &serde_json::json!({"bans": context.bans.list()}),
        ),
        (&Method::DELETE, path) if path.starts_with("/bans/") => {
            let target = percent_decoded(&path["/bans/".len()..]);
            let address = target.trim();
            if address.parse::<std::net::IpAddr>().is_err()
                && address.parse::<ipnet::IpNet>().is_err()
            {
                json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"result": "failure", "error": format!("`{target}` is not an IP address or a prefix (e.g. 203.0.113.7 or 2001:db8:1:2::/64)")}),
                )
            } else if context.bans.remove(&target) {
                json(
                    StatusCode::OK,
                    &serde_json::json!({"result": "removed", "ip": target}),
                )
            } else {
                json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({"result": "not banned", "ip": target}),
                )
            }
        }
        _ => HttpError::NotFound.into_response(),
    };
    Ok(response)
}

/// `/hub/*`: the body read (bounded), then the publish API.
async fn hub_request<B>(context: &AdminState, request: hyper::Request<B>) -> Response
where
    B: http_body::Body<Data = bytes::Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let (head, body) = request.into_parts();
    let body = match http_body_util::Limited::new(body, crate::hub::api::MAX_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                &serde_json::json!({"result": "failure", "error": format!("reading the body: {error}")}),
            )
        }
    };
    let (status, value) = crate::hub::api::handle(
        &context.hub,
        &head.method,
        head.uri.path(),
        head.uri.query(),
        body,
    )
    .await;
    json(status, &value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, host: Option<&str>, origin: Option<&str>) -> hyper::Request<()> {
        let mut builder = hyper::Request::builder().method(method).uri("/reload");
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn hosts_that_are_ip_addresses_or_localhost_pass() {
        for host in [
            "127.0.0.1:9090",
            "127.0.0.1",
            "[::1]:9090",
            "[::1]",
            "localhost:9090",
            "LOCALHOST",
            "localhost.",
            "app.localhost:9090",
            "10.1.2.3:9090",
            "0.0.0.0:9090",
        ] {
            assert_eq!(
                check_request(&request(Method::GET, Some(host), None)),
                Ok(()),
                "{host}"
            );
        }
        assert_eq!(check_request(&request(Method::GET, None, None)), Ok(()));
    }

    #[test]
    fn other_names_are_refused_as_dns_rebinding() {
        for host in [
            "attacker.example:9090",
            "attacker.example",
            "localhost.attacker.example",
            "127.0.0.1.nip.io:9090",
        ] {
            assert_eq!(
                check_request(&request(Method::GET, Some(host), None)),
                Err(AdminRefusal::ForeignHost(host.into())),
                "{host}"
            );
        }
    }

    #[test]
    fn a_scraper_on_another_machine_may_use_the_listeners_name() {
        let from = |peer: &str| {
            let mut request = request(Method::GET, Some("tlsgate:9090"), None);
            request
                .extensions_mut()
                .insert(crate::http::context::ConnectionInfo {
                    peer: peer.parse().unwrap(),
                    sni: None,
                    secure: false,
                    tls_version: None,
                    activity: None,
                    client_cert: None,
                });
            check_request(&request)
        };
        assert_eq!(from("172.17.0.5:41000"), Ok(()));
        for local in ["127.0.0.1:41000", "[::1]:41000", "[::ffff:127.0.0.1]:41000"] {
            assert_eq!(
                from(local),
                Err(AdminRefusal::ForeignHost("tlsgate:9090".into())),
                "{local}"
            );
        }
    }

    #[test]
    fn a_post_from_another_origin_is_refused() {
        let host = Some("127.0.0.1:9090");
        for origin in ["https://attacker.example", "null", "http://127.0.0.1:8080"] {
            assert_eq!(
                check_request(&request(Method::POST, host, Some(origin))),
                Err(AdminRefusal::ForeignOrigin {
                    origin: origin.into(),
                    host: "127.0.0.1:9090".into()
                }),
                "{origin}"
            );
        }
        // Its own origin, no Origin (curl, `tlsgate reload`), and reads from anywhere pass.
        assert_eq!(
            check_request(&request(Method::POST, host, Some("http://127.0.0.1:9090"))),
            Ok(())
        );
        assert_eq!(check_request(&request(Method::POST, host, None)), Ok(()));
        assert_eq!(
            check_request(&request(
                Method::GET,
                host,
                Some("https://attacker.example")
            )),
            Ok(())
        );
    }
}
