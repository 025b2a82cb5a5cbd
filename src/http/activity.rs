//! Per-connection liveness for the connection watchdog: requests in flight (idle counts from
//! the last one's end), a request head on its way, writes the client's socket refuses, and
//! response bodies whose data waits for an HTTP/2 client to open its window.
//!
//! Only requests make a connection busy: bytes alone do not, so HTTP/2 PINGs, SETTINGS and
//! WINDOW_UPDATEs on a connection without streams never keep it open.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Milliseconds on the kernel's coarse monotonic clock (a few ms of resolution, plenty for
/// second-scale timeouts; it reads a stored value instead of the time-stamp counter).
fn coarse_millis() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    (now.tv_sec as u64) * 1000 + (now.tv_nsec as u64) / 1_000_000
}

/// A response body whose data may wait for the client: the watchdog releases it (drops what
/// it holds upstream) when it has waited longer than `limits.send_timeout`.
pub trait ClientPaced: Send + Sync {
    /// Since when its last frame waits for the client to take it, as
    /// [`Activity::now_millis`] + 1; 0 while it is not waiting for the client.
    fn waiting_since(&self) -> u64;
    /// Drops the body's source; the stream then ends with an error (RST_STREAM).
    fn release(&self);
}

pub struct Activity {
    /// `coarse_millis()` when the connection began.
    started_millis: u64,
    /// When the last request ended (or the connection began): idle time counts from here.
    last_millis: AtomicU64,
    /// When the first byte arrived with no request in flight (millis + 1; 0 = none): a
    /// request head is on its way.
    head_started: AtomicU64,
    /// When a write first found the client's socket full (millis + 1; 0 = writes flow).
    write_blocked: AtomicU64,
    in_flight: AtomicUsize,
    /// Requests answered, and requests the client gave up on before their answer (an
    /// HTTP/2 RST_STREAM after the request was dispatched).
    answered: AtomicUsize,
    abandoned: AtomicUsize,
    /// Set once a response switched protocols: the stream then carries WebSocket frames, no
    /// request lines.
    upgraded: AtomicBool,
    /// Set once a refused request's answer is out and the connection only drains what the
    /// client still sends: nothing is left to finish, so a shutdown closes it at once.
    lingering: AtomicBool,
    /// Wakes the watchdog the moment [`Activity::resets_too_many`] holds.
    pub reset_flood: tokio::sync::Notify,
    /// HTTP/2 response bodies that may wait on a stream's flow-control window.
    paced: Mutex<Vec<Weak<dyn ClientPaced>>>,
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activity")
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started_millis: coarse_millis(),
            last_millis: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            abandoned: AtomicUsize::new(0),
            upgraded: AtomicBool::new(false),
            lingering: AtomicBool::new(false),
            reset_flood: tokio::sync::Notify::new(),
            paced: Mutex::new(Vec::new()),
        })
    }

    /// Milliseconds since the connection began.
    pub fn now_millis(&self) -> u64 {
        coarse_millis().saturating_sub(self.started_millis)
    }

    fn since(&self, stamp: u64) -> Option<Duration> {
        (stamp != 0).then(|| Duration::from_millis(self.now_millis().saturating_sub(stamp - 1)))
    }

    /// Stores the time in `stamp` (millis + 1) unless it holds one; true when it did.
    fn stamp_once(&self, stamp: &AtomicU64) -> bool {
        stamp.load(Ordering::Relaxed) == 0
            && stamp
                .compare_exchange(
                    0,
                    self.now_millis() + 1,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Bytes came in; true when they begin a request head (none was in flight or on its way).
    fn bytes_read(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.stamp_once(&self.head_started)
    }

    fn write_refused(&self) {
        self.stamp_once(&self.write_blocked);
    }

    fn write_taken(&self) {
        if self.write_blocked.load(Ordering::Relaxed) != 0 {
            self.write_blocked.store(0, Ordering::Release);
        }
    }

    /// How long a request head has been arriving without being complete.
    pub fn head_wait(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        self.since(self.head_started.load(Ordering::Acquire))
    }

    /// How long since the last request ended, when none is in flight.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = self.last_millis.load(Ordering::Relaxed);
        Some(Duration::from_millis(
            self.now_millis().saturating_sub(last),
        ))
    }

    /// How long the client's socket has refused every write.
    pub fn write_blocked_for(&self) -> Option<Duration> {
        self.since(self.write_blocked.load(Ordering::Acquire))
    }

    /// Marks a request in flight until the guard drops.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        InFlight(self.clone())
    }

    /// Whether the connection only drains a refused client's bytes before it closes.
    pub fn lingering(&self) -> bool {
        self.lingering.load(Ordering::Acquire)
    }

    /// The connection now carries another protocol (a `101` went out).
    pub fn switched_protocols(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    /// Counts a dispatched request as abandoned unless [`Answering::answered`] is called.
    pub fn answering(self: &Arc<Self>) -> Answering {
        Answering {
            activity: self.clone(),
            answered: false,
        }
    }

    /// Whether the client has given up on most of its requests, and on many: the mark of
    /// HTTP/2 rapid reset paced so its streams are dispatched before their reset (h2's own cap
    /// counts only streams reset before they are accepted). A browser that cancels now and
    /// then never comes near it.
    pub fn resets_too_many(&self) -> bool {
        let abandoned = self.abandoned.load(Ordering::Relaxed);
        abandoned > MAX_ABANDONED && abandoned > self.answered.load(Ordering::Relaxed)
    }

    /// Puts an HTTP/2 response body under the write deadline.
    pub fn pace(&self, body: Weak<dyn ClientPaced>) {
        if let Ok(mut paced) = self.paced.lock() {
            // Ended bodies are forgotten as new ones come, not only at the watchdog's tick:
            // a busy connection would otherwise keep thousands of them allocated (a `Weak`
            // holds its allocation) between two ticks.
            if paced.len() >= PRUNE_AT && paced.len().is_power_of_two() {
                paced.retain(|body| body.strong_count() > 0);
            }
            paced.push(body);
        }
    }

    /// Releases every paced body that has waited for the client for `limit` or longer, and
    /// forgets the ended ones. Returns how many were released.
    pub fn release_stuck(&self, limit: Duration) -> usize {
        let Ok(mut paced) = self.paced.lock() else {
            return 0;
        };
        let now = self.now_millis();
        let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let mut released = 0;
        paced.retain(|body| {
            let Some(body) = body.upgrade() else {
                return false;
            };
            let since = body.waiting_since();
            if since != 0 && now.saturating_sub(since - 1) >= limit {
                body.release();
                released += 1;
                return false;
            }
            true
        });
        released
    }
}

/// Paced bodies a connection keeps before ended ones are pruned on the way in.
const PRUNE_AT: usize = 16;

/// Requests a connection's client may abandon before [`Activity::resets_too_many`] counts.
pub const MAX_ABANDONED: usize = 100;

/// A dispatched request, counted as abandoned if it is dropped before it is answered.
pub struct Answering {
    activity: Arc<Activity>,
    answered: bool,
}

impl Answering {
    /// The request was answered; `switched` when the answer was a `101`.
    pub fn answered(mut self, switched: bool) {
        if switched {
            self.activity.switched_protocols();
        }
        self.answered = true;
        self.activity.answered.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if !self.answered {
            self.activity.abandoned.fetch_add(1, Ordering::Relaxed);
            if self.activity.resets_too_many() {
                self.activity.reset_flood.notify_one();
            }
        }
    }
}

/// A request in flight on its connection; the connection is idle from the moment the last
/// one drops. A proxied response body holds one until it ends, so a long download or a quiet
/// event stream is not idle.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .last_millis
            .store(activity.now_millis(), Ordering::Relaxed);
        activity.head_started.store(0, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Wraps a client stream: bytes read with no request in flight start a request head; a write
/// the socket refuses starts the write deadline, and any write it takes ends it. On HTTP/1 it
/// also answers a request line longer than the head limit with `414` itself: hyper would count
/// it against the whole head and answer `431`, which names the wrong part.
pub struct TrackedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    line: RequestLine,
}

/// Where the current request head's first line stands (HTTP/1 only).
enum RequestLine {
    /// Not watched: HTTP/2, or HTTP/1 once the connection's protocol says otherwise.
    Off,
    /// `seen` bytes of the line so far without its end; `limit` is where it is refused.
    Counting { seen: usize, limit: usize },
    /// The line ended; the rest of the head is hyper's to limit.
    Done { limit: usize },
    /// Too long: the `414` is being written (`written` bytes so far), then the read ends.
    Refusing { written: usize },
    /// The `414` is out and the write side shut: what the client still sends is read and
    /// dropped (up to [`DRAIN_LIMIT`], for at most [`LINGER`]) so that closing does not reset
    /// the connection under the answer, as nginx's lingering close.
    Draining {
        dropped: usize,
        until: Pin<Box<tokio::time::Sleep>>,
    },
    /// Drained: the stream reports its end without being read again (a TLS stream that
    /// failed on the client's bytes must not be fed more).
    Drained,
}

/// The most a refused client's remaining bytes are read before the connection closes.
const DRAIN_LIMIT: usize = 1 << 20;

/// How long a refused client's remaining bytes are waited for: the rest of a head it was
/// sending arrives within milliseconds, and a client that keeps the connection open after
/// the answer must not hold it (nginx's `lingering_timeout` is 5 s).
const LINGER: Duration = Duration::from_secs(2);

/// The answer to a request line over the head limit (as [`super::builtin_response`] would
/// make it, written by hand because hyper never sees this request).
const URI_TOO_LONG: &[u8] = b"HTTP/1.1 414 URI Too Long\r\ncontent-type: text/plain\r\ncontent-security-policy: default-src 'none'; frame-ancestors 'none'\r\ncontent-length: 30\r\nconnection: close\r\n\r\nthe request line is too long\r\n";

impl<T> TrackedIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            line: RequestLine::Off,
        }
    }

    /// The stream, for a connection that leaves HTTP and its watchdog behind (a hub session).
    pub fn into_inner(self) -> T {
        self.inner
    }

    /// Watches HTTP/1 request lines: one of `limit` bytes or more gets `414`.
    pub fn with_request_line_limit(mut self, limit: usize) -> Self {
        self.line = RequestLine::Done { limit };
        self
    }

    /// Follows the request line through freshly read `bytes`; true when it is too long.
    fn line_too_long(&mut self, bytes: &[u8], head_begins: bool) -> bool {
        if matches!(self.line, RequestLine::Off) || self.activity.upgraded.load(Ordering::Acquire) {
            return false;
        }
        if let RequestLine::Done { limit } = self.line {
            if head_begins {
                // HTTP/2 with prior knowledge is no request line.
                if bytes.starts_with(b"PRI * HTTP/2.0") {
                    self.line = RequestLine::Off;
                    return false;
                }
                self.line = RequestLine::Counting { seen: 0, limit };
            }
        }
        if let RequestLine::Counting { seen, limit } = self.line {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(end) if seen + end < limit => self.line = RequestLine::Done { limit },
                None if seen + bytes.len() < limit => {
                    self.line = RequestLine::Counting {
                        seen: seen + bytes.len(),
                        limit,
                    }
                }
                _ => {
                    self.line = RequestLine::Refusing { written: 0 };
                    return true;
                }
            }
        }
        false
    }

    fn wrote(&self, result: &Poll<io::Result<usize>>) {
        match result {
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.write_taken(),
            Poll::Pending => self.activity.write_refused(),
            _ => {}
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.line {
            RequestLine::Refusing { written } => return self.poll_refuse(cx, written),
            RequestLine::Draining { .. } => return self.poll_drain(cx),
            RequestLine::Drained => return Poll::Ready(Ok(())),
            _ => {}
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() != before {
            let head_begins = self.activity.bytes_read();
            if self.line_too_long(&buf.filled()[before..], head_begins) {
                // hyper never sees this request: its bytes are taken back.
                buf.set_filled(before);
                return self.poll_refuse(cx, 0);
            }
        }
        result
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> TrackedIo<T> {
    /// Writes the `414` and shuts the write side; then drains, and reports the end of the
    /// stream, so hyper closes the connection.
    fn poll_refuse(&mut self, cx: &mut Context<'_>, mut written: usize) -> Poll<io::Result<()>> {
        while written < URI_TOO_LONG.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &URI_TOO_LONG[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(n)) => {
                    written += n;
                    self.line = RequestLine::Refusing { written };
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if Pin::new(&mut self.inner).poll_shutdown(cx).is_pending() {
            return Poll::Pending;
        }
        self.line = RequestLine::Draining {
            dropped: 0,
            until: Box::pin(tokio::time::sleep(LINGER)),
        };
        self.activity.lingering.store(true, Ordering::Release);
        self.poll_drain(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> TrackedIo<T> {
    /// Reads and drops what a refused client still sends, then reports the end of the stream:
    /// at its end, after [`DRAIN_LIMIT`] bytes, or after [`LINGER`].
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let RequestLine::Draining { dropped, until } = &mut self.line else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 4096];
        while *dropped < DRAIN_LIMIT {
            let mut sink = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut sink) {
                Poll::Ready(Ok(())) if !sink.filled().is_empty() => {
                    *dropped += sink.filled().len();
                }
                Poll::Ready(_) => break,
                Poll::Pending if until.as_mut().poll(cx).is_pending() => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        self.line = RequestLine::Drained;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        if result.is_pending() {
            self.activity.write_refused();
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    struct Paced {
        since: AtomicU64,
        released: AtomicBool,
    }

    impl ClientPaced for Paced {
        fn waiting_since(&self) -> u64 {
            self.since.load(Ordering::Relaxed)
        }
        fn release(&self) {
            self.released.store(true, Ordering::Relaxed);
        }
    }

    #[test]
    fn only_bodies_waiting_longer_than_the_limit_are_released_and_ended_ones_forgotten() {
        // A connection 20 s old, so that a body can have waited 10 s.
        let activity = Arc::new(Activity {
            started_millis: coarse_millis().saturating_sub(20_000),
            ..Arc::into_inner(Activity::new()).unwrap()
        });
        let now = activity.now_millis();
        let body = |since: u64| {
            Arc::new(Paced {
                since: AtomicU64::new(since),
                released: AtomicBool::new(false),
            })
        };
        // Waiting for 10 s, waiting since now, not waiting, and one already dropped.
        let stuck = body(now - 10_000 + 1);
        let fresh = body(now + 1);
        let flowing = body(0);
        let ended = body(1);
        for paced in [&stuck, &fresh, &flowing, &ended] {
            let weak: Weak<dyn ClientPaced> = Arc::downgrade(paced) as Weak<dyn ClientPaced>;
            activity.pace(weak);
        }
        drop(ended);
        assert_eq!(activity.release_stuck(Duration::from_secs(5)), 1);
        assert!(stuck.released.load(Ordering::Relaxed));
        assert!(!fresh.released.load(Ordering::Relaxed));
        assert!(!flowing.released.load(Ordering::Relaxed));
        // The released and the dropped are forgotten; the other two stay watched.
        assert_eq!(activity.paced.lock().map(|p| p.len()).unwrap_or(0), 2);
    }

    #[test]
    fn a_client_that_abandons_most_of_many_requests_is_told_apart_from_one_that_cancels_some() {
        let activity = Activity::new();
        for _ in 0..1000 {
            activity.answering().answered(false);
        }
        for _ in 0..150 {
            drop(activity.answering());
        }
        assert!(
            !activity.resets_too_many(),
            "150 cancels among 1,000 answers"
        );
        let attacker = Activity::new();
        for _ in 0..MAX_ABANDONED {
            drop(attacker.answering());
        }
        assert!(!attacker.resets_too_many(), "up to the cap");
        drop(attacker.answering());
        assert!(attacker.resets_too_many());
    }

    #[test]
    fn idle_counts_from_the_end_of_the_last_request_not_from_bytes() {
        let activity = Activity::new();
        let request = activity.request();
        assert_eq!(activity.idle_for(), None);
        // Bytes read while a request is in flight are not a new head.
        activity.bytes_read();
        assert_eq!(activity.head_wait(), None);
        drop(request);
        assert!(activity
            .idle_for()
            .is_some_and(|idle| idle < Duration::from_secs(1)));
        activity.bytes_read();
        assert!(activity.head_wait().is_some());
    }
}
