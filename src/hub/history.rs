//! Channel streams: every publication's `(epoch, offset)` and, for namespaces with history,
//! the last publications kept for recovery. A trait, so a shared store (Redis Streams) can
//! take the in-memory one's place when several nodes share channels.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio_tungstenite::tungstenite::Utf8Bytes;

pub use futures_util::future::BoxFuture;

/// A place in a channel's stream. The epoch changes when the stream is lost (a restart, an
/// expiry), so offsets from an earlier epoch cannot be recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: Arc<str>,
    pub offset: u64,
}

/// A kept publication.
#[derive(Debug, Clone)]
pub struct Entry {
    pub offset: u64,
    pub data: Utf8Bytes,
}

/// The answer to "what did I miss since `(epoch, offset)`".
#[derive(Debug)]
pub enum Recovery {
    /// Every publication after the offset, in order (possibly none), and the stream's top.
    Recovered(Vec<Entry>, Position),
    /// The window is gone (other epoch, or entries expired or pushed out): reload state.
    Lost(Position),
}

pub trait History: Send + Sync {
    /// Gives the next place in `channel`'s stream to `data`, keeping it when `size` > 0.
    fn append<'a>(
        &'a self,
        channel: &'a Arc<str>,
        data: &'a Utf8Bytes,
        size: usize,
        ttl: Duration,
    ) -> BoxFuture<'a, Position>;
    /// The stream's current top (offset 0 before any publication).
    fn top<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Position>;
    /// What was published after `offset` in `epoch`.
    fn since<'a>(
        &'a self,
        channel: &'a str,
        epoch: &'a str,
        offset: u64,
    ) -> BoxFuture<'a, Recovery>;
    /// The last `limit` kept publications, oldest first, and the top.
    fn recent<'a>(
        &'a self,
        channel: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, (Position, Vec<Entry>)>;
}

#[derive(Debug)]
struct Stream {
    epoch: Arc<str>,
    last: u64,
    /// Kept publications with when they were kept, oldest first.
    entries: VecDeque<(Instant, Entry)>,
    ttl: Duration,
    touched: Instant,
}

impl Stream {
    fn new(now: Instant) -> Self {
        Self {
            epoch: Arc::from(super::random_hex(8)),
            last: 0,
            entries: VecDeque::new(),
            ttl: Duration::from_secs(300),
            touched: now,
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.entries.front() {
            if now.duration_since(*at) < self.ttl {
                break;
            }
            self.entries.pop_front();
        }
    }

    fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.last,
        }
    }
}

/// One lock's worth of channels.
type Shard = Mutex<HashMap<Arc<str>, Stream>>;

const SHARDS: usize = 16;
/// Streams per shard past which idle ones are forgotten (their epoch with them).
const SWEEP_AT: usize = 4096;
/// A stream with nothing kept is forgotten after this long unused.
const IDLE_STREAM: Duration = Duration::from_secs(3600);

/// Streams in this process's memory, in shards locked only for a map probe.
pub struct MemoryHistory {
    shards: Box<[Shard]>,
    hasher: RandomState,
}

impl Default for MemoryHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryHistory {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, channel: &str) -> &Shard {
        let index = self.hasher.hash_one(channel) as usize % SHARDS;
        &self.shards[index]
    }

    fn with_stream<T>(&self, channel: &str, f: impl FnOnce(&mut Stream) -> T) -> T {
        let now = Instant::now();
        let mut shard = super::lock(self.shard(channel));
        match shard.get_mut(channel) {
            Some(stream) => {
                stream.touched = now;
                stream.prune(now);
                f(stream)
            }
            None => {
                if shard.len() >= SWEEP_AT {
                    shard.retain(|_, s| {
                        s.prune(now);
                        !s.entries.is_empty() || now.duration_since(s.touched) < IDLE_STREAM
                    });
                }
                f(shard
                    .entry(Arc::from(channel))
                    .or_insert_with(|| Stream::new(now)))
            }
        }
    }
}

impl History for MemoryHistory {
    fn append<'a>(
        &'a self,
        channel: &'a Arc<str>,
        data: &'a Utf8Bytes,
        size: usize,
        ttl: Duration,
    ) -> BoxFuture<'a, Position> {
        let position = self.with_stream(channel, |stream| {
            stream.last += 1;
            stream.ttl = ttl;
            if size > 0 {
                let entry = Entry {
                    offset: stream.last,
                    data: data.clone(),
                };
                stream.entries.push_back((Instant::now(), entry));
                while stream.entries.len() > size {
                    stream.entries.pop_front();
                }
            } else {
                stream.entries.clear();
            }
            stream.position()
        });
        Box::pin(std::future::ready(position))
    }

    fn top<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Position> {
        Box::pin(std::future::ready(
            self.with_stream(channel, |s| s.position()),
        ))
    }

    fn since<'a>(
        &'a self,
        channel: &'a str,
        epoch: &'a str,
        offset: u64,
    ) -> BoxFuture<'a, Recovery> {
        let recovery = self.with_stream(channel, |stream| {
            let top = stream.position();
            if *stream.epoch != *epoch || offset > stream.last {
                return Recovery::Lost(top);
            }
            if offset == stream.last {
                return Recovery::Recovered(Vec::new(), top);
            }
            // Every offset after `offset` must still be here.
            match stream.entries.front() {
                Some((_, first)) if first.offset <= offset + 1 => Recovery::Recovered(
                    stream
                        .entries
                        .iter()
                        .filter(|(_, entry)| entry.offset > offset)
                        .map(|(_, entry)| entry.clone())
                        .collect(),
                    top,
                ),
                _ => Recovery::Lost(top),
            }
        });
        Box::pin(std::future::ready(recovery))
    }

    fn recent<'a>(
        &'a self,
        channel: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, (Position, Vec<Entry>)> {
        let recent = self.with_stream(channel, |stream| {
            let skip = stream.entries.len().saturating_sub(limit);
            let entries = stream
                .entries
                .iter()
                .skip(skip)
                .map(|(_, entry)| entry.clone())
                .collect();
            (stream.position(), entries)
        });
        Box::pin(std::future::ready(recent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Utf8Bytes {
        Utf8Bytes::from(s.to_owned())
    }

    #[tokio::test]
    async fn recovery_gives_what_was_missed_or_says_the_window_is_lost() {
        let history = MemoryHistory::new();
        let channel: Arc<str> = Arc::from("prices");
        let ttl = Duration::from_secs(60);
        let mut last = None;
        for i in 1..=5 {
            last = Some(
                history
                    .append(&channel, &text(&i.to_string()), 3, ttl)
                    .await,
            );
        }
        let top = last.unwrap();
        assert_eq!(top.offset, 5);
        // Offsets 3, 4, 5 are kept: from 2 on is recoverable, from 1 is not.
        match history.since("prices", &top.epoch, 2).await {
            Recovery::Recovered(entries, at) => {
                let got: Vec<u64> = entries.iter().map(|e| e.offset).collect();
                assert_eq!(got, [3, 4, 5]);
                assert_eq!(at, top);
            }
            other => panic!("expected recovery, got {other:?}"),
        }
        assert!(matches!(
            history.since("prices", &top.epoch, 1).await,
            Recovery::Lost(_)
        ));
        assert!(matches!(
            history.since("prices", "other", 4).await,
            Recovery::Lost(_)
        ));
        assert!(matches!(
            history.since("prices", &top.epoch, 9).await,
            Recovery::Lost(_)
        ));
        match history.since("prices", &top.epoch, 5).await {
            Recovery::Recovered(entries, _) => assert!(entries.is_empty()),
            other => panic!("expected an empty recovery, got {other:?}"),
        }
        let (_, recent) = history.recent("prices", 2).await;
        assert_eq!(recent.iter().map(|e| e.offset).collect::<Vec<_>>(), [4, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_not_recovered_and_a_namespace_without_history_keeps_none() {
        let history = MemoryHistory::new();
        let channel: Arc<str> = Arc::from("chat:1");
        let top = history
            .append(&channel, &text("1"), 10, Duration::from_secs(5))
            .await;
        tokio::time::advance(Duration::from_secs(6)).await;
        let now = history
            .append(&channel, &text("2"), 10, Duration::from_secs(5))
            .await;
        assert!(matches!(
            history.since("chat:1", &top.epoch, 0).await,
            Recovery::Lost(_)
        ));
        assert!(matches!(
            history.since("chat:1", &now.epoch, 1).await,
            Recovery::Recovered(ref e, _) if e.len() == 1
        ));
        let plain: Arc<str> = Arc::from("user:1");
        let first = history
            .append(&plain, &text("1"), 0, Duration::from_secs(5))
            .await;
        history
            .append(&plain, &text("2"), 0, Duration::from_secs(5))
            .await;
        assert!(matches!(
            history.since("user:1", &first.epoch, 1).await,
            Recovery::Lost(_)
        ));
    }
}
