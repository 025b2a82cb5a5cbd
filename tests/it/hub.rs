//! The WSS hub over real sockets, with real clients: the seeds' Python `websockets` clients,
//! headless Chromium's `WebSocket`, curl as the publishing backend, tokens minted by PyJWT,
//! a JSON-RPC backend, and 10,000 tokio-tungstenite subscribers against the `tlsgate` binary.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::hostile::{Backend, Recorded};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

const SECRET: &str = "a-long-shared-secret-for-the-hub-tests-0123456789\n";

/// A server with the `users` HS256 verifier (`hs.secret`) and `rest` (its `hub:` and more).
struct Hub {
    dir: tempfile::TempDir,
    server: TestServer,
}

impl Hub {
    async fn start(rest: &str) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hs.secret"), SECRET).unwrap();
        let server = TestServer::start(&config(rest), dir.path()).await.unwrap();
        Hub { dir, server }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// An HS256 token for `sub` expiring in `ttl` seconds, with `extra` claims.
    fn token(&self, sub: &str, ttl: u64, extra: Value) -> String {
        self.token_until(sub, pyjwt::now() + ttl, extra)
    }

    /// An HS256 token for `sub` whose `exp` is `exp`.
    fn token_until(&self, sub: &str, exp: u64, extra: Value) -> String {
        let mut claims = json!({"sub": sub, "exp": exp});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        pyjwt::sign(self.path(), "HS256", "hs.secret", &claims.to_string(), "{}")
    }

    /// The local CA the server's certificate chains to (for Python's `ssl`).
    fn ca_file(&self) -> PathBuf {
        self.server.data_dir.join("ca/root.crt")
    }

    async fn connect(&self, path: &str) -> Wss {
        self.server.wss_connect(path).await.0
    }

    async fn admin(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        admin_call(self.server.admin.unwrap(), method, path, body).await
    }

    /// `POST /hub/publish` with `data` as raw JSON text.
    async fn publish(&self, channel: &str, data: &str) -> Value {
        let body = format!("{{\"channel\":{},\"data\":{data}}}", json!(channel));
        let (status, answer) = self.admin("POST", "/hub/publish", &body).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    async fn metrics(&self) -> String {
        self.server.metrics_text().await
    }
}

fn config(rest: &str) -> String {
    format!("jwt:\n  users:\n    algorithms: [HS256]\n    secret_file: hs.secret\n{rest}")
}

async fn admin_call(
    admin: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Value) {
    let stream = TcpStream::connect(admin).await.unwrap();
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(body_of(body.to_owned()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), send_on(stream, request))
        .await
        .expect("the publish API answers within 10 s");
    let value = serde_json::from_str(&response.body)
        .unwrap_or_else(|_| panic!("{path}: not JSON: {}", response.body));
    (response.status.as_u16(), value)
}

/// The value of the series `line` (`name{labels}`) in `metrics`, 0 when absent.
fn series(metrics: &str, line: &str) -> f64 {
    common::hostile::series(metrics, line).unwrap_or(0.0)
}

async fn send(ws: &mut Wss, text: &str) {
    ws.send(Message::text(text.to_owned())).await.unwrap();
}

/// The next text message within 5 s (pings and pongs skipped).
async fn next_text(ws: &mut Wss) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
        {
            Some(Ok(Message::Text(text))) => return text.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn next_json(ws: &mut Wss) -> Value {
    let text = next_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// Sends a ping action and returns every text message that came before its pong: once it is
/// back, the session has handled everything sent before it.
async fn until_pong(ws: &mut Wss) -> Vec<String> {
    send(ws, r#"{"action":"ping","id":"sync"}"#).await;
    let mut before = Vec::new();
    loop {
        let text = next_text(ws).await;
        if serde_json::from_str::<Value>(&text).ok() == Some(json!({"type":"pong","id":"sync"})) {
            return before;
        }
        before.push(text);
    }
}

/// A seed-style Python `websockets` client, driven line by line over its stdin: `send TEXT`
/// and `recv` (answered `msg TEXT`, `closed CODE REASON` or `timeout`, texts JSON-encoded so a
/// message's bytes survive the pipe).
const PY_CLIENT: &str = r#"
import asyncio, json, ssl, sys, websockets
async def main():
    url, cafile = sys.argv[1], sys.argv[2]
    ctx = ssl.create_default_context(cafile=cafile)
    loop = asyncio.get_running_loop()
    try:
        ws = await websockets.connect(url, ssl=ctx, compression=None, ping_interval=None)
    except Exception as e:
        print("refused", json.dumps(str(e)), flush=True)
        return
    print("open", flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd, _, arg = line.rstrip("\n").partition(" ")
        try:
            if cmd == "send":
                await ws.send(json.loads(arg))
                print("sent", flush=True)
            elif cmd == "recv":
                m = await asyncio.wait_for(ws.recv(), 5)
                print("msg", json.dumps(m), flush=True)
        except websockets.ConnectionClosed as c:
            code = c.rcvd.code if c.rcvd else None
            reason = c.rcvd.reason if c.rcvd else ""
            print("closed", code, json.dumps(reason), flush=True)
        except asyncio.TimeoutError:
            print("timeout", flush=True)
    await ws.close()
asyncio.run(main())
"#;

struct PyClient {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl PyClient {
    async fn connect(hub: &Hub, path: &str) -> PyClient {
        let url = format!("wss://localhost:{}{path}", hub.server.main.port());
        let mut child = tokio::process::Command::new("python3")
            .args(["-c", PY_CLIENT, &url, hub.ca_file().to_str().unwrap()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with websockets (scripts/test.sh installs it)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut client = PyClient {
            _child: child,
            stdin,
            lines,
        };
        let first = client.line().await;
        assert_eq!(first, "open", "the Python client did not connect to {path}");
        client
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(15), self.lines.next_line())
            .await
            .expect("the Python client answers within 15 s")
            .unwrap()
            .expect("the Python client is running")
    }

    async fn send(&mut self, text: &str) {
        let line = format!("send {}\n", json!(text));
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        assert_eq!(self.line().await, "sent");
    }

    /// The next message exactly as received.
    async fn recv(&mut self) -> String {
        self.stdin.write_all(b"recv\n").await.unwrap();
        let line = self.line().await;
        let text = line
            .strip_prefix("msg ")
            .unwrap_or_else(|| panic!("expected a message, got {line}"));
        serde_json::from_str(text).unwrap()
    }

    async fn recv_json(&mut self) -> Value {
        serde_json::from_str(&self.recv().await).unwrap()
    }
}

/// Publishes with curl, as a backend would: the answer's JSON.
async fn curl_publish(hub: &Hub, body: &str) -> Value {
    let output = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
            &format!("http://{}/hub/publish", hub.server.admin.unwrap()),
        ])
        .output()
        .await
        .expect("curl is installed (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "curl: {text}");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_python_clients_get_curl_publications_byte_for_byte_by_query_and_by_action() {
    let hub = Hub::start(
        "hub:\n  endpoints:\n    - path: /ws\n      auth: {jwt: users, sources: [\"query:token\"]}\n    - path: /ws/notifications\n      auth: {jwt: users, sources: [\"query:token\"]}\n      subscribe: [\"user:{claims.sub}\"]\n  namespaces:\n    prices: {client_subscribe: true}\n",
    )
    .await;
    let token = hub.token("alice", 3600, json!({}));

    // Seed 000's test_wss.py: channels in the query, then its subscribe message.
    let mut by_query = PyClient::connect(
        &hub,
        &format!("/ws?token={token}&channels=prices&coins=bitcoin,ethereum"),
    )
    .await;
    by_query
        .send(r#"{"action": "subscribe", "channel": "prices", "coins": ["bitcoin", "ethereum"]}"#)
        .await;
    let subscribed = by_query.recv_json().await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["channel"], "prices");
    assert_eq!(subscribed["offset"], 0);
    // By action only, with an id the reply echoes.
    let mut by_action = PyClient::connect(&hub, &format!("/ws?token={token}")).await;
    by_action
        .send(r#"{"action":"subscribe","channel":"prices","id":"s1"}"#)
        .await;
    let subscribed = by_action.recv_json().await;
    assert_eq!(
        (&subscribed["type"], &subscribed["id"]),
        (&json!("subscribed"), &json!("s1"))
    );
    // Seed 002's notifications client: subscribed by the server from the token's `sub`.
    let mut notified = PyClient::connect(&hub, &format!("/ws/notifications?token={token}")).await;
    notified.send(r#"{"action":"ping","id":7}"#).await;
    assert_eq!(notified.recv_json().await, json!({"type":"pong","id":7}));

    // The publisher's bytes reach every subscriber unchanged: key order, spacing, a tab, a
    // newline, escapes and number spellings.
    let data =
        "{ \"z\" : 1.50,\n\t\"a\":[2e3 , -0.0],\"s\":\"caf\\u00e9 \\\"q\\\"\",  \"n\":null }";
    let answer = curl_publish(&hub, &format!("{{\"channel\":\"prices\",\"data\":{data}}}")).await;
    assert_eq!(answer["offset"], 1, "{answer}");
    assert_eq!(answer["delivered"], 2, "{answer}");
    assert_eq!(answer["duplicate"], false, "{answer}");
    assert_eq!(by_query.recv().await, data);
    assert_eq!(by_action.recv().await, data);
    let answer = curl_publish(
        &hub,
        r#"{"channel":"user:alice","data":{"type":"notification","text":"hello"}}"#,
    )
    .await;
    assert_eq!(answer["delivered"], 1, "{answer}");
    assert_eq!(
        notified.recv().await,
        r#"{"type":"notification","text":"hello"}"#
    );

    // Ping and errors echo the request's id.
    by_action.send(r#"{"action":"ping","id":"p1"}"#).await;
    assert_eq!(
        by_action.recv_json().await,
        json!({"type":"pong","id":"p1"})
    );
    by_action.send(r#"{"action":"dance","id":42}"#).await;
    let error = by_action.recv_json().await;
    assert_eq!(
        (&error["type"], &error["code"], &error["id"]),
        (&json!("error"), &json!("unknown_action"), &json!(42)),
        "{error}"
    );
    by_action
        .send(r#"{"action":"subscribe","channel":"secret:x","id":"s9"}"#)
        .await;
    let error = by_action.recv_json().await;
    assert_eq!(
        (&error["code"], &error["id"]),
        (&json!("unknown_namespace"), &json!("s9")),
        "{error}"
    );
    by_action.send("not json").await;
    assert_eq!(by_action.recv_json().await["code"], "bad_request");
    // Unsubscribed, it gets no more publications.
    by_action
        .send(r#"{"action":"unsubscribe","channel":"prices","id":"u"}"#)
        .await;
    assert_eq!(
        by_action.recv_json().await,
        json!({"type":"unsubscribed","channel":"prices","id":"u"})
    );
    let answer = curl_publish(&hub, r#"{"channel":"prices","data":[1]}"#).await;
    assert_eq!(answer["delivered"], 1, "{answer}");
    assert_eq!(by_query.recv().await, "[1]");
    hub.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_subscribes_over_wss_and_shows_a_publication() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hs.secret"), SECRET).unwrap();
    let claims = json!({"sub": "browser", "exp": pyjwt::now() + 3600}).to_string();
    let token = pyjwt::sign(dir.path(), "HS256", "hs.secret", &claims, "{}");
    let html = format!(
        r#"<!doctype html><html><body><pre id="out">pending</pre><script>
const out = document.getElementById('out');
const ws = new WebSocket('wss://' + location.host + '/ws?token={token}');
ws.onopen = () => ws.send(JSON.stringify({{action: 'subscribe', channel: 'prices', id: 'b1'}}));
ws.onmessage = (m) => {{
  const msg = JSON.parse(m.data);
  if (msg.type === 'subscribed') {{ out.textContent = 'subscribed:' + msg.id; return; }}
  out.textContent = 'got:' + m.data;
  console.log('publication', m.data);
}};
ws.onclose = (e) => {{ out.textContent += ' closed:' + e.code; }};
</script><img src="/page/slow"></body></html>"#
    );
    // The page's load event (when Chromium prints the DOM) waits for the slow image; its
    // handler publishes once the page's subscription is there.
    let admin: Arc<OnceLock<std::net::SocketAddr>> = Arc::new(OnceLock::new());
    let published = Arc::new(Mutex::new(None::<Value>));
    let (admin_seen, published_by) = (admin.clone(), published.clone());
    let page = Backend::start(move |request: Recorded, mut tcp: TcpStream| {
        let html = html.clone();
        let (admin, published) = (admin_seen.clone(), published_by.clone());
        Box::pin(async move {
            let body = if request.path == "/page/slow" {
                let admin = *admin.get().unwrap();
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let (_, presence) =
                        admin_call(admin, "GET", "/hub/presence?channel=prices", "").await;
                    if presence["connections"] == 1 || Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let (_, answer) = admin_call(
                    admin,
                    "POST",
                    "/hub/publish",
                    r#"{"channel":"prices","data":{"coin":"bitcoin","usd":64000.5}}"#,
                )
                .await;
                *published.lock().unwrap() = Some(answer);
                tokio::time::sleep(Duration::from_secs(1)).await;
                String::new()
            } else {
                html
            };
            common::hostile::write_html(&mut tcp, &body).await?;
            Ok(Some(tcp))
        })
    })
    .await;
    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "site",
        &["page.test"],
        tlsgate::certs::KeyAlgorithm::EcdsaP256,
    );
    let yaml = config(&format!(
        "tls:\n  certificates:\n    - pem_file: site.pem\nroutes:\n  - path: /page\n    upstream: {}\nhub:\n  endpoints:\n    - path: /ws\n      auth: {{jwt: users, sources: [\"query:token\"]}}\n  namespaces:\n    prices: {{client_subscribe: true}}\n",
        page.url()
    ));
    let server = TestServer::start(&yaml, dir.path()).await.unwrap();
    admin.set(server.admin.unwrap()).unwrap();
    let (dom, stderr) = common::chromium::dump_dom(
        &dir.path().join("chromium-profile"),
        "MAP page.test 127.0.0.1",
        1000,
        &format!("https://page.test:{}/page", server.main.port()),
    )
    .await;
    let answer = published.lock().unwrap().clone();
    assert_eq!(
        answer.as_ref().map(|a| a["delivered"].clone()),
        Some(json!(1)),
        "{answer:?}\n{dom}\n{stderr}"
    );
    assert!(
        dom.contains(r#"got:{"coin":"bitcoin","usd":64000.5}"#),
        "{dom}\n{stderr}"
    );
    server.stop().await;
}

const RECOVERY: &str = "hub:\n  endpoints:\n    - path: /ws\n      auth: {jwt: users, sources: [\"query:token\"]}\n  namespaces:\n    prices: {history_size: 5, history_ttl: 5m, client_subscribe: true}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_disconnected_by_the_api_recovers_exactly_what_it_missed() {
    let hub = Hub::start(RECOVERY).await;
    let token = hub.token("alice", 3600, json!({}));
    let mut ws = hub.connect(&format!("/ws?token={token}")).await;
    send(
        &mut ws,
        r#"{"action":"subscribe","channel":"prices:btc","id":1}"#,
    )
    .await;
    let subscribed = next_json(&mut ws).await;
    assert_eq!(subscribed["offset"], 0, "{subscribed}");
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    for i in 1..=2 {
        let answer = hub.publish("prices:btc", &format!("{{\"m\":{i}}}")).await;
        assert_eq!(
            (answer["epoch"].as_str(), &answer["offset"]),
            (Some(epoch.as_str()), &json!(i))
        );
        assert_eq!(next_text(&mut ws).await, format!("{{\"m\":{i}}}"));
    }

    // Disconnected by the backend: the client sees 4003.
    let (status, answer) = hub
        .admin("POST", "/hub/disconnect", r#"{"user":"alice"}"#)
        .await;
    assert_eq!((status, &answer), (200, &json!({"disconnected": 1})));
    let (code, reason, _) = close_code(&mut ws).await;
    assert_eq!(
        (code, reason.as_str()),
        (4003, "disconnected by the server")
    );
    drop(ws);
    for i in 3..=5 {
        hub.publish("prices:btc", &format!("{{\"m\":{i}}}")).await;
    }

    // Back with `since` in the query: recovered, the three missed in order, nothing twice.
    let mut ws = hub
        .connect(&format!(
            "/ws?token={token}&channels=prices:btc&since.prices:btc={epoch}:2"
        ))
        .await;
    let subscribed = next_json(&mut ws).await;
    assert_eq!(
        subscribed,
        json!({"type":"subscribed","channel":"prices:btc","epoch":epoch,"offset":5,"recovered":true})
    );
    assert_eq!(
        until_pong(&mut ws).await,
        [r#"{"m":3}"#, r#"{"m":4}"#, r#"{"m":5}"#]
    );
    hub.publish("prices:btc", r#"{"m":6}"#).await;
    assert_eq!(until_pong(&mut ws).await, [r#"{"m":6}"#]);

    // By action, with an id.
    let mut other = hub.connect(&format!("/ws?token={token}")).await;
    send(
        &mut other,
        &format!(
            r#"{{"action":"subscribe","channel":"prices:btc","since":{{"epoch":"{epoch}","offset":4}},"id":"r"}}"#
        ),
    )
    .await;
    let subscribed = next_json(&mut other).await;
    assert_eq!(
        (
            &subscribed["recovered"],
            &subscribed["offset"],
            &subscribed["id"]
        ),
        (&json!(true), &json!(6), &json!("r"))
    );
    assert_eq!(until_pong(&mut other).await, [r#"{"m":5}"#, r#"{"m":6}"#]);

    // A wrong epoch: not recovered, the current place given, nothing replayed.
    send(
        &mut other,
        r#"{"action":"subscribe","channel":"prices:btc","since":{"epoch":"0123456789abcdef","offset":1}}"#,
    )
    .await;
    let subscribed = next_json(&mut other).await;
    assert_eq!(
        (
            &subscribed["recovered"],
            &subscribed["epoch"],
            &subscribed["offset"]
        ),
        (&json!(false), &json!(epoch), &json!(6))
    );
    assert!(until_pong(&mut other).await.is_empty());

    // Further back than history_size (5) keeps: not recovered either.
    for i in 7..=12 {
        hub.publish("prices:btc", &format!("{{\"m\":{i}}}")).await;
    }
    until_pong(&mut ws).await;
    until_pong(&mut other).await;
    let mut late = hub
        .connect(&format!(
            "/ws?token={token}&channels=prices:btc&since.prices:btc={epoch}:6"
        ))
        .await;
    let subscribed = next_json(&mut late).await;
    assert_eq!(
        (&subscribed["recovered"], &subscribed["offset"]),
        (&json!(false), &json!(12)),
        "{subscribed}"
    );
    assert!(until_pong(&mut late).await.is_empty());
    // From 7 on is still kept.
    send(
        &mut late,
        &format!(r#"{{"action":"subscribe","channel":"prices:btc","since":{{"epoch":"{epoch}","offset":10}}}}"#),
    )
    .await;
    assert_eq!(next_json(&mut late).await["recovered"], true);
    assert_eq!(until_pong(&mut late).await, [r#"{"m":11}"#, r#"{"m":12}"#]);

    let metrics = hub.metrics().await;
    assert_eq!(
        series(
            &metrics,
            r#"tlsgate_hub_recoveries_total{result="recovered"}"#
        ),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        series(&metrics, r#"tlsgate_hub_recoveries_total{result="lost"}"#),
        2.0
    );
    hub.server.stop().await;
}

/// A client that subscribes and then never reads, with a small receive buffer so its socket
/// fills soon.
async fn never_reading(hub: &Hub, path: &str) -> Wss {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(hub.server.main).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(default_client(&[hub.server.local_ca()]))
        .connect(name, tcp)
        .await
        .unwrap();
    tokio_tungstenite::client_async(format!("wss://localhost{path}"), tls)
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_dropped_and_the_others_get_everything() {
    let hub = Hub::start(
        "hub:\n  queue: {max_messages: 50, max_bytes: 64MiB}\n  endpoints:\n    - path: /open\n  namespaces:\n    big: {client_subscribe: true, max_message_size: 256KiB}\n",
    )
    .await;
    let mut slow = never_reading(&hub, "/open?channels=big").await;
    let mut fast = hub.connect("/open?channels=big").await;
    // Both subscriptions are in place before the first publication.
    until_pong(&mut fast).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, channels) = hub.admin("GET", "/hub/channels", "").await;
        if channels == json!({"channels":[{"channel":"big","subscribers":2}]}) {
            break;
        }
        assert!(Instant::now() < deadline, "{channels}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    const N: usize = 400;
    let payload = format!("\"{}\"", "x".repeat(100 * 1024));
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < N {
            let text = next_text(&mut fast).await;
            assert_eq!(text.len(), 100 * 1024 + 2);
            got += 1;
        }
        (got, fast)
    });
    let rss_before = common::hostile::rss_kib();
    let mut delivered_to_both = 0;
    for _ in 0..N {
        let answer = hub.publish("big", &payload).await;
        if answer["delivered"] == 2 {
            delivered_to_both += 1;
        }
    }
    let (got, mut fast) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the fast client reads all within 30 s")
        .unwrap();
    assert_eq!(got, N, "the fast client got every publication");
    let rss_after = common::hostile::rss_kib();
    println!(
        "slow consumer: queued to both {delivered_to_both} of {N}; RSS {rss_before} KiB -> {rss_after} KiB"
    );
    assert!(
        delivered_to_both < N,
        "the never-reading client was never dropped"
    );
    // 40 MB went out; the dropped session holds none of it (its queue was freed at once and
    // its socket's buffers are bounded).
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // What the never-reading client finally sees: what its socket held, then the end.
    let mut messages = 0;
    let ending = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => messages += 1,
            Ok(Some(Ok(Message::Close(frame)))) => break format!("close {frame:?}"),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(error))) => break format!("error {error}"),
            Ok(None) => break "end".to_owned(),
            Err(_) => panic!("the slow client's connection is still open"),
        }
    };
    println!("the never-reading client read {messages} messages, then: {ending}");
    assert!(messages < N, "{messages}");
    assert!(
        ending.contains("4429") || ending.starts_with("error") || ending == "end",
        "{ending}"
    );
    let metrics = hub.metrics().await;
    // Dropped: the 50 the full queue held and the one that found it full.
    assert_eq!(
        series(
            &metrics,
            r#"tlsgate_hub_dropped_messages_total{reason="slow_consumer"}"#
        ),
        51.0,
        "{metrics}"
    );
    assert_eq!(
        series(
            &metrics,
            r#"tlsgate_hub_disconnects_total{reason="slow_consumer"}"#
        ),
        1.0,
        "{metrics}"
    );
    assert!(until_pong(&mut fast).await.is_empty());
    hub.server.stop().await;
}

const AUTH_WS: &str = "    - path: /ws\n      auth: {jwt: users, sources: [\"query:token\"]}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_closes_4003_at_exp_unless_refreshed_for_the_same_user() {
    let hub = Hub::start(&format!("hub:\n  endpoints:\n{AUTH_WS}")).await;
    let (longer, bob) = (
        hub.token("alice", 3600, json!({})),
        hub.token("bob", 3600, json!({})),
    );
    let exp = pyjwt::now() + 3;
    let (first, second) = (
        hub.token_until("alice", exp, json!({})),
        hub.token_until("alice", exp, json!({})),
    );
    let mut expiring = hub.connect(&format!("/ws?token={first}")).await;
    let mut refreshing = hub.connect(&format!("/ws?token={second}")).await;

    // Another user's token does not replace this one's.
    send(
        &mut refreshing,
        &format!(r#"{{"action":"refresh","token":"{bob}","id":"r0"}}"#),
    )
    .await;
    assert_eq!(
        next_json(&mut refreshing).await,
        json!({"type":"error","code":"forbidden","message":"the new token is for another user","id":"r0"})
    );
    send(
        &mut refreshing,
        &format!(r#"{{"action":"refresh","token":"{longer}","id":"r1"}}"#),
    )
    .await;
    let refreshed = next_json(&mut refreshing).await;
    assert_eq!(
        (&refreshed["type"], &refreshed["id"]),
        (&json!("refreshed"), &json!("r1")),
        "{refreshed}"
    );
    assert!(refreshed["expires"].as_u64().unwrap() > pyjwt::now() + 3000);

    let (code, reason, _) = close_code(&mut expiring).await;
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let at = unix() - exp as f64;
    assert_eq!((code, reason.as_str()), (4003, "token expired"));
    assert!(
        (-0.05..1.5).contains(&at),
        "closed {at:.2} s from the token's exp"
    );
    // The refreshed one outlives the first token's exp.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(until_pong(&mut refreshing).await.is_empty());
    let metrics = hub.metrics().await;
    assert_eq!(
        series(
            &metrics,
            r#"tlsgate_hub_disconnects_total{reason="token_expired"}"#
        ),
        1.0,
        "{metrics}"
    );
    hub.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_without_a_token_authenticates_by_its_first_message_or_closes_4001() {
    let hub = Hub::start(
        "hub:\n  auth_timeout: 1s\n  endpoints:\n    - path: /ws/notifications\n      auth: {jwt: users, sources: [\"query:token\"]}\n      subscribe: [\"user:{claims.sub}\"]\n",
    )
    .await;
    let token = hub.token("alice", 3600, json!({}));
    let started = Instant::now();
    let mut late = hub.connect("/ws/notifications").await;
    let mut ws = hub.connect("/ws/notifications").await;
    send(
        &mut ws,
        r#"{"action":"subscribe","channel":"user:bob","id":1}"#,
    )
    .await;
    let refused = next_json(&mut ws).await;
    assert_eq!(
        (&refused["code"], &refused["id"]),
        (&json!("unauthenticated"), &json!(1))
    );
    send(
        &mut ws,
        &format!(r#"{{"action":"auth","token":"{token}","id":"a"}}"#),
    )
    .await;
    let authenticated = next_json(&mut ws).await;
    assert_eq!(
        (
            &authenticated["type"],
            &authenticated["user"],
            &authenticated["id"]
        ),
        (&json!("authenticated"), &json!("alice"), &json!("a")),
        "{authenticated}"
    );
    // The endpoint's server-side subscription now applies.
    let answer = hub.publish("user:alice", r#"{"n":1}"#).await;
    assert_eq!(answer["delivered"], 1);
    assert_eq!(next_text(&mut ws).await, r#"{"n":1}"#);

    // The silent one is closed 4001 at auth_timeout.
    let (code, reason, _) = close_code(&mut late).await;
    let at = started.elapsed();
    assert_eq!((code, reason.as_str()), (4001, "no token"));
    assert!(
        at > Duration::from_millis(800) && at < Duration::from_secs(3),
        "{at:?}"
    );
    // The authenticated one is past the deadline and still served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(until_pong(&mut ws).await.is_empty());

    // A bad token, by message or at the upgrade: 4003.
    let mut bad = hub.connect("/ws/notifications").await;
    send(&mut bad, r#"{"action":"auth","token":"not.a.token"}"#).await;
    assert_eq!(close_code(&mut bad).await.0, 4003);
    let mut bad = hub.connect("/ws/notifications?token=not.a.token").await;
    assert_eq!(close_code(&mut bad).await.0, 4003);
    let metrics = hub.metrics().await;
    assert_eq!(
        series(
            &metrics,
            r#"tlsgate_hub_disconnects_total{reason="auth_timeout"}"#
        ),
        1.0,
        "{metrics}"
    );
    hub.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_who_is_in_a_channel_and_members_see_joins_and_leaves() {
    let hub = Hub::start(&format!(
        "hub:\n  endpoints:\n{AUTH_WS}  namespaces:\n    chat: {{client_publish: true, client_subscribe: true, presence: true, join_leave: true}}\n"
    ))
    .await;
    let (alice_token, bob_token) = (
        hub.token("alice", 3600, json!({})),
        hub.token("bob", 3600, json!({})),
    );
    let subscribe = r#"{"action":"subscribe","channel":"chat:room"}"#;
    let mut alice = hub.connect(&format!("/ws?token={alice_token}")).await;
    send(&mut alice, subscribe).await;
    assert_eq!(next_json(&mut alice).await["type"], "subscribed");
    let mut bob = hub.connect(&format!("/ws?token={bob_token}")).await;
    send(&mut bob, subscribe).await;
    assert_eq!(next_json(&mut bob).await["type"], "subscribed");
    assert_eq!(
        next_json(&mut alice).await,
        json!({"type":"join","channel":"chat:room","user":"bob"})
    );
    send(
        &mut alice,
        r#"{"action":"presence","channel":"chat:room","id":"p"}"#,
    )
    .await;
    assert_eq!(
        next_json(&mut alice).await,
        json!({"type":"presence","channel":"chat:room","connections":2,"users":["alice","bob"],"id":"p"})
    );
    let (status, presence) = hub
        .admin("GET", "/hub/presence?channel=chat:room", "")
        .await;
    assert_eq!(
        (status, presence),
        (
            200,
            json!({"channel":"chat:room","connections":2,"users":["alice","bob"]})
        )
    );
    // A client's publication reaches the others (and itself: it is subscribed).
    send(
        &mut bob,
        r#"{"action":"publish","channel":"chat:room","data":{"text":"hi"},"id":9}"#,
    )
    .await;
    let published = next_json(&mut bob).await;
    assert_eq!(
        (&published["type"], &published["id"]),
        (&json!("published"), &json!(9)),
        "{published}"
    );
    assert_eq!(next_text(&mut alice).await, r#"{"text":"hi"}"#);
    assert_eq!(until_pong(&mut bob).await, [r#"{"text":"hi"}"#]);

    send(
        &mut bob,
        r#"{"action":"unsubscribe","channel":"chat:room"}"#,
    )
    .await;
    assert_eq!(next_json(&mut bob).await["type"], "unsubscribed");
    assert_eq!(
        next_json(&mut alice).await,
        json!({"type":"leave","channel":"chat:room","user":"bob"})
    );
    send(&mut bob, subscribe).await;
    assert_eq!(next_json(&mut alice).await["type"], "join");
    // Leaving by closing the socket is a leave too.
    bob.close(None).await.unwrap();
    assert_eq!(
        next_json(&mut alice).await,
        json!({"type":"leave","channel":"chat:room","user":"bob"})
    );
    let (_, presence) = hub
        .admin("GET", "/hub/presence?channel=chat:room", "")
        .await;
    assert_eq!(
        presence,
        json!({"channel":"chat:room","connections":1,"users":["alice"]})
    );
    hub.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_publishes_once() {
    let hub = Hub::start(
        "hub:\n  endpoints:\n    - path: /open\n  namespaces:\n    orders: {client_subscribe: true, history_size: 10}\n",
    )
    .await;
    let mut ws = hub.connect("/open?channels=orders").await;
    until_pong(&mut ws).await;
    let body = r#"{"channel":"orders","data":{"order":17},"idempotency_key":"order-17"}"#;
    let (_, first) = hub.admin("POST", "/hub/publish", body).await;
    let (_, again) = hub.admin("POST", "/hub/publish", body).await;
    assert_eq!(
        (&first["offset"], &first["duplicate"], &first["delivered"]),
        (&json!(1), &json!(false), &json!(1))
    );
    assert_eq!(
        (&again["offset"], &again["epoch"], &again["duplicate"]),
        (&json!(1), &first["epoch"], &json!(true))
    );
    assert_eq!(until_pong(&mut ws).await, [r#"{"order":17}"#]);
    let (_, other) = hub
        .admin(
            "POST",
            "/hub/publish",
            r#"{"channel":"orders","data":{"order":18},"idempotency_key":"order-18"}"#,
        )
        .await;
    assert_eq!(other["offset"], 2);
    assert_eq!(until_pong(&mut ws).await, [r#"{"order":18}"#]);
    // A backend retrying while its first request is still being answered: one publication.
    let admin = hub.server.admin.unwrap();
    let retries: Vec<_> = (0..16)
        .map(|_| {
            tokio::spawn(admin_call(
                admin,
                "POST",
                "/hub/publish",
                r#"{"channel":"orders","data":{"order":19},"idempotency_key":"order-19"}"#,
            ))
        })
        .collect();
    let mut firsts = 0;
    for retry in retries {
        let (status, answer) = retry.await.unwrap();
        assert_eq!((status, &answer["offset"]), (200, &json!(3)), "{answer}");
        if answer["duplicate"] == false {
            firsts += 1;
        }
    }
    assert_eq!(firsts, 1, "one of the concurrent publishes is the first");
    assert_eq!(until_pong(&mut ws).await, [r#"{"order":19}"#]);
    let (_, history) = hub
        .admin("GET", "/hub/history?channel=orders&limit=10", "")
        .await;
    assert_eq!(
        history["publications"],
        json!([{"offset":1,"data":{"order":17}},{"offset":2,"data":{"order":18}},{"offset":3,"data":{"order":19}}])
    );
    hub.server.stop().await;
}

/// A JSON-RPC backend that answers every call with its method and id.
async fn rpc_backend() -> Backend {
    Backend::start(|request: Recorded, mut tcp: TcpStream| {
        Box::pin(async move {
            let call: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
            let body = json!({"jsonrpc":"2.0","id":call["id"],"result":{"method":call["method"],"cameras":["front","back"]}}).to_string();
            tcp.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_rpc_calls_reach_the_backend_with_the_user_and_are_held_to_allowlist_and_budgets() {
    let backend = rpc_backend().await;
    let hub = Hub::start(&format!(
        "hub:\n  auth_timeout: 5s\n  endpoints:\n    - path: /rpc\n      auth: {{jwt: users, sources: [\"query:token\"]}}\n      rpc: {{url: \"{}/rpc\", methods: [get_camera_list, slow], rate: 5r/s, burst: 5, method_rates: {{slow: 1r/m}}, timeout: 5s, pass_claims: {{sub: x-auth-sub}}}}\n",
        backend.url()
    ))
    .await;
    let token = hub.token("alice", 3600, json!({}));
    let mut ws = hub.connect(&format!("/rpc?token={token}")).await;
    let call =
        r#"{"jsonrpc": "2.0", "method": "get_camera_list", "params": {"site" : "north"}, "id": 1}"#;
    send(&mut ws, call).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"jsonrpc":"2.0","id":1,"result":{"method":"get_camera_list","cameras":["front","back"]}})
    );
    let seen = backend.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/rpc")
    );
    assert_eq!(seen[0].header("x-auth-sub"), ["alice"]);
    assert_eq!(
        seen[0].body,
        call.as_bytes(),
        "the body as the client sent it"
    );

    // Outside the allowlist: refused at the edge.
    send(
        &mut ws,
        r#"{"jsonrpc":"2.0","method":"drop_tables","id":2}"#,
    )
    .await;
    let refused = next_json(&mut ws).await;
    assert_eq!(
        (&refused["id"], &refused["error"]["code"]),
        (&json!(2), &json!(-32601)),
        "{refused}"
    );
    // `slow` may be called once a minute.
    send(&mut ws, r#"{"jsonrpc":"2.0","method":"slow","id":3}"#).await;
    assert_eq!(next_json(&mut ws).await["result"]["method"], "slow");
    send(&mut ws, r#"{"jsonrpc":"2.0","method":"slow","id":4}"#).await;
    let limited = next_json(&mut ws).await;
    assert_eq!(
        (&limited["id"], &limited["error"]["code"]),
        (&json!(4), &json!(-32029)),
        "{limited}"
    );
    assert_eq!(backend.requests().len(), 2);

    // The connection's budget: a burst of 5, then 5 a second.
    let mut burst = hub.connect(&format!("/rpc?token={token}")).await;
    for id in 10..18 {
        send(
            &mut burst,
            &format!(r#"{{"jsonrpc":"2.0","method":"get_camera_list","id":{id}}}"#),
        )
        .await;
    }
    let (mut ok, mut over) = (0, 0);
    for _ in 10..18 {
        let answer = next_json(&mut burst).await;
        if answer["result"].is_object() {
            ok += 1;
        } else {
            assert_eq!(answer["error"]["code"], -32029, "{answer}");
            over += 1;
        }
    }
    println!("a burst of 8 calls: {ok} forwarded, {over} refused");
    assert!(ok >= 5 && over >= 1, "{ok} forwarded, {over} refused");
    assert_eq!(backend.requests().len(), 2 + ok);

    // No token at the upgrade: `params.auth_token` authenticates the connection.
    let mut late = hub.connect("/rpc").await;
    send(
        &mut late,
        r#"{"jsonrpc":"2.0","method":"get_camera_list","id":"n"}"#,
    )
    .await;
    let unauthorized = next_json(&mut late).await;
    assert_eq!(unauthorized["error"]["code"], -32001, "{unauthorized}");
    let before = backend.requests().len();
    send(
        &mut late,
        &format!(
            r#"{{"jsonrpc":"2.0","method":"get_camera_list","params":{{"auth_token":"{token}"}},"id":"t"}}"#
        ),
    )
    .await;
    assert_eq!(next_json(&mut late).await["id"], "t");
    let seen = backend.requests();
    assert_eq!(seen.len(), before + 1);
    assert_eq!(seen[before].header("x-auth-sub"), ["alice"]);
    let metrics = hub.metrics().await;
    assert_eq!(
        series(&metrics, r#"tlsgate_hub_rpc_calls_total{result="ok"}"#),
        (3 + ok) as f64,
        "{metrics}"
    );
    hub.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_reload_keeping_their_endpoint_and_close_1001_on_removal_and_shutdown() {
    let endpoints = "    - path: /keep\n    - path: /gone\n";
    let rest = |endpoints: &str| {
        format!("limits:\n  reload_grace: 500ms\n  per_ip: {{websockets: 4}}\nhub:\n  endpoints:\n{endpoints}  namespaces:\n    news: {{client_subscribe: true}}\n")
    };
    let hub = Hub::start(&rest(endpoints)).await;
    let mut kept = hub.connect("/keep?channels=news").await;
    let mut removed = hub.connect("/gone?channels=news").await;
    let _third = hub.connect("/keep").await;
    let mut fourth = hub.connect("/keep").await;
    // Hub sessions count under the per-IP WebSocket cap.
    match hub.server.try_wss_connect("/keep").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429)
        }
        other => panic!(
            "a fifth WebSocket from one address: {:?}",
            other.map(|r| r.1)
        ),
    }
    fourth.close(None).await.unwrap();
    while let Some(Ok(_)) = fourth.next().await {}
    let deadline = Instant::now() + Duration::from_secs(5);
    let _fifth = loop {
        match hub.server.try_wss_connect("/keep").await {
            Ok((ws, _)) => break ws,
            Err(error) => assert!(Instant::now() < deadline, "{error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // A reload without /gone.
    std::fs::write(
        hub.path().join("tlsgate.yaml"),
        config(&rest("    - path: /keep\n")),
    )
    .unwrap();
    let reloaded = Instant::now();
    let answer = hub.server.post_reload().await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (code, reason, _) = close_code(&mut removed).await;
    assert_eq!((code, reason.as_str()), (1001, "endpoint removed"));
    let took = reloaded.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "closed {took:?} after a reload with a grace of 500 ms"
    );
    let answer = hub.publish("news", r#"{"after":"reload"}"#).await;
    assert_eq!(answer["delivered"], 1, "{answer}");
    assert_eq!(until_pong(&mut kept).await, [r#"{"after":"reload"}"#]);

    // Shutdown: 1001.
    let reader = tokio::spawn(async move { close_code(&mut kept).await });
    hub.server.stop().await;
    let (code, reason, _) = reader.await.unwrap();
    assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
}

#[test]
fn config_check_names_the_file_line_and_field_of_hub_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hs.secret"), SECRET).unwrap();
    for (hub, wanted) in [
        (
            "hub:\n  endpoints:\n    - path: /ws/tenant/{id}\n      subscribe: [\"tenant:{tenant}\"]\n",
            vec!["tlsgate.yaml:8:", "hub.endpoints.subscribe", "{tenant}"],
        ),
        (
            "hub:\n  endpoints:\n    - path: /rpc\n      rpc: {url: \"ftp://backend/rpc\"}\n",
            vec!["tlsgate.yaml:8:", "hub.endpoints.rpc.url", "ftp://backend/rpc"],
        ),
        (
            "hub:\n  endpoints:\n    - path: /ws\n  pingg_interval: 5s\n",
            vec!["tlsgate.yaml:8:", "pingg_interval"],
        ),
    ] {
        std::fs::write(
            dir.path().join("tlsgate.yaml"),
            format!("{}\n", config(hub)),
        )
        .unwrap();
        let (code, stdout, stderr) = crate::cli::run(
            crate::cli::tlsgate(dir.path()).args(["config", "check", "-c", "tlsgate.yaml"]),
        );
        assert_ne!(code, 0, "{hub}: accepted\n{stdout}");
        for text in wanted {
            assert!(stderr.contains(text), "{hub}: {text} not in\n{stderr}");
        }
    }
}

/// The `tlsgate` binary serves (its own process, its own descriptors: 10,000 sockets on each
/// side do not fit one process's usual limit of 20,000); this process holds the clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_subscribers_on_one_channel_each_receive_one_publication() {
    const N: usize = 10_000;
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    let open_files = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    assert!(
        open_files > N as u64 + 500,
        "the open-file limit is {open_files}; this test needs {} (ulimit -n)",
        N + 500
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tlsgate.yaml"),
        "limits:\n  max_connections: 12000\nhub:\n  endpoints:\n    - path: /fan\n      subscribe: [fan]\n",
    )
    .unwrap();
    let admin_port = free_port();
    let admin_listen = format!("127.0.0.1:{admin_port}");
    let running = tokio::task::block_in_place(|| {
        crate::cli::Running::start(
            &mut crate::cli::tlsgate(dir.path()),
            &["-c", "tlsgate.yaml", "--admin-listen", &admin_listen],
        )
    });
    let admin: std::net::SocketAddr = admin_listen.parse().unwrap();
    let main = running.main;
    let pid = running.child.id();
    let ca = read_certs(&dir.path().join("tlsgate-data/ca/root.crt"));
    // TLS 1.3 with X25519 only: the client's share of each handshake as cheap as it gets
    // (the server's ECDSA signature and the client's verification remain).
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let client = client_config_with(provider, &ca, &[&rustls::version::TLS13], &[b"http/1.1"]);
    let rss_idle = common::hostile::rss_kib_of(pid);

    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let (receipts, mut received) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let (connected, mut opened) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut tasks = Vec::with_capacity(N);
    for _ in 0..N {
        let (gate, client) = (gate.clone(), client.clone());
        let (receipts, connected) = (receipts.clone(), connected.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let tls = tls_connect(main, "localhost", client)
                .await
                .expect("TLS connect");
            let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/fan", tls)
                .await
                .expect("upgrade");
            drop(permit);
            let _ = connected.send(());
            while let Some(message) = ws.next().await {
                if let Ok(Message::Text(text)) = message {
                    assert_eq!(text.as_str(), r#"{"to":"everyone"}"#);
                    let _ = receipts.send(Instant::now());
                    break;
                }
            }
        }));
    }
    drop((receipts, connected));
    let mut open = 0;
    while open < N {
        tokio::time::timeout(Duration::from_secs(60), opened.recv())
            .await
            .unwrap_or_else(|_| panic!("{open} of {N} connected; the next took over 60 s"))
            .expect("a client task failed");
        open += 1;
    }
    let connect_time = started.elapsed();
    // Every session has subscribed (the hub counts them) before the publication.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, channels) = admin_call(admin, "GET", "/hub/channels", "").await;
        if channels["channels"][0]["subscribers"] == N {
            break;
        }
        assert!(Instant::now() < deadline, "{channels}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_full = common::hostile::rss_kib_of(pid);

    let published = Instant::now();
    let (status, answer) = admin_call(
        admin,
        "POST",
        "/hub/publish",
        r#"{"channel":"fan","data":{"to":"everyone"}}"#,
    )
    .await;
    let answered = published.elapsed();
    assert_eq!((status, &answer["delivered"]), (200, &json!(N)), "{answer}");
    let mut last = published;
    for got in 0..N {
        last = tokio::time::timeout(Duration::from_secs(30), received.recv())
            .await
            .unwrap_or_else(|_| panic!("{got} of {N} received the publication within 30 s"))
            .expect("a client task failed");
    }
    let fan_out = last.duration_since(published);
    for task in tasks {
        task.await.unwrap();
    }
    println!(
        "{N} subscribers: connected in {connect_time:.1?}; publish answered in {answered:.1?}; \
         last receipt {fan_out:.1?} after the publish; server RSS {} MiB idle, {} MiB with \
         {N} sessions (~{} KiB each)",
        rss_idle / 1024,
        rss_full / 1024,
        rss_full.saturating_sub(rss_idle) / N as u64
    );
    assert!(fan_out < Duration::from_secs(10), "{fan_out:?}");
    let (code, stderr) = tokio::task::block_in_place(|| running.stop());
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_endpoint_subscribes_by_its_path_and_closes_other_tenants_4003() {
    let hub = Hub::start(
        "hub:\n  endpoints:\n    - path: /ws/tenant/{id}\n      auth: {jwt: users, sources: [\"query:token\"]}\n      subscribe: [\"tenant:{id}\"]\n      require: {claim: tenants, contains: \"{id}\"}\n      max_message_size: 1KiB\n",
    )
    .await;
    let token = hub.token("alice", 3600, json!({"tenants": ["t1", "t2"]}));
    let mut t2 = hub.connect(&format!("/ws/tenant/t2?token={token}")).await;
    until_pong(&mut t2).await;
    let answer = hub.publish("tenant:t2", r#"{"invoice":5}"#).await;
    assert_eq!(answer["delivered"], 1);
    assert_eq!(next_text(&mut t2).await, r#"{"invoice":5}"#);
    assert_eq!(hub.publish("tenant:t1", "{}").await["delivered"], 0);
    // A refreshed token must still list the tenant.
    let elsewhere = hub.token("alice", 3600, json!({"tenants": ["t9"]}));
    send(
        &mut t2,
        &format!(r#"{{"action":"refresh","token":"{elsewhere}","id":"r"}}"#),
    )
    .await;
    let refused = next_json(&mut t2).await;
    assert_eq!(
        (&refused["type"], &refused["code"], &refused["id"]),
        (&json!("error"), &json!("forbidden"), &json!("r")),
        "{refused}"
    );
    let mut t3 = hub.connect(&format!("/ws/tenant/t3?token={token}")).await;
    assert_eq!(
        close_code(&mut t3).await.0,
        4003,
        "a tenant the token does not list"
    );
    // Binary messages and messages over max_message_size end the session.
    t2.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(close_code(&mut t2).await.0, 1008);
    let mut big = hub.connect(&format!("/ws/tenant/t1?token={token}")).await;
    send(
        &mut big,
        &format!("{{\"action\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(2000)),
    )
    .await;
    assert_eq!(close_code(&mut big).await.0, 1009);
    hub.server.stop().await;
}

/// A client WebSocket text frame, masked.
fn masked_text(text: &str) -> Vec<u8> {
    let mask = [0x1f, 0x2e, 0x3d, 0x4c];
    assert!(text.len() < 126);
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// OpenSSL as the TLS 1.3 peer: its `K` and `k` commands send KeyUpdate with and without
/// `update_requested`. The hub session's own record layer must follow both (reading under
/// the client's new key, answering a request with its own KeyUpdate), or OpenSSL fails the
/// connection and the pongs never arrive.
#[tokio::test]
async fn openssl_key_updates_both_ways_keep_a_hub_session_talking() {
    openssl_hub_session("-tls1_3").await;
}

/// TLS 1.2 sessions stay on rustls' own stream: the same conversation over it.
#[tokio::test]
async fn a_tls12_hub_session_talks_and_receives_publications() {
    openssl_hub_session("-tls1_2").await;
}

/// Upgrades with `openssl s_client` (`version`: `-tls1_3` or `-tls1_2`), then pings,
/// publishes and (on TLS 1.3) updates keys both ways between the pings.
async fn openssl_hub_session(version: &str) {
    use tokio::io::AsyncReadExt;
    let tls13 = version == "-tls1_3";
    let hub = Hub::start(
        "hub:\n  endpoints:\n    - path: /open\n  namespaces:\n    prices: {client_subscribe: true}\n",
    )
    .await;
    let mut child = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            version,
            "-servername",
            "localhost",
            "-verify_return_error",
        ])
        .arg("-connect")
        .arg(format!("127.0.0.1:{}", hub.server.main.port()))
        .arg("-CAfile")
        .arg(hub.ca_file())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl s_client");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        })
    };
    let wait_for = |needle: &'static str| {
        let seen = seen.clone();
        async move {
            let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
            let found =
                common::hostile::within(Duration::from_secs(10), || text().contains(needle));
            assert!(
                found.await.is_some(),
                "no {needle:?} in s_client's output:\n{}",
                text()
            );
        }
    };
    // Each write is one read for s_client, which looks for its commands at a read's start.
    async fn say(stdin: &mut tokio::process::ChildStdin, bytes: &[u8]) {
        stdin.write_all(bytes).await.expect("s_client's stdin");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    say(&mut stdin, b"GET /open?channels=prices HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await;
    wait_for("101 Switching Protocols").await;
    say(&mut stdin, &masked_text(r#"{"action":"ping","id":1}"#)).await;
    wait_for(r#"{"id":1,"type":"pong"}"#).await;
    if tls13 {
        say(&mut stdin, b"K\n").await;
    }
    say(&mut stdin, &masked_text(r#"{"action":"ping","id":2}"#)).await;
    wait_for(r#"{"id":2,"type":"pong"}"#).await;
    if tls13 {
        say(&mut stdin, b"k\n").await;
    }
    say(&mut stdin, &masked_text(r#"{"action":"ping","id":3}"#)).await;
    wait_for(r#"{"id":3,"type":"pong"}"#).await;
    hub.publish("prices", r#"{"after":"three pings"}"#).await;
    wait_for(r#"{"after":"three pings"}"#).await;
    wait_for(if tls13 { "TLSv1.3" } else { "TLSv1.2" }).await;
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("s_client ends")
        .expect("s_client's output");
    reader.abort();
    let errors = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        errors.matches("KEYUPDATE").count(),
        if tls13 { 2 } else { 0 },
        "{errors}"
    );
    assert!(!errors.contains(":error:"), "{errors}");
    hub.server.stop().await;
}
