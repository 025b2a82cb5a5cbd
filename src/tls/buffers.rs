//! What both TLS stream types keep between calls, and the buffers they share per thread:
//! ciphertext is read into one scratch buffer per thread, and a connection keeps bytes only
//! while they are in flight.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The largest TLS record: a 5-byte header, 16 KiB of plaintext and at most 2 KiB of
/// expansion (RFC 5246 §6.2.3; TLS 1.3 allows only 256).
pub(super) const MAX_RECORD: usize = 5 + 16 * 1024 + 2048;

/// Plaintext encrypted per write call: a few full records.
pub(super) const MAX_WRITE_CHUNK: usize = 4 * 16 * 1024;

thread_local! {
    /// Ciphertext as read from sockets: a partial record carried over plus a fresh read.
    pub(super) static READ_SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; 2 * MAX_RECORD].into_boxed_slice());
}

/// Decrypted bytes the reader has not taken yet; empty (no allocation) otherwise.
#[derive(Default)]
pub(super) struct PlaintextQueue {
    bytes: Vec<u8>,
    /// From here on, `bytes` are not taken yet.
    taken: usize,
}

impl PlaintextQueue {
    /// Decrypted bytes go to the reader while it has room (and nothing waits before them);
    /// the rest waits here.
    pub(super) fn deliver(&mut self, payload: &[u8], reader: Option<&mut ReadBuf<'_>>) {
        let mut rest = payload;
        if let Some(reader) = reader {
            if self.bytes.is_empty() {
                let n = rest.len().min(reader.remaining());
                reader.put_slice(&rest[..n]);
                rest = &rest[n..];
            }
        }
        self.bytes.extend_from_slice(rest);
    }

    #[cfg(test)]
    pub(super) fn waiting(&self) -> &[u8] {
        &self.bytes[self.taken..]
    }

    /// Copies waiting plaintext into `reader`; true if there was any.
    pub(super) fn take(&mut self, reader: &mut ReadBuf<'_>) -> bool {
        let pending = &self.bytes[self.taken..];
        if pending.is_empty() {
            return false;
        }
        let n = pending.len().min(reader.remaining());
        reader.put_slice(&pending[..n]);
        self.taken += n;
        if self.taken == self.bytes.len() {
            self.bytes = Vec::new();
            self.taken = 0;
        }
        true
    }
}

/// Bytes the socket (or stream) has not taken yet; empty (no allocation) otherwise. TLS
/// records here; a hub session's WebSocket frames too.
#[derive(Default)]
pub(crate) struct Outgoing {
    pub(crate) bytes: Vec<u8>,
    /// Up to here, `bytes` are written.
    sent: usize,
}

impl Outgoing {
    pub(crate) fn queued(&self) -> usize {
        self.bytes.len() - self.sent
    }

    /// Writes the queued bytes to `to`; ready once all are written.
    pub(crate) fn poll_send<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        to: &mut W,
    ) -> Poll<io::Result<()>> {
        while self.sent < self.bytes.len() {
            let written = ready!(Pin::new(&mut *to).poll_write(cx, &self.bytes[self.sent..]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += written;
        }
        if !self.bytes.is_empty() {
            self.bytes = Vec::new();
            self.sent = 0;
        }
        Poll::Ready(Ok(()))
    }
}

/// Puts the carried start of a record (`partial`) at the front of `scratch` and reads from
/// the socket after it; ready with the bytes read (0: end of file).
pub(super) fn read_after_partial(
    cx: &mut Context<'_>,
    tcp: &mut TcpStream,
    partial: &[u8],
    scratch: &mut [u8],
) -> Poll<io::Result<usize>> {
    let carried = partial.len();
    if carried > MAX_RECORD {
        // Only ever the start of one record is carried; more means a bug upstream, and the
        // connection ends rather than the process.
        return Poll::Ready(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more than one partial TLS record carried over",
        )));
    }
    scratch[..carried].copy_from_slice(partial);
    let mut space = ReadBuf::new(&mut scratch[carried..]);
    ready!(Pin::new(tcp).poll_read(cx, &mut space))?;
    Poll::Ready(Ok(space.filled().len()))
}

/// Keeps `rest`, the start of a record, for the next read; no allocation when there is none.
pub(super) fn keep_partial(partial: &mut Vec<u8>, rest: &[u8]) {
    if rest.is_empty() {
        *partial = Vec::new();
    } else {
        partial.clear();
        partial.extend_from_slice(rest);
    }
}
