//! Idle keep-alive connections to one upstream server, waiting for the next request.

use std::io;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

struct IdleConnection {
    stream: TcpStream,
    since: Instant,
}

impl IdleConnection {
    /// Within its timeout and still open: fit to carry a request.
    fn usable(&self, timeout: Duration) -> bool {
        self.since.elapsed() < timeout && still_open(&self.stream)
    }
}

/// One server's idle keep-alive connections, newest last. Taken newest first (as nginx and
/// hyper do): busy connections stay warm and surplus ones age out. The lock is only ever
/// `try_lock`ed, for one push or pop: contention means "none idle" or "not parked", never
/// a wait on the request path.
pub struct IdleConnections {
    stack: Mutex<Vec<IdleConnection>>,
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
            max_idle,
            timeout,
        }
    }

    pub fn len(&self) -> usize {
        self.stack.lock().map_or(0, |stack| stack.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pop(&self) -> Option<IdleConnection> {
        self.stack.try_lock().ok()?.pop()
    }

    /// An idle connection still open and within its timeout, if any.
    pub(super) fn take(&self) -> Option<TcpStream> {
        while let Some(idle) = self.pop() {
            if idle.usable(self.timeout) {
                return Some(idle.stream);
            }
        }
        None
    }

    /// Parks a connection whose last response was read to its end; when the stack is full the
    /// oldest gives way. Sockets are closed outside the lock.
    pub(super) fn put(&self, stream: TcpStream) {
        if self.max_idle == 0 {
            return;
        }
        let evicted = match self.stack.try_lock() {
            Ok(mut stack) => {
                let evicted = (stack.len() >= self.max_idle).then(|| stack.remove(0));
                stack.push(IdleConnection {
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
        let kept: Vec<IdleConnection> = idle
            .into_iter()
            .filter(|idle| idle.usable(self.timeout))
            .collect();
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
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}
