//! The request pipeline: every request on the main listener passes the same stages, in this
//! order, over one [`RequestContext`]:
//!
//! 1. **checks**: requests no route may see ([`checks::sanity`]), then `421` for a host other
//!    than the TLS connection's name ([`checks::misdirected`]), then the path normalised or
//!    refused ([`checks::normalized_path`]): routes and upstreams see the same path;
//! 2. **route**: host × path in the [`RouteTable`], `;parameters` ignored (`404` when nothing
//!    matches);
//! 3. **policy**: the route's [`Policy`] (Origin for WebSockets, body size), the same for plain
//!    requests and upgrades, before any target is touched;
//! 4. **target**: [`Target::Upstream`] (`proxy::forward`, or `proxy::tunnel` for a WebSocket)
//!    or [`Target::Builtin`];
//! 5. **response headers**: security headers on everything but a `101`;
//! 6. **metrics and access log**.
//!
//! Every stage returns `Result<_, HttpError>`: an error at any stage becomes its response in
//! one place, and still passes stages 5 and 6.

pub mod builtin;
pub mod checks;
pub mod policy;
pub mod routes;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::proxy::RouteSettings;
use crate::config::Settings;
use crate::http::context::{ConnectionInfo, RequestContext, TrustedProxies, UpstreamServer};
use crate::http::error::HttpError;
use crate::http::headers::SecurityHeaders;
use crate::http::{request_host, websocket, Response};
use crate::metrics::{Metrics, RouteStats};
use crate::policy::limits::{Limits, RouteLimiter};
use crate::proxy::{TunnelTerms, Upstreams};
pub use policy::{Policy, Verdict};
pub use routes::{Builtin, HostMatch, Matcher, Route, RouteTable, Target};

/// Everything a configuration decides for the requests of new connections: built whole on
/// start-up and on each reload, then swapped in.
#[derive(Debug)]
pub struct Pipeline {
    /// Empty on a plain (TLS off) listener: HSTS is never sent over plain HTTP.
    security_headers: SecurityHeaders,
    routes: RouteTable,
    /// The series of requests no route took: `none` with routes configured, `builtin`
    /// without (the built-in endpoints' own label).
    unmatched: Arc<RouteStats>,
    /// `unmatched`'s name, shared by every request's context until a route is found.
    unmatched_name: Arc<str>,
    trusted_proxies: TrustedProxies,
    /// The pools behind `Target::Upstream` routes, when any are configured.
    upstreams: Option<Arc<Upstreams>>,
    metrics: Arc<Metrics>,
    access_log: bool,
    echo: builtin::EchoContext,
    /// Per route key: cancelled when a reload removes the route, closing its WebSockets.
    route_closers: HashMap<String, CancellationToken>,
    /// How long after a reload removed their route WebSockets get, spread at random.
    reload_grace: Duration,
    /// The `jwt:` verifiers and `forward_auth:` services (kept across reloads when unchanged:
    /// fetched keys and cached verdicts with them).
    auth: AuthServices,
    /// Rate-limit zones, per-IP caps, bans, listener lists (handed over by reloads).
    limits: Arc<Limits>,
    /// Hosts with their own client auth, refused over connections without SNI.
    client_auth_names: crate::policy::client_cert::ClientAuthNames,
    /// The WSS hub: made with the first configuration, handed to each next one.
    hub: Arc<crate::hub::Hub>,
}

/// The named verifiers and forward-auth services of one configuration.
#[derive(Debug, Default)]
struct AuthServices {
    verifiers: crate::policy::jwt::Verifiers,
    forward_auth: std::collections::BTreeMap<String, Arc<crate::policy::forward_auth::ForwardAuth>>,
}

impl AuthServices {
    fn start(
        settings: &Settings,
        previous: Option<&AuthServices>,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let forward_auth = settings
            .auth
            .forward_auth
            .iter()
            .map(|(name, service)| {
                let kept = previous
                    .and_then(|p| p.forward_auth.get(name))
                    .filter(|old| old.settings == *service)
                    .cloned();
                let service = kept.unwrap_or_else(|| {
                    Arc::new(crate::policy::forward_auth::ForwardAuth::new(name, service))
                });
                (name.clone(), service)
            })
            .collect();
        Self {
            verifiers: crate::policy::jwt::Verifiers::start(
                &settings.auth.jwt,
                previous.map(|p| &p.verifiers),
                shutdown,
                tasks,
            ),
            forward_auth,
        }
    }
}

impl Pipeline {
    /// Builds routes, policies and targets from `settings`, and starts the upstream pools'
    /// background checks. `previous` (on reload) hands over pools whose settings did not
    /// change and the tokens of routes that stay, so their WebSockets stay open.
    pub fn new(
        settings: &Settings,
        tls: bool,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
        metrics: &Arc<Metrics>,
        previous: Option<&Pipeline>,
    ) -> Self {
        let proxy = &settings.proxy;
        let upstreams = proxy.is_enabled().then(|| {
            Arc::new(Upstreams::start(
                proxy,
                previous.and_then(|p| p.upstreams.as_deref()),
                shutdown,
                tasks,
            ))
        });
        let limits = Arc::new(Limits::new(settings, metrics, previous.map(|p| &*p.limits)));
        let auth = AuthServices::start(settings, previous.map(|p| &p.auth), shutdown, tasks);
        let echo = builtin::EchoContext {
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        };
        let hub_config = crate::hub::HubConfig::new(&settings.hub, settings.limits.send_timeout);
        let hub = match previous {
            Some(previous) => {
                previous.hub.configure(hub_config);
                previous.hub.clone()
            }
            None => crate::hub::Hub::new(hub_config, metrics, shutdown, tasks),
        };
        let hub_context = HubContext {
            hub: &hub,
            previous_closers: previous.map(|p| &p.route_closers),
            grace: settings.limits.reload_grace,
        };
        let (routes, unmatched) = route_table(
            settings,
            upstreams.as_deref(),
            metrics,
            &auth,
            &echo,
            &limits,
            &hub_context,
        );
        let route_closers = routes
            .iter()
            .map(|route| {
                let key = route.key();
                let closer = match &route.target {
                    // The endpoint holds its token already (its sessions answer to it).
                    Target::Hub(endpoint) => endpoint.closer.clone(),
                    _ => previous
                        .and_then(|p| p.route_closers.get(&key).cloned())
                        .unwrap_or_default(),
                };
                (key, closer)
            })
            .collect();
        Self {
            security_headers: if tls {
                SecurityHeaders::new(&settings.headers)
            } else {
                SecurityHeaders::default()
            },
            routes,
            unmatched_name: Arc::from(unmatched.name.as_str()),
            unmatched,
            trusted_proxies: TrustedProxies::new(proxy.trusted_proxies.clone()),
            upstreams,
            metrics: metrics.clone(),
            access_log: settings.access_log,
            echo,
            route_closers,
            reload_grace: settings.limits.reload_grace,
            auth,
            limits,
            client_auth_names: crate::policy::client_cert::ClientAuthNames::of(&settings.tls),
            hub,
        }
    }

    /// The hub, for the publish API.
    pub fn hub(&self) -> &Arc<crate::hub::Hub> {
        &self.hub
    }

    /// The limits state: accept-time admission (per-IP caps, bans, listener lists) and the
    /// ban table the admin listener lists.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    /// The upstream pools, for `upstream_server_up`.
    pub fn upstreams(&self) -> Option<&Arc<Upstreams>> {
        self.upstreams.as_ref()
    }

    /// Called when a reload replaced this pipeline with `next`: stops its pools' background
    /// checks and, after `grace`, closes WebSockets on routes `next` no longer has.
    pub fn retire(&self, next: &Pipeline, grace: Duration) {
        if let Some(upstreams) = &self.upstreams {
            upstreams.retire();
        }
        self.auth.verifiers.retire(&next.auth.verifiers);
        let removed: Vec<(String, CancellationToken)> = self
            .route_closers
            .iter()
            .filter(|(key, _)| !next.route_closers.contains_key(*key))
            .map(|(key, token)| (key.clone(), token.clone()))
            .collect();
        if removed.is_empty() {
            return;
        }
        let shutdown = self.echo.shutdown.clone();
        let hub = self.hub.clone();
        self.echo.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                () = shutdown.cancelled() => return,
            }
            for (route, token) in removed {
                tracing::info!(%route, "route removed by reload: closing its WebSockets (1001)");
                token.cancel();
            }
            // Hub sessions do not wait on their route's token: they are told.
            hub.registry.signal_removed();
        });
    }

    /// Runs one request through every stage.
    pub async fn handle(
        self: Arc<Self>,
        request: hyper::Request<Incoming>,
    ) -> Result<Response, Infallible> {
        let started = Instant::now();
        let conn = request
            .extensions()
            .get::<ConnectionInfo>()
            .cloned()
            .unwrap_or_else(|| ConnectionInfo {
                peer: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                sni: None,
                secure: false,
                tls_version: None,
                activity: None,
                client_cert: None,
            });
        // The path without its query: queries often carry tokens, which never reach the logs.
        let logged = self
            .access_log
            .then(|| (request.method().clone(), request.uri().path().to_owned()));
        let host = request_host(&request);
        let (client_ip, peer_trusted) = self
            .trusted_proxies
            .client_of(conn.peer.ip(), request.headers());
        let mut ctx = RequestContext {
            conn,
            host: host.unwrap_or_default(),
            client_ip,
            peer_trusted,
            route: self.unmatched_name.clone(),
            body_limit: 0,
            version: request.version(),
            started,
            claims: None,
            websocket_protocol: None,
            cors_origin: None,
            authorization_sent: request.headers().contains_key(http::header::AUTHORIZATION),
        };
        let (route, outcome) = self.stages(request, &mut ctx).await;
        let mut response = outcome.unwrap_or_else(HttpError::into_response);
        // Response headers.
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            self.security_headers.apply(response.headers_mut());
        }
        if let Some(route) = route {
            route.policy.on_response(&mut response, &ctx);
        }
        // Metrics and access log.
        let stats = route.map_or(&self.unmatched, |route| &route.stats);
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        stats.record(status, elapsed.as_secs_f64());
        if let Some((method, path)) = logged {
            let upstream = response
                .extensions()
                .get::<UpstreamServer>()
                .map(|u| &*u.0)
                .unwrap_or("-");
            let bytes = http_body::Body::size_hint(response.body()).exact();
            tracing::info!(
                target: "tlsgate::access",
                client = %ctx.conn.peer.ip(),
                tls = ctx.conn.tls_version.unwrap_or("-"),
                %method,
                %path,
                status,
                route = %stats.name,
                upstream,
                bytes = bytes.map(|b| b.to_string()).unwrap_or_else(|| "streamed".into()),
                // Whole microseconds: `0.031`, not `0.030865999999999998`.
                ms = elapsed.as_micros() as f64 / 1000.0,
                "request"
            );
        }
        Ok(response)
    }

    /// Stages 1–4: checks, route, policy, target. Returns the route (when one was found) with
    /// the outcome.
    async fn stages(
        &self,
        mut request: hyper::Request<Incoming>,
        ctx: &mut RequestContext,
    ) -> (Option<&Route>, Result<Response, HttpError>) {
        let websocket = websocket::is_websocket(&request);
        // 1. Checks.
        let host = (!ctx.host.is_empty()).then_some(ctx.host.as_str());
        if let Err(error) = checks::sanity(&request, websocket)
            .and_then(|()| checks::misdirected(host, &ctx.conn))
            .and_then(|()| self.client_auth_names.check(host, ctx.conn.sni.as_deref()))
        {
            return (None, Err(error));
        }
        match checks::normalized_path(request.uri().path()) {
            Ok(None) => {}
            Ok(Some(path)) => match with_path(request.uri(), &path) {
                Some(uri) => *request.uri_mut() = uri,
                None => return (None, Err(HttpError::BadRequest("malformed path"))),
            },
            Err(error) => return (None, Err(error)),
        }
        // 2. Route.
        let matched = crate::http::without_parameters(request.uri().path());
        let Some(route) = self.routes.find(&ctx.host, &matched) else {
            return (None, Err(HttpError::NotFound));
        };
        ctx.route = route.name.clone();
        ctx.body_limit = route.policy.max_body_size;
        // 3. Policy.
        match route
            .policy
            .evaluate(&mut request, ctx, websocket, &self.metrics)
            .await
        {
            Ok(Verdict::Pass) => {}
            Ok(Verdict::Answer(response)) => return (Some(route), Ok(response)),
            Err(error) => return (Some(route), Err(error)),
        }
        // 4. Target.
        let outcome = match &route.target {
            Target::Upstream(_) if ctx.host.is_empty() => {
                Err(HttpError::BadRequest("missing or invalid Host"))
            }
            Target::Upstream(pool) if websocket => {
                let terms = TunnelTerms {
                    idle: route.policy.websocket_idle_timeout,
                    closer: self
                        .route_closers
                        .get(&route.key())
                        .cloned()
                        .unwrap_or_default(),
                    grace: self.reload_grace,
                    messages: route.policy.websocket_messages,
                    shutdown: self.echo.shutdown.clone(),
                    tasks: self.echo.tasks.clone(),
                    metrics: self.metrics.clone(),
                };
                // Boxed: the upgrade's state is several KiB, and every request's future would
                // carry (and copy) that much room for it otherwise.
                Box::pin(crate::proxy::tunnel(pool, request, ctx, &terms)).await
            }
            Target::Upstream(pool) => crate::proxy::forward(pool, request, ctx).await,
            Target::Hub(endpoint) if websocket => {
                endpoint.prepare(&request, ctx).and_then(|start| {
                    let accept = builtin::opening_accept(&request)?;
                    let endpoint = endpoint.clone();
                    Ok(builtin::accept_websocket(
                        &self.echo,
                        &mut request,
                        accept,
                        move |upgraded, _shutdown, slot| {
                            crate::hub::session::run(endpoint, start, upgraded, slot)
                        },
                    ))
                })
            }
            Target::Hub(_) => Err(HttpError::UpgradeRequired),
            Target::Builtin(Builtin::Health) => builtin::health(request.method()),
            Target::Builtin(Builtin::Echo) => {
                builtin::echo(&self.echo, request, route.policy.websocket_idle_timeout)
            }
        };
        (Some(route), outcome)
    }
}

/// `uri` with its path replaced by `path` (the query kept).
fn with_path(uri: &http::Uri, path: &str) -> Option<http::Uri> {
    let path_and_query = match uri.query() {
        Some(query) => http::uri::PathAndQuery::try_from(format!("{path}?{query}")),
        None => http::uri::PathAndQuery::try_from(path),
    }
    .ok()?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    http::Uri::from_parts(parts).ok()
}

/// What the route table needs to make hub endpoints.
struct HubContext<'a> {
    hub: &'a Arc<crate::hub::Hub>,
    previous_closers: Option<&'a HashMap<String, CancellationToken>>,
    grace: Duration,
}

/// A route's `auth:` and `forward_auth:` with the verifier and service they name.
fn authentication(
    route: &RouteSettings,
    auth: &AuthServices,
    echo: &builtin::EchoContext,
) -> Option<Arc<policy::Authentication>> {
    // Validation refuses a route naming a missing verifier or service; should one be missing
    // anyway, the route refuses everything rather than pass unauthenticated.
    let jwt = route.auth.as_ref().map(|settings| {
        let name = settings.jwt.as_deref().unwrap_or_default();
        crate::policy::jwt::RouteAuth {
            settings: settings.clone(),
            verifier: auth
                .verifiers
                .get(name)
                .cloned()
                .unwrap_or_else(|| crate::policy::jwt::Verifier::refusing(name)),
        }
    });
    let forward_auth = route.forward_auth.as_ref().map(|named| {
        auth.forward_auth
            .get(&named.name)
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(crate::policy::forward_auth::ForwardAuth::unreachable(
                    &named.name,
                ))
            })
    });
    if jwt.is_none() && forward_auth.is_none() {
        return None;
    }
    Some(Arc::new(policy::Authentication {
        jwt,
        forward_auth,
        template: route
            .path
            .contains('{')
            .then(|| (route.path.clone(), route.exact)),
        upgrades: echo.clone(),
        token_optional: route.hub_endpoint.is_some(),
    }))
}

/// The routes of `settings`, each with its policy and target, and the series for requests no
/// route takes. With no proxy configured, the built-in endpoints are the routes.
fn route_table(
    settings: &Settings,
    upstreams: Option<&Upstreams>,
    metrics: &Arc<Metrics>,
    auth: &AuthServices,
    echo: &builtin::EchoContext,
    limits: &Arc<Limits>,
    hub: &HubContext<'_>,
) -> (RouteTable, Arc<RouteStats>) {
    let stats = |name: &str| Arc::new(RouteStats::new(metrics.clone(), name.to_owned()));
    let (limits, edge) = (&settings.limits, limits);
    let policy_of = |route: Option<&RouteSettings>| Policy {
        allowed_origins: route.map(|r| r.allowed_origins.clone()).unwrap_or_default(),
        max_body_size: route
            .and_then(|r| r.max_body_size)
            .unwrap_or(limits.max_body_size),
        websocket_idle_timeout: route
            .and_then(|r| r.websocket_idle_timeout)
            .unwrap_or(limits.websocket_idle_timeout),
        auth: route.and_then(|r| authentication(r, auth, echo)),
        cors: route
            .and_then(|r| r.cors.as_ref())
            .map(|c| Arc::new(crate::policy::cors::Cors::new(&c.policy))),
        websocket_messages: route.and_then(|r| r.websocket),
        limits: route.map_or_else(|| RouteLimiter::none(edge), |r| edge.route(&r.limits)),
        client_cert: route.map(|r| r.client_cert.clone()).unwrap_or_default(),
    };
    let proxy = &settings.proxy;
    let route_name =
        |route: &RouteSettings| format!("{}{}", route.host.as_deref().unwrap_or("*"), route.path);
    let route_to = |route: &RouteSettings, name: String, target: Target| Route {
        stats: stats(&name),
        name: name.into(),
        matcher: Matcher {
            host: HostMatch::of(route.host.as_deref()),
            path: route.path.clone(),
            exact: route.exact,
        },
        policy: policy_of(Some(route)),
        target,
    };
    let hub_route = |route: &RouteSettings, index: usize| {
        let endpoint = settings.hub.endpoints.get(index)?.clone();
        let name = route_name(route);
        // A kept endpoint keeps its sessions' token.
        let closer = hub
            .previous_closers
            .and_then(|closers| closers.get(&Route::hub_key(&name)).cloned())
            .unwrap_or_default();
        let verifier = route
            .auth
            .as_ref()
            .and_then(|a| a.jwt.as_deref())
            .and_then(|name| auth.verifiers.get(name).cloned());
        let endpoint = crate::hub::endpoint::Endpoint::new(
            endpoint,
            hub.hub.clone(),
            verifier,
            closer,
            hub.grace,
        );
        Some(route_to(route, name, Target::Hub(Arc::new(endpoint))))
    };
    let mut hub_routes: Vec<Route> = proxy
        .routes
        .iter()
        .filter_map(|route| hub_route(route, route.hub_endpoint?))
        .collect();
    let builtin_route = |stats: &Arc<RouteStats>, path: &str, target: Builtin| Route {
        name: "builtin".into(),
        stats: stats.clone(),
        matcher: Matcher {
            host: HostMatch::Any,
            path: path.into(),
            exact: true,
        },
        policy: policy_of(None),
        target: Target::Builtin(target),
    };
    match upstreams {
        Some(upstreams) => {
            let upstream_route = |route: &RouteSettings, name: String| {
                let pool = upstreams.pool(&route.upstream)?.clone();
                Some(route_to(route, name, Target::Upstream(pool)))
            };
            let mut routes: Vec<Route> = proxy
                .routes
                .iter()
                .filter(|route| route.hub_endpoint.is_none())
                .filter_map(|route| upstream_route(route, route_name(route)))
                .collect();
            routes.append(&mut hub_routes);
            let default = proxy.default_route.as_ref().and_then(|target| {
                let route = RouteSettings {
                    upstream: target.clone(),
                    ..RouteSettings::placeholder("/")
                };
                upstream_route(&route, "default".into())
            });
            (RouteTable::new(routes, default), stats("none"))
        }
        None if !hub_routes.is_empty() => {
            // A hub without a proxy: its endpoints, and `/health` unless an endpoint has it.
            if !hub_routes.iter().any(|r| r.matcher.path == "/health") {
                hub_routes.push(builtin_route(&stats("builtin"), "/health", Builtin::Health));
            }
            (RouteTable::new(hub_routes, None), stats("none"))
        }
        None => {
            let builtin_stats = stats("builtin");
            let builtin = |path: &str, target: Builtin| builtin_route(&builtin_stats, path, target);
            let routes = vec![
                builtin("/health", Builtin::Health),
                builtin("/ws", Builtin::Echo),
            ];
            (RouteTable::new(routes, None), builtin_stats.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(routes: &str) -> Settings {
        let overrides = crate::config::Overrides {
            data_dir: Some(std::env::temp_dir().join("tlsgate-pipeline-test")),
            ..Default::default()
        };
        let yaml = format!(
            "limits:\n  reload_grace: 10s\nupstreams:\n  app:\n    servers: [http://127.0.0.1:9]\nroutes:\n{routes}"
        );
        crate::config::load_str(&yaml, None, &overrides, &|_| None).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_closes_removed_routes_after_the_grace_and_keeps_the_others() {
        let (shutdown, tasks) = (CancellationToken::new(), TaskTracker::new());
        let metrics = Arc::new(Metrics::new());
        let both = "  - path: /ws\n    upstream: app\n  - path: /chat\n    upstream: app\n";
        let old = Pipeline::new(&settings(both), true, &shutdown, &tasks, &metrics, None);
        let closer = |pipeline: &Pipeline, path: &str| {
            let route = pipeline.routes.find("example.com", path).unwrap();
            pipeline.route_closers[&route.key()].clone()
        };
        let (ws, chat) = (closer(&old, "/ws"), closer(&old, "/chat"));
        let only_ws = "  - path: /ws\n    upstream: app\n";
        let new = Pipeline::new(
            &settings(only_ws),
            true,
            &shutdown,
            &tasks,
            &metrics,
            Some(&old),
        );
        old.retire(&new, Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(9_900)).await;
        assert!(!chat.is_cancelled(), "closed before the grace ran out");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            chat.is_cancelled(),
            "the removed route's WebSockets are told to close"
        );
        assert!(!ws.is_cancelled() && !closer(&new, "/ws").is_cancelled());
        // A kept route hands its very token over: its open tunnels answer to the new one.
        ws.cancel();
        assert!(closer(&new, "/ws").is_cancelled());
        shutdown.cancel();
    }
}
