//! This node's subscribers: channel → sessions, and every session by id, each session a
//! [`SessionHandle`] whose bounded outbox publishers fill without waiting on its socket.
//!
//! Channels sit in shards of a hash map, each locked only for a probe or one fan-out loop
//! (never across an `.await`). A fan-out queues one shared `Arc<Publication>` per session;
//! a session whose outbox is past its bound is kicked (`4429`) and its queue freed, so a
//! slow client neither slows the others nor grows memory.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::counter::Counter;

use super::{lock, Publication};
use crate::config::hub::QueueSettings;

/// Something queued for one session.
#[derive(Debug)]
pub enum Outgoing {
    Publication(Arc<Publication>),
    /// A message the hub made for this session (a join/leave event, a JSON-RPC answer).
    Text(Utf8Bytes),
    /// The publish API took this channel's subscription away.
    Unsubscribed(Arc<str>),
}

/// Why a session was told to end from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kick {
    /// Its outbox passed `hub.queue`: `4429`.
    SlowConsumer,
    /// `POST /hub/disconnect`.
    Disconnect { code: u16, reason: String },
}

#[derive(Debug, Default)]
struct Outbox {
    items: VecDeque<Outgoing>,
    bytes: usize,
    kicked: Option<Kick>,
}

/// What the server tells a session, through its wake rather than a wait of its own on each
/// token (an idle session's future stays small).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The server is shutting down: flush, then `1001`.
    Shutdown = 1,
    /// A reload removed the session's route: `1001` after a random part of `reload_grace`.
    Removed = 2,
}

/// The shared half of a session: what publishers and the publish API reach.
#[derive(Debug)]
pub struct SessionHandle {
    pub id: u64,
    /// The token's `sub`, once authenticated.
    user: OnceLock<Arc<str>>,
    /// Whether publications go out in the envelope form.
    pub envelope: bool,
    limits: QueueSettings,
    outbox: Mutex<Outbox>,
    /// The session's task, and whether it was woken since it last looked: something was
    /// queued, or it was kicked ([`SessionHandle::kicked`]) or signalled.
    waker: AtomicWaker,
    woken: AtomicBool,
    signals: AtomicU8,
    /// The closer of the session's route, to know whether a reload removed it (cancelled
    /// then); the session does not wait on it.
    closer: CancellationToken,
}

impl SessionHandle {
    pub fn new(id: u64, envelope: bool, limits: QueueSettings, closer: CancellationToken) -> Self {
        Self {
            id,
            user: OnceLock::new(),
            envelope,
            limits,
            outbox: Mutex::default(),
            waker: AtomicWaker::new(),
            woken: AtomicBool::new(false),
            signals: AtomicU8::new(0),
            closer,
        }
    }

    /// Wakes the session's task (or its next poll, if it is running).
    pub fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once the session was woken since it last looked.
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A wake between the first look and the registration is seen here.
        if self.woken.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub fn woken(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_woken(cx))
    }

    pub fn signal(&self, signal: Signal) {
        self.signals.fetch_or(signal as u8, Ordering::AcqRel);
        self.wake();
    }

    pub fn signalled(&self, signal: Signal) -> bool {
        self.signals.load(Ordering::Acquire) & signal as u8 != 0
    }

    pub fn user(&self) -> Option<&Arc<str>> {
        self.user.get()
    }

    /// Sets the session's user once (a refresh keeps the same `sub`).
    pub fn set_user(&self, user: Arc<str>) {
        let _ = self.user.set(user);
    }

    /// Queues `item` of `len` bytes; false when the session is already ending, or (the
    /// session then kicked) when that passes the queue's bound.
    pub fn push(&self, item: Outgoing, len: usize) -> bool {
        self.offer(item, len).is_ok()
    }

    /// As [`SessionHandle::push`]; `Err` says how many queued messages were discarded
    /// (those queued and this one, when this one passed the bound; 0 when already ending).
    pub fn offer(&self, item: Outgoing, len: usize) -> Result<(), usize> {
        let mut outbox = lock(&self.outbox);
        if outbox.kicked.is_some() {
            return Err(0);
        }
        if outbox.items.len() >= self.limits.max_messages
            || (outbox.bytes + len) as u64 > self.limits.max_bytes
        {
            outbox.kicked = Some(Kick::SlowConsumer);
            // Freed now, not when the slow socket finally closes.
            let discarded = std::mem::take(&mut outbox.items).len() + 1;
            outbox.bytes = 0;
            drop(outbox);
            self.wake();
            return Err(discarded);
        }
        let was_empty = outbox.items.is_empty();
        outbox.items.push_back(item);
        outbox.bytes += len;
        drop(outbox);
        if was_empty {
            self.wake();
        }
        Ok(())
    }

    /// Everything queued, in order; the outbox is left empty (and its memory freed).
    pub fn take(&self) -> VecDeque<Outgoing> {
        let mut outbox = lock(&self.outbox);
        outbox.bytes = 0;
        std::mem::take(&mut outbox.items)
    }

    /// Ends the session from outside.
    pub fn kick(&self, kick: Kick) {
        let mut outbox = lock(&self.outbox);
        if outbox.kicked.is_none() {
            outbox.kicked = Some(kick);
            outbox.items = VecDeque::new();
            outbox.bytes = 0;
        }
        drop(outbox);
        self.wake();
    }

    pub fn kicked(&self) -> Option<Kick> {
        lock(&self.outbox).kicked.clone()
    }
}

#[derive(Debug, Default)]
struct Channel {
    members: HashMap<u64, Arc<SessionHandle>>,
}

/// One lock's worth of channels.
type Shard = Mutex<HashMap<Arc<str>, Channel>>;

const SHARDS: usize = 32;

/// Channel → sessions, and session id → session.
#[derive(Debug)]
pub struct Registry {
    shards: Box<[Shard]>,
    hasher: RandomState,
    sessions: Mutex<HashMap<u64, Arc<SessionHandle>>>,
    /// Publications discarded from slow subscribers' queues.
    dropped: Counter,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(Counter::default())
    }
}

/// Who is in a channel on this node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Presence {
    pub connections: usize,
    pub users: BTreeSet<String>,
}

impl Registry {
    /// `dropped` counts publications discarded from slow subscribers' queues.
    pub fn new(dropped: Counter) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            sessions: Mutex::default(),
            dropped,
        }
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, HashMap<Arc<str>, Channel>> {
        let index = self.hasher.hash_one(channel) as usize % SHARDS;
        lock(&self.shards[index])
    }

    pub fn register(&self, session: &Arc<SessionHandle>) {
        lock(&self.sessions).insert(session.id, session.clone());
    }

    /// Signals every session here.
    pub fn signal_all(&self, signal: Signal) {
        for session in lock(&self.sessions).values() {
            session.signal(signal);
        }
    }

    /// Signals [`Signal::Removed`] to the sessions whose route's closer was cancelled.
    pub fn signal_removed(&self) {
        for session in lock(&self.sessions).values() {
            if session.closer.is_cancelled() {
                session.signal(Signal::Removed);
            }
        }
    }

    pub fn deregister(&self, id: u64) {
        lock(&self.sessions).remove(&id);
    }

    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// The sessions whose user is `user`.
    pub fn sessions_of(&self, user: &str) -> Vec<Arc<SessionHandle>> {
        lock(&self.sessions)
            .values()
            .filter(|s| s.user().is_some_and(|u| **u == *user))
            .cloned()
            .collect()
    }

    /// Adds `session` to `channel`. Returns the channel's name as kept here (one copy per
    /// channel, which its subscribers share) and false when the session was there already.
    pub fn subscribe(&self, channel: &str, session: &Arc<SessionHandle>) -> (Arc<str>, bool) {
        let mut shard = self.shard(channel);
        let name = match shard.get_key_value(channel) {
            Some((name, _)) => name.clone(),
            None => Arc::from(channel),
        };
        let entry = shard.entry(name.clone()).or_default();
        let added = entry.members.insert(session.id, session.clone()).is_none();
        (name, added)
    }

    /// Removes session `id` from `channel`; false when it was not there.
    pub fn unsubscribe(&self, channel: &str, id: u64) -> bool {
        let mut shard = self.shard(channel);
        let Some(entry) = shard.get_mut(channel) else {
            return false;
        };
        let removed = entry.members.remove(&id).is_some();
        if entry.members.is_empty() {
            shard.remove(channel);
        }
        removed
    }

    /// Queues `publication` to every subscriber of its channel here; how many took it.
    pub fn deliver(&self, publication: &Arc<Publication>) -> usize {
        let shard = self.shard(&publication.channel);
        let Some(channel) = shard.get(&*publication.channel) else {
            return 0;
        };
        // Both forms' lengths are known before the loop (the envelope made at most once).
        let raw_len = publication.data.len();
        let mut envelope_len = None;
        let (mut delivered, mut dropped) = (0, 0);
        for session in channel.members.values() {
            let len = if session.envelope {
                *envelope_len.get_or_insert_with(|| publication.envelope().len())
            } else {
                raw_len
            };
            match session.offer(Outgoing::Publication(publication.clone()), len) {
                Ok(()) => delivered += 1,
                Err(discarded) => dropped += discarded as u64,
            }
        }
        if dropped > 0 {
            self.dropped.inc_by(dropped);
        }
        delivered
    }

    /// Queues `text` to every subscriber of `channel` but `except` (join/leave events).
    pub fn deliver_text(&self, channel: &str, text: &Utf8Bytes, except: u64) {
        let shard = self.shard(channel);
        if let Some(channel) = shard.get(channel) {
            for session in channel.members.values().filter(|s| s.id != except) {
                session.push(Outgoing::Text(text.clone()), text.len());
            }
        }
    }

    pub fn presence(&self, channel: &str) -> Presence {
        let shard = self.shard(channel);
        let Some(channel) = shard.get(channel) else {
            return Presence::default();
        };
        Presence {
            connections: channel.members.len(),
            users: channel
                .members
                .values()
                .filter_map(|s| s.user().map(|u| u.to_string()))
                .collect(),
        }
    }

    /// Every channel with subscribers here, with their count, sorted by name.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let mut all: Vec<(String, usize)> = self
            .shards
            .iter()
            .flat_map(|shard| {
                lock(shard)
                    .iter()
                    .map(|(name, c)| (name.to_string(), c.members.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Position;

    fn publication(channel: &str, offset: u64, data: &str) -> Arc<Publication> {
        let position = Position {
            epoch: Arc::from("e"),
            offset,
        };
        Arc::new(Publication::new(
            Arc::from(channel),
            &position,
            Utf8Bytes::from(data.to_owned()),
        ))
    }

    #[tokio::test]
    async fn wakes_are_not_lost_and_signals_reach_the_sessions_they_are_for() {
        use std::time::Duration;
        let limits = QueueSettings::default();
        let handle = Arc::new(SessionHandle::new(
            1,
            false,
            limits,
            CancellationToken::new(),
        ));
        // A wake before anyone waits is kept for the next wait, once.
        handle.wake();
        tokio::time::timeout(Duration::from_secs(1), handle.woken())
            .await
            .expect("the earlier wake");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), handle.woken())
                .await
                .is_err(),
            "a wake is used up"
        );
        // A wake from another thread while the session waits.
        let waiter = tokio::spawn({
            let handle = handle.clone();
            async move {
                handle.woken().await;
                handle.signalled(Signal::Shutdown)
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::thread::spawn({
            let handle = handle.clone();
            move || handle.signal(Signal::Shutdown)
        });
        let seen = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("the waiter");
        assert!(seen);
        // Removal reaches only the sessions whose route's closer was cancelled.
        let registry = Registry::default();
        let removed_route = CancellationToken::new();
        let gone = Arc::new(SessionHandle::new(2, false, limits, removed_route.clone()));
        let kept = Arc::new(SessionHandle::new(
            3,
            false,
            limits,
            CancellationToken::new(),
        ));
        registry.register(&gone);
        registry.register(&kept);
        removed_route.cancel();
        registry.signal_removed();
        assert!(gone.signalled(Signal::Removed) && !kept.signalled(Signal::Removed));
        registry.signal_all(Signal::Shutdown);
        assert!(gone.signalled(Signal::Shutdown) && kept.signalled(Signal::Shutdown));
    }

    #[test]
    fn a_publication_reaches_each_subscriber_once_and_only_its_channel() {
        let registry = Registry::default();
        let limits = QueueSettings::default();
        let a = Arc::new(SessionHandle::new(
            1,
            false,
            limits,
            CancellationToken::new(),
        ));
        let b = Arc::new(SessionHandle::new(
            2,
            true,
            limits,
            CancellationToken::new(),
        ));
        let prices: Arc<str> = Arc::from("prices");
        assert!(registry.subscribe(&prices, &a).1);
        assert!(
            !registry.subscribe(&prices, &a).1,
            "a second subscribe is not a second member"
        );
        registry.subscribe(&prices, &b);
        registry.subscribe("chat:1", &b);
        assert_eq!(registry.deliver(&publication("prices", 1, "{\"p\":1}")), 2);
        assert_eq!(a.take().len(), 1);
        match b.take().pop_front() {
            Some(Outgoing::Publication(p)) => assert_eq!(
                p.frame(true).as_str(),
                "{\"type\":\"message\",\"channel\":\"prices\",\"epoch\":\"e\",\"offset\":1,\"data\":{\"p\":1}}"
            ),
            other => panic!("expected the publication, got {other:?}"),
        }
        assert!(registry.unsubscribe("prices", 1));
        assert_eq!(registry.deliver(&publication("prices", 2, "{}")), 1);
        assert_eq!(
            registry.channels(),
            [("chat:1".to_owned(), 1), ("prices".to_owned(), 1)]
        );
    }

    #[test]
    fn a_subscriber_past_its_queue_bound_is_kicked_and_its_queue_freed() {
        let registry = Registry::default();
        let limits = QueueSettings {
            max_messages: 3,
            max_bytes: 1 << 20,
        };
        let slow = Arc::new(SessionHandle::new(
            1,
            false,
            limits,
            CancellationToken::new(),
        ));
        let fast = Arc::new(SessionHandle::new(
            2,
            false,
            limits,
            CancellationToken::new(),
        ));
        let channel: Arc<str> = Arc::from("prices");
        registry.subscribe(&channel, &slow);
        registry.subscribe(&channel, &fast);
        for offset in 1..=3 {
            assert_eq!(registry.deliver(&publication("prices", offset, "1")), 2);
            fast.take();
        }
        // The fourth finds the slow one's queue full: it is kicked, the fast one is not.
        assert_eq!(registry.deliver(&publication("prices", 4, "1")), 1);
        assert_eq!(slow.kicked(), Some(Kick::SlowConsumer));
        assert!(slow.take().is_empty());
        assert_eq!(fast.take().len(), 1);
        assert_eq!(fast.kicked(), None);
    }
}
