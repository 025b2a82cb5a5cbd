//! WebSocket through the proxy: the upgrade is checked and forwarded; on the upstream's `101`
//! the two connections are spliced byte for byte (extensions such as permessage-deflate and
//! subprotocols pass end to end), with an idle timeout of their own. HTTP/2 clients may use
//! extended CONNECT (RFC 8441); the upstream still sees an HTTP/1.1 upgrade.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::forward::{error_chain, upstream_headers};
use super::headers::remove_hop_by_hop;
use super::pool::ProxyBody;
use super::routes::Route;
use super::{Proxy, UPGRADE_TIMEOUT};
use crate::http::error::HttpError;
use crate::http::service::{ConnectionInfo, ConnectionSlot};
use crate::http::{full, websocket, Response};

/// An HTTP/1.1 `Upgrade: websocket` or an HTTP/2 extended CONNECT for websocket.
pub fn is_websocket<B>(request: &Request<B>) -> bool {
    if request.method() == Method::CONNECT {
        return request
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    }
    websocket::has_token(request.headers(), header::UPGRADE, "websocket")
}

fn origin_allowed(route: &Route, request: &Request<Incoming>) -> bool {
    if route.allowed_origins.is_empty() {
        return true;
    }
    request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(|origin| origin.trim_end_matches('/').to_ascii_lowercase())
        .is_some_and(|origin| route.allowed_origins.contains(&origin))
}

fn random_key() -> String {
    let mut bytes = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    crate::certs::pem::base64(&bytes)
}

pub async fn open(
    proxy: &Proxy,
    route: &Route,
    request: Request<Incoming>,
    conn: &ConnectionInfo,
    host: &str,
) -> Response {
    let extended_connect = request.method() == Method::CONNECT;
    if !extended_connect {
        if let Err(error) = websocket::check_upgrade(&request) {
            return error.into_response();
        }
    } else if request
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return HttpError::UnsupportedWebSocketVersion.into_response();
    }
    if !origin_allowed(route, &request) {
        tracing::info!(route = %route.name, origin = ?request.headers().get(header::ORIGIN), "WebSocket origin refused");
        proxy
            .metrics
            .websocket_upgrades
            .get_or_create(&crate::metrics::UpgradeLabels {
                route: route.name.clone(),
                result: "forbidden_origin".into(),
            })
            .inc();
        return HttpError::OriginNotAllowed.into_response();
    }
    let pool = route.pool.clone();
    let (parts, body) = request.into_parts();
    let (mut headers, client_ip) = upstream_headers(proxy, &pool, &parts, conn, host);
    let mut request = Request::from_parts(parts, body);
    // The upstream always gets an HTTP/1.1 upgrade; for extended CONNECT we make the key.
    let key = match request.headers().get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if !extended_connect => key.clone(),
        _ => match HeaderValue::from_str(&random_key()) {
            Ok(key) => key,
            Err(_) => return HttpError::BadGateway.into_response(),
        },
    };
    headers.insert(header::SEC_WEBSOCKET_KEY, key.clone());
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));

    let sticky = super::forward::cookie_value(request.headers(), &pool.settings.sticky_cookie)
        .map(str::to_owned);
    let Some((index, in_flight)) = pool.acquire(client_ip, sticky.as_deref(), &[]) else {
        tracing::error!(route = %route.name, upstream = %pool.name, "no upstream server available for WebSocket");
        return HttpError::NoUpstream.into_response();
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
        return HttpError::BadRequest("request cannot be forwarded").into_response();
    };
    let response = match tokio::time::timeout(
        UPGRADE_TIMEOUT.min(pool.settings.response_timeout),
        pool.client.request(upstream),
    )
    .await
    {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            pool.record_failure(index);
            tracing::error!(route = %route.name, upstream = %pool.name, server = %server_url, error = %error_chain(&error), "WebSocket upstream failed");
            return HttpError::BadGateway.into_response();
        }
        Err(_) => {
            pool.record_failure(index);
            tracing::error!(route = %route.name, upstream = %pool.name, server = %server_url, "WebSocket upstream did not answer");
            return HttpError::GatewayTimeout.into_response();
        }
    };
    pool.record_success(index);
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The backend refused (401, 403, 404…): its answer goes back like any response.
        return super::forward::respond(
            &pool,
            index,
            response,
            in_flight,
            sticky.as_deref(),
            conn.secure,
        );
    }
    let expected_accept = derive_accept_key(key.as_bytes());
    if response
        .headers()
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .map(|v| v.as_bytes())
        != Some(expected_accept.as_bytes())
    {
        tracing::error!(route = %route.name, server = %server_url, "upstream's Sec-WebSocket-Accept does not match");
        return HttpError::BadGateway.into_response();
    }

    // Every end-to-end header of the backend's 101 goes to the client (Sec-WebSocket-Protocol,
    // -Extensions, cookies…); the upgrade itself is this hop's.
    let mut reply = hyper::Response::new(full(Vec::new()));
    *reply.headers_mut() = response.headers().clone();
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
    let client_upgrade = hyper::upgrade::on(&mut request);
    let upstream_upgrade = hyper::upgrade::on(response);
    let slot = request.extensions_mut().remove::<ConnectionSlot>();
    let idle = route.websocket_idle_timeout;
    let route_name = route.name.clone();
    let shutdown = proxy.shutdown.clone();
    let metrics = proxy.metrics.clone();
    let closer = proxy.route_closer(&route.key());
    let grace = proxy.reload_grace;
    let route_label = crate::metrics::RouteLabels {
        route: route_name.clone(),
    };
    metrics
        .websocket_upgrades
        .get_or_create(&crate::metrics::UpgradeLabels {
            route: route_name.clone(),
            result: "ok".into(),
        })
        .inc();
    proxy.tasks.spawn(async move {
        let _held = (slot, in_flight);
        let open = metrics.open_websockets.get_or_create_owned(&route_label);
        let _open = crate::metrics::GaugeGuard::new(open);
        let (client, upstream) = match tokio::join!(client_upgrade, upstream_upgrade) {
            (Ok(client), Ok(upstream)) => (client, upstream),
            (Err(error), _) | (_, Err(error)) => {
                tracing::debug!(route = %route_name, %error, "WebSocket upgrade did not complete");
                return;
            }
        };
        let reason = tokio::select! {
            reason = splice(TokioIo::new(client), TokioIo::new(upstream), idle, closer, grace) => reason,
            () = shutdown.cancelled() => "server shutting down",
        };
        tracing::debug!(route = %route_name, reason, "WebSocket tunnel closed");
    });
    reply
}

/// How long a removed route's tunnel may take to finish the frame in flight and send the
/// close frame before the connection is simply dropped.
const CLOSE_FRAME_DEADLINE: Duration = Duration::from_secs(5);

/// Copies bytes both ways until both sides finish, or nothing moves either way for `idle`.
/// Each direction runs on its own, so a peer that stops reading stalls only its direction,
/// and the idle watchdog still fires. When `close` fires (a reload removed the route), the
/// client gets a WebSocket close frame with code 1001 after a random part of `spread`, so
/// clients do not all reconnect at once; the frame goes in between the backend's frames, never
/// inside one.
pub async fn splice<A, B>(
    a: A,
    b: B,
    idle: Duration,
    close: tokio_util::sync::CancellationToken,
    spread: Duration,
) -> &'static str
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = tokio::time::Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let outcome = {
        let removed = async {
            close.cancelled().await;
            tokio::time::sleep(spread_delay(spread)).await;
        };
        let both = async {
            let to_upstream = pump(&mut a_read, &mut b_write, &touch);
            let to_client = pump_to_client(&mut b_read, &mut a_write, &touch, removed);
            tokio::pin!(to_upstream, to_client);
            let (mut upstream_done, mut client_done) = (false, false);
            while !(upstream_done && client_done) {
                tokio::select! {
                    () = &mut to_upstream, if !upstream_done => upstream_done = true,
                    removed = &mut to_client, if !client_done => {
                        if removed {
                            return "route removed";
                        }
                        client_done = true;
                    }
                }
            }
            "closed"
        };
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
            outcome = both => outcome,
            () = watchdog => "idle timeout",
        }
    };
    if outcome == "route removed" {
        let _ = tokio::time::timeout(CLOSE_FRAME_DEADLINE, b_write.shutdown()).await;
    }
    outcome
}

fn spread_delay(spread: Duration) -> Duration {
    let mut bytes = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    spread.mul_f64(f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX))
}

/// Bytes a tunnel direction holds while idle: small, since ten thousand idle WebSockets hold
/// two each. A read that fills it switches the direction to [`BULK_BUFFER`] until traffic
/// thins out again.
const IDLE_BUFFER: usize = 1024;
const BULK_BUFFER: usize = 16 * 1024;

/// A copy buffer that is small while traffic is small or absent and large while it flows.
struct CopyBuffer {
    small: [u8; IDLE_BUFFER],
    bulk: Vec<u8>,
}

impl CopyBuffer {
    fn new() -> Self {
        CopyBuffer {
            small: [0; IDLE_BUFFER],
            bulk: Vec::new(),
        }
    }

    fn space(&mut self) -> &mut [u8] {
        if self.bulk.is_empty() {
            &mut self.small
        } else {
            &mut self.bulk
        }
    }

    fn filled(&self, n: usize) -> &[u8] {
        if self.bulk.is_empty() {
            &self.small[..n]
        } else {
            &self.bulk[..n]
        }
    }

    /// After a read of `n` bytes: grow when the small buffer was filled, give the large one
    /// back when a read used under a quarter of it.
    fn adapt(&mut self, n: usize) {
        if self.bulk.is_empty() {
            if n == IDLE_BUFFER {
                self.bulk = vec![0; BULK_BUFFER];
            }
        } else if n < BULK_BUFFER / 4 {
            self.bulk = Vec::new();
        }
    }

    async fn read_from<R: AsyncRead + Unpin>(&mut self, from: &mut R) -> std::io::Result<usize> {
        from.read(self.space()).await
    }
}

/// One direction: read, write, repeat; at end of input, shut the other side's writing half.
async fn pump<R, W>(from: &mut R, to: &mut W, touch: &(dyn Fn() + Sync))
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = Box::new(CopyBuffer::new());
    loop {
        match buffer.read_from(from).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                touch();
                if to.write_all(buffer.filled(n)).await.is_err() {
                    break;
                }
                buffer.adapt(n);
                touch();
            }
        }
    }
    let _ = to.shutdown().await;
}

/// An unmasked close frame, code 1001 (going away).
const GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// The backend-to-client direction. It follows the frame boundaries so that, once `removed`
/// fires, it can end the frame in flight and then send the client a close frame. Returns
/// whether it stopped for that reason.
async fn pump_to_client<R, W>(
    from: &mut R,
    to: &mut W,
    touch: &(dyn Fn() + Sync),
    removed: impl std::future::Future<Output = ()>,
) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = Box::new(CopyBuffer::new());
    let mut frames = FrameBoundary::default();
    tokio::pin!(removed);
    // Until the route goes away: copy, following the frames.
    let read = loop {
        tokio::select! {
            read = buffer.read_from(from) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return false;
                }
                Ok(n) => {
                    touch();
                    frames.consume(buffer.filled(n), false);
                    if to.write_all(buffer.filled(n)).await.is_err() {
                        return false;
                    }
                    buffer.adapt(n);
                    touch();
                }
            },
            () = &mut removed => break frames.at_boundary(),
        }
    };
    let finish = async {
        let mut at_boundary = read;
        // Mid-frame: copy up to the end of that frame, and not a byte further.
        while !at_boundary {
            let n = match buffer.read_from(from).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let upto = frames.consume(buffer.filled(n), true);
            if to.write_all(&buffer.filled(n)[..upto]).await.is_err() {
                return;
            }
            at_boundary = frames.at_boundary();
        }
        let _ = to.write_all(&GOING_AWAY).await;
        let _ = to.shutdown().await;
    };
    let _ = tokio::time::timeout(CLOSE_FRAME_DEADLINE, finish).await;
    true
}

/// Where WebSocket frames end in a byte stream read in arbitrary chunks (RFC 6455 §5.2).
#[derive(Default)]
struct FrameBoundary {
    /// The bytes of a frame header read so far.
    header: Vec<u8>,
    /// Payload bytes still to come in the current frame.
    remaining: u64,
}

impl FrameBoundary {
    fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.remaining == 0
    }

    /// Length of the header being read, once its first two bytes are known.
    fn header_len(&self) -> Option<usize> {
        let second = *self.header.get(1)?;
        let extended = match second & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        Some(2 + extended + mask)
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(bytes)
            }
            short => u64::from(short),
        }
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
            self.header.push(bytes[taken]);
            taken += 1;
            if self.header_len() == Some(self.header.len()) {
                self.remaining = self.payload_len();
                self.header.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_buffer_grows_while_reads_fill_it_and_shrinks_when_traffic_thins() {
        let mut buffer = CopyBuffer::new();
        assert_eq!(buffer.space().len(), IDLE_BUFFER);
        buffer.adapt(100);
        assert_eq!(buffer.space().len(), IDLE_BUFFER);
        buffer.adapt(IDLE_BUFFER);
        assert_eq!(buffer.space().len(), BULK_BUFFER);
        buffer.adapt(BULK_BUFFER);
        assert_eq!(buffer.space().len(), BULK_BUFFER);
        buffer.adapt(64);
        assert_eq!(buffer.space().len(), IDLE_BUFFER);
        assert!(
            buffer.bulk.capacity() == 0,
            "the large buffer is given back"
        );
    }

    #[tokio::test]
    async fn splice_carries_small_and_bulk_traffic_both_ways_intact() {
        let (client, client_side) = tokio::io::duplex(64 * 1024);
        let (upstream, upstream_side) = tokio::io::duplex(64 * 1024);
        let tunnel = tokio::spawn(splice(
            client_side,
            upstream_side,
            Duration::from_secs(10),
            tokio_util::sync::CancellationToken::new(),
            Duration::ZERO,
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

    #[tokio::test]
    async fn close_frame_waits_for_the_frame_in_flight() {
        let (mut backend, tunnel_backend) = tokio::io::duplex(64 * 1024);
        let (tunnel_client, mut client) = tokio::io::duplex(64 * 1024);
        let close = tokio_util::sync::CancellationToken::new();
        let splice = tokio::spawn(splice(
            tunnel_client,
            tunnel_backend,
            Duration::from_secs(30),
            close.clone(),
            Duration::ZERO,
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
