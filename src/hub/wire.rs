//! A hub session's WebSocket on its stream: RFC 6455 framing, server side, no extensions.
//!
//! Written for connections that mostly wait. Between bursts a session holds no buffer: reads
//! go through a buffer on the stack, and only a frame that has not arrived whole is kept.
//! Frames to send are gathered per burst and written with one call (one TLS key expansion,
//! one system call), then the buffer is freed.
//!
//! The checks are RFC 6455's, for a server:
//! - client frames must be masked;
//! - no reserved bits (no extension is negotiated);
//! - known opcodes only;
//! - control frames unfragmented and at most 125 bytes;
//! - continuation frames only inside a message;
//! - messages within `max_message_size` (checked at each frame header, before its payload
//!   is buffered);
//! - text valid UTF-8, checked fragment by fragment so a bad one fails at once;
//! - close codes and reasons valid (§7.4).
//!
//! Pings are answered by the wire; a close is answered with the code it carried.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::tls::Outgoing;

const OP_CONTINUATION: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// Bytes read from the stream per call: a hub client's messages are small.
const READ_CHUNK: usize = 2048;

/// A whole message (or control frame) from the client.
#[derive(Debug)]
pub(super) enum Message {
    Text(Utf8Bytes),
    Binary(Bytes),
    /// A ping; its pong is queued.
    Ping,
    Pong,
    /// The client's close frame; ours (its code echoed) is queued.
    Close,
}

/// Why the client's frames were refused, with the close code each one takes.
#[derive(Debug)]
pub(super) enum WireError {
    /// `1002`.
    Protocol(&'static str),
    /// `1007`.
    Utf8,
    /// `1009`.
    TooBig,
    Io(io::Error),
}

pub(super) struct Wire<S> {
    io: S,
    /// Bytes read but not yet parsed (from `parsed` on); empty (no allocation) otherwise.
    received: Vec<u8>,
    /// Bytes at the front of `received` already taken as frames: dropped in one go before
    /// the next read, not one frame at a time (many small frames in one read stay linear).
    parsed: usize,
    /// The unmasked fragments of a message in progress, and its opcode (0: none).
    message: Vec<u8>,
    message_opcode: u8,
    /// How much of a text `message` is known to be valid UTF-8.
    valid_utf8: usize,
    /// Of a text frame still arriving: payload bytes already checked, and the start of a
    /// character they ended in (so bad UTF-8 fails as soon as it arrives, not at the frame's
    /// end).
    frame_checked: usize,
    utf8_carry: ([u8; 3], u8),
    /// Frames to write; empty (no allocation) between bursts.
    out: Outgoing,
    max_message: u64,
    close_received: bool,
    close_queued: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// `early`: bytes that came after the upgrade request, already read by the HTTP layer.
    pub(super) fn new(io: S, early: Vec<u8>, max_message: u64) -> Self {
        Self {
            io,
            received: early,
            parsed: 0,
            message: Vec::new(),
            message_opcode: 0,
            valid_utf8: 0,
            frame_checked: 0,
            utf8_carry: ([0; 3], 0),
            out: Outgoing::default(),
            max_message,
            close_received: false,
            close_queued: false,
        }
    }

    /// The next message; `None` once the stream ended or the client's close came.
    pub(super) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, WireError>>> {
        loop {
            if self.close_received {
                return Poll::Ready(None);
            }
            match self.parse() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Err(error) => return Poll::Ready(Some(Err(error))),
                Ok(None) => {}
            }
            self.received.drain(..self.parsed);
            self.parsed = 0;
            let mut chunk = [0u8; READ_CHUNK];
            let mut space = ReadBuf::new(&mut chunk);
            if let Err(error) = ready!(Pin::new(&mut self.io).poll_read(cx, &mut space)) {
                return Poll::Ready(Some(Err(WireError::Io(error))));
            }
            if space.filled().is_empty() {
                return Poll::Ready(None);
            }
            self.received.extend_from_slice(space.filled());
        }
    }

    pub(super) async fn next(&mut self) -> Option<Result<Message, WireError>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Waits for the client's close frame, the end of the stream, or frames that no longer
    /// parse (after a protocol error), dropping whatever else comes meanwhile.
    pub(super) async fn until_close(&mut self) {
        while let Some(Ok(message)) = self.next().await {
            if matches!(message, Message::Close) {
                return;
            }
        }
    }

    /// After [`Wire::shutdown`]: reads and drops the client's bytes until its end, as nginx's
    /// lingering close. Closing with input unread makes the kernel reset the connection, and
    /// a reset can destroy our last frames (an echo, our close) before the client reads them.
    pub(super) async fn linger(&mut self) {
        self.received = Vec::new();
        self.parsed = 0;
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let mut space = ReadBuf::new(&mut chunk);
            let read = std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_read(cx, &mut space));
            if read.await.is_err() || space.filled().is_empty() {
                return;
            }
        }
    }

    /// Takes whole frames off `received` until one completes a message.
    fn parse(&mut self) -> Result<Option<Message>, WireError> {
        loop {
            let Some(head) = self.head()? else {
                return Ok(None);
            };
            let end = head.payload_at + head.length;
            if self.received.len() < end {
                self.check_arriving_text(&head)?;
                return Ok(None);
            }
            self.frame_checked = 0;
            let mut payload = self.received[head.payload_at..end].to_vec();
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= head.mask[i % 4];
            }
            if self.received.len() == end {
                self.received = Vec::new();
                self.parsed = 0;
            } else {
                self.parsed = end;
            }
            let message = match head.opcode {
                OP_PING => {
                    // After our close, nothing more (RFC 6455 §5.5.1).
                    if !self.close_queued {
                        self.queue(OP_PONG, &payload);
                    }
                    Some(Message::Ping)
                }
                OP_PONG => Some(Message::Pong),
                OP_CLOSE => Some(self.on_close(&payload)?),
                // A fragment that does not end its message: on to the next frame.
                _ => self.on_data(head.opcode, head.fin, payload)?,
            };
            if message.is_some() {
                return Ok(message);
            }
        }
    }

    /// Checks the UTF-8 of the part of a text frame that has arrived (Autobahn 6.4.3–4:
    /// fail fast, within the frame).
    fn check_arriving_text(&mut self, head: &Head) -> Result<(), WireError> {
        let text = head.opcode == OP_TEXT
            || (head.opcode == OP_CONTINUATION && self.message_opcode == OP_TEXT);
        let arrived = self
            .received
            .len()
            .saturating_sub(head.payload_at)
            .min(head.length);
        if !text || arrived <= self.frame_checked {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(3 + arrived - self.frame_checked);
        if self.frame_checked == 0 {
            // A character the message's last fragment ended in continues here.
            bytes.extend_from_slice(&self.message[self.valid_utf8..]);
        } else {
            let (carry, len) = self.utf8_carry;
            bytes.extend_from_slice(&carry[..usize::from(len)]);
        }
        let start = head.payload_at + self.frame_checked;
        let fresh = &self.received[start..head.payload_at + arrived];
        bytes.extend(
            fresh
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ head.mask[(self.frame_checked + i) % 4]),
        );
        let tail = match std::str::from_utf8(&bytes) {
            Ok(_) => &[][..],
            Err(error) if error.error_len().is_none() => &bytes[error.valid_up_to()..],
            Err(_) => return Err(WireError::Utf8),
        };
        let mut carry = [0u8; 3];
        carry[..tail.len()].copy_from_slice(tail);
        self.utf8_carry = (carry, tail.len() as u8);
        self.frame_checked = arrived;
        Ok(())
    }

    /// The header at the front of `received`, checked; `None` while it is incomplete.
    fn head(&self) -> Result<Option<Head>, WireError> {
        let at = self.parsed;
        let buf = &self.received[at..];
        let (Some(&first), Some(&second)) = (buf.first(), buf.get(1)) else {
            return Ok(None);
        };
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0f;
        if first & 0x70 != 0 {
            return Err(WireError::Protocol("reserved bits set"));
        }
        if second & 0x80 == 0 {
            return Err(WireError::Protocol("client frames must be masked"));
        }
        if !matches!(
            opcode,
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
        ) {
            return Err(WireError::Protocol("unknown opcode"));
        }
        let (length, mask_at) = match second & 0x7f {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut bytes = [0u8; 8];
                    bytes.copy_from_slice(b);
                    let length = u64::from_be_bytes(bytes);
                    if length >> 63 != 0 {
                        return Err(WireError::Protocol("frame length over 2^63"));
                    }
                    (length, 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        if opcode & 0x08 != 0 {
            if !fin {
                return Err(WireError::Protocol("fragmented control frame"));
            }
            if length > 125 {
                return Err(WireError::Protocol("control frame over 125 bytes"));
            }
        } else {
            if opcode == OP_CONTINUATION && self.message_opcode == 0 {
                return Err(WireError::Protocol("continuation frame outside a message"));
            }
            if opcode != OP_CONTINUATION && self.message_opcode != 0 {
                return Err(WireError::Protocol("new message inside a fragmented one"));
            }
            // Before the payload is buffered: a frame that cannot fit is refused at its head.
            if self.message.len() as u64 + length > self.max_message {
                return Err(WireError::TooBig);
            }
        }
        let Some(mask) = buf.get(mask_at..mask_at + 4) else {
            return Ok(None);
        };
        let length = usize::try_from(length).map_err(|_| WireError::TooBig)?;
        Ok(Some(Head {
            fin,
            opcode,
            mask: [mask[0], mask[1], mask[2], mask[3]],
            payload_at: at + mask_at + 4,
            length,
        }))
    }

    fn on_data(
        &mut self,
        opcode: u8,
        fin: bool,
        payload: Vec<u8>,
    ) -> Result<Option<Message>, WireError> {
        if opcode != OP_CONTINUATION {
            self.message_opcode = opcode;
        }
        if self.message.is_empty() {
            self.message = payload;
        } else {
            self.message.extend_from_slice(&payload);
        }
        // A fragment that does not end its message is checked now (bad UTF-8 fails at once);
        // a whole message is checked once, as it becomes `Utf8Bytes` below.
        if self.message_opcode == OP_TEXT && !fin {
            match std::str::from_utf8(&self.message[self.valid_utf8..]) {
                Ok(_) => self.valid_utf8 = self.message.len(),
                // A sequence cut at the fragment's end may continue in the next one.
                Err(error) if error.error_len().is_none() => {
                    self.valid_utf8 += error.valid_up_to();
                }
                Err(_) => return Err(WireError::Utf8),
            }
        }
        if !fin {
            return Ok(None);
        }
        let data = Bytes::from(std::mem::take(&mut self.message));
        let opcode = std::mem::replace(&mut self.message_opcode, 0);
        self.valid_utf8 = 0;
        if opcode == OP_TEXT {
            let text = Utf8Bytes::try_from(data).map_err(|_| WireError::Utf8)?;
            Ok(Some(Message::Text(text)))
        } else {
            Ok(Some(Message::Binary(data)))
        }
    }

    /// The client's close frame: its code and reason checked (§5.5.1, §7.4), ours queued.
    fn on_close(&mut self, payload: &[u8]) -> Result<Message, WireError> {
        // Even a bad close frame is the client's last: our close ends the connection then,
        // without waiting for another.
        self.close_received = true;
        let code = match payload {
            [] => None,
            [_] => return Err(WireError::Protocol("close frame of one byte")),
            [high, low, reason @ ..] => {
                let code = u16::from_be_bytes([*high, *low]);
                if !valid_close_code(code) {
                    return Err(WireError::Protocol("invalid close code"));
                }
                if std::str::from_utf8(reason).is_err() {
                    return Err(WireError::Utf8);
                }
                Some(code)
            }
        };
        if !self.close_queued {
            self.close_queued = true;
            let echo = code.map(u16::to_be_bytes);
            self.queue(OP_CLOSE, echo.as_ref().map_or(&[][..], |c| &c[..]));
        }
        Ok(Message::Close)
    }

    /// Queues one unfragmented, unmasked frame.
    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        let length = payload.len();
        self.out.bytes.push(0x80 | opcode);
        if length < 126 {
            self.out.bytes.push(length as u8);
        } else if let Ok(short) = u16::try_from(length) {
            self.out.bytes.push(126);
            self.out.bytes.extend_from_slice(&short.to_be_bytes());
        } else {
            self.out.bytes.push(127);
            self.out
                .bytes
                .extend_from_slice(&(length as u64).to_be_bytes());
        }
        self.out.bytes.extend_from_slice(payload);
    }

    pub(super) fn queue_text(&mut self, text: &str) {
        self.queue(OP_TEXT, text.as_bytes());
    }

    pub(super) fn queue_binary(&mut self, data: &[u8]) {
        self.queue(OP_BINARY, data);
    }

    pub(super) fn queue_ping(&mut self) {
        self.queue(OP_PING, &[]);
    }

    /// Queues our close frame (once): the code and as much of `reason` as fits in 123 bytes.
    pub(super) fn queue_close(&mut self, code: u16, reason: &str) {
        if self.close_queued {
            return;
        }
        self.close_queued = true;
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(&reason.as_bytes()[..cut]);
        self.queue(OP_CLOSE, &payload);
    }

    /// Writes everything queued; the buffer is freed once the stream took it.
    pub(super) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.out.poll_send(cx, &mut self.io))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    pub(super) async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Flushes, then closes the stream (TLS close_notify, then the TCP FIN).
    pub(super) async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await
    }
}

/// A frame header as read.
struct Head {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    payload_at: usize,
    length: usize,
}

/// Close codes a peer may send (RFC 6455 §7.4.1 and IANA's registry): 1004–1006 and 1015
/// are never sent, 1016–2999 are reserved, 3000–4999 belong to libraries and applications.
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client frame, masked as a client must.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![first];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    async fn read_all(client: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut got = vec![0u8; 4096];
        let n = client.read(&mut got).await.expect("read");
        got.truncate(n);
        got
    }

    #[tokio::test]
    async fn fragmented_text_split_anywhere_arrives_whole_and_pings_get_pongs() {
        let text = "héllo wörld, ünïcode split across fragments";
        let bytes = text.as_bytes();
        let mut stream = client_frame(0x01, &bytes[..2]); // cuts é in half
        stream.extend(client_frame(0x89, b"hi")); // a ping between fragments
        stream.extend(client_frame(0x00, &bytes[2..20]));
        stream.extend(client_frame(0x80, &bytes[20..]));
        for step in [1, 3, 7, stream.len()] {
            let (server, mut client) = tokio::io::duplex(1 << 16);
            let mut wire = Wire::new(server, Vec::new(), 1 << 20);
            let writer = {
                let stream = stream.clone();
                tokio::spawn(async move {
                    for piece in stream.chunks(step) {
                        client.write_all(piece).await.expect("write");
                        tokio::task::yield_now().await;
                    }
                    client
                })
            };
            assert!(matches!(wire.next().await, Some(Ok(Message::Ping))));
            wire.flush().await.expect("pong");
            match wire.next().await {
                Some(Ok(Message::Text(got))) => assert_eq!(got.as_str(), text),
                other => panic!("step {step}: {other:?}"),
            }
            let mut client = writer.await.expect("writer");
            assert_eq!(read_all(&mut client).await, vec![0x8a, 2, b'h', b'i']);
        }
    }

    #[tokio::test]
    async fn protocol_violations_are_refused_with_the_right_error() {
        let too_big = client_frame(0x82, &[0; 200]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0x81, 0x02, b'h', b'i'], "client frames must be masked"),
            (client_frame(0xc1, b"x"), "reserved bits set"),
            (client_frame(0x83, b"x"), "unknown opcode"),
            (client_frame(0x09, b"x"), "fragmented control frame"),
            (
                client_frame(0x89, &[0; 126]),
                "control frame over 125 bytes",
            ),
            (
                client_frame(0x80, b"x"),
                "continuation frame outside a message",
            ),
            (
                [client_frame(0x01, b"a"), client_frame(0x81, b"b")].concat(),
                "new message inside a fragmented one",
            ),
            (client_frame(0x88, &[3]), "close frame of one byte"),
            (
                client_frame(0x88, &1005u16.to_be_bytes()),
                "invalid close code",
            ),
            (client_frame(0x81, &[0xce, 0xba, 0xff]), "utf8"),
            (client_frame(0x01, &[0xff]), "utf8"),
            (too_big[..12].to_vec(), "too big"),
        ];
        for (bytes, expected) in cases {
            let (server, mut client) = tokio::io::duplex(1 << 16);
            client.write_all(&bytes).await.expect("write");
            let mut wire = Wire::new(server, Vec::new(), 100);
            let got = loop {
                match wire.next().await {
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => break error,
                    None => panic!("{expected}: the stream ended without an error"),
                }
            };
            let matched = match (&got, expected) {
                (WireError::Protocol(why), _) => *why == expected,
                (WireError::Utf8, "utf8") | (WireError::TooBig, "too big") => true,
                _ => false,
            };
            assert!(matched, "{expected}: got {got:?}");
        }
    }

    #[tokio::test]
    async fn a_close_is_echoed_and_ends_the_stream() {
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut payload = 4000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        client
            .write_all(&client_frame(0x88, &payload))
            .await
            .expect("write");
        let mut wire = Wire::new(server, Vec::new(), 100);
        assert!(matches!(wire.next().await, Some(Ok(Message::Close))));
        assert!(wire.next().await.is_none());
        wire.queue_close(1001, "ignored: a close was sent already");
        wire.shutdown().await.expect("shutdown");
        let got = read_all(&mut client).await;
        assert_eq!(got, vec![0x88, 2, 0x0f, 0xa0]);
    }

    #[tokio::test]
    async fn frames_out_use_the_shortest_length_and_reasons_are_cut_on_characters() {
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let mut wire = Wire::new(server, Vec::new(), 100);
        wire.queue_text("ok");
        wire.queue_binary(&[7; 300]);
        wire.queue_close(4003, &"é".repeat(100));
        wire.flush().await.expect("flush");
        drop(wire);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(&got[..4], &[0x81, 2, b'o', b'k']);
        assert_eq!(&got[4..8], &[0x82, 126, 1, 44]);
        let close = &got[8 + 300..];
        assert_eq!(close[0], 0x88);
        assert_eq!(usize::from(close[1]), close.len() - 2);
        assert!(close.len() - 2 <= 125);
        assert_eq!(&close[2..4], &4003u16.to_be_bytes());
        assert!(std::str::from_utf8(&close[4..]).is_ok());
    }

    #[tokio::test]
    async fn bad_utf8_fails_as_it_arrives_not_when_its_frame_ends() {
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut wire = Wire::new(server, Vec::new(), 1 << 20);
        let mut payload = "κόσμε".as_bytes().to_vec();
        payload.extend_from_slice(&[
            0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5,
        ]);
        payload.extend_from_slice(&[0xf4, 0x90, 0x80, 0x80]); // over U+10FFFF
        payload.extend_from_slice(b"and the frame goes on for a while");
        let frame = client_frame(0x81, &payload);
        // Up to the byte that makes it bad (0x90 after 0xf4); the rest of the frame never comes.
        let bad_at = frame.len() - b"and the frame goes on for a while".len() - 2;
        client.write_all(&frame[..bad_at]).await.expect("write");
        let got = tokio::time::timeout(Duration::from_secs(5), wire.next())
            .await
            .expect("refused before the frame ends");
        assert!(matches!(got, Some(Err(WireError::Utf8))), "{got:?}");
    }

    #[tokio::test]
    async fn text_split_inside_a_character_across_reads_is_accepted() {
        let text = "ab€cd€";
        let frame = client_frame(0x81, text.as_bytes());
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut wire = Wire::new(server, Vec::new(), 1 << 20);
        let writer = tokio::spawn(async move {
            for byte in frame {
                client.write_all(&[byte]).await.expect("write");
                tokio::task::yield_now().await;
            }
            client
        });
        match wire.next().await {
            Some(Ok(Message::Text(got))) => assert_eq!(got.as_str(), text),
            other => panic!("{other:?}"),
        }
        drop(writer.await);
    }

    #[tokio::test]
    async fn after_a_protocol_error_our_end_closes_and_the_rest_is_read_until_the_clients() {
        // A small pipe: the client's bytes go through only while the wire keeps reading.
        let (server, mut client) = tokio::io::duplex(64);
        let mut wire = Wire::new(server, Vec::new(), 100);
        let writer = tokio::spawn(async move {
            client.write_all(&client_frame(0xc1, b"bad")).await?;
            client.write_all(&[0xff; 5000]).await
        });
        assert!(matches!(
            wire.next().await,
            Some(Err(WireError::Protocol(_)))
        ));
        wire.until_close().await;
        wire.shutdown().await.expect("our end closed first");
        tokio::time::timeout(Duration::from_secs(5), wire.linger())
            .await
            .expect("returns at the client's end");
        let written = tokio::time::timeout(Duration::from_secs(1), writer)
            .await
            .expect("the client got every byte in")
            .expect("the writer");
        assert!(written.is_ok(), "every byte was read: {written:?}");
    }

    #[tokio::test]
    async fn bytes_read_with_the_upgrade_are_parsed_first() {
        let (server, _client) = tokio::io::duplex(64);
        let mut wire = Wire::new(server, client_frame(0x81, b"early"), 100);
        match wire.next().await {
            Some(Ok(Message::Text(text))) => assert_eq!(text.as_str(), "early"),
            other => panic!("{other:?}"),
        }
    }
}
