//! Listeners, accept loops, connection limits, per-connection timeouts and graceful shutdown.
//!
//! [`Server::bind`] does everything that can fail at start-up (load certificates, bind
//! sockets) so the caller can report it and exit non-zero; [`Server::run`] then serves until
//! the shutdown token fires and in-flight work has drained (bounded by `shutdown_timeout`).

mod activity;
mod dispatch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::acme::challenges::{AlpnChallengeResolver, ACME_TLS_ALPN};
use crate::acme::{AcmeManager, ChallengeStore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::certs::local_ca::{LeafAction, LocalCertificate};
use crate::config::{HttpMode, Limits, Overrides, Settings};
use crate::http::headers::SecurityHeaders;
use crate::http::service::{ConnectionInfo, ConnectionSlot, EdgeContext};
use crate::http::{redirect, Response};
use crate::metrics::admin::{AdminContext, CertificateState};
use crate::metrics::Metrics;
use crate::tls::stream::TlsServerStream;
use crate::tls::{self, CertSummary, SessionState, SniResolver, TlsError};
use activity::{Activity, TrackedIo};
use dispatch::Dispatcher;

/// How often the local `localhost` certificate is checked for re-issue.
/// Placeholder for an admin address that could not be read back (never bound to).
const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

const LOCAL_RENEWAL_CHECK: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The TLS side of the main listener: certificates behind an SNI resolver, and a config that
/// can be swapped without touching the listener.
/// The part of the server a configuration reload swaps as one unit.
struct Runtime {
    limits: Limits,
    dispatcher: Arc<Dispatcher>,
    http_mode: HttpMode,
    redirect_port: u16,
}

struct TlsEdge {
    resolver: Arc<SniResolver>,
    config: ArcSwap<tls::ServerConfigs>,
    /// Ticket keys and session cache, shared by every config built, so sessions resume across
    /// reloads.
    sessions: SessionState,
    /// For ClientHellos offering `acme-tls/1` (TLS-ALPN-01 validation), when ACME is on.
    acme_config: Option<Arc<rustls::ServerConfig>>,
}

/// What every connection of this server shares.
struct Shared {
    /// What a reload replaces; each connection keeps the snapshot it started with.
    runtime: ArcSwap<Runtime>,
    tls: Option<TlsEdge>,
    /// Pending ACME challenge answers, when ACME is on.
    challenges: Option<Arc<ChallengeStore>>,
    metrics: Arc<Metrics>,
}

pub struct Server {
    settings: Settings,
    main: TcpListener,
    http: Option<TcpListener>,
    tls: Option<TlsEdge>,
    certificates: Vec<CertSummary>,
    warnings: Vec<String>,
    local: Option<LocalCertificate>,
    challenges: Option<Arc<ChallengeStore>>,
    pending: Vec<Vec<String>>,
    admin: Option<TcpListener>,
    metrics: Arc<Metrics>,
    reload: ReloadHandle,
    reload_requests: tokio::sync::mpsc::Receiver<ReloadRequest>,
    /// Set by [`Server::reload_config_from`]: reloads re-read the whole configuration.
    config_source: Option<Overrides>,
    /// Watches certificate files from `bind` on, so no change made after start-up is missed.
    file_watch: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    /// What `file_watch` watches and the token that stops it (a reload may replace it).
    watching: WatchedFolders,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

type ReloadRequest = Option<tokio::sync::oneshot::Sender<Result<String, String>>>;

/// Asks a running server to re-read its certificates (SIGHUP, `POST /reload`, `tlsgate acme`).
#[derive(Clone, Debug)]
pub struct ReloadHandle(tokio::sync::mpsc::Sender<ReloadRequest>);

impl ReloadHandle {
    /// Fire and forget (SIGHUP).
    pub fn trigger(&self) {
        let _ = self.0.try_send(None);
    }

    /// Reloads and reports the outcome.
    pub async fn reload(&self) -> Result<String, String> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        self.0
            .send(Some(reply))
            .await
            .map_err(|_| "the server is shutting down".to_owned())?;
        outcome
            .await
            .map_err(|_| "the server is shutting down".to_owned())?
    }
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, what, source })
}

impl Server {
    /// Loads certificates and binds the listeners. Every start-up error surfaces here.
    pub async fn bind(
        settings: Settings,
        shutdown: CancellationToken,
    ) -> Result<Self, ServerError> {
        let mut certificates = Vec::new();
        let mut warnings: Vec<String> = raise_fd_limit(settings.limits.max_connections)
            .into_iter()
            .collect();
        let mut local = None;
        let mut pending = Vec::new();
        let challenges = (settings.tls.enabled && settings.acme.is_some())
            .then(|| Arc::new(ChallengeStore::shared(&settings.data_dir)));
        let tls = if settings.tls.enabled {
            let loaded = tls::load_certificates(&settings.tls, &settings.data_dir)?;
            let resolver = Arc::new(SniResolver::new(loaded.table));
            let sessions = SessionState::new()?;
            let config = tls::build_server_config(&settings.tls, resolver.clone(), &sessions)?;
            let acme_config = match &challenges {
                Some(store) => {
                    let mut acme =
                        tls::build_server_config(&settings.tls, resolver.clone(), &sessions)?;
                    acme.cert_resolver = Arc::new(AlpnChallengeResolver(store.clone()));
                    acme.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
                    Some(Arc::new(acme))
                }
                None => None,
            };
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
                audit_local_issue(local);
            }
            audit_loaded(&certificates);
            Some(TlsEdge {
                resolver,
                config: ArcSwap::from_pointee(tls::ServerConfigs::new(config)),
                sessions,
                acme_config,
            })
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
        let metrics = Arc::new(Metrics::new());
        metrics.set_certificates(&certificates);
        let (reload_sender, reload_requests) = tokio::sync::mpsc::channel(8);
        let reload = ReloadHandle(reload_sender);
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
            main,
            http,
            tls,
            certificates,
            warnings,
            local,
            challenges,
            pending,
            admin,
            metrics,
            reload,
            reload_requests,
            config_source: None,
            file_watch,
            watching,
            shutdown,
            tasks: TaskTracker::new(),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Re-reads every certificate from disk on request (SIGHUP, `POST /reload`, `tlsgate
    /// acme` after issuing): new handshakes get the new ones, open connections keep theirs.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// Makes reloads re-read the configuration (its file, the environment and these flags),
    /// not only the certificates.
    pub fn reload_config_from(&mut self, overrides: Overrides) {
        self.config_source = Some(overrides);
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The main listener's bound address (the real port when configured with port 0).
    pub fn main_addr(&self) -> Option<SocketAddr> {
        self.main.local_addr().ok()
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn certificates(&self) -> &[CertSummary] {
        &self.certificates
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
            main,
            http,
            tls,
            local,
            challenges,
            certificates,
            pending,
            admin,
            metrics,
            reload,
            mut reload_requests,
            config_source,
            file_watch,
            watching,
            shutdown,
            tasks,
            ..
        } = self;
        let main_port = main
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(settings.listen.port());
        let runtime = build_runtime(
            &settings,
            main_port,
            tls.is_some(),
            &shutdown,
            &tasks,
            &metrics,
            None,
        );
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            tls,
            challenges: challenges.clone(),
            metrics: metrics.clone(),
        });
        let certificate_state = Arc::new(arc_swap::ArcSwap::from_pointee(CertificateState {
            served: certificates,
            pending,
        }));
        let connection_limit = Arc::new(Semaphore::new(settings.limits.max_connections));

        let mut loops = Vec::new();
        let main_addr = main.local_addr().unwrap_or(settings.listen);
        let main_stop = shutdown.child_token();
        loops.push(tokio::spawn(accept_loop(
            main,
            Listener::Main,
            shared.clone(),
            connection_limit.clone(),
            shutdown.clone(),
            tasks.clone(),
            main_stop.clone(),
        )));
        let mut http_listener = None;
        if let Some(http) = http {
            let stop = shutdown.child_token();
            http_listener = Some((
                http.local_addr().unwrap_or(settings.http.listen),
                stop.clone(),
            ));
            loops.push(tokio::spawn(accept_loop(
                http,
                Listener::Redirect,
                shared.clone(),
                connection_limit.clone(),
                shutdown.clone(),
                tasks.clone(),
                stop,
            )));
        }
        // The accept loops above already run on bound sockets: ready from here on (setting
        // this later raced the admin loop, which could answer /ready 503 to a first probe).
        let listening = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut admin_listener = None;
        let mut admin_context = None;
        if let Some(admin) = admin {
            let reload = reload.clone();
            let context = Arc::new(AdminContext {
                metrics: metrics.clone(),
                certificates: certificate_state.clone(),
                listening: listening.clone(),
                reload: Arc::new(move || {
                    let reload = reload.clone();
                    Box::pin(async move { reload.reload().await })
                }),
                proxy: {
                    let shared = shared.clone();
                    Arc::new(move || shared.runtime.load().dispatcher.proxy.clone())
                },
            });
            let stop = shutdown.child_token();
            admin_listener = Some((admin.local_addr().unwrap_or(DEFAULT_ADMIN), stop.clone()));
            admin_context = Some(context.clone());
            loops.push(tokio::spawn(admin_loop(
                admin,
                context,
                settings.limits.clone(),
                shutdown.clone(),
                tasks.clone(),
                stop,
            )));
        }
        let current = Arc::new(ArcSwap::from_pointee(settings.clone()));
        let reload_config = {
            let context = ConfigReload {
                shared: shared.clone(),
                current: current.clone(),
                metrics: metrics.clone(),
                state: certificate_state.clone(),
                shutdown: shutdown.clone(),
                tasks: tasks.clone(),
                limit: connection_limit.clone(),
                listeners: std::sync::Mutex::new(ListenerSet {
                    main: (main_addr, main_stop.clone()),
                    http: http_listener.clone(),
                    admin: admin_listener.clone(),
                }),
                admin_context: admin_context.clone(),
                reload: reload.clone(),
                watching: std::sync::Mutex::new(watching),
            };
            let overrides = config_source.clone();
            Arc::new(move || match &overrides {
                Some(overrides) => context.apply(overrides),
                None => apply_certificates(
                    &context.shared,
                    &context.current.load(),
                    &context.metrics,
                    &context.state,
                ),
            })
        };
        if let (Some(store), Some(_)) = (&challenges, &shared.tls) {
            // Every certificate change goes through the one reload task, so a renewal and a
            // configuration reload can never undo each other.
            let reload = reload.clone();
            let on_change: crate::acme::manager::OnChange = Arc::new(move || reload.trigger());
            if let Some(mut manager) = AcmeManager::new(&settings, store.clone(), on_change) {
                manager.metrics = Some(metrics.clone());
                tasks.spawn(Arc::new(manager).run(shutdown.clone()));
            }
        }
        {
            let (shutdown, metrics) = (shutdown.clone(), metrics.clone());
            tasks.spawn(async move {
                loop {
                    let request = tokio::select! {
                        request = reload_requests.recv() => request,
                        () = shutdown.cancelled() => return,
                    };
                    let Some(reply) = request else { return };
                    let outcome = reload_config();
                    metrics.reload(outcome.is_ok());
                    if let Err(error) = &outcome {
                        tracing::error!(%error, "reload refused; the running configuration is unchanged");
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome);
                    }
                }
            });
        }
        if let Some(watch) = file_watch {
            tasks.spawn(watch);
        }
        tasks.spawn(audit_expiry(certificate_state.clone(), shutdown.clone()));
        tasks.spawn(timer_heartbeat(shutdown.clone()));
        if local.is_some() {
            tasks.spawn(renew_local_certificate(
                current.clone(),
                reload.clone(),
                shutdown.clone(),
            ));
        }

        shutdown.cancelled().await;
        for accept in loops {
            let _ = accept.await;
        }
        tasks.close();
        let open = tasks.len();
        if open > 0 {
            tracing::info!(open, timeout = ?settings.limits.shutdown_timeout, "shutting down: waiting for open connections");
        }
        if tokio::time::timeout(settings.limits.shutdown_timeout, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                still_open = tasks.len(),
                "shutdown timeout reached; closing remaining connections"
            );
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Listener {
    Main,
    Redirect,
}

async fn accept_loop(
    listener: TcpListener,
    kind: Listener,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
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
        // At the limit, this loop waits here holding the one socket it accepted: further
        // clients queue in the kernel's backlog instead of costing memory. The limit is shared
        // by all listeners, so it bounds the process's connections as a whole.
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = shutdown.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            match kind {
                Listener::Main => serve_main(stream, peer, shared, shutdown, permit).await,
                Listener::Redirect => serve_redirect(stream, peer, shared, shutdown, permit).await,
            }
        });
    }
}

async fn serve_main(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    // The slot (connection limit and open-connections gauge) lives as long as the connection,
    // including an upgraded WebSocket that outlives its HTTP exchange.
    let open = crate::metrics::GaugeGuard::new(shared.metrics.open_connections.clone());
    let slot = ConnectionSlot(Arc::new((permit, open)));
    // Limits are fixed per connection; routes and headers are read per request, so a reload
    // reaches keep-alive and HTTP/2 connections too (a request in flight keeps its copy).
    let runtime = shared.runtime.load_full();
    let per_request = shared.clone();
    // Boxed once here: hyper moves the request's future into its stream and task state, and
    // moving a pointer is cheaper than moving the few KiB of the proxy's future each time.
    let handler = move |request| {
        Box::pin(
            per_request
                .runtime
                .load()
                .dispatcher
                .clone()
                .handle(request),
        )
    };
    let Some(tls) = &shared.tls else {
        let info = ConnectionInfo {
            peer,
            sni: None,
            secure: false,
            tls_version: None,
        };
        serve_http(
            stream,
            &runtime.limits,
            shutdown,
            slot,
            info,
            Protocol::Detect,
            handler,
        )
        .await;
        return;
    };
    // The ClientHello is read first, so a TLS-ALPN-01 validator gets its challenge
    // certificate and everyone else the normal configuration.
    let mut requested_name: Option<String> = None;
    let handshake = async {
        let mut stream = stream;
        let mut received = Vec::new();
        let hello = match tls::stream::read_client_hello(&mut stream, &mut received).await? {
            Some(hello) => hello,
            None if tls::stream::is_plain_http(&received) => {
                tls::stream::answer_plain_http(&mut stream).await;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    PlainHttpOnTlsPort,
                ));
            }
            None => Default::default(),
        };
        requested_name.clone_from(&hello.server_name);
        let wants_acme = hello.alpn.iter().any(|p| p == ACME_TLS_ALPN);
        let config = match (&tls.acme_config, wants_acme) {
            (Some(acme), true) => acme.clone(),
            _ => tls.config.load().for_suites(&hello.cipher_suites),
        };
        if hello.is_inappropriate_fallback(&config) {
            tls::stream::refuse_fallback(&mut stream, &hello).await;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                tls::stream::InappropriateFallback,
            ));
        }
        TlsServerStream::accept(stream, received, config, hello.server_name).await
    };
    let started = std::time::Instant::now();
    let handshake = tokio::time::timeout(runtime.limits.handshake_timeout, handshake);
    let stream = match handshake.await {
        Ok(Ok(stream)) => {
            let connection = stream.connection();
            let version = match connection.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
                _ => "other",
            };
            let cipher = connection
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("unknown");
            shared
                .metrics
                .handshake_ok(version, cipher, started.elapsed().as_secs_f64());
            stream
        }
        Ok(Err(error)) => {
            shared
                .metrics
                .handshake_failed(crate::metrics::failure_reason(&error));
            if error.to_string().contains("no server certificate") {
                // Only possible with no default certificate: e.g. ACME certificates still on order.
                tracing::warn!(%peer, name = ?requested_name, "no certificate for this name yet (ACME order pending?); handshake refused");
            } else {
                tracing::debug!(%peer, %error, "TLS handshake failed");
            }
            return;
        }
        Err(_) => {
            shared.metrics.handshake_failed("timeout");
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    // ALPN already chose the protocol, so hyper serves it directly (no sniffing wrapper):
    // an upgraded WebSocket then hands the bare TLS stream to its tunnel.
    let protocol = if stream.connection().alpn_protocol() == Some(b"h2") {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    let info = ConnectionInfo {
        peer,
        sni: stream.server_name().map(std::sync::Arc::from),
        secure: true,
        tls_version: match stream.connection().protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => Some("1.3"),
            Some(rustls::ProtocolVersion::TLSv1_2) => Some("1.2"),
            _ => None,
        },
    };
    serve_http(
        stream,
        &runtime.limits,
        shutdown,
        slot,
        info,
        protocol,
        handler,
    )
    .await;
}

/// A plain-HTTP request arrived on the TLS port (answered with a 400, then closed).
#[derive(Debug, thiserror::Error)]
#[error("plain HTTP request on the TLS port")]
pub struct PlainHttpOnTlsPort;

async fn serve_redirect(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let runtime = shared.runtime.load_full();
    let challenges = shared.challenges.clone();
    let per_request = shared.clone();
    let slot = ConnectionSlot(Arc::new(permit));
    let info = ConnectionInfo {
        peer,
        sni: None,
        secure: false,
        tls_version: None,
    };
    serve_http(
        stream,
        &runtime.limits,
        shutdown,
        slot,
        info,
        Protocol::Detect,
        move |request| {
            let current = per_request.runtime.load();
            let response: Response = match challenge_answer(challenges.as_deref(), &request) {
                Some(answer) => answer,
                None => redirect::respond(current.http_mode, &request, current.redirect_port),
            };
            std::future::ready(Ok::<_, std::convert::Infallible>(response))
        },
    )
    .await;
}

/// How a connection's HTTP version is known.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// TLS without ALPN `h2`.
    Http1,
    /// TLS with ALPN `h2`.
    Http2,
    /// Plain TCP: HTTP/1.1, or HTTP/2 with prior knowledge, told apart by the first bytes.
    Detect,
}

/// The IO of a TLS connection as hyper serves it; a WebSocket tunnel takes it back out of
/// the upgrade (see `proxy::tunnel`).
pub(crate) type TlsConnectionIo = TokioIo<TrackedIo<TlsServerStream>>;

/// Serves HTTP/1.1 and HTTP/2 on one connection with the configured limits:
/// - a request head must arrive within `header_read_timeout` of its first byte (HTTP/1);
/// - a connection with no request in flight and no bytes either way for `idle_timeout` is
///   closed (GOAWAY for HTTP/2);
/// - on shutdown, in-flight requests finish and the connection closes.
///
/// The connection's slot travels with each request, so an upgraded WebSocket keeps holding
/// it after this function returns.
async fn serve_http<I, H, F>(
    io: I,
    limits: &Limits,
    shutdown: CancellationToken,
    slot: ConnectionSlot,
    info: ConnectionInfo,
    protocol: Protocol,
    handler: H,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send + 'static,
{
    let activity = Activity::new();
    let io = TokioIo::new(TrackedIo::new(io, activity.clone()));
    let handler = Arc::new(handler);
    let request_activity = activity.clone();
    let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        let in_flight = request_activity.request();
        request.extensions_mut().insert(slot.clone());
        request.extensions_mut().insert(info.clone());
        let head = request.method() == hyper::Method::HEAD;
        let response = handler(request);
        async move {
            let response = response.await;
            drop(in_flight);
            match response {
                Ok(response) if head => Ok(crate::http::without_body_for_head(response)),
                other => other,
            }
        }
    });
    // HTTP/2 clients may exchange control frames while idle; the request-head deadline is
    // for HTTP/1 (slowloris), where bytes with no request dispatched mean a head in progress.
    let watch = ConnectionWatch {
        activity,
        limits,
        head_deadline: protocol != Protocol::Http2,
    };
    // hyper's own header timer also runs while a keep-alive connection waits for its next
    // request, which would cap `idle_timeout`; the watchdog measures both separately.
    let max_header_list = u32::try_from(limits.max_header_size).unwrap_or(u32::MAX);
    match protocol {
        Protocol::Http1 => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .max_buf_size(limits.max_header_size as usize);
            let connection = builder.serve_connection(io, service).with_upgrades();
            watch
                .drive(connection, shutdown, |c| c.graceful_shutdown())
                .await;
        }
        Protocol::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                // RFC 8441: WebSocket over HTTP/2 (extended CONNECT).
                .enable_connect_protocol()
                .max_header_list_size(max_header_list);
            let connection = builder.serve_connection(io, service);
            watch
                .drive(connection, shutdown, |c| c.graceful_shutdown())
                .await;
        }
        Protocol::Detect => {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .max_buf_size(limits.max_header_size as usize);
            builder
                .http2()
                .timer(TokioTimer::new())
                .enable_connect_protocol()
                .max_header_list_size(max_header_list);
            let connection = builder.serve_connection_with_upgrades(io, service);
            watch
                .drive(connection, shutdown, |c| c.graceful_shutdown())
                .await;
        }
    }
}

/// The limits a served connection is held to while hyper runs it.
struct ConnectionWatch<'a> {
    activity: Arc<Activity>,
    limits: &'a Limits,
    head_deadline: bool,
}

impl ConnectionWatch<'_> {
    /// Runs `connection` to its end, asking it to finish (`graceful`) on shutdown or when
    /// idle, and dropping it when a request head is too slow.
    async fn drive<C, E>(
        self,
        connection: C,
        shutdown: CancellationToken,
        graceful: impl Fn(std::pin::Pin<&mut C>),
    ) where
        C: std::future::Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let limits = self.limits;
        tokio::pin!(connection);
        let shortest = limits.idle_timeout.min(limits.header_read_timeout);
        let check_every = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        // The first check is one period in: an immediate tick would find nothing, and a timer
        // due at once costs tokio a wake-up of its driver.
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + check_every, check_every);
        let mut closing = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    return;
                }
                () = shutdown.cancelled(), if !closing => {
                    graceful(connection.as_mut());
                    closing = true;
                }
                _ = ticker.tick() => {
                    if self.head_deadline && self.activity.head_wait().is_some_and(|wait| wait >= limits.header_read_timeout) {
                        // A slow or stalled request head: drop the connection outright, since a
                        // graceful shutdown would wait for that very request.
                        tracing::debug!("request head not received in time; closing");
                        return;
                    }
                    if !closing && self.activity.idle_for().is_some_and(|idle| idle >= limits.idle_timeout) {
                        graceful(connection.as_mut());
                        closing = true;
                    }
                }
            }
        }
    }
}

/// How often the runtime's timer wakes up even with nothing due.
const TIMER_HEARTBEAT: Duration = Duration::from_millis(500);

/// Keeps a timer due within half a second at all times. tokio wakes its driver through an
/// `eventfd` whenever a new timer is due before the earliest one it knew of, and on a busy
/// worker that was two system calls (the write and an extra `epoll_wait`) per connection, for
/// the handshake deadline and the connection's idle check. With this one always nearest,
/// timers of half a second and more are only filed.
async fn timer_heartbeat(shutdown: CancellationToken) {
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
                audit_local_issue(&local);
                reload.trigger();
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "checking the local certificate failed; keeping the current one")
            }
        }
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

/// The answer to an HTTP-01 validation request, when its token is pending.
fn challenge_answer<B>(
    store: Option<&ChallengeStore>,
    request: &hyper::Request<B>,
) -> Option<Response> {
    let token = request
        .uri()
        .path()
        .strip_prefix(redirect::ACME_CHALLENGE_PREFIX)?;
    let answer = store?.http_answer(token)?;
    let mut response = hyper::Response::new(crate::http::full(answer));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    Some(response)
}

/// Re-reads every certificate and swaps them in as one table: new handshakes get them, open
/// connections keep theirs. A failure changes nothing.
fn apply_certificates(
    shared: &Shared,
    settings: &Settings,
    metrics: &Metrics,
    state: &arc_swap::ArcSwap<CertificateState>,
) -> Result<String, String> {
    let Some(tls) = &shared.tls else {
        return Ok("TLS is off: no certificates to load".into());
    };
    match tls::load_certificates(&settings.tls, &settings.data_dir) {
        Ok(loaded) => {
            let count = put_in_service(tls, loaded, metrics, state);
            Ok(format!("{count} certificate(s) loaded"))
        }
        Err(error) => {
            tracing::error!(%error, "certificate reload refused; the current certificates stay in service");
            Err(error.to_string())
        }
    }
}

/// Swaps loaded certificates in for new handshakes, with audit lines, metrics and the state
/// `/certificates` shows. Returns how many are served.
fn put_in_service(
    tls: &TlsEdge,
    loaded: tls::LoadedCertificates,
    metrics: &Metrics,
    state: &arc_swap::ArcSwap<CertificateState>,
) -> usize {
    tls.resolver.replace(loaded.table);
    audit_loaded(&loaded.summaries);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    metrics.set_certificates(&loaded.summaries);
    audit_replacements(&state.load().served, &loaded.summaries);
    let count = loaded.summaries.len();
    state.store(Arc::new(CertificateState {
        served: loaded.summaries,
        pending: loaded.pending,
    }));
    count
}

/// Serves the admin endpoints until shutdown.
async fn admin_loop(
    listener: TcpListener,
    context: Arc<AdminContext>,
    limits: Limits,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    // The admin listener has its own small budget: monitoring keeps working when the data
    // plane is at its connection limit.
    let limit = Arc::new(Semaphore::new(64));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let (context, limits, shutdown) = (context.clone(), limits.clone(), shutdown.clone());
        tasks.spawn(async move {
            let info = ConnectionInfo {
                peer,
                sni: None,
                secure: false,
                tls_version: None,
            };
            let slot = ConnectionSlot(Arc::new(permit));
            serve_http(
                stream,
                &limits,
                shutdown,
                slot,
                info,
                Protocol::Detect,
                move |request| crate::metrics::admin::handle(context.clone(), request),
            )
            .await;
        });
    }
}

/// The configured certificate and key files (ACME's are tlsgate's own), as folders to watch
/// and the file names that matter in them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct CertificateFiles {
    folders: Vec<std::path::PathBuf>,
    names: std::collections::BTreeSet<std::ffi::OsString>,
}

impl CertificateFiles {
    fn of(settings: &Settings) -> Self {
        if !settings.tls.enabled {
            return Self::default();
        }
        let mut files = Self::default();
        let paths = settings
            .tls
            .certificates
            .iter()
            .filter(|c| !matches!(c.source, crate::config::CertSource::Acme { .. }))
            .flat_map(|c| [c.source.cert_path(), c.source.key_path()]);
        for path in paths {
            let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            if let (Some(folder), Some(name)) = (absolute.parent(), absolute.file_name()) {
                files.folders.push(folder.to_path_buf());
                files.names.insert(name.to_owned());
            }
        }
        files.folders.sort();
        files.folders.dedup();
        files
    }

    /// Whether a change to `path` may change a configured file: the file itself (written,
    /// or replaced by rename, as certbot's `live/` symlinks are), or Kubernetes' `..data`
    /// swap. Logs and other files sharing the folder are not.
    fn concerns(&self, path: &std::path::Path) -> bool {
        path.file_name().is_some_and(|name| {
            self.names.contains(name) || name.as_encoded_bytes().starts_with(b"..")
        })
    }
}

/// Reloads when a configured certificate or key file changes on disk. The folders are watched,
/// not the files, so replacing a file by rename and Kubernetes' swap of its `..data` symlink
/// are both seen. Bursts of events are debounced into one reload.
fn watch_certificate_files(
    files: CertificateFiles,
    reload: ReloadHandle,
    shutdown: CancellationToken,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    use notify::Watcher;
    if files.folders.is_empty() {
        return None;
    }
    let folders = files.folders.clone();
    let (events, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = match notify::recommended_watcher(
        move |event: notify::Result<notify::Event>| {
            let relevant = event.is_ok_and(|e| {
                !matches!(e.kind, notify::EventKind::Access(_))
                    && e.paths.iter().any(|path| files.concerns(path))
            });
            if relevant {
                let _ = events.send(());
            }
        },
    ) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "cannot watch certificate files; reload with SIGHUP or POST /reload");
            return None;
        }
    };
    for folder in &folders {
        if let Err(error) = watcher.watch(folder, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(folder = %folder.display(), %error, "cannot watch this folder for certificate changes");
        }
    }
    Some(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                change = changes.recv() => if change.is_none() { return },
                () = shutdown.cancelled() => return,
            }
            // Debounce: a certificate and its key are usually written one after the other.
            loop {
                tokio::select! {
                    more = changes.recv() => if more.is_none() { return },
                    () = tokio::time::sleep(Duration::from_millis(300)) => break,
                    () = shutdown.cancelled() => return,
                }
            }
            tracing::info!("certificate files changed on disk: reloading");
            let _ = reload.reload().await;
        }
    })
}

/// Builds what a configuration decides for new connections: limits, headers, routes and pools.
/// `previous` hands WebSocket route tokens over, so tunnels on kept routes stay open.
fn build_runtime(
    settings: &Settings,
    main_port: u16,
    tls: bool,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
    metrics: &Arc<Metrics>,
    previous: Option<&crate::proxy::Proxy>,
) -> Runtime {
    let security_headers = if tls {
        SecurityHeaders::new(&settings.headers)
    } else {
        SecurityHeaders::default()
    };
    let proxy = settings.proxy.is_enabled().then(|| {
        Arc::new(crate::proxy::Proxy::new(
            settings,
            shutdown.clone(),
            tasks.clone(),
            metrics.clone(),
            previous,
        ))
    });
    Runtime {
        limits: settings.limits.clone(),
        dispatcher: Arc::new(Dispatcher {
            security_headers,
            builtin: EdgeContext {
                websocket_idle_timeout: settings.limits.websocket_idle_timeout,
                shutdown: shutdown.clone(),
                tasks: tasks.clone(),
            },
            proxy,
            metrics: metrics.clone(),
            access_log: settings.access_log,
        }),
        http_mode: settings.http.mode,
        redirect_port: settings.http.redirect_port.unwrap_or(main_port),
    }
}

/// Everything a configuration reload touches.
struct ConfigReload {
    shared: Arc<Shared>,
    current: Arc<ArcSwap<Settings>>,
    metrics: Arc<Metrics>,
    state: Arc<ArcSwap<CertificateState>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    limit: Arc<Semaphore>,
    /// The listeners running now; only reloads (one at a time) touch this.
    listeners: std::sync::Mutex<ListenerSet>,
    admin_context: Option<Arc<AdminContext>>,
    reload: ReloadHandle,
    /// The certificate folders watched now; a reload that changes them replaces the watcher.
    watching: std::sync::Mutex<WatchedFolders>,
}

/// The folders a certificate watcher covers and the token that stops it.
struct WatchedFolders {
    files: CertificateFiles,
    stop: CancellationToken,
}

/// Each listener's address and the token that stops its accept loop.
#[derive(Clone)]
struct ListenerSet {
    main: (SocketAddr, CancellationToken),
    http: Option<(SocketAddr, CancellationToken)>,
    admin: Option<(SocketAddr, CancellationToken)>,
}

/// Binds `addr` without blocking the runtime (reloads run on it).
fn bind_now(addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    let socket = std::net::TcpListener::bind(addr)
        .map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))?;
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    TcpListener::from_std(socket).map_err(|e| e.to_string())
}

impl ConfigReload {
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

    /// Loads and validates the whole configuration first; only then swaps certificates, TLS
    /// settings, routes, pools, headers and limits in. Any error changes nothing. Open
    /// connections keep what they started with; WebSockets stay open unless their route or
    /// upstream is gone.
    fn apply(&self, overrides: &Overrides) -> Result<String, String> {
        let old = self.current.load_full();
        let new = crate::config::load(
            old.source.as_deref(),
            overrides,
            &crate::config::process_env,
        )
        .map_err(|e| e.to_string())?;
        let mut restart = Vec::new();
        if new.tls.enabled != old.tls.enabled {
            restart.push("tls on/off");
        }
        if new.admin.is_some() && self.admin_context.is_none() {
            restart.push("admin (off at start-up)");
        }
        if new.data_dir != old.data_dir {
            restart.push("data_dir");
        }
        if new.acme != old.acme {
            restart.push("acme");
        }
        if !restart.is_empty() {
            return Err(format!(
                "not applied: {} changed, which needs a restart (nothing else was changed either)",
                restart.join(", ")
            ));
        }
        // Listeners the new configuration adds or moves are bound now, before anything
        // changes: a port in use refuses the whole reload.
        let running = self
            .listeners
            .lock()
            .map_err(|_| "reload state poisoned".to_owned())?
            .clone();
        let tls_on = self.shared.tls.is_some();
        let new_main = if new.listen != old.listen && new.listen != running.main.0 {
            Some(bind_now(
                new.listen,
                if tls_on { "HTTPS" } else { "plain HTTP" },
            )?)
        } else {
            None
        };
        let want_http = tls_on && new.http.mode != HttpMode::Off;
        let new_http = match (&running.http, want_http) {
            (Some((addr, _)), true)
                if new.http.listen == *addr || new.http.listen == old.http.listen =>
            {
                None
            }
            (_, true) => Some(bind_now(new.http.listen, "HTTP redirect")?),
            (_, false) => None,
        };
        let new_admin = match (&running.admin, new.admin) {
            (Some((addr, _)), Some(want)) if want == *addr || Some(want) == old.admin => None,
            (_, Some(want)) if self.admin_context.is_some() => Some(bind_now(want, "admin")?),
            _ => None,
        };
        let mut message = String::from("configuration reloaded");
        if let Some(tls) = &self.shared.tls {
            let loaded =
                tls::load_certificates(&new.tls, &new.data_dir).map_err(|e| e.to_string())?;
            let config = tls::build_server_config(&new.tls, tls.resolver.clone(), &tls.sessions)
                .map_err(|e| e.to_string())?;
            // Validated; from here on nothing fails.
            tls.config.store(Arc::new(tls::ServerConfigs::new(config)));
            let count = put_in_service(tls, loaded, &self.metrics, &self.state);
            message = format!("configuration reloaded; {count} certificate(s) loaded");
        }
        let mut listeners = running.clone();
        if let Some(listener) = new_main {
            let stop = self.shutdown.child_token();
            let addr = listener.local_addr().unwrap_or(new.listen);
            self.tasks.spawn(accept_loop(
                listener,
                Listener::Main,
                self.shared.clone(),
                self.limit.clone(),
                self.shutdown.clone(),
                self.tasks.clone(),
                stop.clone(),
            ));
            running.main.1.cancel();
            listeners.main = (addr, stop);
            tracing::info!(%addr, "main listener moved by reload");
        }
        match new_http {
            Some(listener) => {
                let stop = self.shutdown.child_token();
                let addr = listener.local_addr().unwrap_or(new.http.listen);
                self.tasks.spawn(accept_loop(
                    listener,
                    Listener::Redirect,
                    self.shared.clone(),
                    self.limit.clone(),
                    self.shutdown.clone(),
                    self.tasks.clone(),
                    stop.clone(),
                ));
                if let Some((_, old_stop)) = &running.http {
                    old_stop.cancel();
                }
                listeners.http = Some((addr, stop));
                tracing::info!(%addr, "plain-HTTP listener opened by reload");
            }
            None if !want_http => {
                if let Some((addr, old_stop)) = &running.http {
                    old_stop.cancel();
                    tracing::info!(%addr, "plain-HTTP listener closed by reload");
                }
                listeners.http = None;
            }
            None => {}
        }
        match (new_admin, &self.admin_context) {
            (Some(listener), Some(context)) => {
                let stop = self.shutdown.child_token();
                let addr = listener.local_addr().unwrap_or(DEFAULT_ADMIN);
                self.tasks.spawn(admin_loop(
                    listener,
                    context.clone(),
                    new.limits.clone(),
                    self.shutdown.clone(),
                    self.tasks.clone(),
                    stop.clone(),
                ));
                if let Some((_, old_stop)) = &running.admin {
                    old_stop.cancel();
                }
                listeners.admin = Some((addr, stop));
            }
            _ if new.admin.is_none() => {
                if let Some((_, old_stop)) = &running.admin {
                    old_stop.cancel();
                }
                listeners.admin = None;
            }
            _ => {}
        }
        let main_port = listeners.main.0.port();
        if let Ok(mut guard) = self.listeners.lock() {
            *guard = listeners;
        }
        let previous = self.shared.runtime.load_full();
        let runtime = build_runtime(
            &new,
            main_port,
            self.shared.tls.is_some(),
            &self.shutdown,
            &self.tasks,
            &self.metrics,
            previous.dispatcher.proxy.as_deref(),
        );
        let next_proxy = runtime.dispatcher.proxy.clone();
        self.shared.runtime.store(Arc::new(runtime));
        if let Some(old_proxy) = &previous.dispatcher.proxy {
            old_proxy.retire(next_proxy.as_deref(), new.limits.reload_grace);
        }
        self.rewatch(&new);
        self.current.store(Arc::new(new));
        tracing::info!("{message}");
        Ok(message)
    }
}

/// An audit line per certificate put in service, at start-up and on every reload.
fn audit_loaded(summaries: &[CertSummary]) {
    for summary in summaries {
        tracing::info!(
            audit = "certificate loaded",
            path = %summary.cert_path.display(),
            source = summary.source,
            serial = %summary.info.serial,
            fingerprint = %summary.info.sha256_fingerprint,
            not_after = %crate::certs::inspect::format_time(summary.info.not_after),
            "certificate in service"
        );
    }
}

/// An audit line when the local CA issued the `localhost` certificate (read from its one
/// live file, not by loading every configured certificate).
fn audit_local_issue(local: &LocalCertificate) {
    if local.leaf == LeafAction::Reused {
        return;
    }
    let leaf = crate::certs::pem::read_certificates(&local.live.cert)
        .ok()
        .and_then(|chain| {
            chain
                .first()
                .and_then(|der| crate::certs::CertInfo::parse(der).ok())
        });
    let Some(info) = leaf else { return };
    tracing::info!(
        audit = "certificate issued",
        issuer = "local CA",
        reason = ?local.leaf,
        path = %local.live.cert.display(),
        serial = %info.serial,
        fingerprint = %info.sha256_fingerprint,
        not_after = %crate::certs::inspect::format_time(info.not_after),
        "local certificate issued"
    );
}

/// Audit lines for certificates a reload put in place of others (same file, new serial).
fn audit_replacements(before: &[CertSummary], after: &[CertSummary]) {
    for new in after {
        if let Some(old) = before
            .iter()
            .find(|old| old.cert_path == new.cert_path && old.info.serial != new.info.serial)
        {
            tracing::info!(
                audit = "certificate replaced",
                path = %new.cert_path.display(),
                old_serial = %old.info.serial,
                serial = %new.info.serial,
                fingerprint = %new.info.sha256_fingerprint,
                not_after = %crate::certs::inspect::format_time(new.info.not_after),
                "certificate replaced"
            );
        }
    }
}

/// An audit line (once per certificate) when a served certificate expires.
async fn audit_expiry(state: Arc<ArcSwap<CertificateState>>, shutdown: CancellationToken) {
    let mut reported = std::collections::HashSet::new();
    loop {
        let now = crate::certs::inspect::unix_now();
        for cert in &state.load().served {
            if cert.info.not_after <= now && reported.insert(cert.info.serial.clone()) {
                tracing::warn!(
                    audit = "certificate expired",
                    path = %cert.cert_path.display(),
                    serial = %cert.info.serial,
                    fingerprint = %cert.info.sha256_fingerprint,
                    "a served certificate has expired: clients refuse it"
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
