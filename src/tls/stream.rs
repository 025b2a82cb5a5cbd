//! Server-side TLS streams on rustls' unbuffered API, so the buffers are ours. rustls'
//! buffered connection keeps a 4 KiB receive buffer for each connection's whole life; here
//! ciphertext is read into one scratch buffer per thread and decrypted from there, and a
//! connection keeps bytes only while they are in flight: part of a record, plaintext its
//! reader has not taken yet, or TLS bytes the socket has not accepted yet. An idle connection
//! (ten thousand parked WebSockets) holds its keys and protocol state, and nothing else.
//!
//! The ClientHello is read and parsed here first (server name, ALPN, cipher suites), so the
//! caller can choose a configuration before the handshake, as `LazyConfigAcceptor` allowed.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::buffers::{
    keep_partial, read_after_partial, Outgoing, PlaintextQueue, MAX_RECORD, MAX_WRITE_CHUNK,
    READ_SCRATCH,
};
use super::established::EstablishedTls;

/// Queued TLS bytes up to this size are sent together with the next write rather than on
/// their own (a TLS 1.3 server's two session tickets take about 500 bytes).
const RIDE_ALONG: usize = 4096;

/// A ClientHello may span records; more than this is refused (rustls' own limit is 64 KiB).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

thread_local! {
    /// Slices of a vectored write, joined.
    static GATHER_SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_WRITE_CHUNK].into_boxed_slice());
    /// Records as encrypted, before the socket takes them.
    static WRITE_SCRATCH: RefCell<Box<[u8]>> =
        RefCell::new(vec![0; MAX_WRITE_CHUNK + 8 * 64].into_boxed_slice());
}

/// What the caller needs from a ClientHello to choose a configuration.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientHelloSummary {
    /// The SNI host name, lower-cased.
    pub server_name: Option<String>,
    pub alpn: Vec<Vec<u8>>,
    pub cipher_suites: Vec<rustls::CipherSuite>,
    /// The highest version offered: supported_versions' highest if present (RFC 8446 §4.2.1
    /// says to ignore legacy_version then), else legacy_version.
    pub highest_version: u16,
}

/// TLS_FALLBACK_SCSV (RFC 7507): a client retrying with a lower version than it could speak.
const TLS_FALLBACK_SCSV: u16 = 0x5600;
const TLS13: u16 = 0x0304;

impl ClientHelloSummary {
    /// Whether this is a downgraded retry the server must refuse (RFC 7507 §3): the hello
    /// carries TLS_FALLBACK_SCSV and offers less than the best `config` speaks. rustls leaves
    /// this to the TLS 1.3 downgrade sentinel, which only clients that know 1.3 check.
    pub fn is_inappropriate_fallback(&self, config: &ServerConfig) -> bool {
        let scsv = self
            .cipher_suites
            .iter()
            .any(|s| u16::from(*s) == TLS_FALLBACK_SCSV);
        let server_highest = if config
            .crypto_provider()
            .cipher_suites
            .iter()
            .any(|s| s.version().version == rustls::ProtocolVersion::TLSv1_3)
        {
            TLS13
        } else {
            0x0303
        };
        scsv && self.highest_version < server_highest
    }
}

/// Sends a fatal `inappropriate_fallback` alert (RFC 7507 §2, description 86) and closes,
/// best effort. The record carries the client's version, as far as TLS 1.2, since no version
/// was agreed.
pub async fn refuse_fallback(tcp: &mut TcpStream, hello: &ClientHelloSummary) {
    use tokio::io::AsyncWriteExt;
    let [major, minor] = hello.highest_version.clamp(0x0301, 0x0303).to_be_bytes();
    let _ = tcp.write_all(&[21, major, minor, 0, 2, 2, 86]).await;
    let _ = tcp.shutdown().await;
}

/// Reads the first handshake message from `tcp` into `received` (every byte read stays there,
/// to be handed to rustls) and summarises it. `None` when it is not a ClientHello that parses:
/// rustls then sees the same bytes and refuses them with the proper alert.
pub async fn read_client_hello(
    tcp: &mut TcpStream,
    received: &mut Vec<u8>,
) -> io::Result<Option<ClientHelloSummary>> {
    use tokio::io::AsyncReadExt;
    // Keeps its place across reads, so a hello trickled in tiny records costs linear work.
    let mut reader = HelloReader::default();
    loop {
        match reader.advance(received) {
            HelloProgress::Complete(message) => return Ok(parse_client_hello(&message)),
            // A request line may come in pieces (`OPTIO`, then `NS * …`): wait for the
            // method's end before deciding, so the answer is the plain-HTTP one, not an alert.
            HelloProgress::NotAHello if !may_become_plain_http(received) => return Ok(None),
            HelloProgress::NotAHello | HelloProgress::Incomplete => {}
        }
        if received.len() >= MAX_CLIENT_HELLO {
            return Ok(None);
        }
        let mut chunk = [0u8; 2048];
        let read = tcp.read(&mut chunk).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the ClientHello was complete",
            ));
        }
        received.extend_from_slice(&chunk[..read]);
    }
}

/// The longest method token taken for plain HTTP (`UNCHECKOUT`, WebDAV's longest).
const LONGEST_METHOD: usize = 10;

/// Whether the first bytes on the TLS port are a plain-HTTP request line (`GET /…`): a
/// method token of capital letters and a space. TLS records start with a byte below 0x20.
pub fn is_plain_http(received: &[u8]) -> bool {
    let method = received
        .iter()
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    (3..=LONGEST_METHOD).contains(&method) && received.get(method) == Some(&b' ')
}

/// Whether the bytes so far are the start of a method token that has not ended yet: more must
/// be read before [`is_plain_http`] can tell. Up to the longest method it accepts and the
/// space after it, so a client cannot make this wait on more than a few bytes (and the
/// handshake timeout bounds it).
fn may_become_plain_http(received: &[u8]) -> bool {
    received.len() <= LONGEST_METHOD && received.iter().all(u8::is_ascii_uppercase)
}

/// The answer to a plain-HTTP request on the TLS port, as nginx (497) and Go servers give one,
/// instead of a TLS alert the client's HTTP parser cannot read. Its policy is
/// `crate::http::BUILTIN_CSP`, written out (a unit test keeps the two equal).
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-security-policy: default-src 'none'; frame-ancestors 'none'\r\n\
content-length: 80\r\n\
connection: close\r\n\r\n\
This port speaks HTTPS and was sent a plain HTTP request: use https:// instead.\n";

/// Answers a plain-HTTP request with [`PLAIN_HTTP_ANSWER`] and ends the connection, best
/// effort. The rest of the request is read and dropped for a moment first (a lingering close,
/// as nginx does): closing with unread bytes would reset the answer away.
pub async fn answer_plain_http(tcp: &mut TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.write_all(PLAIN_HTTP_ANSWER).await;
    let _ = tcp.shutdown().await;
    let mut rest = [0u8; 4096];
    let linger = async {
        // At most 1 MiB, for at most a second.
        for _ in 0..256 {
            if matches!(tcp.read(&mut rest).await, Ok(0) | Err(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), linger).await;
}

enum HelloProgress {
    Complete(Vec<u8>),
    Incomplete,
    NotAHello,
}

/// Joins the handshake records at the start of the received bytes until the first handshake
/// message is whole. It keeps its place between calls: each call walks only the records that
/// became whole since the last one, so a hello sent one byte per record (six bytes on the wire
/// for each) costs work in proportion to its length, not to its square.
#[derive(Default)]
struct HelloReader {
    /// Where the next record header starts in the received bytes.
    at: usize,
    /// The fragments of the whole records so far, joined.
    handshake: Vec<u8>,
    /// How many bytes must have arrived before the next step can go on (the end of the next
    /// record header, or of the record it announced): shorter input is not looked at again.
    needed: usize,
    /// A verdict already given stands, whatever comes after.
    not_a_hello: bool,
    /// Bytes walked so far: the work done, which a test holds to linear.
    examined: usize,
}

impl HelloReader {
    /// Takes `bytes`, everything received so far (the bytes of an earlier call and more), and
    /// returns the first handshake message's body once it is whole.
    fn advance(&mut self, bytes: &[u8]) -> HelloProgress {
        if self.not_a_hello {
            return HelloProgress::NotAHello;
        }
        if bytes.len() < self.needed {
            return HelloProgress::Incomplete;
        }
        while let Some(header) = bytes.get(self.at..self.at + 5) {
            self.examined += 5;
            if header[0] != 22 {
                self.not_a_hello = true;
                break;
            }
            let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
            let Some(fragment) = bytes.get(self.at + 5..self.at + 5 + length) else {
                self.needed = self.at + 5 + length;
                return HelloProgress::Incomplete;
            };
            self.examined += length;
            self.handshake.extend_from_slice(fragment);
            self.at += 5 + length;
            if self.handshake.len() >= 4 {
                if self.handshake[0] != 1 {
                    self.not_a_hello = true;
                    break;
                }
                let body = (usize::from(self.handshake[1]) << 16)
                    | (usize::from(self.handshake[2]) << 8)
                    | usize::from(self.handshake[3]);
                if self.handshake.len() >= 4 + body {
                    let mut message = std::mem::take(&mut self.handshake);
                    message.truncate(4 + body);
                    message.drain(..4);
                    return HelloProgress::Complete(message);
                }
            }
        }
        if self.not_a_hello {
            return HelloProgress::NotAHello;
        }
        self.needed = self.at + 5;
        HelloProgress::Incomplete
    }
}

/// [`HelloReader::advance`] over `bytes` at once.
#[cfg(test)]
fn client_hello_message(bytes: &[u8]) -> HelloProgress {
    HelloReader::default().advance(bytes)
}

/// A cursor over a ClientHello body (RFC 8446 §4.1.2).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn parse_client_hello(body: &[u8]) -> Option<ClientHelloSummary> {
    let mut hello = Reader(body);
    let legacy_version = hello.take(2)?;
    hello.take(32)?; // random
    hello.vec8()?; // legacy_session_id
    let suites = hello.vec16()?;
    hello.vec8()?; // legacy_compression_methods
    let mut summary = ClientHelloSummary {
        cipher_suites: suites
            .chunks_exact(2)
            .map(|s| rustls::CipherSuite::from(u16::from_be_bytes([s[0], s[1]])))
            .collect(),
        highest_version: u16::from_be_bytes([legacy_version[0], legacy_version[1]]),
        ..ClientHelloSummary::default()
    };
    let Some(extensions) = hello.vec16() else {
        return Some(summary); // a hello without extensions (SSL 3.0 style)
    };
    let mut extensions = Reader(extensions);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = Reader(extensions.vec16()?);
        match kind {
            0 => {
                // server_name: a list of (type, name); type 0 is a host name.
                let mut names = Reader(data.vec16()?);
                while !names.0.is_empty() {
                    let name_type = names.u8()?;
                    if name_type != 0 {
                        // Another type's encoding is unknown, so the list cannot be read on;
                        // rustls stops there too, and the two must agree on the name.
                        break;
                    }
                    let name = names.vec16()?;
                    summary.server_name = std::str::from_utf8(name)
                        .ok()
                        .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
                }
            }
            16 => {
                let mut protocols = Reader(data.vec16()?);
                while !protocols.0.is_empty() {
                    summary.alpn.push(protocols.vec8()?.to_vec());
                }
            }
            43 => {
                // supported_versions; GREASE values (0x?A?A, RFC 8701) mean nothing.
                let mut versions = Reader(data.vec8()?);
                let mut highest = 0;
                while !versions.0.is_empty() {
                    let version = versions.take(2)?;
                    let version = u16::from_be_bytes([version[0], version[1]]);
                    if version & 0x0f0f != 0x0a0a {
                        highest = highest.max(version);
                    }
                }
                summary.highest_version = highest;
            }
            _ => {}
        }
    }
    Some(summary)
}

/// A TLS connection accepted on a TCP socket.
pub struct TlsServerStream {
    tcp: TcpStream,
    session: Session,
    /// The start of a record whose end has not arrived; empty (no allocation) otherwise.
    partial: Vec<u8>,
    /// The peer sent close_notify or closed its side: reads give end of file.
    read_closed: bool,
    /// Our close_notify is queued.
    close_sent: bool,
    /// The peer closed its side of the TCP connection.
    tcp_eof: bool,
    /// `outgoing` holds only TLS 1.3 session tickets, which the client is not waiting for.
    tickets_only: bool,
    /// Application data has come in since the handshake.
    data_received: bool,
    /// Records were processed since our last write: rustls may hold state a hand-off would
    /// lose (a KeyUpdate answer it queued, a handshake fragment).
    read_since_write: bool,
    server_name: Option<String>,
}

/// rustls' state plus the bytes waiting on either side of it.
struct Session {
    connection: UnbufferedServerConnection,
    plaintext: PlaintextQueue,
    outgoing: Outgoing,
    /// rustls failed: it is not called again (its deframer's offsets may point past any
    /// buffer we still hold), and every later call gives this error.
    failed: Option<rustls::Error>,
}

/// Where rustls stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// It needs more bytes from the peer (mid-handshake, or a record incomplete).
    NeedsData,
    /// Everything received is processed and application data may be sent.
    Writable,
    /// The peer sent close_notify.
    PeerClosed,
    /// Both sides sent close_notify.
    Closed,
}

/// What to write once rustls lets us.
enum Write<'a> {
    Nothing,
    /// Encrypt `plaintext` into `into`; how much of `into` was used comes back.
    Data {
        plaintext: &'a [u8],
        into: &'a mut [u8],
    },
    CloseNotify,
}

struct Processed {
    step: Step,
    /// Bytes of the input fully processed, to be dropped from its front.
    consumed: usize,
    /// Bytes written to `Write::Data::into` (0 if rustls could not write yet).
    encrypted: Option<usize>,
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl Session {
    /// Runs rustls over `incoming` until it needs more bytes or may send: decrypted bytes go
    /// to `reader` as far as it has room, the rest to `self.plaintext`; handshake and alert
    /// bytes to `self.outgoing`; then `write` is carried out if rustls allows writing.
    fn process(
        &mut self,
        incoming: &mut [u8],
        reader: Option<&mut ReadBuf<'_>>,
        write: Write<'_>,
    ) -> Result<Processed, rustls::Error> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let processed = self.process_records(incoming, reader, write);
        if let Err(error) = &processed {
            self.failed = Some(error.clone());
        }
        processed
    }

    fn process_records(
        &mut self,
        incoming: &mut [u8],
        mut reader: Option<&mut ReadBuf<'_>>,
        mut write: Write<'_>,
    ) -> Result<Processed, rustls::Error> {
        let mut consumed = 0;
        let mut encrypted = None;
        loop {
            let UnbufferedStatus { discard, state } = self
                .connection
                .process_tls_records(&mut incoming[consumed..]);
            let state = match state {
                Ok(state) => state,
                Err(error) => {
                    self.queue_alert(&mut incoming[consumed + discard..]);
                    return Err(error);
                }
            };
            let step = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    let mut failure = None;
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => self
                                .plaintext
                                .deliver(record.payload, reader.as_deref_mut()),
                            Err(error) => {
                                failure = Some(error);
                                break;
                            }
                        }
                    }
                    if let Some(error) = failure {
                        // A record that does not decrypt: the peer gets rustls' alert.
                        self.queue_alert(&mut incoming[consumed + discard..]);
                        return Err(error);
                    }
                    None
                }
                ConnectionState::ReadEarlyData(mut early) => {
                    // 0-RTT is not enabled; nothing should arrive here, and nothing is kept.
                    while let Some(record) = early.next_record() {
                        record?;
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut self.outgoing.bytes, |space| encode.encode(space))?;
                    None
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // The bytes are in `outgoing`, which is written before anything later.
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Step::NeedsData),
                ConnectionState::PeerClosed => Some(Step::PeerClosed),
                ConnectionState::Closed => Some(Step::Closed),
                ConnectionState::WriteTraffic(mut traffic) => {
                    match std::mem::replace(&mut write, Write::Nothing) {
                        Write::Nothing => {}
                        Write::Data { plaintext, into } => {
                            encrypted = Some(match traffic.encrypt(plaintext, into) {
                                Ok(written) => written,
                                Err(EncryptError::InsufficientSize(needed)) => {
                                    // Larger than the scratch buffer: straight to `outgoing`.
                                    let start = self.outgoing.bytes.len();
                                    self.outgoing.bytes.resize(start + needed.required_size, 0);
                                    let written = traffic
                                        .encrypt(plaintext, &mut self.outgoing.bytes[start..])
                                        .map_err(|_| rustls::Error::EncryptError)?;
                                    self.outgoing.bytes.truncate(start + written);
                                    0
                                }
                                Err(EncryptError::EncryptExhausted) => {
                                    return Err(rustls::Error::EncryptError)
                                }
                            });
                        }
                        Write::CloseNotify => {
                            let start = self.outgoing.bytes.len();
                            self.outgoing.bytes.resize(start + 64, 0);
                            let written = traffic
                                .queue_close_notify(&mut self.outgoing.bytes[start..])
                                .map_err(|_| rustls::Error::EncryptError)?;
                            self.outgoing.bytes.truncate(start + written);
                            encrypted = Some(0);
                        }
                    }
                    Some(Step::Writable)
                }
                _ => Some(Step::NeedsData),
            };
            consumed += discard;
            if let Some(step) = step {
                return Ok(Processed {
                    step,
                    consumed,
                    encrypted,
                });
            }
        }
    }

    /// After an error rustls queues an alert for the peer; it comes out as TLS data to encode.
    /// One call only: rustls hands out queued data before it reads input, but a second call
    /// would read the failed input again (sending a second fatal alert, a debug assertion in
    /// rustls), and with a buffer other than `rest` (the input it has not discarded) its
    /// handshake deframer's offsets point out of bounds. Both were found by
    /// `fuzz_records_mutated_are_refused_or_intact`.
    fn queue_alert(&mut self, rest: &mut [u8]) {
        let status = self.connection.process_tls_records(rest);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
            // Best effort: the connection ends with the error either way.
            let _ = encode_into(&mut self.outgoing.bytes, |space| encode.encode(space));
        }
    }
}

/// Appends what `encode` writes to `outgoing`, growing it as rustls asks.
fn encode_into(
    outgoing: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    let start = outgoing.len();
    let mut room = 4096;
    loop {
        outgoing.resize(start + room, 0);
        match encode(&mut outgoing[start..]) {
            Ok(written) => {
                outgoing.truncate(start + written);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                room = required_size;
            }
            Err(EncodeError::AlreadyEncoded) => {
                outgoing.truncate(start);
                return Ok(());
            }
        }
    }
}

impl TlsServerStream {
    /// Completes the handshake on `tcp` with `config`; `received` holds the bytes read so
    /// far (the ClientHello).
    pub async fn accept(
        tcp: TcpStream,
        received: Vec<u8>,
        config: Arc<ServerConfig>,
        server_name: Option<String>,
    ) -> io::Result<TlsServerStream> {
        let connection = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut stream = TlsServerStream {
            tcp,
            session: Session {
                connection,
                plaintext: PlaintextQueue::default(),
                outgoing: Outgoing::default(),
                failed: None,
            },
            partial: received,
            read_closed: false,
            close_sent: false,
            tcp_eof: false,
            tickets_only: false,
            data_received: false,
            read_since_write: false,
            server_name,
        };
        std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let processed = self
                .session
                .process(&mut self.partial, None, Write::Nothing);
            let processed = match processed {
                Ok(processed) => processed,
                Err(error) => {
                    // Best effort: the alert tells the client why.
                    let _ = self.session.outgoing.poll_send(cx, &mut self.tcp);
                    return Poll::Ready(Err(tls_error(error)));
                }
            };
            self.partial.drain(..processed.consumed);
            let done = !self.session.connection.is_handshaking();
            // TLS 1.3 session tickets, written once the handshake is done, wait for the first
            // response and leave with it in one write: one system call and one wake-up of the
            // client fewer per connection. Anything else (TLS 1.2's final flight) goes now.
            let tls13 = self.session.connection.protocol_version()
                == Some(rustls::ProtocolVersion::TLSv1_3);
            if !(done && tls13) {
                ready!(self.session.outgoing.poll_send(cx, &mut self.tcp))?;
            }
            if done {
                self.tickets_only = self.session.outgoing.queued() > 0;
                if self.partial.is_empty() {
                    self.partial = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            match processed.step {
                Step::NeedsData | Step::Writable => {}
                Step::PeerClosed | Step::Closed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection during the handshake",
                    )))
                }
            }
            if self.partial.len() > MAX_CLIENT_HELLO + MAX_RECORD {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "handshake messages too large",
                )));
            }
            let start = self.partial.len();
            self.partial.resize(start + 4096, 0);
            let mut space = ReadBuf::new(&mut self.partial[start..]);
            let read = Pin::new(&mut self.tcp).poll_read(cx, &mut space);
            let n = space.filled().len();
            self.partial.truncate(start + n);
            ready!(read)?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the handshake",
                )));
            }
        }
    }

    /// The negotiated session: protocol version, suite, ALPN protocol.
    pub fn connection(&self) -> &UnbufferedServerConnection {
        &self.session.connection
    }

    /// The server name the client asked for (SNI), lower-cased.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// Hands a TLS 1.3 connection at rest over to [`EstablishedTls`] (its own record layer,
    /// keys expanded only while records flow), with whatever is in flight: the start of a
    /// record, plaintext not read yet, bytes not written yet. `Err(self)`, unchanged, when it
    /// cannot take over: TLS 1.2, a suite it does not run, a connection closing or failed, or
    /// records read since our last write (rustls may have queued a KeyUpdate answer, which the
    /// hand-off would drop) (boxed, as the caller keeps it). `Ok(Err(_))` when rustls refused the hand-off, after
    /// which the connection is gone.
    pub fn into_established(mut self) -> Result<io::Result<EstablishedTls>, Box<Self>> {
        // TLS data rustls still holds (a KeyUpdate answer our last write moved out) comes out
        // into `outgoing` first, to be sent before any record under the extracted keys.
        if self.session.failed.is_none() {
            if let Ok(processed) = self
                .session
                .process(&mut self.partial, None, Write::Nothing)
            {
                if processed.consumed > 0 {
                    self.read_since_write = true;
                }
                self.partial.drain(..processed.consumed);
            }
        }
        let connection = &self.session.connection;
        let eligible = connection.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
            && !connection.is_handshaking()
            && connection
                .negotiated_cipher_suite()
                .is_some_and(|suite| super::established::supports(suite.suite()))
            && self.session.failed.is_none()
            && !self.read_since_write
            && !(self.read_closed || self.close_sent || self.tcp_eof);
        if !eligible {
            return Err(Box::new(self));
        }
        let Session {
            connection,
            plaintext,
            outgoing,
            ..
        } = self.session;
        Ok(connection
            .dangerous_into_kernel_connection()
            .and_then(|(secrets, kernel)| {
                EstablishedTls::new(self.tcp, secrets, kernel, self.partial, plaintext, outgoing)
            })
            .map_err(tls_error))
    }
}

impl AsyncRead for TlsServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        reader: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.session.plaintext.take(reader) {
                this.data_received = true;
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            let before = reader.filled().len();
            let outcome = READ_SCRATCH.with_borrow_mut(|scratch| {
                let carried = this.partial.len();
                let read = ready!(read_after_partial(
                    cx,
                    &mut this.tcp,
                    &this.partial,
                    scratch
                ))?;
                if read == 0 {
                    // The peer closed without close_notify: end of file all the same.
                    this.read_closed = true;
                    this.tcp_eof = true;
                    return Poll::Ready(Ok(()));
                }
                let received = &mut scratch[..carried + read];
                this.read_since_write = true;
                let queued = this.session.outgoing.queued();
                let processed = this
                    .session
                    .process(received, Some(reader), Write::Nothing)
                    .map_err(tls_error)?;
                if this.session.outgoing.queued() != queued {
                    // Bytes rustls queued while reading go out with the next flush.
                    this.tickets_only = false;
                }
                keep_partial(&mut this.partial, &received[processed.consumed..]);
                if matches!(processed.step, Step::PeerClosed | Step::Closed) {
                    this.read_closed = true;
                }
                Poll::Ready(Ok(()))
            });
            match outcome {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => {
                    let _ = this.session.outgoing.poll_send(cx, &mut this.tcp);
                    return Poll::Ready(Err(error));
                }
                Poll::Pending => return Poll::Pending,
            }
            if reader.filled().len() > before {
                this.data_received = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl TlsServerStream {
    /// Encrypts `chunk` as one run of records and sends what the socket takes.
    fn poll_write_plaintext(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Whatever is queued now goes out with these records, or at the next flush should
        // rustls fail (its alert is queued then).
        self.tickets_only = false;
        self.read_since_write = false;
        WRITE_SCRATCH.with_borrow_mut(|scratch| {
            let processed = self
                .session
                .process(
                    &mut self.partial,
                    None,
                    Write::Data {
                        plaintext: chunk,
                        into: scratch,
                    },
                )
                .map_err(tls_error)?;
            self.partial.drain(..processed.consumed);
            let Some(encrypted) = processed.encrypted else {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "TLS connection cannot send application data",
                )));
            };
            // Bytes rustls queued meanwhile (an alert, a key update) go before these.
            let mut sent = 0;
            if self.session.outgoing.bytes.is_empty() {
                while sent < encrypted {
                    match Pin::new(&mut self.tcp).poll_write(cx, &scratch[sent..encrypted]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                        }
                        Poll::Ready(Ok(n)) => sent += n,
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                        Poll::Pending => break,
                    }
                }
            }
            self.session
                .outgoing
                .bytes
                .extend_from_slice(&scratch[sent..encrypted]);
            if !self.session.outgoing.bytes.is_empty() {
                // Whatever the socket would not take waits; a failure shows on the next call.
                let _ = self.session.outgoing.poll_send(cx, &mut self.tcp);
            }
            Poll::Ready(Ok(chunk.len()))
        })
    }

    /// Ready when writing is open and the socket has taken earlier bytes, all but a few
    /// (deferred tickets, key-update answers) that can leave with the next records.
    fn poll_writable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.session.outgoing.queued() > RIDE_ALONG {
            // Backpressure: earlier bytes go first.
            ready!(self.session.outgoing.poll_send(cx, &mut self.tcp))?;
        }
        if self.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TlsServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_writable(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.poll_write_plaintext(cx, &data[..data.len().min(MAX_WRITE_CHUNK)])
    }

    /// Gathers the slices into one plaintext, so a frame header and its payload (HTTP/2,
    /// hyper's queued writes) become one record and one system call, not one each.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_writable(cx))?;
        let mut nonempty = slices.iter().filter(|s| !s.is_empty());
        match (nonempty.next(), nonempty.next()) {
            (None, _) => return Poll::Ready(Ok(0)),
            (Some(only), None) => {
                return this.poll_write_plaintext(cx, &only[..only.len().min(MAX_WRITE_CHUNK)])
            }
            _ => {}
        }
        GATHER_SCRATCH.with_borrow_mut(|gathered| {
            let mut filled = 0;
            for slice in slices {
                let n = slice.len().min(MAX_WRITE_CHUNK - filled);
                gathered[filled..filled + n].copy_from_slice(&slice[..n]);
                filled += n;
                if filled == MAX_WRITE_CHUNK {
                    break;
                }
            }
            this.poll_write_plaintext(cx, &gathered[..filled])
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Tickets wait to leave with the response once the request is in (hyper flushes after
        // reading it too). Before that they go now: a client under Nagle's algorithm holds its
        // request back until its Finished is acknowledged, and they carry the ACK.
        if !(this.tickets_only && this.data_received) {
            ready!(this.session.outgoing.poll_send(cx, &mut this.tcp))?;
        }
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A peer that has closed its side gets no close_notify: nothing would read it, and
        // a closed socket answers it with a reset.
        if !this.close_sent && !this.tcp_eof {
            this.close_sent = true;
            if let Err(error) = this
                .session
                .process(&mut this.partial, None, Write::CloseNotify)
            {
                tracing::debug!(%error, "close_notify not sent");
            }
        }
        ready!(this.session.outgoing.poll_send(cx, &mut this.tcp))?;
        if this.tcp_eof {
            // The peer is gone; closing the socket is all that is left, and dropping does it.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "stream_fuzz.rs"]
pub(super) mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls' client writes it, captured from a real handshake.
    fn real_client_hello(server_name: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).expect("a name");
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).expect("a client");
        let mut hello = Vec::new();
        client.write_tls(&mut hello).expect("the hello");
        hello
    }

    #[test]
    fn client_hello_names_alpn_and_suites_are_read() {
        let hello = real_client_hello("App.Example.com", &[b"h2", b"http/1.1"]);
        let HelloProgress::Complete(message) = client_hello_message(&hello) else {
            panic!("a whole hello");
        };
        let summary = parse_client_hello(&message).expect("it parses");
        assert_eq!(summary.server_name.as_deref(), Some("app.example.com"));
        assert_eq!(summary.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(summary
            .cipher_suites
            .contains(&rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
        // legacy_version says 1.2; supported_versions offers 1.3.
        assert_eq!(summary.highest_version, 0x0304);
    }

    #[test]
    fn a_hello_split_over_records_and_reads_is_joined() {
        let hello = real_client_hello("split.test", &[]);
        // The same handshake message cut into two records of its own.
        let message = &hello[5..];
        let (first, second) = message.split_at(100);
        let mut split = Vec::new();
        for fragment in [first, second] {
            split.extend_from_slice(&[22, 3, 1]);
            split.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
            split.extend_from_slice(fragment);
        }
        for cut in [3, 5, 50, 104, 105, 200, split.len() - 1] {
            assert!(
                matches!(
                    client_hello_message(&split[..cut]),
                    HelloProgress::Incomplete
                ),
                "cut at {cut}"
            );
        }
        let HelloProgress::Complete(joined) = client_hello_message(&split) else {
            panic!("a whole hello");
        };
        assert_eq!(
            parse_client_hello(&joined).and_then(|s| s.server_name),
            Some("split.test".to_owned())
        );
    }

    #[test]
    fn plain_http_and_garbage_are_not_hellos() {
        assert!(matches!(
            client_hello_message(b"GET / HTTP/1.1\r\n\r\n"),
            HelloProgress::NotAHello
        ));
        assert!(is_plain_http(b"GET / HTTP/1.1\r\n"));
        assert!(is_plain_http(b"OPTIONS * HTTP/1.1\r\n"));
        assert!(!is_plain_http(&[22, 3, 1, 0, 200]));
        assert!(!is_plain_http(b"get / HTTP/1.1\r\n"));
        assert!(!is_plain_http(b"GE"));
        assert!(may_become_plain_http(b"GE"));
        assert!(may_become_plain_http(b"OPTIONS"));
        assert!(!may_become_plain_http(b"GET "));
        assert!(!may_become_plain_http(b"SSH-"));
        assert!(may_become_plain_http(b"UNCHECKOUT"));
        assert!(is_plain_http(b"UNCHECKOUT / HTTP/1.1\r\n"));
        assert!(!may_become_plain_http(b"ABCDEFGHIJK"));
        assert!(!may_become_plain_http(&[22]));
        assert!(!is_plain_http(b"SSH-2.0-OpenSSH_9.2\r\n"));
        let answer = std::str::from_utf8(PLAIN_HTTP_ANSWER).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{answer}"
        );
        let csp = format!("content-security-policy: {}\r\n", crate::http::BUILTIN_CSP);
        assert!(answer.contains(&csp), "{answer}");
        // A handshake record that is not a ClientHello (a ServerHello, type 2).
        assert!(matches!(
            client_hello_message(&[22, 3, 3, 0, 4, 2, 0, 0, 0]),
            HelloProgress::NotAHello
        ));
        // Truncated extension lists parse to None rather than panicking.
        let hello = real_client_hello("x.test", &[b"h2"]);
        let HelloProgress::Complete(message) = client_hello_message(&hello) else {
            panic!("a whole hello");
        };
        for cut in 0..message.len() {
            let _ = parse_client_hello(&message[..cut]);
        }
    }

    /// A hello sent one byte per record (a 5-byte header for each byte) and read one byte at
    /// a time: the reader walks each byte a bounded number of times, where re-parsing from the
    /// start cost 0.25 s for a 1.5 KB hello and 15 s for the 64 KiB a client may send.
    #[test]
    fn a_hello_trickled_in_one_byte_records_costs_linear_work() {
        let hello = real_client_hello("trickle.test", &[b"h2"]);
        let mut trickled = Vec::new();
        for byte in &hello[5..] {
            trickled.extend_from_slice(&[22, 3, 1, 0, 1, *byte]);
        }
        let mut reader = HelloReader::default();
        let mut summary = None;
        for end in 1..=trickled.len() {
            match reader.advance(&trickled[..end]) {
                HelloProgress::Complete(message) => {
                    assert_eq!(end, trickled.len(), "complete only at the last byte");
                    summary = parse_client_hello(&message);
                }
                HelloProgress::Incomplete => {}
                HelloProgress::NotAHello => panic!("refused at byte {end}"),
            }
        }
        assert_eq!(
            summary.and_then(|s| s.server_name).as_deref(),
            Some("trickle.test")
        );
        // Each header is read when it is whole and again when its byte arrives.
        assert!(
            reader.examined <= 2 * trickled.len(),
            "{} bytes examined for {}",
            reader.examined,
            trickled.len()
        );

        // The most a client may send this way, byte by byte: a hello that claims 64 KiB.
        let mut flood = vec![22, 3, 1, 0, 4, 1, 0, 0xff, 0xff];
        while flood.len() < MAX_CLIENT_HELLO {
            flood.extend_from_slice(&[22, 3, 1, 0, 1, 0]);
        }
        let started = std::time::Instant::now();
        let mut reader = HelloReader::default();
        for end in 1..=flood.len() {
            assert!(matches!(
                reader.advance(&flood[..end]),
                HelloProgress::Incomplete
            ));
        }
        assert!(reader.examined <= 2 * flood.len());
        // Generous for a loaded debug build: linear work takes milliseconds.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}
