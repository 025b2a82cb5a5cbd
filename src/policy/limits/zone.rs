//! One rate-limit zone: nginx's `ngx_http_limit_req_module` leaky bucket, key by key.
//!
//! Each key keeps nginx's two numbers: `excess` (milli-requests queued above the rate) and
//! `last` (the millisecond it was last updated). A request computes
//! `excess = max(0, excess - rate * elapsed_ms / 1000 + 1000)`; above `burst * 1000` it is
//! rejected (and nothing is recorded), otherwise it is recorded and delayed by
//! `(excess - delay * 1000) / rate` seconds when that is positive. A key seen for the first
//! time passes with excess 0, as in nginx. `rate` is nginx's integer `ctx->rate` (`5r/m` is
//! 83 milli-requests per second), so delays and rejections match nginx's to the millisecond.
//!
//! Memory is bounded like nginx's fixed-size zone: at most `max_keys` keys, the least recently
//! used evicted first (an evicted key comes back as new, with excess 0, as in nginx when its
//! zone is full). The keys live in [`SHARDS`] shards, each a `Mutex` over a small LRU: a
//! lookup locks one shard for a hash-map probe and a few pointer moves (tens of nanoseconds,
//! never across an `.await`), and two clients contend only when their keys share a shard, so
//! the locks are not a hot path for the process as a whole.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use crate::config::limits::ZoneSettings;
use crate::metrics::{Metrics, ZoneLabels};

use super::IpKey;

/// Shards per zone: enough that a few busy cores rarely meet on one lock.
pub const SHARDS: usize = 64;

/// The longest text key kept (a header or claim value): longer ones are cut, which can only
/// merge the buckets of clients that chose such values.
const MAX_TEXT_KEY: usize = 256;

/// What a bucket is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BucketKey {
    Ip(IpKey),
    Text(Box<[u8]>),
}

impl BucketKey {
    pub fn text(bytes: &[u8]) -> Self {
        BucketKey::Text(bytes[..bytes.len().min(MAX_TEXT_KEY)].into())
    }
}

/// One key's state: nginx's `ngx_http_limit_req_node_t` without the tree.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Milli-requests above the rate.
    excess: i64,
    /// Milliseconds since the zone's epoch.
    last: u64,
}

/// A zone's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Within the burst; `excess` (milli-requests) decides the delay.
    Pass { excess: i64 },
    /// Over the burst: a slot frees in this many milliseconds.
    Reject { retry_after_ms: u64 },
}

const NONE: u32 = u32::MAX;

struct Node {
    key: BucketKey,
    bucket: Bucket,
    prev: u32,
    next: u32,
}

/// A least-recently-used map with a fixed capacity, its order a list threaded through a slab.
struct Lru {
    index: HashMap<BucketKey, u32>,
    nodes: Vec<Node>,
    /// Most recently used.
    head: u32,
    /// Least recently used: evicted first.
    tail: u32,
    capacity: usize,
}

impl Lru {
    fn new(capacity: usize) -> Self {
        Self {
            index: HashMap::new(),
            nodes: Vec::new(),
            head: NONE,
            tail: NONE,
            capacity: capacity.max(1),
        }
    }

    fn unlink(&mut self, at: u32) {
        let (prev, next) = {
            let node = &self.nodes[at as usize];
            (node.prev, node.next)
        };
        match prev {
            NONE => self.head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NONE => self.tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, at: u32) {
        let head = self.head;
        {
            let node = &mut self.nodes[at as usize];
            node.prev = NONE;
            node.next = head;
        }
        if head != NONE {
            self.nodes[head as usize].prev = at;
        }
        self.head = at;
        if self.tail == NONE {
            self.tail = at;
        }
    }

    /// The key's bucket, marked most recently used.
    fn get(&mut self, key: &BucketKey) -> Option<&mut Bucket> {
        let at = *self.index.get(key)?;
        if self.head != at {
            self.unlink(at);
            self.push_front(at);
        }
        Some(&mut self.nodes[at as usize].bucket)
    }

    fn insert(&mut self, key: BucketKey, bucket: Bucket) {
        let at = if self.nodes.len() < self.capacity {
            self.nodes.push(Node {
                key: key.clone(),
                bucket,
                prev: NONE,
                next: NONE,
            });
            (self.nodes.len() - 1) as u32
        } else {
            // Full: the least recently used key's slot is reused.
            let at = self.tail;
            self.unlink(at);
            let node = &mut self.nodes[at as usize];
            let old = std::mem::replace(&mut node.key, key.clone());
            node.bucket = bucket;
            self.index.remove(&old);
            at
        };
        self.index.insert(key, at);
        self.push_front(at);
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}

/// The zone's counters, looked up once (not by label on every request).
struct Counters {
    passed: Counter,
    delayed: Counter,
    rejected: Counter,
    dry_run: Counter,
}

/// What a zone's outcome is counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Delayed,
    Rejected,
    DryRun,
}

pub struct Zone {
    pub name: String,
    pub settings: ZoneSettings,
    /// nginx's `ctx->rate`: milli-requests per second.
    rate: i64,
    /// nginx's `limit->burst`: milli-requests.
    burst: i64,
    /// nginx's `limit->delay`: milli-requests passed without delay.
    delay: i64,
    shards: Box<[Mutex<Lru>]>,
    hasher: RandomState,
    epoch: Instant,
    counters: Option<Counters>,
}

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zone")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Elapsed time beyond which every bucket has drained (and `rate * ms` could overflow).
const MAX_ELAPSED_MS: u64 = 1_000_000_000;

impl Zone {
    /// A zone counted in `metrics` under `name` (`None`: not counted, for the per-IP rates).
    pub fn new(name: &str, settings: &ZoneSettings, metrics: Option<&Metrics>) -> Self {
        let shards = SHARDS.min(settings.max_keys).max(1);
        let per_shard = settings.max_keys.div_ceil(shards);
        let counter = |metrics: &Metrics, result: &str| {
            metrics.rate_limits.get_or_create_owned(&ZoneLabels {
                zone: name.to_owned(),
                result: result.to_owned(),
            })
        };
        Self {
            name: name.to_owned(),
            rate: settings.rate.milli_per_second().max(1) as i64,
            burst: (settings.burst * 1000) as i64,
            delay: settings.delay_threshold().saturating_mul(1000) as i64,
            shards: (0..shards)
                .map(|_| Mutex::new(Lru::new(per_shard)))
                .collect(),
            hasher: RandomState::new(),
            epoch: Instant::now(),
            counters: metrics.map(|m| Counters {
                passed: counter(m, "passed"),
                delayed: counter(m, "delayed"),
                rejected: counter(m, "rejected"),
                dry_run: counter(m, "dry_run"),
            }),
            settings: settings.clone(),
        }
    }

    /// Milliseconds since the zone was made: nginx's `ngx_current_msec`.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn shard(&self, key: &BucketKey) -> &Mutex<Lru> {
        let hash = self.hasher.hash_one(key);
        &self.shards[(hash % self.shards.len() as u64) as usize]
    }

    /// nginx's `ngx_http_limit_req_lookup` at `now` (ms): `account` records a passing request
    /// (the last zone of a route, or the second pass over several zones).
    pub fn check(&self, key: &BucketKey, now: u64, account: bool) -> Check {
        let mut lru = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(bucket) = lru.get(key) else {
            if account {
                lru.insert(
                    key.clone(),
                    Bucket {
                        excess: 0,
                        last: now,
                    },
                );
            }
            return Check::Pass { excess: 0 };
        };
        // The clock is monotonic: nginx's guard against it going back is not needed.
        let ms = now.saturating_sub(bucket.last).min(MAX_ELAPSED_MS) as i64;
        // Clamped after the request's own 1000 is added, exactly as nginx does: a request
        // into a drained bucket has excess 0.
        let excess = (bucket.excess - self.rate * ms / 1000 + 1000).max(0);
        if excess > self.burst {
            // The first millisecond at which `rate * ms / 1000` drains enough.
            let need = bucket.excess + 1000 - self.burst;
            let at = (need * 1000 + self.rate - 1) / self.rate;
            return Check::Reject {
                retry_after_ms: (at - ms).max(1) as u64,
            };
        }
        if account {
            bucket.excess = excess;
            if ms > 0 {
                bucket.last = now;
            }
        }
        Check::Pass { excess }
    }

    /// How long a request that passed with `excess` waits: nginx's
    /// `(excess - limit->delay) * 1000 / ctx->rate` milliseconds.
    pub fn delay_ms(&self, excess: i64) -> u64 {
        if excess <= self.delay {
            0
        } else {
            ((excess - self.delay) * 1000 / self.rate) as u64
        }
    }

    pub fn count(&self, outcome: Outcome) {
        if let Some(counters) = &self.counters {
            match outcome {
                Outcome::Passed => counters.passed.inc(),
                Outcome::Delayed => counters.delayed.inc(),
                Outcome::Rejected => counters.rejected.inc(),
                Outcome::DryRun => counters.dry_run.inc(),
            };
        }
    }

    /// Keys held now (for tests and the bound).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Several zones over one request, as nginx's `limit_req` lines in one location: every zone
/// must pass; nothing is recorded when one rejects; the longest delay applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Wait this long (0: at once), then go on; bit `i` of `delayed` is set when zone `i`
    /// asked for a delay.
    Pass { delay_ms: u64, delayed: u64 },
    /// Refused by `zone` (its index), a slot free in `retry_after_ms`.
    Reject { zone: usize, retry_after_ms: u64 },
}

/// Decides over `zones`, each with its key (`None`: the request is not counted by that zone,
/// as nginx does with an empty key).
pub fn decide(zones: &[(&Zone, Option<BucketKey>)], now: u64) -> Decision {
    let counted = || {
        zones
            .iter()
            .enumerate()
            .filter_map(|(i, (zone, key))| key.as_ref().map(|key| (i, *zone, key)))
    };
    let mut first = counted();
    if let (Some((i, zone, key)), None) = (first.next(), first.next()) {
        return match zone.check(key, now, true) {
            Check::Pass { excess } => {
                let delay_ms = zone.delay_ms(excess);
                Decision::Pass {
                    delay_ms,
                    delayed: u64::from(delay_ms > 0) << (i as u32 % 64),
                }
            }
            Check::Reject { retry_after_ms } => Decision::Reject {
                zone: i,
                retry_after_ms,
            },
        };
    }
    // First every zone is asked, then (all passed) every zone records: a refusal by one
    // leaves the others untouched, as nginx's `ngx_http_limit_req_handler` does.
    for (i, zone, key) in counted() {
        if let Check::Reject { retry_after_ms } = zone.check(key, now, false) {
            return Decision::Reject {
                zone: i,
                retry_after_ms,
            };
        }
    }
    let (mut delay_ms, mut delayed) = (0, 0);
    for (i, zone, key) in counted() {
        // Another request may have slipped in between the passes; it is recorded anyway,
        // like nginx's `ngx_http_limit_req_account`, which no longer checks the burst.
        if let Check::Pass { excess } = zone.check(key, now, true) {
            let own = zone.delay_ms(excess);
            if own > 0 {
                delayed |= 1 << (i as u32 % 64);
            }
            delay_ms = delay_ms.max(own);
        }
    }
    Decision::Pass { delay_ms, delayed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::limits::{Rate, ZoneKey};

    pub(crate) fn settings(
        rate: &str,
        burst: u64,
        nodelay: bool,
        delay: Option<u64>,
    ) -> ZoneSettings {
        ZoneSettings {
            rate: crate::config::limits::parse_rate(rate).unwrap(),
            burst,
            nodelay,
            delay,
            key: ZoneKey::Ip,
            status: 429,
            dry_run: false,
            max_keys: 1000,
            ipv6_prefix: 64,
        }
    }

    fn key(n: u8) -> BucketKey {
        BucketKey::Ip(IpKey::of(std::net::IpAddr::from([192, 0, 2, n]), 64))
    }

    /// Ten requests at the same millisecond: (passed at once, delays in ms, rejected).
    fn burst_of_ten(zone: &Zone) -> (usize, Vec<u64>, usize) {
        let (mut now, mut delayed, mut rejected) = (0, Vec::new(), 0);
        for _ in 0..10 {
            match decide(&[(zone, Some(key(1)))], 1_000) {
                Decision::Pass { delay_ms: 0, .. } => now += 1,
                Decision::Pass { delay_ms, .. } => delayed.push(delay_ms),
                Decision::Reject { .. } => rejected += 1,
            }
        }
        (now, delayed, rejected)
    }

    #[test]
    fn nginx_burst_without_nodelay_queues_one_per_interval() {
        let zone = Zone::new("z", &settings("1r/s", 5, false, None), None);
        assert_eq!(
            burst_of_ten(&zone),
            (1, vec![1000, 2000, 3000, 4000, 5000], 4)
        );
    }

    #[test]
    fn nginx_nodelay_passes_the_burst_at_once() {
        let zone = Zone::new("z", &settings("1r/s", 5, true, None), None);
        assert_eq!(burst_of_ten(&zone), (6, vec![], 4));
        // One slot frees per second: the next second lets exactly one more through.
        assert!(matches!(
            zone.check(&key(1), 1_999, true),
            Check::Reject { retry_after_ms: 1 }
        ));
        assert_eq!(
            zone.check(&key(1), 2_000, true),
            Check::Pass { excess: 5000 }
        );
        assert!(matches!(
            zone.check(&key(1), 2_000, true),
            Check::Reject { .. }
        ));
    }

    #[test]
    fn nginx_two_stage_delay() {
        let zone = Zone::new("z", &settings("1r/s", 5, false, Some(3)), None);
        assert_eq!(burst_of_ten(&zone), (4, vec![1000, 2000], 4));
    }

    #[test]
    fn per_minute_rates_use_nginx_integer_rate() {
        // 5r/m is 83 milli-requests a second: a slot takes 1000/83 s ≈ 12.05 s, not 12.
        let zone = Zone::new("login", &settings("5r/m", 0, false, None), None);
        assert_eq!(zone.check(&key(1), 0, true), Check::Pass { excess: 0 });
        assert_eq!(
            zone.check(&key(1), 1, true),
            Check::Reject {
                retry_after_ms: 12_048
            }
        );
        assert!(matches!(
            zone.check(&key(1), 12_000, true),
            Check::Reject { .. }
        ));
        assert!(matches!(
            zone.check(&key(1), 12_049, true),
            Check::Pass { .. }
        ));
        let _ = Rate {
            requests: 5,
            per_minute: true,
        };
    }

    #[test]
    fn a_refusal_by_one_zone_records_nothing_in_the_others() {
        let wide = Zone::new("wide", &settings("10r/s", 100, true, None), None);
        let narrow = Zone::new("narrow", &settings("1r/s", 0, false, None), None);
        let zones = [(&wide, Some(key(1))), (&narrow, Some(key(1)))];
        assert_eq!(
            decide(&zones, 0),
            Decision::Pass {
                delay_ms: 0,
                delayed: 0
            }
        );
        assert!(matches!(
            decide(&zones, 0),
            Decision::Reject { zone: 1, .. }
        ));
        // `wide` saw one request recorded (first, excess 0), then one more for the next pass.
        assert_eq!(wide.check(&key(1), 0, false), Check::Pass { excess: 1000 });
        // A request without a key for a zone is not counted by it.
        assert_eq!(
            decide(&[(&narrow, None), (&wide, Some(key(2)))], 0),
            Decision::Pass {
                delay_ms: 0,
                delayed: 0
            }
        );
    }

    #[test]
    fn keys_are_bounded_and_the_least_recently_used_goes_first() {
        let mut small = settings("1r/s", 0, false, None);
        small.max_keys = 1;
        let zone = Zone::new("z", &small, None);
        assert_eq!(zone.check(&key(1), 0, true), Check::Pass { excess: 0 });
        assert!(matches!(zone.check(&key(1), 0, true), Check::Reject { .. }));
        assert_eq!(zone.check(&key(2), 0, true), Check::Pass { excess: 0 });
        assert_eq!(zone.len(), 1, "key 1 was evicted");
        assert_eq!(zone.check(&key(1), 0, true), Check::Pass { excess: 0 });

        let mut lru = Lru::new(3);
        for n in 1..=3 {
            lru.insert(
                key(n),
                Bucket {
                    excess: n.into(),
                    last: 0,
                },
            );
        }
        assert!(lru.get(&key(1)).is_some());
        lru.insert(key(4), Bucket { excess: 4, last: 0 });
        assert!(lru.get(&key(2)).is_none(), "2 was the least recently used");
        assert_eq!(lru.get(&key(1)).map(|b| b.excess), Some(1));
        assert_eq!(lru.get(&key(3)).map(|b| b.excess), Some(3));
        assert_eq!(lru.len(), 3);
    }
}
