//! Idle keep-alive connections to one upstream server, waiting for the next request.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rustix::net::RecvFlags;
use tokio::net::TcpStream;

struct IdleConnection {
    stream: TcpStream,
    since: Instant,
}

/// How long a connection is watched after a response that cannot carry a body (HEAD, 204,
/// 304) before it may carry another request: a sloppy server's stray body then closes it
/// instead of becoming the next client's response.
pub const SETTLE: Duration = Duration::from_millis(100);

impl IdleConnection {
    /// Within its timeout and still open: fit to carry a request.
    fn usable(&self, timeout: Duration) -> Result<(), Unfit> {
        if self.since.elapsed() >= timeout {
            return Err(Unfit::Expired);
        }
        probe(&self.stream)
    }

    /// As [`Self::usable`], asking the kernel rather than the poller's last word (which may
    /// lag behind bytes that just arrived).
    fn quiet(&self, timeout: Duration) -> Result<(), Unfit> {
        self.usable(timeout)?;
        let mut byte = [0u8; 1];
        match rustix::net::recv(
            &self.stream,
            &mut byte,
            RecvFlags::PEEK | RecvFlags::DONTWAIT,
        ) {
            Err(rustix::io::Errno::AGAIN) => Ok(()),
            Ok((n, _)) if n > 0 => Err(Unfit::Unsolicited),
            _ => Err(Unfit::Closed),
        }
    }
}

/// Why a parked connection cannot be used.
#[derive(Debug, PartialEq, Eq)]
enum Unfit {
    Expired,
    Closed,
    /// The server wrote while nothing was asked of it.
    Unsolicited,
}

/// One server's idle keep-alive connections, newest last. Taken newest first (as nginx and
/// hyper do): busy connections stay warm and surplus ones age out. The lock is only ever
/// `try_lock`ed, for one push or pop: contention means "none idle" or "not parked", never
/// a wait on the request path.
pub struct IdleConnections {
    stack: Mutex<Vec<IdleConnection>>,
    /// Connections watched for [`SETTLE`] before they join the stack.
    settling: Mutex<Vec<IdleConnection>>,
    /// Set once the server sent bytes unasked: its connections are then never reused.
    sloppy: AtomicBool,
    max_idle: usize,
    timeout: Duration,
}

impl std::fmt::Debug for IdleConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConnections")
            .field("idle", &self.len())
            .finish()
    }
}

impl IdleConnections {
    /// Keeps up to `max_idle` connections (0: none), each for at most `timeout`.
    pub fn new(max_idle: usize, timeout: Duration) -> Self {
        Self {
            stack: Mutex::new(Vec::new()),
            settling: Mutex::new(Vec::new()),
            sloppy: AtomicBool::new(false),
            max_idle,
            timeout,
        }
    }

    /// Connections kept, settling ones included.
    pub fn len(&self) -> usize {
        self.stack.lock().map_or(0, |stack| stack.len())
            + self.settling.lock().map_or(0, |settling| settling.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pop(&self) -> Option<IdleConnection> {
        self.stack.try_lock().ok()?.pop()
    }

    /// An idle connection still open and within its timeout, if any.
    pub(super) fn take(&self) -> Option<TcpStream> {
        if let Some(settled) = self.take_settled() {
            return Some(settled);
        }
        while let Some(idle) = self.pop() {
            match idle.usable(self.timeout) {
                Ok(()) => return Some(idle.stream),
                Err(Unfit::Unsolicited) => self.caught_sloppy(),
                Err(_) => {}
            }
        }
        None
    }

    /// A settling connection whose watch is over and that stayed quiet; those that spoke
    /// or closed meanwhile are dropped (costs one `try_lock` when none settles).
    fn take_settled(&self) -> Option<TcpStream> {
        let mut settling = self.settling.try_lock().ok()?;
        if settling.is_empty() {
            return None;
        }
        let mut sloppy = false;
        let mut chosen = None;
        let mut index = 0;
        while index < settling.len() {
            if settling[index].since.elapsed() < SETTLE {
                index += 1;
                continue;
            }
            let idle = settling.swap_remove(index);
            match idle.quiet(self.timeout) {
                Ok(()) if chosen.is_none() => chosen = Some(idle.stream),
                Ok(()) => self.park(&self.stack, idle.stream),
                Err(unfit) => sloppy |= unfit == Unfit::Unsolicited,
            }
        }
        drop(settling);
        if sloppy {
            self.caught_sloppy();
            return None;
        }
        chosen
    }

    pub(super) fn caught_sloppy(&self) {
        if !self.sloppy.swap(true, Ordering::Relaxed) {
            tracing::warn!("an upstream server sent bytes nobody asked for (a body on a HEAD answer, or more than its Content-Length); its connections are no longer reused");
        }
    }

    /// Whether the server was caught sending bytes unasked.
    pub(super) fn is_sloppy(&self) -> bool {
        self.sloppy.load(Ordering::Relaxed)
    }

    /// Parks a connection after a response no body may follow: it may carry another request
    /// once [`SETTLE`] has passed quietly.
    pub(super) fn put_settling(&self, stream: TcpStream) {
        if self.max_idle == 0 || self.is_sloppy() {
            return;
        }
        self.park(&self.settling, stream);
    }

    /// Parks a connection whose last response was read to its end.
    pub(super) fn put(&self, stream: TcpStream) {
        if self.max_idle == 0 || self.is_sloppy() {
            return;
        }
        self.park(&self.stack, stream);
    }

    /// Pushes onto `list`; when it is full the oldest gives way. Sockets are closed outside
    /// the lock.
    fn park(&self, list: &Mutex<Vec<IdleConnection>>, stream: TcpStream) {
        let evicted = match list.try_lock() {
            Ok(mut list) => {
                let evicted = (list.len() >= self.max_idle).then(|| list.remove(0));
                list.push(IdleConnection {
                    stream,
                    since: Instant::now(),
                });
                evicted
            }
            Err(_) => None,
        };
        drop(evicted);
    }

    /// Closes connections past their timeout or closed by the server. They are checked
    /// outside the lock; those parked meanwhile are newer and stay on top.
    pub fn sweep(&self) {
        let idle = match self.stack.lock() {
            Ok(mut stack) => std::mem::take(&mut *stack),
            Err(_) => return,
        };
        // Whether a connection stays; one that spoke unasked marks the server.
        let mut sloppy = false;
        let mut keep = |fit: Result<(), Unfit>| {
            sloppy |= fit == Err(Unfit::Unsolicited);
            fit.is_ok()
        };
        let mut kept: Vec<IdleConnection> = idle
            .into_iter()
            .filter(|idle| keep(idle.usable(self.timeout)))
            .collect();
        // Settled connections that stayed quiet join the stack; the others are dropped.
        let settled = match self.settling.lock() {
            Ok(mut settling) => {
                let (settled, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut *settling)
                    .into_iter()
                    .partition(|idle| idle.since.elapsed() >= SETTLE);
                *settling = waiting;
                settled
            }
            Err(_) => Vec::new(),
        };
        kept.extend(
            settled
                .into_iter()
                .filter(|idle| keep(idle.quiet(self.timeout))),
        );
        if sloppy {
            self.caught_sloppy();
        }
        if self.is_sloppy() {
            kept.clear();
        }
        let surplus: Vec<IdleConnection> = match self.stack.lock() {
            Ok(mut stack) => {
                let newer = std::mem::replace(&mut *stack, kept);
                stack.extend(newer);
                let surplus = stack.len().saturating_sub(self.max_idle);
                stack.drain(..surplus).collect()
            }
            Err(_) => Vec::new(),
        };
        drop(surplus); // closed outside the lock
    }
}

/// Whether an idle connection has neither been closed nor sent anything unasked. Costs no
/// system call unless the poller saw the socket become readable.
fn probe(stream: &TcpStream) -> Result<(), Unfit> {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => Ok(()),
        Poll::Ready(Err(_)) => Err(Unfit::Closed),
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            match stream.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                Ok(n) if n > 0 => Err(Unfit::Unsolicited),
                _ => Err(Unfit::Closed),
            }
        }
    }
}
