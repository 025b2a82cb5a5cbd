//! Hostile HTTP/2 clients, written frame by frame over a rustls stream with ALPN `h2`: rapid
//! reset (CVE-2023-44487), CONTINUATION floods, an HPACK bomb, SETTINGS and PING floods, and
//! more streams than the 200 the server advertises. Each attack is ended (GOAWAY, a refused
//! stream, or the connection closed) within a bounded number of frames or a configured limit,
//! while a normal client is served.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::hostile::*;
use common::*;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix, `flags` in the bits above it.
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal string, not Huffman-coded.
fn hpack_str(out: &mut Vec<u8>, text: &[u8]) {
    hpack_int(out, 0, 7, text.len());
    out.extend_from_slice(text);
}

/// `GET https://localhost{path}`: static-table pseudo-headers and literal values.
fn request_block(path: &str) -> Vec<u8> {
    let mut out = vec![0x82, 0x87]; // :method GET, :scheme https
    out.push(0x04); // :path, literal without indexing
    hpack_str(&mut out, path.as_bytes());
    out.push(0x01); // :authority, literal without indexing
    hpack_str(&mut out, b"localhost");
    out
}

/// What the attacker has read from the server.
#[derive(Debug, Default)]
struct Seen {
    frames: usize,
    headers: usize,
    /// (stream, error code)
    resets: Vec<(u32, u32)>,
    goaway: Option<u32>,
    settings_acks: usize,
    ping_acks: usize,
    closed: bool,
}

/// A hand-driven HTTP/2 connection: the preface and SETTINGS exchange done, a task reading
/// (and counting) what the server sends.
struct RawH2 {
    write: WriteHalf<TlsStream<TcpStream>>,
    seen: Arc<Mutex<Seen>>,
    started: Instant,
    /// The read half when nothing reads it (held, so this side stays open).
    _unread: Option<ReadHalf<TlsStream<TcpStream>>>,
    /// The reader task, which holds the read half; ended with this connection.
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for RawH2 {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

impl RawH2 {
    /// Connected, with a reader task unless `read` is false (the server's writes then back up).
    async fn connect(server: &TestServer, ca: &CertificateDer<'static>, read: bool) -> Self {
        let config = client_config(std::slice::from_ref(ca), rustls::ALL_VERSIONS, &[b"h2"]);
        let tls = tls_connect(server.main, "localhost", config).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut read_half, mut write) = tokio::io::split(tls);
        write
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        write.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        // The server's SETTINGS come first; acknowledge them.
        let (kind, flags, _, _) = read_frame(&mut read_half).await.expect("server SETTINGS");
        assert_eq!((kind, flags & ACK), (SETTINGS, 0));
        write
            .write_all(&frame(SETTINGS, ACK, 0, &[]))
            .await
            .unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut unread = None;
        let mut reader = None;
        if read {
            let log = seen.clone();
            reader = Some(tokio::spawn(async move {
                loop {
                    let Some((kind, flags, stream, payload)) = read_frame(&mut read_half).await
                    else {
                        log.lock().unwrap().closed = true;
                        return;
                    };
                    let mut seen = log.lock().unwrap();
                    seen.frames += 1;
                    let code = |at: usize| {
                        payload
                            .get(at..at + 4)
                            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(0)
                    };
                    match kind {
                        HEADERS => seen.headers += 1,
                        RST_STREAM => seen.resets.push((stream, code(0))),
                        GOAWAY => seen.goaway = Some(code(4)),
                        SETTINGS if flags & ACK != 0 => seen.settings_acks += 1,
                        PING if flags & ACK != 0 => seen.ping_acks += 1,
                        _ => {}
                    }
                }
            }));
        } else {
            unread = Some(read_half);
        }
        Self {
            write,
            seen,
            started: Instant::now(),
            _unread: unread,
            reader,
        }
    }

    /// Writes `bytes`; false once the connection is gone or the server stopped reading for
    /// `stall`.
    async fn send(&mut self, bytes: &[u8], stall: Duration) -> bool {
        matches!(
            tokio::time::timeout(stall, self.write.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    fn ended(&self) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.closed || seen.goaway.is_some()
    }

    /// Waits up to `limit` for a GOAWAY or the close; the time since connecting.
    async fn wait_end(&self, limit: Duration) -> Option<Duration> {
        within(limit, || self.ended())
            .await
            .map(|_| self.started.elapsed())
    }
}

async fn read_frame<R: AsyncReadExt + Unpin>(read: &mut R) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    read.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    read.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], stream, payload))
}

async fn h2_site(
    extra: &str,
) -> (
    Backend,
    tempfile::TempDir,
    TestServer,
    CertificateDer<'static>,
) {
    let backend = Backend::recording().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = proxy_to(dir.path(), &backend.url(), extra).await;
    (backend, dir, server, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_ended_with_goaway_and_spares_the_backend() {
    let (backend, _dir, server, ca) = h2_site("").await;
    let baseline = open_connections(&server).await;
    let mut attacker = RawH2::connect(&server, &ca, true).await;
    // HEADERS + RST_STREAM(CANCEL), 100 pairs a write, up to 10,000 streams.
    let mut streams = 0u32;
    while streams < 10_000 && !attacker.ended() {
        let mut batch = Vec::new();
        for _ in 0..100 {
            let id = streams * 2 + 1;
            batch.extend(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                id,
                &request_block("/rapid"),
            ));
            batch.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
            streams += 1;
        }
        if !attacker.send(&batch, Duration::from_secs(2)).await {
            break;
        }
    }
    let ended = attacker.wait_end(Duration::from_secs(5)).await;
    let seen = format!("{:?}", attacker.seen.lock().unwrap());
    let reached = backend
        .requests()
        .iter()
        .filter(|r| r.path == "/rapid")
        .count();
    eprintln!("rapid reset: {streams} streams sent, ended after {ended:?}, {reached} reached the backend; {seen}");
    assert!(
        ended.is_some(),
        "the connection outlived {streams} resets: {seen}"
    );
    assert!(streams < 10_000, "all 10,000 resets were taken: {seen}");
    assert!(
        reached < 1_000,
        "{reached} reset requests reached the backend"
    );
    let latency = normal_client_is_served(&server, &ca).await;
    let back = connections_back_to(&server, baseline, Duration::from_secs(5)).await;
    eprintln!("normal client {latency:?}; connections back to baseline: {back:?}");
    assert!(back.is_ok(), "{back:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_continuation_floods_are_cut_within_the_header_list_limit() {
    let (backend, _dir, server, ca) = h2_site("").await;
    let baseline = open_connections(&server).await;
    // Large CONTINUATION frames full of literal headers, and empty ones: both unending.
    let mut filler = Vec::new();
    while filler.len() < 16_000 {
        filler.push(0x00); // literal without indexing, new name
        hpack_str(&mut filler, b"x-flood");
        hpack_str(&mut filler, &[b'a'; 100]);
    }
    for (name, payload) in [("16 KB", filler.clone()), ("empty", Vec::new())] {
        let mut attacker = RawH2::connect(&server, &ca, true).await;
        assert!(
            attacker
                .send(
                    &frame(HEADERS, END_STREAM, 1, &request_block("/continued")),
                    Duration::from_secs(2)
                )
                .await
        );
        let one = frame(CONTINUATION, 0, 1, &payload);
        let mut sent = 0usize;
        while sent < 100_000 && !attacker.ended() {
            let batch: Vec<u8> = std::iter::repeat_n(one.as_slice(), 50)
                .flatten()
                .copied()
                .collect();
            if !attacker.send(&batch, Duration::from_secs(2)).await {
                break;
            }
            sent += 50;
        }
        let ended = attacker.wait_end(Duration::from_secs(5)).await;
        let seen = format!("{:?}", attacker.seen.lock().unwrap());
        eprintln!("CONTINUATION flood ({name}): ended after {sent} frames, {ended:?}; {seen}");
        assert!(
            ended.is_some(),
            "{name}: still open after {sent} CONTINUATION frames"
        );
        assert!(sent < 100_000, "{name}: {sent} CONTINUATION frames taken");
    }
    assert!(
        backend.requests().iter().all(|r| r.path != "/continued"),
        "an unfinished header block reached the backend"
    );
    normal_client_is_served(&server, &ca).await;
    assert!(
        connections_back_to(&server, baseline, Duration::from_secs(5))
            .await
            .is_ok()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpack_bomb_is_refused_at_the_header_list_limit_without_decoding_it_whole() {
    let (backend, _dir, server, ca) = h2_site("").await;
    let rss_before = rss_kib();
    let mut attacker = RawH2::connect(&server, &ca, true).await;
    // One 4 KB header put in the dynamic table, then referenced 4,000 times per block (16 MB
    // decoded from 8 KB sent), on 50 streams.
    let mut sent = 0;
    for stream in 0..50u32 {
        let mut block = request_block("/bomb");
        block.push(0x40); // literal with incremental indexing, new name
        hpack_str(&mut block, b"x-bomb");
        hpack_str(&mut block, &[b'b'; 4000]);
        block.extend(std::iter::repeat_n(0xbe, 4000)); // indexed: dynamic entry 62
        if !attacker
            .send(
                &frame(HEADERS, END_HEADERS | END_STREAM, stream * 2 + 1, &block),
                Duration::from_secs(2),
            )
            .await
        {
            break;
        }
        sent += 1;
    }
    // Each stream is refused (RST_STREAM or a 431), or the connection is ended.
    let answered = within(Duration::from_secs(5), || {
        let seen = attacker.seen.lock().unwrap();
        seen.closed || seen.goaway.is_some() || seen.resets.len() + seen.headers >= sent
    })
    .await;
    let seen = format!("{:?}", attacker.seen.lock().unwrap());
    let grown = rss_kib().saturating_sub(rss_before);
    eprintln!("HPACK bomb: {sent} blocks sent, answered in {answered:?}, RSS +{grown} KiB; {seen}");
    assert!(answered.is_some(), "{seen}");
    assert!(
        backend.requests().iter().all(|r| r.path != "/bomb"),
        "a bombed header list reached the backend"
    );
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    normal_client_is_served(&server, &ca).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_settings_and_ping_floods_are_closed_as_idle_or_for_not_reading() {
    let (_backend, _dir, server, ca) =
        h2_site("limits:\n  idle_timeout: 2s\n  send_timeout: 2s\n").await;
    let baseline = open_connections(&server).await;
    // A reading attacker: SETTINGS (or PINGs) as fast as it can. Control frames are not
    // activity, so idle_timeout ends it.
    let mut setting = vec![0x00, 0x01]; // SETTINGS_HEADER_TABLE_SIZE
    setting.extend_from_slice(&4096u32.to_be_bytes());
    for (name, one) in [
        ("SETTINGS", frame(SETTINGS, 0, 0, &setting)),
        ("PING", frame(PING, 0, 0, &[7; 8])),
    ] {
        let mut attacker = RawH2::connect(&server, &ca, true).await;
        let batch: Vec<u8> = std::iter::repeat_n(one.as_slice(), 200)
            .flatten()
            .copied()
            .collect();
        let mut sent = 0usize;
        let mut served = None;
        while !attacker.ended() && attacker.started.elapsed() < Duration::from_secs(10) {
            if !attacker.send(&batch, Duration::from_secs(3)).await {
                break;
            }
            sent += 200;
            if served.is_none() && attacker.started.elapsed() > Duration::from_millis(500) {
                served = Some(normal_client_is_served(&server, &ca).await);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ended = attacker.wait_end(Duration::from_secs(5)).await;
        let seen = format!("{:?}", attacker.seen.lock().unwrap());
        eprintln!("{name} flood (reading): {sent} frames, ended at {ended:?}, normal client {served:?}; {seen}");
        let ended = ended.expect("the flooding connection is ended");
        assert!(
            ended < Duration::from_secs(6),
            "{name}: ended only after {ended:?}"
        );
    }
    // A PING flood that never reads the PING ACKs: the server's writes back up, and
    // send_timeout cuts it.
    assert!(
        connections_back_to(&server, baseline, Duration::from_secs(5))
            .await
            .is_ok()
    );
    let mut attacker = RawH2::connect(&server, &ca, false).await;
    let batch: Vec<u8> = std::iter::repeat_n(frame(PING, 0, 0, &[9; 8]), 1000)
        .flatten()
        .collect();
    let mut sent = 0usize;
    while attacker.send(&batch, Duration::from_secs(1)).await {
        sent += 1000;
        assert!(
            attacker.started.elapsed() < Duration::from_secs(20),
            "{sent} PINGs and the server still reads"
        );
    }
    let stalled = Instant::now();
    // The server stopped reading (its PING ACKs have nowhere to go); its connection is
    // dropped send_timeout (2 s) after its writes blocked.
    let cut = connections_back_to(&server, baseline, Duration::from_secs(10)).await;
    eprintln!(
        "PING flood (not reading): {sent} PINGs before the stall at {:?}, connection closed {cut:?} later",
        stalled - attacker.started
    );
    assert!(
        cut.is_ok(),
        "the non-reading PING flooder still holds its connection: {cut:?}"
    );
    drop(attacker);
    normal_client_is_served(&server, &ca).await;
    assert!(
        connections_back_to(&server, baseline, Duration::from_secs(5))
            .await
            .is_ok()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_advertised_200_are_refused() {
    let (backend, _dir, server, ca) = h2_site("").await;
    let baseline = open_connections(&server).await;
    let mut attacker = RawH2::connect(&server, &ca, true).await;
    // 300 requests whose bodies never end: each holds its stream open.
    let mut batch = Vec::new();
    for stream in 0..300u32 {
        batch.extend(frame(
            HEADERS,
            END_HEADERS,
            stream * 2 + 1,
            &request_block("/held"),
        ));
    }
    assert!(attacker.send(&batch, Duration::from_secs(5)).await);
    let refused = within(Duration::from_secs(5), || {
        let seen = attacker.seen.lock().unwrap();
        seen.resets
            .iter()
            .filter(|(_, code)| *code == REFUSED_STREAM)
            .count()
            >= 100
    })
    .await;
    // Each admitted stream holds a backend connection (its upload never ends).
    let held = within(Duration::from_secs(5), || backend.accepted() >= 200).await;
    let seen = format!("{:?}", attacker.seen.lock().unwrap().resets.len());
    let reached = backend.accepted();
    eprintln!("300 streams: refused after {refused:?}, {reached} reached the backend (held after {held:?}); resets {seen}");
    assert!(
        refused.is_some(),
        "streams over 200 were not refused: {seen}"
    );
    assert!(reached <= 200, "{reached} streams reached the backend");
    normal_client_is_served(&server, &ca).await;
    // The held streams end with their connection.
    drop(attacker);
    let back = connections_back_to(&server, baseline, Duration::from_secs(5)).await;
    assert!(back.is_ok(), "{back:?}");
    server.stop().await;
}

/// A client that waits 5 ms between each HEADERS and its RST_STREAM has every stream
/// dispatched before it is reset, so h2's pending-accept reset limit never counts it (before
/// the fix: 3,000 streams taken, 825 requests reached the backend, no GOAWAY). The connection
/// watch drops a connection whose client abandoned most of over 100 dispatched requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_paced_at_5_ms_is_ended_too() {
    paced_rapid_reset(Duration::from_millis(5)).await;
}

/// HEADERS, `pause`, RST_STREAM, up to 3,000 times: the stream may be accepted (its request
/// started) before it is reset, which h2's pending-accept count does not see.
async fn paced_rapid_reset(pause: Duration) {
    let (backend, _dir, server, ca) = h2_site("").await;
    let mut attacker = RawH2::connect(&server, &ca, true).await;
    let mut streams = 0u32;
    while streams < 3000 && !attacker.ended() {
        let id = streams * 2 + 1;
        let headers = frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &request_block("/paced"),
        );
        if !attacker.send(&headers, Duration::from_secs(2)).await {
            break;
        }
        tokio::time::sleep(pause).await;
        let reset = frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes());
        if !attacker.send(&reset, Duration::from_secs(2)).await {
            break;
        }
        streams += 1;
    }
    let ended = attacker.wait_end(Duration::from_secs(3)).await;
    let seen = format!("{:?}", attacker.seen.lock().unwrap());
    let reached = backend
        .requests()
        .iter()
        .filter(|r| r.path == "/paced")
        .count();
    eprintln!("rapid reset paced at {pause:?}: {streams} streams, ended at {ended:?}, {reached} reached the backend; {seen}");
    assert!(
        ended.is_some() && streams < 3000,
        "{streams} paced resets taken: {seen}"
    );
    assert!(
        reached <= 150,
        "{reached} reset requests reached the backend"
    );
    normal_client_is_served(&server, &ca).await;
    server.stop().await;
}
