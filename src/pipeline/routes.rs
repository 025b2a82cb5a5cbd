//! The route table: host (exact, `*.wildcard`, any) × path (exact or prefix, longest wins),
//! each route with its policy and its target.

use std::sync::Arc;

use super::policy::Policy;
use crate::metrics::RouteStats;
use crate::proxy::pool::Pool;

#[derive(Debug, Clone, PartialEq)]
pub enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com`, stored as `example.com`: one label in front.
    Wildcard(String),
}

impl HostMatch {
    /// From a configured host: `None` (any), `*.parent` or an exact name.
    pub fn of(host: Option<&str>) -> Self {
        match host {
            None => HostMatch::Any,
            Some(host) => match host.strip_prefix("*.") {
                Some(parent) => HostMatch::Wildcard(parent.to_owned()),
                None => HostMatch::Exact(host.to_owned()),
            },
        }
    }

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

/// Which requests a route takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    pub host: HostMatch,
    pub path: String,
    /// The path exactly, rather than it and everything below it.
    pub exact: bool,
}

impl Matcher {
    /// For ordering: of two prefixes that both match a path, the one with more segments is
    /// the longer.
    fn segments(&self) -> usize {
        self.path.split('/').count()
    }

    fn is_template(&self) -> bool {
        self.path.contains('{')
    }

    fn matches(&self, host: &str, path: &str) -> bool {
        self.host.matches(host) && self.matches_path(path)
    }

    fn matches_path(&self, path: &str) -> bool {
        // A template (`/ws/tenant/{id}`): `{name}` takes one whole segment.
        if self.is_template() {
            return crate::policy::jwt::template_matches(&self.path, path, self.exact);
        }
        if self.exact {
            return path == self.path;
        }
        // Prefixes match whole path segments: `/api` covers `/api` and `/api/x`, not `/apix`.
        path == self.path
            || (path.starts_with(&self.path)
                && (self.path.ends_with('/') || path[self.path.len()..].starts_with('/')))
    }
}

/// What answers a route's requests once policy allowed them.
#[derive(Debug)]
pub enum Target {
    /// A pool of upstream servers (`proxy::forward`, `proxy::tunnel` for WebSockets).
    Upstream(Arc<Pool>),
    /// A hub endpoint: the session runs in tlsgate (`hub::session`).
    Hub(Arc<crate::hub::endpoint::Endpoint>),
    /// An answer tlsgate gives itself.
    Builtin(Builtin),
}

/// The built-in endpoints of a gateway with no routes configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `/health`: `200 {"status":"healthy"}`.
    Health,
    /// `/ws`: a WebSocket echo.
    Echo,
}

#[derive(Debug)]
pub struct Route {
    /// `host/path` (`builtin` for the built-in endpoints), for logs and metric labels.
    pub name: Arc<str>,
    /// This route's request metrics (labelled with `name`).
    pub stats: Arc<RouteStats>,
    pub matcher: Matcher,
    pub policy: Policy,
    pub target: Target,
}

impl Route {
    /// What identifies a route across reloads: its match and its target. WebSockets stay
    /// open through a reload while this is unchanged.
    pub fn key(&self) -> String {
        match &self.target {
            Target::Upstream(pool) => format!("{} -> {}", self.name, pool.name),
            Target::Hub(_) => Self::hub_key(&self.name),
            Target::Builtin(builtin) => format!("{} -> {builtin:?}", self.name),
        }
    }

    /// The key of a hub endpoint's route named `name` (known before the route is made: the
    /// endpoint needs its closer first).
    pub fn hub_key(name: &str) -> String {
        format!("{name} -> hub")
    }
}

#[derive(Debug, Default)]
pub struct RouteTable {
    /// Most specific first: host rank, exact paths, more segments, a literal segment before a
    /// `{parameter}`, longer paths.
    routes: Vec<Route>,
    default: Option<Route>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>, default: Option<Route>) -> Self {
        routes.sort_by(|a, b| {
            b.matcher
                .host
                .rank()
                .cmp(&a.matcher.host.rank())
                .then(b.matcher.exact.cmp(&a.matcher.exact))
                .then(b.matcher.segments().cmp(&a.matcher.segments()))
                .then(a.matcher.is_template().cmp(&b.matcher.is_template()))
                .then(b.matcher.path.len().cmp(&a.matcher.path.len()))
        });
        Self { routes, default }
    }

    /// The route for a (lower-case, port-less) host and a path.
    pub fn find(&self, host: &str, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(host, path))
            .or(self.default.as_ref())
    }

    /// Every route, the default last.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().chain(self.default.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proxy::url_upstream;
    use std::time::Duration;

    fn route(host: HostMatch, path: &str, exact: bool, pool: &Arc<Pool>) -> Route {
        let name = format!("{host:?}{path}");
        Route {
            stats: Arc::new(RouteStats::new(
                Arc::new(crate::metrics::Metrics::new()),
                name.clone(),
            )),
            name: name.into(),
            matcher: Matcher {
                host,
                path: path.into(),
                exact,
            },
            policy: Policy {
                allowed_origins: Vec::new(),
                websocket_idle_timeout: Duration::from_secs(1),
                max_body_size: 1,
                auth: None,
                cors: None,
                websocket_messages: None,
                limits: crate::policy::limits::RouteLimiter::unlimited(),
                client_cert: Default::default(),
            },
            target: Target::Upstream(pool.clone()),
        }
    }

    #[test]
    fn host_then_longest_prefix_then_exact() {
        let pool = Arc::new(Pool::new("p", &url_upstream("http://127.0.0.1:1")));
        let table = RouteTable::new(
            vec![
                route(HostMatch::Any, "/", false, &pool),
                route(HostMatch::of(Some("api.example.com")), "/ws", false, &pool),
                route(HostMatch::of(Some("api.example.com")), "/api", false, &pool),
                route(
                    HostMatch::of(Some("api.example.com")),
                    "/api/v2",
                    false,
                    &pool,
                ),
                route(
                    HostMatch::of(Some("api.example.com")),
                    "/api/login",
                    true,
                    &pool,
                ),
                route(HostMatch::of(Some("*.example.com")), "/", false, &pool),
            ],
            None,
        );
        let name = |host: &str, path: &str| table.find(host, path).map(|r| r.name.to_string());
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

    #[test]
    fn templates_take_one_segment_and_literals_win_over_them() {
        let pool = Arc::new(Pool::new("p", &url_upstream("http://127.0.0.1:1")));
        let table = RouteTable::new(
            vec![
                route(HostMatch::Any, "/ws/tenant/{id}", false, &pool),
                route(HostMatch::Any, "/ws/tenant/x", false, &pool),
                route(HostMatch::Any, "/ws", false, &pool),
                route(HostMatch::Any, "/t/{a}/{b}", true, &pool),
            ],
            None,
        );
        let name = |path: &str| table.find("h", path).map(|r| r.name.to_string());
        assert_eq!(name("/ws/tenant/acme"), Some("Any/ws/tenant/{id}".into()));
        assert_eq!(
            name("/ws/tenant/acme/feed"),
            Some("Any/ws/tenant/{id}".into())
        );
        assert_eq!(name("/ws/tenant/x"), Some("Any/ws/tenant/x".into()));
        assert_eq!(
            name("/ws/tenant/"),
            Some("Any/ws".into()),
            "a parameter is never empty"
        );
        assert_eq!(name("/t/1/2"), Some("Any/t/{a}/{b}".into()));
        assert_eq!(name("/t/1/2/3"), None);
    }
}
