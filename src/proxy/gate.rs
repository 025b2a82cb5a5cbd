//! A route's message limits on the client's side of a WebSocket tunnel: the splice lets the
//! gate see every chunk it reads from the client and pass on a prefix. The gate walks frame
//! headers (payloads are skipped, never copied) and stops in front of the first frame that
//! takes a message over `max_message_size` or a new message over the rate, so the backend
//! never receives a byte of it. A frame header split between two reads is held back (at most
//! 13 bytes) until it is whole, so the cut always falls on a frame boundary.

use tokio::time::Instant;

use crate::config::websocket::MessageLimits;

/// Why the gate closed a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A message over `max_message_size`: close 1009.
    TooBig,
    /// A message over the rate: close 1008.
    TooFast,
}

impl Refusal {
    pub fn code(self) -> u16 {
        match self {
            Refusal::TooBig => 1009,
            Refusal::TooFast => 1008,
        }
    }

    /// The close frame's reason text, and the tunnel's end in the log.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TooBig => "message too big",
            Refusal::TooFast => "message rate exceeded",
        }
    }

    /// The refusal a tunnel ended with, from `splice`'s outcome.
    pub fn ended(outcome: &str) -> Option<Refusal> {
        [Refusal::TooBig, Refusal::TooFast]
            .into_iter()
            .find(|r| r.reason() == outcome)
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::TooBig => "message_too_big",
            Refusal::TooFast => "message_rate",
        }
    }

    /// A close frame with this refusal's code and reason; masked (as a client must) for the
    /// backend, unmasked for the client.
    pub fn close_frame(self, masked: bool) -> Vec<u8> {
        let mut payload = self.code().to_be_bytes().to_vec();
        payload.extend_from_slice(self.reason().as_bytes());
        let mut frame = vec![0x88, payload.len() as u8];
        if masked {
            let mut key = [0u8; 4];
            let _ = aws_lc_rs::rand::fill(&mut key);
            frame[1] |= 0x80;
            frame.extend_from_slice(&key);
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= key[i % 4];
            }
        }
        frame.extend_from_slice(&payload);
        frame
    }
}

/// A frame header, once read whole.
struct Head {
    opcode: u8,
    len: u64,
    header_len: usize,
}

/// A frame header's length from its second byte: 2, the extended length (2 or 8), the mask
/// key (4) (RFC 6455 §5.2).
pub(super) fn header_len(second: u8) -> usize {
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + extended + if second & 0x80 != 0 { 4 } else { 0 }
}

/// The payload length a complete frame header declares.
pub(super) fn payload_len(header: &[u8; 14]) -> u64 {
    match header[1] & 0x7F {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&header[2..10]);
            u64::from_be_bytes(bytes)
        }
        short => u64::from(short),
    }
}

/// Frame headers in a byte stream read in arbitrary chunks (RFC 6455 §5.2).
#[derive(Default)]
struct Walker {
    header: [u8; 14],
    header_read: usize,
    /// Payload bytes still to come in the current frame.
    remaining: u64,
}

impl Walker {
    /// Advances over `bytes` from `*at`; returns the next header completed in them, `*at`
    /// just past it, or `None` with `*at` at the end.
    fn next_head(&mut self, bytes: &[u8], at: &mut usize) -> Option<Head> {
        while *at < bytes.len() {
            if self.remaining > 0 {
                let step = self.remaining.min((bytes.len() - *at) as u64);
                *at += step as usize;
                self.remaining -= step;
                continue;
            }
            self.header[self.header_read] = bytes[*at];
            self.header_read += 1;
            *at += 1;
            if self.header_read < 2 {
                continue;
            }
            let header_len = header_len(self.header[1]);
            if self.header_read < header_len {
                continue;
            }
            let len = payload_len(&self.header);
            self.header_read = 0;
            self.remaining = len;
            return Some(Head {
                opcode: self.header[0] & 0x0F,
                len,
                header_len,
            });
        }
        None
    }
}

/// The client side's gate: message size and rate.
pub struct Gate {
    walker: Walker,
    max_message_size: u64,
    /// The current data message's size so far.
    message: u64,
    /// GCRA over nanoseconds since `epoch`: one message per `interval`, `tolerance` ahead.
    epoch: Instant,
    interval: u64,
    tolerance: u64,
    /// The theoretical arrival time of the next message.
    tat: u64,
    rated: bool,
    /// Stop in front of a close frame (the backend's answer to ours: not passed on).
    stop_at_close: bool,
    /// Stopped: nothing more goes on.
    pub stopped: bool,
    pub refused: Option<Refusal>,
    /// After a refusal: the client's own close frame was seen (it answered ours).
    pub client_closed: bool,
}

impl Gate {
    pub fn new(limits: &MessageLimits) -> Self {
        let interval = limits
            .messages_per_second
            .map_or(0, |rate| 1_000_000_000 / u64::from(rate.max(1)));
        let burst = u64::from(limits.burst.unwrap_or(1).max(1));
        Gate {
            walker: Walker::default(),
            max_message_size: limits.max_message_size.unwrap_or(u64::MAX),
            message: 0,
            epoch: Instant::now(),
            interval,
            tolerance: interval.saturating_mul(burst - 1),
            tat: 0,
            rated: limits.messages_per_second.is_some(),
            stop_at_close: false,
            stopped: false,
            refused: None,
            client_closed: false,
        }
    }

    /// A gate with no limits that stops in front of the first close frame: the backend's
    /// side while it answers our close, so its own close frame does not reach the client.
    pub fn until_close() -> Self {
        Gate {
            stop_at_close: true,
            ..Gate::new(&MessageLimits {
                max_message_size: None,
                messages_per_second: None,
                burst: None,
            })
        }
    }

    /// Whether everything passed on so far ends on a frame boundary (a header held back
    /// was not passed on).
    pub fn at_boundary(&self) -> bool {
        self.walker.remaining == 0
    }

    /// Sees `bytes` the client sent; returns how many of them go on to the backend. Bytes
    /// held back earlier that go on now are put in `before`, to be written first.
    pub fn admit(&mut self, bytes: &[u8], before: &mut Vec<u8>) -> usize {
        if self.stopped {
            self.drain(bytes);
            return 0;
        }
        // Header bytes of earlier reads, not passed on yet.
        let mut held = self.walker.header_read;
        let mut at = 0;
        while let Some(head) = self.walker.next_head(bytes, &mut at) {
            let start = (at + held).saturating_sub(head.header_len);
            if let Err(refusal) = self.check(&head) {
                self.stopped = true;
                self.refused = refusal;
                self.drain(&bytes[at..]);
                return start;
            }
            if held > 0 {
                before.extend_from_slice(&self.walker.header[..held]);
                held = 0;
            }
        }
        // A header cut by the end of this read waits for its end.
        (bytes.len() + held).saturating_sub(self.walker.header_read)
    }

    /// `Err(None)`: a close frame to stop at.
    fn check(&mut self, head: &Head) -> Result<(), Option<Refusal>> {
        if head.opcode == 8 && self.stop_at_close {
            return Err(None);
        }
        if head.opcode >= 8 {
            return Ok(()); // control frames: at most 125 bytes, not messages
        }
        if head.opcode != 0 {
            self.message = 0;
        }
        self.message = self.message.saturating_add(head.len);
        if self.message > self.max_message_size {
            return Err(Some(Refusal::TooBig));
        }
        if self.rated && head.opcode != 0 {
            let now = self.epoch.elapsed().as_nanos() as u64;
            let tat = self.tat.max(now);
            if tat - now > self.tolerance {
                return Err(Some(Refusal::TooFast));
            }
            self.tat = tat + self.interval;
        }
        Ok(())
    }

    /// Follows frames after a refusal, looking for the client's close frame.
    pub fn drain(&mut self, bytes: &[u8]) {
        let mut at = 0;
        while let Some(head) = self.walker.next_head(bytes, &mut at) {
            if head.opcode == 8 {
                self.client_closed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, fin: bool, len: usize) -> Vec<u8> {
        let mut frame = vec![opcode | if fin { 0x80 } else { 0 }];
        match len {
            0..=125 => frame.push(0x80 | len as u8),
            126..=65535 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[1, 2, 3, 4]);
        frame.extend(std::iter::repeat_n(0x5A, len));
        frame
    }

    /// What a gate passes of `stream` read in `chunk`-sized pieces, and its refusal.
    fn pass(limits: MessageLimits, stream: &[u8], chunk: usize) -> (Vec<u8>, Option<Refusal>) {
        let mut gate = Gate::new(&limits);
        let mut passed = Vec::new();
        for piece in stream.chunks(chunk) {
            let mut before = Vec::new();
            let kept = gate.admit(piece, &mut before);
            passed.extend_from_slice(&before);
            passed.extend_from_slice(&piece[..kept]);
        }
        (passed, gate.refused)
    }

    const SIZE: MessageLimits = MessageLimits {
        max_message_size: Some(1000),
        messages_per_second: None,
        burst: None,
    };

    #[test]
    fn messages_within_the_limit_pass_whole_in_any_chunking() {
        let stream = [
            frame(1, true, 1000),
            frame(9, true, 5),
            frame(2, false, 600),
            frame(10, true, 0),
            frame(0, true, 400),
            frame(2, true, 126),
        ]
        .concat();
        for chunk in [1, 2, 3, 5, 13, 14, 100, 4096, stream.len()] {
            assert_eq!(
                pass(SIZE, &stream, chunk),
                (stream.clone(), None),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn the_frame_that_takes_a_message_over_the_limit_never_passes_not_even_its_header() {
        let ok = frame(1, true, 10);
        // 600 + 401: the second fragment crosses the limit.
        let fragments = [frame(2, false, 600), frame(9, true, 3), frame(0, true, 401)].concat();
        let after = frame(1, true, 5);
        let stream = [ok.clone(), fragments.clone(), after].concat();
        let cut = ok.len() + fragments.len() - frame(0, true, 401).len();
        for chunk in [1, 2, 3, 7, 13, 100, 4096, stream.len()] {
            let (passed, refused) = pass(SIZE, &stream, chunk);
            assert_eq!(refused, Some(Refusal::TooBig), "chunk {chunk}");
            assert_eq!(passed, stream[..cut], "chunk {chunk}");
        }
        let (passed, refused) = pass(SIZE, &frame(2, true, 70_000), 3);
        assert_eq!((passed.len(), refused), (0, Some(Refusal::TooBig)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_allows_the_burst_then_one_message_per_interval() {
        let limits = MessageLimits {
            max_message_size: None,
            messages_per_second: Some(10),
            burst: Some(3),
        };
        let mut gate = Gate::new(&limits);
        let message = frame(1, true, 4);
        let send = |gate: &mut Gate| gate.admit(&message, &mut Vec::new()) == message.len();
        assert!(
            send(&mut gate) && send(&mut gate) && send(&mut gate),
            "the burst"
        );
        // Pings and continuation frames are not messages.
        assert_eq!(gate.admit(&frame(9, true, 1), &mut Vec::new()), 7);
        assert!(!send(&mut gate), "a fourth at once");
        assert_eq!(gate.refused, Some(Refusal::TooFast));

        let mut gate = Gate::new(&limits);
        for _ in 0..3 {
            assert!(send(&mut gate));
        }
        tokio::time::advance(std::time::Duration::from_millis(100)).await;
        assert!(send(&mut gate), "one more after 100 ms");
        assert!(!send(&mut gate));
    }

    #[test]
    fn after_a_refusal_the_clients_close_frame_is_found() {
        let mut gate = Gate::new(&SIZE);
        let stream = [frame(2, true, 2000), frame(1, true, 3), frame(8, true, 2)].concat();
        assert_eq!(gate.admit(&stream[..50], &mut Vec::new()), 0);
        assert!(!gate.client_closed);
        assert_eq!(gate.admit(&stream[50..], &mut Vec::new()), 0);
        assert!(gate.client_closed);
    }

    #[test]
    fn until_close_passes_everything_before_the_close_frame() {
        let stream = [
            frame(1, true, 300),
            frame(9, true, 2),
            frame(8, true, 2),
            frame(1, true, 1),
        ]
        .concat();
        let cut = stream.len() - frame(8, true, 2).len() - frame(1, true, 1).len();
        for chunk in [1, 2, 3, 9, stream.len()] {
            let mut gate = Gate::until_close();
            let mut passed = Vec::new();
            for piece in stream.chunks(chunk) {
                let mut before = Vec::new();
                let kept = gate.admit(piece, &mut before);
                passed.extend_from_slice(&before);
                passed.extend_from_slice(&piece[..kept]);
            }
            assert!(gate.stopped && gate.refused.is_none() && gate.at_boundary());
            assert_eq!(passed, stream[..cut], "chunk {chunk}");
        }
    }

    #[test]
    fn close_frames_carry_the_code_and_reason() {
        let frame = Refusal::TooBig.close_frame(false);
        assert_eq!(&frame[..4], &[0x88, 17, 0x03, 0xF1]);
        assert_eq!(&frame[4..], b"message too big");
        let masked = Refusal::TooFast.close_frame(true);
        assert_eq!(masked[1], 0x80 | 23);
        let key = &masked[2..6];
        let payload: Vec<u8> = masked[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(&payload[..2], &1008u16.to_be_bytes());
        assert_eq!(&payload[2..], b"message rate exceeded");
    }
}
