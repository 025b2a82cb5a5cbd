//! The reverse proxy: routes to upstream pools, HTTP forwarding with a pooled keep-alive
//! client, WebSocket tunnels spliced byte for byte, balancing and health.

pub mod body;
pub mod forward;
pub mod headers;
pub mod health;
pub mod pool;
pub mod routes;
pub mod tunnel;
pub mod upstream;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::proxy::{url_upstream, RouteSettings};
use crate::config::Settings;
use pool::Pool;
use routes::{HostMatch, Route, RouteTable};

/// Everything the proxy needs per request, built once per configuration.
#[derive(Debug)]
pub struct Proxy {
    pub routes: RouteTable,
    pools: Vec<Arc<Pool>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    trusted_proxies: Vec<ipnet::IpNet>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// Stops this proxy's health checks once a reload replaced it.
    health_stop: CancellationToken,
    /// Per route name: cancelled when a reload removes the route, closing its WebSockets.
    route_closers: HashMap<String, CancellationToken>,
    /// How long after a reload removed their route WebSockets get, spread at random.
    pub reload_grace: Duration,
}

impl Proxy {
    /// Builds pools and routes, and starts active health checks (stopped by `shutdown`).
    pub fn new(
        settings: &Settings,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        metrics: Arc<crate::metrics::Metrics>,
        previous: Option<&Proxy>,
    ) -> Self {
        let proxy = &settings.proxy;
        // A pool whose settings did not change is kept across a reload: its servers' health
        // and its sticky-cookie key carry over.
        let reuse = |name: &str, upstream: &crate::config::proxy::UpstreamSettings| {
            previous
                .and_then(|p| {
                    p.pools
                        .iter()
                        .find(|pool| pool.name == name && pool.settings == *upstream)
                })
                .cloned()
        };
        let mut pools: HashMap<String, Arc<Pool>> = proxy
            .upstreams
            .iter()
            .map(|(name, upstream)| {
                let pool =
                    reuse(name, upstream).unwrap_or_else(|| Arc::new(Pool::new(name, upstream)));
                (name.clone(), pool)
            })
            .collect();
        let mut pool_for = |target: &str| -> Arc<Pool> {
            pools
                .entry(target.to_owned())
                .or_insert_with(|| {
                    let settings = url_upstream(target);
                    reuse(target, &settings)
                        .unwrap_or_else(|| Arc::new(Pool::new(target, &settings)))
                })
                .clone()
        };
        let make_route = |route: &RouteSettings, name: String, pool: Arc<Pool>| Route {
            stats: Arc::new(crate::metrics::RouteStats::new(
                metrics.clone(),
                name.clone(),
            )),
            name,
            host: match &route.host {
                None => HostMatch::Any,
                Some(host) => match host.strip_prefix("*.") {
                    Some(parent) => HostMatch::Wildcard(parent.to_owned()),
                    None => HostMatch::Exact(host.clone()),
                },
            },
            path: route.path.clone(),
            exact: route.exact,
            pool,
            allowed_origins: route.allowed_origins.clone(),
            websocket_idle_timeout: route
                .websocket_idle_timeout
                .unwrap_or(settings.limits.websocket_idle_timeout),
            max_body_size: route.max_body_size.unwrap_or(settings.limits.max_body_size),
        };
        let routes: Vec<Route> = proxy
            .routes
            .iter()
            .map(|route| {
                let name = format!("{}{}", route.host.as_deref().unwrap_or("*"), route.path);
                make_route(route, name, pool_for(&route.upstream))
            })
            .collect();
        let default = proxy.default_route.as_ref().map(|target| {
            let route = RouteSettings {
                host: None,
                path: "/".into(),
                exact: false,
                upstream: target.clone(),
                allowed_origins: Vec::new(),
                websocket_idle_timeout: None,
                max_body_size: None,
            };
            make_route(&route, "default".into(), pool_for(target))
        });
        let health_stop = shutdown.child_token();
        for pool in pools.values() {
            if pool.settings.health_check.is_some() {
                tasks.spawn(health::run(pool.clone(), health_stop.clone()));
            }
            if pool.settings.keepalive > 0 && !pool.settings.h2c {
                tasks.spawn(pool.clone().sweep_idle_connections(health_stop.clone()));
            }
        }
        let mut route_closers = HashMap::new();
        for name in routes.iter().chain(default.iter()).map(Route::key) {
            let closer = previous
                .and_then(|p| p.route_closers.get(&name).cloned())
                .unwrap_or_default();
            route_closers.insert(name, closer);
        }
        let mut all_pools: Vec<Arc<Pool>> = pools.into_values().collect();
        all_pools.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            routes: RouteTable::new(routes, default),
            pools: all_pools,
            metrics,
            trusted_proxies: proxy.trusted_proxies.clone(),
            shutdown,
            tasks,
            health_stop,
            route_closers,
            reload_grace: settings.limits.reload_grace,
        }
    }

    /// The token that closes `route`'s WebSockets when a reload removes the route.
    pub fn route_closer(&self, route: &str) -> CancellationToken {
        self.route_closers.get(route).cloned().unwrap_or_default()
    }

    /// Called when a reload replaced this proxy: stops its health checks and, after `grace`,
    /// closes WebSockets on routes the new configuration no longer has.
    pub fn retire(&self, next: Option<&Proxy>, grace: std::time::Duration) {
        self.health_stop.cancel();
        let removed: Vec<(String, CancellationToken)> = self
            .route_closers
            .iter()
            .filter(|(name, _)| next.is_none_or(|n| !n.route_closers.contains_key(*name)))
            .map(|(name, token)| (name.clone(), token.clone()))
            .collect();
        if removed.is_empty() {
            return;
        }
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                () = shutdown.cancelled() => return,
            }
            for (name, token) in removed {
                tracing::info!(route = %name, "route removed by reload: closing its WebSockets (1001)");
                token.cancel();
            }
        });
    }

    /// Every upstream pool, for health metrics.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// How long a health probe or a tunnel's upstream handshake may take, at most.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);
