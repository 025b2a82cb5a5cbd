//! The WSS hub: the channel server the seeds' services hand-write behind their proxies,
//! built into the edge as a route target (`Target::Hub`).
//!
//! - [`Hub`] outlives configurations: a reload hands it over (sessions, channels, history
//!   and idempotency keys stay) and swaps its [`HubConfig`];
//! - a publication ([`Hub::publish`]) gets its place in its channel's stream from the
//!   [`History`], travels on the [`Bus`] and reaches this node's subscribers through the
//!   [`Registry`], serialised once, queued per session without waiting on any socket;
//! - each session ([`session`]) is one task owning its WebSocket: the seeds' JSON protocol
//!   ([`protocol`]), recovery, presence, token refresh and JSON-RPC forwarding ([`rpc`]);
//! - the publish API ([`api`]) answers `/hub/*` on the admin listener.

pub mod api;
pub mod bus;
pub mod claims;
pub mod endpoint;
pub mod history;
pub mod protocol;
#[cfg(test)]
mod protocol_fuzz;
pub mod registry;
pub mod rpc;
pub mod session;
mod wire;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::hub::{namespace_of, valid_channel, HubSettings, NamespaceSettings};
use crate::metrics::{Metrics, NamespaceLabels};
pub use bus::{Bus, LocalBus};
pub use history::{History, MemoryHistory, Position, Recovery};
pub use registry::Registry;

/// Why the hub refused something asked of it (the publish API's `400`/`404`, a client's
/// `{"type":"error"}`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HubError {
    #[error("`{0}` is not a channel name (1-255 letters, digits and - _ . : @ / = ~ !)")]
    BadChannel(String),
    #[error("the message is {size} bytes; the namespace takes at most {max}")]
    TooLarge { size: usize, max: u64 },
    #[error("the bus did not take the publication: {0}")]
    Bus(String),
    #[error("a publish with this idempotency key is still under way")]
    KeyInFlight,
}

impl HubError {
    /// The `code` of the client's error message.
    pub fn code(&self) -> &'static str {
        match self {
            HubError::BadChannel(_) => "bad_channel",
            HubError::TooLarge { .. } => "too_large",
            HubError::Bus(_) | HubError::KeyInFlight => "unavailable",
        }
    }
}

/// JSON text exactly as its publisher wrote it, known to be valid JSON: what a publication
/// carries. Made only from a parsed `RawValue`, so no publish parses it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(Utf8Bytes);

impl JsonText {
    pub fn from_raw(raw: &serde_json::value::RawValue) -> Self {
        Self(Utf8Bytes::from(raw.get().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One publication, serialised once for every subscriber.
#[derive(Debug)]
pub struct Publication {
    pub channel: Arc<str>,
    pub epoch: Arc<str>,
    pub offset: u64,
    /// The publisher's JSON as sent: what a raw endpoint delivers.
    pub data: Utf8Bytes,
    /// `{"type":"message",…}`, made the first time an envelope endpoint needs it.
    envelope: OnceLock<Utf8Bytes>,
    /// When the hub accepted it (the delivery-latency histogram starts here).
    pub accepted: Instant,
}

impl Publication {
    pub fn new(channel: Arc<str>, position: &Position, data: Utf8Bytes) -> Self {
        Self {
            channel,
            epoch: position.epoch.clone(),
            offset: position.offset,
            data,
            envelope: OnceLock::new(),
            accepted: Instant::now(),
        }
    }

    /// The envelope form: `{"type":"message","channel":…,"offset":…,"epoch":…,"data":…}`.
    pub fn envelope(&self) -> &Utf8Bytes {
        self.envelope.get_or_init(|| {
            let channel = serde_json::Value::from(&*self.channel);
            let epoch = serde_json::Value::from(&*self.epoch);
            Utf8Bytes::from(format!(
                "{{\"type\":\"message\",\"channel\":{channel},\"epoch\":{epoch},\"offset\":{},\"data\":{}}}",
                self.offset,
                self.data.as_str()
            ))
        })
    }

    /// The bytes one subscriber is sent.
    pub fn frame(&self, envelope: bool) -> &Utf8Bytes {
        if envelope {
            self.envelope()
        } else {
            &self.data
        }
    }
}

/// What one configuration decides for the hub: namespaces, queue bounds, timers.
#[derive(Debug)]
pub struct HubConfig {
    pub settings: HubSettings,
    /// Namespaces that get their own metric label: configured ones and those of endpoints'
    /// subscription templates.
    labelled: BTreeSet<String>,
    fallback: NamespaceSettings,
    /// `limits.send_timeout`: a socket that takes no bytes for this long is dropped.
    pub send_timeout: Duration,
}

impl HubConfig {
    pub fn new(settings: &HubSettings, send_timeout: Duration) -> Self {
        let mut labelled: BTreeSet<String> = settings.namespaces.keys().cloned().collect();
        for endpoint in &settings.endpoints {
            for template in &endpoint.subscribe {
                if let Some(crate::config::hub::TemplatePart::Text(text)) = template.parts.first() {
                    if let Some((ns, _)) = text.split_once(':') {
                        labelled.insert(ns.to_owned());
                    }
                }
            }
        }
        Self {
            settings: settings.clone(),
            labelled,
            fallback: NamespaceSettings::default(),
            send_timeout,
        }
    }

    /// The channel's namespace policy, and whether the namespace is configured.
    pub fn namespace(&self, channel: &str) -> (&NamespaceSettings, bool) {
        match self.settings.namespaces.get(namespace_of(channel)) {
            Some(ns) => (ns, true),
            None => (&self.fallback, false),
        }
    }

    pub fn label(&self, channel: &str) -> NamespaceLabels {
        let ns = namespace_of(channel);
        NamespaceLabels {
            namespace: if self.labelled.contains(ns) {
                ns.to_owned()
            } else {
                "other".to_owned()
            },
        }
    }
}

/// What a publish answered (kept per idempotency key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub channel: String,
    pub epoch: String,
    pub offset: u64,
    /// Sessions on this node it was queued to.
    pub delivered: usize,
    /// Whether this answer is a repeat of an earlier publish with the same key.
    pub duplicate: bool,
}

/// Idempotency keys are remembered this long (Centrifugo's window too).
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);
const MAX_IDEMPOTENCY_KEYS: usize = 100_000;

/// A key's state: a publish with it under way, or its answer.
#[derive(Debug)]
enum Seen {
    InFlight(Instant),
    Done(Instant, Published),
}

/// What a key lookup found.
enum Claim {
    /// Nobody published with the key: this caller does, and the key is now in flight.
    Mine,
    /// The answer of the first publish with the key.
    Answered(Published),
    /// Another publish with the key is under way.
    Busy,
}

#[derive(Debug, Default)]
struct Idempotency {
    seen: HashMap<String, Seen>,
}

impl Idempotency {
    /// Looks the key up and, when nobody has it, marks it in flight, under one lock: two
    /// publishes with one key at the same moment cannot both go out.
    fn claim(&mut self, key: &str, now: Instant) -> Claim {
        let fresh = |at: &Instant| now.duration_since(*at) < IDEMPOTENCY_WINDOW;
        match self.seen.get(key) {
            Some(Seen::Done(at, published)) if fresh(at) => {
                return Claim::Answered(published.clone())
            }
            Some(Seen::InFlight(at)) if fresh(at) => return Claim::Busy,
            _ => {}
        }
        if self.seen.len() >= MAX_IDEMPOTENCY_KEYS {
            self.seen.retain(|_, seen| match seen {
                Seen::InFlight(at) | Seen::Done(at, _) => fresh(at),
            });
        }
        if self.seen.len() < MAX_IDEMPOTENCY_KEYS {
            self.seen.insert(key.to_owned(), Seen::InFlight(now));
        }
        Claim::Mine
    }

    /// The publish with the key ended: its answer is kept, or, when it failed, the key is
    /// free again (a retry may publish). A key `claim` found no room for stays unkept, so
    /// the table holds at most `MAX_IDEMPOTENCY_KEYS`.
    fn settle(&mut self, key: &str, answer: Option<&Published>, now: Instant) {
        match answer {
            Some(published) => {
                if let Some(seen) = self.seen.get_mut(key) {
                    *seen = Seen::Done(now, published.clone());
                }
            }
            None => {
                self.seen.remove(key);
            }
        }
    }
}

/// How long a publish waits for another one with the same key to finish.
const IDEMPOTENCY_WAIT: Duration = Duration::from_secs(10);

/// The hub of one process: made once, handed from each configuration to the next.
pub struct Hub {
    config: ArcSwap<HubConfig>,
    pub registry: Arc<Registry>,
    history: Arc<dyn History>,
    bus: Arc<dyn Bus>,
    pub metrics: Arc<Metrics>,
    idempotency: Mutex<Idempotency>,
    next_session: AtomicU64,
    /// Since start: publications accepted, and sessions they were queued to.
    pub publications: AtomicU64,
    pub deliveries: AtomicU64,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    /// The in-process hub: local bus, history in memory.
    pub fn new(
        config: HubConfig,
        metrics: &Arc<Metrics>,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Self> {
        let dropped = metrics
            .hub
            .drops
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: "slow_consumer".into(),
            })
            .clone();
        let registry = Arc::new(Registry::new(dropped));
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::new(registry.clone()));
        // Sessions hear of the shutdown through their wake (see `registry::Signal`).
        let signalled = registry.clone();
        let stopping = shutdown.clone();
        tasks.spawn(async move {
            stopping.cancelled().await;
            signalled.signal_all(registry::Signal::Shutdown);
        });
        Arc::new(Self {
            config: ArcSwap::from_pointee(config),
            registry,
            history: Arc::new(MemoryHistory::new()),
            bus,
            metrics: metrics.clone(),
            idempotency: Mutex::default(),
            next_session: AtomicU64::new(1),
            publications: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        })
    }

    /// A reload's new namespaces, bounds and timers; sessions read them at their next step.
    pub fn configure(&self, config: HubConfig) {
        self.config.store(Arc::new(config));
    }

    pub fn config(&self) -> arc_swap::Guard<Arc<HubConfig>> {
        self.config.load()
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub fn history(&self) -> &Arc<dyn History> {
        &self.history
    }

    /// Publishes `data` (JSON text) on `channel`: placed in the channel's stream, sent on the
    /// bus, queued to every subscriber here. With an `idempotency_key` seen in the last five
    /// minutes, nothing is published again and the first answer is repeated.
    pub async fn publish(
        &self,
        channel: &str,
        data: JsonText,
        idempotency_key: Option<&str>,
    ) -> Result<Published, HubError> {
        if !valid_channel(channel) {
            return Err(HubError::BadChannel(channel.to_owned()));
        }
        // An `Arc`, not a guard: the publish may wait (another with its key, the bus).
        let config = self.config.load_full();
        let (namespace, _) = config.namespace(channel);
        if data.len() as u64 > namespace.max_message_size {
            return Err(HubError::TooLarge {
                size: data.len(),
                max: namespace.max_message_size,
            });
        }
        let key = idempotency_key.map(|key| format!("{channel}\0{key}"));
        if let Some(key) = &key {
            let waiting_since = Instant::now();
            loop {
                let claim = lock(&self.idempotency).claim(key, Instant::now());
                match claim {
                    Claim::Mine => break,
                    Claim::Answered(mut first) => {
                        first.duplicate = true;
                        return Ok(first);
                    }
                    Claim::Busy if waiting_since.elapsed() < IDEMPOTENCY_WAIT => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Claim::Busy => return Err(HubError::KeyInFlight),
                }
            }
        }
        let (history_size, history_ttl) = (namespace.history_size, namespace.history_ttl);
        let outcome = self
            .publish_now(channel, data.0, history_size, history_ttl, &config)
            .await;
        if let Some(key) = &key {
            lock(&self.idempotency).settle(key, outcome.as_ref().ok(), Instant::now());
        }
        outcome
    }

    async fn publish_now(
        &self,
        channel: &str,
        data: Utf8Bytes,
        history_size: usize,
        history_ttl: Duration,
        config: &HubConfig,
    ) -> Result<Published, HubError> {
        let channel: Arc<str> = Arc::from(channel);
        let position = self
            .history
            .append(&channel, &data, history_size, history_ttl)
            .await;
        let publication = Arc::new(Publication::new(channel.clone(), &position, data));
        let delivered = self.bus.publish(publication).await.map_err(HubError::Bus)?;
        self.publications.fetch_add(1, Ordering::Relaxed);
        self.deliveries
            .fetch_add(delivered as u64, Ordering::Relaxed);
        let label = config.label(&channel);
        self.metrics.hub.publications.get_or_create(&label).inc();
        self.metrics
            .hub
            .deliveries
            .get_or_create(&label)
            .inc_by(delivered as u64);
        let published = Published {
            channel: channel.to_string(),
            epoch: position.epoch.to_string(),
            offset: position.offset,
            delivered,
            duplicate: false,
        };
        Ok(published)
    }
}

/// Locks `mutex`, also after a panic elsewhere held it: the hub's maps stay usable (every
/// update to them is a single insert or remove).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A random hex string of `bytes` bytes (epochs, session ids in logs).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if aws_lc_rs::rand::fill(&mut buf).is_err() {
        // Never fails on a working system; the clock still makes epochs differ.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        buf = nanos.to_le_bytes()[..bytes.min(16)].to_vec();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
