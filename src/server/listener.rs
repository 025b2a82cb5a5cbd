//! An accept loop per listening socket (mini-redis's `Listener` shape): admission under the
//! connection limit, then one task per connection, until the listener's own stop token (a
//! reload moved or closed it) or shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection;
use super::Shared;
use crate::admin::AdminState;

/// What a listener serves.
#[derive(Clone)]
pub(super) enum ListenerKind {
    /// HTTPS (or plain HTTP with TLS off): the pipeline.
    Main,
    /// Plain HTTP beside HTTPS: ACME HTTP-01 answers and the redirect.
    Redirect,
    /// The admin endpoints.
    Admin(Arc<AdminState>),
}

/// The admin listener's own budget: monitoring keeps working when the data plane is at its
/// connection limit. Its connections get short timeouts (`server::admin_limits`), so idle
/// sockets cannot hold the budget for long.
pub(super) const ADMIN_CONNECTIONS: usize = 64;

pub(super) struct Listener {
    pub listener: TcpListener,
    pub kind: ListenerKind,
    /// Shared by the main and redirect listeners, so it bounds the process's connections as a
    /// whole; the admin listener has [`ADMIN_CONNECTIONS`] of its own.
    pub limit: Arc<Semaphore>,
    pub shared: Arc<Shared>,
    pub tasks: TaskTracker,
    /// Stops this listener only.
    pub stop: CancellationToken,
    pub shutdown: CancellationToken,
}

/// Each listener's address and the token that stops its accept loop, as reloads see them.
#[derive(Clone, Debug)]
pub(super) struct Running {
    pub addr: SocketAddr,
    pub stop: CancellationToken,
}

impl Listener {
    /// A listener for `kind` on a bound socket, stopped by a child of `shutdown`.
    pub(super) fn new(
        listener: TcpListener,
        kind: ListenerKind,
        shared: &Arc<Shared>,
        limit: &Arc<Semaphore>,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let limit = match kind {
            ListenerKind::Admin(_) => Arc::new(Semaphore::new(ADMIN_CONNECTIONS)),
            _ => limit.clone(),
        };
        Self {
            listener,
            kind,
            limit,
            shared: shared.clone(),
            tasks: tasks.clone(),
            stop: shutdown.child_token(),
            shutdown: shutdown.clone(),
        }
    }

    /// Where it listens and how to stop it, for later reloads.
    pub(super) fn running(&self, fallback: SocketAddr) -> Running {
        Running {
            addr: self.listener.local_addr().unwrap_or(fallback),
            stop: self.stop.clone(),
        }
    }

    /// Accepts until stopped.
    pub(super) async fn run(self) {
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = self.stop.cancelled() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Listener lists, bans and per-IP caps: a refused client is closed before any
            // TLS or HTTP work (nginx's `limit_conn`, fail2ban's firewall rule).
            let place = match &self.kind {
                ListenerKind::Admin(_) => None,
                kind => {
                    let handshake = matches!(kind, ListenerKind::Main) && self.shared.tls.is_some();
                    match self
                        .shared
                        .runtime
                        .load()
                        .pipeline
                        .limits()
                        .admit(peer.ip(), handshake)
                    {
                        Ok(place) => Some(place),
                        Err(refusal) => {
                            tracing::debug!(%peer, refusal = refusal.as_str(), "connection refused at accept");
                            // Closed with a reset: under a flood, refused sockets leave no
                            // TIME_WAIT entries behind.
                            let _ = rustix::net::sockopt::set_socket_linger(
                                &stream,
                                Some(Duration::ZERO),
                            );
                            drop(stream);
                            continue;
                        }
                    }
                }
            };
            let permit = match &self.kind {
                // Over its budget, an admin connection is closed at once.
                ListenerKind::Admin(_) => match self.limit.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => continue,
                },
                // At the limit, this loop waits here holding the one socket it accepted:
                // further clients queue in the kernel's backlog instead of costing memory.
                _ => tokio::select! {
                    permit = self.limit.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                    () = self.shutdown.cancelled() => return,
                },
            };
            let _ = stream.set_nodelay(true);
            let shared = self.shared.clone();
            let shutdown = self.shutdown.clone();
            match &self.kind {
                ListenerKind::Main => self.tasks.spawn(connection::serve_main(
                    stream,
                    peer,
                    shared,
                    shutdown,
                    (permit, place),
                )),
                ListenerKind::Redirect => self.tasks.spawn(connection::serve_redirect(
                    stream,
                    peer,
                    shared,
                    shutdown,
                    (permit, place),
                )),
                ListenerKind::Admin(admin) => self.tasks.spawn(connection::serve_admin(
                    stream,
                    peer,
                    shared,
                    admin.clone(),
                    shutdown,
                    permit,
                )),
            };
        }
    }
}
