//! The reverse proxy over real sockets, with real backends started by the tests.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::upstream::Upstream;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use rustls::pki_types::CertificateDer;
use tlsgate::certs::KeyAlgorithm;
use tokio_tungstenite::tungstenite::Message;

/// A server for `names` whose config is `yaml` + a certificate covering them.
async fn start(
    dir: &std::path::Path,
    names: &[&str],
    yaml: &str,
) -> (TestServer, CertificateDer<'static>) {
    let ca = fixture_ca(dir);
    fixture_cert(&ca, dir, "site", names, KeyAlgorithm::EcdsaP256);
    let config = format!("tls:\n  certificates:\n    - pem_file: site.pem\n{yaml}");
    (TestServer::start(&config, dir).await.unwrap(), ca.cert_der)
}

async fn get(
    server: &TestServer,
    ca: &CertificateDer<'static>,
    host: &str,
    path: &str,
) -> SimpleResponse {
    let client = default_client(std::slice::from_ref(ca));
    https_get(server.main, host, client, path).await
}

async fn request(
    server: &TestServer,
    ca: &CertificateDer<'static>,
    host: &str,
    request: http::Request<TestBody>,
) -> SimpleResponse {
    let stream = tls_connect(server.main, host, default_client(std::slice::from_ref(ca)))
        .await
        .unwrap();
    send_on(stream, request).await
}

fn json(response: &SimpleResponse) -> serde_json::Value {
    serde_json::from_str(&response.body)
        .unwrap_or_else(|_| panic!("not JSON ({}): {}", response.status, response.body))
}

fn served_by(response: &SimpleResponse) -> String {
    json(response)["server"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_longest_path_prefix() {
    let gateway = Upstream::start("api-gateway").await;
    let frontend = Upstream::start("frontend").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "upstreams:\n  api-gateway:\n    servers: [{}]\nroutes:\n  - host: api.analytics.example.com\n    path: /ws\n    upstream: api-gateway\n  - host: api.analytics.example.com\n    path: /api\n    upstream: api-gateway\n  - host: api.analytics.example.com\n    path: /api/v2\n    upstream: {}\n  - host: analytics.example.com\n    path: /\n    upstream: {}\n",
        gateway.url(),
        v2.url(),
        frontend.url()
    );
    let (server, ca) = start(
        dir.path(),
        &["api.analytics.example.com", "analytics.example.com"],
        &yaml,
    )
    .await;
    let api = "api.analytics.example.com";
    assert_eq!(
        served_by(&get(&server, &ca, api, "/api/users?id=1").await),
        "api-gateway"
    );
    assert_eq!(
        served_by(&get(&server, &ca, api, "/api/v2/users").await),
        "v2"
    );
    assert_eq!(
        get(&server, &ca, api, "/ws-status").await.status,
        404,
        "segment prefix: /ws-status is not under /ws"
    );
    assert_eq!(get(&server, &ca, api, "/other").await.status, 404);
    let response = get(&server, &ca, "analytics.example.com", "/dashboard").await;
    assert_eq!(served_by(&response), "frontend");
    assert_eq!(json(&response)["path"], "/dashboard");
    assert!(
        response.headers.get("server").is_none(),
        "the backend's Server header is not passed on"
    );
    assert_eq!(
        response.headers["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_with_and_without_trusted_proxies() {
    let backend = Upstream::start("b").await;
    for trusted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut yaml = format!("default_route: {}\n", backend.url());
        if trusted {
            yaml.push_str("trusted_proxies: [127.0.0.1/32]\n");
        }
        let (server, ca) = start(dir.path(), &["app.test"], &yaml).await;
        let req = http::Request::builder()
            .uri("/echo")
            .header("host", "app.test")
            .header("x-forwarded-for", "198.51.100.7")
            .header("x-real-ip", "198.51.100.7")
            .header("x-forwarded-proto", "http")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-end-to-end", "kept")
            .body(body_of(""))
            .unwrap();
        let response = request(&server, &ca, "app.test", req).await;
        let headers = &json(&response)["headers"];
        assert_eq!(json(&response)["version"], "HTTP/1.1");
        assert_eq!(headers["host"], "app.test", "Host preserved");
        assert_eq!(headers["x-forwarded-host"], "app.test");
        assert_eq!(headers["x-end-to-end"], "kept");
        assert!(
            headers.get("x-hop").is_none() && headers.get("keep-alive").is_none(),
            "{headers}"
        );
        if trusted {
            assert_eq!(headers["x-forwarded-for"], "198.51.100.7, 127.0.0.1");
            assert_eq!(headers["x-real-ip"], "198.51.100.7");
            assert_eq!(
                headers["x-forwarded-proto"], "http",
                "a trusted proxy's scheme is kept"
            );
        } else {
            assert_eq!(
                headers["x-forwarded-for"], "127.0.0.1",
                "spoofed chain replaced"
            );
            assert_eq!(headers["x-real-ip"], "127.0.0.1");
            assert_eq!(headers["x-forwarded-proto"], "https");
        }
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_413_502_504_421() {
    let backend = Upstream::start("b").await;
    let dead = Upstream::start("dead").await;
    dead.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "upstreams:\n  slow:\n    servers: [{0}]\n    response_timeout: 1s\nroutes:\n  - path: /slow\n    upstream: slow\n  - path: /dead\n    upstream: {1}\n  - path: /\n    upstream: {0}\n    max_body_size: 1KiB\n",
        backend.url(),
        dead.url()
    );
    let (server, ca) = start(dir.path(), &["app.test", "other.test"], &yaml).await;

    // Declared too large: refused before anything is sent.
    let big = http::Request::post("/echo")
        .header("host", "app.test")
        .body(body_of(vec![b'x'; 4096]))
        .unwrap();
    let response = request(&server, &ca, "app.test", big).await;
    assert_eq!(response.status, 413);
    // Streamed (chunked, no length) past the limit: refused too.
    let chunks = futures_util::stream::iter((0..8).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(vec![
            b'y';
            512
        ])))
    }));
    let streamed = http::Request::post("/echo")
        .header("host", "app.test")
        .body(BodyExt::boxed(http_body_util::StreamBody::new(chunks)))
        .unwrap();
    let response = request(&server, &ca, "app.test", streamed).await;
    assert_eq!(response.status, 413, "{}", response.body);

    let response = get(&server, &ca, "app.test", "/dead").await;
    assert_eq!(response.status, 502);
    assert!(response.body.contains("bad gateway"));
    let started = Instant::now();
    let response = get(&server, &ca, "app.test", "/slow?ms=3000").await;
    assert_eq!(response.status, 504);
    assert!(started.elapsed() < Duration::from_millis(2500));

    // Host different from the TLS server name.
    let stream = tls_connect(
        server.main,
        "app.test",
        default_client(std::slice::from_ref(&ca)),
    )
    .await
    .unwrap();
    let response = request_on(stream, false, "other.test", "/echo").await;
    assert_eq!(response.status, 421);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tlsgates_own_answers_get_its_content_security_policy() {
    const CSP: &str = "default-src 'none'; frame-ancestors 'none'";
    let backend = Upstream::start("b").await;
    let dead = Upstream::start("dead").await;
    dead.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "routes:\n  - host: app.test\n    path: /dead\n    upstream: {1}\n  - host: app.test\n    path: /\n    upstream: {0}\n    max_body_size: 1KiB\n",
        backend.url(),
        dead.url()
    );
    let (server, ca) = start(dir.path(), &["app.test", "other.test"], &yaml).await;
    // The backend's answer is the backend's: no policy added (none is configured).
    let response = get(&server, &ca, "app.test", "/echo").await;
    assert_eq!(response.status, 200);
    assert!(
        response.headers.get("content-security-policy").is_none(),
        "{:?}",
        response.headers
    );
    let big = http::Request::post("/echo")
        .header("host", "app.test")
        .body(body_of(vec![b'x'; 4096]))
        .unwrap();
    for (response, status) in [
        (get(&server, &ca, "app.test", "/dead").await, 502),
        (get(&server, &ca, "other.test", "/echo").await, 404),
        (request(&server, &ca, "app.test", big).await, 413),
    ] {
        assert_eq!(response.status, status);
        assert_eq!(response.headers["content-security-policy"], CSP, "{status}");
    }
    server.stop().await;

    // A configured policy is the site's: proxied responses get it, as before.
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "headers:\n  content_security_policy: default-src 'self'\nroutes:\n  - path: /\n    upstream: {}\n",
        backend.url()
    );
    let (server, ca) = start(dir.path(), &["app.test"], &yaml).await;
    let response = get(&server, &ca, "app.test", "/echo").await;
    assert_eq!(
        response.headers["content-security-policy"],
        "default-src 'self'"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_without_buffering() {
    let backend = Upstream::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "default_route: {}\nlimits:\n  max_body_size: 1GiB\n",
        backend.url()
    );
    let (server, ca) = start(dir.path(), &["app.test"], &yaml).await;

    // Download: the first 64 KiB chunk arrives while the backend still holds the rest.
    let stream = tls_connect(
        server.main,
        "app.test",
        default_client(std::slice::from_ref(&ca)),
    )
    .await
    .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            http::Request::get("/stream?chunks=64")
                .header("host", "app.test")
                .body(body_of(""))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first chunk before the rest exists");
    assert!(first.is_some());
    backend.release.notify_one();
    let mut total = first
        .and_then(|f| f.ok())
        .and_then(|f| f.into_data().ok())
        .map(|d| d.len())
        .unwrap_or(0);
    while let Some(Ok(frame)) = body.frame().await {
        total += frame.into_data().map(|d| d.len()).unwrap_or(0);
    }
    assert_eq!(total, 64 * 64 * 1024);

    // Upload: the backend sees data while the client is still sending (64 MiB in total).
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >(4);
    let upload = http::Request::post("/upload")
        .header("host", "app.test")
        .body(BodyExt::boxed(http_body_util::StreamBody::new(
            tokio_stream_from(rx),
        )))
        .unwrap();
    let ca2 = ca.clone();
    let main = server.main;
    let sending = tokio::spawn(async move {
        let stream = tls_connect(main, "app.test", default_client(std::slice::from_ref(&ca2)))
            .await
            .unwrap();
        send_on(stream, upload).await
    });
    tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from(
        vec![0u8; 1 << 20],
    ))))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.uploaded.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the backend got nothing while the upload was open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 1..64 {
        tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from(
            vec![0u8; 1 << 20],
        ))))
        .await
        .unwrap();
    }
    drop(tx);
    let response = sending.await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, (64u64 << 20).to_string());
    server.stop().await;
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn wss(
    server: &TestServer,
    ca: &CertificateDer<'static>,
    host: &str,
    path: &str,
    origin: Option<&str>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        http::Response<Option<Vec<u8>>>,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = tls_connect(server.main, host, default_client(std::slice::from_ref(ca)))
        .await
        .unwrap();
    let mut req = format!("wss://{host}{path}").into_client_request().unwrap();
    if let Some(origin) = origin {
        req.headers_mut().insert("origin", origin.parse().unwrap());
    }
    tokio_tungstenite::client_async(req, stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_wss_text_binary_ping_and_10_mib() {
    let backend = Upstream::start("ws-backend").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("routes:\n  - path: /ws\n    upstream: {}\n", backend.url());
    let (server, ca) = start(dir.path(), &["app.test"], &yaml).await;
    let (mut ws, response) = wss(&server, &ca, "app.test", "/ws/notifications?token=x", None)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
    ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(b"p".to_vec().into())
    );
    let big: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        Message::Binary(data) => assert!(data.as_ref() == big.as_slice(), "10 MiB echoed intact"),
        other => panic!("unexpected {other:?}"),
    }
    ws.close(None).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_idle_timeout_closes_idle_not_active_and_origins_are_checked() {
    let backend = Upstream::start("ws").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "routes:\n  - path: /ws\n    upstream: {}\n    websocket_idle_timeout: 1s\n    allowed_origins: [https://app.test]\n",
        backend.url()
    );
    let (server, ca) = start(dir.path(), &["app.test"], &yaml).await;
    let origin = Some("https://app.test");

    let refused = wss(&server, &ca, "app.test", "/ws", Some("https://evil.test")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert!(
        wss(&server, &ca, "app.test", "/ws", None).await.is_err(),
        "no Origin, no upgrade"
    );

    let (mut idle, _) = wss(&server, &ca, "app.test", "/ws", origin).await.unwrap();
    let (mut active, _) = wss(&server, &ca, "app.test", "/ws", origin).await.unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        active.send(Message::text("tick")).await.unwrap();
        assert_eq!(active.next().await.unwrap().unwrap(), Message::text("tick"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let idle_end = tokio::time::timeout(Duration::from_secs(2), idle.next())
        .await
        .expect("idle socket closed");
    assert!(
        !matches!(idle_end, Some(Ok(Message::Text(_)))),
        "{idle_end:?}"
    );
    active.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        active.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_extended_connect() {
    let backend = Upstream::start("ws").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("routes:\n  - path: /ws\n    upstream: {}\n", backend.url());
    let (server, ca) = start(dir.path(), &["app.test"], &yaml).await;
    let config = client_config(std::slice::from_ref(&ca), rustls::ALL_VERSIONS, &[b"h2"]);
    let stream = tls_connect(server.main, "app.test", config).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, TestBody>(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("https://app.test/ws")
        .header("sec-websocket-version", "13")
        .body(body_of(""))
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    ws.send(Message::text("over h2")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over h2"));
    server.stop().await;
}

async fn distribution(
    server: &TestServer,
    ca: &CertificateDer<'static>,
    requests: usize,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..requests {
        let response = get(server, ca, "app.test", "/echo").await;
        assert_eq!(response.status, 200, "{}", response.body);
        *counts.entry(served_by(&response)).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_and_backup() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let spare = Upstream::start("spare").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "upstreams:\n  pool:\n    servers:\n      - url: {}\n        weight: 3\n      - {}\n      - url: {}\n        backup: true\n    max_fails: 1\n    fail_timeout: 30s\ndefault_route: pool\n",
        a.url(),
        b.url(),
        spare.url()
    );
    let (server, ca) = start(dir.path(), &["app.test"], &yaml).await;
    let counts = distribution(&server, &ca, 80).await;
    assert_eq!(counts.get("a"), Some(&60), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&20), "{counts:?}");
    assert_eq!(
        counts.get("spare"),
        None,
        "the backup stays idle while primaries are up"
    );

    // Both primaries die: every idempotent request still succeeds, on the backup.
    a.kill();
    b.kill();
    let counts = distribution(&server, &ca, 10).await;
    assert_eq!(counts.get("spare"), Some(&10), "{counts:?}");
    spare.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let response = get(&server, &ca, "app.test", "/echo").await;
    assert!(
        response.status == 502 || response.status == 503,
        "{}",
        response.status
    );
    let response = get(&server, &ca, "app.test", "/echo").await;
    assert_eq!(response.status, 503, "all down: 503");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_health_moves_traffic_off_a_killed_server_without_failures() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "upstreams:\n  pool:\n    servers: [{}, {}, {}]\n    max_fails: 1\n    fail_timeout: 30s\ndefault_route: pool\n",
        a.url(),
        b.url(),
        c.url()
    );
    let (server, ca) = start(dir.path(), &["app.test"], &yaml).await;
    assert_eq!(distribution(&server, &ca, 9).await.len(), 3);
    b.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let counts = distribution(&server, &ca, 30).await; // asserts every response is 200
    assert_eq!(counts.get("b"), None, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 30);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_servers_out_and_back() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "upstreams:\n  pool:\n    servers: [{}, {}]\n    health_check:\n      path: /health\n      interval: 100ms\n      timeout: 1s\n      rise: 2\n      fall: 2\ndefault_route: pool\n",
        a.url(),
        b.url()
    );
    let (server, ca) = start(dir.path(), &["app.test"], &yaml).await;
    a.set_healthy(false);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let counts = distribution(&server, &ca, 10).await;
    assert_eq!(counts.get("b"), Some(&10), "a fails its checks: {counts:?}");
    a.set_healthy(true);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let counts = distribution(&server, &ca, 10).await;
    assert_eq!(counts.get("a"), Some(&5), "a is back: {counts:?}");
    // A killed server fails its checks too.
    b.kill();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let counts = distribution(&server, &ca, 6).await;
    assert_eq!(counts.get("a"), Some(&6), "{counts:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_ip_hash_and_sticky_cookie() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let servers = format!("[{}, {}]", a.url(), b.url());

    // least_conn: with one slow request on a server, the others go to the idle one.
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("upstreams:\n  pool:\n    servers: {servers}\n    balance: least_conn\ndefault_route: pool\n");
    let (server, ca) = start(dir.path(), &["app.test"], &yaml).await;
    let server = Arc::new(server);
    let slow = {
        let (server, ca) = (server.clone(), ca.clone());
        tokio::spawn(async move { get(&server, &ca, "app.test", "/slow?ms=1500").await.body })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counts = distribution(&server, &ca, 10).await;
    let busy = slow.await.unwrap();
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert!(!counts.contains_key(&busy), "{busy} was busy: {counts:?}");

    // ip_hash: one client address, one server.
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "upstreams:\n  pool:\n    servers: {servers}\n    balance: ip_hash\ndefault_route: pool\n"
    );
    let (server, ca) = start(dir.path(), &["app.test"], &yaml).await;
    assert_eq!(distribution(&server, &ca, 12).await.len(), 1);
    server.stop().await;

    // cookie: the first answer sets an opaque cookie; with it, the same server every time.
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("upstreams:\n  pool:\n    servers: {servers}\n    balance: cookie\n    sticky_cookie: SERVERID\ndefault_route: pool\n");
    let (server, ca) = start(dir.path(), &["app.test"], &yaml).await;
    let first = get(&server, &ca, "app.test", "/echo").await;
    let set_cookie = first.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.starts_with("SERVERID=")
            && set_cookie.contains("Secure")
            && set_cookie.contains("HttpOnly"),
        "{set_cookie}"
    );
    assert_eq!(first.headers["cache-control"], "private");
    let token = set_cookie
        .trim_start_matches("SERVERID=")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        !token.contains("127.0.0.1") && !token.contains(&a.addr.port().to_string()),
        "opaque: {token}"
    );
    let pinned = served_by(&first);
    for _ in 0..10 {
        let req = http::Request::get("/echo")
            .header("host", "app.test")
            .header("cookie", format!("theme=dark; SERVERID={token}"))
            .body(body_of(""))
            .unwrap();
        let response = request(&server, &ca, "app.test", req).await;
        assert_eq!(served_by(&response), pinned);
        assert!(
            response.headers.get("set-cookie").is_none(),
            "already pinned"
        );
        assert_eq!(
            json(&response)["headers"]["cookie"],
            "theme=dark",
            "the sticky cookie is not forwarded"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_passes_end_to_end() {
    // Python's `websockets` negotiates permessage-deflate on both ends; tlsgate only splices.
    let python = std::process::Command::new("python3")
        .args(["-c", "import websockets"])
        .output();
    assert!(
        python.map(|o| o.status.success()).unwrap_or(false),
        "python3 with the websockets package is needed (scripts/test.sh installs it)"
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server_script = format!(
        "import asyncio, websockets\nasync def echo(ws):\n    async for m in ws:\n        await ws.send(m)\nasync def main():\n    async with websockets.serve(echo, '127.0.0.1', {port}, compression='deflate'):\n        await asyncio.sleep(30)\nasyncio.run(main())\n"
    );
    let mut backend = tokio::process::Command::new("python3")
        .args(["-c", &server_script])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Python starts slowly on a busy machine: wait until the backend listens.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the Python backend did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("routes:\n  - path: /ws\n    upstream: http://127.0.0.1:{port}\n");
    let (server, _) = start(dir.path(), &["localhost"], &yaml).await;
    let ca_path = dir.path().join("ca.crt");
    let client_script = format!(
        "import asyncio, ssl, websockets\nasync def main():\n    ctx = ssl.create_default_context(cafile='{}')\n    for _ in range(50):\n        try:\n            ws = await websockets.connect('wss://localhost:{}/ws', ssl=ctx, compression='deflate')\n            break\n        except OSError:\n            await asyncio.sleep(0.1)\n    print('extensions:', ws.response.headers.get('Sec-WebSocket-Extensions'))\n    await ws.send('a' * 10000)\n    print('echo:', len(await ws.recv()))\n    await ws.close()\nasyncio.run(main())\n",
        ca_path.display(),
        server.main.port()
    );
    let output = tokio::process::Command::new("python3")
        .args(["-c", &client_script])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("extensions: permessage-deflate"),
        "{stdout}"
    );
    assert!(stdout.contains("echo: 10000"), "{stdout}");
    let _ = backend.kill().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_to_upstreams_when_asked() {
    let backend = Upstream::start("h2c").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "upstreams:\n  pool:\n    servers: [{}]\n    h2c: true\ndefault_route: pool\n",
        backend.url()
    );
    let (server, ca) = start(dir.path(), &["app.test"], &yaml).await;
    let response = get(&server, &ca, "app.test", "/echo").await;
    assert_eq!(json(&response)["version"], "HTTP/2.0", "{}", response.body);
    assert_eq!(json(&response)["headers"]["host"], "app.test");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_are_not_slow_upstreams_and_stalled_ones_get_408() {
    let backend = Upstream::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "upstreams:\n  pool:\n    servers: [{}]\n    response_timeout: 1s\n    send_timeout: 700ms\n    max_fails: 1\n    fail_timeout: 30s\ndefault_route: pool\n",
        backend.url()
    );
    let (server, ca) = start(dir.path(), &["app.test"], &yaml).await;
    let upload = |gaps: Vec<u64>| {
        let (server_addr, ca) = (server.main, ca.clone());
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<
                Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
            >(1);
            let request = http::Request::post("/upload")
                .header("host", "app.test")
                .body(BodyExt::boxed(http_body_util::StreamBody::new(
                    tokio_stream_from(rx),
                )))
                .unwrap();
            let sending = tokio::spawn(async move {
                let stream = tls_connect(
                    server_addr,
                    "app.test",
                    default_client(std::slice::from_ref(&ca)),
                )
                .await
                .unwrap();
                send_on(stream, request).await
            });
            for gap in gaps {
                tokio::time::sleep(Duration::from_millis(gap)).await;
                if tx
                    .send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
                        b"chunk",
                    ))))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            drop(tx);
            sending.await.unwrap()
        }
    };
    // 2.5 s of uploading in 500 ms steps: longer than response_timeout, never a pause > 700 ms.
    let response = upload(vec![0, 500, 500, 500, 500, 500]).await;
    assert_eq!(response.status, 200, "{}", response.body);
    // A client that stops sending: 408, and the backend is not blamed for it.
    let response = upload(vec![0, 2000]).await;
    assert_eq!(response.status, 408, "{}", response.body);
    assert_eq!(
        get(&server, &ca, "app.test", "/echo").await.status,
        200,
        "the single server is still in rotation"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_smuggling_and_dot_segments_are_refused() {
    let public = Upstream::start("public").await;
    let guarded = Upstream::start("guarded").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "routes:\n  - path: /ws\n    upstream: {}\n    allowed_origins: [https://app.test]\n  - path: /\n    upstream: {}\n",
        guarded.url(),
        public.url()
    );
    let (server, ca) = start(dir.path(), &["app.test"], &yaml).await;
    let raw = |text: &'static str| {
        let (addr, ca) = (server.main, ca.clone());
        async move {
            let mut stream =
                tls_connect(addr, "app.test", default_client(std::slice::from_ref(&ca)))
                    .await
                    .unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stream, text.as_bytes())
                .await
                .unwrap();
            let mut reply = Vec::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut reply),
            )
            .await;
            String::from_utf8_lossy(&reply).into_owned()
        }
    };
    let reply = raw(
        "GET /echo HTTP/1.1\r\nHost: app.test\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 400"),
        "two Host headers: {reply}"
    );
    let reply = raw("GET /x/../ws HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "dot segments: {reply}");
    let reply =
        raw("GET /x/%2e%2e/ws HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").await;
    assert!(
        reply.starts_with("HTTP/1.1 400"),
        "encoded dot segments: {reply}"
    );
    // Absolute form: the upstream's Host is the authority that was routed and checked.
    let reply = raw(
        "GET https://app.test/echo HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.contains("\"host\":\"app.test\""), "{reply}");
    // No tunnels to arbitrary hosts through a reverse proxy.
    let reply = raw("CONNECT app.test:22 HTTP/1.1\r\nHost: app.test:22\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 501"), "CONNECT: {reply}");

    // A backend that answers an upgrade without 101: its answer is passed on as is.
    let refused = wss(&server, &ca, "app.test", "/echo", None).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 200);
            assert!(response.headers().get("server").is_none());
        }
        other => panic!(
            "expected the backend's 200, got {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    server.stop().await;
}

/// Reads from `stream` until a blank line ends an HTTP head; returns the head and any bytes
/// that came behind it.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = received.split_off(end + 4);
            return (String::from_utf8_lossy(&received).into_owned(), rest);
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "stream ended inside a head: {received:?}");
        received.extend_from_slice(&chunk[..n]);
    }
}

/// Reads one unmasked frame with a short payload (< 126 bytes) from `pending` + `stream`.
async fn read_short_frame<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    pending: &mut Vec<u8>,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    loop {
        if pending.len() >= 2 && pending.len() >= 2 + usize::from(pending[1] & 0x7F) {
            let len = usize::from(pending[1] & 0x7F);
            let frame: Vec<u8> = pending.drain(..2 + len).collect();
            return frame[2..].to_vec();
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "stream ended inside a frame");
        pending.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_bytes_sent_right_behind_either_handshake_arrive_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A backend that sends its greeting in the same write as its 101, then echoes the
    // client's first (masked) frame back unmasked.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let (head, mut rest) = read_head(&mut socket).await;
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("sec-websocket-key: "))
            .expect("the upgrade carries a key")
            .trim();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        answer.extend_from_slice(&[0x81, 7]);
        answer.extend_from_slice(b"welcome");
        socket.write_all(&answer).await.unwrap();
        while rest.len() < 6 || rest.len() < 6 + usize::from(rest[1] & 0x7F) {
            let mut chunk = [0u8; 1024];
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            rest.extend_from_slice(&chunk[..n]);
        }
        let len = usize::from(rest[1] & 0x7F);
        let mask = [rest[2], rest[3], rest[4], rest[5]];
        let payload: Vec<u8> = rest[6..6 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        let mut echo = vec![0x81, len as u8];
        echo.extend_from_slice(&payload);
        socket.write_all(&echo).await.unwrap();
        let _ = socket.read(&mut [0u8; 16]).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("routes:\n  - path: /ws\n    upstream: http://{backend}\n");
    let (server, ca) = start(dir.path(), &["app.test"], &yaml).await;
    let mut tls = tls_connect(
        server.main,
        "app.test",
        default_client(std::slice::from_ref(&ca)),
    )
    .await
    .unwrap();
    // The upgrade request and a first frame in one write.
    let mut request = b"GET /ws HTTP/1.1\r\nhost: app.test\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec();
    let mask = [1u8, 2, 3, 4];
    request.extend_from_slice(&[0x81, 0x80 | 5]);
    request.extend_from_slice(&mask);
    request.extend(b"early".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tls.write_all(&request).await.unwrap();
    let (head, mut pending) = tokio::time::timeout(Duration::from_secs(5), read_head(&mut tls))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let greeting = read_short_frame(&mut tls, &mut pending).await;
    assert_eq!(
        greeting, b"welcome",
        "the backend's bytes behind its 101 come first"
    );
    let echo = tokio::time::timeout(
        Duration::from_secs(5),
        read_short_frame(&mut tls, &mut pending),
    )
    .await
    .unwrap();
    assert_eq!(
        echo, b"early",
        "the client's bytes behind its upgrade reach the backend"
    );
    server.stop().await;
}
