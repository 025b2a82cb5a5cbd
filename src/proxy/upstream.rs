//! HTTP/1.1 exchanges with plain-HTTP upstream servers, driven by the client connection's own
//! task: the request is written and the response read and streamed back without a connection
//! task or a channel in between (nginx's model), and idle keep-alive connections wait per
//! server in a lock-free queue.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_queue::ArrayQueue;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::pool::{BoxError, ProxyBody};

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
    #[error(transparent)]
    H2c(#[from] hyper_util::client::legacy::Error),
}

impl UpstreamError {
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

struct IdleConnection {
    stream: TcpStream,
    since: Instant,
}

/// One server's idle keep-alive connections, oldest first.
pub struct IdleConnections {
    queue: Option<ArrayQueue<IdleConnection>>,
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
            queue: (max_idle > 0).then(|| ArrayQueue::new(max_idle)),
            timeout,
        }
    }

    pub fn len(&self) -> usize {
        self.queue.as_ref().map_or(0, ArrayQueue::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An idle connection still open and within its timeout, if any.
    fn take(&self) -> Option<TcpStream> {
        let queue = self.queue.as_ref()?;
        while let Some(idle) = queue.pop() {
            if idle.since.elapsed() < self.timeout && still_open(&idle.stream) {
                return Some(idle.stream);
            }
        }
        None
    }

    /// Parks a connection whose last response was read to its end; dropped when full.
    fn put(&self, stream: TcpStream) {
        if let Some(queue) = &self.queue {
            let _ = queue.push(IdleConnection {
                stream,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections past their timeout or closed by the server.
    pub fn sweep(&self) {
        let Some(queue) = &self.queue else { return };
        for _ in 0..queue.len() {
            let Some(idle) = queue.pop() else { break };
            if idle.since.elapsed() < self.timeout && still_open(&idle.stream) {
                let _ = queue.push(idle);
            }
        }
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

/// Where an exchange goes: the server's address and its idle connections.
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub idle: &'a Arc<IdleConnections>,
    pub connect_timeout: Duration,
}

async fn connect(target: &Target<'_>) -> Result<TcpStream, UpstreamError> {
    let host = target
        .host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(target.host);
    let stream = match tokio::time::timeout(
        target.connect_timeout,
        TcpStream::connect((host, target.port)),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(UpstreamError::Connect(error)),
        Err(_) => {
            return Err(UpstreamError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {:?}", target.connect_timeout),
            )))
        }
    };
    stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
    Ok(stream)
}

/// How the request body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RequestFraming {
    Empty,
    Length,
    Chunked,
}

/// The request line and headers, with `Host` first and framing headers that match the body.
fn encode_head(
    request: &Request<ProxyBody>,
    framing: RequestFraming,
    fallback_host: &str,
) -> Vec<u8> {
    let headers = request.headers();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let mut head = Vec::with_capacity(64 + path.len() + headers.len() * 48);
    head.extend_from_slice(request.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    match headers.get(header::HOST) {
        Some(host) => head.extend_from_slice(host.as_bytes()),
        None => head.extend_from_slice(fallback_host.as_bytes()),
    }
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        // The edge answers `Expect: 100-continue` itself and streams the body regardless.
        if name == header::HOST
            || name == header::EXPECT
            || (framing == RequestFraming::Chunked && name == header::CONTENT_LENGTH)
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        RequestFraming::Length | RequestFraming::Empty
            if !headers.contains_key(header::CONTENT_LENGTH) =>
        {
            let length = request.body().size_hint().exact().unwrap_or(0);
            if length > 0
                || matches!(
                    *request.method(),
                    Method::POST | Method::PUT | Method::PATCH
                )
            {
                head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes());
            }
        }
        _ => {}
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Sends `request` to the target over a kept-alive connection or a new one. A kept-alive
/// connection the server closed meanwhile is replaced once, when nothing but the head was sent.
pub async fn send(
    target: Target<'_>,
    request: Request<ProxyBody>,
) -> Result<hyper::Response<UpstreamBody>, UpstreamError> {
    let framing = if request.body().is_end_stream() {
        RequestFraming::Empty
    } else if request.body().size_hint().exact().is_some() {
        RequestFraming::Length
    } else {
        RequestFraming::Chunked
    };
    let head = encode_head(&request, framing, target.host);
    let head_only = *request.method() == Method::HEAD;
    // Sent again on a fresh connection only when the server cannot have acted on it.
    let resendable =
        framing == RequestFraming::Empty && super::forward::is_idempotent(request.method());
    let mut body = Some(request.into_body());
    let mut reused = target.idle.take();
    loop {
        let was_reused = reused.is_some();
        let mut stream = match reused.take() {
            Some(stream) => stream,
            None => connect(&target).await?,
        };
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let outcome = match framing {
            RequestFraming::Empty => match stream.write_all(&head).await {
                Ok(()) => read_head(&mut stream, &mut buf).await.map(|h| (h, true)),
                Err(error) => Err(UpstreamError::Send(error)),
            },
            RequestFraming::Length | RequestFraming::Chunked => {
                let body = body.take().unwrap_or_else(|| {
                    http_body_util::Empty::new()
                        .map_err(|never| match never {})
                        .boxed()
                });
                send_with_body(&mut stream, &head, body, framing, &mut buf).await
            }
        };
        let (head, request_sent) = match outcome {
            Ok(received) => received,
            Err(error) if was_reused && resendable && error.is_stale_connection() => {
                continue;
            }
            Err(error) => return Err(error),
        };
        return Ok(head.into_response(stream, buf, head_only, request_sent, target.idle.clone()));
    }
}

/// Writes the head and the body while watching for the response: a server may answer (413,
/// say) before the upload ends, and then the rest of the body is not sent.
async fn send_with_body(
    stream: &mut TcpStream,
    head: &[u8],
    mut body: ProxyBody,
    framing: RequestFraming,
    buf: &mut BytesMut,
) -> Result<(ResponseHead, bool), UpstreamError> {
    let (mut reader, mut writer) = stream.split();
    let sending = async {
        writer.write_all(head).await.map_err(UpstreamError::Send)?;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(UpstreamError::RequestBody)?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers are not forwarded
            };
            if data.is_empty() {
                continue;
            }
            if framing == RequestFraming::Chunked {
                let size = format!("{:x}\r\n", data.len());
                writer
                    .write_all(size.as_bytes())
                    .await
                    .map_err(UpstreamError::Send)?;
                writer.write_all(&data).await.map_err(UpstreamError::Send)?;
                writer
                    .write_all(b"\r\n")
                    .await
                    .map_err(UpstreamError::Send)?;
            } else {
                writer.write_all(&data).await.map_err(UpstreamError::Send)?;
            }
        }
        if framing == RequestFraming::Chunked {
            writer
                .write_all(b"0\r\n\r\n")
                .await
                .map_err(UpstreamError::Send)?;
        }
        Ok::<(), UpstreamError>(())
    };
    let receiving = read_head(&mut reader, buf);
    tokio::pin!(sending, receiving);
    let mut sent = false;
    loop {
        tokio::select! {
            biased;
            head = &mut receiving => return head.map(|head| (head, sent)),
            result = &mut sending, if !sent => {
                result?;
                sent = true;
            }
        }
    }
}

/// A parsed response head.
struct ResponseHead {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: ResponseFraming,
    keep_alive: bool,
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

/// Reads until a final (non-1xx) response head is complete; what follows stays in `buf`.
async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<ResponseHead, UpstreamError> {
    let mut received = false;
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse_head(buf)? {
                if head.status.is_informational() {
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(UpstreamError::Protocol("101 to a request without upgrade"));
                    }
                    continue; // 100 Continue, 103 Early Hints: the final answer follows
                }
                return Ok(head);
            }
            if buf.len() >= MAX_HEAD_BYTES {
                return Err(UpstreamError::Protocol("response head over 64 KiB"));
            }
        }
        buf.reserve(READ_CHUNK);
        let read = reader.read_buf(buf).await.map_err(UpstreamError::Receive)?;
        if read == 0 {
            return Err(if received {
                UpstreamError::Protocol("the connection closed inside the response head")
            } else {
                UpstreamError::ClosedEarly
            });
        }
        received = true;
    }
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
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = version == Version::HTTP_10;
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
            transfer_encoding = true;
            // Only the last coding decides: `chunked` must come last to frame the body.
            chunked = field
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for token in field.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                    close = false;
                }
            }
        }
        let value_start = field.value.as_ptr() as usize - start;
        fields.push((name, value_start, value_start + field.value.len()));
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
        // Transfer-Encoding beats Content-Length (RFC 9112 §6.3); both at once taints the
        // connection, so it is not reused.
        if content_length.is_some() {
            close = true;
        }
        if chunked {
            ResponseFraming::Chunked(ChunkState::Size)
        } else {
            ResponseFraming::UntilClose
        }
    } else {
        match content_length {
            Some(length) => ResponseFraming::Length(length),
            None => ResponseFraming::UntilClose,
        }
    };
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive: !close && framing != ResponseFraming::UntilClose,
    }))
}

impl ResponseHead {
    fn into_response(
        self,
        stream: TcpStream,
        buf: BytesMut,
        head_only: bool,
        request_sent: bool,
        idle: Arc<IdleConnections>,
    ) -> hyper::Response<UpstreamBody> {
        let framing = if head_only {
            ResponseFraming::Done
        } else {
            self.framing
        };
        let mut body = UpstreamBody {
            stream: Some(stream),
            buf,
            framing,
            reusable: self.keep_alive && request_sent,
            idle,
        };
        if body.framing == ResponseFraming::Length(0) {
            body.framing = ResponseFraming::Done;
        }
        if body.framing == ResponseFraming::Done {
            body.release();
        }
        let mut response = hyper::Response::new(body);
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
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
    idle: Arc<IdleConnections>,
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
}

impl UpstreamBody {
    /// The body ended: the connection is parked when it can carry another request.
    fn release(&mut self) {
        self.framing = ResponseFraming::Done;
        if let Some(stream) = self.stream.take() {
            if self.reusable && self.buf.is_empty() {
                self.idle.put(stream);
            }
        }
    }

    /// Reads more into `buf`; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        self.buf.reserve(want.clamp(1, READ_CHUNK * 4));
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
                let line = &self.buf[..end];
                let digits = line
                    .split(|b| *b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                if digits.is_empty()
                    || digits.len() > 15
                    || !digits.iter().all(u8::is_ascii_hexdigit)
                {
                    return Err(BodyError::Chunk("invalid chunk size"));
                }
                let size = digits.iter().fold(0u64, |n, d| {
                    n * 16 + u64::from((*d as char).to_digit(16).unwrap_or(0))
                });
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
                let Some(end) = self.line_end() else {
                    if seen + self.buf.len() > MAX_TRAILER_BYTES {
                        return Err(BodyError::Chunk("trailer section too large"));
                    }
                    return Ok(None);
                };
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
                        Err(error) => {
                            self.stream = None;
                            self.framing = ResponseFraming::Done;
                            return Poll::Ready(Some(Err(error)));
                        }
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
            match ready!(self.poll_fill(cx, want)) {
                Ok(0) => {
                    self.stream = None;
                    if self.framing == ResponseFraming::UntilClose {
                        self.framing = ResponseFraming::Done;
                        return Poll::Ready(None);
                    }
                    self.framing = ResponseFraming::Done;
                    return Poll::Ready(Some(Err(BodyError::Truncated)));
                }
                Ok(_) => {}
                Err(error) => {
                    self.stream = None;
                    self.framing = ResponseFraming::Done;
                    return Poll::Ready(Some(Err(BodyError::Io(error))));
                }
            }
        }
    }
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
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
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
        let (status, _, body) = get(&addr, &idle, Method::HEAD, "/head").await.unwrap();
        assert_eq!(
            (status, body.unwrap().len()),
            (StatusCode::OK, 0),
            "HEAD has no body"
        );
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
        let (_, _, body) = get(&addr, &idle, Method::GET, "/close-after")
            .await
            .unwrap();
        assert_eq!(body.unwrap(), "ok");
        assert_eq!(idle.len(), 0, "Connection: close is honoured");
        get(&addr, &idle, Method::GET, "/length")
            .await
            .unwrap()
            .2
            .unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_replaced() {
        let (addr, accepted) = backend(answers, false).await;
        let idle = idle();
        // The server closes after answering, without saying so (its keep-alive timeout).
        let (_, _, body) = get(&addr, &idle, Method::GET, "/silent-close")
            .await
            .unwrap();
        assert_eq!(body.unwrap(), "ok");
        assert_eq!(idle.len(), 1, "parked: nothing said it would close");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, _, body) = get(&addr, &idle, Method::GET, "/length").await.unwrap();
        assert_eq!(
            (status, body.unwrap()),
            (StatusCode::OK, Bytes::from_static(b"hello"))
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // The sweep drops closed connections without a request.
        let (_, _, body) = get(&addr, &idle, Method::GET, "/silent-close")
            .await
            .unwrap();
        assert_eq!(body.unwrap(), "ok");
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
        get(&addr, &idle, Method::GET, "/length")
            .await
            .unwrap()
            .2
            .unwrap();
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
        assert!(matches!(error, UpstreamError::ClosedEarly), "{error}");
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
    async fn bodies_without_length_go_chunked_and_an_early_answer_stops_the_upload() {
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
        let response = tokio::time::timeout(
            Duration::from_secs(3),
            send(
                target(&addr, &idle),
                request(Method::POST, "/up", channel.boxed()),
            ),
        )
        .await
        .expect("the early answer comes through while the upload is still open")
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
}
