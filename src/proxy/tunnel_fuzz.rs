//! Property tests of the WebSocket frame walker and the relay (docs/LIFECYCLE.md,
//! "WebSocket frame-aware splice"). Seeds: frames written by tungstenite's encoder, whose
//! header parser is also the oracle for where frames end in mutated streams.

use proptest::prelude::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

use super::*;
use crate::fuzzing::{self, cuts, split};

/// Payload lengths around each length encoding's edges, and some in between.
fn payload_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 0usize..130,
        2 => prop::sample::select(vec![125, 126, 127, 65_535, 65_536, 70_000]),
        1 => 130usize..3000,
    ]
}

/// (opcode, payload length, masked, final)
fn frame_spec() -> impl Strategy<Value = (u8, usize, bool, bool)> {
    (
        prop::sample::select(vec![0u8, 1, 2, 8, 9, 10]),
        payload_len(),
        any::<bool>(),
        any::<bool>(),
    )
}

/// Frames as tungstenite writes them, and where each ends in the stream.
fn encode(specs: &[(u8, usize, bool, bool)]) -> (Vec<u8>, Vec<usize>) {
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    for (opcode, len, masked, is_final) in specs {
        let opcode = match opcode {
            0 => OpCode::Data(Data::Continue),
            1 => OpCode::Data(Data::Text),
            2 => OpCode::Data(Data::Binary),
            8 => OpCode::Control(Control::Close),
            9 => OpCode::Control(Control::Ping),
            _ => OpCode::Control(Control::Pong),
        };
        let header = FrameHeader {
            is_final: *is_final,
            opcode,
            mask: masked.then_some([1, 2, 3, 4]),
            ..FrameHeader::default()
        };
        let payload = Bytes::from(vec![0x5a; *len]);
        Frame::from_payload(header, payload)
            .format(&mut stream)
            .expect("a frame");
        ends.push(stream.len());
    }
    (stream, ends)
}

/// Where frames end, as tungstenite's header parser reads them, until it cannot go on.
fn oracle_ends(stream: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0usize;
    while at < stream.len() {
        let mut cursor = std::io::Cursor::new(&stream[at..]);
        let Ok(Some((_, length))) = FrameHeader::parse(&mut cursor) else {
            break;
        };
        let end = (at as u64)
            .checked_add(cursor.position())
            .and_then(|end| end.checked_add(length));
        match end {
            Some(end) if end <= stream.len() as u64 => {
                at = end as usize;
                ends.push(at);
            }
            _ => break,
        }
    }
    ends
}

/// Walks `pieces` as the splice does when a route is removed (stopping at each boundary) and
/// returns every boundary passed, checking that each call takes bytes or stops at one.
fn walk(pieces: &[Vec<u8>]) -> Vec<usize> {
    let mut tracker = FrameBoundary::default();
    let mut seen = Vec::new();
    let mut position = 0;
    for piece in pieces {
        let mut start = 0;
        while start < piece.len() {
            let taken = tracker.consume(&piece[start..], true);
            assert!(
                taken > 0 || tracker.at_boundary(),
                "no progress off a boundary"
            );
            start += taken;
            assert!(tracker.header_read < 14);
            if tracker.at_boundary() && seen.last() != Some(&(position + start)) {
                seen.push(position + start);
            }
            if start < piece.len() {
                // Past the boundary, as the normal splice (which takes everything) goes on.
                assert_eq!(tracker.consume(&piece[start..start + 1], false), 1);
                start += 1;
                if tracker.at_boundary() {
                    seen.push(position + start);
                }
            }
        }
        position += piece.len();
    }
    seen.retain(|at| *at > 0);
    seen
}

proptest! {
    #![proptest_config(fuzzing::config(3000))]

    /// Real frames, read in any chunks: every frame end is found, and no other.
    #[test]
    fn fuzz_frames_split_anywhere_end_where_they_do(
        specs in prop::collection::vec(frame_spec(), 1..12),
        cuts in cuts(),
    ) {
        let (stream, ends) = encode(&specs);
        prop_assert_eq!(oracle_ends(&stream), ends.clone());
        prop_assert_eq!(walk(&split(&stream, &cuts)), ends);
    }

    /// Any bytes (mutated frames or noise): the walker takes everything when asked to, never
    /// panics, and agrees with tungstenite's reading for as far as that goes.
    #[test]
    fn fuzz_frames_mutated_agree_with_tungstenite(
        specs in prop::collection::vec(frame_spec(), 1..6),
        mutations in fuzzing::mutations(),
        cuts in cuts(),
    ) {
        let (stream, _) = encode(&specs);
        let stream = fuzzing::apply(stream, &mutations);
        let mut everything = FrameBoundary::default();
        for piece in split(&stream, &cuts) {
            prop_assert_eq!(everything.consume(&piece, false), piece.len());
            prop_assert_eq!(pass_all(&piece, &mut Vec::new()), piece.len());
        }
        let ours = walk(&split(&stream, &cuts));
        let theirs = oracle_ends(&stream);
        prop_assert_eq!(&ours[..theirs.len().min(ours.len())], &theirs[..]);
        // The message gate on the same bytes: never panics, passes a prefix.
        let (passed, _) = gate_pass(300, &split(&stream, &cuts));
        prop_assert_eq!(&passed[..], &stream[..passed.len()]);
    }

    /// The message-size gate over real frames in any chunks passes exactly the frames in
    /// front of the first one that takes a message over the limit (a new data frame starts a
    /// message, a continuation adds to it, control frames do not count).
    #[test]
    fn fuzz_gate_cuts_in_front_of_the_first_frame_over_the_limit(
        specs in prop::collection::vec(frame_spec(), 1..12),
        limit in 0u64..4000,
        cuts in cuts(),
    ) {
        let (stream, ends) = encode(&specs);
        let mut message = 0u64;
        let mut cut = None;
        for (i, (opcode, len, _, _)) in specs.iter().enumerate() {
            if *opcode >= 8 {
                continue;
            }
            if *opcode != 0 {
                message = 0;
            }
            message += *len as u64;
            if message > limit {
                cut = Some(if i == 0 { 0 } else { ends[i - 1] });
                break;
            }
        }
        let (passed, refused) = gate_pass(limit, &split(&stream, &cuts));
        prop_assert_eq!(refused, cut.map(|_| Refusal::TooBig));
        prop_assert_eq!(&passed[..], &stream[..cut.unwrap_or(stream.len())]);
    }
}

/// What a gate holding messages to `limit` bytes passes of `pieces`, and its refusal.
fn gate_pass(limit: u64, pieces: &[Vec<u8>]) -> (Vec<u8>, Option<Refusal>) {
    let mut gate = Gate::new(&crate::config::websocket::MessageLimits {
        max_message_size: Some(limit),
        messages_per_second: None,
        burst: None,
    });
    let mut passed = Vec::new();
    for piece in pieces {
        let mut held = Vec::new();
        let kept = gate.admit(piece, &mut held);
        passed.extend_from_slice(&held);
        passed.extend_from_slice(&piece[..kept]);
    }
    (passed, gate.refused)
}

/// Bytes from `pieces`, relayed through `Relay::relay` with `pass_all` into a pipe of
/// `room` bytes that a slow reader drains: what arrives is what was sent.
fn relay_through(pieces: Vec<Vec<u8>>, room: usize) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let (mut source, mut from) = tokio::io::duplex(64 * 1024);
        let (mut to, mut sink) = tokio::io::duplex(room);
        let writer = async move {
            for piece in pieces {
                source.write_all(&piece).await.expect("write");
                tokio::task::yield_now().await;
            }
            drop(source);
        };
        let reader = async move {
            let mut received = Vec::new();
            sink.read_to_end(&mut received).await.expect("read");
            received
        };
        let relay = async move {
            let mut relay = Relay::default();
            while relay
                .relay(&mut from, &mut to, pass_all)
                .await
                .expect("relay")
                > 0
            {}
            relay.finish(&mut to).await.expect("finish");
            drop(to);
        };
        let ((), received, ()) = tokio::join!(writer, reader, relay);
        received
    })
}

proptest! {
    #![proptest_config(fuzzing::config(1000))]

    /// The relay passes every byte, in order, whatever the chunks and however little room
    /// the destination has.
    #[test]
    fn fuzz_relay_passes_every_byte(
        bytes in prop::collection::vec(any::<u8>(), 0..40_000),
        cuts in cuts(),
        room in 1usize..5000,
    ) {
        let received = relay_through(split(&bytes, &cuts), room);
        prop_assert_eq!(received, bytes);
    }
}
