//! CORS answered at the edge and message limits inside proxied WebSockets, over real sockets:
//! curl speaks the browser's preflight and actual requests (an independent client), a raw
//! backend records what reached it; Python's `websockets` is the WebSocket backend (it logs
//! every message it receives and the close code it got) and one of the clients.

use crate::common;

use std::time::{Duration, Instant};

use common::hostile::{serve_site, within, Backend, Recorded};
use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A backend that answers with CORS headers of its own (which the edge must replace) and a
/// `Vary` (which the edge must extend, not duplicate).
async fn cors_backend() -> Backend {
    Backend::start(|request: Recorded, mut tcp: TcpStream| {
        Box::pin(async move {
            let body = format!("{} {}", request.method, request.path);
            tcp.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Allow-Methods: GET\r\nVary: Accept-Encoding\r\nX-Request-Id: 7\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await?;
            Ok(Some(tcp))
        })
    })
    .await
}

/// curl's view of one exchange: status and headers (lower-case names, in order).
struct Seen {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn get(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn one(&self, name: &str) -> &str {
        match self.get(name).as_slice() {
            [value] => value,
            other => panic!("{name}: {other:?} in {:?}", self.headers),
        }
    }
}

async fn curl(dir: &std::path::Path, port: u16, method: &str, headers: &[(&str, &str)]) -> Seen {
    curl_with(dir, port, method, headers, &[]).await
}

async fn curl_with(
    dir: &std::path::Path,
    port: u16,
    method: &str,
    headers: &[(&str, &str)],
    extra: &[&str],
) -> Seen {
    let mut args = vec![
        "-sS".to_owned(),
        "-o".into(),
        "/dev/null".into(),
        "-D".into(),
        "-".into(),
        "--cacert".into(),
        dir.join("ca.crt").display().to_string(),
        "-X".into(),
        method.into(),
    ];
    for (name, value) in headers {
        args.push("-H".into());
        args.push(format!("{name}: {value}"));
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args.push(format!("https://localhost:{port}/api/items"));
    let output = tokio::process::Command::new("curl")
        .args(&args)
        .output()
        .await
        .expect("curl is installed (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Seen { status, headers }
}

const APP: &str = "https://app.example.com";

fn preflight<'a>(origin: &'a str, method: &'a str, headers: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut asked = vec![
        ("Origin", origin),
        ("Access-Control-Request-Method", method),
    ];
    if !headers.is_empty() {
        asked.push(("Access-Control-Request-Headers", headers));
    }
    asked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_at_the_edge_and_responses_carry_the_edges_cors_headers() {
    let backend = cors_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "upstreams:\n  app:\n    servers: [{}]\ncors:\n  api:\n    allowed_origins: [{APP}, \"https://*.example.com\"]\n    allowed_methods: [GET, POST, PUT]\n    allowed_headers: [content-type, x-custom]\n    exposed_headers: [X-Request-Id]\n    allow_credentials: true\n    max_age: 600s\nroutes:\n  - path: /api\n    upstream: app\n    max_body_size: 16\n    cors: api\n",
        backend.url()
    );
    let (server, _) = serve_site(dir.path(), &config).await;
    let port = server.main.port();
    let dir = dir.path();

    // Allowed: 204 at the edge, the asked headers named, credentials, max age, Vary.
    let seen = curl(
        dir,
        port,
        "OPTIONS",
        &preflight(APP, "PUT", "content-type,X-Custom"),
    )
    .await;
    assert_eq!(seen.status, 204);
    assert_eq!(seen.one("access-control-allow-origin"), APP);
    assert_eq!(seen.one("access-control-allow-methods"), "GET, POST, PUT");
    assert_eq!(
        seen.one("access-control-allow-headers"),
        "content-type, x-custom"
    );
    assert_eq!(seen.one("access-control-allow-credentials"), "true");
    assert_eq!(seen.one("access-control-max-age"), "600");
    assert_eq!(
        seen.one("vary"),
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    );
    let sub = curl(
        dir,
        port,
        "OPTIONS",
        &preflight("https://a.b.example.com", "GET", ""),
    )
    .await;
    assert_eq!(sub.status, 204);
    assert_eq!(
        sub.one("access-control-allow-origin"),
        "https://a.b.example.com"
    );

    // Refused: another origin (the suffix trick too), another method, another header.
    for (origin, method, headers) in [
        ("https://evil.test", "GET", ""),
        ("https://example.com.evil.test", "GET", ""),
        ("https://example.com", "GET", ""),
        ("http://app.example.com", "GET", ""),
        (APP, "DELETE", ""),
        (APP, "POST", "content-type, x-other"),
    ] {
        let seen = curl(dir, port, "OPTIONS", &preflight(origin, method, headers)).await;
        assert_eq!(seen.status, 403, "{origin} {method} {headers}");
        assert!(
            seen.get("access-control-allow-methods").is_empty(),
            "{:?}",
            seen.headers
        );
        if origin != APP {
            assert!(seen.get("access-control-allow-origin").is_empty());
        }
        assert_eq!(seen.one("vary"), "Origin");
    }
    assert!(
        backend.requests().is_empty(),
        "no preflight reaches the backend: {:?}",
        backend.requests()
    );

    // Actual requests: the backend's CORS headers replaced, its Vary extended once.
    let seen = curl(dir, port, "GET", &[("Origin", APP)]).await;
    assert_eq!(seen.status, 200);
    assert_eq!(seen.one("access-control-allow-origin"), APP);
    assert_eq!(seen.one("access-control-allow-credentials"), "true");
    assert_eq!(seen.one("access-control-expose-headers"), "x-request-id");
    assert!(seen.get("access-control-allow-methods").is_empty());
    assert_eq!(seen.one("vary"), "Accept-Encoding, Origin");
    for origin in [Some("https://evil.test"), None] {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
        let seen = curl(dir, port, "POST", &headers).await;
        assert_eq!(seen.status, 200, "{origin:?}");
        assert!(
            seen.get("access-control-allow-origin").is_empty(),
            "{:?}",
            seen.headers
        );
        assert_eq!(seen.one("vary"), "Accept-Encoding, Origin");
    }
    // An OPTIONS that is not a preflight is an ordinary request.
    let seen = curl(dir, port, "OPTIONS", &[("Origin", APP)]).await;
    assert_eq!(seen.status, 200);
    assert_eq!(seen.one("access-control-allow-origin"), APP);
    let methods: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(methods, ["GET", "POST", "POST", "OPTIONS"]);
    // An edge refusal carries CORS headers too, so the page can read its status.
    let seen = curl_with(
        dir,
        port,
        "POST",
        &[("Origin", APP)],
        &["--http1.1", "--data", "0123456789abcdefg"],
    )
    .await;
    assert_eq!(seen.status, 413);
    assert_eq!(seen.one("access-control-allow-origin"), APP);
    assert_eq!(seen.one("vary"), "Origin");
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains(r#"tlsgate_cors_preflights_total{route="*/api",result="ok"} 2"#)
            && metrics
                .contains(r#"tlsgate_cors_preflights_total{route="*/api",result="origin"} 4"#)
            && metrics
                .contains(r#"tlsgate_cors_preflights_total{route="*/api",result="method"} 1"#)
            && metrics
                .contains(r#"tlsgate_cors_preflights_total{route="*/api",result="header"} 1"#),
        "{metrics}"
    );
    server.stop().await;
}

async fn wss_from(
    server: &TestServer,
    ca: &CertificateDer<'static>,
    path: &str,
    origin: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = tls_connect(
        server.main,
        "localhost",
        default_client(std::slice::from_ref(ca)),
    )
    .await
    .unwrap();
    let mut request = format!("wss://localhost{path}")
        .into_client_request()
        .unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    tokio_tungstenite::client_async(request, stream)
        .await
        .map(|(ws, _)| ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_on_a_cors_route_without_allowed_origins_is_held_to_the_cors_origins() {
    let backend = common::upstream::Upstream::start("ws").await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "routes:\n  - path: /ws\n    upstream: {}\n    cors:\n      allowed_origins: [\"https://*.example.com\"]\n  - path: /ws-own\n    upstream: {}\n    allowed_origins: [https://other.test]\n    cors:\n      allowed_origins: [\"https://*.example.com\"]\n",
        backend.url(),
        backend.url()
    );
    let (server, ca) = serve_site(dir.path(), &config).await;
    let mut ws = wss_from(&server, &ca, "/ws", Some("https://app.example.com"))
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    for origin in [Some("https://evil.test"), None] {
        match wss_from(&server, &ca, "/ws", origin).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403)
            }
            other => panic!("{origin:?}: expected 403, got {:?}", other.is_ok()),
        }
    }
    // A route's own `allowed_origins` decides for its WebSockets.
    assert!(
        wss_from(&server, &ca, "/ws-own", Some("https://other.test"))
            .await
            .is_ok()
    );
    assert!(
        wss_from(&server, &ca, "/ws-own", Some("https://app.example.com"))
            .await
            .is_err()
    );
    server.stop().await;
}

/// A Python `websockets` echo backend (no size limit of its own) that logs `got N` for every
/// message it receives (also those after the close frame that it can no longer echo) and
/// `closed CODE REASON` when the connection ends, to `log`.
async fn python_backend(log: &std::path::Path) -> (tokio::process::Child, u16) {
    let python = std::process::Command::new("python3")
        .args(["-c", "import websockets"])
        .status();
    assert!(
        python.is_ok_and(|s| s.success()),
        "python3 with the websockets package is needed (scripts/test.sh installs it)"
    );
    let port = free_port();
    let script = format!(
        "import asyncio, websockets\nlog = open('{}', 'a', buffering=1)\nasync def echo(ws):\n    while True:\n        try:\n            m = await ws.recv()\n        except websockets.ConnectionClosed:\n            break\n        log.write('got %d\\n' % len(m))\n        try:\n            await ws.send(m)\n        except websockets.ConnectionClosed:\n            pass\n    log.write('closed %s %s\\n' % (ws.close_code, ws.close_reason))\nasync def main():\n    async with websockets.serve(echo, '127.0.0.1', {port}, max_size=None):\n        await asyncio.sleep(60)\nasyncio.run(main())\n",
        log.display()
    );
    let child = tokio::process::Command::new("python3")
        .args(["-c", &script])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the Python backend did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, port)
}

fn log_lines(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_over_the_size_or_rate_close_with_1009_or_1008_and_never_reach_the_backend(
) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("backend.log");
    let (mut python, port) = python_backend(&log).await;
    let config = format!(
        "upstreams:\n  py:\n    servers: [http://127.0.0.1:{port}]\nroutes:\n  - path: /size\n    upstream: py\n    websocket: {{max_message_size: 64KiB}}\n  - path: /rate\n    upstream: py\n    websocket: {{messages_per_second: 2, burst: 5}}\n  - path: /free\n    upstream: py\n"
    );
    let (server, ca) = serve_site(dir.path(), &config).await;

    // Size: a message at the limit passes, one byte more never reaches the backend.
    let mut ws = wss_from(&server, &ca, "/size", None).await.unwrap();
    ws.send(Message::binary(vec![7u8; 64 * 1024]))
        .await
        .unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().len(), 64 * 1024);
    ws.send(Message::binary(vec![7u8; 64 * 1024 + 1]))
        .await
        .unwrap();
    let (code, reason, _) = close_code(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));

    // Rate: the burst of 5 passes, the sixth at once is refused.
    let mut ws = wss_from(&server, &ca, "/rate", None).await.unwrap();
    for i in 0..6 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    let (code, reason, echoes) = close_code(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1008, "message rate exceeded"));
    // The close goes out at once: echoes still on their way back may be cut off.
    assert!(echoes <= 5, "{echoes}");

    // Without limits, the same big message passes.
    let mut ws = wss_from(&server, &ca, "/free", None).await.unwrap();
    ws.send(Message::binary(vec![7u8; 200_000])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().len(), 200_000);
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);

    // A fragmented message is measured whole: Python sends 3 fragments of 30 KiB.
    let client = format!(
        "import asyncio, ssl, websockets\nasync def main():\n    ctx = ssl.create_default_context(cafile='{}')\n    async with websockets.connect('wss://localhost:{}/size', ssl=ctx, compression=None) as ws:\n        await ws.send([b'x' * 30720, b'y' * 30720])\n        print('echo', len(await ws.recv()))\n        await ws.send([b'x' * 30720, b'y' * 30720, b'z' * 30720])\n        try:\n            await ws.recv()\n        except websockets.ConnectionClosed as closed:\n            print('closed', closed.rcvd.code, closed.rcvd.reason)\nasyncio.run(main())\n",
        dir.path().join("ca.crt").display(),
        server.main.port()
    );
    let output = tokio::process::Command::new("python3")
        .args(["-c", &client])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("echo 61440"), "{stdout}");
    assert!(stdout.contains("closed 1009 message too big"), "{stdout}");

    // permessage-deflate is not negotiated on a size-limited route, though client and backend
    // both offer it: 70,000 `a`s would deflate to a few hundred bytes and pass the limit.
    let client = format!(
        "import asyncio, ssl, websockets\nasync def main():\n    ctx = ssl.create_default_context(cafile='{}')\n    async with websockets.connect('wss://localhost:{}/size', ssl=ctx) as ws:\n        print('extensions', [type(e).__name__ for e in ws.protocol.extensions])\n        await ws.send('a' * 70000)\n        try:\n            await ws.recv()\n        except websockets.ConnectionClosed as closed:\n            print('closed', closed.rcvd.code, closed.rcvd.reason)\nasyncio.run(main())\n",
        dir.path().join("ca.crt").display(),
        server.main.port()
    );
    let output = tokio::process::Command::new("python3")
        .args(["-c", &client])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("extensions []"), "{stdout}");
    assert!(stdout.contains("closed 1009 message too big"), "{stdout}");

    // The backend got every message under the limits and none over them, and was told why.
    let mut lines = Vec::new();
    within(Duration::from_secs(5), || {
        lines = log_lines(&log);
        lines.iter().filter(|l| l.starts_with("closed")).count() >= 5
    })
    .await;
    let got: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("got"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        got,
        [
            "got 65536",
            "got 2",
            "got 2",
            "got 2",
            "got 2",
            "got 2",
            "got 200000",
            "got 61440"
        ],
        "{lines:?}"
    );
    let mut closes: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("closed"))
        .map(String::as_str)
        .collect();
    closes.sort();
    assert_eq!(
        closes,
        [
            "closed 1005 ",
            "closed 1008 message rate exceeded",
            "closed 1009 message too big",
            "closed 1009 message too big",
            "closed 1009 message too big"
        ],
        "{lines:?}"
    );
    // Counted when each tunnel has finished closing (a client that does not answer the
    // close frame is waited for up to 2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = server.metrics_text().await;
        if metrics.contains(
            r#"tlsgate_websocket_limit_closes_total{route="*/size",reason="message_too_big"} 3"#,
        ) && metrics.contains(
            r#"tlsgate_websocket_limit_closes_total{route="*/rate",reason="message_rate"} 1"#,
        ) {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = python.kill().await;
    server.stop().await;
}

/// The page Chromium loads from `https://page.test:PORT/`: three cross-origin `fetch()`es
/// with credentials, each reported as `allowed:STATUS:X-Request-Id` or `blocked`.
fn page(port: u16) -> String {
    format!(
        r#"<!doctype html><html><body><pre id="out">pending</pre><script>
async function probe(name, url, init) {{
  try {{
    const r = await fetch(url, init);
    await r.text();
    return name + '=allowed:' + r.status + ':' + r.headers.get('x-request-id');
  }} catch (e) {{
    return name + '=blocked';
  }}
}}
(async () => {{
  const api = 'https://api.test:{port}';
  const results = [];
  results.push(await probe('put', api + '/api/items', {{method: 'PUT', credentials: 'include',
    headers: {{'X-Custom': '1', 'Content-Type': 'application/json'}}, body: '{{}}'}}));
  results.push(await probe('header', api + '/api/items', {{method: 'PUT', credentials: 'include',
    headers: {{'X-Other': '1'}}}}));
  results.push(await probe('origin', api + '/closed/items', {{credentials: 'include'}}));
  document.getElementById('out').textContent = results.join(' ');
}})();
</script></body></html>"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_reads_what_the_policy_allows_and_is_blocked_otherwise() {
    let port = free_port();
    let html = page(port);
    let backend = Backend::start(move |request: Recorded, mut tcp: TcpStream| {
        let html = html.clone();
        Box::pin(async move {
            let (kind, body) = if request.path.starts_with("/page") {
                ("text/html", html)
            } else {
                ("text/plain", format!("{} {}", request.method, request.path))
            };
            tcp.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nX-Request-Id: 7\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await?;
            Ok(Some(tcp))
        })
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "site",
        &["page.test", "api.test"],
        tlsgate::certs::KeyAlgorithm::EcdsaP256,
    );
    let config = format!(
        "tls:\n  certificates:\n    - pem_file: site.pem\nupstreams:\n  app:\n    servers: [{}]\ncors:\n  api:\n    allowed_origins: [\"https://page.test:{port}\"]\n    allowed_methods: [GET, PUT]\n    allowed_headers: [content-type, x-custom]\n    exposed_headers: [x-request-id]\n    allow_credentials: true\n  elsewhere:\n    allowed_origins: [https://elsewhere.test]\n    allow_credentials: true\nroutes:\n  - host: page.test\n    path: /page\n    upstream: app\n  - host: api.test\n    path: /api\n    upstream: app\n    cors: api\n  - host: api.test\n    path: /closed\n    upstream: app\n    cors: elsewhere\n",
        backend.url()
    );
    let server = TestServer::start_at(&config, dir.path(), port, 0)
        .await
        .unwrap();
    let (dom, stderr) = common::chromium::dump_dom(
        &dir.path().join("chromium-profile"),
        "MAP page.test 127.0.0.1, MAP api.test 127.0.0.1",
        15000,
        &format!("https://page.test:{port}/page"),
    )
    .await;
    assert!(
        dom.contains("put=allowed:200:7")
            && dom.contains("header=blocked")
            && dom.contains("origin=blocked"),
        "{dom}\n{stderr}"
    );
    // What reached the backend: the page, the allowed PUT (after a preflight answered at the
    // edge) and the simple GET the browser then refused to show; never a preflight.
    let seen: Vec<String> = backend
        .requests()
        .iter()
        .filter(|r| !r.path.starts_with("/favicon"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        seen,
        ["GET /page", "PUT /api/items", "GET /closed/items"],
        "{dom}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_sees_close_code_1009_for_an_oversize_websocket_message() {
    let port = free_port();
    let ws_backend = common::upstream::Upstream::start("ws").await;
    let html = format!(
        r#"<!doctype html><html><body><pre id="out">pending</pre><script>
let echoes = 0;
const ws = new WebSocket('wss://page.test:{port}/ws');
ws.onopen = () => ws.send('x'.repeat(1000));
ws.onmessage = (m) => {{ echoes += 1; ws.send('y'.repeat(5000)); }};
ws.onclose = (e) => {{
  document.getElementById('out').textContent = 'closed:' + e.code + ':' + e.reason + ':' + echoes;
}};
</script><img src="/page/slow"></body></html>"#
    );
    // The page's load event (when Chromium dumps the DOM) waits for the slow image, which
    // gives the WebSocket its real time to open, echo and be closed.
    let page = Backend::start(move |request: Recorded, mut tcp: TcpStream| {
        let html = html.clone();
        Box::pin(async move {
            let html = if request.path == "/page/slow" {
                tokio::time::sleep(Duration::from_secs(3)).await;
                String::new()
            } else {
                html
            };
            common::hostile::write_html(&mut tcp, &html).await?;
            Ok(Some(tcp))
        })
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "site",
        &["page.test"],
        tlsgate::certs::KeyAlgorithm::EcdsaP256,
    );
    let config = format!(
        "tls:\n  certificates:\n    - pem_file: site.pem\nroutes:\n  - path: /page\n    upstream: {}\n  - path: /ws\n    upstream: {}\n    websocket: {{max_message_size: 4KiB}}\n",
        page.url(),
        ws_backend.url()
    );
    let server = TestServer::start_at(&config, dir.path(), port, 0)
        .await
        .unwrap();
    let (dom, stderr) = common::chromium::dump_dom(
        &dir.path().join("chromium-profile"),
        "MAP page.test 127.0.0.1",
        1000,
        &format!("https://page.test:{port}/page"),
    )
    .await;
    assert!(
        dom.contains("closed:1009:message too big:1"),
        "{dom}\n{stderr}"
    );
    server.stop().await;
}
