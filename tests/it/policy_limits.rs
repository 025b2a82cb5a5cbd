//! Limits and bans over real sockets: nginx's `limit_req` reproduced request by request (and a
//! real nginx with the same configuration as the oracle), the seeds' numbers, per-IP caps at
//! accept and at the upgrade, bans on the admin listener, IP lists, reloads.

use crate::common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::nginx::Nginx;
use common::upstream::Upstream;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use tlsgate::certs::KeyAlgorithm;

const HOST: &str = "app.test";

async fn start(dir: &std::path::Path, yaml: &str) -> (TestServer, CertificateDer<'static>) {
    let ca = fixture_ca(dir);
    fixture_cert(&ca, dir, "site", &[HOST], KeyAlgorithm::EcdsaP256);
    let config = format!("tls:\n  certificates:\n    - pem_file: site.pem\n{yaml}");
    (TestServer::start(&config, dir).await.unwrap(), ca.cert_der)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// An HTTP/1.1 connection to tlsgate over TLS.
async fn tls_sender(server: &TestServer, ca: &CertificateDer<'static>) -> std::io::Result<Sender> {
    let stream = tls_connect(server.main, HOST, default_client(std::slice::from_ref(ca))).await?;
    sender_on(stream).await
}

async fn sender_on<S>(stream: S) -> std::io::Result<Sender>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One GET on `sender`: status, `Retry-After`, and how long the answer took.
async fn get_on(sender: &mut Sender, path: &str) -> (u16, Option<u64>, Duration) {
    // A keep-alive connection takes the next request once the last answer is all read.
    sender.ready().await.expect("connection open");
    let started = Instant::now();
    let request = http::Request::get(path)
        .header("host", HOST)
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let _ = response.into_body().collect().await;
    (status, retry, started.elapsed())
}

/// Requests sent at once: how many passed at once, were delayed, were rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    immediate: usize,
    delayed: usize,
    rejected: usize,
}

/// Fires one request on each connection at the same moment and sorts the answers; a delay
/// is nginx's whole seconds (1 s at least here), so anything over 900 ms was held.
async fn burst(senders: Vec<Sender>, path: &'static str, rejected_status: u16) -> Counts {
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| tokio::spawn(async move { get_on(&mut sender, path).await }))
        .collect();
    let mut counts = Counts {
        immediate: 0,
        delayed: 0,
        rejected: 0,
    };
    for task in tasks {
        let (status, _, took) = task.await.unwrap();
        match status {
            200 if took < Duration::from_millis(900) => counts.immediate += 1,
            200 => counts.delayed += 1,
            s if s == rejected_status => counts.rejected += 1,
            other => panic!("unexpected status {other} on {path}"),
        }
    }
    counts
}

async fn admin_request(server: &TestServer, method: http::Method, path: &str) -> SimpleResponse {
    let stream = tokio::net::TcpStream::connect(server.admin.unwrap())
        .await
        .unwrap();
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .body(body_of(""))
        .unwrap();
    send_on(stream, request).await
}

async fn metrics(server: &TestServer) -> String {
    admin_request(server, http::Method::GET, "/metrics")
        .await
        .body
}

/// The value of one metric series (0 when absent).
fn series(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

const NGINX_ZONES: &str = "\
  limit_req_zone $binary_remote_addr zone=queue:1m rate=1r/s;
  limit_req_zone $binary_remote_addr zone=nodelay:1m rate=1r/s;
  limit_req_zone $binary_remote_addr zone=twostage:1m rate=1r/s;
  limit_req_zone $binary_remote_addr zone=login_limit:10m rate=5r/m;
";

/// nginx's documented `limit_req` behaviour (burst, nodelay, two-stage delay, and the seeds'
/// login zone), ten requests at once per zone, against tlsgate and a real nginx with the
/// same configuration: the counts are nginx's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_req_burst_nodelay_and_delay_count_as_nginx_does() {
    let backend = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "upstreams:\n  app:\n    servers: [{}]\n\
         rate_limits:\n\
         \x20 queue: {{rate: 1r/s, burst: 5}}\n\
         \x20 nodelay: {{rate: 1r/s, burst: 5, nodelay: true}}\n\
         \x20 twostage: {{rate: 1r/s, burst: 5, delay: 3}}\n\
         \x20 login_limit: {{rate: 5r/m, burst: 5, nodelay: true}}\n\
         routes:\n\
         \x20 - {{path: /queue, upstream: app, rate_limit: [queue]}}\n\
         \x20 - {{path: /nodelay, upstream: app, rate_limit: [nodelay]}}\n\
         \x20 - {{path: /twostage, upstream: app, rate_limit: [twostage]}}\n\
         \x20 - {{path: /login, upstream: app, rate_limit: [login_limit]}}\n",
        backend.url()
    );
    let (server, ca) = start(dir.path(), &yaml).await;

    // The same zones in nginx, serving a file (`return` would run before `limit_req`).
    let port = free_port();
    let www = dir.path().join("www");
    for location in ["queue", "nodelay", "twostage", "login"] {
        std::fs::create_dir_all(www.join(location)).unwrap();
        std::fs::write(www.join(location).join("ok"), "ok").unwrap();
    }
    let servers = format!(
        "{NGINX_ZONES}  server {{\n    listen 127.0.0.1:{port};\n    root {};\n    limit_req_status 429;\n\
         \x20   location /queue/ {{ limit_req zone=queue burst=5; }}\n\
         \x20   location /nodelay/ {{ limit_req zone=nodelay burst=5 nodelay; }}\n\
         \x20   location /twostage/ {{ limit_req zone=twostage burst=5 delay=3; }}\n\
         \x20   location /login/ {{ limit_req zone=login_limit burst=5 nodelay; }}\n  }}\n",
        www.display()
    );
    let nginx_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let _nginx = Nginx::start(dir.path(), &servers, &[nginx_addr]).await;

    let paths = ["/queue/ok", "/nodelay/ok", "/twostage/ok", "/login/ok"];
    // Every connection is open before the first request, so the ten land together.
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in paths {
        let mut tls = Vec::new();
        let mut plain = Vec::new();
        for _ in 0..10 {
            tls.push(tls_sender(&server, &ca).await.unwrap());
            let tcp = tokio::net::TcpStream::connect(nginx_addr).await.unwrap();
            plain.push(sender_on(tcp).await.unwrap());
        }
        ours.push(tls);
        theirs.push(plain);
    }
    let runs: Vec<_> = paths
        .iter()
        .zip(ours.into_iter().zip(theirs))
        .map(|(path, (tls, plain))| {
            let path: &'static str = path;
            tokio::spawn(async move {
                let (ours, theirs) = tokio::join!(burst(tls, path, 429), burst(plain, path, 429));
                (path, ours, theirs)
            })
        })
        .collect();
    let expected = [
        // burst=5: one at once, five queued one second apart, four refused.
        (1, 5, 4),
        // nodelay: the burst passes at once.
        (6, 0, 4),
        // delay=3: three excess at once (four with the first), two queued.
        (4, 2, 4),
        // The seeds' login zone (5r/m), burst=5 nodelay.
        (6, 0, 4),
    ];
    for (run, (immediate, delayed, rejected)) in runs.into_iter().zip(expected) {
        let (path, ours, theirs) = run.await.unwrap();
        assert_eq!(ours, theirs, "{path}: tlsgate vs nginx");
        assert_eq!(
            ours,
            Counts {
                immediate,
                delayed,
                rejected
            },
            "{path}"
        );
    }
    let text = metrics(&server).await;
    for (zone, result, count) in [
        ("queue", "passed", 1),
        ("queue", "delayed", 5),
        ("queue", "rejected", 4),
        ("nodelay", "passed", 6),
        ("twostage", "delayed", 2),
        ("login_limit", "rejected", 4),
    ] {
        assert_eq!(
            series(
                &text,
                &format!(
                    "tlsgate_rate_limit_requests_total{{zone=\"{zone}\",result=\"{result}\"}}"
                )
            ),
            count,
            "{zone} {result}: {text}"
        );
    }
    // A refusal says when to come back: the login zone frees a slot every 12 s.
    let mut sender = tls_sender(&server, &ca).await.unwrap();
    let (status, retry, _) = get_on(&mut sender, "/login/ok").await;
    assert_eq!(status, 429);
    assert!(matches!(retry, Some(1..=13)), "{retry:?}");
    server.stop().await;
}

/// Each HTTP/2 stream is a request (not the connection), and a zone may answer nginx's 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_count_as_requests_and_the_status_is_configurable() {
    let backend = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "upstreams:\n  app:\n    servers: [{}]\n\
         rate_limits:\n  api_limit: {{rate: 20r/m, burst: 2, nodelay: true, status: 503}}\n\
         routes:\n  - {{path: /api, upstream: app, rate_limit: [api_limit]}}\n  - {{path: /, upstream: app}}\n",
        backend.url()
    );
    let (server, ca) = start(dir.path(), &yaml).await;
    let config = client_config(std::slice::from_ref(&ca), rustls::ALL_VERSIONS, &[b"h2"]);
    let stream = tls_connect(server.main, HOST, config).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let mut sender = sender.clone();
        let request = http::Request::get(format!("https://{HOST}/api/x"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        if response.status() == 503 {
            assert!(response.headers().contains_key("retry-after"));
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 503, 503]);
    // Another route on the same connection is not limited.
    let mut other = sender.clone();
    let request = http::Request::get(format!("https://{HOST}/echo"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(other.send_request(request).await.unwrap().status(), 200);
    server.stop().await;
}

/// nginx's `limit_conn addr 10` (the seeds' number): the eleventh concurrent connection from
/// one address is closed at accept, before its TLS handshake; a closed one frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eleventh_concurrent_connection_is_refused_at_accept() {
    let backend = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "limits:\n  per_ip: {{connections: 10}}\ndefault_route: {}\n",
        backend.url()
    );
    let (server, ca) = start(dir.path(), &yaml).await;
    let mut open = Vec::new();
    for _ in 0..10 {
        let mut sender = tls_sender(&server, &ca).await.unwrap();
        assert_eq!(get_on(&mut sender, "/echo").await.0, 200);
        open.push(sender);
    }
    assert!(
        tls_sender(&server, &ca).await.is_err(),
        "the 11th connection's handshake never starts"
    );
    let text = metrics(&server).await;
    assert_eq!(
        series(&text, "tlsgate_per_ip_refusals_total{kind=\"connections\"}"),
        1,
        "{text}"
    );
    assert!(
        !text.contains("127.0.0.1\""),
        "no address in a metric label"
    );
    open.pop();
    // The closed connection's task ends a moment after the client goes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tls_sender(&server, &ca).await {
            Ok(mut sender) => {
                assert_eq!(get_on(&mut sender, "/echo").await.0, 200);
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(error) => panic!("a freed place is not given back: {error}"),
        }
    }
    server.stop().await;
}

/// fail2ban's jail with the seeds' numbers (maxretry 10, findtime 600, bantime 7200): the
/// tenth rate-limit refusal bans the address; its open connection gets 403, new ones are
/// closed at accept; the admin listener lists the ban and lifts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_violations_ban_the_address_until_the_admin_lifts_it() {
    let backend = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "upstreams:\n  app:\n    servers: [{}]\n\
         rate_limits:\n  login_limit: {{rate: 5r/m}}\n\
         bans: {{after: 10, within: 600s, ban_time: 7200s, count: [rate_limit, auth]}}\n\
         routes:\n  - {{path: /login, upstream: app, rate_limit: [login_limit]}}\n  - {{path: /, upstream: app}}\n",
        backend.url()
    );
    let (server, ca) = start(dir.path(), &yaml).await;
    let mut sender = tls_sender(&server, &ca).await.unwrap();
    assert_eq!(get_on(&mut sender, "/login").await.0, 200);
    for _ in 0..9 {
        assert_eq!(get_on(&mut sender, "/login").await.0, 429);
    }
    assert_eq!(get_on(&mut sender, "/echo").await.0, 200, "nine: not yet");
    let listed = admin_request(&server, http::Method::GET, "/bans").await;
    assert_eq!(listed.body.matches("\"ip\"").count(), 0, "{}", listed.body);
    assert_eq!(get_on(&mut sender, "/login").await.0, 429);
    // Banned: this connection's next request, and any new connection.
    assert_eq!(get_on(&mut sender, "/echo").await.0, 403);
    assert!(tls_sender(&server, &ca).await.is_err(), "closed at accept");

    let listed = admin_request(&server, http::Method::GET, "/bans").await;
    assert_eq!(listed.status, 200);
    let body: serde_json::Value = serde_json::from_str(&listed.body).unwrap();
    let bans = body["bans"].as_array().unwrap();
    assert_eq!(bans.len(), 1, "{body}");
    assert_eq!(bans[0]["ip"], "127.0.0.1");
    assert_eq!(bans[0]["reason"], "rate_limit");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let until = bans[0]["until"].as_u64().unwrap();
    assert!(
        (now + 7190..=now + 7210).contains(&until),
        "{until} vs {now}"
    );
    let text = metrics(&server).await;
    assert_eq!(
        series(&text, "tlsgate_bans_total{reason=\"rate_limit\"}"),
        1
    );
    assert_eq!(series(&text, "tlsgate_banned_ips"), 1);
    assert!(series(&text, "tlsgate_per_ip_refusals_total{kind=\"banned\"}") >= 1);

    // A cross-site page cannot lift it; the operator can.
    let stream = tokio::net::TcpStream::connect(server.admin.unwrap())
        .await
        .unwrap();
    let forged = http::Request::delete("/bans/127.0.0.1")
        .header("host", "127.0.0.1")
        .header("origin", "https://attacker.example")
        .body(body_of(""))
        .unwrap();
    assert_eq!(send_on(stream, forged).await.status, 403);
    let lifted = admin_request(&server, http::Method::DELETE, "/bans/127.0.0.1").await;
    assert_eq!(lifted.status, 200, "{}", lifted.body);
    let again = admin_request(&server, http::Method::DELETE, "/bans/127.0.0.1").await;
    assert_eq!(again.status, 404);
    let typo = admin_request(&server, http::Method::DELETE, "/bans/127.0.0.x").await;
    assert_eq!(typo.status, 400, "{}", typo.body);
    assert!(typo.body.contains("not an IP address"), "{}", typo.body);
    let mut sender = tls_sender(&server, &ca).await.expect("no longer banned");
    assert_eq!(get_on(&mut sender, "/echo").await.0, 200);
    assert_eq!(series(&metrics(&server).await, "tlsgate_banned_ips"), 0);
    server.stop().await;
}

/// A client at its limit is still limited after `POST /reload` when its zone is unchanged; a
/// zone whose settings change starts afresh. A ban survives the reload too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_state_and_bans_survive_a_reload() {
    let backend = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let config = |rate: &str, extra: &str| {
        format!(
            "tls:\n  certificates:\n    - pem_file: site.pem\n\
             upstreams:\n  app:\n    servers: [{}]\n\
             rate_limits:\n  login_limit: {{rate: {rate}}}\n\
             bans: {{after: 3, within: 600s, ban_time: 7200s}}\n\
             routes:\n  - {{path: /login, upstream: app, rate_limit: [login_limit]}}\n  - {{path: /, upstream: app}}\n{extra}",
            backend.url()
        )
    };
    let ca = fixture_ca(dir.path());
    fixture_cert(&ca, dir.path(), "site", &[HOST], KeyAlgorithm::EcdsaP256);
    let server = TestServer::start(&config("5r/m", ""), dir.path())
        .await
        .unwrap();
    let ca = ca.cert_der;
    let mut sender = tls_sender(&server, &ca).await.unwrap();
    assert_eq!(get_on(&mut sender, "/login").await.0, 200);
    assert_eq!(get_on(&mut sender, "/login").await.0, 429);

    // Unchanged zone, another route added.
    std::fs::write(
        dir.path().join("tlsgate.yaml"),
        config("5r/m", "  - {path: /other, upstream: app}\n"),
    )
    .unwrap();
    assert_eq!(server.post_reload().await.status, 200);
    let mut sender = tls_sender(&server, &ca).await.unwrap();
    assert_eq!(
        get_on(&mut sender, "/other").await.0,
        200,
        "the reload applied"
    );
    assert_eq!(
        get_on(&mut sender, "/login").await.0,
        429,
        "still at its limit after the reload"
    );

    // Changed zone: fresh state.
    std::fs::write(dir.path().join("tlsgate.yaml"), config("6r/m", "")).unwrap();
    assert_eq!(server.post_reload().await.status, 200);
    let mut sender = tls_sender(&server, &ca).await.unwrap();
    assert_eq!(get_on(&mut sender, "/login").await.0, 200);
    // The third strike (two before the reloads) bans; a reload keeps the ban.
    assert_eq!(get_on(&mut sender, "/login").await.0, 429);
    assert_eq!(get_on(&mut sender, "/echo").await.0, 403);
    std::fs::write(
        dir.path().join("tlsgate.yaml"),
        config("6r/m", "  - {path: /x, upstream: app}\n"),
    )
    .unwrap();
    assert_eq!(server.post_reload().await.status, 200);
    assert!(tls_sender(&server, &ca).await.is_err(), "still banned");
    server.stop().await;
}

/// CIDR lists: per route (403) and per listener (closed at accept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_lists_per_route_and_per_listener() {
    let backend = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "upstreams:\n  app:\n    servers: [{}]\n\
         routes:\n\
         \x20 - {{path: /internal, upstream: app, allow: [10.0.0.0/8]}}\n\
         \x20 - {{path: /blocked, upstream: app, deny: [127.0.0.0/8]}}\n\
         \x20 - {{path: /local, upstream: app, allow: [127.0.0.1/32, '::1'], deny: [10.0.0.0/8]}}\n",
        backend.url()
    );
    let (server, ca) = start(dir.path(), &yaml).await;
    for (path, status) in [("/internal", 403), ("/blocked", 403), ("/local", 200)] {
        let mut sender = tls_sender(&server, &ca).await.unwrap();
        assert_eq!(get_on(&mut sender, path).await.0, status, "{path}");
    }
    server.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "listener_access: {{deny: [127.0.0.0/8]}}\ndefault_route: {}\n",
        backend.url()
    );
    let (server, ca) = start(dir.path(), &yaml).await;
    assert!(tls_sender(&server, &ca).await.is_err());
    let text = metrics(&server).await;
    assert_eq!(
        series(&text, "tlsgate_per_ip_refusals_total{kind=\"denied\"}"),
        1,
        "{text}"
    );
    server.stop().await;
}

/// Per-IP WebSocket caps are checked at the upgrade: `429` before the backend is contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_websockets_per_address_are_capped_at_the_upgrade() {
    use tokio_tungstenite::tungstenite;
    let backend = Upstream::start("ws").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "limits:\n  per_ip: {{websockets: 1}}\nroutes:\n  - {{path: /ws, upstream: {}}}\n",
        backend.url()
    );
    let (server, ca) = start(dir.path(), &yaml).await;
    let connect = || async {
        let stream = tls_connect(server.main, HOST, default_client(std::slice::from_ref(&ca)))
            .await
            .unwrap();
        tokio_tungstenite::client_async(format!("wss://{HOST}/ws"), stream).await
    };
    let (first, _) = connect().await.expect("first WebSocket");
    match connect().await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!(
            "second WebSocket not refused: {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect().await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(error) => panic!("the closed WebSocket's place was not freed: {error}"),
        }
    }
    let text = metrics(&server).await;
    assert!(series(&text, "tlsgate_per_ip_refusals_total{kind=\"websockets\"}") >= 1);
    server.stop().await;
}

/// A backend that answers every request `401` (a login service refusing a password).
async fn refusing_backend() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    let mut response = http::Response::new(http_body_util::Full::new(
                        Bytes::from_static(b"wrong password"),
                    ));
                    *response.status_mut() = http::StatusCode::UNAUTHORIZED;
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// fail2ban's `nginx-http-auth` jail, built in: a route's `401` answers to requests that sent
/// credentials count towards a ban; those that sent none (what a page on another site can make
/// a browser send) do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_auth_failures_ban_the_address() {
    let backend = refusing_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "bans: {{after: 3, within: 600s, ban_time: 7200s, count: [auth]}}\n\
         routes:\n  - {{path: /, upstream: '{backend}'}}\n"
    );
    let (server, ca) = start(dir.path(), &yaml).await;
    let mut sender = tls_sender(&server, &ca).await.unwrap();
    for _ in 0..5 {
        assert_eq!(get_on(&mut sender, "/login").await.0, 401);
    }
    let body = admin_request(&server, http::Method::GET, "/bans")
        .await
        .body;
    assert!(
        !body.contains("127.0.0.1"),
        "no credentials, no strike: {body}"
    );
    for _ in 0..3 {
        assert_eq!(login(&mut sender).await, 401);
    }
    assert_eq!(login(&mut sender).await, 403, "banned");
    assert!(tls_sender(&server, &ca).await.is_err(), "closed at accept");
    let body = admin_request(&server, http::Method::GET, "/bans")
        .await
        .body;
    assert!(body.contains("\"reason\": \"auth\""), "{body}");
    let text = metrics(&server).await;
    assert_eq!(
        series(&text, "tlsgate_bans_total{reason=\"auth\"}"),
        1,
        "{text}"
    );
    server.stop().await;
}

/// A login attempt with a (wrong) password.
async fn login(sender: &mut Sender) -> u16 {
    sender.ready().await.expect("connection open");
    let request = http::Request::get("/login")
        .header("host", HOST)
        .header("authorization", "Basic YWxpY2U6d3Jvbmc=")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

/// New TLS handshakes per minute per address: the fourth of `handshakes_per_minute: 3` is
/// closed at accept, and an upgrade over `upgrades_per_minute` gets `429`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_per_minute_are_capped_at_accept() {
    let backend = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "limits:\n  per_ip: {{handshakes_per_minute: 3}}\ndefault_route: {}\n",
        backend.url()
    );
    let (server, ca) = start(dir.path(), &yaml).await;
    for _ in 0..3 {
        let mut sender = tls_sender(&server, &ca).await.unwrap();
        assert_eq!(get_on(&mut sender, "/echo").await.0, 200);
    }
    assert!(tls_sender(&server, &ca).await.is_err());
    let text = metrics(&server).await;
    assert_eq!(
        series(&text, "tlsgate_per_ip_refusals_total{kind=\"handshakes\"}"),
        1,
        "{text}"
    );
    server.stop().await;
}
