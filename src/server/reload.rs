//! Configuration reload: a pure [`ReloadPlan::compute`] says what changes, then
//! [`Reloader::apply`] does every fallible step (bind new listeners, load certificates, build
//! TLS configs) before it swaps anything in. Any error changes nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::listener::{Listener, ListenerKind, Running};
use super::watch::{watch_certificate_files, CertificateFiles};
use super::{audit, Runtime, Shared};
use crate::admin::{AdminState, CertificateState};
use crate::config::{HttpMode, Overrides, Settings};
use crate::control::{BindError, ReloadError, ReloadHandle, ReloadReport, ReloadRequest};
use crate::metrics::Metrics;
use crate::tls::{self, TlsEdge};

/// The listeners running now, as a reload sees them.
#[derive(Clone, Debug)]
pub(super) struct ListenerSet {
    pub main: Running,
    pub http: Option<Running>,
    pub admin: Option<Running>,
}

impl ListenerSet {
    fn addrs(&self) -> ListenerAddrs {
        ListenerAddrs {
            main: self.main.addr,
            http: self.http.as_ref().map(|r| r.addr),
            admin: self.admin.as_ref().map(|r| r.addr),
        }
    }
}

/// Where the listeners run now (their bound addresses, real ports included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerAddrs {
    pub main: SocketAddr,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// What a reload does to one optional listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerChange {
    Keep,
    /// Bind this address and serve there (replacing the one running, if any).
    Open(SocketAddr),
    Close,
}

/// What a reload changes, computed from the old and new settings and the running listeners
/// alone: no socket, file or clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Move the main listener here.
    pub main: Option<SocketAddr>,
    pub http: ListenerChange,
    pub admin: ListenerChange,
}

impl ReloadPlan {
    /// `tls` and `admin_at_start` say what the server was started with: those cannot change
    /// without a restart, nor can the data folder or ACME.
    pub fn compute(
        old: &Settings,
        new: &Settings,
        running: &ListenerAddrs,
        tls: bool,
        admin_at_start: bool,
    ) -> Result<Self, ReloadError> {
        let mut restart = Vec::new();
        if new.tls.enabled != old.tls.enabled {
            restart.push("tls on/off");
        }
        if new.admin.is_some() && !admin_at_start {
            restart.push("admin (off at start-up)");
        }
        if new.data_dir != old.data_dir {
            restart.push("data_dir");
        }
        if new.acme != old.acme {
            restart.push("acme");
        }
        if new.hub.api.as_ref().map(|a| a.listen) != old.hub.api.as_ref().map(|a| a.listen) {
            restart.push("hub.api.listen");
        }
        if !restart.is_empty() {
            return Err(ReloadError::NeedsRestart(restart));
        }
        let main = (new.listen != old.listen && new.listen != running.main).then_some(new.listen);
        let want_http = tls && new.http.mode != HttpMode::Off;
        let http = match (running.http, want_http) {
            (Some(addr), true) if new.http.listen == addr || new.http.listen == old.http.listen => {
                ListenerChange::Keep
            }
            (_, true) => ListenerChange::Open(new.http.listen),
            (Some(_), false) => ListenerChange::Close,
            (None, false) => ListenerChange::Keep,
        };
        let admin = match (running.admin, new.admin) {
            (Some(addr), Some(want)) if want == addr || Some(want) == old.admin => {
                ListenerChange::Keep
            }
            (_, Some(want)) => ListenerChange::Open(want),
            (Some(_), None) => ListenerChange::Close,
            (None, None) => ListenerChange::Keep,
        };
        Ok(Self { main, http, admin })
    }
}

/// Binds `addr` without blocking the runtime (reloads run on it).
fn bind_now(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ReloadError> {
    let bind_error = |source| ReloadError::Bind(BindError { addr, what, source });
    let socket = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    TcpListener::from_std(socket).map_err(bind_error)
}

/// The folders a certificate watcher covers and the token that stops it.
pub(super) struct WatchedFolders {
    pub files: CertificateFiles,
    pub stop: CancellationToken,
}

/// Everything a reload touches. Reloads run one at a time, in the order asked.
pub(super) struct Reloader {
    pub shared: Arc<Shared>,
    /// The settings in force; the local-certificate service reads the data folder here.
    pub current: Arc<ArcSwap<Settings>>,
    /// What the settings were loaded with: a reload re-reads the file, the environment and
    /// these flags.
    pub overrides: Overrides,
    pub certificates: Arc<ArcSwap<CertificateState>>,
    pub metrics: Arc<Metrics>,
    pub limit: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// Only reloads (one at a time) touch these two, never the request path.
    pub listeners: Mutex<ListenerSet>,
    pub watching: Mutex<WatchedFolders>,
    pub admin: Option<Arc<AdminState>>,
    pub reload: ReloadHandle,
}

impl Reloader {
    /// Takes reload requests until shutdown.
    pub(super) async fn run(
        self,
        mut requests: tokio::sync::mpsc::Receiver<ReloadRequest>,
        shutdown: CancellationToken,
    ) {
        loop {
            let request = tokio::select! {
                request = requests.recv() => request,
                () = shutdown.cancelled() => return,
            };
            let Some(reply) = request else { return };
            let outcome = self.apply();
            self.metrics.reload(outcome.is_ok());
            if let Err(error) = &outcome {
                tracing::error!(%error, "reload refused; the running configuration is unchanged");
            }
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        }
    }

    /// Loads and validates the whole configuration first; only then swaps certificates, TLS
    /// settings, routes, pools, headers and limits in. Open connections keep what they started
    /// with; WebSockets stay open unless their route or upstream is gone.
    pub(super) fn apply(&self) -> Result<ReloadReport, ReloadError> {
        let old = self.current.load_full();
        let new = crate::config::load(
            old.source.as_deref(),
            &self.overrides,
            &crate::config::process_env,
        )?;
        let running = self
            .listeners
            .lock()
            .map_err(|_| ReloadError::ShuttingDown)?
            .clone();
        let tls_on = self.shared.tls.is_some();
        let plan = ReloadPlan::compute(&old, &new, &running.addrs(), tls_on, self.admin.is_some())?;
        // Listeners the new configuration adds or moves are bound now, before anything
        // changes: a port in use refuses the whole reload.
        let main_what = if tls_on { "HTTPS" } else { "plain HTTP" };
        let new_main = plan
            .main
            .map(|addr| bind_now(addr, main_what))
            .transpose()?;
        let new_http = match plan.http {
            ListenerChange::Open(addr) => Some(bind_now(addr, "HTTP redirect")?),
            _ => None,
        };
        let new_admin = match plan.admin {
            ListenerChange::Open(addr) => Some(bind_now(addr, "admin")?),
            _ => None,
        };
        let mut report = String::from("configuration reloaded");
        if let Some(tls) = &self.shared.tls {
            let loaded = tls::load_certificates(&new.tls, &new.data_dir)?;
            let configs = tls.configs_for(&new.tls)?;
            // Validated; from here on nothing fails.
            tls.configs.store(Arc::new(configs));
            self.metrics
                .set_crl_next_updates(tls.configs.load().crl_next_updates());
            let count = put_in_service(tls, loaded, &self.metrics, &self.certificates);
            report = format!("configuration reloaded; {count} certificate(s) loaded");
        }
        let mut listeners = running.clone();
        if let Some(listener) = new_main {
            let started = self.start(listener, ListenerKind::Main, new.listen);
            running.main.stop.cancel();
            tracing::info!(addr = %started.addr, "main listener moved by reload");
            listeners.main = started;
        }
        if let Some(listener) = new_http {
            let started = self.start(listener, ListenerKind::Redirect, new.http.listen);
            if let Some(old) = &running.http {
                old.stop.cancel();
            }
            tracing::info!(addr = %started.addr, "plain-HTTP listener opened by reload");
            listeners.http = Some(started);
        } else if plan.http == ListenerChange::Close {
            if let Some(old) = &running.http {
                old.stop.cancel();
                tracing::info!(addr = %old.addr, "plain-HTTP listener closed by reload");
            }
            listeners.http = None;
        }
        if let (Some(listener), Some(admin)) = (new_admin, &self.admin) {
            let kind = ListenerKind::Admin(admin.clone());
            let started = self.start(listener, kind, super::DEFAULT_ADMIN);
            if let Some(old) = &running.admin {
                old.stop.cancel();
            }
            listeners.admin = Some(started);
        } else if plan.admin == ListenerChange::Close {
            if let Some(old) = &running.admin {
                old.stop.cancel();
            }
            listeners.admin = None;
        }
        let main_port = listeners.main.addr.port();
        if let Ok(mut guard) = self.listeners.lock() {
            *guard = listeners;
        }
        let previous = self.shared.runtime.load_full();
        let runtime = Runtime::new(
            &new,
            main_port,
            tls_on,
            &self.shutdown,
            &self.tasks,
            &self.metrics,
            Some(&previous.pipeline),
        );
        let next = runtime.pipeline.clone();
        self.shared.runtime.store(Arc::new(runtime));
        self.metrics
            .set_upstreams(next.upstreams().map(|u| u.clone() as _));
        previous.pipeline.retire(&next, new.limits.reload_grace);
        self.rewatch(&new);
        self.current.store(Arc::new(new));
        tracing::info!("{report}");
        Ok(report)
    }

    fn start(&self, listener: TcpListener, kind: ListenerKind, fallback: SocketAddr) -> Running {
        let listener = Listener::new(
            listener,
            kind,
            &self.shared,
            &self.limit,
            &self.shutdown,
            &self.tasks,
        );
        let running = listener.running(fallback);
        self.tasks.spawn(listener.run());
        running
    }

    /// Certificate files that moved to other folders are watched there from now on.
    fn rewatch(&self, settings: &Settings) {
        let files = CertificateFiles::of(settings);
        let Ok(mut watching) = self.watching.lock() else {
            return;
        };
        if watching.files == files {
            return;
        }
        watching.stop.cancel();
        let stop = self.shutdown.child_token();
        if let Some(watch) =
            watch_certificate_files(files.clone(), self.reload.clone(), stop.clone())
        {
            self.tasks.spawn(watch);
        }
        tracing::debug!(folders = ?files.folders, "certificate folders watched");
        *watching = WatchedFolders { files, stop };
    }
}

/// Swaps loaded certificates in for new handshakes, with audit lines, metrics and the state
/// `/certificates` shows. Returns how many are served.
pub(super) fn put_in_service(
    tls: &TlsEdge,
    loaded: tls::LoadedCertificates,
    metrics: &Metrics,
    state: &ArcSwap<CertificateState>,
) -> usize {
    tls.resolver.replace(loaded.table);
    audit::audit_loaded(&loaded.summaries);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    metrics.set_certificates(tls::expiry_metrics(&loaded.summaries));
    audit::audit_replacements(&state.load().served, &loaded.summaries);
    let count = loaded.summaries.len();
    state.store(Arc::new(CertificateState {
        served: loaded.summaries,
        pending: loaded.pending,
    }));
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> Settings {
        let overrides = Overrides {
            data_dir: Some(std::env::temp_dir().join("tlsgate-reload-plan")),
            ..Default::default()
        };
        crate::config::load_str(yaml, None, &overrides, &|_| None).unwrap()
    }

    fn running(old: &Settings) -> ListenerAddrs {
        ListenerAddrs {
            main: old.listen,
            http: Some(old.http.listen),
            admin: old.admin,
        }
    }

    #[test]
    fn unchanged_settings_change_nothing() {
        let old = settings("listen: 127.0.0.1:8443\n");
        let plan = ReloadPlan::compute(&old, &old, &running(&old), true, true).unwrap();
        assert_eq!(
            plan,
            ReloadPlan {
                main: None,
                http: ListenerChange::Keep,
                admin: ListenerChange::Keep
            }
        );
    }

    #[test]
    fn moved_listeners_are_opened_and_a_redirect_turned_off_is_closed() {
        let old = settings("listen: 127.0.0.1:8443\n");
        let new = settings(
            "listen: 127.0.0.1:9443\nhttp:\n  mode: off\nadmin:\n  listen: 127.0.0.1:9999\n",
        );
        let plan = ReloadPlan::compute(&old, &new, &running(&old), true, true).unwrap();
        assert_eq!(plan.main, Some("127.0.0.1:9443".parse().unwrap()));
        assert_eq!(plan.http, ListenerChange::Close);
        assert_eq!(
            plan.admin,
            ListenerChange::Open("127.0.0.1:9999".parse().unwrap())
        );
        // Port 0 at start: the running address is the real one, and an unchanged setting
        // keeps it.
        let zero = settings("listen: 127.0.0.1:0\n");
        let mut addrs = running(&zero);
        addrs.main = "127.0.0.1:40001".parse().unwrap();
        let plan = ReloadPlan::compute(&zero, &zero, &addrs, true, true).unwrap();
        assert_eq!(plan.main, None);
    }

    #[test]
    fn what_needs_a_restart_is_refused_by_name() {
        let old = settings("listen: 127.0.0.1:8443\nadmin: off\n");
        let new = settings("listen: 127.0.0.1:8443\nadmin: off\ntls:\n  enabled: false\n");
        match ReloadPlan::compute(&old, &new, &running(&old), true, false) {
            Err(ReloadError::NeedsRestart(what)) => assert_eq!(what, ["tls on/off"]),
            other => panic!("expected NeedsRestart, got {other:?}"),
        }
        let with_admin = settings("listen: 127.0.0.1:8443\nadmin:\n  listen: 127.0.0.1:9999\n");
        assert!(matches!(
            ReloadPlan::compute(&old, &with_admin, &running(&old), true, false),
            Err(ReloadError::NeedsRestart(what)) if what == ["admin (off at start-up)"]
        ));
    }
}
