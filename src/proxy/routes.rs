//! The routing table: host (exact, `*.wildcard`, any) × path (exact or prefix, longest wins).

use std::sync::Arc;
use std::time::Duration;

use super::pool::Pool;

#[derive(Debug, Clone, PartialEq)]
pub enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com`, stored as `example.com`: one label in front.
    Wildcard(String),
}

impl HostMatch {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(name) => name == host,
            HostMatch::Wildcard(parent) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            HostMatch::Exact(_) => 2,
            HostMatch::Wildcard(_) => 1,
            HostMatch::Any => 0,
        }
    }
}

#[derive(Debug)]
pub struct Route {
    /// `host/path`, for logs.
    pub name: String,
    /// This route's request metrics (labelled with `name`).
    pub stats: Arc<crate::metrics::RouteStats>,
    pub host: HostMatch,
    pub path: String,
    pub exact: bool,
    pub pool: Arc<Pool>,
    pub allowed_origins: Vec<String>,
    pub websocket_idle_timeout: Duration,
    pub max_body_size: u64,
}

impl Route {
    /// What identifies a route across reloads: its match and its upstream. WebSockets stay
    /// open through a reload while this is unchanged.
    pub fn key(&self) -> String {
        format!("{} -> {}", self.name, self.pool.name)
    }

    fn matches_path(&self, path: &str) -> bool {
        if self.exact {
            return path == self.path;
        }
        // Prefixes match whole path segments: `/api` covers `/api` and `/api/x`, not `/apix`.
        path == self.path
            || (path.starts_with(&self.path)
                && (self.path.ends_with('/') || path[self.path.len()..].starts_with('/')))
    }
}

#[derive(Debug, Default)]
pub struct RouteTable {
    /// Most specific first: host rank, exact paths, longer prefixes.
    routes: Vec<Route>,
    default: Option<Route>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>, default: Option<Route>) -> Self {
        routes.sort_by(|a, b| {
            b.host
                .rank()
                .cmp(&a.host.rank())
                .then(b.exact.cmp(&a.exact))
                .then(b.path.len().cmp(&a.path.len()))
        });
        Self { routes, default }
    }

    /// The route for a (lower-case, port-less) host and a path.
    pub fn find(&self, host: &str, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.host.matches(host) && r.matches_path(path))
            .or(self.default.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proxy::url_upstream;

    fn route(host: HostMatch, path: &str, exact: bool, pool: &Arc<Pool>) -> Route {
        Route {
            name: format!("{host:?}{path}"),
            stats: Arc::new(crate::metrics::RouteStats::new(
                Arc::new(crate::metrics::Metrics::new()),
                format!("{host:?}{path}"),
            )),
            host,
            path: path.into(),
            exact,
            pool: pool.clone(),
            allowed_origins: Vec::new(),
            websocket_idle_timeout: Duration::from_secs(1),
            max_body_size: 1,
        }
    }

    #[test]
    fn host_then_longest_prefix_then_exact() {
        let pool = Arc::new(Pool::new("p", &url_upstream("http://127.0.0.1:1")));
        let table = RouteTable::new(
            vec![
                route(HostMatch::Any, "/", false, &pool),
                route(
                    HostMatch::Exact("api.example.com".into()),
                    "/ws",
                    false,
                    &pool,
                ),
                route(
                    HostMatch::Exact("api.example.com".into()),
                    "/api",
                    false,
                    &pool,
                ),
                route(
                    HostMatch::Exact("api.example.com".into()),
                    "/api/v2",
                    false,
                    &pool,
                ),
                route(
                    HostMatch::Exact("api.example.com".into()),
                    "/api/login",
                    true,
                    &pool,
                ),
                route(HostMatch::Wildcard("example.com".into()), "/", false, &pool),
            ],
            None,
        );
        let name = |host: &str, path: &str| table.find(host, path).map(|r| r.name.clone());
        assert_eq!(
            name("api.example.com", "/ws"),
            Some("Exact(\"api.example.com\")/ws".into())
        );
        assert_eq!(
            name("api.example.com", "/api/v2/x"),
            Some("Exact(\"api.example.com\")/api/v2".into())
        );
        assert_eq!(
            name("api.example.com", "/api/login"),
            Some("Exact(\"api.example.com\")/api/login".into())
        );
        assert_eq!(
            name("api.example.com", "/api/login/x"),
            Some("Exact(\"api.example.com\")/api".into())
        );
        assert_eq!(
            name("api.example.com", "/apix"),
            Some("Wildcard(\"example.com\")/".into()),
            "segment-wise prefix"
        );
        assert_eq!(
            name("www.example.com", "/x"),
            Some("Wildcard(\"example.com\")/".into())
        );
        assert_eq!(name("a.b.example.com", "/x"), Some("Any/".into()));
        assert_eq!(name("other.test", "/"), Some("Any/".into()));
    }
}
