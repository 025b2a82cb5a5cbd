//! WebSocket through the proxy: the upgrade is checked and forwarded; on the upstream's `101`
//! the two connections are spliced byte for byte (extensions such as permessage-deflate and
//! subprotocols pass end to end), with an idle timeout of their own. HTTP/2 clients may use
//! extended CONNECT (RFC 8441); the upstream still sees an HTTP/1.1 upgrade.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::body::ProxyBody;
use super::gate::{Gate, Refusal};
use super::headers::{remove_hop_by_hop, upstream_headers};
use super::pool::{InFlight, Pool};
use super::response::respond;
use super::UPGRADE_TIMEOUT;
use crate::config::websocket::MessageLimits;
use crate::http::context::{ConnectionSlot, RequestContext};
use crate::http::cookie;
use crate::http::error::{error_chain, HttpError};
use crate::http::{full, Response};
use crate::metrics::{GaugeGuard, Metrics, RouteLabels, RouteReasonLabels, UpgradeLabels};
use crate::tls::TlsConnectionIo;

/// What a tunnel is held to and reports to, decided by the pipeline from the route.
pub struct TunnelTerms {
    /// Closes the tunnel when nothing moves either way for this long.
    pub idle: Duration,
    /// Cancelled when a reload removes the route: the client gets a 1001 close frame.
    pub closer: CancellationToken,
    /// How long after `closer` fires, at random, the close frame goes out.
    pub grace: Duration,
    /// The route's limits on the client's messages (none: bytes pass unexamined).
    pub messages: Option<MessageLimits>,
    pub shutdown: CancellationToken,
    /// Open tunnels run here, so shutdown waits for them.
    pub tasks: TaskTracker,
    pub metrics: Arc<Metrics>,
}

fn random_key() -> String {
    let mut bytes = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    crate::certs::pem::base64(&bytes)
}

/// Opens a WebSocket tunnel to a server of `pool` for an opening request the pipeline has
/// checked (handshake headers, Origin). The upstream always gets an HTTP/1.1 upgrade; for
/// HTTP/2's extended CONNECT the key is made here.
pub async fn tunnel(
    pool: &Arc<Pool>,
    request: Request<Incoming>,
    ctx: &RequestContext,
    terms: &TunnelTerms,
) -> Result<Response, HttpError> {
    let extended_connect = request.method() == Method::CONNECT;
    let (parts, body) = request.into_parts();
    let mut headers = upstream_headers(pool, parts.headers.clone(), &parts.uri, ctx);
    let mut request = Request::from_parts(parts, body);
    // The upstream always gets an HTTP/1.1 upgrade; for extended CONNECT we make the key.
    let key = match request.headers().get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if !extended_connect => key.clone(),
        _ => match HeaderValue::from_str(&random_key()) {
            Ok(key) => key,
            Err(_) => return Err(HttpError::BadGateway),
        },
    };
    headers.insert(header::SEC_WEBSOCKET_KEY, key.clone());
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // A size limit is on the message the backend receives: compressed, a message could be
    // a thousand times larger once inflated, so a size-limited route negotiates no
    // permessage-deflate (the offer is not passed on).
    if terms
        .messages
        .as_ref()
        .is_some_and(|m| m.max_message_size.is_some())
    {
        headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }

    let sticky = cookie::value(request.headers(), &pool.settings.sticky_cookie).map(str::to_owned);
    let Some((index, in_flight)) = pool.acquire(ctx.client_ip, sticky.as_deref(), &[]) else {
        tracing::error!(route = %ctx.route, upstream = %pool.name, "no upstream server available for WebSocket");
        return Err(HttpError::NoUpstream);
    };
    let server_url = pool.servers[index].url.clone();
    let path = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let mut upstream = Request::builder()
        .method(Method::GET)
        .uri(format!("{server_url}{path}"))
        .version(Version::HTTP_11);
    if let Some(target) = upstream.headers_mut() {
        *target = headers;
    }
    let empty: ProxyBody = http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed();
    let Ok(upstream) = upstream.body(empty) else {
        return Err(HttpError::BadRequest("request cannot be forwarded"));
    };
    let response = match tokio::time::timeout(
        UPGRADE_TIMEOUT.min(pool.settings.response_timeout),
        send_upgrade(pool, upstream, &terms.tasks),
    )
    .await
    {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            pool.record_failure(index);
            tracing::error!(route = %ctx.route, upstream = %pool.name, server = %server_url, error = %error_chain(&*error), "WebSocket upstream failed");
            return Err(HttpError::BadGateway);
        }
        Err(_) => {
            pool.record_failure(index);
            tracing::error!(route = %ctx.route, upstream = %pool.name, server = %server_url, "WebSocket upstream did not answer");
            return Err(HttpError::GatewayTimeout);
        }
    };
    pool.record_success(index);
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The backend refused (401, 403, 404…): its answer goes back like any response.
        return Ok(respond(
            pool,
            index,
            response,
            in_flight,
            sticky.as_deref(),
            ctx,
        ));
    }
    let expected_accept = derive_accept_key(key.as_bytes());
    if response
        .headers()
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .map(|v| v.as_bytes())
        != Some(expected_accept.as_bytes())
    {
        tracing::error!(route = %ctx.route, server = %server_url, "upstream's Sec-WebSocket-Accept does not match");
        return Err(HttpError::BadGateway);
    }

    let reply = client_reply(&response, extended_connect);
    let client_upgrade = hyper::upgrade::on(&mut request);
    let upstream_upgrade = hyper::upgrade::on(response);
    let route_name = ctx.route.to_string();
    terms
        .metrics
        .websocket_upgrades
        .get_or_create(&UpgradeLabels {
            route: route_name.clone(),
            result: "ok".into(),
        })
        .inc();
    let tunnel = Tunnel {
        _slot: request.extensions_mut().remove::<ConnectionSlot>(),
        _in_flight: in_flight,
        _busy: ctx
            .conn
            .activity
            .as_ref()
            .filter(|_| ctx.version == Version::HTTP_2)
            .map(crate::http::activity::Activity::request),
        _open: None,
        route_name,
        idle: terms.idle,
        closer: terms.closer.clone(),
        grace: terms.grace,
        messages: terms.messages,
        shutdown: terms.shutdown.clone(),
        metrics: terms.metrics.clone(),
    };
    let (metrics, tasks) = (terms.metrics.clone(), terms.tasks.clone());
    terms
        .tasks
        .spawn(tunnel.start(client_upgrade, upstream_upgrade, metrics, tasks));
    Ok(reply)
}

/// The client's answer to its opening request: every end-to-end header of the backend's
/// `101` (Sec-WebSocket-Protocol, -Extensions, cookies…); the upgrade itself is this hop's
/// (`200` for an HTTP/2 extended CONNECT).
fn client_reply(upstream: &hyper::Response<Incoming>, extended_connect: bool) -> Response {
    let mut reply = hyper::Response::new(full(Vec::new()));
    *reply.headers_mut() = upstream.headers().clone();
    remove_hop_by_hop(reply.headers_mut());
    reply.headers_mut().remove(header::SERVER);
    if extended_connect {
        *reply.status_mut() = StatusCode::OK;
        reply.headers_mut().remove(header::SEC_WEBSOCKET_ACCEPT);
    } else {
        *reply.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = reply.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    }
    reply
}

/// What an open tunnel holds besides its two streams: the connection slot, the upstream
/// server's in-flight count and the open-WebSockets gauge, all released when it ends.
struct Tunnel {
    _slot: Option<ConnectionSlot>,
    _in_flight: InFlight,
    /// An HTTP/2 tunnel is a stream of its client connection, which is busy while it lasts.
    _busy: Option<crate::http::activity::InFlight>,
    _open: Option<GaugeGuard>,
    route_name: String,
    idle: Duration,
    closer: CancellationToken,
    grace: Duration,
    messages: Option<MessageLimits>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Tunnel {
    /// Waits for both upgrades to complete, then splices the two connections in a task of
    /// its own, counted in `open_websockets` while it lasts.
    async fn start(
        self,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
    ) {
        let open = metrics.open_websockets.get_or_create_owned(&RouteLabels {
            route: self.route_name.clone(),
        });
        let tunnel = Tunnel {
            _open: Some(GaugeGuard::new(open)),
            ..self
        };
        let (client, upstream) = match tokio::join!(client, upstream) {
            (Ok(client), Ok(upstream)) => (client, upstream),
            (Err(error), _) | (_, Err(error)) => {
                tracing::debug!(route = %tunnel.route_name, %error, "WebSocket upgrade did not complete");
                return;
            }
        };
        // The bare sockets, when hyper hands them back: an idle tunnel then holds no HTTP
        // machinery, only the two streams. Each pairing runs as a task of its own, sized
        // for just its own pair of stream types.
        let upstream = match upstream.downcast::<TokioIo<tokio::net::TcpStream>>() {
            Ok(parts) => Ends::Bare(parts.io.into_inner(), parts.read_buf),
            Err(upstream) => Ends::Upgraded(TokioIo::new(upstream)),
        };
        // The TLS stream is boxed so that the tunnel's future, which moves it, stays small.
        match (client.downcast::<TlsConnectionIo>(), upstream) {
            (Ok(client), Ends::Bare(upstream, early)) => tasks.spawn(tunnel.run(
                Box::new(client.io.into_inner()),
                client.read_buf,
                upstream,
                early,
            )),
            (Ok(client), Ends::Upgraded(upstream)) => tasks.spawn(tunnel.run(
                Box::new(client.io.into_inner()),
                client.read_buf,
                upstream,
                Bytes::new(),
            )),
            (Err(client), Ends::Bare(upstream, early)) => {
                tasks.spawn(tunnel.run(TokioIo::new(client), Bytes::new(), upstream, early))
            }
            (Err(client), Ends::Upgraded(upstream)) => {
                tasks.spawn(tunnel.run(TokioIo::new(client), Bytes::new(), upstream, Bytes::new()))
            }
        };
    }

    async fn run<A, B>(self, client: A, client_early: Bytes, upstream: B, upstream_early: Bytes)
    where
        A: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        let tunnel = splice(
            client,
            client_early,
            upstream,
            upstream_early,
            self.idle,
            self.closer.clone(),
            self.grace,
            self.messages.as_ref(),
        );
        let reason = tokio::select! {
            reason = tunnel => reason,
            () = self.shutdown.cancelled() => "server shutting down",
        };
        if let Some(refusal) = Refusal::ended(reason) {
            tracing::info!(route = %self.route_name, reason, "WebSocket closed for a message limit");
            self.metrics
                .websocket_limit_closes
                .get_or_create(&RouteReasonLabels {
                    route: self.route_name.clone(),
                    reason: refusal.label().into(),
                })
                .inc();
        }
        tracing::debug!(route = %self.route_name, reason, "WebSocket tunnel closed");
    }
}

/// The upstream end of a tunnel: the socket itself, with the bytes hyper read past the
/// `101`, or hyper's wrapper when it could not hand the socket back.
enum Ends {
    Bare(tokio::net::TcpStream, Bytes),
    Upgraded(TokioIo<hyper::upgrade::Upgraded>),
}

/// Sends the upgrade on a connection of its own rather than a pooled one: once upgraded it
/// belongs to the tunnel, and hyper's connection task ends, leaving the bare socket.
async fn send_upgrade(
    pool: &Pool,
    mut request: Request<ProxyBody>,
    tasks: &TaskTracker,
) -> Result<hyper::Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    use tower_service::Service;
    let io = pool.connector.clone().call(request.uri().clone()).await?;
    if !request.headers().contains_key(header::HOST) {
        if let Some(authority) = request.uri().authority() {
            let host = HeaderValue::from_str(authority.as_str())?;
            request.headers_mut().insert(header::HOST, host);
        }
    }
    // On this connection the request line carries the path only (origin form).
    let path = request
        .uri()
        .path_and_query()
        .map_or_else(|| http::uri::PathAndQuery::from_static("/"), Clone::clone);
    *request.uri_mut() = http::Uri::from(path);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tasks.spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "WebSocket upstream connection ended with an error");
        }
    });
    Ok(sender.send_request(request).await?)
}

/// How long a removed route's tunnel may take to finish the frame in flight and send the
/// close frame before the connection is simply dropped.
const CLOSE_FRAME_DEADLINE: Duration = Duration::from_secs(5);

/// After closing a client for a message limit, how long its input is still read (and
/// dropped) waiting for its close frame: closing a socket with unread input resets it, and
/// the reset can destroy our close frame before the client reads it.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Copies bytes both ways until both sides finish, or nothing moves either way for `idle`.
/// `a_early` and `b_early` are bytes each side already sent (read past its handshake); they
/// go first. The directions advance independently, so a peer that stops reading stalls only
/// its own direction, and the idle watchdog still fires. When `close` fires (a reload removed
/// the route), the client gets a WebSocket close frame with code 1001 after a random part of
/// `spread`, so clients do not all reconnect at once; the frame goes in between the backend's
/// frames, never inside one. With `limits`, the client's frames pass a [`Gate`]: a message
/// over them is not passed on, and both sides get a close frame (1009 too big, 1008 too
/// fast) in between frames.
// Both ends, their early bytes and the terms: one argument each keeps the tests direct.
#[allow(clippy::too_many_arguments)]
pub async fn splice<A, B>(
    mut a: A,
    a_early: Bytes,
    mut b: B,
    b_early: Bytes,
    idle: Duration,
    close: tokio_util::sync::CancellationToken,
    spread: Duration,
    limits: Option<&MessageLimits>,
) -> &'static str
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = tokio::time::Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    let mut gate = limits.map(Gate::new);
    let mut to_b = match &mut gate {
        // The client's first frames may have come with its handshake.
        Some(gate) => {
            let mut held = Vec::new();
            let kept = gate.admit(&a_early, &mut held);
            held.extend_from_slice(&a_early[..kept]);
            Direction::new(&held)
        }
        None => Direction::new(&a_early),
    };
    let mut to_a = Direction::new(&b_early);
    let mut frames = FrameBoundary::default();
    frames.consume(&b_early, false);
    drop((a_early, b_early));
    let outcome = {
        let removed = async {
            close.cancelled().await;
            tokio::time::sleep(spread_delay(spread)).await;
        };
        let both = std::future::poll_fn(|cx| {
            let upstream = match &mut gate {
                None => to_b.poll_until_done(cx, &mut a, &mut b, &touch, pass_all),
                Some(gate) => {
                    if let Some(refusal) = gate.refused {
                        return Poll::Ready(Some(refusal));
                    }
                    let upstream =
                        to_b.poll_until_done(cx, &mut a, &mut b, &touch, |bytes, held| {
                            gate.admit(bytes, held)
                        });
                    if let Some(refusal) = gate.refused {
                        return Poll::Ready(Some(refusal));
                    }
                    upstream
                }
            };
            let downstream =
                to_a.poll_until_done(cx, &mut b, &mut a, &touch, |bytes: &[u8], _: &mut _| {
                    frames.consume(bytes, false)
                });
            if upstream.is_ready() && downstream.is_ready() {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        });
        let watchdog = async {
            loop {
                let quiet = started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if quiet >= idle {
                    return;
                }
                tokio::time::sleep(idle - quiet).await;
            }
        };
        tokio::select! {
            refused = both => match refused {
                None => "closed",
                Some(refusal) => refusal.reason(),
            },
            () = watchdog => "idle timeout",
            () = removed => "route removed",
        }
    };
    let refusal = gate.as_ref().and_then(|g| g.refused);
    if let (Some(refusal), Some(gate)) = (refusal, gate.as_mut()) {
        close_for_limit(
            refusal,
            gate,
            &mut a,
            &mut b,
            &mut to_a,
            &mut to_b,
            &mut frames,
        )
        .await;
    } else if outcome == "route removed" {
        let finish = async {
            if !finish_frame(&mut to_a, &mut frames, &mut b, &mut a).await {
                return;
            }
            if to_a.done || to_a.relay.finish(&mut a).await.is_err() {
                return;
            }
            let _ = a.write_all(&GOING_AWAY).await;
            let _ = a.shutdown().await;
        };
        let _ = tokio::time::timeout(CLOSE_FRAME_DEADLINE, finish).await;
        let _ = tokio::time::timeout(CLOSE_FRAME_DEADLINE, b.shutdown()).await;
    }
    outcome
}

/// Copies `to_a`'s frame in flight (if any) to its end, and not a byte further; false when
/// its source ended or failed first.
async fn finish_frame<A, B>(
    to_a: &mut Direction,
    frames: &mut FrameBoundary,
    b: &mut B,
    a: &mut A,
) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    while !to_a.done && !frames.at_boundary() {
        let step = to_a
            .relay
            .relay(b, a, |bytes: &[u8], _: &mut _| frames.consume(bytes, true));
        if !matches!(step.await, Ok(1..)) {
            return false;
        }
    }
    true
}

/// Ends a tunnel whose client broke a message limit, politely both ways: the backend gets
/// what passed and a close frame with the refusal's code, and its answers keep flowing to
/// the client until its own close frame (which is not passed on); then the client gets the
/// close frame, and its input is read until it answers, so the close is not lost to a reset.
async fn close_for_limit<A, B>(
    refusal: Refusal,
    gate: &mut Gate,
    a: &mut A,
    b: &mut B,
    to_a: &mut Direction,
    to_b: &mut Direction,
    frames: &mut FrameBoundary,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let backend_close = async {
        // The client's stream stopped in front of the refused frame: a boundary.
        if !to_b.done && to_b.relay.finish(b).await.is_ok() {
            let _ = b.write_all(&refusal.close_frame(true)).await;
            let _ = b.flush().await;
        }
    };
    let _ = tokio::time::timeout(CLOSE_FRAME_DEADLINE, backend_close).await;
    let mut watch = Gate::until_close();
    let answers = async {
        if !finish_frame(to_a, frames, b, a).await {
            return;
        }
        while !to_a.done && !watch.stopped {
            let step = to_a.relay.relay(b, a, |bytes: &[u8], held: &mut Vec<u8>| {
                watch.admit(bytes, held)
            });
            if !matches!(step.await, Ok(1..)) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, answers).await;
    let client_close = async {
        // Only between frames: a close frame inside one would garble it.
        if !to_a.done
            && frames.at_boundary()
            && watch.at_boundary()
            && to_a.relay.finish(a).await.is_ok()
        {
            let _ = a.write_all(&refusal.close_frame(false)).await;
        }
        let _ = a.shutdown().await;
    };
    let _ = tokio::time::timeout(CLOSE_FRAME_DEADLINE, client_close).await;
    let _ = tokio::time::timeout(CLOSE_FRAME_DEADLINE, b.shutdown()).await;
    if !to_b.ended {
        let linger = async {
            let mut buffer = vec![0u8; 4096];
            while !gate.client_closed {
                match a.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => gate.drain(&buffer[..read]),
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_LINGER, linger).await;
    }
}

/// One direction of a tunnel: relays until its source ends, then shuts its destination's
/// writing half.
struct Direction {
    relay: Relay,
    /// The source ended (or failed); the destination is being shut.
    ended: bool,
    done: bool,
}

impl Direction {
    fn new(early: &[u8]) -> Self {
        Direction {
            relay: Relay {
                unwritten: early.to_vec(),
                unflushed: false,
            },
            ended: false,
            done: false,
        }
    }

    /// Relays what is ready, a bounded number of reads per call so the other direction and
    /// other tasks get their turn; ready once this direction is finished.
    fn poll_until_done<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        touch: &dyn Fn(),
        mut keep: impl FnMut(&[u8], &mut Vec<u8>) -> usize,
    ) -> Poll<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        const READS_PER_TURN: usize = 32;
        let mut reads = 0;
        while !self.ended {
            match self.relay.poll_relay(cx, from, to, &mut keep) {
                Poll::Ready(Ok(1..)) => {
                    touch();
                    reads += 1;
                    if reads == READS_PER_TURN {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                Poll::Ready(Ok(0) | Err(_)) => self.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        if !self.done {
            // Shut the destination's writing half; an error there ends the direction too.
            ready!(Pin::new(&mut *to).poll_shutdown(cx)).ok();
            self.done = true;
        }
        Poll::Ready(())
    }
}

fn spread_delay(spread: Duration) -> Duration {
    let mut bytes = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    spread.mul_f64(f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX))
}

/// Every read of every tunnel on a thread lands in this one buffer and is written on at
/// once; a tunnel keeps only what its destination would not take yet. So ten thousand idle
/// WebSockets hold no copy buffers at all.
const SCRATCH_SIZE: usize = 16 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// One direction's state between reads: bytes the destination has not taken yet, and
/// whether written bytes may still sit in a buffer of the destination (TLS records).
#[derive(Default)]
struct Relay {
    unwritten: Vec<u8>,
    unflushed: bool,
}

impl Relay {
    /// Passes on what `from` has next: reads into the thread's scratch buffer, lets `keep`
    /// see the bytes and say how many of them go on, and writes those to `to`. Whatever `to`
    /// does not take now is kept and written before the next read, so a slow reader still
    /// slows its writer. Returns the number of bytes read; 0 at end of input.
    async fn relay<R, W>(
        &mut self,
        from: &mut R,
        to: &mut W,
        mut keep: impl FnMut(&[u8], &mut Vec<u8>) -> usize,
    ) -> std::io::Result<usize>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        std::future::poll_fn(|cx| self.poll_relay(cx, from, to, &mut keep)).await
    }

    fn poll_relay<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        keep: &mut impl FnMut(&[u8], &mut Vec<u8>) -> usize,
    ) -> Poll<std::io::Result<usize>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        while !self.unwritten.is_empty() {
            let written = ready!(Pin::new(&mut *to).poll_write(cx, &self.unwritten))?;
            if written == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.unwritten.drain(..written);
            self.unflushed = true;
        }
        if self.unwritten.capacity() > 0 {
            self.unwritten = Vec::new();
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let mut space = ReadBuf::new(scratch);
            match Pin::new(&mut *from).poll_read(cx, &mut space) {
                Poll::Pending => {
                    if self.unflushed {
                        if let Poll::Ready(flushed) = Pin::new(&mut *to).poll_flush(cx) {
                            flushed?;
                            self.unflushed = false;
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => {}
            }
            let read = space.filled().len();
            if read == 0 {
                return Poll::Ready(Ok(0));
            }
            let kept = keep(&scratch[..read], &mut self.unwritten).min(read);
            // Bytes a gate held back from earlier reads (a split frame header) go first.
            while !self.unwritten.is_empty() {
                match Pin::new(&mut *to).poll_write(cx, &self.unwritten) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                    }
                    Poll::Ready(Ok(written)) => {
                        self.unwritten.drain(..written);
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => {
                        self.unwritten.extend_from_slice(&scratch[..kept]);
                        self.unflushed = true;
                        return Poll::Ready(Ok(read));
                    }
                }
            }
            let mut at = 0;
            while at < kept {
                match Pin::new(&mut *to).poll_write(cx, &scratch[at..kept]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                    }
                    Poll::Ready(Ok(written)) => at += written,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => {
                        self.unwritten.extend_from_slice(&scratch[at..kept]);
                        break;
                    }
                }
            }
            self.unflushed = true;
            Poll::Ready(Ok(read))
        })
    }

    /// Writes out what is still kept and flushes it.
    async fn finish<W: AsyncWrite + Unpin>(&mut self, to: &mut W) -> std::io::Result<()> {
        let unwritten = std::mem::take(&mut self.unwritten);
        to.write_all(&unwritten).await?;
        to.flush().await
    }
}

fn pass_all(bytes: &[u8], _: &mut Vec<u8>) -> usize {
    bytes.len()
}

/// An unmasked close frame, code 1001 (going away).
const GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// Where WebSocket frames end in a byte stream read in arbitrary chunks (RFC 6455 §5.2).
#[derive(Default)]
struct FrameBoundary {
    /// The bytes of a frame header read so far (at most 14).
    header: [u8; 14],
    header_read: usize,
    /// Payload bytes still to come in the current frame.
    remaining: u64,
}

impl FrameBoundary {
    fn at_boundary(&self) -> bool {
        self.header_read == 0 && self.remaining == 0
    }

    /// Length of the header being read, once its first two bytes are known.
    fn header_len(&self) -> Option<usize> {
        (self.header_read >= 2).then(|| super::gate::header_len(self.header[1]))
    }

    /// Follows `bytes`; returns how many were taken. With `stop_at_boundary` it stops at the
    /// first frame boundary (which may be 0 bytes in), otherwise it takes them all.
    fn consume(&mut self, bytes: &[u8], stop_at_boundary: bool) -> usize {
        let mut taken = 0;
        loop {
            if (stop_at_boundary && self.at_boundary()) || taken == bytes.len() {
                return taken;
            }
            if self.remaining > 0 {
                let step = self.remaining.min((bytes.len() - taken) as u64);
                taken += step as usize;
                self.remaining -= step;
                continue;
            }
            self.header[self.header_read] = bytes[taken];
            self.header_read += 1;
            taken += 1;
            if self.header_len() == Some(self.header_read) {
                self.remaining = super::gate::payload_len(&self.header);
                self.header_read = 0;
            }
        }
    }
}

#[cfg(test)]
#[path = "tunnel_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_slow_destination_gets_every_byte_and_an_idle_relay_holds_no_buffer() {
        // A pipe of 100 bytes forces the relay to keep what the destination cannot take.
        let (mut source, mut from) = tokio::io::duplex(64 * 1024);
        let (mut to, mut destination) = tokio::io::duplex(100);
        let payload: Vec<u8> = (0..50_000u32).map(|i| (i * 13 % 251) as u8).collect();
        source.write_all(&payload).await.unwrap();
        drop(source);
        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            destination.read_to_end(&mut received).await.unwrap();
            received
        });
        let mut relay = Relay::default();
        let mut held_back = false;
        loop {
            let read = relay.relay(&mut from, &mut to, pass_all).await.unwrap();
            held_back |= !relay.unwritten.is_empty();
            if read == 0 {
                break;
            }
        }
        assert!(held_back, "the 100-byte pipe should have pushed back");
        assert_eq!(
            relay.unwritten.capacity(),
            0,
            "nothing is kept once written"
        );
        to.shutdown().await.unwrap();
        drop(to);
        assert_eq!(reader.await.unwrap(), payload);
    }

    #[tokio::test]
    async fn splice_carries_small_and_bulk_traffic_both_ways_intact() {
        let (client, client_side) = tokio::io::duplex(64 * 1024);
        let (upstream, upstream_side) = tokio::io::duplex(64 * 1024);
        let tunnel = tokio::spawn(splice(
            client_side,
            Bytes::new(),
            upstream_side,
            Bytes::new(),
            Duration::from_secs(10),
            tokio_util::sync::CancellationToken::new(),
            Duration::ZERO,
            None,
        ));
        // Sizes around both buffer sizes, with distinct bytes so reordering would show.
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sizes = [1, 64, 1023, 1024, 1025, 16 * 1024, 16 * 1024 + 1, 100_000];
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            let mut at = 0;
            for size in sizes {
                client_write.write_all(&sent[at..at + size]).await.unwrap();
                at += size;
            }
            client_write.shutdown().await.unwrap();
            at
        });
        let mut received = Vec::new();
        upstream_read.read_to_end(&mut received).await.unwrap();
        let total = writer.await.unwrap();
        assert_eq!(received, payload[..total]);
        // And back the other way, in one bulk write (read meanwhile: the pipes are bounded).
        let bulk = payload.clone();
        let writer = tokio::spawn(async move {
            upstream_write.write_all(&bulk).await.unwrap();
            upstream_write.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        client_read.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        assert_eq!(back, payload);
        assert_eq!(tunnel.await.unwrap(), "closed");
    }

    fn frame(payload_len: usize) -> Vec<u8> {
        let mut frame = vec![0x82];
        match payload_len {
            0..=125 => frame.push(payload_len as u8),
            126..=65535 => {
                frame.push(126);
                frame.extend_from_slice(&(payload_len as u16).to_be_bytes());
            }
            _ => {
                frame.push(127);
                frame.extend_from_slice(&(payload_len as u64).to_be_bytes());
            }
        }
        frame.extend(std::iter::repeat_n(0xAB, payload_len));
        frame
    }

    #[test]
    fn frame_boundaries_are_found_across_any_chunking() {
        let frames = [frame(3), frame(0), frame(300), frame(70_000), frame(125)];
        let stream: Vec<u8> = frames.concat();
        let mut ends = Vec::new();
        let mut offset = 0;
        for frame in &frames {
            offset += frame.len();
            ends.push(offset);
        }
        for chunk_size in [1, 2, 3, 7, 100, 8192, stream.len()] {
            let mut tracker = FrameBoundary::default();
            let mut seen = Vec::new();
            let mut position = 0;
            for chunk in stream.chunks(chunk_size) {
                let mut start = 0;
                while start < chunk.len() {
                    start += tracker.consume(&chunk[start..], true);
                    let here = position + start;
                    if tracker.at_boundary() && here > 0 && seen.last() != Some(&here) {
                        seen.push(here);
                    }
                    if start < chunk.len() {
                        start += tracker.consume(&chunk[start..start + 1], false);
                    }
                }
                position += chunk.len();
            }
            // The zero-length frame ends 2 bytes after the first one, and is seen as its own.
            assert_eq!(seen, ends, "chunk size {chunk_size}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_closes_after_its_timeout_and_traffic_postpones_it() {
        let (mut client, client_side) = tokio::io::duplex(1024);
        let (upstream, upstream_side) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        let tunnel = tokio::spawn(splice(
            client_side,
            Bytes::new(),
            upstream_side,
            Bytes::new(),
            Duration::from_secs(60),
            tokio_util::sync::CancellationToken::new(),
            Duration::ZERO,
            None,
        ));
        tokio::time::sleep(Duration::from_secs(40)).await;
        client.write_all(b"x").await.unwrap();
        // Quiet since 40 s: the tunnel must outlive the first 60 s, and end at 100 s.
        tokio::time::sleep(Duration::from_secs(50)).await;
        assert!(!tunnel.is_finished(), "closed before 60 s of silence");
        let reason = tunnel.await.unwrap();
        assert_eq!(reason, "idle timeout");
        let closed_at = started.elapsed();
        assert!(
            closed_at >= Duration::from_secs(100) && closed_at < Duration::from_secs(102),
            "{closed_at:?}"
        );
        drop(upstream);
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_route_closes_within_its_spread_and_not_before() {
        let (_backend, tunnel_backend) = tokio::io::duplex(1024);
        let (tunnel_client, mut client) = tokio::io::duplex(1024);
        let close = tokio_util::sync::CancellationToken::new();
        let started = tokio::time::Instant::now();
        let tunnel = tokio::spawn(splice(
            tunnel_client,
            Bytes::new(),
            tunnel_backend,
            Bytes::new(),
            Duration::from_secs(3600),
            close.clone(),
            Duration::from_secs(10),
            None,
        ));
        close.cancel();
        assert_eq!(tunnel.await.unwrap(), "route removed");
        assert!(
            started.elapsed() <= Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, GOING_AWAY);
    }

    #[tokio::test]
    async fn an_oversize_message_closes_both_sides_with_1009_and_never_reaches_the_backend() {
        // The client's first frames came with its handshake: they pass the gate too.
        let masked = |payload_len: usize| {
            let mut frame = frame(payload_len);
            frame[1] |= 0x80;
            let at = if payload_len > 125 { 4 } else { 2 };
            frame.splice(at..at, [0u8; 4]);
            frame
        };
        let (ok, big) = (masked(100), masked(300));
        let (mut backend, tunnel_backend) = tokio::io::duplex(64 * 1024);
        let (tunnel_client, mut client) = tokio::io::duplex(64 * 1024);
        let limits = MessageLimits {
            max_message_size: Some(200),
            messages_per_second: None,
            burst: None,
        };
        let early = Bytes::from([ok.clone(), big[..5].to_vec()].concat());
        let splice = tokio::spawn(async move {
            splice(
                tunnel_client,
                early,
                tunnel_backend,
                Bytes::new(),
                Duration::from_secs(30),
                tokio_util::sync::CancellationToken::new(),
                Duration::ZERO,
                Some(&limits),
            )
            .await
        });
        client.write_all(&big[5..]).await.unwrap();
        // The backend answers one message, then our close with its own.
        let mut received = vec![0u8; ok.len()];
        backend.read_exact(&mut received).await.unwrap();
        assert_eq!(received, ok, "the message under the limit passes");
        let mut close = [0u8; 6 + 17];
        backend.read_exact(&mut close).await.unwrap();
        assert_eq!(&close[..2], &[0x88, 0x80 | 17], "a masked close frame");
        let unmasked: Vec<u8> = close[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ close[2 + i % 4])
            .collect();
        assert_eq!(&unmasked[..2], &1009u16.to_be_bytes());
        let answer = frame(10);
        backend.write_all(&answer).await.unwrap();
        backend.write_all(&[0x88, 0x02, 0x03, 0xF1]).await.unwrap();
        let mut rest = Vec::new();
        backend.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing of the big message: {rest:?}");
        // The client gets the backend's answer, then the close (not the backend's).
        let mut got = vec![0u8; answer.len() + 19];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..answer.len()], &answer[..]);
        assert_eq!(
            &got[answer.len()..answer.len() + 4],
            &[0x88, 17, 0x03, 0xF1]
        );
        client.write_all(&[0x88, 0x80, 0, 0, 0, 0]).await.unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(5), splice)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reason, "message too big");
    }

    #[tokio::test]
    async fn close_frame_waits_for_the_frame_in_flight() {
        let (mut backend, tunnel_backend) = tokio::io::duplex(64 * 1024);
        let (tunnel_client, mut client) = tokio::io::duplex(64 * 1024);
        let close = tokio_util::sync::CancellationToken::new();
        let splice = tokio::spawn(splice(
            tunnel_client,
            Bytes::new(),
            tunnel_backend,
            Bytes::new(),
            Duration::from_secs(30),
            close.clone(),
            Duration::ZERO,
            None,
        ));
        let big = frame(1000);
        // Half a frame, then the route goes away, then the rest and a frame that must not pass.
        backend.write_all(&big[..500]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        close.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut rest = big[500..].to_vec();
        rest.extend_from_slice(&frame(10));
        backend.write_all(&rest).await.unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(5), splice)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reason, "route removed");
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        let mut expected = big.clone();
        expected.extend_from_slice(&GOING_AWAY);
        assert_eq!(received, expected);
    }
}
