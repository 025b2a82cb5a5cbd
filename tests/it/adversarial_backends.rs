//! Hostile backends behind a real server: one that resets mid-body, answers garbage, dribbles
//! its head, sends a 100 MiB header, never answers, or botches a WebSocket upgrade. Each is
//! bounded by a configured limit (or the 64 KiB head limit), the client gets an error or a
//! truncated body rather than a hang, and the next request is served.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::hostile::*;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A GET over its own HTTP/1.1 connection: the status and the body, or the body's error.
async fn get(
    server: &TestServer,
    ca: &rustls::pki_types::CertificateDer<'static>,
    path: &str,
) -> (u16, Result<Bytes, String>) {
    let tls = tls_connect(
        server.main,
        "localhost",
        default_client(std::slice::from_ref(ca)),
    )
    .await
    .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string());
    (status, body)
}

/// Writes `bytes` in `chunk`-sized pieces, counting what the peer took; stops at an error.
async fn write_counted(tcp: &mut TcpStream, total: usize, written: &AtomicUsize) {
    let chunk = vec![b'a'; 64 * 1024];
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len());
        if tcp.write_all(&chunk[..n]).await.is_err() {
            return;
        }
        written.fetch_add(n, Ordering::SeqCst);
        left -= n;
    }
}

/// The misbehaviours, by path; `/hello` (and anything else) is answered normally.
fn hostile(written: Arc<AtomicUsize>) -> impl Fn(Recorded, TcpStream) -> Reply + Send + Sync {
    move |request, mut tcp| {
        let written = written.clone();
        Box::pin(async move {
            match request.path.as_str() {
                "/reset" => {
                    tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                        .await?;
                    tcp.write_all(&[b'r'; 64 * 1024]).await?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    // An RST, not a FIN.
                    #[allow(deprecated)]
                    tcp.set_linger(Some(Duration::ZERO))?;
                    Ok(None)
                }
                "/garbage" => {
                    tcp.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02 not http\r\n\r\n")
                        .await?;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(None)
                }
                "/dribble-head" => {
                    tcp.write_all(b"HTTP/1.1 200 OK\r\nX-Slow: ").await?;
                    for _ in 0..600 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        tcp.write_all(b"a").await?;
                    }
                    Ok(None)
                }
                "/pause-body" => {
                    tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                        .await?;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(None)
                }
                "/huge-header" => {
                    tcp.write_all(b"HTTP/1.1 200 OK\r\nX-Huge: ").await?;
                    write_counted(&mut tcp, 100 << 20, &written).await;
                    Ok(None)
                }
                "/never" => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(None)
                }
                "/ws-200" => {
                    tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
                        .await?;
                    Ok(Some(tcp))
                }
                "/ws-426" => {
                    tcp.write_all(
                        b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
                    )
                    .await?;
                    Ok(Some(tcp))
                }
                "/ws-bad-accept" => {
                    tcp.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n").await?;
                    Ok(Some(tcp))
                }
                "/ws-other-protocol" => {
                    tcp.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n").await?;
                    Ok(Some(tcp))
                }
                "/ws-no-upgrade" => {
                    tcp.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
                        .await?;
                    Ok(Some(tcp))
                }
                _ => ok(request, tcp).await,
            }
        })
    }
}

async fn hostile_site(
    upstream: &str,
) -> (
    Backend,
    Arc<AtomicUsize>,
    tempfile::TempDir,
    TestServer,
    rustls::pki_types::CertificateDer<'static>,
) {
    let written = Arc::new(AtomicUsize::new(0));
    let backend = Backend::start(hostile(written.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = proxy_with(dir.path(), &backend.url(), upstream, "").await;
    (backend, written, dir, server, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_reset_mid_body_truncates_that_response_only() {
    let (_backend, _, _dir, server, ca) = hostile_site("max_fails: 0\n").await;
    let started = Instant::now();
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), get(&server, &ca, "/reset"))
        .await
        .expect("the client is not left hanging");
    let took = started.elapsed();
    eprintln!(
        "reset mid-body: {status}, {:?} after {took:?}",
        body.as_ref().map(|b| b.len())
    );
    assert_eq!(status, 200);
    match body {
        Err(_) => {}
        Ok(body) => panic!("a truncated body passed as complete: {} bytes", body.len()),
    }
    assert!(took < Duration::from_secs(3), "{took:?}");
    let latency = normal_client_is_served(&server, &ca).await;
    eprintln!("next request served in {latency:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_a_dribbled_head_and_silence_from_a_backend_are_502_and_504_in_time() {
    let (_backend, _, _dir, server, ca) =
        hostile_site("response_timeout: 2s\nmax_fails: 0\n").await;
    let timed = |path: &'static str| {
        let (server, ca) = (&server, &ca);
        async move {
            let started = Instant::now();
            let (status, body) =
                tokio::time::timeout(Duration::from_secs(10), get(server, ca, path))
                    .await
                    .unwrap_or_else(|_| panic!("{path}: the client was left hanging"));
            (path, status, body.map(|b| b.len()), started.elapsed())
        }
    };
    // Meanwhile, half a second in, a normal client is served.
    let (results, latency) = tokio::join!(
        futures_util::future::join_all([
            timed("/garbage"),
            timed("/dribble-head"),
            timed("/never"),
            timed("/pause-body"),
        ]),
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            normal_client_is_served(&server, &ca).await
        }
    );
    for (path, status, body, took) in &results {
        eprintln!("{path}: {status} {body:?} after {took:?}");
    }
    let [garbage, dribble, never, pause] = &results[..] else {
        unreachable!()
    };
    assert_eq!(garbage.1, 502, "garbage");
    assert!(
        garbage.3 < Duration::from_secs(2),
        "garbage took {:?}",
        garbage.3
    );
    // The head's deadline is response_timeout (2 s), however the bytes trickle in.
    assert!(
        matches!(dribble.1, 502 | 504),
        "dribbled head: {}",
        dribble.1
    );
    assert!(
        (Duration::from_millis(1800)..Duration::from_secs(4)).contains(&dribble.3),
        "dribbled head cut after {:?}",
        dribble.3
    );
    assert_eq!(never.1, 504, "no answer");
    assert!(
        (Duration::from_millis(1900)..Duration::from_secs(4)).contains(&never.3),
        "504 after {:?}",
        never.3
    );
    // A body that pauses longer than response_timeout is cut, not passed as complete.
    assert_eq!(pause.1, 200);
    assert!(pause.2.is_err(), "{:?}", pause.2);
    assert!(pause.3 < Duration::from_secs(4), "{:?}", pause.3);
    eprintln!("normal client during: {latency:?}");
    normal_client_is_served(&server, &ca).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_response_header_is_cut_at_the_head_limit_with_bounded_memory() {
    let (_backend, written, _dir, server, ca) = hostile_site("max_fails: 0\n").await;
    let rss_before = rss_kib();
    let started = Instant::now();
    let (status, _) =
        tokio::time::timeout(Duration::from_secs(10), get(&server, &ca, "/huge-header"))
            .await
            .expect("answered");
    let took = started.elapsed();
    // The backend's writes end once the proxy has stopped reading and closed.
    let mut last = usize::MAX;
    let _ = within(Duration::from_secs(5), || {
        let now = written.load(Ordering::SeqCst);
        let settled = now == last;
        last = now;
        settled
    })
    .await;
    let taken = written.load(Ordering::SeqCst);
    let grown = rss_kib().saturating_sub(rss_before);
    eprintln!(
        "100 MiB header: {status} after {took:?}; the backend got {} KiB in; RSS +{grown} KiB",
        taken / 1024
    );
    assert_eq!(status, 502);
    assert!(took < Duration::from_secs(3), "{took:?}");
    // 64 KiB read, plus what the kernel's socket buffers held.
    assert!(
        taken < 16 << 20,
        "the proxy took {taken} bytes of the header"
    );
    assert!(grown < 48 * 1024, "RSS grew by {grown} KiB");
    normal_client_is_served(&server, &ca).await;
    server.stop().await;
}

/// An upgrade request to `path`, then (after the answer) bytes that must never be relayed.
async fn upgrade_then_write(
    server: &TestServer,
    ca: &rustls::pki_types::CertificateDer<'static>,
    path: &str,
) -> String {
    let mut tls = tls_connect(
        server.main,
        "localhost",
        default_client(std::slice::from_ref(ca)),
    )
    .await
    .unwrap();
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let mut chunk = [0u8; 4096];
        while !received.windows(4).any(|w| w == b"\r\n\r\n") {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let _ = tls
        .write_all(b"\x82\x8aMASKAFTER-UPGRADE-BYTES-MUST-NOT-PASS")
        .await;
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut chunk = [0u8; 4096];
        while let Ok(1..) = tls.read(&mut chunk).await {}
    })
    .await;
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_botched_websocket_upgrade_never_becomes_a_raw_tunnel() {
    let (backend, _, _dir, server, ca) = hostile_site("max_fails: 0\n").await;
    let baseline = open_connections(&server).await;
    let cases = [
        ("/ws-200", Some(200)),
        ("/ws-426", Some(426)),
        ("/ws-bad-accept", None),
        ("/ws-other-protocol", None),
        ("/ws-no-upgrade", None),
    ];
    for (path, passed_on) in cases {
        let answer = upgrade_then_write(&server, &ca, path).await;
        let status: u16 = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        eprintln!("{path}: {status}");
        assert_ne!(status, 101, "{path}: the client got a 101: {answer}");
        match passed_on {
            Some(expected) => assert_eq!(status, expected, "{path}: {answer}"),
            None => assert_eq!(status, 502, "{path}: a bad 101 is a 502: {answer}"),
        }
    }
    let seen = backend.received();
    assert!(
        !seen.contains("AFTER-UPGRADE"),
        "bytes sent after a refused upgrade reached the backend: {seen}"
    );
    assert!(
        backend.requests().iter().all(|r| r.method == "GET"),
        "{:?}",
        backend.requests()
    );
    normal_client_is_served(&server, &ca).await;
    let back = connections_back_to(&server, baseline, Duration::from_secs(5)).await;
    assert!(back.is_ok(), "{back:?}");
    server.stop().await;
}
