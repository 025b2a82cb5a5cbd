//! An upstream pool: its servers, their health (active and passive), in-flight counts, and the
//! balancing policies. Everything on the request path is atomics; nothing locks.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::body::ProxyBody;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::proxy::{Balance, UpstreamSettings};

/// hyper's client, for h2c pools and health checks, over the one connector.
pub type UpstreamClient = Client<super::connect::Connector, ProxyBody>;

fn now_millis() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[derive(Debug)]
pub struct Server {
    /// `http://host:port`, shared with each response it serves (the access log's `upstream`).
    pub url: std::sync::Arc<str>,
    /// `host:port` of `url`, so a request's URI is built without formatting and parsing.
    pub authority: Option<http::uri::Authority>,
    pub weight: u32,
    pub backup: bool,
    pub max_conns: u32,
    pub in_flight: AtomicU32,
    /// Set by active health checks; true until a check says otherwise.
    pub healthy: AtomicBool,
    /// Kept-alive HTTP/1.1 connections waiting for the next request.
    pub idle: Arc<super::idle::IdleConnections>,
    fails: AtomicU32,
    fail_window_start: AtomicU64,
    down_until: AtomicU64,
}

impl Server {
    /// Whether this server may take a request now.
    pub fn available(&self) -> bool {
        let down_until = self.down_until.load(Ordering::Relaxed);
        // The clock is read only for a server that was marked down at some point.
        self.healthy.load(Ordering::Relaxed)
            && (down_until == 0 || down_until <= now_millis())
            && (self.max_conns == 0 || self.in_flight.load(Ordering::Relaxed) < self.max_conns)
    }
}

pub struct Pool {
    pub name: String,
    pub settings: UpstreamSettings,
    pub servers: Vec<Server>,
    /// Smooth weighted round-robin order over primaries, then over backups.
    primary_schedule: Vec<usize>,
    backup_schedule: Vec<usize>,
    /// Each group's servers once, in index order (least-conn and ip-hash scan these).
    primary_members: Vec<usize>,
    backup_members: Vec<usize>,
    counter: AtomicUsize,
    /// Sticky-cookie value per server: a keyed hash, so it does not reveal the address.
    cookie_tokens: Vec<String>,
    pub client: UpstreamClient,
    /// Connects to a server on its own: a WebSocket upgrade takes a connection for itself.
    pub connector: super::connect::Connector,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// nginx's smooth weighted round robin, unrolled into a fixed order: weights 5,1,1 give
/// a a b a c a a, never a a a a a b c.
fn smooth_schedule(members: &[(usize, u32)]) -> Vec<usize> {
    let total: i64 = members.iter().map(|(_, w)| i64::from(*w)).sum();
    let mut current = vec![0i64; members.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (slot, (_, weight)) in current.iter_mut().zip(members) {
            *slot += i64::from(*weight);
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, -(*i as i64)))
        else {
            break;
        };
        current[best] -= total;
        order.push(members[best].0);
    }
    order
}

fn keyed_token(secret: &str, pool: &str, url: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, format!("{pool}\n{url}").as_bytes());
    tag.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Pool {
    pub fn new(name: &str, settings: &UpstreamSettings) -> Self {
        let servers: Vec<Server> = settings
            .servers
            .iter()
            .map(|s| Server {
                url: s.url.as_str().into(),
                authority: s.url.strip_prefix("http://").and_then(|a| a.parse().ok()),
                weight: s.weight,
                backup: s.backup,
                max_conns: s.max_conns,
                in_flight: AtomicU32::new(0),
                healthy: AtomicBool::new(true),
                idle: Arc::new(super::idle::IdleConnections::new(
                    settings.keepalive,
                    settings.keepalive_timeout,
                )),
                fails: AtomicU32::new(0),
                fail_window_start: AtomicU64::new(0),
                down_until: AtomicU64::new(0),
            })
            .collect();
        let members = |backup: bool| -> Vec<(usize, u32)> {
            servers
                .iter()
                .enumerate()
                .filter(|(_, s)| s.backup == backup)
                .map(|(i, s)| (i, s.weight))
                .collect()
        };
        let secret = settings.cookie_secret.clone().unwrap_or_else(random_secret);
        let cookie_tokens = servers
            .iter()
            .map(|s| keyed_token(&secret, name, &s.url))
            .collect();
        let connector = super::connect::Connector {
            timeout: settings.connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(settings.keepalive_timeout)
            .pool_max_idle_per_host(settings.keepalive)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(settings.h2c)
            .build(connector);
        Self {
            name: name.to_owned(),
            settings: settings.clone(),
            primary_schedule: smooth_schedule(&members(false)),
            backup_schedule: smooth_schedule(&members(true)),
            primary_members: members(false).into_iter().map(|(i, _)| i).collect(),
            backup_members: members(true).into_iter().map(|(i, _)| i).collect(),
            servers,
            counter: AtomicUsize::new(0),
            cookie_tokens,
            client,
            connector,
        }
    }

    /// Closes idle upstream connections past `keepalive_timeout` or closed by their server,
    /// every half timeout (at least a second apart), until `stop`.
    pub async fn sweep_idle_connections(
        self: Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let period = (self.settings.keepalive_timeout / 2).max(std::time::Duration::from_secs(1));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {
                    for server in &self.servers {
                        server.idle.sweep();
                    }
                }
            }
        }
    }

    pub fn cookie_token(&self, index: usize) -> &str {
        &self.cookie_tokens[index]
    }

    /// Picks a server for a request, or `None` when no server can take it (→ 503).
    /// `excluded` lists servers already tried for this request.
    pub fn select(
        &self,
        client_ip: IpAddr,
        cookie: Option<&str>,
        excluded: &[usize],
    ) -> Option<usize> {
        let usable = |i: &usize| !excluded.contains(i) && self.servers[*i].available();
        if self.settings.balance == Balance::Cookie {
            if let Some(index) = cookie.and_then(|c| self.cookie_tokens.iter().position(|t| t == c))
            {
                // A cookie pinned to a backup counts only while no primary can serve.
                let primary_up = self
                    .servers
                    .iter()
                    .enumerate()
                    .any(|(i, s)| !s.backup && usable(&i));
                if usable(&index) && !(self.servers[index].backup && primary_up) {
                    return Some(index);
                }
            }
        }
        for (schedule, members) in [
            (&self.primary_schedule, &self.primary_members),
            (&self.backup_schedule, &self.backup_members),
        ] {
            if schedule.is_empty() {
                continue;
            }
            let chosen = match self.settings.balance {
                Balance::RoundRobin | Balance::Cookie => {
                    let start = self.counter.fetch_add(1, Ordering::Relaxed);
                    (0..schedule.len())
                        .map(|step| schedule[(start + step) % schedule.len()])
                        .find(|i| usable(i))
                }
                Balance::LeastConn => {
                    let start = self.counter.fetch_add(1, Ordering::Relaxed);
                    let n = members.len();
                    // Rotating the scan start spreads ties instead of always picking the first.
                    (0..n)
                        .map(|k| members[(start + k) % n])
                        .filter(|i| usable(i))
                        .min_by_key(|i| {
                            let s = &self.servers[*i];
                            u64::from(s.in_flight.load(Ordering::Relaxed)) * 1_000_000
                                / u64::from(s.weight)
                        })
                }
                Balance::IpHash => {
                    let start = ip_hash(client_ip) as usize % members.len();
                    (0..members.len())
                        .map(|k| members[(start + k) % members.len()])
                        .find(|i| usable(i))
                }
            };
            if chosen.is_some() {
                return chosen;
            }
        }
        None
    }

    /// Counts a failed attempt (connect error, reset, timeout); `max_fails` within
    /// `fail_timeout` takes the server out for `fail_timeout`, as nginx does.
    pub fn record_failure(&self, index: usize) {
        let server = &self.servers[index];
        let now = now_millis();
        let window = self.settings.fail_timeout.as_millis() as u64;
        if now.saturating_sub(server.fail_window_start.load(Ordering::Relaxed)) > window {
            server.fail_window_start.store(now, Ordering::Relaxed);
            server.fails.store(0, Ordering::Relaxed);
        }
        let fails = server.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if self.settings.max_fails > 0 && fails >= self.settings.max_fails {
            server.down_until.store(now + window, Ordering::Relaxed);
            tracing::warn!(upstream = %self.name, server = %server.url, fails, "server marked down for {:?}", self.settings.fail_timeout);
        }
    }

    pub fn record_success(&self, index: usize) {
        self.servers[index].fails.store(0, Ordering::Relaxed);
    }

    /// Picks a server and marks a request in flight on it, atomically against `max_conns`
    /// (two requests cannot both take a server's last slot).
    pub fn acquire(
        self: &Arc<Self>,
        client_ip: IpAddr,
        cookie: Option<&str>,
        excluded: &[usize],
    ) -> Option<(usize, InFlight)> {
        let mut skipped = excluded.to_vec();
        loop {
            let index = self.select(client_ip, cookie, &skipped)?;
            let server = &self.servers[index];
            let taken = server
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (server.max_conns == 0 || n < server.max_conns).then_some(n + 1)
                })
                .is_ok();
            if taken {
                return Some((
                    index,
                    InFlight {
                        pool: self.clone(),
                        index,
                    },
                ));
            }
            skipped.push(index);
        }
    }
}

fn ip_hash(ip: IpAddr) -> u64 {
    // FNV-1a: stable across restarts and nodes, so a client keeps its server.
    let bytes: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// A request (or tunnel) in flight on one server.
#[derive(Debug)]
pub struct InFlight {
    pool: Arc<Pool>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pool.servers[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proxy::ServerSettings;

    fn settings(weights: &[(u32, bool)], balance: Balance) -> UpstreamSettings {
        let mut s = crate::config::proxy::url_upstream("http://127.0.0.1:1");
        s.servers = weights
            .iter()
            .enumerate()
            .map(|(i, (weight, backup))| ServerSettings {
                url: format!("http://127.0.0.1:{}", 1000 + i),
                weight: *weight,
                backup: *backup,
                max_conns: 0,
            })
            .collect();
        s.balance = balance;
        s
    }

    #[tokio::test]
    async fn max_conns_is_never_exceeded() {
        let mut s = settings(&[(1, false)], Balance::RoundRobin);
        s.servers[0].max_conns = 2;
        let pool = Arc::new(Pool::new("p", &s));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let first = pool.acquire(ip, None, &[]);
        let second = pool.acquire(ip, None, &[]);
        assert!(first.is_some() && second.is_some());
        assert!(
            pool.acquire(ip, None, &[]).is_none(),
            "third request over max_conns"
        );
        drop(first);
        assert!(pool.acquire(ip, None, &[]).is_some(), "a slot freed");
    }

    #[tokio::test]
    async fn a_cookie_for_a_backup_does_not_beat_healthy_primaries() {
        let pool = Pool::new("p", &settings(&[(1, false), (1, true)], Balance::Cookie));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let backup_token = pool.cookie_token(1).to_owned();
        assert_eq!(pool.select(ip, Some(&backup_token), &[]), Some(0));
        pool.servers[0].healthy.store(false, Ordering::Relaxed);
        assert_eq!(pool.select(ip, Some(&backup_token), &[]), Some(1));
    }

    #[test]
    fn smooth_weighted_order() {
        assert_eq!(
            smooth_schedule(&[(0, 5), (1, 1), (2, 1)]),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[tokio::test]
    async fn backups_only_when_every_primary_is_down() {
        let pool = Pool::new(
            "p",
            &settings(&[(1, false), (1, false), (1, true)], Balance::RoundRobin),
        );
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..10 {
            assert_ne!(pool.select(ip, None, &[]), Some(2));
        }
        pool.servers[0].healthy.store(false, Ordering::Relaxed);
        pool.record_failure(1);
        assert_eq!(pool.select(ip, None, &[]), Some(2));
        pool.servers[2].healthy.store(false, Ordering::Relaxed);
        assert_eq!(pool.select(ip, None, &[]), None);
    }

    #[tokio::test]
    async fn ip_hash_is_stable_and_cookie_tokens_hide_addresses() {
        let pool = Pool::new(
            "p",
            &settings(&[(1, false), (1, false), (1, false)], Balance::IpHash),
        );
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let first = pool.select(ip, None, &[]);
        for _ in 0..20 {
            assert_eq!(pool.select(ip, None, &[]), first);
        }
        let hex_url = |url: &str| url.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        for (i, server) in pool.servers.iter().enumerate() {
            assert!(
                !hex_url(&server.url).contains(pool.cookie_token(i)),
                "not the address in hex"
            );
        }
        // Keyed: a configured secret makes tokens stable across restarts and nodes; the pool
        // name and the secret both change them; without a secret each process draws its own.
        let mut keyed = settings(&[(1, false)], Balance::Cookie);
        keyed.cookie_secret = Some("s3cret".into());
        let one = Pool::new("p", &keyed).cookie_token(0).to_owned();
        assert_eq!(Pool::new("p", &keyed).cookie_token(0), one);
        assert_ne!(Pool::new("q", &keyed).cookie_token(0), one);
        keyed.cookie_secret = Some("other".into());
        assert_ne!(Pool::new("p", &keyed).cookie_token(0), one);
        let random = settings(&[(1, false)], Balance::Cookie);
        assert_ne!(
            Pool::new("p", &random).cookie_token(0),
            Pool::new("p", &random).cookie_token(0)
        );
    }
}
