//! fail2ban built in: strikes (limit violations, auth failures) counted per address (IPv6 by
//! prefix) in a sliding window; `after` strikes within `within` ban the address for
//! `ban_time`. One table for the process's life: a reload hands it over whole, so bans survive
//! it, and the new settings apply to later strikes.
//!
//! The request path asks [`BanTable::banned`] on every accept and request: while nothing is
//! banned that is one atomic load; otherwise a read lock over a hash map.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use ipnet::IpNet;
use serde::Serialize;

use crate::config::limits::{BanReason, BanSettings};
use crate::metrics::{Metrics, ReasonLabels};

use super::IpKey;

#[derive(Debug, Clone)]
struct Ban {
    reason: BanReason,
    until: Instant,
    until_unix: u64,
}

/// One ban as `GET /bans` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BanView {
    /// The address, or its prefix (`2001:db8::/64`).
    pub ip: String,
    pub reason: &'static str,
    /// Unix time the ban ends.
    pub until: u64,
    pub seconds_left: u64,
}

pub struct BanTable {
    settings: ArcSwapOption<BanSettings>,
    bans: RwLock<HashMap<IpKey, Ban>>,
    /// `bans.len()`, read without the lock on every request.
    banned: AtomicUsize,
    strikes: Mutex<HashMap<IpKey, VecDeque<Instant>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for BanTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BanTable")
            .field("banned", &self.banned.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl BanTable {
    pub fn new(metrics: &Arc<Metrics>) -> Self {
        Self {
            settings: ArcSwapOption::empty(),
            bans: RwLock::new(HashMap::new()),
            banned: AtomicUsize::new(0),
            strikes: Mutex::new(HashMap::new()),
            metrics: metrics.clone(),
        }
    }

    /// The settings later strikes are judged by (`None`: nothing is counted; bans already
    /// made run their course).
    pub fn configure(&self, settings: Option<&BanSettings>) {
        self.settings.store(settings.cloned().map(Arc::new));
    }

    pub fn prefix(&self) -> u8 {
        self.settings.load().as_ref().map_or(64, |s| s.ipv6_prefix)
    }

    fn key(&self, ip: std::net::IpAddr) -> IpKey {
        IpKey::of(ip, self.prefix())
    }

    /// Whether `ip` is banned now.
    pub fn banned(&self, ip: std::net::IpAddr) -> bool {
        if self.banned.load(Ordering::Acquire) == 0 {
            return false;
        }
        let key = self.key(ip);
        let expired = {
            let bans = self.bans.read().unwrap_or_else(PoisonError::into_inner);
            match bans.get(&key) {
                None => return false,
                Some(ban) => ban.until <= Instant::now(),
            }
        };
        if expired {
            self.purge();
        }
        !expired
    }

    /// Counts a strike for `ip`; returns whether it banned the address now.
    pub fn strike(&self, ip: std::net::IpAddr, reason: BanReason) -> bool {
        let Some(settings) = self.settings.load_full() else {
            return false;
        };
        if !settings.count.contains(&reason) || self.banned(ip) {
            return false;
        }
        let key = IpKey::of(ip, settings.ipv6_prefix);
        let now = Instant::now();
        let reached = {
            let mut strikes = self.strikes.lock().unwrap_or_else(PoisonError::into_inner);
            if strikes.len() >= settings.max_entries && !strikes.contains_key(&key) {
                // Full: forget addresses whose strikes have all aged out of the window.
                strikes.retain(|_, times| {
                    times
                        .back()
                        .is_some_and(|t| now.duration_since(*t) < settings.within)
                });
                if strikes.len() >= settings.max_entries {
                    return false;
                }
            }
            let times = strikes.entry(key).or_default();
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) >= settings.within)
            {
                times.pop_front();
            }
            times.push_back(now);
            let reached = times.len() >= settings.after as usize;
            if reached {
                strikes.remove(&key);
            }
            reached
        };
        if reached {
            self.ban(key, reason, settings.ban_time, settings.max_entries);
        }
        reached
    }

    fn ban(&self, key: IpKey, reason: BanReason, ban_time: Duration, max_entries: usize) {
        let until_unix = SystemTime::now()
            .checked_add(ban_time)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        {
            let mut bans = self.bans.write().unwrap_or_else(PoisonError::into_inner);
            if bans.len() >= max_entries {
                let now = Instant::now();
                bans.retain(|_, ban| ban.until > now);
                if bans.len() >= max_entries {
                    return;
                }
            }
            bans.insert(
                key,
                Ban {
                    reason,
                    until: Instant::now() + ban_time,
                    until_unix,
                },
            );
            self.banned.store(bans.len(), Ordering::Release);
            self.metrics.banned_ips.set(bans.len() as i64);
        }
        self.metrics
            .bans
            .get_or_create(&ReasonLabels {
                reason: reason.as_str().into(),
            })
            .inc();
        tracing::warn!(ip = %key.net(), reason = reason.as_str(), until = until_unix, seconds = ban_time.as_secs(), "address banned");
    }

    /// Drops bans that have run out.
    fn purge(&self) {
        let now = Instant::now();
        let mut bans = self.bans.write().unwrap_or_else(PoisonError::into_inner);
        bans.retain(|_, ban| ban.until > now);
        self.banned.store(bans.len(), Ordering::Release);
        self.metrics.banned_ips.set(bans.len() as i64);
    }

    /// The bans in force, soonest to end first.
    pub fn list(&self) -> Vec<BanView> {
        self.purge();
        let now = Instant::now();
        let bans = self.bans.read().unwrap_or_else(PoisonError::into_inner);
        let mut list: Vec<BanView> = bans
            .iter()
            .map(|(key, ban)| BanView {
                ip: key.to_string(),
                reason: ban.reason.as_str(),
                until: ban.until_unix,
                seconds_left: ban.until.saturating_duration_since(now).as_secs(),
            })
            .collect();
        list.sort_by(|a, b| a.until.cmp(&b.until).then_with(|| a.ip.cmp(&b.ip)));
        list
    }

    /// Lifts the ban on `target` (an address, or a prefix as listed); returns whether one was
    /// lifted.
    pub fn remove(&self, target: &str) -> bool {
        let target = target.trim();
        let key = match target.parse::<std::net::IpAddr>() {
            Ok(ip) => self.key(ip),
            Err(_) => match target.parse::<IpNet>() {
                Ok(net) => self.key(net.network()),
                Err(_) => return false,
            },
        };
        let removed = {
            let mut bans = self.bans.write().unwrap_or_else(PoisonError::into_inner);
            let removed = bans.remove(&key).is_some();
            self.banned.store(bans.len(), Ordering::Release);
            self.metrics.banned_ips.set(bans.len() as i64);
            removed
        };
        self.strikes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        if removed {
            tracing::info!(ip = %key.net(), "ban lifted");
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(after: u32) -> BanSettings {
        BanSettings {
            after,
            within: Duration::from_secs(600),
            ban_time: Duration::from_secs(7200),
            count: vec![BanReason::RateLimit, BanReason::Auth],
            ipv6_prefix: 64,
            max_entries: 100,
        }
    }

    #[test]
    fn the_tenth_strike_bans_and_the_ban_can_be_lifted() {
        let metrics = Arc::new(Metrics::new());
        let table = BanTable::new(&metrics);
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        assert!(!table.strike(ip, BanReason::RateLimit), "not configured");
        table.configure(Some(&settings(10)));
        for _ in 0..9 {
            assert!(!table.strike(ip, BanReason::RateLimit));
        }
        assert!(!table.banned(ip));
        assert!(table.strike(ip, BanReason::Auth));
        assert!(table.banned(ip));
        let list = table.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].ip, "192.0.2.7");
        assert_eq!(list[0].reason, "auth");
        assert!(list[0].seconds_left > 7100);
        let text = metrics.encode();
        assert!(
            text.contains("tlsgate_bans_total{reason=\"auth\"} 1"),
            "{text}"
        );
        assert!(text.contains("tlsgate_banned_ips 1"), "{text}");
        assert!(table.remove("192.0.2.7"));
        assert!(!table.banned(ip));
        assert!(!table.remove("192.0.2.7"));
        assert!(metrics.encode().contains("tlsgate_banned_ips 0"));
    }

    #[test]
    fn an_ipv6_ban_covers_its_slash_64() {
        let table = BanTable::new(&Arc::new(Metrics::new()));
        table.configure(Some(&settings(1)));
        let one: std::net::IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same: std::net::IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(table.strike(one, BanReason::RateLimit));
        assert!(table.banned(same));
        assert!(!table.banned(other));
        assert_eq!(table.list()[0].ip, "2001:db8:1:2::/64");
        assert!(table.remove("2001:db8:1:2::/64"));
        assert!(!table.banned(one));
    }

    #[test]
    fn only_configured_reasons_count() {
        let table = BanTable::new(&Arc::new(Metrics::new()));
        let mut only_auth = settings(1);
        only_auth.count = vec![BanReason::Auth];
        table.configure(Some(&only_auth));
        let ip: std::net::IpAddr = "192.0.2.8".parse().unwrap();
        assert!(!table.strike(ip, BanReason::RateLimit));
        assert!(table.strike(ip, BanReason::Auth));
    }
}
