//! Limits and bans: named rate-limit zones with nginx's `limit_req` semantics ([`zone`]),
//! per-IP caps at accept and at the upgrade ([`caps`]), fail2ban-style bans ([`bans`]) and
//! CIDR allow/deny lists, per listener and per route.
//!
//! [`Limits`] is one configuration's state; a reload builds the next from the settings and
//! the previous one: zones whose settings did not change, the per-IP counts and the ban table
//! are handed over, so a client at its limit stays limited across a reload.

pub mod bans;
pub mod caps;
pub mod zone;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::config::limits::{BanReason, IpLists, RouteLimits, ZoneKey};
use crate::config::Settings;
use crate::http::context::{RequestContext, TrustedProxies};
use crate::http::error::HttpError;
use crate::metrics::{KindLabels, Metrics};
use bans::BanTable;
use caps::{Cap, CountGuard, PerIp};
use zone::{BucketKey, Decision, Outcome, Zone};

/// An address as limits count it: IPv4 whole (an IPv4-mapped IPv6 address as its IPv4),
/// IPv6 by its first `prefix` bits (a /64 is one household or one server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpKey {
    bits: u128,
    /// The prefix length; 32 for IPv4.
    len: u8,
    v6: bool,
}

impl IpKey {
    pub fn of(ip: IpAddr, v6_prefix: u8) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey {
                bits: u128::from(u32::from(v4)),
                len: 32,
                v6: false,
            },
            IpAddr::V6(v6) => {
                let len = v6_prefix.clamp(1, 128);
                let mask = u128::MAX << (128 - u32::from(len));
                IpKey {
                    bits: u128::from(v6) & mask,
                    len,
                    v6: true,
                }
            }
        }
    }

    /// The network it stands for.
    pub fn net(&self) -> IpNet {
        if self.v6 {
            IpNet::new(IpAddr::from(self.bits.to_be_bytes()), self.len)
        } else {
            IpNet::new(IpAddr::from((self.bits as u32).to_be_bytes()), 32)
        }
        .unwrap_or_else(|_| IpNet::from(IpAddr::from([0, 0, 0, 0])))
    }
}

/// An address as itself, a prefix as `net/len`.
impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let net = self.net();
        if net.prefix_len() == net.max_prefix_len() {
            write!(f, "{}", net.addr())
        } else {
            write!(f, "{net}")
        }
    }
}

/// Whether `lists` let `ip` through: not in `deny`, and in `allow` when `allow` is set.
pub fn allowed(lists: &IpLists, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    if lists.deny.iter().any(|net| net.contains(&ip)) {
        return false;
    }
    lists.allow.is_empty() || lists.allow.iter().any(|net| net.contains(&ip))
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `listener_access` said no.
    Denied,
    Banned,
    Cap(Cap),
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Denied => "denied",
            Refusal::Banned => "banned",
            Refusal::Cap(cap) => cap.as_str(),
        }
    }
}

/// One configuration's limits state.
#[derive(Debug)]
pub struct Limits {
    zones: BTreeMap<String, Arc<Zone>>,
    per_ip: PerIp,
    bans: Arc<BanTable>,
    listener: IpLists,
    /// Never capped at accept nor banned: a load balancer in front carries many clients.
    trusted: TrustedProxies,
    metrics: Arc<Metrics>,
}

impl Limits {
    /// The state for `settings`: `previous`'s zones whose settings are unchanged, its per-IP
    /// counts and its ban table (configured anew) are kept.
    pub fn new(settings: &Settings, metrics: &Arc<Metrics>, previous: Option<&Limits>) -> Self {
        let edge = &settings.edge_limits;
        let zones = edge
            .rate_limits
            .iter()
            .map(|(name, zone)| {
                let kept = previous
                    .and_then(|p| p.zones.get(name))
                    .filter(|old| old.settings == *zone)
                    .cloned();
                let zone = kept.unwrap_or_else(|| Arc::new(Zone::new(name, zone, Some(metrics))));
                (name.clone(), zone)
            })
            .collect();
        let bans = previous.map_or_else(|| Arc::new(BanTable::new(metrics)), |p| p.bans.clone());
        bans.configure(edge.bans.as_ref());
        Self {
            zones,
            per_ip: PerIp::new(&settings.limits.per_ip, previous.map(|p| &p.per_ip)),
            bans,
            listener: edge.listener_access.clone(),
            trusted: TrustedProxies::new(settings.proxy.trusted_proxies.clone()),
            metrics: metrics.clone(),
        }
    }

    /// A strike towards a ban, except for a trusted proxy (its clients' requests arrive with
    /// its address when they carry no `X-Forwarded-For`).
    fn strike(&self, ip: IpAddr, reason: BanReason) {
        if !self.trusted.contains(ip) {
            self.bans.strike(ip, reason);
        }
    }

    /// The ban table, for the admin listener (the same one across reloads).
    pub fn bans(&self) -> &Arc<BanTable> {
        &self.bans
    }

    /// The zone called `name`, when configured.
    pub fn zone(&self, name: &str) -> Option<&Arc<Zone>> {
        self.zones.get(name)
    }

    fn refused(&self, kind: &str) {
        self.metrics
            .per_ip_refusals
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// A connection accepted from `peer` (`handshake`: a TLS handshake follows): the place it
    /// holds under `limits.per_ip.connections` for its life, or why it is closed at once.
    pub fn admit(&self, peer: IpAddr, handshake: bool) -> Result<CountGuard, Refusal> {
        let refusal = if !allowed(&self.listener, peer) {
            Refusal::Denied
        } else if self.trusted.contains(peer) {
            // Per-IP caps and bans are for the clients behind it (checked per request).
            if let Some(place) = self.per_ip.track(peer) {
                return Ok(place);
            }
            Refusal::Cap(Cap::Connections)
        } else if self.bans.banned(peer) {
            Refusal::Banned
        } else {
            match self.per_ip.connect(peer, handshake) {
                Ok(guard) => return Ok(guard),
                Err(cap) => {
                    self.strike(peer, BanReason::RateLimit);
                    Refusal::Cap(cap)
                }
            }
        };
        self.refused(refusal.as_str());
        Err(refusal)
    }

    /// A route's limiter over this state.
    pub fn route(self: &Arc<Self>, route: &RouteLimits) -> RouteLimiter {
        let zones: Vec<Arc<Zone>> = route
            .rate_limit
            .iter()
            .filter_map(|name| self.zones.get(name).cloned())
            .collect();
        let (claims, early) = zones.into_iter().partition(|z| z.settings.key.is_claim());
        RouteLimiter {
            early,
            claims,
            access: route.access.clone(),
            shared: self.clone(),
        }
    }
}

/// A route's limits: its IP lists and zones, and the shared caps and bans.
#[derive(Debug, Clone)]
pub struct RouteLimiter {
    /// Zones keyed by address, header or route: the policy stage's step 2.
    early: Vec<Arc<Zone>>,
    /// Zones keyed by a token claim: step 8, after authentication.
    claims: Vec<Arc<Zone>>,
    access: IpLists,
    shared: Arc<Limits>,
}

impl PartialEq for RouteLimiter {
    fn eq(&self, other: &Self) -> bool {
        let names = |zones: &[Arc<Zone>]| zones.iter().map(|z| z.name.clone()).collect::<Vec<_>>();
        names(&self.early) == names(&other.early)
            && names(&self.claims) == names(&other.claims)
            && self.access == other.access
    }
}

/// Which of a route's zones a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Keyed by address, header or route (step 2).
    Early,
    /// Keyed by a claim (step 8).
    Claims,
}

impl RouteLimiter {
    /// Limits for a route with none configured (the built-in endpoints, tests).
    pub fn none(shared: &Arc<Limits>) -> Self {
        shared.route(&RouteLimits::default())
    }

    /// No limits, over a state of its own (tests).
    pub fn unlimited() -> Self {
        let metrics = Arc::new(Metrics::new());
        let shared = Arc::new(Limits {
            zones: BTreeMap::new(),
            per_ip: PerIp::new(&Default::default(), None),
            bans: Arc::new(BanTable::new(&metrics)),
            listener: IpLists::default(),
            trusted: TrustedProxies::default(),
            metrics,
        });
        Self::none(&shared)
    }

    /// Step 1: the route's allow/deny lists, then bans (`403`).
    pub fn screen(&self, ctx: &RequestContext) -> Result<(), HttpError> {
        if !allowed(&self.access, ctx.client_ip) {
            return Err(HttpError::AddressNotAllowed);
        }
        if self.shared.bans.banned(ctx.client_ip) {
            return Err(HttpError::Banned);
        }
        Ok(())
    }

    fn key_of(zone: &Zone, headers: &http::HeaderMap, ctx: &RequestContext) -> Option<BucketKey> {
        let by_ip = || BucketKey::Ip(IpKey::of(ctx.client_ip, zone.settings.ipv6_prefix));
        match &zone.settings.key {
            ZoneKey::Ip => Some(by_ip()),
            // nginx: a request with an empty key is not counted.
            ZoneKey::Header(name) => headers
                .get(name.as_str())
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty())
                .map(BucketKey::text),
            ZoneKey::Route => Some(BucketKey::text(ctx.route.as_bytes())),
            // Without a verified token (no claims, or not this one), the client address.
            ZoneKey::Claim(name) => Some(
                match ctx.claims.as_ref().and_then(|claims| claims.get(name)) {
                    Some(serde_json::Value::String(text)) if !text.is_empty() => {
                        BucketKey::text(text.as_bytes())
                    }
                    Some(value @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        BucketKey::text(value.to_string().as_bytes())
                    }
                    _ => by_ip(),
                },
            ),
        }
    }

    /// Steps 2 and 8: the stage's zones over the request. A request over a zone's burst is
    /// refused with the zone's status and `Retry-After`; one within the burst but over its
    /// `delay` waits here (the pipeline holds it on a timer, as nginx does).
    pub async fn limit(
        &self,
        headers: &http::HeaderMap,
        ctx: &RequestContext,
        stage: Stage,
    ) -> Result<(), HttpError> {
        let zones = match stage {
            Stage::Early => &self.early,
            Stage::Claims => &self.claims,
        };
        if zones.is_empty() {
            return Ok(());
        }
        let now = zones[0].now_ms();
        let mut enforced = Vec::with_capacity(zones.len());
        for zone in zones {
            let key = Self::key_of(zone, headers, ctx);
            if zone.settings.dry_run {
                dry_run(zone, key, now);
            } else {
                enforced.push((&**zone, key));
            }
        }
        match zone::decide(&enforced, now) {
            Decision::Pass { delay_ms, delayed } => {
                for (i, (zone, key)) in enforced.iter().enumerate() {
                    if key.is_some() {
                        zone.count(if delayed & (1 << (i as u32 % 64)) != 0 {
                            Outcome::Delayed
                        } else {
                            Outcome::Passed
                        });
                    }
                }
                if delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                Ok(())
            }
            Decision::Reject {
                zone,
                retry_after_ms,
            } => {
                let zone = enforced[zone].0;
                zone.count(Outcome::Rejected);
                tracing::debug!(zone = %zone.name, client = %ctx.client_ip, "rate limit: request refused");
                self.shared.strike(ctx.client_ip, BanReason::RateLimit);
                Err(HttpError::RateLimited {
                    status: zone.settings.status,
                    retry_after: retry_after_ms.div_ceil(1000).max(1),
                })
            }
        }
    }

    /// At a WebSocket upgrade: the per-IP WebSocket caps (`429` before any backend is
    /// contacted). The guard is held for the WebSocket's life.
    pub fn upgrade(&self, ctx: &RequestContext) -> Result<CountGuard, HttpError> {
        self.shared
            .per_ip
            .upgrade(ctx.client_ip)
            .map_err(|(cap, retry_after)| {
                self.shared.refused(cap.as_str());
                self.shared.strike(ctx.client_ip, BanReason::RateLimit);
                HttpError::RateLimited {
                    status: 429,
                    retry_after,
                }
            })
    }

    /// A route's answer: `401` and `403` count as authentication failures towards a ban
    /// (not this module's own refusals of denied or banned clients).
    pub fn on_response(&self, status: http::StatusCode, ctx: &RequestContext) {
        if (status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN)
            && ctx.authorization_sent
            && allowed(&self.access, ctx.client_ip)
            && !self.shared.bans.banned(ctx.client_ip)
        {
            self.shared.strike(ctx.client_ip, BanReason::Auth);
        }
    }
}

/// A dry-run zone: decides and records as if enforcing, counts what it would have done, and
/// lets the request through at once (nginx's `limit_req_dry_run`).
fn dry_run(zone: &Zone, key: Option<BucketKey>, now: u64) {
    let Some(key) = key else { return };
    match zone.check(&key, now, true) {
        zone::Check::Pass { excess } if zone.delay_ms(excess) == 0 => zone.count(Outcome::Passed),
        _ => zone.count(Outcome::DryRun),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_grouped_by_its_prefix() {
        let a: IpAddr = "2001:db8:aaaa:bbbb:1:2:3:4".parse().unwrap();
        let b: IpAddr = "2001:db8:aaaa:bbbb:ffff::1".parse().unwrap();
        let c: IpAddr = "2001:db8:aaaa:bbbc::1".parse().unwrap();
        assert_eq!(IpKey::of(a, 64), IpKey::of(b, 64));
        assert_ne!(IpKey::of(a, 64), IpKey::of(c, 64));
        assert_eq!(IpKey::of(a, 48), IpKey::of(c, 48));
        assert_ne!(IpKey::of(a, 128), IpKey::of(b, 128));
        assert_eq!(IpKey::of(a, 64).to_string(), "2001:db8:aaaa:bbbb::/64");
        assert_eq!(IpKey::of(a, 128).to_string(), "2001:db8:aaaa:bbbb:1:2:3:4");
        // IPv4 stays whole, and an IPv4-mapped address is the IPv4 client it is.
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(IpKey::of(v4, 64), IpKey::of(mapped, 64));
        assert_ne!(
            IpKey::of(v4, 64),
            IpKey::of("192.0.2.2".parse().unwrap(), 64)
        );
        assert_eq!(IpKey::of(mapped, 64).to_string(), "192.0.2.1");
    }

    fn context(ip: &str, claims: Option<serde_json::Value>) -> RequestContext {
        RequestContext {
            conn: crate::http::context::ConnectionInfo {
                peer: std::net::SocketAddr::new(ip.parse().unwrap(), 40000),
                sni: None,
                secure: true,
                tls_version: Some("1.3"),
                activity: None,
                client_cert: None,
            },
            host: "app.example.com".into(),
            client_ip: ip.parse().unwrap(),
            peer_trusted: false,
            route: "r".into(),
            body_limit: 10,
            version: http::Version::HTTP_11,
            started: std::time::Instant::now(),
            claims: claims.and_then(|c| c.as_object().cloned()).map(Arc::new),
            websocket_protocol: None,
            cors_origin: None,
            authorization_sent: false,
        }
    }

    fn limits(yaml: &str) -> Arc<Limits> {
        let overrides = crate::config::Overrides {
            data_dir: Some(std::env::temp_dir().join("tlsgate-limits-test")),
            ..Default::default()
        };
        let settings = crate::config::load_str(yaml, None, &overrides, &|_| None).unwrap();
        Arc::new(Limits::new(&settings, &Arc::new(Metrics::new()), None))
    }

    #[tokio::test]
    async fn claim_zones_key_by_the_claim_and_without_a_token_by_address() {
        let shared = limits("rate_limits:\n  user: {rate: 1r/m, key: 'claim:sub'}\n");
        let limiter = shared.route(&RouteLimits {
            rate_limit: vec!["user".into()],
            ..RouteLimits::default()
        });
        let headers = http::HeaderMap::new();
        let alice = context("192.0.2.1", Some(serde_json::json!({"sub": "alice"})));
        let alice_elsewhere = context("192.0.2.99", Some(serde_json::json!({"sub": "alice"})));
        let bob = context("192.0.2.1", Some(serde_json::json!({"sub": "bob"})));
        // Claim zones run at step 8 only.
        assert!(limiter.limit(&headers, &alice, Stage::Early).await.is_ok());
        assert!(limiter.limit(&headers, &alice, Stage::Early).await.is_ok());
        assert!(limiter.limit(&headers, &alice, Stage::Claims).await.is_ok());
        assert!(matches!(
            limiter
                .limit(&headers, &alice_elsewhere, Stage::Claims)
                .await,
            // 1r/m is nginx's 16 milli-requests a second: a slot every 62.5 s.
            Err(HttpError::RateLimited {
                status: 429,
                retry_after: 63
            })
        ));
        assert!(limiter.limit(&headers, &bob, Stage::Claims).await.is_ok());
        let anonymous = context("192.0.2.1", None);
        assert!(limiter
            .limit(&headers, &anonymous, Stage::Claims)
            .await
            .is_ok());
        assert!(limiter
            .limit(&headers, &anonymous, Stage::Claims)
            .await
            .is_err());
        assert!(limiter
            .limit(&headers, &context("192.0.2.2", None), Stage::Claims)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn header_zones_skip_requests_without_the_header() {
        let shared = limits("rate_limits:\n  keyed: {rate: 1r/m, key: 'header:X-Api-Key'}\n");
        let limiter = shared.route(&RouteLimits {
            rate_limit: vec!["keyed".into()],
            ..RouteLimits::default()
        });
        let ctx = context("192.0.2.1", None);
        let none = http::HeaderMap::new();
        let mut keyed = http::HeaderMap::new();
        keyed.insert("x-api-key", http::HeaderValue::from_static("k1"));
        for _ in 0..3 {
            assert!(limiter.limit(&none, &ctx, Stage::Early).await.is_ok());
        }
        assert!(limiter.limit(&keyed, &ctx, Stage::Early).await.is_ok());
        assert!(limiter.limit(&keyed, &ctx, Stage::Early).await.is_err());
    }

    #[tokio::test]
    async fn auth_failures_ban_and_a_ban_is_a_403_at_step_one_and_a_refusal_at_accept() {
        let shared = limits("bans: {after: 3, count: [auth]}\n");
        let limiter = RouteLimiter::none(&shared);
        let mut ctx = context("2001:db8::1", None);
        let mut neighbour = context("2001:db8::2", None);
        // Refusals of requests without credentials are no strikes.
        for _ in 0..5 {
            limiter.on_response(http::StatusCode::UNAUTHORIZED, &ctx);
        }
        assert!(limiter.screen(&ctx).is_ok());
        ctx.authorization_sent = true;
        neighbour.authorization_sent = true;
        limiter.on_response(http::StatusCode::OK, &ctx);
        limiter.on_response(http::StatusCode::UNAUTHORIZED, &ctx);
        limiter.on_response(http::StatusCode::FORBIDDEN, &neighbour);
        assert!(limiter.screen(&ctx).is_ok());
        limiter.on_response(http::StatusCode::UNAUTHORIZED, &ctx);
        assert!(
            matches!(limiter.screen(&neighbour), Err(HttpError::Banned)),
            "same /64"
        );
        assert_eq!(
            shared.admit(ctx.client_ip, true).unwrap_err(),
            Refusal::Banned
        );
        assert!(shared.admit("2001:db9::1".parse().unwrap(), true).is_ok());
    }

    #[test]
    fn a_trusted_proxy_is_never_capped_at_accept_nor_banned() {
        let shared = limits(
            "trusted_proxies: [10.0.0.1/32]\nlimits:\n  per_ip: {connections: 1}\nbans: {after: 1}\n",
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..5).map(|_| shared.admit(proxy, true).unwrap()).collect();
        assert_eq!(held.len(), 5);
        shared.strike(proxy, BanReason::RateLimit);
        assert!(!shared.bans.banned(proxy));
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let _one = shared.admit(client, true).unwrap();
        assert_eq!(
            shared.admit(client, true).unwrap_err(),
            Refusal::Cap(Cap::Connections)
        );
        assert!(shared.bans.banned(client), "after: 1");
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_requests_wait_on_a_timer_and_dry_runs_never_do() {
        let shared = limits(
            "rate_limits:\n  slow: {rate: 1r/s, burst: 2}\n  watch: {rate: 1r/s, dry_run: true}\n",
        );
        let limiter = shared.route(&RouteLimits {
            rate_limit: vec!["slow".into(), "watch".into()],
            ..RouteLimits::default()
        });
        let (headers, ctx) = (http::HeaderMap::new(), context("192.0.2.1", None));
        let started = tokio::time::Instant::now();
        assert!(limiter.limit(&headers, &ctx, Stage::Early).await.is_ok());
        assert!(started.elapsed() < Duration::from_millis(10));
        assert!(limiter.limit(&headers, &ctx, Stage::Early).await.is_ok());
        assert!(
            started.elapsed() >= Duration::from_millis(1000),
            "held ~1 s"
        );
        // The dry-run zone would have refused the second request: counted, not enforced.
        let text = shared.metrics.encode();
        for (zone, result, count) in [
            ("slow", "passed", 1),
            ("slow", "delayed", 1),
            ("watch", "passed", 1),
            ("watch", "dry_run", 1),
        ] {
            assert!(
                text.contains(&format!(
                    "tlsgate_rate_limit_requests_total{{zone=\"{zone}\",result=\"{result}\"}} {count}"
                )),
                "{zone} {result}: {text}"
            );
        }
    }

    /// The limiter's cost per request through the whole step (key, zone, counters); the
    /// issue's bound is 1 µs. A measurement, not a behaviour: it is run on purpose, in an
    /// optimised build on a quiet machine, not timed inside the suite.
    #[test]
    #[ignore = "micro-benchmark: cargo test --release --lib micro_benchmark -- --ignored --nocapture"]
    fn micro_benchmark_stays_under_a_microsecond_per_request() {
        use futures_util::FutureExt;
        let shared = limits(
            "rate_limits:\n  wide: {rate: 1000000r/s, burst: 1000, nodelay: true, max_keys: 100000}\n",
        );
        let limiter = shared.route(&RouteLimits {
            rate_limit: vec!["wide".into()],
            ..RouteLimits::default()
        });
        let headers = http::HeaderMap::new();
        let mut contexts: Vec<RequestContext> = (0..1000u32)
            .map(|n| {
                context(
                    &std::net::Ipv4Addr::from(n.wrapping_mul(2_654_435_761)).to_string(),
                    None,
                )
            })
            .collect();
        let rounds = 200_000;
        let started = std::time::Instant::now();
        for i in 0..rounds {
            let ctx = &mut contexts[i % 1000];
            let decided = limiter
                .limit(&headers, ctx, Stage::Early)
                .now_or_never()
                .expect("no delay");
            assert!(decided.is_ok());
        }
        let per_request = started.elapsed().as_nanos() as f64 / rounds as f64;
        println!(
            "rate-limit step: {per_request:.0} ns per request (1000 clients, one zone; {} build)",
            if cfg!(debug_assertions) {
                "unoptimised test"
            } else {
                "optimised"
            }
        );
        // Unoptimised test builds on a loaded machine are many times slower than release, so
        // the bound here leaves room; `cargo test --release` holds it to the 1 µs.
        let bound = if cfg!(debug_assertions) {
            10_000.0
        } else {
            1_000.0
        };
        assert!(per_request < bound, "{per_request} ns per request");
    }

    #[test]
    fn deny_wins_over_allow() {
        let lists = IpLists {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny: vec!["10.1.0.0/16".parse().unwrap()],
        };
        assert!(allowed(&lists, "10.2.3.4".parse().unwrap()));
        assert!(allowed(&lists, "::ffff:10.2.3.4".parse().unwrap()));
        assert!(!allowed(&lists, "10.1.3.4".parse().unwrap()));
        assert!(!allowed(&lists, "192.0.2.1".parse().unwrap()));
        assert!(allowed(&IpLists::default(), "192.0.2.1".parse().unwrap()));
    }
}
