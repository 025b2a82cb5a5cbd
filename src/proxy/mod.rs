//! The upstream side of the edge: pools of servers with balancing and health, one connector,
//! HTTP/1.1 and h2c forwarding, and WebSocket tunnels spliced byte for byte. Which requests
//! come here, and under what policy, is the pipeline's decision; nothing here knows a route.

pub mod body;
pub mod connect;
pub mod forward;
mod gate;
pub mod headers;
pub mod health;
pub mod idle;
pub mod pool;
pub mod response;
pub mod tunnel;
pub mod upstream;

pub use forward::forward;
pub use tunnel::{tunnel, TunnelTerms};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::proxy::{url_upstream, ProxySettings, UpstreamSettings};
use pool::Pool;

/// How long a health probe or a tunnel's upstream handshake may take, at most.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// Every pool one configuration uses, and the background work that keeps them fit (active
/// health checks, idle-connection sweeps), stopped when a reload replaces them.
#[derive(Debug)]
pub struct Upstreams {
    /// Sorted by name: named upstreams, and one per URL a route names directly.
    pools: Vec<Arc<Pool>>,
    stop: CancellationToken,
}

impl Upstreams {
    /// Builds the pools of `settings` and starts their health checks and sweeps under
    /// `shutdown`. A pool whose settings did not change since `previous` is kept: its servers'
    /// health and its sticky-cookie key carry over a reload.
    pub fn start(
        settings: &ProxySettings,
        previous: Option<&Upstreams>,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let reuse = |name: &str, upstream: &UpstreamSettings| {
            previous
                .and_then(|p| {
                    p.pools
                        .iter()
                        .find(|pool| pool.name == name && pool.settings == *upstream)
                })
                .cloned()
                .unwrap_or_else(|| Arc::new(Pool::new(name, upstream)))
        };
        let mut pools: HashMap<&str, Arc<Pool>> = settings
            .upstreams
            .iter()
            .map(|(name, upstream)| (name.as_str(), reuse(name, upstream)))
            .collect();
        let targets = settings
            .routes
            .iter()
            .map(|route| route.upstream.as_str())
            .chain(settings.default_route.as_deref());
        for target in targets {
            pools
                .entry(target)
                .or_insert_with(|| reuse(target, &url_upstream(target)));
        }
        let stop = shutdown.child_token();
        for pool in pools.values() {
            if pool.settings.health_check.is_some() {
                tasks.spawn(health::run(pool.clone(), stop.clone()));
            }
            if pool.settings.keepalive > 0 && !pool.settings.h2c {
                tasks.spawn(pool.clone().sweep_idle_connections(stop.clone()));
            }
        }
        let mut pools: Vec<Arc<Pool>> = pools.into_values().collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Self { pools, stop }
    }

    /// The pool for a route's `upstream`: a named upstream, or the URL's own pool.
    pub fn pool(&self, target: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|pool| pool.name == target)
    }

    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// Stops this set's health checks and sweeps (a reload replaced it).
    pub fn retire(&self) {
        self.stop.cancel();
    }
}

impl crate::metrics::UpstreamStates for Upstreams {
    fn each_server(&self, report: &mut dyn FnMut(&str, &str, bool)) {
        for pool in &self.pools {
            for server in &pool.servers {
                report(&pool.name, &server.url, server.available());
            }
        }
    }
}
