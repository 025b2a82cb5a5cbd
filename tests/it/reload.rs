//! Configuration reload: validated first, applied atomically, connections and WebSockets kept
//! unless their route is gone.

use crate::common;

use std::time::{Duration, Instant};

use common::upstream::Upstream;
use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::CertificateDer;
use tlsgate::certs::KeyAlgorithm;
use tokio_tungstenite::tungstenite::Message;

type Wss =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn wss(server: &TestServer, ca: &CertificateDer<'static>, path: &str) -> Wss {
    let stream = tls_connect(
        server.main,
        "app.test",
        default_client(std::slice::from_ref(ca)),
    )
    .await
    .unwrap();
    tokio_tungstenite::client_async(format!("wss://app.test{path}"), stream)
        .await
        .unwrap()
        .0
}

fn config(a: &Upstream, b: Option<&Upstream>, frame: &str) -> String {
    let mut yaml = format!(
        "tls:\n  certificates:\n    - pem_file: site.pem\nheaders:\n  x_frame_options: {frame}\nlimits:\n  reload_grace: 300ms\nroutes:\n  - path: /a\n    upstream: {}\n",
        a.url()
    );
    if let Some(b) = b {
        yaml.push_str(&format!("  - path: /b\n    upstream: {}\n", b.url()));
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_route_closes_only_its_websockets_and_bad_configs_change_nothing() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "site",
        &["app.test"],
        KeyAlgorithm::EcdsaP256,
    );
    let server = TestServer::start(&config(&a, Some(&b), "DENY"), dir.path())
        .await
        .unwrap();
    let client = default_client(std::slice::from_ref(&ca.cert_der));
    let mut kept = wss(&server, &ca.cert_der, "/a/ws").await;
    let mut removed = wss(&server, &ca.cert_der, "/b/ws").await;

    // An invalid file: refused with file and line, nothing changes.
    std::fs::write(
        dir.path().join("tlsgate.yaml"),
        "routes:\n  - path: /a\n    upstreem: x\n",
    )
    .unwrap();
    let refused = server.post_reload().await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("tlsgate.yaml:3:5"),
        "{}",
        refused.body
    );
    assert_eq!(
        https_get(server.main, "app.test", client.clone(), "/b/x")
            .await
            .status,
        200
    );
    // A listener change cannot be applied live: refused whole.
    let tls_off = config(&a, None, "SAMEORIGIN").replace(
        "tls:\n  certificates:\n    - pem_file: site.pem\n",
        "tls: off\n",
    );
    std::fs::write(dir.path().join("tlsgate.yaml"), tls_off).unwrap();
    let refused = server.post_reload().await;
    assert_eq!(refused.status, 422);
    assert!(refused.body.contains("needs a restart"), "{}", refused.body);
    assert_eq!(
        https_get(server.main, "app.test", client.clone(), "/b/x")
            .await
            .status,
        200
    );

    // Route /b removed, a header changed.
    std::fs::write(
        dir.path().join("tlsgate.yaml"),
        config(&a, None, "SAMEORIGIN"),
    )
    .unwrap();
    let applied = server.post_reload().await;
    assert_eq!(applied.status, 200, "{}", applied.body);
    let response = https_get(server.main, "app.test", client.clone(), "/a/x").await;
    assert_eq!(response.headers["x-frame-options"], "SAMEORIGIN");
    assert_eq!(
        https_get(server.main, "app.test", client.clone(), "/b/x")
            .await
            .status,
        404
    );

    // The /b WebSocket is closed with 1001 within the grace period; /a's keeps working.
    let closed = tokio::time::timeout(Duration::from_secs(5), removed.next())
        .await
        .expect("closed in time");
    match closed {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    kept.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        kept.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_nothing() {
    let a = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "site",
        &["app.test"],
        KeyAlgorithm::EcdsaP256,
    );
    let server = std::sync::Arc::new(
        TestServer::start(&config(&a, None, "DENY"), dir.path())
            .await
            .unwrap(),
    );
    // Without resumption, so every new connection shows the certificate served right now.
    let mut fresh = (*default_client(std::slice::from_ref(&ca.cert_der))).clone();
    fresh.resumption = rustls::client::Resumption::disabled();
    let client = std::sync::Arc::new(fresh);

    let mut sockets = Vec::new();
    for _ in 0..200 {
        sockets.push(wss(&server, &ca.cert_der, "/a/ws").await);
    }
    // A client loop: new TLS connections and requests, all the time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = {
        let (server, client, stop) = (server.clone(), client.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed, mut serials) = (0u32, 0u32, std::collections::BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match tls_connect(server.main, "app.test", client.clone()).await {
                    Ok(stream) => {
                        serials.insert(served_leaf(&stream).serial);
                        let response = request_on(stream, false, "app.test", "/a/x").await;
                        if response.status == 200 {
                            ok += 1
                        } else {
                            failed += 1
                        }
                    }
                    Err(_) => failed += 1,
                }
            }
            (ok, failed, serials)
        })
    };
    let mut last_serial = String::new();
    for round in 0..20 {
        // The certificate file is replaced (the watcher and the reload both pick it up)…
        let issued = fixture_cert(
            &ca,
            dir.path(),
            "site",
            &["app.test"],
            KeyAlgorithm::EcdsaP256,
        );
        last_serial = tlsgate::certs::CertInfo::parse(&issued.der).unwrap().serial;
        // …and the configuration changes.
        let frame = if round % 2 == 0 { "SAMEORIGIN" } else { "DENY" };
        std::fs::write(dir.path().join("tlsgate.yaml"), config(&a, None, frame)).unwrap();
        let applied = server.post_reload().await;
        assert_eq!(applied.status, 200, "{}", applied.body);
        for socket in sockets.iter_mut().step_by(20) {
            socket
                .send(Message::text(format!("round {round}")))
                .await
                .unwrap();
            assert_eq!(
                socket.next().await.unwrap().unwrap(),
                Message::text(format!("round {round}"))
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, serials) = loader.await.unwrap();
    assert_eq!(failed, 0, "{ok} requests succeeded");
    assert!(ok > 20, "{ok}");
    assert!(
        serials.len() > 2,
        "new connections saw new certificates: {serials:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = served_leaf(
            &tls_connect(server.main, "app.test", client.clone())
                .await
                .unwrap(),
        )
        .serial;
        if now == last_serial {
            break;
        }
        assert!(Instant::now() < deadline, "the last certificate is served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every one of the 200 WebSockets is still open.
    for (index, socket) in sockets.iter_mut().enumerate() {
        socket
            .send(Message::text(format!("{index}")))
            .await
            .unwrap();
        assert_eq!(
            socket.next().await.unwrap().unwrap(),
            Message::text(format!("{index}"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_close_with_the_config_and_mismatched_keys_are_refused() {
    let a = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "site",
        &["app.test"],
        KeyAlgorithm::EcdsaP256,
    );
    fixture_cert(
        &ca,
        dir.path(),
        "other",
        &["app.test"],
        KeyAlgorithm::EcdsaP256,
    );
    let server = TestServer::start(&config(&a, None, "DENY"), dir.path())
        .await
        .unwrap();
    let http = server.http.unwrap();
    assert_eq!(http_get(http, "app.test", "/x").await.status, 301);

    // A key that does not match its certificate: refused, the old certificate keeps serving.
    let mismatched = config(&a, None, "DENY").replace(
        "    - pem_file: site.pem\n",
        "    - cert_file: site.crt\n      key_file: other.key\n",
    );
    std::fs::write(dir.path().join("tlsgate.yaml"), mismatched).unwrap();
    let refused = server.post_reload().await;
    assert_eq!(refused.status, 422);
    assert!(refused.body.contains("does not match"), "{}", refused.body);
    let client = default_client(std::slice::from_ref(&ca.cert_der));
    assert_eq!(
        https_get(server.main, "app.test", client.clone(), "/a/x")
            .await
            .status,
        200
    );

    // Sessions issued before a reload still resume after it (the ticket keys are kept).
    let resuming = default_client(std::slice::from_ref(&ca.cert_der));
    let first = tls_connect(server.main, "app.test", resuming.clone())
        .await
        .unwrap();
    let _ = request_on(first, false, "app.test", "/a/x").await;
    std::fs::write(
        dir.path().join("tlsgate.yaml"),
        config(&a, None, "SAMEORIGIN"),
    )
    .unwrap();
    assert_eq!(server.post_reload().await.status, 200);
    let again = tls_connect(server.main, "app.test", resuming)
        .await
        .unwrap();
    assert_eq!(
        again.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );

    // `http: off`: the plain-HTTP listener closes; HTTPS goes on.
    std::fs::write(
        dir.path().join("tlsgate.yaml"),
        format!("http: off\n{}", config(&a, None, "DENY")),
    )
    .unwrap();
    let applied = server.post_reload().await;
    assert_eq!(applied.status, 200, "{}", applied.body);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "the HTTP listener is closed"
    );
    assert_eq!(
        https_get(server.main, "app.test", client, "/a/x")
            .await
            .status,
        200
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_move_and_open_with_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let (main, http1, http2, admin1, admin2) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let write = |http: u16, admin: u16| {
        std::fs::write(
            dir.path().join("tlsgate.yaml"),
            format!("data_dir: data\nlisten: 127.0.0.1:{main}\nhttp:\n  listen: 127.0.0.1:{http}\nadmin:\n  listen: 127.0.0.1:{admin}\n"),
        )
        .unwrap();
    };
    write(http1, admin1);
    let path = dir.path().join("tlsgate.yaml");
    let settings = tlsgate::config::load(Some(&path), &Default::default(), &|_| None).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tlsgate::server::Server::bind(settings, Default::default(), shutdown.clone())
        .await
        .unwrap();
    let handle = tokio::spawn(server.run());
    let at = |port: u16| -> std::net::SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    assert_eq!(http_get(at(http1), "localhost", "/").await.status, 301);

    write(http2, admin2);
    let stream = tokio::net::TcpStream::connect(at(admin1)).await.unwrap();
    let post = http::Request::post("/reload")
        .header("host", "127.0.0.1")
        .body(body_of(""))
        .unwrap();
    let applied = send_on(stream, post).await;
    assert_eq!(applied.status, 200, "{}", applied.body);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        http_get(at(http2), "localhost", "/").await.status,
        301,
        "the new HTTP listener answers"
    );
    assert!(
        tokio::net::TcpStream::connect(at(http1)).await.is_err(),
        "the old one is closed"
    );
    assert_eq!(
        http_get(at(admin2), "127.0.0.1", "/health").await.status,
        200,
        "the admin listener moved"
    );
    assert!(tokio::net::TcpStream::connect(at(admin1)).await.is_err());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the server stops within 10 s of shutdown")
        .expect("the server task does not panic");
}
