//! Per-IP caps (nginx's `limit_conn addr N`, and the per-IP WebSocket caps applications keep
//! re-implementing): concurrent connections and WebSockets, counted per address (IPv6 by
//! prefix) by guards that give their place back when dropped; new TLS handshakes and
//! WebSocket upgrades per minute, as leaky buckets (`N r/m`, burst `N - 1`, nodelay: N at
//! once, then one more every 60/N s).
//!
//! The count tables are handed over by a reload whole (open connections are still open); the
//! caps are the configuration's.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};

use super::zone::{BucketKey, Check, Zone};
use super::IpKey;
use crate::config::limits::{PerIpSettings, Rate, ZoneKey, ZoneSettings};

const SHARDS: usize = 32;

/// Concurrent uses per address, sharded like the zones.
pub struct Counts {
    shards: Box<[Mutex<HashMap<IpKey, u32>>]>,
    hasher: RandomState,
}

impl std::fmt::Debug for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counts").finish_non_exhaustive()
    }
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

/// One place taken under a cap, given back when dropped.
#[derive(Debug)]
pub struct CountGuard {
    counts: Arc<Counts>,
    key: IpKey,
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        let mut shard = self.counts.shard(&self.key);
        if let Some(count) = shard.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                shard.remove(&self.key);
            }
        }
    }
}

impl Counts {
    fn shard(&self, key: &IpKey) -> std::sync::MutexGuard<'_, HashMap<IpKey, u32>> {
        let at = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        self.shards[at]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for `key` when fewer than `cap` are taken (`cap` 0: no cap, still counted so a
    /// cap set by a reload sees the connections already open).
    pub fn acquire(self: &Arc<Self>, key: IpKey, cap: u32) -> Option<CountGuard> {
        let mut shard = self.shard(&key);
        let count = shard.entry(key).or_insert(0);
        if cap != 0 && *count >= cap {
            return None;
        }
        *count += 1;
        drop(shard);
        Some(CountGuard {
            counts: self.clone(),
            key,
        })
    }

    /// Places `key` holds now.
    pub fn held(&self, key: &IpKey) -> u32 {
        self.shard(key).get(key).copied().unwrap_or(0)
    }
}

/// A per-minute cap as a zone.
fn per_minute(n: u32, max_keys: usize) -> Option<Zone> {
    (n > 0).then(|| {
        Zone::new(
            "per_ip",
            &ZoneSettings {
                rate: Rate {
                    requests: u64::from(n),
                    per_minute: true,
                },
                burst: u64::from(n - 1),
                nodelay: true,
                delay: None,
                key: ZoneKey::Ip,
                status: 429,
                dry_run: false,
                max_keys,
                ipv6_prefix: 64,
            },
            None,
        )
    })
}

/// Which cap refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Connections,
    Websockets,
    Handshakes,
    Upgrades,
}

impl Cap {
    pub fn as_str(self) -> &'static str {
        match self {
            Cap::Connections => "connections",
            Cap::Websockets => "websockets",
            Cap::Handshakes => "handshakes",
            Cap::Upgrades => "upgrades",
        }
    }
}

#[derive(Debug)]
pub struct PerIp {
    pub settings: PerIpSettings,
    connections: Arc<Counts>,
    websockets: Arc<Counts>,
    handshakes: Option<Arc<Zone>>,
    upgrades: Option<Arc<Zone>>,
}

impl PerIp {
    /// The caps of `settings`, with `previous`'s counts (and its per-minute buckets when
    /// their numbers did not change).
    pub fn new(settings: &PerIpSettings, previous: Option<&PerIp>) -> Self {
        let carried = |old: Option<&Arc<Zone>>, n: u32| {
            old.filter(|z| z.settings.rate.requests == u64::from(n))
                .cloned()
                .or_else(|| per_minute(n, settings.max_keys).map(Arc::new))
        };
        Self {
            settings: settings.clone(),
            connections: previous.map_or_else(Default::default, |p| p.connections.clone()),
            websockets: previous.map_or_else(Default::default, |p| p.websockets.clone()),
            handshakes: carried(
                previous.and_then(|p| p.handshakes.as_ref()),
                settings.handshakes_per_minute,
            ),
            upgrades: carried(
                previous.and_then(|p| p.upgrades.as_ref()),
                settings.upgrades_per_minute,
            ),
        }
    }

    pub fn key(&self, ip: std::net::IpAddr) -> IpKey {
        IpKey::of(ip, self.settings.ipv6_prefix)
    }

    /// A new connection from `ip` (`handshake`: it will do a TLS handshake).
    pub fn connect(&self, ip: std::net::IpAddr, handshake: bool) -> Result<CountGuard, Cap> {
        let key = self.key(ip);
        if handshake {
            if let Some(zone) = &self.handshakes {
                if let Check::Reject { .. } = zone.check(&BucketKey::Ip(key), zone.now_ms(), true) {
                    return Err(Cap::Handshakes);
                }
            }
        }
        self.connections
            .acquire(key, self.settings.connections)
            .ok_or(Cap::Connections)
    }

    /// A connection counted but never refused (from a trusted proxy).
    pub fn track(&self, ip: std::net::IpAddr) -> Option<CountGuard> {
        self.connections.acquire(self.key(ip), 0)
    }

    /// A WebSocket upgrade from `ip`; the guard is held for the WebSocket's life. On refusal,
    /// the seconds until a per-minute slot frees (1 for the concurrency cap).
    pub fn upgrade(&self, ip: std::net::IpAddr) -> Result<CountGuard, (Cap, u64)> {
        let key = self.key(ip);
        if let Some(zone) = &self.upgrades {
            if let Check::Reject { retry_after_ms } =
                zone.check(&BucketKey::Ip(key), zone.now_ms(), true)
            {
                return Err((Cap::Upgrades, retry_after_ms.div_ceil(1000).max(1)));
            }
        }
        self.websockets
            .acquire(key, self.settings.websockets)
            .ok_or((Cap::Websockets, 1))
    }

    /// Connections `ip`'s address (prefix) holds now.
    pub fn connections_of(&self, ip: std::net::IpAddr) -> u32 {
        self.connections.held(&self.key(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eleventh_connection_is_refused_and_a_closed_one_frees_its_place() {
        let caps = PerIp::new(
            &PerIpSettings {
                connections: 10,
                ..PerIpSettings::default()
            },
            None,
        );
        let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let mut open: Vec<_> = (0..10).map(|_| caps.connect(ip, true).unwrap()).collect();
        assert_eq!(caps.connect(ip, true).unwrap_err(), Cap::Connections);
        assert!(caps.connect("192.0.2.2".parse().unwrap(), true).is_ok());
        open.pop();
        assert!(caps.connect(ip, true).is_ok());
        // A reload keeps the counts: the open nine (plus one) still count.
        let reloaded = PerIp::new(&caps.settings, Some(&caps));
        assert_eq!(reloaded.connections_of(ip), 9);
        drop(open);
        assert_eq!(reloaded.connections_of(ip), 0);
    }

    #[test]
    fn handshakes_and_upgrades_per_minute() {
        let caps = PerIp::new(
            &PerIpSettings {
                handshakes_per_minute: 3,
                upgrades_per_minute: 2,
                websockets: 1,
                ..PerIpSettings::default()
            },
            None,
        );
        let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(caps.connect(ip, true).is_ok());
        }
        assert_eq!(caps.connect(ip, true).unwrap_err(), Cap::Handshakes);
        assert!(
            caps.connect(ip, false).is_ok(),
            "plain connections do no handshake"
        );
        let first = caps.upgrade(ip).unwrap();
        assert_eq!(caps.upgrade(ip).unwrap_err(), (Cap::Websockets, 1));
        drop(first);
        let (cap, retry) = caps.upgrade(ip).unwrap_err();
        assert_eq!(cap, Cap::Upgrades);
        assert!((29..=31).contains(&retry), "{retry}");
    }
}
