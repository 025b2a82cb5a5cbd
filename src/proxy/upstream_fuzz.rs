//! Property tests of the HTTP/1 response head parser and the chunked body decoder
//! (docs/LIFECYCLE.md, "HTTP/1 upstream client"). Seeds: response heads and a chunked body
//! captured from nginx (`tests/corpus/http1/`), and bodies encoded in-test.

use std::task::Waker;

use proptest::prelude::*;

use super::*;
use crate::fuzzing::{self, corpus, cuts, mutated, split};

/// Captured nginx responses, whole (head and body).
fn responses() -> Vec<Vec<u8>> {
    [
        "http1/nginx-200-length.bin",
        "http1/nginx-200-chunked-gzip.bin",
        "http1/nginx-404.bin",
        "http1/nginx-304.bin",
        "http1/nginx-head-http10.bin",
    ]
    .iter()
    .map(|name| corpus(name))
    .collect()
}

fn head_end(response: &[u8]) -> usize {
    response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
        .expect("a head")
}

/// A body decoder with no socket behind it: what it is given is all there is.
fn decoder(buf: &[u8]) -> UpstreamBody {
    UpstreamBody {
        stream: None,
        buf: BytesMut::from(buf),
        framing: ResponseFraming::Chunked(ChunkState::Size),
        reusable: false,
        settle: false,
        upload: None,
        idle: Arc::new(IdleConnections::new(0, Duration::from_secs(1))),
        read_timeout: Duration::from_secs(1),
        send_timeout: Duration::from_secs(1),
        stall: StallTimer::default(),
        received: 0,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    /// The body ended: its data, and the bytes after it (left for the next response).
    Done {
        data: Vec<u8>,
        rest: Vec<u8>,
    },
    Failed(&'static str),
    /// It waits for more.
    Waiting,
}

/// Decodes `pieces` as they arrive, stepping as `UpstreamBody::poll_next` does: on while a
/// step changes something, else read more. Checks that a wait holds no more than the limits
/// allow (a read of `READ_CHUNK` comes on top in the real body).
fn decode(pieces: &[Vec<u8>]) -> Decoded {
    let mut body = decoder(b"");
    let mut data = Vec::new();
    for (at, piece) in pieces.iter().enumerate() {
        body.buf.extend_from_slice(piece);
        while let ResponseFraming::Chunked(state) = body.framing {
            let before = body.buf.len();
            match body.step_chunked(state) {
                Err(BodyError::Chunk(reason)) => return Decoded::Failed(reason),
                Err(other) => panic!("not a decoding error: {other}"),
                Ok(Some(bytes)) => {
                    assert!(!bytes.is_empty(), "an empty data frame");
                    data.extend_from_slice(&bytes);
                }
                Ok(None) if body.framing == ResponseFraming::Chunked(state) => {
                    assert!(body.buf.len() == before, "consumed without a state change");
                    match state {
                        ChunkState::Size => assert!(body.buf.len() <= MAX_CHUNK_LINE),
                        ChunkState::Data(_) => assert!(body.buf.is_empty()),
                        ChunkState::DataEnd => assert!(body.buf.len() < 2),
                        ChunkState::Trailers(seen) => {
                            assert!(seen + body.buf.len() <= MAX_TRAILER_BYTES)
                        }
                    }
                    break;
                }
                Ok(None) => {}
            }
            if let ResponseFraming::Chunked(ChunkState::Trailers(seen)) = body.framing {
                assert!(
                    seen <= MAX_TRAILER_BYTES,
                    "trailers beyond the limit: {seen}"
                );
            }
        }
        if body.framing == ResponseFraming::Done {
            let mut rest = body.buf.to_vec();
            rest.extend(pieces[at + 1..].concat());
            return Decoded::Done { data, rest };
        }
    }
    Decoded::Waiting
}

/// The real `poll_next` over `bytes`, all there is: frames until the end or an error, with a
/// bounded number of polls.
fn poll_whole(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = decoder(bytes);
    let mut cx = Context::from_waker(Waker::noop());
    let mut data = Vec::new();
    for _ in 0..=bytes.len() + 2 {
        match body.poll_next(&mut cx) {
            Poll::Ready(None) => return Ok(data),
            Poll::Ready(Some(Ok(bytes))) => data.extend_from_slice(&bytes),
            Poll::Ready(Some(Err(error))) => return Err(error.to_string()),
            Poll::Pending => panic!("pending with no socket"),
        }
    }
    panic!("no end after more polls than bytes");
}

/// A chunked encoding of `chunks`, with the given chunk extensions and trailer fields.
fn encode(
    chunks: &[Vec<u8>],
    extension: bool,
    upper: bool,
    trailers: &[(String, String)],
) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        let size = if upper {
            format!("{:X}", chunk.len())
        } else {
            format!("{:x}", chunk.len())
        };
        out.extend_from_slice(size.as_bytes());
        if extension {
            out.extend_from_slice(b" ;name=\"va lue\"");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn chunked_seeds() -> Vec<Vec<u8>> {
    let nginx = corpus("http1/nginx-200-chunked-gzip.bin");
    vec![
        nginx[head_end(&nginx)..].to_vec(),
        encode(&[b"hello".to_vec(), vec![0; 300]], true, false, &[]),
        encode(
            &[b"x".to_vec()],
            false,
            true,
            &[("etag".into(), "\"1\"".into())],
        ),
    ]
}

#[test]
fn fuzz_heads_split_at_every_byte_parse_as_whole() {
    for response in responses() {
        let end = head_end(&response);
        let mut whole = BytesMut::from(&response[..]);
        let head = parse_head(&mut whole).expect("it parses").expect("whole");
        assert_eq!(&whole[..], &response[end..], "the body stays in the buffer");
        for cut in 0..end {
            let mut prefix = BytesMut::from(&response[..cut]);
            assert!(
                parse_head(&mut prefix).expect("a prefix").is_none(),
                "cut {cut}"
            );
            assert_eq!(prefix.len(), cut, "an incomplete head is left as it is");
        }
        let nginx_chunked = head.framing == ResponseFraming::Chunked(ChunkState::Size);
        assert_eq!(nginx_chunked, response.windows(7).any(|w| w == b"chunked"));
    }
}

#[test]
fn fuzz_captured_chunked_body_decodes_at_every_split() {
    let nginx = corpus("http1/nginx-200-chunked-gzip.bin");
    let body = &nginx[head_end(&nginx)..];
    let Decoded::Done { data, rest } = decode(&[body.to_vec()]) else {
        panic!("the captured body decodes");
    };
    assert!(
        rest.is_empty() && data.starts_with(&[0x1f, 0x8b]),
        "gzip data"
    );
    assert_eq!(poll_whole(body), Ok(data.clone()));
    for cut in 0..=body.len() {
        let decoded = decode(&[body[..cut].to_vec(), body[cut..].to_vec()]);
        assert_eq!(
            decoded,
            Decoded::Done {
                data: data.clone(),
                rest: Vec::new()
            },
            "cut {cut}"
        );
    }
}

/// A spec of chunk-size lines written apart from the parser (RFC 9112 §7.1).
fn chunk_size_spec(line: &[u8]) -> Option<u64> {
    if line.len() > MAX_CHUNK_LINE || line.contains(&b'\r') || line.contains(&b'\n') {
        return None;
    }
    let digits: String = line
        .iter()
        .take_while(|b| b.is_ascii_hexdigit())
        .map(|b| char::from(*b))
        .collect();
    let rest = &line[digits.len()..];
    let rest = rest
        .iter()
        .skip_while(|b| **b == b' ' || **b == b'\t')
        .copied()
        .collect::<Vec<u8>>();
    if digits.is_empty() || !(rest.is_empty() || rest[0] == b';') {
        return None;
    }
    if rest
        .iter()
        .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
    {
        return None;
    }
    u64::from_str_radix(&digits, 16).ok()
}

proptest! {
    #![proptest_config(fuzzing::config(3000))]

    /// A valid head cut anywhere: incomplete until whole, then the same head, the body left.
    #[test]
    fn fuzz_head_mutated_never_panics_and_keeps_framing_coherent(
        bytes in mutated(responses()),
    ) {
        let mut buf = BytesMut::from(&bytes[..]);
        match parse_head(&mut buf) {
            Ok(Some(head)) => {
                prop_assert!(buf.len() < bytes.len(), "a head consumes bytes");
                prop_assert!(head.headers.len() <= MAX_HEADERS);
                if matches!(head.framing, ResponseFraming::Chunked(_)) {
                    prop_assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
                }
            }
            Ok(None) => prop_assert_eq!(buf.len(), bytes.len()),
            Err(_) => {}
        }
    }

    /// A valid chunked body, split anywhere, decodes to its data; what follows stays.
    #[test]
    fn fuzz_chunked_round_trips_at_any_split(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..700), 0..8),
        extension in any::<bool>(),
        upper in any::<bool>(),
        trailers in prop::collection::vec(("[a-z]{1,12}", "[ -~]{0,40}"), 0..4),
        cuts in cuts(),
    ) {
        let body = encode(&chunks, extension, upper, &trailers);
        let mut stream = body.clone();
        stream.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let expected: Vec<u8> = chunks.concat();
        prop_assert_eq!(
            decode(&split(&stream, &cuts)),
            Decoded::Done { data: expected.clone(), rest: b"HTTP/1.1 200 OK\r\n".to_vec() }
        );
        prop_assert_eq!(poll_whole(&body), Ok(expected));
    }

    /// Mutated bodies: no panic, every step progresses or waits within the limits, and the
    /// real `poll_next` ends (data, end or error) within a poll per byte.
    #[test]
    fn fuzz_chunked_mutated_progresses_within_limits(
        bytes in mutated(chunked_seeds()),
        cuts in cuts(),
    ) {
        if let Decoded::Done { data, .. } = decode(&split(&bytes, &cuts)) {
            prop_assert!(data.len() <= bytes.len());
        }
        let _ = poll_whole(&bytes);
    }

    /// However the trailer section comes (many short lines or one long one), more than
    /// `MAX_TRAILER_BYTES` of it is refused.
    #[test]
    fn fuzz_chunked_trailers_are_bounded(
        lines in prop::collection::vec(1usize..3000, 1..40),
        cuts in cuts(),
    ) {
        let mut body = b"3\r\nabc\r\n0\r\n".to_vec();
        let mut section = 0;
        for length in &lines {
            body.extend_from_slice(b"x-t: ");
            body.extend(std::iter::repeat_n(b'a', *length));
            body.extend_from_slice(b"\r\n");
            section += 5 + length + 2;
        }
        body.extend_from_slice(b"\r\n");
        let decoded = decode(&split(&body, &cuts));
        if section + 2 > MAX_TRAILER_BYTES {
            prop_assert_eq!(decoded, Decoded::Failed("trailer section too large"));
        } else {
            prop_assert_eq!(decoded, Decoded::Done { data: b"abc".to_vec(), rest: Vec::new() });
        }
    }

    /// Chunk-size lines against the spec written above.
    #[test]
    fn fuzz_chunk_size_lines_match_the_spec(
        line in prop::collection::vec(
            prop::sample::select(b"0123456789abcdefABCDEFxz ;=\"\t\r\n\x00\x7f".to_vec()),
            0..40,
        ),
    ) {
        prop_assert_eq!(parse_chunk_size(&line).ok(), chunk_size_spec(&line));
    }
}
