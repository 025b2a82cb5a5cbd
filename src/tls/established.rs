//! A TLS 1.3 connection after its handshake, with its records protected here rather than by
//! rustls, for connections that stay open for hours and mostly wait (hub sessions).
//!
//! rustls' connection object is about 1.1 KB, and each of its two record keys is expanded
//! for the connection's whole life (about 600 B each, in aws-lc's heap). Here a connection
//! keeps the two traffic keys as rustls hands them over (`dangerous_into_kernel_connection`,
//! the hand-off meant for kernel TLS). A key is expanded only while records flow, and dropped
//! when the socket runs dry (reads) or the writes are flushed. Expanding costs about 0.2 µs.
//! rustls' `KernelConnection` stays for what only it can do: derive the next traffic secret
//! at a key update.
//!
//! The record layer is RFC 8446 §5:
//! - every record is `application_data` on the outside;
//! - the nonce is the IV XOR the record's sequence number (rustls' own [`Nonce`]);
//! - the additional data is the record header;
//! - the content type is the last non-zero byte of the plaintext.
//!
//! What a client may send after the handshake is application data, alerts and KeyUpdate
//! (§4.6.3); anything else ends the connection with the alert the RFC names. Our key is
//! updated before the suite's confidentiality limit (2^24 records for AES-GCM), and when
//! the client asks.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use aws_lc_rs::aead::{self, Aad, LessSafeKey, UnboundKey};
use rustls::crypto::cipher::{Iv, Nonce};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::buffers::{
    keep_partial, read_after_partial, Outgoing, PlaintextQueue, MAX_WRITE_CHUNK, READ_SCRATCH,
};

const HEADER: usize = 5;
const TAG: usize = 16;
/// RFC 8446 §5.1: at most 2^14 bytes of plaintext per record.
const MAX_PLAINTEXT: usize = 16 * 1024;
/// RFC 8446 §5.2: at most 2^14 + 256 bytes of ciphertext per record.
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;

const HANDSHAKE_KEY_UPDATE: u8 = 24;

/// Records in a row that carry no application data (KeyUpdates, user_canceled alerts, empty
/// records) before the client is cut off: each costs work and gives nothing (rustls and
/// BoringSSL allow 32 key updates, 4 warning alerts and 32 empty fragments).
const MAX_RECORDS_WITHOUT_DATA: u8 = 32;

const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_BAD_RECORD_MAC: u8 = 20;
const ALERT_RECORD_OVERFLOW: u8 = 22;
const ALERT_ILLEGAL_PARAMETER: u8 = 47;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_INTERNAL_ERROR: u8 = 80;
const ALERT_USER_CANCELED: u8 = 90;

thread_local! {
    /// Records as encrypted, before the socket takes them.
    static SEAL_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One direction's traffic key, as rustls handed it over, and its next sequence number.
struct RecordKey {
    secrets: ConnectionTrafficSecrets,
    seq: u64,
    /// The key expanded for aws-lc, while records flow.
    expanded: Option<LessSafeKey>,
}

impl RecordKey {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Self, rustls::Error> {
        parts(&secrets)?;
        Ok(Self {
            secrets,
            seq,
            expanded: None,
        })
    }

    /// The expanded key and the nonce for the next record; the sequence number moves on.
    fn next(&mut self) -> io::Result<(&LessSafeKey, aead::Nonce)> {
        let (algorithm, key, iv) = parts(&self.secrets).map_err(tls_error)?;
        let nonce = aead::Nonce::assume_unique_for_key(Nonce::new(iv, self.seq).0);
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| io::Error::other("TLS record sequence number exhausted"))?;
        let expanded = match self.expanded.take() {
            Some(expanded) => expanded,
            None => LessSafeKey::new(
                UnboundKey::new(algorithm, key)
                    .map_err(|_| io::Error::other("TLS traffic key refused by aws-lc"))?,
            ),
        };
        Ok((self.expanded.insert(expanded), nonce))
    }
}

/// The AEAD, key and IV of a traffic secret this layer can run.
fn parts(
    secrets: &ConnectionTrafficSecrets,
) -> Result<(&'static aead::Algorithm, &[u8], &Iv), rustls::Error> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
            Ok((&aead::AES_128_GCM, key.as_ref(), iv))
        }
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            Ok((&aead::AES_256_GCM, key.as_ref(), iv))
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            Ok((&aead::CHACHA20_POLY1305, key.as_ref(), iv))
        }
        _ => Err(rustls::Error::General(
            "no record layer here for this AEAD".into(),
        )),
    }
}

/// Whether [`EstablishedTls`] can take over a connection with this suite.
pub(super) fn supports(suite: rustls::CipherSuite) -> bool {
    matches!(
        suite,
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
            | rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    )
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// A TLS 1.3 server connection whose handshake is done, its record layer run here.
pub struct EstablishedTls {
    tcp: TcpStream,
    /// rustls' part: the next traffic secrets at a key update. Boxed: it is touched only then.
    kernel: Box<KernelConnection<ServerConnectionData>>,
    rx: RecordKey,
    tx: RecordKey,
    /// Records of ours before this many need a new key (half the suite's confidentiality
    /// limit, RFC 8446 §5.5).
    tx_limit: u64,
    /// The client asked for our key to be updated (§4.6.3): done before our next record.
    tx_update_due: bool,
    /// The start of a record whose end has not arrived; empty (no allocation) otherwise.
    partial: Vec<u8>,
    /// A handshake message split across records (only KeyUpdate is expected).
    handshake: Vec<u8>,
    plaintext: PlaintextQueue,
    outgoing: Outgoing,
    /// The client sent close_notify or closed its side: reads give end of file.
    read_closed: bool,
    /// Our close_notify is queued.
    close_sent: bool,
    /// The client closed its side of the TCP connection.
    tcp_eof: bool,
    /// Records in a row without application data (see [`MAX_RECORDS_WITHOUT_DATA`]).
    without_data: u8,
    /// A fatal error ended the connection: every later call gives it again.
    failed: Option<&'static str>,
}

impl EstablishedTls {
    pub(super) fn new(
        tcp: TcpStream,
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
        partial: Vec<u8>,
        plaintext: PlaintextQueue,
        outgoing: Outgoing,
    ) -> Result<Self, rustls::Error> {
        let limit = kernel
            .negotiated_cipher_suite()
            .tls13()
            .map_or(u64::MAX, |suite| suite.common.confidentiality_limit);
        Ok(Self {
            tcp,
            kernel: Box::new(kernel),
            rx: RecordKey::new(secrets.rx)?,
            tx: RecordKey::new(secrets.tx)?,
            tx_limit: limit / 2,
            tx_update_due: false,
            partial,
            handshake: Vec::new(),
            plaintext,
            outgoing,
            read_closed: false,
            close_sent: false,
            tcp_eof: false,
            without_data: 0,
            failed: None,
        })
    }

    /// Encrypts `content` of `content_type` as one record onto `out`.
    fn seal(&mut self, content_type: u8, content: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let start = out.len();
        let length = content.len() + 1 + TAG;
        let header = [
            CONTENT_APPLICATION_DATA,
            3,
            3,
            (length >> 8) as u8,
            length as u8,
        ];
        out.extend_from_slice(&header);
        out.extend_from_slice(content);
        out.push(content_type);
        let (key, nonce) = self.tx.next()?;
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start + HEADER..])
            .map_err(|_| io::Error::other("TLS record encryption failed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Encrypts application data onto `out`, after the key update that is due, if one is.
    fn seal_data(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        for chunk in data.chunks(MAX_PLAINTEXT) {
            if self.tx_update_due || self.tx.seq >= self.tx_limit {
                self.update_tx(out)?;
            }
            self.seal(CONTENT_APPLICATION_DATA, chunk, out)?;
        }
        Ok(())
    }

    /// Sends KeyUpdate (update_not_requested) under the current key, then moves to the next.
    fn update_tx(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        self.seal(CONTENT_HANDSHAKE, &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0], out)?;
        let next = self.kernel.update_tx_secret().map_err(tls_error)?;
        self.tx = RecordKey::new(next).map_err(tls_error)?;
        self.tx_update_due = false;
        Ok(())
    }

    /// Ends the connection without an alert (the socket failed, or our own keys did): later
    /// calls give the error again rather than send records out of sequence.
    fn broken(&mut self, why: &'static str) -> io::Error {
        self.failed.get_or_insert(why);
        self.read_closed = true;
        io::Error::new(io::ErrorKind::InvalidData, why)
    }

    /// Ends the connection with a fatal alert (best effort) and the error to report.
    fn fatal(&mut self, alert: u8, why: &'static str) -> io::Error {
        if self.failed.is_none() {
            self.failed = Some(why);
            let mut out = Vec::new();
            if self.seal(CONTENT_ALERT, &[2, alert], &mut out).is_ok() {
                self.outgoing.bytes.extend_from_slice(&out);
            }
        }
        self.read_closed = true;
        io::Error::new(io::ErrorKind::InvalidData, why)
    }

    /// Decrypts the whole records at the front of `received`: application data goes to
    /// `reader` (then to `self.plaintext`), alerts and key updates are acted on. Returns the
    /// bytes used; the rest is the start of a record.
    fn open_records(&mut self, received: &mut [u8], reader: &mut ReadBuf<'_>) -> io::Result<usize> {
        let mut at = 0;
        while !self.read_closed && received.len() - at >= HEADER {
            let mut header = [0u8; HEADER];
            header.copy_from_slice(&received[at..at + HEADER]);
            let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if header[0] != CONTENT_APPLICATION_DATA {
                return Err(self.fatal(
                    ALERT_UNEXPECTED_MESSAGE,
                    "an unencrypted TLS record after the handshake",
                ));
            }
            if length > MAX_CIPHERTEXT {
                return Err(self.fatal(ALERT_RECORD_OVERFLOW, "a TLS record over 2^14 + 256 bytes"));
            }
            if received.len() - at - HEADER < length {
                break;
            }
            let body = &mut received[at + HEADER..at + HEADER + length];
            at += HEADER + length;
            let (key, nonce) = match self.rx.next() {
                Ok(next) => next,
                Err(_) => return Err(self.fatal(ALERT_INTERNAL_ERROR, "TLS receive key failed")),
            };
            let Ok(plain) = key.open_in_place(nonce, Aad::from(header), body) else {
                return Err(self.fatal(ALERT_BAD_RECORD_MAC, "a TLS record failed to decrypt"));
            };
            // §5.4: TLSInnerPlaintext (content, type, padding) is at most 2^14 + 1 bytes.
            if plain.len() > MAX_PLAINTEXT + 1 {
                return Err(self.fatal(ALERT_RECORD_OVERFLOW, "a TLS record over 2^14 bytes"));
            }
            // RFC 8446 §5.4: the content type is the last byte that is not padding.
            let Some(end) = plain.iter().rposition(|&b| b != 0) else {
                return Err(self.fatal(
                    ALERT_UNEXPECTED_MESSAGE,
                    "a TLS record with no content type",
                ));
            };
            let (content, content_type) = (&plain[..end], plain[end]);
            if content_type == CONTENT_APPLICATION_DATA && !content.is_empty() {
                self.without_data = 0;
            } else {
                self.without_data += 1;
                if self.without_data > MAX_RECORDS_WITHOUT_DATA {
                    return Err(self.fatal(
                        ALERT_UNEXPECTED_MESSAGE,
                        "too many TLS records without application data",
                    ));
                }
            }
            if !self.handshake.is_empty() && content_type != CONTENT_HANDSHAKE {
                return Err(self.fatal(
                    ALERT_UNEXPECTED_MESSAGE,
                    "a TLS handshake message interrupted by another record",
                ));
            }
            match content_type {
                CONTENT_APPLICATION_DATA => self.plaintext.deliver(content, Some(&mut *reader)),
                CONTENT_ALERT => self.on_alert(content)?,
                CONTENT_HANDSHAKE => self.on_handshake(content)?,
                _ => {
                    return Err(self.fatal(
                        ALERT_UNEXPECTED_MESSAGE,
                        "a TLS record of a type not allowed after the handshake",
                    ))
                }
            }
        }
        Ok(at)
    }

    fn on_alert(&mut self, content: &[u8]) -> io::Result<()> {
        let &[_level, description] = content else {
            return Err(self.fatal(ALERT_DECODE_ERROR, "a malformed TLS alert"));
        };
        match description {
            ALERT_CLOSE_NOTIFY => {
                self.read_closed = true;
                Ok(())
            }
            // RFC 8446 §6.1: a close_notify follows.
            ALERT_USER_CANCELED => Ok(()),
            _ => {
                self.failed = Some("the client sent a fatal TLS alert");
                self.read_closed = true;
                Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("the client sent TLS alert {description}"),
                ))
            }
        }
    }

    /// Post-handshake messages from a client: KeyUpdate only (we ask for no certificate
    /// after the handshake, and tickets go the other way).
    fn on_handshake(&mut self, content: &[u8]) -> io::Result<()> {
        if content.is_empty() {
            // §5.1: handshake records are never empty.
            return Err(self.fatal(ALERT_UNEXPECTED_MESSAGE, "an empty TLS handshake record"));
        }
        self.handshake.extend_from_slice(content);
        let message = std::mem::take(&mut self.handshake);
        let refusal = match message.as_slice() {
            [] => return Ok(()),
            [kind, ..] if *kind != HANDSHAKE_KEY_UPDATE => Some((
                ALERT_UNEXPECTED_MESSAGE,
                "a TLS handshake message other than KeyUpdate after the handshake",
            )),
            [_, length @ ..] if length.len() >= 3 && length[..3] != [0, 0, 1] => {
                Some((ALERT_DECODE_ERROR, "a malformed TLS KeyUpdate"))
            }
            // §5.1: handshake messages must not span a key change.
            [_, _, _, _, _, _, ..] => Some((
                ALERT_UNEXPECTED_MESSAGE,
                "data after a TLS KeyUpdate in the same record",
            )),
            [_, _, _, _, request] if *request > 1 => Some((
                ALERT_ILLEGAL_PARAMETER,
                "a TLS KeyUpdate with a bad request",
            )),
            [_, _, _, _, _] => None,
            _ => {
                // Split across records: the rest comes in the next one.
                self.handshake = message;
                return Ok(());
            }
        };
        if let Some((alert, why)) = refusal {
            return Err(self.fatal(alert, why));
        }
        let requested = message[4] == 1;
        let next = match self.kernel.update_rx_secret() {
            Ok(next) => next,
            Err(_) => return Err(self.fatal(ALERT_INTERNAL_ERROR, "TLS key update failed")),
        };
        self.rx = match RecordKey::new(next) {
            Ok(key) => key,
            Err(_) => return Err(self.fatal(ALERT_INTERNAL_ERROR, "TLS key update failed")),
        };
        // One update answers any number of requests that came while we were silent.
        self.tx_update_due |= requested;
        Ok(())
    }

    fn failure(&self) -> Option<io::Error> {
        self.failed
            .map(|why| io::Error::new(io::ErrorKind::InvalidData, why))
    }
}

impl AsyncRead for EstablishedTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        reader: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plaintext.take(reader) {
                return Poll::Ready(Ok(()));
            }
            if let Some(error) = this.failure() {
                return Poll::Ready(Err(error));
            }
            if this.read_closed {
                this.rx.expanded = None;
                return Poll::Ready(Ok(()));
            }
            let before = reader.filled().len();
            let outcome = READ_SCRATCH.with_borrow_mut(|scratch| {
                let carried = this.partial.len();
                let Poll::Ready(read) =
                    read_after_partial(cx, &mut this.tcp, &this.partial, scratch)
                else {
                    // The socket ran dry: the key waits unexpanded for the next record.
                    this.rx.expanded = None;
                    return Poll::Pending;
                };
                let read = read?;
                if read == 0 {
                    // The client closed without close_notify: end of file all the same,
                    // unless a record was cut short.
                    this.read_closed = true;
                    this.tcp_eof = true;
                    if carried > 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the connection ended inside a TLS record",
                        )));
                    }
                    return Poll::Ready(Ok(()));
                }
                let received = &mut scratch[..carried + read];
                let used = this.open_records(received, reader)?;
                keep_partial(&mut this.partial, &received[used..]);
                Poll::Ready(Ok(()))
            });
            match outcome {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => {
                    // The alert, if one was queued, tells the client why.
                    let _ = this.outgoing.poll_send(cx, &mut this.tcp);
                    return Poll::Ready(Err(error));
                }
                Poll::Pending => return Poll::Pending,
            }
            if reader.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for EstablishedTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(error) = this.failure() {
            return Poll::Ready(Err(error));
        }
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Backpressure: what the socket refused before goes first.
        ready!(this.outgoing.poll_send(cx, &mut this.tcp))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let chunk = &data[..data.len().min(MAX_WRITE_CHUNK)];
        SEAL_SCRATCH.with_borrow_mut(|sealed| {
            sealed.clear();
            if this.seal_data(chunk, sealed).is_err() {
                // Records may have taken sequence numbers: nothing more can be sent.
                return Poll::Ready(Err(this.broken("TLS record encryption failed")));
            }
            let mut sent = 0;
            while sent < sealed.len() {
                match Pin::new(&mut this.tcp).poll_write(cx, &sealed[sent..]) {
                    Poll::Ready(Ok(n)) if n > 0 => sent += n,
                    Poll::Ready(Ok(_)) => {
                        this.broken("the socket took no bytes");
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Err(error)) => {
                        this.broken("the socket write failed");
                        return Poll::Ready(Err(error));
                    }
                    Poll::Pending => break,
                }
            }
            this.outgoing.bytes.extend_from_slice(&sealed[sent..]);
            if sealed.capacity() > 2 * MAX_WRITE_CHUNK {
                // One huge write must not keep its buffer on the thread.
                *sealed = Vec::new();
            }
            Poll::Ready(Ok(chunk.len()))
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.outgoing.poll_send(cx, &mut this.tcp))?;
        // Written: the key waits unexpanded for the next burst.
        this.tx.expanded = None;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A client that has closed its side gets no close_notify: nothing would read it.
        if !this.close_sent && !this.tcp_eof && this.failed.is_none() {
            this.close_sent = true;
            let mut out = Vec::new();
            match this.seal(CONTENT_ALERT, &[1, ALERT_CLOSE_NOTIFY], &mut out) {
                Ok(()) => this.outgoing.bytes.extend_from_slice(&out),
                Err(error) => tracing::debug!(%error, "close_notify not sent"),
            }
        }
        ready!(this.outgoing.poll_send(cx, &mut this.tcp))?;
        this.tx.expanded = None;
        if this.tcp_eof {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::super::stream::{fuzz::pki, TlsServerStream};
    use super::*;

    /// A rustls client connected to a server that handed its connection over, plus the
    /// server's end.
    async fn connected() -> (tokio_rustls::client::TlsStream<TcpStream>, TlsServerStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut config = (*pki().server).clone();
        config.enable_secret_extraction = true;
        let config = Arc::new(config);
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            TlsServerStream::accept(tcp, Vec::new(), config, None)
                .await
                .expect("handshake")
        });
        let connector = tokio_rustls::TlsConnector::from(pki().client.clone());
        let name = rustls::pki_types::ServerName::try_from("fuzz.test").expect("a name");
        let tcp = TcpStream::connect(address).await.expect("connect");
        let client = connector
            .connect(name, tcp)
            .await
            .expect("client handshake");
        (client, server.await.expect("server"))
    }

    fn established(stream: TlsServerStream) -> EstablishedTls {
        match stream.into_established() {
            Ok(Ok(established)) => established,
            Ok(Err(error)) => panic!("hand-off refused: {error}"),
            Err(_) => panic!("not eligible"),
        }
    }

    /// Echoes until end of file, then closes.
    async fn echo(mut tls: EstablishedTls) -> EstablishedTls {
        let mut buf = vec![0u8; 70_000];
        loop {
            let n = tls.read(&mut buf).await.expect("server read");
            if n == 0 {
                break;
            }
            tls.write_all(&buf[..n]).await.expect("server write");
            tls.flush().await.expect("server flush");
        }
        tls.shutdown().await.expect("server shutdown");
        tls
    }

    #[tokio::test]
    async fn records_flow_both_ways_across_key_updates_and_close_cleanly() {
        let (mut client, server) = connected().await;
        // A byte read before the hand-off leaves the rest of its record as plaintext
        // in flight, which must come through.
        client.write_all(b"0123456789").await.expect("write");
        client.flush().await.expect("flush");
        let mut server = server;
        let mut first = [0u8; 1];
        server.read_exact(&mut first).await.expect("first byte");
        assert_eq!(&first, b"0");
        // Records read since our last write: rustls may hold an answer owed to them, so the
        // connection stays on rustls until we have written.
        let Err(server) = server.into_established() else {
            panic!("handed over with records read since the last write");
        };
        let mut server = *server;
        server.write_all(b"ack").await.expect("ack");
        server.flush().await.expect("flush");
        let mut ack = [0u8; 3];
        client.read_exact(&mut ack).await.expect("ack read");
        assert_eq!(&ack, b"ack");
        let mut tls = established(server);
        let mut rest = [0u8; 9];
        tls.read_exact(&mut rest).await.expect("the rest");
        assert_eq!(&rest, b"123456789");
        // Our own key update, long before the limit (it is 2^23 records here).
        tls.tx_limit = 3;
        let server = tokio::spawn(echo(tls));
        for round in 0..4u8 {
            // Several records each way, the biggest larger than one record.
            let message: Vec<u8> = (0..(40_000 + usize::from(round)))
                .map(|i| (i % 251) as u8 ^ round)
                .collect();
            client.write_all(&message).await.expect("client write");
            client.flush().await.expect("client flush");
            let mut back = vec![0u8; message.len()];
            client.read_exact(&mut back).await.expect("client read");
            assert!(back == message, "round {round}: the echo differs");
            // The client's KeyUpdate asks for ours in return (rustls sends update_requested).
            client
                .get_mut()
                .1
                .refresh_traffic_keys()
                .expect("key update");
        }
        client.shutdown().await.expect("client close_notify");
        let mut tail = Vec::new();
        client
            .read_to_end(&mut tail)
            .await
            .expect("the server's close_notify");
        assert!(tail.is_empty());
        let tls = server.await.expect("echo");
        assert!(tls.read_closed && tls.close_sent);
        assert!(
            tls.rx.expanded.is_none() && tls.tx.expanded.is_none(),
            "keys dropped at rest"
        );
    }

    #[tokio::test]
    async fn a_run_of_key_updates_without_data_is_cut_off() {
        let (mut client, server) = connected().await;
        let mut tls = established(server);
        for _ in 0..(MAX_RECORDS_WITHOUT_DATA + 2) {
            client
                .get_mut()
                .1
                .refresh_traffic_keys()
                .expect("key update");
            client.flush().await.expect("flush");
        }
        client.write_all(b"x").await.expect("write");
        client.flush().await.expect("flush");
        let mut buf = [0u8; 8];
        let error = match tls.read(&mut buf).await {
            Ok(0) => panic!("end of file instead of a refusal"),
            Ok(_) => panic!("data arrived after a run of key updates"),
            Err(error) => error,
        };
        assert!(
            error.to_string().contains("without application data"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_connection_cut_inside_a_record_is_an_error_not_an_end() {
        let (client, server) = connected().await;
        let mut tls = established(server);
        let (mut raw, _session) = client.into_inner();
        raw.write_all(&[CONTENT_APPLICATION_DATA, 3, 3, 0, 100, 1, 2, 3])
            .await
            .expect("half a record");
        raw.shutdown().await.expect("FIN");
        let mut buf = [0u8; 8];
        let error = tls.read(&mut buf).await.expect_err("truncated");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_forged_record_ends_the_connection_with_an_alert() {
        let (client, server) = connected().await;
        let mut tls = established(server);
        // Bytes that look like a record but were not encrypted with the client's key.
        let (mut raw, _session) = client.into_inner();
        let mut forged = vec![CONTENT_APPLICATION_DATA, 3, 3, 0, 40];
        forged.extend_from_slice(&[0x5a; 40]);
        raw.write_all(&forged).await.expect("forge");
        let mut buf = [0u8; 64];
        let error = tls.read(&mut buf).await.expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("failed to decrypt"), "{error}");
        let again = tls.read(&mut buf).await.expect_err("still refused");
        assert_eq!(again.kind(), io::ErrorKind::InvalidData);
        // The client gets an encrypted alert record.
        let n = raw.read(&mut buf).await.expect("the alert");
        assert!(
            n > 5 && buf[0] == CONTENT_APPLICATION_DATA,
            "{:?}",
            &buf[..n]
        );
    }
}
