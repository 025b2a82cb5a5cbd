//! Hostile clients and hostile backends against a real server over real sockets: each test
//! mounts one attack and asserts that what it tries to hold is let go within the configured
//! limit, and that a normal client is still served.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::hostile::{self, normal_client_is_served, proxy_to, within};
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// A raw HTTP/1.1 backend that counts the large responses it is writing, records what it
/// receives, and
/// misbehaves on request:
/// - `/big?bytes=N`: N bytes of body with Content-Length, written 64 KiB at a time;
/// - `/late-bytes`: a 2-byte body, then 50 ms later bytes nobody asked for (also after a
///   HEAD answer, whose body must not exist);
/// - anything else: `ok <path>`.
struct RawBackend {
    addr: std::net::SocketAddr,
    /// `/big` responses being written (each holds one of the proxy's upstream connections).
    big: Arc<AtomicUsize>,
    /// Every byte the proxy sent, in order.
    received: Arc<Mutex<Vec<u8>>>,
}

/// Counts one `/big` response while it lasts, however it ends.
struct Writing(Arc<AtomicUsize>);

impl Writing {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RawBackend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let big = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (count, log) = (big.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (count, log) = (count.clone(), log.clone());
                tokio::spawn(async move {
                    let _ = serve_raw(tcp, count, log).await;
                });
            }
        });
        Self {
            addr,
            big,
            received,
        }
    }

    /// Large responses still being written.
    fn open(&self) -> usize {
        self.big.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn serve_raw(
    mut tcp: TcpStream,
    big: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<u8>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            log.lock().await.extend_from_slice(&chunk[..n]);
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or_default().to_owned();
        let target = words.next().unwrap_or_default().to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        match path {
            "/big" => {
                let _writing = Writing::new(&big);
                let bytes: usize = query
                    .strip_prefix("bytes=")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1 << 20);
                tcp.write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {bytes}\r\n\r\n").as_bytes(),
                )
                .await?;
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(chunk.len());
                    tcp.write_all(&chunk[..n]).await?;
                    left -= n;
                }
            }
            "/late-bytes" => {
                let body: &[u8] = if method == "HEAD" { b"" } else { b"ok" };
                tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
                    .await?;
                tcp.write_all(body).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
                tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
                    .await?;
            }
            other => {
                let body = format!("ok {other}");
                tcp.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await?;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_kept_at_a_zero_window_release_their_backend_connections() {
    let backend = RawBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = proxy_to(
        dir.path(),
        &backend.url(),
        "limits:\n  send_timeout: 2s\n  idle_timeout: 3s\n",
    )
    .await;
    // The attacker: SETTINGS_INITIAL_WINDOW_SIZE = 0, then 40 streams on large responses,
    // whose bodies it never lets in.
    let config = client_config(std::slice::from_ref(&ca), rustls::ALL_VERSIONS, &[b"h2"]);
    let tls = tls_connect(server.main, "localhost", config).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let attacker = tokio::spawn(connection);
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut sender = sender.clone();
        let request = http::Request::get("https://localhost/big?bytes=67108864")
            .body(Empty::<Bytes>::new())
            .unwrap();
        held.push(tokio::spawn(
            async move { sender.send_request(request).await },
        ));
    }
    let mut responses = Vec::new();
    for response in held {
        let response = response.await.unwrap().expect("response head");
        assert_eq!(response.status(), 200);
        responses.push(response);
    }
    assert!(
        within(Duration::from_secs(2), || backend.open() >= 40)
            .await
            .is_some(),
        "the attack holds 40 backend connections at first ({})",
        backend.open()
    );
    normal_client_is_served(&server, &ca).await;
    // send_timeout (2 s) after the heads, the streams are reset and their upstreams let go.
    let released = within(Duration::from_secs(6), || backend.open() == 0).await;
    assert!(
        released.is_some(),
        "backend connections still held: {}",
        backend.open()
    );
    eprintln!("figure: 40 zero-window streams' upstreams released {released:?} after the heads (send_timeout 2 s)");
    // With no stream left busy, the idle connection is closed too (GOAWAY, then the
    // bounded close).
    let closed = tokio::time::timeout(Duration::from_secs(12), attacker).await;
    assert!(
        closed.is_ok(),
        "the attacker's connection is closed once idle"
    );
    drop(responses);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_a_large_response_are_cut_off_after_send_timeout() {
    let backend = RawBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = proxy_to(dir.path(), &backend.url(), "limits:\n  send_timeout: 2s\n").await;
    // Ten HTTP/1.1 clients that ask for 64 MiB each and never read a byte.
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut tls = tls_connect(
            server.main,
            "localhost",
            default_client(std::slice::from_ref(&ca)),
        )
        .await
        .unwrap();
        tls.write_all(b"GET /big?bytes=67108864 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        clients.push(tls);
    }
    assert!(
        within(Duration::from_secs(3), || backend.open() >= 10)
            .await
            .is_some(),
        "each client holds a backend connection at first ({})",
        backend.open()
    );
    normal_client_is_served(&server, &ca).await;
    let released = within(Duration::from_secs(8), || backend.open() == 0).await;
    assert!(
        released.is_some(),
        "backend connections still held by clients that never read: {}",
        backend.open()
    );
    eprintln!("figure: 10 non-reading clients' upstreams released {released:?} after the normal client (send_timeout 2 s)");
    // The clients were cut off: reading now ends (after what the kernel had buffered).
    let mut first = clients.remove(0);
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        let mut sink = vec![0u8; 1 << 20];
        loop {
            match first.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the client's connection was closed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_pings_do_not_keep_an_idle_connection_open() {
    let backend = RawBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = proxy_to(dir.path(), &backend.url(), "limits:\n  idle_timeout: 2s\n").await;
    let config = client_config(std::slice::from_ref(&ca), rustls::ALL_VERSIONS, &[b"h2"]);
    let tls = tls_connect(server.main, "localhost", config).await.unwrap();
    // A PING every 300 ms, with no stream open.
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(300))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get("https://localhost/one")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "ok /one"
    );
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(8), connection).await;
    assert!(
        closed.is_ok(),
        "a connection sending only PINGs is closed as idle"
    );
    eprintln!(
        "figure: a PING-only connection closed {:?} after its last request (idle_timeout 2 s)",
        started.elapsed()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not before idle_timeout: {:?}",
        started.elapsed()
    );
    server.stop().await;
}

/// One raw HTTP/1.1 request over TLS; returns the status and the body.
async fn raw_exchange(
    server: &TestServer,
    ca: &CertificateDer<'static>,
    request: &str,
) -> (u16, String) {
    let (status, text, _) =
        hostile::raw_exchange(server, ca, request.as_bytes(), Duration::from_secs(3)).await;
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned());
    (status, body.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_doubled_and_parameterised_paths_cannot_cross_a_route_or_skip_its_policy() {
    let app = RawBackend::start().await;
    let api = RawBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "upstreams:\n  app:\n    servers: [{}]\n  api:\n    servers: [{}]\nroutes:\n  - path: /ws\n    upstream: app\n    allowed_origins: [https://localhost]\n  - path: /api\n    upstream: api\n    max_body_size: 10\n  - path: /\n    upstream: app\n",
        app.url(),
        api.url()
    );
    let (server, ca) = hostile::serve_site(dir.path(), &config).await;
    // Every spelling of /api reaches the api pool, which sees the one normal path.
    for (path, seen) in [
        ("/api/x", "/api/x"),
        ("/%61pi/x", "/api/x"),
        ("/%61%70%69/x", "/api/x"),
        ("//api//x", "/api/x"),
        ("/api;v=1/x", "/api;v=1/x"),
    ] {
        let (status, body) = raw_exchange(
            &server,
            &ca,
            &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(
            (status, body.as_str()),
            (200, &*format!("ok {seen}")),
            "{path}"
        );
        // And the api route's policy holds for it: a body over 10 bytes is refused.
        let (status, _) = raw_exchange(
            &server,
            &ca,
            &format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world"),
        )
        .await;
        assert_eq!(status, 413, "{path}: the api route's body limit applies");
    }
    // A WebSocket opening to any spelling of /ws with a foreign Origin meets /ws's policy.
    let upgrade = |path: &str, origin: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n")
    };
    for path in ["/ws", "/%77s", "/%77%73", "//ws", "/ws;x", "///ws/"] {
        let (status, _) = raw_exchange(&server, &ca, &upgrade(path, "https://evil.example")).await;
        assert_eq!(status, 403, "{path} with a foreign Origin");
    }
    // Ambiguous spellings are refused before any route.
    for path in [
        "/ws%2F",
        "/ws%2f",
        "/x/..%2fws",
        "/x/%2e%2e/ws",
        "/w%5Cs",
        "/ws%00",
        "/ws%zz",
    ] {
        let (status, _) = raw_exchange(&server, &ca, &upgrade(path, "https://evil.example")).await;
        assert_eq!(status, 400, "{path}");
        let (status, _) = raw_exchange(
            &server,
            &ca,
            &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 400, "{path}");
    }
    // No upgrade ever reached the backend.
    let seen = String::from_utf8_lossy(&app.received.lock().await).into_owned();
    assert!(
        !seen.to_ascii_lowercase().contains("upgrade: websocket"),
        "{seen}"
    );
    server.stop().await;
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// `n` HTTP/1.1 clients connected (TLS done) and ready to send at once.
async fn connected_clients(
    server: &TestServer,
    ca: &CertificateDer<'static>,
    n: usize,
) -> Vec<Sender> {
    let mut senders = Vec::new();
    for _ in 0..n {
        let tls = tls_connect(
            server.main,
            "localhost",
            default_client(std::slice::from_ref(ca)),
        )
        .await
        .unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(connection);
        senders.push(sender);
    }
    senders
}

async fn send(sender: &mut Sender, method: http::Method, path: &str) -> (u16, Bytes) {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    // A kept-alive connection takes the next request only once its last one has ended.
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_bytes_from_a_sloppy_backend_never_become_another_clients_response() {
    let backend = RawBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = proxy_to(dir.path(), &backend.url(), "").await;
    // After a HEAD answer the backend writes a whole response nobody asked for, 50 ms later;
    // ten victims ask right away, each on its own client connection.
    let mut attacker = connected_clients(&server, &ca, 1).await.remove(0);
    let mut victims = connected_clients(&server, &ca, 10).await;
    let mut poisoned = 0;
    for round in 0..3 {
        let (status, _) = send(&mut attacker, http::Method::HEAD, "/late-bytes").await;
        assert_eq!(status, 200);
        for victim in &mut victims {
            let (status, body) = send(victim, http::Method::GET, &format!("/v{round}")).await;
            if body != format!("ok /v{round}") {
                eprintln!("HEAD round {round}: victim got {body:?}");
                poisoned += 1;
            }
            assert_eq!(status, 200, "{body:?}");
        }
    }
    assert_eq!(
        poisoned, 0,
        "victims answered with another response's bytes after HEAD"
    );
    // The watch caught the stray bytes: the server's connections are no longer reused, so a
    // surplus after a Content-Length body reaches nobody either.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = send(&mut victims[0], http::Method::GET, "/after").await;
    let mut poisoned = 0;
    for round in 0..3 {
        let (_, body) = send(&mut attacker, http::Method::GET, "/late-bytes").await;
        assert_eq!(body, "ok");
        for victim in &mut victims {
            let (_, body) = send(victim, http::Method::GET, &format!("/w{round}")).await;
            if body != format!("ok /w{round}") {
                eprintln!("round {round}: victim got {body:?}");
                poisoned += 1;
            }
        }
    }
    assert_eq!(
        poisoned, 0,
        "victims got stray bytes after a Content-Length body"
    );
    normal_client_is_served(&server, &ca).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surplus_after_content_length_poisons_at_most_the_first_request_then_the_server_is_not_reused(
) {
    let backend = RawBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = proxy_to(dir.path(), &backend.url(), "").await;
    let mut attacker = connected_clients(&server, &ca, 1).await.remove(0);
    let mut victims = connected_clients(&server, &ca, 10).await;
    let mut poisoned = Vec::new();
    for round in 0..3 {
        let _ = send(&mut attacker, http::Method::GET, "/late-bytes").await;
        for (index, victim) in victims.iter_mut().enumerate() {
            let (_, body) = send(victim, http::Method::GET, &format!("/w{round}")).await;
            if body != format!("ok /w{round}") {
                poisoned.push((round, index, body));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // HTTP/1.1 cannot tell a stray response that lands after the next request was sent from
    // that request's answer; the first incident unmasks the server, and it ends there.
    assert!(
        poisoned.len() <= 2,
        "stray bytes kept reaching victims: {poisoned:?}"
    );
    assert!(
        poisoned.iter().all(|(round, _, _)| *round == 0),
        "victims were poisoned after the server was caught: {poisoned:?}"
    );
    normal_client_is_served(&server, &ca).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builtin_echo_closes_an_oversized_message_with_1009() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    // A message within the limit comes back.
    let (mut ws, status) = server.wss_connect("/ws").await;
    assert_eq!(status, 101);
    let fits = "x".repeat(60 * 1024);
    ws.send(Message::text(fits.clone())).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), fits);
    // One of 1 MiB is refused with 1009 (the frame header already says it is too large).
    let (mut ws, _) = server.wss_connect("/ws").await;
    let big = vec![b'y'; 1 << 20];
    let _ = ws.send(Message::binary(big)).await;
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the echo answers an oversized message");
    let frame = close.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Size);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_line_over_the_head_limit_gets_414_and_long_headers_431() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let ca = server.local_ca();
    for length in [20_000, 70_000, 300_000] {
        let request = format!(
            "GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "a".repeat(length)
        );
        let (status, body) = raw_exchange(&server, &ca, &request).await;
        assert_eq!(status, 414, "a {length}-byte request line: {body}");
    }
    // Under the limit the line passes; headers over it are hyper's 431.
    let (status, _) = raw_exchange(
        &server,
        &ca,
        &format!(
            "GET /{} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            "a".repeat(8_000)
        ),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = raw_exchange(
        &server,
        &ca,
        &format!(
            "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
            "b".repeat(20_000)
        ),
    )
    .await;
    assert_eq!(status, 431);
    // On a kept-alive connection the second request's line is watched as the first was.
    let mut senders = connected_clients(&server, &ca, 1).await;
    let (status, _) = send(&mut senders[0], http::Method::GET, "/health").await;
    assert_eq!(status, 200);
    let long = format!("/{}", "c".repeat(20_000));
    let request = http::Request::get(long.as_str())
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    senders[0].ready().await.unwrap();
    let response = senders[0].send_request(request).await.unwrap();
    assert_eq!(response.status(), 414);
    // HTTP/2 has no request line: a long path is the header list's business.
    let client = client_config(std::slice::from_ref(&ca), rustls::ALL_VERSIONS, &[b"h2"]);
    let response = https_get(
        server.main,
        "localhost",
        client,
        &format!("/{}", "d".repeat(8_000)),
    )
    .await;
    assert_eq!(
        (response.status, response.version),
        (http::StatusCode::NOT_FOUND, http::Version::HTTP_2)
    );
    normal_client_is_served_zero_config(&server).await;
    server.stop().await;
}

async fn normal_client_is_served_zero_config(server: &TestServer) {
    let client = default_client(&[server.local_ca()]);
    let response = https_get(server.main, "localhost", client, "/health").await;
    assert_eq!(response.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_that_keeps_its_connection_neither_holds_it_nor_the_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let ca = server.local_ca();
    let long_line = format!(
        "GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "a".repeat(20_000)
    );
    let refused = |ca: CertificateDer<'static>| {
        let line = long_line.clone();
        let addr = server.main;
        async move {
            let mut tls = tls_connect(addr, "localhost", default_client(&[ca]))
                .await
                .unwrap();
            tls.write_all(line.as_bytes()).await.unwrap();
            let mut answer = vec![0u8; 4096];
            let n = tls.read(&mut answer).await.unwrap();
            assert!(
                answer[..n].starts_with(b"HTTP/1.1 414 "),
                "{}",
                String::from_utf8_lossy(&answer[..n])
            );
            tls
        }
    };
    // The client neither reads nor closes. The server's write side was shut at once
    // (close_notify and FIN); what the client still sends is drained, not reset, until the
    // linger ends, and then the socket is closed: a write gets a reset.
    let mut staying = refused(ca.clone()).await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        writes_without_reset(&mut staying).await,
        "reset while lingering"
    );
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    assert!(
        !writes_without_reset(&mut staying).await,
        "still drained after 3 s"
    );
    // One still lingering does not hold a shutdown for its linger.
    let _lingering = refused(ca).await;
    let started = Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        started.elapsed()
    );
}

/// Whether three small writes 100 ms apart all go through (a closed peer resets the second).
async fn writes_without_reset(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) -> bool {
    for _ in 0..3 {
        if tls.write_all(&[b'x'; 512]).await.is_err() || tls.flush().await.is_err() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}
