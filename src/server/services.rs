//! The server's background services, each owned by the shutdown token: a short, named list
//! that [`super::Server::run`] starts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::audit;
use super::reload::Reloader;
use crate::acme::AcmeManager;
use crate::admin::CertificateState;
use crate::certs::local_ca::LeafAction;
use crate::config::Settings;
use crate::control::{ReloadHandle, ReloadRequest};

/// How often the local `localhost` certificate is checked for re-issue.
const LOCAL_RENEWAL_CHECK: Duration = Duration::from_secs(12 * 3600);

pub(super) enum Service {
    /// Takes reload requests (SIGHUP, `POST /reload`, file changes, renewals), one at a time.
    Reload(Box<Reloader>, tokio::sync::mpsc::Receiver<ReloadRequest>),
    /// Reloads when a configured certificate file changes (stopped by its own token, which a
    /// reload that moves the files replaces).
    CertificateWatch(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// Orders and renews ACME certificates.
    Acme(Arc<AcmeManager>),
    /// An audit line when a served certificate expires.
    ExpiryAudit(Arc<ArcSwap<CertificateState>>),
    /// Re-issues the local `localhost` certificate in its renewal window.
    LocalRenewal {
        current: Arc<ArcSwap<Settings>>,
        reload: ReloadHandle,
    },
    /// Keeps a timer due soon, so tokio files timers instead of waking its driver.
    TimerHeartbeat,
}

impl Service {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Service::Reload(..) => "reload",
            Service::CertificateWatch(_) => "certificate watch",
            Service::Acme(_) => "acme",
            Service::ExpiryAudit(_) => "expiry audit",
            Service::LocalRenewal { .. } => "local certificate renewal",
            Service::TimerHeartbeat => "timer heartbeat",
        }
    }

    pub(super) async fn run(self, shutdown: CancellationToken) {
        let name = self.name();
        match self {
            Service::Reload(reloader, requests) => reloader.run(requests, shutdown).await,
            Service::CertificateWatch(watch) => watch.await,
            Service::Acme(manager) => manager.run(shutdown).await,
            Service::ExpiryAudit(state) => audit::audit_expiry(state, shutdown).await,
            Service::LocalRenewal { current, reload } => {
                renew_local_certificate(current, reload, shutdown).await
            }
            Service::TimerHeartbeat => timer_heartbeat(shutdown).await,
        }
        tracing::debug!(service = name, "background service stopped");
    }
}

/// How often the runtime's timer wakes up even with nothing due.
const TIMER_HEARTBEAT: Duration = Duration::from_millis(500);

/// Keeps a timer due within half a second at all times. tokio wakes its driver through an
/// `eventfd` whenever a new timer is due before the earliest one it knew of, and on a busy
/// worker that was two system calls (the write and an extra `epoll_wait`) per connection, for
/// the handshake deadline and the connection's idle check. With this one always nearest,
/// timers of half a second and more are only filed.
pub(super) async fn timer_heartbeat(shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(TIMER_HEARTBEAT);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Re-issues the local `localhost` certificate when it enters its renewal window, and swaps
/// it in for new handshakes.
async fn renew_local_certificate(
    current: Arc<ArcSwap<Settings>>,
    reload: ReloadHandle,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(LOCAL_RENEWAL_CHECK) => {}
            () = shutdown.cancelled() => return,
        }
        let data_dir = current.load().data_dir.clone();
        match crate::certs::local_ca::ensure(&data_dir) {
            Ok(local) if local.leaf != LeafAction::Reused => {
                audit::audit_local_issue(&local);
                reload.trigger();
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "checking the local certificate failed; keeping the current one")
            }
        }
    }
}
