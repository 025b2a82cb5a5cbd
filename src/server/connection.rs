//! Serving one accepted connection: the TLS accept step on the main listener, then HTTP/1.1
//! or HTTP/2 under the connection limits (request-head deadline, idle timeout, graceful
//! shutdown); the redirect listener and the admin listener serve plain HTTP the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::admin::AdminState;
use crate::config::Limits;
use crate::http::activity::{Activity, TrackedIo};
use crate::http::context::{ConnectionInfo, ConnectionSlot};
use crate::http::{redirect, Response};
use crate::metrics::GaugeGuard;
use crate::tls::HandshakeFailure;

/// A connection's places: under `limits.max_connections`, and under its address's
/// `limits.per_ip.connections`.
pub(super) type Admitted = (
    OwnedSemaphorePermit,
    Option<crate::policy::limits::caps::CountGuard>,
);

/// A plain connection's info (no TLS).
fn plain(peer: SocketAddr) -> ConnectionInfo {
    ConnectionInfo {
        peer,
        sni: None,
        secure: false,
        tls_version: None,
        activity: None,
        client_cert: None,
    }
}

/// The main listener: TLS accept (when TLS is on), then the pipeline for every request.
pub(super) async fn serve_main(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    permit: Admitted,
) {
    // The slot (connection limit and open-connections gauge) lives as long as the connection,
    // including an upgraded WebSocket that outlives its HTTP exchange.
    let open = GaugeGuard::new(shared.metrics.open_connections.clone());
    let slot = ConnectionSlot(Arc::new((permit, open)));
    // Limits are fixed per connection; routes and headers are read per request, so a reload
    // reaches keep-alive and HTTP/2 connections too (a request in flight keeps its copy).
    let runtime = shared.runtime.load_full();
    let per_request = shared.clone();
    // Boxed once here: hyper moves the request's future into its stream and task state, and
    // moving a pointer is cheaper than moving the few KiB of the proxy's future each time.
    let handler =
        move |request| Box::pin(per_request.runtime.load().pipeline.clone().handle(request));
    let Some(tls) = &shared.tls else {
        serve_http(
            stream,
            &runtime.limits,
            shutdown,
            slot,
            plain(peer),
            Protocol::Detect,
            handler,
        )
        .await;
        return;
    };
    let started = std::time::Instant::now();
    let accepted = match tls.accept(stream, runtime.limits.handshake_timeout).await {
        Ok(accepted) => accepted,
        Err(failure) => {
            shared.metrics.handshake_failed(failure.reason());
            if let Some(reason) = failure.client_cert_reason() {
                shared.metrics.client_cert_failed(reason);
            }
            match &failure {
                HandshakeFailure::NoCertificate { name } => {
                    tracing::warn!(%peer, ?name, "no certificate for this name yet (ACME order pending?); handshake refused")
                }
                failure => tracing::debug!(%peer, %failure, "TLS handshake failed"),
            }
            return;
        }
    };
    shared.metrics.handshake_ok(
        accepted.version,
        accepted.cipher,
        started.elapsed().as_secs_f64(),
    );
    let stream = accepted.stream;
    // ALPN already chose the protocol, so hyper serves it directly (no sniffing wrapper):
    // an upgraded WebSocket then hands the bare TLS stream to its tunnel.
    let protocol = if stream.connection().alpn_protocol() == Some(b"h2") {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    let info = ConnectionInfo {
        peer,
        sni: stream.server_name().map(Arc::from),
        secure: true,
        tls_version: Some(accepted.version).filter(|v| *v != "other"),
        activity: None,
        client_cert: accepted.client_cert,
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

/// The plain-HTTP listener: ACME HTTP-01 answers, else the redirect to HTTPS (or refusal).
pub(super) async fn serve_redirect(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    permit: Admitted,
) {
    let runtime = shared.runtime.load_full();
    let per_request = shared.clone();
    serve_http(
        stream,
        &runtime.limits,
        shutdown,
        ConnectionSlot(Arc::new(permit)),
        plain(peer),
        Protocol::Detect,
        move |request| {
            let current = per_request.runtime.load();
            let answer = per_request
                .challenges
                .as_ref()
                .and_then(|store| store.http_response(&request));
            let response: Response = answer.unwrap_or_else(|| {
                redirect::respond(current.http_mode, &request, current.redirect_port)
            });
            std::future::ready(Ok::<_, std::convert::Infallible>(response))
        },
    )
    .await;
}

/// The admin listener: the admin router for every request.
pub(super) async fn serve_admin(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    admin: Arc<AdminState>,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let runtime = shared.runtime.load_full();
    serve_http(
        stream,
        &runtime.admin_limits,
        shutdown,
        ConnectionSlot(Arc::new(permit)),
        plain(peer),
        Protocol::Detect,
        move |request| crate::admin::handle(admin.clone(), request),
    )
    .await;
}

/// How a connection's HTTP version is known.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// TLS without ALPN `h2`.
    Http1,
    /// TLS with ALPN `h2`.
    Http2,
    /// Plain TCP: HTTP/1.1, or HTTP/2 with prior knowledge, told apart by the first bytes.
    Detect,
}

/// Serves HTTP/1.1 and HTTP/2 on one connection with the configured limits:
/// - a request head must arrive within `header_read_timeout` of its first byte (HTTP/1);
/// - a connection with no request in flight for `idle_timeout` is closed (GOAWAY for
///   HTTP/2); bytes alone (HTTP/2 PINGs) do not make it busy;
/// - a client that takes no bytes for `send_timeout` is cut off: the whole connection when its
///   socket stays full, one HTTP/2 stream when only that stream's window stays shut;
/// - on shutdown, in-flight requests finish and the connection closes; a graceful close that
///   does not finish in time is cut short.
///
/// The connection's slot travels with each request, so an upgraded WebSocket keeps holding
/// it after this function returns.
pub(super) async fn serve_http<I, H, F>(
    io: I,
    limits: &Limits,
    shutdown: CancellationToken,
    slot: ConnectionSlot,
    mut info: ConnectionInfo,
    protocol: Protocol,
    handler: H,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send + 'static,
{
    let activity = Activity::new();
    info.activity = Some(activity.clone());
    let tracked = TrackedIo::new(io, activity.clone());
    let io = TokioIo::new(if protocol == Protocol::Http2 {
        tracked
    } else {
        tracked.with_request_line_limit(limits.max_header_size as usize)
    });
    let handler = Arc::new(handler);
    let request_activity = activity.clone();
    let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        let in_flight = request_activity.request();
        let answering = request_activity.answering();
        request.extensions_mut().insert(slot.clone());
        request.extensions_mut().insert(info.clone());
        let head = request.method() == hyper::Method::HEAD;
        let response = handler(request);
        async move {
            let response = response.await;
            answering.answered(matches!(
                &response,
                Ok(r) if r.status() == hyper::StatusCode::SWITCHING_PROTOCOLS
            ));
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
    /// idle, and dropping it when a request head is too slow, when the client takes no
    /// bytes for `send_timeout`, or when a graceful close does not finish in time.
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
        let shortest = limits
            .idle_timeout
            .min(limits.header_read_timeout)
            .min(limits.send_timeout);
        let check_every = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        // The first check is one period in: an immediate tick would find nothing, and a timer
        // due at once costs tokio a wake-up of its driver.
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + check_every, check_every);
        // Set once a graceful close is asked for: the moment it is given up on.
        let mut close_by: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    return;
                }
                () = shutdown.cancelled(), if close_by.is_none() => {
                    if self.activity.lingering() {
                        // Only a refused client's leftovers are being drained: nothing to finish.
                        return;
                    }
                    graceful(connection.as_mut());
                    close_by = Some(tokio::time::Instant::now() + limits.shutdown_timeout);
                }
                () = self.activity.reset_flood.notified() => {
                    tracing::debug!("the client reset most of over 100 requests it sent (HTTP/2 rapid reset); closing the connection");
                    return;
                }
                _ = ticker.tick() => {
                    if let Some(reason) = self.cut_off() {
                        // A graceful shutdown would wait for the very request or write that
                        // is stuck: the connection is dropped outright.
                        tracing::debug!(reason, "closing the connection");
                        return;
                    }
                    let released = self.activity.release_stuck(limits.send_timeout);
                    if released > 0 {
                        tracing::debug!(released, "HTTP/2 streams whose window stayed shut for send_timeout were reset");
                    }
                    if close_by.is_none() && self.activity.idle_for().is_some_and(|idle| idle >= limits.idle_timeout) {
                        graceful(connection.as_mut());
                        close_by = Some(tokio::time::Instant::now() + limits.send_timeout);
                    }
                    if close_by.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
                        tracing::debug!("graceful close did not finish in time; closing");
                        return;
                    }
                }
            }
        }
    }

    /// Why the connection must be dropped now, if it must.
    fn cut_off(&self) -> Option<&'static str> {
        let limits = self.limits;
        if self.head_deadline
            && self
                .activity
                .head_wait()
                .is_some_and(|wait| wait >= limits.header_read_timeout)
        {
            return Some("request head not received within header_read_timeout");
        }
        if self
            .activity
            .write_blocked_for()
            .is_some_and(|blocked| blocked >= limits.send_timeout)
        {
            return Some("the client took no bytes for send_timeout");
        }
        None
    }
}
