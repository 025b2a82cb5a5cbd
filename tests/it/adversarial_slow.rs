//! Slow and numerous clients against a real server: a thousand slowloris connections, uploads
//! that stall, a connection flood at `limits.max_connections`, and hostile WebSocket frames
//! through a proxied tunnel. Each is cut at its configured limit while a normal client is
//! served, and the server's open connections come back to where they were.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::hostile::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Barrier, Semaphore};

/// Open file descriptors of this process (every test in the binary shares it: a report, not
/// an assertion).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slowloris_connections_are_each_cut_at_header_read_timeout() {
    const CLIENTS: usize = 1000;
    let backend = Backend::recording().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = proxy_to(
        dir.path(),
        &backend.url(),
        "limits:\n  header_read_timeout: 2s\n",
    )
    .await;
    let baseline = open_connections(&server).await;
    let fds_before = open_fds();
    let started = Instant::now();
    // Every client connects (TLS done), then all start at once: a request line, then one
    // header byte a second, never the blank line.
    let handshakes = Arc::new(Semaphore::new(32));
    let go = Arc::new(Barrier::new(CLIENTS + 1));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (handshakes, go, ca) = (handshakes.clone(), go.clone(), ca.clone());
        let main = server.main;
        clients.spawn(async move {
            let permit = handshakes.acquire_owned().await.unwrap();
            let tls = tls_connect(main, "localhost", default_client(&[ca])).await;
            drop(permit);
            go.wait().await;
            let (mut read, mut write) = tokio::io::split(tls.ok()?);
            write.write_all(b"GET /slow HTTP/1.1\r\nX-Slow: ").await.ok()?;
            let first = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut sink = [0u8; 1024];
            loop {
                tokio::select! {
                    read = read.read(&mut sink) => match read {
                        Ok(0) | Err(_) => return Some(first.elapsed()),
                        Ok(_) => {}
                    },
                    _ = tick.tick() => {
                        let _ = write.write_all(b"a").await;
                    }
                    () = tokio::time::sleep_until((first + Duration::from_secs(15)).into()) => return None,
                }
            }
        });
    }
    go.wait().await;
    let connected = started.elapsed();
    let open = open_connections(&server).await;
    let fds_during = open_fds();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let latency = normal_client_within(&server, &ca, Duration::from_secs(1)).await;
    let mut cuts = Vec::new();
    while let Some(result) = clients.join_next().await {
        cuts.push(result.unwrap());
    }
    let uncut = cuts.iter().filter(|c| c.is_none()).count();
    let mut cuts: Vec<Duration> = cuts.into_iter().flatten().collect();
    cuts.sort();
    let back = connections_back_to(&server, baseline, Duration::from_secs(5)).await;
    eprintln!(
        "{CLIENTS} slowloris: connected in {connected:?} ({open} open), normal client {latency:?}; cut after {:?}..{:?} (median {:?}), {uncut} not cut; fds {fds_before} -> {fds_during} -> {}; connections back {back:?}",
        cuts.first(),
        cuts.last(),
        cuts.get(cuts.len() / 2),
        open_fds()
    );
    assert_eq!(uncut, 0, "slowloris connections not cut within 15 s");
    assert_eq!(cuts.len(), CLIENTS, "some clients never connected");
    assert!(
        open >= CLIENTS as f64,
        "only {open} connections were open at once"
    );
    assert!(
        cuts[0] >= Duration::from_millis(1900),
        "cut before header_read_timeout: {:?}",
        cuts[0]
    );
    assert!(
        *cuts.last().unwrap() < Duration::from_secs(5),
        "cut only after {:?}",
        cuts.last()
    );
    assert!(back.is_ok(), "{back:?}");
    assert!(
        backend.requests().iter().all(|r| r.path != "/slow"),
        "a partial head reached the backend"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_get_408_at_the_upstream_send_timeout() {
    const CLIENTS: usize = 20;
    let backend = Backend::recording().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = proxy_with(dir.path(), &backend.url(), "send_timeout: 2s\n", "").await;
    let baseline = open_connections(&server).await;
    let upload = |server: &TestServer, ca: &CertificateDer<'static>| {
        let (main, ca) = (server.main, ca.clone());
        async move {
            let mut tls = tls_connect(main, "localhost", default_client(&[ca]))
                .await
                .unwrap();
            tls.write_all(
                b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n",
            )
            .await
            .unwrap();
            tls.write_all(&[b'u'; 100]).await.unwrap();
            let stalled = Instant::now();
            let mut received = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = tls.read(&mut chunk).await {
                    received.extend_from_slice(&chunk[..n]);
                }
            })
            .await;
            let text = String::from_utf8_lossy(&received).into_owned();
            (text.get(9..12).unwrap_or("").to_owned(), stalled.elapsed())
        }
    };
    let (results, latency) = tokio::join!(
        futures_util::future::join_all((0..CLIENTS).map(|_| upload(&server, &ca))),
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            normal_client_is_served(&server, &ca).await
        }
    );
    let back = connections_back_to(&server, baseline, Duration::from_secs(5)).await;
    let slowest = results.iter().map(|(_, t)| *t).max().unwrap();
    let fastest = results.iter().map(|(_, t)| *t).min().unwrap();
    eprintln!(
        "{CLIENTS} stalled uploads: {:?} after {fastest:?}..{slowest:?}; normal client {latency:?}; connections back {back:?}",
        results.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>()
    );
    for (status, took) in &results {
        assert_eq!(status, "408", "after {took:?}");
    }
    assert!(fastest >= Duration::from_millis(1800), "{fastest:?}");
    assert!(slowest < Duration::from_secs(5), "{slowest:?}");
    assert!(back.is_ok(), "{back:?}");
    // The backend saw the uploads begin and end short, never completed.
    let requests = backend.requests();
    assert!(
        requests
            .iter()
            .filter(|r| r.path == "/upload")
            .all(|r| !r.complete),
        "{requests:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_waits_at_max_connections_while_the_admin_stays_reachable() {
    const LIMIT: usize = 50;
    let backend = Backend::recording().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = proxy_to(
        dir.path(),
        &backend.url(),
        &format!("limits:\n  max_connections: {LIMIT}\n"),
    )
    .await;
    let baseline = open_connections(&server).await;
    let mut flood = Vec::new();
    for _ in 0..LIMIT {
        flood.push(
            tls_connect(
                server.main,
                "localhost",
                default_client(std::slice::from_ref(&ca)),
            )
            .await
            .unwrap(),
        );
    }
    // One more: its TCP connect lands in the backlog, its handshake waits for a slot.
    let waiting = {
        let (main, ca) = (server.main, ca.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let response = https_get(main, "localhost", default_client(&[ca]), "/late").await;
            (response.status.as_u16(), response.body, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !waiting.is_finished(),
        "a client over max_connections was served at once"
    );
    let started = Instant::now();
    let open = open_connections(&server).await;
    let admin_latency = started.elapsed();
    eprintln!("flood of {LIMIT}: {open} open, admin answered in {admin_latency:?}");
    assert_eq!(open, LIMIT as f64);
    assert!(admin_latency < Duration::from_secs(1), "{admin_latency:?}");
    // Ten leave: the waiting client is let in.
    let released = Instant::now();
    flood.drain(..10);
    let (status, body, waited) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting client is served once slots free up")
        .unwrap();
    eprintln!(
        "waiting client: {status} after {waited:?} ({:?} after the release)",
        released.elapsed()
    );
    assert_eq!((status, body.as_str()), (200, "ok /late"));
    drop(flood);
    let back = connections_back_to(&server, baseline, Duration::from_secs(5)).await;
    let latency = normal_client_is_served(&server, &ca).await;
    eprintln!("after the flood: normal client {latency:?}; connections back {back:?}");
    assert!(back.is_ok(), "{back:?}");
    server.stop().await;
}

/// A client frame, masked (`mask`: the key; the payload is sent as given when unmasked).
fn client_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n <= 0xffff => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x12, 0x34, 0x56, 0x78];
    if masked {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_websocket_frames_end_the_tunnel_not_the_server() {
    // A WebSocket backend that takes frames up to 64 KiB and records why each session ended.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    let endings = Arc::new(Mutex::new(Vec::new()));
    let sessions = Arc::new(AtomicUsize::new(0));
    {
        let (endings, sessions) = (endings.clone(), sessions.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (endings, sessions) = (endings.clone(), sessions.clone());
                tokio::spawn(async move {
                    let config =
                        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                            .max_frame_size(Some(64 << 10))
                            .max_message_size(Some(64 << 10));
                    let Ok(mut ws) =
                        tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await
                    else {
                        return;
                    };
                    sessions.fetch_add(1, Ordering::SeqCst);
                    let ending = loop {
                        match ws.next().await {
                            Some(Ok(message)) if message.is_text() || message.is_binary() => {
                                if ws.send(message).await.is_err() {
                                    break "send failed".to_owned();
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(error)) => break error.to_string(),
                            None => break "closed".to_owned(),
                        }
                    };
                    endings.lock().unwrap().push(ending);
                });
            }
        });
    }
    let backend = Backend::recording().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "upstreams:\n  app:\n    servers: [{}]\n  ws:\n    servers: [http://{ws_addr}]\nroutes:\n  - path: /ws\n    upstream: ws\n  - path: /\n    upstream: app\n",
        backend.url()
    );
    let (server, ca) = serve_site(dir.path(), &config).await;
    let baseline = open_connections(&server).await;
    let big = vec![0u8; 200 << 10];
    let cases: [(&str, Vec<u8>); 4] = [
        ("a 1 GiB frame header", {
            let mut head = vec![0x82, 0xff];
            head.extend_from_slice(&(1u64 << 30).to_be_bytes());
            head.extend_from_slice(&[1, 2, 3, 4]);
            head.extend_from_slice(&[0; 256 << 10]);
            head
        }),
        ("a 200 KiB frame", client_frame(0x82, &big, true)),
        ("a reserved opcode", client_frame(0x83, b"hello", true)),
        (
            "an unmasked client frame",
            client_frame(0x81, b"hello", false),
        ),
    ];
    for (name, bytes) in cases {
        let mut tls = tls_connect(
            server.main,
            "localhost",
            default_client(std::slice::from_ref(&ca)),
        )
        .await
        .unwrap();
        tls.write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut chunk = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tls.read(&mut chunk).await.unwrap();
            assert!(n > 0, "{name}: closed before the 101");
            head.extend_from_slice(&chunk[..n]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{name}: {}",
            String::from_utf8_lossy(&head)
        );
        // The tunnel works: a small frame comes back.
        tls.write_all(&client_frame(0x81, b"ping", true))
            .await
            .unwrap();
        let mut echo = [0u8; 6];
        tls.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"\x81\x04ping", "{name}");
        let started = Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(2), tls.write_all(&bytes)).await;
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match tls.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        eprintln!("{name}: tunnel ended after {:?}", started.elapsed());
        assert!(
            ended.is_ok(),
            "{name}: the tunnel outlived the bad frame by 5 s"
        );
    }
    let _ = within(Duration::from_secs(2), || {
        endings.lock().unwrap().len() == 4
    })
    .await;
    let endings = endings.lock().unwrap().clone();
    eprintln!("backend sessions ended: {endings:?}");
    assert_eq!(sessions.load(Ordering::SeqCst), 4);
    assert_eq!(endings.len(), 4, "{endings:?}");
    normal_client_is_served(&server, &ca).await;
    let back = connections_back_to(&server, baseline, Duration::from_secs(5)).await;
    assert!(back.is_ok(), "{back:?}");
    server.stop().await;
}
