//! HTTP/1.1 exchanges with plain-HTTP upstream servers, driven by the client connection's own
//! task: the request is written and the response read and streamed back without a connection
//! task or a channel in between (nginx's model), and idle keep-alive connections wait per
//! server, newest on top.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::body::StallTimer;
use super::body::{BoxError, ProxyBody};
use super::idle::IdleConnections;

/// The most a response head (status line and headers) may take; nginx's default is 4–8 KiB.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields a response head may have (hyper's limit too).
pub const MAX_HEADERS: usize = 100;
/// The most a chunk-size line or the trailer section may take.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Room read per `recv`: a whole typical response, and large bodies in few calls.
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting: {0}")]
    Connect(#[source] io::Error),
    #[error("sending the request: {0}")]
    Send(#[source] io::Error),
    #[error("reading the response: {0}")]
    Receive(#[source] io::Error),
    #[error("the connection closed before a response")]
    ClosedEarly,
    #[error("the request body failed: {0}")]
    RequestBody(#[source] BoxError),
    #[error("invalid response: {0}")]
    Protocol(&'static str),
    /// A kept-alive connection the server was closing as the request went out: not a sign
    /// that the server is failing.
    #[error("the server closed its kept-alive connection under the request: {0}")]
    Stale(#[source] Box<UpstreamError>),
    #[error(transparent)]
    H2c(#[from] hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// Whether the failure says something about the server's health (passive checks).
    pub fn counts_against_server(&self) -> bool {
        !matches!(self, Self::Stale(_))
    }

    /// Whether the request never reached the server (safe to try another one).
    pub fn is_connect(&self) -> bool {
        match self {
            Self::Connect(_) => true,
            Self::H2c(error) => error.is_connect(),
            _ => false,
        }
    }

    /// A kept-alive connection the server had closed: nothing of the request was processed.
    fn is_stale_connection(&self) -> bool {
        match self {
            Self::ClosedEarly => true,
            Self::Send(error) | Self::Receive(error) => matches!(
                error.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

pub(super) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether a failed exchange timed out (connecting, or waiting for the server to take the
/// request): a `504` rather than a `502`.
pub(super) fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        current = e.source();
    }
    false
}

/// Where an exchange goes: the server's address and its idle connections.
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub idle: &'a Arc<IdleConnections>,
    pub connect_timeout: Duration,
    /// The longest pause allowed inside a response body (nginx's `proxy_read_timeout`).
    pub read_timeout: Duration,
    /// The longest the server may leave request bytes untaken (nginx's `proxy_send_timeout`).
    pub send_timeout: Duration,
}

/// Connects through the one upstream connector ([`super::connect`]).
async fn connect(target: &Target<'_>) -> Result<TcpStream, UpstreamError> {
    super::connect::connect(target.host, target.port, target.connect_timeout)
        .await
        .map_err(UpstreamError::Connect)
}

/// How the request body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RequestFraming {
    Empty,
    Length(u64),
    Chunked,
}

/// The request line and headers, with `Host` first and framing headers of its own: the
/// client's `Content-Length` is not trusted to match what will be written.
fn encode_head(
    request: &Request<ProxyBody>,
    framing: RequestFraming,
    target: &Target<'_>,
) -> Vec<u8> {
    let headers = request.headers();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let mut head = Vec::with_capacity(96 + path.len() + headers.len() * 48);
    head.extend_from_slice(request.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    match headers.get(header::HOST) {
        Some(host) => head.extend_from_slice(host.as_bytes()),
        None if target.port == 80 => head.extend_from_slice(target.host.as_bytes()),
        None => head.extend_from_slice(format!("{}:{}", target.host, target.port).as_bytes()),
    }
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        // The edge answers `Expect: 100-continue` itself and streams the body regardless.
        if name == header::HOST || name == header::EXPECT || name == header::CONTENT_LENGTH {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        RequestFraming::Length(length) => {
            head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes());
        }
        RequestFraming::Empty => {
            if headers.contains_key(header::CONTENT_LENGTH)
                || matches!(
                    *request.method(),
                    Method::POST | Method::PUT | Method::PATCH
                )
            {
                head.extend_from_slice(b"content-length: 0\r\n");
            }
        }
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A request on its way upstream, head then body, written as far as the socket takes it. It
/// goes on after the response head arrives: a server may answer first and read on (an echo,
/// a progress stream), and only when its response ends is an unfinished upload abandoned.
struct Upload {
    body: ProxyBody,
    framing: RequestFraming,
    /// Body bytes taken so far (without chunk framing), checked against a declared length.
    taken: u64,
    /// Bytes not yet written.
    out: Bytes,
    /// The body has ended; `out` holds its last bytes.
    ended: bool,
    /// Bytes written so far, head included: progress for the stall timer.
    written: u64,
    /// Waiting for the server to take bytes (not for the client to send more).
    blocked_on_socket: bool,
}

fn send_stalled(limit: Duration) -> UpstreamError {
    UpstreamError::Send(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the upstream took none of the request for {limit:?}"),
    ))
}

impl Upload {
    fn new(head: Bytes, body: ProxyBody, framing: RequestFraming) -> Self {
        Self {
            body,
            framing,
            taken: 0,
            out: head,
            ended: false,
            written: 0,
            blocked_on_socket: false,
        }
    }

    fn done(&self) -> bool {
        self.ended && self.out.is_empty()
    }

    /// `Ready(Ok)` once everything is written; `Pending` while the body or the socket waits.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut TcpStream,
    ) -> Poll<Result<(), UpstreamError>> {
        loop {
            while !self.out.is_empty() {
                let polled = Pin::new(&mut *stream).poll_write(cx, &self.out);
                self.blocked_on_socket = polled.is_pending();
                let written = ready!(polled).map_err(UpstreamError::Send)?;
                if written == 0 {
                    return Poll::Ready(Err(UpstreamError::Send(io::ErrorKind::WriteZero.into())));
                }
                self.written += written as u64;
                self.out.advance(written);
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers are not forwarded.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    self.taken += data.len() as u64;
                    self.out = match self.framing {
                        RequestFraming::Chunked => {
                            let mut chunk = BytesMut::with_capacity(data.len() + 20);
                            chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                            chunk.extend_from_slice(&data);
                            chunk.extend_from_slice(b"\r\n");
                            chunk.freeze()
                        }
                        RequestFraming::Length(length) if self.taken > length => {
                            return Poll::Ready(Err(UpstreamError::RequestBody(
                                "the request body is longer than its Content-Length".into(),
                            )))
                        }
                        RequestFraming::Length(_) => data,
                        RequestFraming::Empty => {
                            return Poll::Ready(Err(UpstreamError::RequestBody(
                                "an empty request body yielded data".into(),
                            )))
                        }
                    };
                }
                Some(Err(error)) => return Poll::Ready(Err(UpstreamError::RequestBody(error))),
                None => {
                    self.ended = true;
                    match self.framing {
                        RequestFraming::Chunked => self.out = Bytes::from_static(b"0\r\n\r\n"),
                        RequestFraming::Length(length) if self.taken != length => {
                            return Poll::Ready(Err(UpstreamError::RequestBody(
                                "the request body is shorter than its Content-Length".into(),
                            )))
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

fn empty_body() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Sends `request` to the target over a kept-alive connection or a new one. A kept-alive
/// connection the server closed meanwhile is replaced once, for a request without a body
/// whose method is idempotent (the server cannot have acted on it, or acting twice is safe).
pub async fn send(
    target: Target<'_>,
    request: Request<ProxyBody>,
) -> Result<hyper::Response<UpstreamBody>, UpstreamError> {
    let framing = if request.body().is_end_stream() {
        RequestFraming::Empty
    } else {
        match request.body().size_hint().exact() {
            Some(length) => RequestFraming::Length(length),
            None => RequestFraming::Chunked,
        }
    };
    let head = Bytes::from(encode_head(&request, framing, &target));
    let head_only = *request.method() == Method::HEAD;
    let resendable = framing == RequestFraming::Empty && is_idempotent(request.method());
    let mut upload = Upload::new(head.clone(), request.into_body(), framing);
    let mut reused = target.idle.take();
    loop {
        let was_reused = reused.is_some();
        let mut stream = match reused.take() {
            Some(stream) => stream,
            None => connect(&target).await?,
        };
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        match exchange_head(&mut stream, &mut upload, &mut buf, target.send_timeout).await {
            Ok((response, upload_failed)) => {
                let upload = (!upload_failed).then_some(upload);
                return Ok(response.into_response(stream, buf, head_only, upload, &target));
            }
            Err(error) if was_reused && error.is_stale_connection() => {
                if !resendable {
                    return Err(UpstreamError::Stale(Box::new(error)));
                }
                upload = Upload::new(head.clone(), empty_body(), framing);
            }
            Err(error) => return Err(error),
        }
    }
}

/// Writes the request while reading the response head, until the head is complete. A failed
/// write does not end it: a server that answered and closed may have left its answer to read
/// (the upload is then abandoned, and the connection not reused). A server that takes none of
/// the request for `send_timeout` ends it.
async fn exchange_head(
    stream: &mut TcpStream,
    upload: &mut Upload,
    buf: &mut BytesMut,
    send_timeout: Duration,
) -> Result<(ResponseHead, bool), UpstreamError> {
    let mut progress = HeadProgress::default();
    let mut write_failure: Option<UpstreamError> = None;
    let mut stall = StallTimer::default();
    std::future::poll_fn(|cx| {
        if write_failure.is_none() && !upload.done() {
            match upload.poll_send(cx, stream) {
                Poll::Ready(Err(error @ UpstreamError::RequestBody(_))) => {
                    return Poll::Ready(Err(error))
                }
                Poll::Ready(Err(error)) => write_failure = Some(error),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        match poll_read_head(cx, stream, buf, &mut progress) {
            Poll::Ready(Ok(head)) => Poll::Ready(Ok((head, write_failure.is_some()))),
            Poll::Ready(Err(read_failure)) => {
                Poll::Ready(Err(match (write_failure.take(), read_failure) {
                    (_, error @ UpstreamError::Protocol(_)) => error,
                    // Part of an answer came: whatever failed, the server may have acted.
                    (_, UpstreamError::Receive(_)) if progress.received => {
                        UpstreamError::Protocol("the connection failed inside the response head")
                    }
                    (Some(write), _) => write,
                    (None, error) => error,
                }))
            }
            Poll::Pending if write_failure.is_none() && upload.blocked_on_socket => {
                ready!(stall.poll(cx, upload.written, send_timeout));
                Poll::Ready(Err(send_stalled(send_timeout)))
            }
            Poll::Pending => {
                stall.reset();
                Poll::Pending
            }
        }
    })
    .await
}

/// Where reading a response head stands between reads.
#[derive(Default)]
struct HeadProgress {
    /// Some bytes of an answer came.
    received: bool,
    /// `buf` up to here holds no head end: a head trickled in byte by byte is searched once,
    /// not parsed again from its start on every read.
    scanned: usize,
    /// Interim (1xx) heads so far.
    interim: usize,
}

/// The most interim (100 Continue, 103 Early Hints) heads one response may bring.
const MAX_INTERIM_HEADS: usize = 16;

/// Whether `buf` may hold a complete head: an empty line (`\n\n` or `\n\r\n`) ends
/// somewhere after `from`.
fn head_end_after(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(2);
    buf.get(start..).is_some_and(|tail| {
        tail.windows(2).enumerate().any(|(i, pair)| {
            pair[0] == b'\n'
                && (pair[1] == b'\n' || (pair[1] == b'\r' && tail.get(i + 2) == Some(&b'\n')))
        })
    })
}

/// Reads until a final (non-1xx) response head is complete; what follows stays in `buf`.
fn poll_read_head(
    cx: &mut Context<'_>,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    progress: &mut HeadProgress,
) -> Poll<Result<ResponseHead, UpstreamError>> {
    loop {
        if !buf.is_empty() && head_end_after(buf, progress.scanned) {
            if let Some(head) = parse_head(buf)? {
                progress.scanned = 0;
                if head.status.is_informational() {
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Poll::Ready(Err(UpstreamError::Protocol(
                            "101 to a request without upgrade",
                        )));
                    }
                    progress.interim += 1;
                    if progress.interim > MAX_INTERIM_HEADS {
                        return Poll::Ready(Err(UpstreamError::Protocol(
                            "more than 16 interim (1xx) responses",
                        )));
                    }
                    continue; // 100 Continue, 103 Early Hints: the final answer follows
                }
                return Poll::Ready(Ok(head));
            }
        }
        progress.scanned = buf.len();
        if buf.len() >= MAX_HEAD_BYTES {
            return Poll::Ready(Err(UpstreamError::Protocol("response head over 64 KiB")));
        }
        buf.reserve(READ_CHUNK);
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut *stream),
            cx,
            buf
        ))
        .map_err(UpstreamError::Receive)?;
        if read == 0 {
            return Poll::Ready(Err(if progress.received {
                UpstreamError::Protocol("the connection closed inside the response head")
            } else {
                UpstreamError::ClosedEarly
            }));
        }
        progress.received = true;
    }
}

/// A parsed response head.
struct ResponseHead {
    status: StatusCode,
    headers: HeaderMap,
    framing: ResponseFraming,
    /// The server will close, or the framing leaves the connection unusable.
    close: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseFraming {
    /// No body (HEAD, 204, 304), or a body already read to its end.
    Done,
    Length(u64),
    Chunked(ChunkState),
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
}

/// Parses a complete head off the front of `buf`; `None` while it is incomplete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, UpstreamError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    );
    let length = match parsed {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(UpstreamError::Protocol("more than 100 header fields"))
        }
        Err(_) => return Err(UpstreamError::Protocol("malformed response head")),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(UpstreamError::Protocol("invalid status code"))?;
    let version = match response.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let start = buf.as_ptr() as usize;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut saw_close = false;
    let mut saw_keep_alive = false;
    let mut fields: Vec<(HeaderName, usize, usize)> = Vec::with_capacity(response.headers.len());
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| UpstreamError::Protocol("invalid header name"))?;
        if name == header::CONTENT_LENGTH {
            for part in field.value.split(|b| *b == b',') {
                let value = std::str::from_utf8(part)
                    .ok()
                    .map(str::trim)
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or(UpstreamError::Protocol("invalid Content-Length"))?;
                if content_length.is_some_and(|seen| seen != value) {
                    return Err(UpstreamError::Protocol("conflicting Content-Length values"));
                }
                content_length = Some(value);
            }
        } else if name == header::TRANSFER_ENCODING {
            // Only a single `chunked` is understood (as nginx): another coding would reach
            // the client undecoded and unlabelled, since Transfer-Encoding is hop-by-hop.
            if transfer_encoding || !field.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(UpstreamError::Protocol("unsupported Transfer-Encoding"));
            }
            transfer_encoding = true;
        } else if name == header::CONNECTION {
            for token in field.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                saw_close |= token.eq_ignore_ascii_case(b"close");
                saw_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        let value_start = field.value.as_ptr() as usize - start;
        fields.push((name, value_start, value_start + field.value.len()));
    }
    // `close` wins over `keep-alive`, whatever their order; HTTP/1.0 closes unless it asks not
    // to, and chunked framing in HTTP/1.0 is faulty (RFC 9112 §6.1).
    let mut close =
        saw_close || (version == Version::HTTP_10 && (!saw_keep_alive || transfer_encoding));
    if transfer_encoding && content_length.is_some() {
        // Transfer-Encoding wins (RFC 9112 §6.3); the Content-Length is dropped before
        // forwarding, and the connection, with its framing in doubt, is not reused.
        close = true;
        fields.retain(|(name, _, _)| name != header::CONTENT_LENGTH);
    }
    let head_bytes = buf.split_to(length).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, from, to) in fields {
        let value = HeaderValue::from_maybe_shared(head_bytes.slice(from..to))
            .map_err(|_| UpstreamError::Protocol("invalid header value"))?;
        headers.append(name, value);
    }
    let no_body = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        ResponseFraming::Done
    } else if transfer_encoding {
        ResponseFraming::Chunked(ChunkState::Size)
    } else {
        match content_length {
            Some(length) => ResponseFraming::Length(length),
            None => ResponseFraming::UntilClose,
        }
    };
    Ok(Some(ResponseHead {
        status,
        headers,
        framing,
        close,
    }))
}

impl ResponseHead {
    fn into_response(
        self,
        stream: TcpStream,
        buf: BytesMut,
        head_only: bool,
        upload: Option<Upload>,
        target: &Target<'_>,
    ) -> hyper::Response<UpstreamBody> {
        // No body may follow, by method or status: a sloppy server's stray body would be
        // read as the next response, so the connection settles before reuse.
        let settle = head_only || self.framing == ResponseFraming::Done;
        let framing = if head_only {
            ResponseFraming::Done
        } else {
            self.framing
        };
        let mut body = UpstreamBody {
            stream: Some(stream),
            buf,
            framing,
            // A failed upload (`None`) leaves the connection unusable.
            reusable: upload.is_some() && !self.close && framing != ResponseFraming::UntilClose,
            settle,
            // Boxed: only requests with a body still going need the room.
            upload: upload.filter(|upload| !upload.done()).map(Box::new),
            idle: target.idle.clone(),
            read_timeout: target.read_timeout,
            send_timeout: target.send_timeout,
            stall: StallTimer::default(),
            received: 0,
        };
        if body.framing == ResponseFraming::Length(0) {
            body.framing = ResponseFraming::Done;
        }
        if body.framing == ResponseFraming::Done {
            body.release();
        }
        let mut response = hyper::Response::new(body);
        *response.status_mut() = self.status;
        // The client's connection is not the upstream's: an HTTP/1.0 server must not turn it
        // into HTTP/1.0.
        *response.version_mut() = Version::HTTP_11;
        *response.headers_mut() = self.headers;
        response
    }
}

/// A response body read straight off the upstream connection, which goes back to the idle
/// queue the moment the body's last byte is read (and is closed if the body is dropped early).
pub struct UpstreamBody {
    stream: Option<TcpStream>,
    buf: BytesMut,
    framing: ResponseFraming,
    reusable: bool,
    /// The connection is watched for [`super::idle::SETTLE`] before reuse.
    settle: bool,
    /// The rest of a request body still on its way.
    upload: Option<Box<Upload>>,
    idle: Arc<IdleConnections>,
    read_timeout: Duration,
    send_timeout: Duration,
    /// Runs while nothing moves either way; the body fails when it fires.
    stall: StallTimer,
    /// Bytes read so far: progress for the stall timer.
    received: u64,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the upstream closed the connection before the body ended")]
    Truncated,
    #[error("invalid chunked body: {0}")]
    Chunk(&'static str),
    #[error("reading the body: {0}")]
    Io(#[from] io::Error),
    #[error("the request body failed while the response was streaming")]
    Upload,
    #[error("the upstream neither sent nor took anything for {0:?} during the response")]
    Stalled(Duration),
}

impl UpstreamBody {
    /// The body ended: the connection is parked when it can carry another request (its
    /// request sent whole, nothing unread).
    fn release(&mut self) {
        self.framing = ResponseFraming::Done;
        if let Some(stream) = self.stream.take() {
            if !self.buf.is_empty() {
                // Bytes past the body's end: never reused, and the server is suspect.
                self.idle.caught_sloppy();
            } else if self.reusable && self.upload.is_none() {
                if self.settle {
                    self.idle.put_settling(stream);
                } else {
                    self.idle.put(stream);
                }
            }
        }
        self.upload = None;
    }

    /// Moves the upload on; a failed write ends it (the connection is then not reused), a
    /// failed request body ends the exchange.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Result<(), BodyError> {
        let (Some(upload), Some(stream)) = (self.upload.as_mut(), self.stream.as_mut()) else {
            return Ok(());
        };
        match upload.poll_send(cx, stream) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => self.upload = None,
            Poll::Ready(Err(UpstreamError::RequestBody(_))) => return Err(BodyError::Upload),
            Poll::Ready(Err(_)) => {
                self.reusable = false;
                self.upload = None;
            }
        }
        Ok(())
    }

    /// Ends the exchange on an error: the connection and any upload are dropped.
    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Bytes, BodyError>>> {
        self.stream = None;
        self.upload = None;
        self.framing = ResponseFraming::Done;
        Poll::Ready(Some(Err(error)))
    }

    /// Reads more into `buf`; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        self.buf.reserve(want.clamp(1, READ_CHUNK));
        tokio_util::io::poll_read_buf(Pin::new(stream), cx, &mut self.buf)
    }

    fn take_data(&mut self, at_most: u64) -> Bytes {
        let n = usize::try_from(at_most)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        self.buf.split_to(n).freeze()
    }

    /// Position of the first CRLF in `buf`.
    fn line_end(&self) -> Option<usize> {
        self.buf.windows(2).position(|w| w == b"\r\n")
    }

    /// One step of chunked decoding: `Some(frame)` for data, `None` to read more or go on.
    fn step_chunked(&mut self, state: ChunkState) -> Result<Option<Bytes>, BodyError> {
        match state {
            ChunkState::Size => {
                let Some(end) = self.line_end() else {
                    if self.buf.len() > MAX_CHUNK_LINE {
                        return Err(BodyError::Chunk("chunk-size line too long"));
                    }
                    return Ok(None);
                };
                let size = parse_chunk_size(&self.buf[..end])?;
                self.buf.advance(end + 2);
                self.framing = ResponseFraming::Chunked(if size == 0 {
                    ChunkState::Trailers(0)
                } else {
                    ChunkState::Data(size)
                });
                Ok(None)
            }
            ChunkState::Data(remaining) => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let data = self.take_data(remaining);
                let left = remaining - data.len() as u64;
                self.framing = ResponseFraming::Chunked(if left == 0 {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(left)
                });
                Ok(Some(data))
            }
            ChunkState::DataEnd => {
                if self.buf.len() < 2 {
                    return Ok(None);
                }
                if &self.buf[..2] != b"\r\n" {
                    return Err(BodyError::Chunk("chunk data not followed by CRLF"));
                }
                self.buf.advance(2);
                self.framing = ResponseFraming::Chunked(ChunkState::Size);
                Ok(None)
            }
            ChunkState::Trailers(seen) => {
                if let Some(end) = self.line_end() {
                    if self.buf[..end].iter().any(|b| *b == b'\r' || *b == b'\n') {
                        return Err(BodyError::Chunk("bare CR or LF in the trailer section"));
                    }
                }
                let Some(end) = self.line_end() else {
                    if seen + self.buf.len() > MAX_TRAILER_BYTES {
                        return Err(BodyError::Chunk("trailer section too large"));
                    }
                    return Ok(None);
                };
                // Every line counts, not only a partial one: else an endless section of
                // short lines would pass.
                if seen + end + 2 > MAX_TRAILER_BYTES {
                    return Err(BodyError::Chunk("trailer section too large"));
                }
                // Trailer fields are read past, not forwarded (as nginx does).
                self.buf.advance(end + 2);
                if end == 0 {
                    self.release();
                } else {
                    self.framing = ResponseFraming::Chunked(ChunkState::Trailers(seen + end + 2));
                }
                Ok(None)
            }
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        if let Err(error) = self.poll_upload(cx) {
            return self.fail(error);
        }
        loop {
            let want = match self.framing {
                ResponseFraming::Done => return Poll::Ready(None),
                ResponseFraming::Length(remaining) => {
                    if !self.buf.is_empty() {
                        let data = self.take_data(remaining);
                        let left = remaining - data.len() as u64;
                        self.framing = ResponseFraming::Length(left);
                        if left == 0 {
                            self.release();
                        }
                        return Poll::Ready(Some(Ok(data)));
                    }
                    usize::try_from(remaining).unwrap_or(usize::MAX)
                }
                ResponseFraming::UntilClose => {
                    if !self.buf.is_empty() {
                        let data = self.buf.split().freeze();
                        return Poll::Ready(Some(Ok(data)));
                    }
                    READ_CHUNK
                }
                ResponseFraming::Chunked(state) => {
                    let before = self.buf.len();
                    match self.step_chunked(state) {
                        Err(error) => return self.fail(error),
                        Ok(Some(data)) => return Poll::Ready(Some(Ok(data))),
                        Ok(None) => {
                            if self.framing != ResponseFraming::Chunked(state)
                                || self.buf.len() != before
                            {
                                continue; // progress: decode on
                            }
                        }
                    }
                    match state {
                        ChunkState::Data(remaining) => {
                            usize::try_from(remaining).unwrap_or(usize::MAX)
                        }
                        _ => READ_CHUNK,
                    }
                }
            };
            let filled = match self.poll_fill(cx, want) {
                Poll::Ready(filled) => filled,
                Poll::Pending => {
                    let limit = match &self.upload {
                        // The server may be waiting for the client's next bytes, whose pauses
                        // the request body's own timer bounds.
                        Some(upload) if !upload.blocked_on_socket => {
                            self.stall.reset();
                            return Poll::Pending;
                        }
                        Some(_) => self.send_timeout,
                        None => self.read_timeout,
                    };
                    let progress = self.received + self.upload.as_ref().map_or(0, |u| u.written);
                    ready!(self.stall.poll(cx, progress, limit));
                    tracing::warn!(timeout = ?limit, "upstream stalled inside a response: connection closed");
                    return self.fail(BodyError::Stalled(limit));
                }
            };
            match filled {
                Ok(0) if self.framing == ResponseFraming::UntilClose => {
                    self.stream = None;
                    self.upload = None;
                    self.framing = ResponseFraming::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return self.fail(BodyError::Truncated),
                Ok(read) => self.received += read as u64,
                Err(error) => return self.fail(BodyError::Io(error)),
            }
        }
    }
}

/// The size of a chunk-size line (`1a;name=value`): hex digits right at its start, optional
/// whitespace before extensions, no bare CR or LF, and no more than [`MAX_CHUNK_LINE`] bytes.
fn parse_chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    if line.len() > MAX_CHUNK_LINE {
        return Err(BodyError::Chunk("chunk-size line too long"));
    }
    if line.iter().any(|b| *b == b'\r' || *b == b'\n') {
        return Err(BodyError::Chunk("bare CR or LF in a chunk-size line"));
    }
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    // Only spaces and tabs (BWS) may come before the extensions, which hold no controls.
    let extensions_start = rest
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(rest.len());
    let extensions = &rest[extensions_start..];
    if digits.is_empty() || !(extensions.is_empty() || extensions.starts_with(b";")) {
        return Err(BodyError::Chunk("invalid chunk size"));
    }
    if extensions
        .iter()
        .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
    {
        return Err(BodyError::Chunk("control character in chunk extensions"));
    }
    digits.iter().try_fold(0u64, |size, digit| {
        let value = (*digit as char).to_digit(16).map(u64::from);
        size.checked_mul(16)
            .zip(value)
            .and_then(|(size, value)| size.checked_add(value))
            .ok_or(BodyError::Chunk("chunk size out of range"))
    })
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut()
            .poll_next(cx)
            .map(|next| next.map(|item| item.map(Frame::data).map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.framing == ResponseFraming::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            ResponseFraming::Done => SizeHint::with_exact(0),
            ResponseFraming::Length(remaining) => SizeHint::with_exact(remaining),
            _ => SizeHint::default(),
        }
    }
}

/// An upstream response body: HTTP/1.1 read in this task, or HTTP/2 (h2c) through hyper.
pub enum ResponseBody {
    Http1(UpstreamBody),
    H2c(hyper::body::Incoming),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Http1(body) => Pin::new(body).poll_frame(cx),
            Self::H2c(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|next| next.map(|item| item.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Http1(body) => body.is_end_stream(),
            Self::H2c(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Http1(body) => body.size_hint(),
            Self::H2c(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
#[path = "upstream_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What the scripted backend does after writing its answer.
    #[derive(Clone, Copy, PartialEq)]
    enum After {
        KeepOpen,
        Close,
    }

    /// A raw-socket backend answering each request head with `answer(head)`; counts accepted
    /// connections. `drop_second` closes a connection at its second request without answering.
    async fn backend(
        answer: fn(&str) -> (Vec<u8>, After),
        drop_second: bool,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut served = 0;
                    loop {
                        let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                            let mut chunk = [0u8; 4096];
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
                        pending.drain(..end + 4);
                        served += 1;
                        if drop_second && served == 2 {
                            return;
                        }
                        let (bytes, after) = answer(&head);
                        if socket.write_all(&bytes).await.is_err() || after == After::Close {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn idle() -> Arc<IdleConnections> {
        Arc::new(IdleConnections::new(8, Duration::from_secs(60)))
    }

    fn target<'a>(addr: &SocketAddr, idle: &'a Arc<IdleConnections>) -> Target<'a> {
        Target {
            host: "127.0.0.1",
            port: addr.port(),
            idle,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_millis(300),
            send_timeout: Duration::from_millis(300),
        }
    }

    fn request(method: Method, path: &str, body: ProxyBody) -> Request<ProxyBody> {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "app.test")
            .body(body)
            .unwrap()
    }

    fn empty() -> ProxyBody {
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed()
    }

    async fn get(
        addr: &SocketAddr,
        idle: &Arc<IdleConnections>,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, HeaderMap, Result<Bytes, BoxError>), UpstreamError> {
        let response = send(target(addr, idle), request(method, path, empty())).await?;
        let (parts, body) = response.into_parts();
        let collected = tokio::time::timeout(Duration::from_secs(5), body.collect())
            .await
            .expect("the body ends");
        Ok((
            parts.status,
            parts.headers,
            collected.map(http_body_util::Collected::to_bytes),
        ))
    }

    /// A POST that must come back (with a response or an error) within 3 s, else `why` fails.
    async fn post_within_3s(
        addr: &SocketAddr,
        idle: &Arc<IdleConnections>,
        path: &str,
        body: ProxyBody,
        why: &str,
    ) -> Result<hyper::Response<UpstreamBody>, UpstreamError> {
        tokio::time::timeout(
            Duration::from_secs(3),
            send(target(addr, idle), request(Method::POST, path, body)),
        )
        .await
        .unwrap_or_else(|_| panic!("{why}"))
    }

    /// The body of a successful GET.
    async fn body_of(addr: &SocketAddr, idle: &Arc<IdleConnections>, path: &str) -> Bytes {
        let (_, _, body) = get(addr, idle, Method::GET, path).await.unwrap();
        body.unwrap()
    }

    fn answers(head: &str) -> (Vec<u8>, After) {
        let path = head.split(' ').nth(1).unwrap_or("/");
        let text: &[u8] = match path {
            "/length" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-from: backend\r\n\r\nhello",
            "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
            "/until-close" => return (b"HTTP/1.1 200 OK\r\n\r\nuntil close".to_vec(), After::Close),
            "/continue" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            "/head" => b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
            "/no-content" => b"HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n",
            "/close-after" => b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            "/silent-close" => return (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(), After::Close),
            "/http10-keep-alive" => b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
            "/close-and-keep-alive" => b"HTTP/1.1 200 OK\r\nconnection: close, keep-alive\r\ncontent-length: 2\r\n\r\nok",
            "/te-and-length" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "/gzip-chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "/stall" => b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf",
            "/head-bare" => b"HTTP/1.1 200 OK\r\n\r\n",
            "/conflict" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            "/truncated" => return (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this".to_vec(), After::Close),
            "/huge-head" => {
                let mut text = b"HTTP/1.1 200 OK\r\n".to_vec();
                for i in 0..60 {
                    text.extend_from_slice(format!("x-filler-{i}: {}\r\n", "a".repeat(1200)).as_bytes());
                }
                text.extend_from_slice(b"content-length: 0\r\n\r\n");
                return (text, After::KeepOpen);
            }
            "/bad-chunk" => return (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(), After::KeepOpen),
            _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        };
        (text.to_vec(), After::KeepOpen)
    }

    #[test]
    fn a_head_end_is_found_across_reads_and_only_then_parsed() {
        let head = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n";
        assert!(head_end_after(head, 0));
        assert!(head_end_after(b"HTTP/1.1 200 OK\n\n", 0));
        // The end straddles what was scanned before and what just came.
        for cut in 0..head.len() {
            assert!(head_end_after(head, cut), "scanned up to {cut}");
        }
        assert!(!head_end_after(b"HTTP/1.1 200 OK\r\nA: b\r\n", 0));
        assert!(!head_end_after(b"HTTP/1.1 200 OK\r\n\r", 0));
    }

    #[tokio::test]
    async fn keep_alive_reuses_one_connection_and_decodes_every_framing() {
        let (addr, accepted) = backend(answers, false).await;
        let idle = idle();
        for path in ["/length", "/chunked", "/length", "/continue", "/no-content"] {
            let (status, headers, body) = get(&addr, &idle, Method::GET, path).await.unwrap();
            let body = body.unwrap();
            match path {
                "/length" => {
                    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
                    assert_eq!(headers["x-from"], "backend");
                }
                "/chunked" => {
                    assert_eq!(&body[..], b"hello world", "chunks joined, trailer dropped")
                }
                "/continue" => assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"ok"[..])),
                _ => assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0)),
            }
        }
        // After a 204 (and a HEAD answer) the connection is watched before it is reused.
        assert_eq!(idle.len(), 1);
        tokio::time::sleep(super::super::idle::SETTLE).await;
        let (status, _, body) = get(&addr, &idle, Method::HEAD, "/head").await.unwrap();
        assert_eq!(
            (status, body.unwrap().len()),
            (StatusCode::OK, 0),
            "HEAD has no body"
        );
        tokio::time::sleep(super::super::idle::SETTLE).await;
        assert_eq!(
            get(&addr, &idle, Method::GET, "/length")
                .await
                .unwrap()
                .2
                .unwrap(),
            "hello"
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "every exchange on one connection"
        );
        assert_eq!(idle.len(), 1);
    }

    #[tokio::test]
    async fn connections_that_cannot_carry_another_request_are_not_kept() {
        let (addr, accepted) = backend(answers, false).await;
        let idle = idle();
        let (_, _, body) = get(&addr, &idle, Method::GET, "/until-close")
            .await
            .unwrap();
        assert_eq!(
            body.unwrap(),
            "until close",
            "a body without length ends at close"
        );
        assert_eq!(idle.len(), 0);
        assert_eq!(body_of(&addr, &idle, "/close-after").await, "ok");
        assert_eq!(idle.len(), 0, "Connection: close is honoured");
        body_of(&addr, &idle, "/length").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_replaced() {
        let (addr, accepted) = backend(answers, false).await;
        let idle = idle();
        // The server closes after answering, without saying so (its keep-alive timeout).
        assert_eq!(body_of(&addr, &idle, "/silent-close").await, "ok");
        assert_eq!(idle.len(), 1, "parked: nothing said it would close");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, _, body) = get(&addr, &idle, Method::GET, "/length").await.unwrap();
        assert_eq!(
            (status, body.unwrap()),
            (StatusCode::OK, Bytes::from_static(b"hello"))
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // The sweep drops closed connections without a request.
        assert_eq!(body_of(&addr, &idle, "/silent-close").await, "ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(idle.len(), 1);
        idle.sweep();
        assert_eq!(idle.len(), 0);
    }

    #[tokio::test]
    async fn a_request_lost_on_a_closing_connection_is_sent_again_only_when_safe() {
        // Each connection is closed at its second request, unanswered: the race with a
        // server's keep-alive timeout.
        let (addr, accepted) = backend(answers, true).await;
        let idle = idle();
        body_of(&addr, &idle, "/length").await;
        let (status, _, body) = get(&addr, &idle, Method::GET, "/length").await.unwrap();
        assert_eq!(
            (status, body.unwrap()),
            (StatusCode::OK, Bytes::from_static(b"hello"))
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "sent again on a new connection"
        );
        let error = send(
            target(&addr, &idle),
            request(Method::POST, "/length", empty()),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&error, UpstreamError::Stale(cause) if matches!(**cause, UpstreamError::ClosedEarly)),
            "{error}"
        );
        assert!(
            !error.counts_against_server(),
            "no strike against a healthy server"
        );
    }

    #[tokio::test]
    async fn broken_responses_are_errors_not_hangs() {
        let (addr, _) = backend(answers, false).await;
        let idle = idle();
        for (path, expected) in [
            ("/conflict", "conflicting Content-Length values"),
            ("/huge-head", "response head over 64 KiB"),
        ] {
            let error = get(&addr, &idle, Method::GET, path).await.unwrap_err();
            assert_eq!(error.to_string(), format!("invalid response: {expected}"));
        }
        let (_, _, body) = get(&addr, &idle, Method::GET, "/truncated").await.unwrap();
        let error = body.unwrap_err().to_string();
        assert!(
            error.contains("closed the connection before the body ended"),
            "{error}"
        );
        let started = Instant::now();
        let (_, _, body) = get(&addr, &idle, Method::GET, "/stall").await.unwrap();
        let error = body.unwrap_err().to_string();
        assert!(error.contains("anything for 300ms"), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "cut after the read timeout"
        );
        let (_, _, body) = get(&addr, &idle, Method::GET, "/bad-chunk").await.unwrap();
        assert!(body.unwrap_err().to_string().contains("invalid chunk size"));
        assert_eq!(idle.len(), 0, "no broken connection is kept");
        let refused = Target {
            port: 1,
            ..target(&addr, &idle)
        };
        let error = send(refused, request(Method::GET, "/", empty()))
            .await
            .unwrap_err();
        assert!(error.is_connect(), "{error}");
    }

    #[tokio::test]
    async fn bodies_without_length_go_chunked_and_an_early_answer_comes_through() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (transcript_tx, transcript) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            // First connection: read a chunked upload to its end, answer with what arrived.
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            while !received.ends_with(b"0\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                let n = socket.read(&mut chunk).await.unwrap();
                assert!(n > 0, "upload ended early");
                received.extend_from_slice(&chunk[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            let _ = transcript_tx.send(String::from_utf8_lossy(&received).into_owned());
            // Second: answer 413 after the head, never reading the body.
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = socket.read(&mut head).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let idle = idle();
        let (mut sender, channel) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
        tokio::spawn(async move {
            for part in ["abc", "defgh"] {
                let _ = sender.send_data(Bytes::from_static(part.as_bytes())).await;
            }
        });
        let response = send(
            target(&addr, &idle),
            request(Method::POST, "/up", channel.boxed()),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        drop(response);
        let transcript = transcript.await.unwrap();
        assert!(
            transcript.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{transcript}"
        );
        assert!(
            !transcript.to_lowercase().contains("content-length"),
            "{transcript}"
        );
        assert!(
            transcript.ends_with("\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n"),
            "{transcript}"
        );
        // A new queue: the second exchange must open the second connection.
        let idle = self::idle();
        let (sender, channel) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
        let response = post_within_3s(
            &addr,
            &idle,
            "/up",
            channel.boxed(),
            "the early answer comes through while the upload is still open",
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        drop((response, sender));
        assert_eq!(
            idle.len(),
            0,
            "a connection with half an upload is not reused"
        );
        server.abort();
    }

    #[tokio::test]
    async fn connection_headers_and_framing_decide_reuse_and_what_is_forwarded() {
        let (addr, accepted) = backend(answers, false).await;
        let idle = idle();
        assert_eq!(body_of(&addr, &idle, "/http10-keep-alive").await, "ok");
        assert_eq!(idle.len(), 1, "HTTP/1.0 asking for keep-alive is reused");
        let (_, headers, body) = get(&addr, &idle, Method::GET, "/te-and-length")
            .await
            .unwrap();
        assert_eq!(body.unwrap(), "hello", "chunked framing wins");
        assert!(
            !headers.contains_key(header::CONTENT_LENGTH),
            "the conflicting Content-Length is not passed on"
        );
        assert_eq!(
            idle.len(),
            0,
            "a connection with conflicting framing is not reused"
        );
        assert_eq!(body_of(&addr, &idle, "/close-and-keep-alive").await, "ok");
        assert_eq!(idle.len(), 0, "close wins over keep-alive");
        let (status, _, body) = get(&addr, &idle, Method::HEAD, "/head-bare").await.unwrap();
        assert_eq!((status, body.unwrap().len()), (StatusCode::OK, 0));
        assert_eq!(
            idle.len(),
            1,
            "a HEAD answer without length is complete at once"
        );
        // Reused once its watch is over.
        tokio::time::sleep(super::super::idle::SETTLE).await;
        let error = get(&addr, &idle, Method::GET, "/gzip-chunked")
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid response: unsupported Transfer-Encoding"
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            3,
            "kept: the first and the fourth"
        );
    }

    #[test]
    fn chunk_size_lines_are_parsed_strictly() {
        for (line, size) in [
            (&b"1a"[..], 26),
            (b"1A;name=value", 26),
            (b"1a \t;name", 26),
            (b"0000000000000000000001", 1),
            (b"0", 0),
        ] {
            assert_eq!(parse_chunk_size(line).unwrap(), size, "{line:?}");
        }
        for line in [
            &b""[..],
            b" 1a",
            b"1a x",
            b"1a\r",
            b"1a\n;x",
            b"zz",
            b"-1",
            b"10000000000000000",
            b"1a;name=\x01",
            b"1a\x0c;name",
        ] {
            assert!(parse_chunk_size(line).is_err(), "{line:?}");
        }
        assert!(parse_chunk_size(&[b'1'; MAX_CHUNK_LINE + 1]).is_err());
    }

    /// A body that declares one length and yields another.
    struct Lying {
        declared: u64,
        data: Option<Bytes>,
    }

    impl Body for Lying {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.data.take().map(|data| Ok(Frame::data(data))))
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.declared)
        }
    }

    #[tokio::test]
    async fn a_body_that_breaks_its_declared_length_never_desyncs_the_connection() {
        let (addr, _) = backend(answers, false).await;
        let idle = idle();
        for (declared, data, expected) in [
            (10, "short", "shorter than its Content-Length"),
            (3, "too long", "longer than its Content-Length"),
        ] {
            let body = Lying {
                declared,
                data: Some(Bytes::from_static(data.as_bytes())),
            };
            let error = send(
                target(&addr, &idle),
                request(Method::POST, "/length", body.boxed()),
            )
            .await
            .unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
        assert_eq!(idle.len(), 0);
    }

    #[tokio::test]
    async fn an_upload_goes_on_while_the_response_streams() {
        // The server sends its head at once, then echoes each piece of the upload as a chunk:
        // the proxy must keep uploading after the response head arrived.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut chunk = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut chunk).await.unwrap();
                seen.extend_from_slice(&chunk[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let head_end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let mut pending = seen[head_end..].to_vec();
            loop {
                if pending.is_empty() {
                    let n = socket.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&chunk[..n]);
                }
                let piece = std::mem::take(&mut pending);
                let piece = &piece[..];
                socket
                    .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                    .await
                    .unwrap();
                socket.write_all(piece).await.unwrap();
                socket.write_all(b"\r\n").await.unwrap();
                if piece.ends_with(b"0\r\n\r\n") {
                    socket.write_all(b"0\r\n\r\n").await.unwrap();
                }
            }
        });
        let idle = idle();
        let (mut sender, channel) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        sender
            .send_data(Bytes::from_static(b"first"))
            .await
            .unwrap();
        let response = post_within_3s(
            &addr,
            &idle,
            "/echo",
            channel.boxed(),
            "the head comes before the upload ends",
        )
        .await
        .unwrap();
        let mut body = response.into_body();
        let mut echoed = Vec::new();
        for piece in ["first", "second", "third"] {
            if piece != "first" {
                sender.send_data(Bytes::from(piece)).await.unwrap();
            }
            while !String::from_utf8_lossy(&echoed).contains(piece) {
                let frame = tokio::time::timeout(Duration::from_secs(3), body.frame())
                    .await
                    .unwrap_or_else(|_| panic!("no echo of {piece}"))
                    .unwrap()
                    .unwrap();
                echoed.extend_from_slice(&frame.into_data().unwrap());
            }
        }
        drop(sender);
        let rest = tokio::time::timeout(Duration::from_secs(3), body.collect())
            .await
            .expect("the response ends after the upload")
            .unwrap()
            .to_bytes();
        echoed.extend_from_slice(&rest);
        let text = String::from_utf8_lossy(&echoed);
        for piece in ["first", "second", "third"] {
            assert!(text.contains(piece), "{piece} echoed: {text:?}");
        }
        assert!(
            text.ends_with("0\r\n\r\n"),
            "the upload's last chunk came back: {text:?}"
        );
    }

    #[tokio::test]
    async fn a_server_that_takes_no_more_of_an_upload_is_given_up_on() {
        // The server reads the head only; the first time it says nothing, the second time it
        // sends a response head. Either way the upload cannot go on.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            for answer in [
                &b""[..],
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            ] {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut head = [0u8; 1024];
                let _ = socket.read(&mut head).await.unwrap();
                socket.write_all(answer).await.unwrap();
                held.push(socket);
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let big_upload = || {
            let chunks =
                (0..1024).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'x'; 65536]))));
            http_body_util::StreamBody::new(futures_util::stream::iter(chunks)).boxed()
        };
        let idle = idle();
        let started = Instant::now();
        let error = post_within_3s(
            &addr,
            &idle,
            "/up",
            big_upload(),
            "a server that takes nothing is given up on",
        )
        .await
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("took none of the request for 300ms"),
            "{error}"
        );
        assert!(super::is_timeout(&error), "answered 504");
        assert!(started.elapsed() < Duration::from_secs(3));
        let response = send(
            target(&addr, &idle),
            request(Method::POST, "/up", big_upload()),
        )
        .await
        .unwrap();
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(3), response.into_body().collect())
            .await
            .expect("the stalled exchange ends");
        let error = outcome.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("anything for 300ms"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
