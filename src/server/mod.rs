//! Listeners, connection serving, reload and the background services of one gateway.
//!
//! [`Server::bind`] does everything that can fail at start-up (load certificates, build the
//! TLS configs, bind every socket) so the caller can report it and exit non-zero;
//! [`Server::run`] then serves until the shutdown token fires and in-flight work has drained
//! (bounded by `limits.shutdown_timeout`).
//!
//! - `listener`: one accept loop per socket, under the connection limit;
//! - `connection`: the TLS accept step, then HTTP/1.1 or HTTP/2 with its watchdog;
//! - `reload`: the pure reload plan and its application;
//! - `watch`: certificate files watched for changes;
//! - `services`: the named background services;
//! - `audit`: audit lines for certificates.

mod audit;
mod connection;
mod listener;
pub mod reload;
mod services;
mod watch;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acme::{AcmeManager, ChallengeStore};
use crate::admin::{AdminState, CertificateState};
use crate::certs::local_ca::LocalCertificate;
use crate::config::{HttpMode, Limits, Overrides, Settings};
use crate::control::{BindError, ReloadHandle, ReloadRequest};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::tls::{self, CertSummary, TlsEdge, TlsError};
use listener::{Listener, ListenerKind};
use reload::{ListenerSet, Reloader, WatchedFolders};
use services::Service;
use watch::{watch_certificate_files, CertificateFiles};

/// Placeholder for an admin address that could not be read back (never bound to).
const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// What a configuration decides for new connections; a reload swaps it whole. Each connection
/// keeps the limits it started with and reads the pipeline per request.
struct Runtime {
    limits: Limits,
    /// The admin listener's: [`admin_limits`].
    admin_limits: Limits,
    pipeline: Arc<Pipeline>,
    http_mode: HttpMode,
    redirect_port: u16,
}

impl Runtime {
    fn new(
        settings: &Settings,
        main_port: u16,
        tls: bool,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
        metrics: &Arc<Metrics>,
        previous: Option<&Pipeline>,
    ) -> Self {
        Self {
            limits: settings.limits.clone(),
            admin_limits: admin_limits(&settings.limits),
            pipeline: Arc::new(Pipeline::new(
                settings, tls, shutdown, tasks, metrics, previous,
            )),
            http_mode: settings.http.mode,
            redirect_port: settings.http.redirect_port.unwrap_or(main_port),
        }
    }
}

/// Longest an admin connection may idle or take over a request head. Its budget is a fixed
/// [`listener::ADMIN_CONNECTIONS`], so the main listener's minute-long idle timeout let that
/// many idle local sockets lock monitoring out; a scrape needs well under a second.
const ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The main limits with the admin listener's shorter timeouts.
fn admin_limits(limits: &Limits) -> Limits {
    Limits {
        header_read_timeout: limits.header_read_timeout.min(ADMIN_TIMEOUT),
        idle_timeout: limits.idle_timeout.min(ADMIN_TIMEOUT),
        ..limits.clone()
    }
}

/// What every connection of this server shares.
struct Shared {
    runtime: ArcSwap<Runtime>,
    tls: Option<TlsEdge>,
    /// Pending ACME challenge answers, when ACME is on.
    challenges: Option<Arc<ChallengeStore>>,
    metrics: Arc<Metrics>,
}

/// The sockets [`Server::bind`] opened.
struct Sockets {
    main: TcpListener,
    http: Option<TcpListener>,
    admin: Option<TcpListener>,
    /// `hub.api.listen`: the publish API alone.
    hub_api: Option<TcpListener>,
}

pub struct Server {
    settings: Settings,
    /// What `settings` were loaded with, so reloads re-read the same sources.
    overrides: Overrides,
    sockets: Sockets,
    tls: Option<TlsEdge>,
    certificates: Arc<ArcSwap<CertificateState>>,
    warnings: Vec<String>,
    local: Option<LocalCertificate>,
    challenges: Option<Arc<ChallengeStore>>,
    metrics: Arc<Metrics>,
    reload: ReloadHandle,
    reload_requests: tokio::sync::mpsc::Receiver<ReloadRequest>,
    /// Watches certificate files from `bind` on, so no change made after start-up is missed.
    watching: WatchedFolders,
    file_watch: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    shutdown: CancellationToken,
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind(BindError { addr, what, source }))
}

impl Server {
    /// Loads certificates, builds the TLS configs and binds the listeners: every start-up
    /// error surfaces here. `overrides` are what `settings` were loaded with (flags); reloads
    /// re-read the configuration file and the environment with them.
    pub async fn bind(
        settings: Settings,
        overrides: Overrides,
        shutdown: CancellationToken,
    ) -> Result<Self, ServerError> {
        let mut certificates = Vec::new();
        let mut warnings: Vec<String> = raise_fd_limit(settings.limits.max_connections)
            .into_iter()
            .chain(settings.warnings())
            .collect();
        let mut local = None;
        let mut pending = Vec::new();
        let challenges = (settings.tls.enabled && settings.acme.is_some())
            .then(|| Arc::new(ChallengeStore::shared(&settings.data_dir)));
        let tls = if settings.tls.enabled {
            let loaded = tls::load_certificates(&settings.tls, &settings.data_dir)?;
            // The same build `config check` runs.
            let edge = TlsEdge::build(&settings.tls, loaded.table, challenges.as_ref())?;
            pending = loaded.pending.clone();
            for names in &loaded.pending {
                warnings.push(format!(
                    "ACME certificate for {} is not issued yet: TLS handshakes for it fail until the order completes",
                    names.join(", ")
                ));
            }
            certificates = loaded.summaries;
            warnings.extend(loaded.warnings);
            local = loaded.local;
            if let Some(local) = &local {
                audit::audit_local_issue(local);
            }
            audit::audit_loaded(&certificates);
            Some(edge)
        } else {
            None
        };
        let main = bind(
            settings.listen,
            if tls.is_some() { "HTTPS" } else { "plain HTTP" },
        )
        .await?;
        let http = if tls.is_some() && settings.http.mode != HttpMode::Off {
            Some(bind(settings.http.listen, "HTTP redirect").await?)
        } else {
            None
        };
        let admin = match settings.admin {
            Some(addr) => Some(bind(addr, "admin").await?),
            None => None,
        };
        let hub_api = match &settings.hub.api {
            Some(api) => Some(bind(api.listen, "hub API").await?),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        metrics.set_certificates(tls::expiry_metrics(&certificates));
        if let Some(edge) = &tls {
            metrics.set_crl_next_updates(edge.configs.load().crl_next_updates());
        }
        let (reload, reload_requests) = ReloadHandle::channel();
        let watching = WatchedFolders {
            files: CertificateFiles::of(&settings),
            stop: shutdown.child_token(),
        };
        let file_watch = watch_certificate_files(
            watching.files.clone(),
            reload.clone(),
            watching.stop.clone(),
        )
        .map(|watch| {
            Box::pin(watch) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        });
        Ok(Self {
            settings,
            overrides,
            sockets: Sockets {
                main,
                http,
                admin,
                hub_api,
            },
            tls,
            certificates: Arc::new(ArcSwap::from_pointee(CertificateState {
                served: certificates,
                pending,
            })),
            warnings,
            local,
            challenges,
            metrics,
            reload,
            reload_requests,
            watching,
            file_watch,
            shutdown,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Asks the running server to reload (SIGHUP, `POST /reload`, `tlsgate acme` after
    /// issuing): the configuration and every certificate are re-read; new handshakes get the
    /// new ones, open connections keep theirs.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.sockets
            .admin
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The main listener's bound address (the real port when configured with port 0).
    pub fn main_addr(&self) -> Option<SocketAddr> {
        self.sockets.main.local_addr().ok()
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.sockets.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn certificates(&self) -> Vec<CertSummary> {
        self.certificates.load().served.clone()
    }

    /// Start-up warnings (expiring certificates, loose key permissions).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The local CA and certificate, when no certificate is configured.
    pub fn local_certificate(&self) -> Option<&LocalCertificate> {
        self.local.as_ref()
    }

    /// Serves until the shutdown token is cancelled, then drains for up to
    /// `limits.shutdown_timeout`.
    pub async fn run(self) {
        let Server {
            settings,
            overrides,
            sockets,
            tls,
            certificates,
            local,
            challenges,
            metrics,
            reload,
            reload_requests,
            watching,
            file_watch,
            shutdown,
            ..
        } = self;
        let tasks = TaskTracker::new();
        let main_port = sockets
            .main
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(settings.listen.port());
        let tls_on = tls.is_some();
        let runtime = Runtime::new(
            &settings, main_port, tls_on, &shutdown, &tasks, &metrics, None,
        );
        metrics.set_upstreams(runtime.pipeline.upstreams().map(|u| u.clone() as _));
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            tls,
            challenges: challenges.clone(),
            metrics: metrics.clone(),
        });
        let connection_limit = Arc::new(Semaphore::new(settings.limits.max_connections));
        // The listeners run on bound sockets from here on: ready (setting this later raced
        // the admin listener, which could answer /ready 503 to a first probe). One ban table
        // and one hub for the process's life: reloads hand them over.
        let router = |scope| {
            Arc::new(AdminState {
                metrics: metrics.clone(),
                certificates: certificates.clone(),
                listening: Arc::new(AtomicBool::new(true)),
                reload: reload.clone(),
                bans: shared.runtime.load().pipeline.limits().bans().clone(),
                hub: shared.runtime.load().pipeline.hub().clone(),
                scope,
            })
        };
        let admin_state = sockets
            .admin
            .is_some()
            .then(|| router(crate::admin::AdminScope::Full));
        let start = |socket, kind| {
            Listener::new(socket, kind, &shared, &connection_limit, &shutdown, &tasks)
        };
        let main = start(sockets.main, ListenerKind::Main);
        let http = sockets
            .http
            .map(|socket| start(socket, ListenerKind::Redirect));
        let admin = sockets
            .admin
            .zip(admin_state.clone())
            .map(|(socket, state)| start(socket, ListenerKind::Admin(state)));
        // The publish API's own listener: the admin router limited to `/hub/*`, each request
        // checked for the API key of the configuration in force.
        let hub_api = sockets.hub_api.map(|socket| {
            let state = router(crate::admin::AdminScope::HubApi);
            start(socket, ListenerKind::Admin(state))
        });
        let running = ListenerSet {
            main: main.running(settings.listen),
            http: http.as_ref().map(|l| l.running(settings.http.listen)),
            admin: admin.as_ref().map(|l| l.running(DEFAULT_ADMIN)),
        };
        let accept_loops: Vec<_> = std::iter::once(main)
            .chain(http)
            .chain(admin)
            .chain(hub_api)
            .map(|listener| tokio::spawn(listener.run()))
            .collect();

        let current = Arc::new(ArcSwap::from_pointee(settings.clone()));
        let reloader = Reloader {
            shared: shared.clone(),
            current: current.clone(),
            overrides,
            certificates: certificates.clone(),
            metrics: metrics.clone(),
            limit: connection_limit.clone(),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
            listeners: Mutex::new(running),
            watching: Mutex::new(watching),
            admin: admin_state,
            reload: reload.clone(),
        };
        let mut services = vec![
            Service::Reload(Box::new(reloader), reload_requests),
            Service::ExpiryAudit(certificates.clone()),
            Service::TimerHeartbeat,
        ];
        if let Some(watch) = file_watch {
            services.push(Service::CertificateWatch(watch));
        }
        if let (Some(store), true) = (&challenges, tls_on) {
            // Every certificate change goes through the one reload service, so a renewal and
            // a configuration reload can never undo each other.
            let reload = reload.clone();
            let on_change: crate::acme::manager::OnChange = Arc::new(move || reload.trigger());
            if let Some(mut manager) = AcmeManager::new(&settings, store.clone(), on_change) {
                manager.metrics = Some(metrics.clone());
                services.push(Service::Acme(Arc::new(manager)));
            }
        }
        if local.is_some() {
            services.push(Service::LocalRenewal {
                current: current.clone(),
                reload: reload.clone(),
            });
        }
        for service in services {
            tracing::debug!(service = service.name(), "background service started");
            tasks.spawn(service.run(shutdown.clone()));
        }

        shutdown.cancelled().await;
        for accept in accept_loops {
            let _ = accept.await;
        }
        drain(tasks, settings.limits.shutdown_timeout).await;
    }
}

/// Lets in-flight work finish, for up to `timeout`.
async fn drain(tasks: TaskTracker, timeout: std::time::Duration) {
    tasks.close();
    let open = tasks.len();
    if open > 0 {
        tracing::info!(
            open,
            ?timeout,
            "shutting down: waiting for open connections"
        );
    }
    if tokio::time::timeout(timeout, tasks.wait()).await.is_err() {
        tracing::warn!(
            still_open = tasks.len(),
            "shutdown timeout reached; closing remaining connections"
        );
    }
}

/// Raises the open-file soft limit towards what `max_connections` needs (two descriptors per
/// proxied connection, plus slack), as nginx's `worker_rlimit_nofile` does. Returns a warning
/// when the hard limit is too low.
fn raise_fd_limit(max_connections: usize) -> Option<String> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let wanted = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(256);
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= wanted {
        return None;
    }
    let target = limit.maximum.map_or(wanted, |hard| hard.min(wanted));
    if target > current {
        let raised = rustix::process::Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_err() {
            return Some(format!(
                "open-file limit is {current}; max_connections {max_connections} needs about {wanted} (raise it with ulimit -n or LimitNOFILE=)"
            ));
        }
    }
    // Client sockets alone need max_connections; proxying needs a second descriptor each.
    (target < (max_connections as u64).saturating_add(256)).then(|| {
        format!(
            "open-file limit is {target} (hard limit); max_connections {max_connections} needs about {wanted}: raise LimitNOFILE= or lower limits.max_connections"
        )
    })
}
