//! The reverse-proxy part of the configuration: `upstreams:`, `routes:`, `default_route`,
//! `trusted_proxies` — file schema, typed settings and their validation.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use serde_saphyr::Spanned;

use super::names::valid_name;
use super::units::{self, ConfigDuration, ConfigSize};
use super::{normalize_dns_name, ConfigError, Origin};

// ---------- file schema ----------

/// Idle pooled connections kept per upstream server. Generous, as HAProxy keeps all of them:
/// a burst of concurrent requests (HTTP/2 clients multiplex many) needs that many upstream
/// connections, and with a small cap the excess is closed after each burst and opened again for
/// the next. An idle connection costs a descriptor and a few KiB; `keepalive_timeout` ends it.
pub const DEFAULT_KEEPALIVE: usize = 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub servers: Vec<Spanned<ServerFile>>,
    pub balance: Option<Spanned<String>>,
    pub sticky_cookie: Option<String>,
    pub cookie_secret: Option<String>,
    pub max_fails: Option<u32>,
    pub fail_timeout: Option<ConfigDuration>,
    pub keepalive: Option<usize>,
    pub keepalive_timeout: Option<ConfigDuration>,
    pub connect_timeout: Option<ConfigDuration>,
    pub response_timeout: Option<ConfigDuration>,
    pub send_timeout: Option<ConfigDuration>,
    pub h2c: Option<bool>,
    pub health_check: Option<HealthCheckFile>,
}

/// A server: `http://host:port`, or a mapping with weight and flags.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ServerFile {
    Url(String),
    Full(ServerMap),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerMap {
    pub url: String,
    pub weight: Option<u32>,
    pub backup: Option<bool>,
    pub max_conns: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    pub path: Option<String>,
    pub interval: Option<ConfigDuration>,
    pub timeout: Option<ConfigDuration>,
    pub expect: Option<u16>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub host: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub exact: Option<bool>,
    /// Required for a route; none for a hub endpoint (its target is the hub).
    pub upstream: Option<Spanned<String>>,
    pub allowed_origins: Option<Vec<String>>,
    pub websocket_idle_timeout: Option<ConfigDuration>,
    pub max_body_size: Option<ConfigSize>,
    pub auth: Option<Spanned<super::jwt::AuthFile>>,
    pub forward_auth: Option<Spanned<String>>,
    /// A named CORS policy or one in place (resolved in `cors.rs`).
    pub cors: Option<Spanned<super::cors::CorsRouteFile>>,
    /// Message limits inside proxied WebSockets (resolved in `websocket.rs`).
    pub websocket: Option<Spanned<super::websocket::WebSocketFile>>,
    pub rate_limit: Option<Vec<Spanned<String>>>,
    pub allow: Option<Vec<Spanned<String>>>,
    pub deny: Option<Vec<Spanned<String>>>,
    pub require_client_cert: Option<bool>,
    pub client_cert: Option<Spanned<super::client_auth::ClientCertRuleFile>>,
    pub pass_client_cert: Option<Spanned<String>>,
}

// ---------- settings ----------

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxySettings {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub upstreams: BTreeMap<String, UpstreamSettings>,
    /// The routes, then one per hub endpoint (`hub_endpoint` set).
    #[serde(
        skip_serializing_if = "no_plain_routes",
        serialize_with = "serialize_routes"
    )]
    pub routes: Vec<RouteSettings>,
    /// Where requests no route matches go (an upstream name or URL); none: `404`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_route: Option<String>,
    /// Peers whose `X-Forwarded-*` headers are believed; from anyone else they are replaced.
    #[serde(serialize_with = "serialize_nets")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

fn no_plain_routes(routes: &[RouteSettings]) -> bool {
    routes.iter().all(|r| r.hub_endpoint.is_some())
}

impl ProxySettings {
    /// Whether anything is proxied: a route to an upstream or a default route.
    pub fn is_enabled(&self) -> bool {
        self.routes.iter().any(|r| r.hub_endpoint.is_none()) || self.default_route.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamSettings {
    pub servers: Vec<ServerSettings>,
    pub balance: Balance,
    pub sticky_cookie: String,
    #[serde(skip)]
    pub cookie_secret: Option<String>,
    pub max_fails: u32,
    #[serde(serialize_with = "units::serialize_duration")]
    pub fail_timeout: Duration,
    pub keepalive: usize,
    #[serde(serialize_with = "units::serialize_duration")]
    pub keepalive_timeout: Duration,
    #[serde(serialize_with = "units::serialize_duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "units::serialize_duration")]
    pub response_timeout: Duration,
    #[serde(serialize_with = "units::serialize_duration")]
    pub send_timeout: Duration,
    pub h2c: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerSettings {
    /// `http://host:port`, normalised.
    pub url: String,
    pub weight: u32,
    pub backup: bool,
    /// 0: unlimited.
    pub max_conns: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastConn,
    IpHash,
    Cookie,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheck {
    pub path: String,
    #[serde(serialize_with = "units::serialize_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "units::serialize_duration")]
    pub timeout: Duration,
    pub expect: u16,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub path: String,
    pub exact: bool,
    /// An upstream name, or an `http://` URL; empty for a hub endpoint.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub upstream: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_duration"
    )]
    pub websocket_idle_timeout: Option<Duration>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_size"
    )]
    pub max_body_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<super::jwt::RouteAuthSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_auth: Option<super::jwt::NamedRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<super::cors::RouteCors>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket: Option<super::websocket::MessageLimits>,
    #[serde(flatten)]
    pub limits: super::limits::RouteLimits,
    #[serde(flatten)]
    pub client_cert: super::client_auth::RouteClientCert,
    /// For a route made from `hub.endpoints[i]`: `i` (its target is the hub).
    #[serde(skip)]
    pub hub_endpoint: Option<usize>,
}

impl RouteSettings {
    /// A route on `path` with every policy at its default and no target.
    pub fn placeholder(path: &str) -> Self {
        Self {
            host: None,
            path: path.to_owned(),
            exact: false,
            upstream: String::new(),
            allowed_origins: Vec::new(),
            websocket_idle_timeout: None,
            max_body_size: None,
            auth: None,
            forward_auth: None,
            cors: None,
            websocket: None,
            limits: Default::default(),
            client_cert: Default::default(),
            hub_endpoint: None,
        }
    }
}

/// The routes as written under `routes:` (hub endpoints print under `hub.endpoints`).
fn serialize_routes<S: Serializer>(routes: &[RouteSettings], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(routes.iter().filter(|r| r.hub_endpoint.is_none()))
}

fn serialize_nets<S: Serializer>(nets: &[ipnet::IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(|n| n.to_string()))
}

fn serialize_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => units::serialize_duration(d, s),
        None => s.serialize_none(),
    }
}

fn serialize_opt_size<S: Serializer>(b: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match b {
        Some(b) => units::serialize_size(b, s),
        None => s.serialize_none(),
    }
}

// ---------- validation ----------

/// `http://host[:port]` (no path) → `http://host:port`.
pub fn normalize_upstream_url(text: &str) -> Result<String, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|_| format!("`{text}` is not a URL (use http://HOST:PORT)"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "`{text}`: upstreams are plain HTTP (tlsgate terminates TLS in front of them); use http://"
            ))
        }
        _ => return Err(format!("`{text}` needs the http:// scheme")),
    }
    let host = uri.host().ok_or_else(|| format!("`{text}` has no host"))?;
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!(
            "`{text}`: an upstream URL has no path (routes keep the request's path)"
        ));
    }
    let port = uri.port_u16().unwrap_or(80);
    Ok(format!("http://{host}:{port}"))
}

fn positive(
    value: Option<ConfigDuration>,
    default: u64,
    at: &Origin,
    field: &str,
) -> Result<Duration, ConfigError> {
    let duration = value.map(|d| d.0).unwrap_or(Duration::from_secs(default));
    if duration.is_zero() || duration > Duration::from_secs(365 * 86_400) {
        return Err(ConfigError::invalid(
            at.clone(),
            field,
            "must be greater than zero and at most 365d",
        ));
    }
    Ok(duration)
}

pub struct ProxyInput<'a> {
    pub upstreams: Option<BTreeMap<String, Spanned<UpstreamFile>>>,
    pub routes: Option<Vec<Spanned<RouteFile>>>,
    /// `hub.endpoints` as routes (no upstream), validated the same way.
    pub hub_routes: Vec<Spanned<RouteFile>>,
    pub default_route: Option<(String, Origin)>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub origin: &'a dyn Fn(u64, u64) -> Origin,
}

fn at<T>(input: &ProxyInput<'_>, spanned: &Spanned<T>) -> Origin {
    super::origin_of(input.origin, spanned)
}

pub fn validate(mut input: ProxyInput<'_>) -> Result<ProxySettings, ConfigError> {
    let mut upstreams = BTreeMap::new();
    for (name, spanned) in input.upstreams.iter().flatten() {
        let origin = at(&input, spanned);
        if !valid_name(name) {
            return Err(ConfigError::invalid(
                origin,
                "upstreams",
                format!("`{name}` is not a valid upstream name (letters, digits, - _ .)"),
            ));
        }
        upstreams.insert(name.clone(), upstream_settings(&input, name, spanned)?);
    }

    let check_target =
        |target: &str, origin: &Origin, field: &'static str| -> Result<String, ConfigError> {
            if target.contains("://") {
                normalize_upstream_url(target)
                    .map_err(|reason| ConfigError::invalid(origin.clone(), field, reason))
            } else if upstreams.contains_key(target) {
                Ok(target.to_owned())
            } else {
                Err(ConfigError::UnknownUpstream {
                    origin: origin.clone(),
                    field,
                    target: target.to_owned(),
                    defined: upstreams.keys().cloned().collect(),
                })
            }
        };

    let mut routes = Vec::new();
    let plain = input.routes.take().into_iter().flatten().map(|r| (r, None));
    let hub = std::mem::take(&mut input.hub_routes)
        .into_iter()
        .enumerate()
        .map(|(i, r)| (r, Some(i)));
    for (spanned, hub_endpoint) in plain.chain(hub) {
        let origin = at(&input, &spanned);
        let file = spanned.value;
        let host = match &file.host {
            Some(host) => Some(normalize_dns_name(&host.value).map_err(|e| {
                ConfigError::invalid(at(&input, host), "routes.host", e.to_string())
            })?),
            None => None,
        };
        let path = match &file.path {
            Some(path) if !path.value.starts_with('/') => {
                return Err(ConfigError::invalid(
                    at(&input, path),
                    "routes.path",
                    format!("`{}` must start with /", path.value),
                ))
            }
            Some(path) => path.value.clone(),
            None => "/".to_owned(),
        };
        super::jwt::path_parameters(&path)
            .map_err(|e| ConfigError::invalid(origin.clone(), "routes.path", e))?;
        let auth = super::jwt::route_auth(file.auth, &path, input.origin)?;
        let upstream = match (&file.upstream, hub_endpoint) {
            (_, Some(_)) => String::new(),
            (Some(upstream), None) => {
                check_target(&upstream.value, &at(&input, upstream), "routes.upstream")?
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    origin,
                    "routes.upstream",
                    "a route needs an upstream (a name under upstreams: or an http:// URL)",
                ))
            }
        };
        let mut allowed_origins = Vec::new();
        for allowed in file.allowed_origins.unwrap_or_default() {
            let trimmed = allowed.trim_end_matches('/').to_ascii_lowercase();
            if !(trimmed.starts_with("https://") || trimmed.starts_with("http://")) {
                return Err(ConfigError::invalid(
                    origin.clone(),
                    "routes.allowed_origins",
                    format!("`{allowed}` is not an origin (scheme://host[:port])"),
                ));
            }
            allowed_origins.push(trimmed);
        }
        routes.push(RouteSettings {
            host,
            path,
            exact: file.exact.unwrap_or(false),
            upstream,
            allowed_origins,
            websocket_idle_timeout: match file.websocket_idle_timeout {
                Some(d) => Some(positive(
                    Some(d),
                    0,
                    &origin,
                    "routes.websocket_idle_timeout",
                )?),
                None => None,
            },
            max_body_size: file.max_body_size.map(|s| s.0),
            auth,
            forward_auth: file.forward_auth.as_ref().map(|name| super::jwt::NamedRef {
                name: name.value.clone(),
                origin: Some(at(&input, name)),
            }),
            cors: None,
            websocket: None,
            limits: super::limits::route_limits(
                file.rate_limit,
                file.allow,
                file.deny,
                input.origin,
            )?,
            client_cert: super::client_auth::route_client_cert(
                file.require_client_cert,
                file.client_cert,
                file.pass_client_cert,
                input.origin,
            )?,
            hub_endpoint,
        });
    }

    let default_route = match input.default_route.take() {
        Some((target, origin)) => Some(check_target(&target, &origin, "default_route")?),
        None => None,
    };

    let mut trusted_proxies = Vec::new();
    for entry in input.trusted_proxies.take().into_iter().flatten() {
        let text = entry.value.trim();
        let net = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                ConfigError::invalid(
                    at(&input, &entry),
                    "trusted_proxies",
                    format!("`{text}` is not an IP address or CIDR block"),
                )
            })?;
        trusted_proxies.push(net);
    }

    Ok(ProxySettings {
        upstreams,
        routes,
        default_route,
        trusted_proxies,
    })
}

fn upstream_settings(
    input: &ProxyInput<'_>,
    name: &str,
    spanned: &Spanned<UpstreamFile>,
) -> Result<UpstreamSettings, ConfigError> {
    let origin = at(input, spanned);
    let file = &spanned.value;
    let field = |f: &str| format!("upstreams.{name}.{f}");
    if file.servers.is_empty() {
        return Err(ConfigError::invalid(
            origin,
            field("servers"),
            "needs at least one server",
        ));
    }
    let mut servers = Vec::new();
    for server in &file.servers {
        let (url, weight, backup, max_conns) = match &server.value {
            ServerFile::Url(url) => (url.clone(), 1, false, 0),
            ServerFile::Full(map) => (
                map.url.clone(),
                map.weight.unwrap_or(1),
                map.backup.unwrap_or(false),
                map.max_conns.unwrap_or(0),
            ),
        };
        let url = normalize_upstream_url(&url)
            .map_err(|reason| ConfigError::invalid(at(input, server), field("servers"), reason))?;
        if !(1..=1000).contains(&weight) {
            return Err(ConfigError::invalid(
                at(input, server),
                field("servers.weight"),
                "must be between 1 and 1000",
            ));
        }
        servers.push(ServerSettings {
            url,
            weight,
            backup,
            max_conns,
        });
    }
    if servers.iter().all(|s| s.backup) {
        return Err(ConfigError::AllServersBackup {
            origin,
            upstream: name.to_owned(),
        });
    }
    let balance = match file.balance.as_ref().map(|b| b.value.as_str()) {
        None | Some("round_robin") => Balance::RoundRobin,
        Some("least_conn") => Balance::LeastConn,
        Some("ip_hash") => Balance::IpHash,
        Some("cookie") => Balance::Cookie,
        Some(other) => {
            return Err(ConfigError::invalid(
                file.balance
                    .as_ref()
                    .map(|b| at(input, b))
                    .unwrap_or(origin),
                field("balance"),
                format!(
                    "`{other}` is not a policy: use round_robin, least_conn, ip_hash or cookie"
                ),
            ))
        }
    };
    let health_check = match &file.health_check {
        None => None,
        Some(check) => {
            let path = check.path.clone().unwrap_or_else(|| "/health".into());
            if !path.starts_with('/') {
                return Err(ConfigError::invalid(
                    origin,
                    field("health_check.path"),
                    "must start with /",
                ));
            }
            Some(HealthCheck {
                path,
                interval: positive(check.interval, 10, &origin, &field("health_check.interval"))?,
                timeout: positive(check.timeout, 2, &origin, &field("health_check.timeout"))?,
                expect: check.expect.unwrap_or(200),
                rise: check.rise.unwrap_or(2).max(1),
                fall: check.fall.unwrap_or(3).max(1),
            })
        }
    };
    let sticky_cookie = file
        .sticky_cookie
        .clone()
        .unwrap_or_else(|| "TLSGATE_SERVER".into());
    if http::HeaderName::from_bytes(sticky_cookie.as_bytes()).is_err()
        || sticky_cookie.contains(['=', ';'])
    {
        return Err(ConfigError::invalid(
            origin,
            field("sticky_cookie"),
            format!("`{sticky_cookie}` is not a cookie name"),
        ));
    }
    Ok(UpstreamSettings {
        servers,
        balance,
        sticky_cookie,
        cookie_secret: file.cookie_secret.clone(),
        max_fails: file.max_fails.unwrap_or(1),
        fail_timeout: positive(file.fail_timeout, 10, &origin, &field("fail_timeout"))?,
        keepalive: file.keepalive.unwrap_or(DEFAULT_KEEPALIVE),
        keepalive_timeout: positive(
            file.keepalive_timeout,
            60,
            &origin,
            &field("keepalive_timeout"),
        )?,
        connect_timeout: positive(file.connect_timeout, 5, &origin, &field("connect_timeout"))?,
        response_timeout: positive(
            file.response_timeout,
            60,
            &origin,
            &field("response_timeout"),
        )?,
        send_timeout: positive(file.send_timeout, 60, &origin, &field("send_timeout"))?,
        h2c: file.h2c.unwrap_or(false),
        health_check,
    })
}

/// Defaults for an upstream named only by URL in a route.
pub fn url_upstream(url: &str) -> UpstreamSettings {
    UpstreamSettings {
        servers: vec![ServerSettings {
            url: url.to_owned(),
            weight: 1,
            backup: false,
            max_conns: 0,
        }],
        balance: Balance::RoundRobin,
        sticky_cookie: "TLSGATE_SERVER".into(),
        cookie_secret: None,
        max_fails: 1,
        fail_timeout: Duration::from_secs(10),
        keepalive: DEFAULT_KEEPALIVE,
        keepalive_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(60),
        send_timeout: Duration::from_secs(60),
        h2c: false,
        health_check: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        assert_eq!(
            normalize_upstream_url("http://127.0.0.1:8000"),
            Ok("http://127.0.0.1:8000".into())
        );
        assert_eq!(
            normalize_upstream_url("http://api-gateway"),
            Ok("http://api-gateway:80".into())
        );
        assert!(normalize_upstream_url("https://x:1")
            .unwrap_err()
            .contains("plain HTTP"));
        assert!(normalize_upstream_url("http://x:1/api").is_err());
        assert!(normalize_upstream_url("127.0.0.1:8000").is_err());
    }
}
