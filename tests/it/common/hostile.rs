//! Helpers for the hostile-client and hostile-backend suites (`adversarial_*`): a raw backend
//! that parses and records every request it is sent (framing included), the proxy in front of
//! it, polling with a deadline, the normal client that must stay served, and the resource
//! gauges (the server's open connections, the test process's RSS).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tlsgate::certs::KeyAlgorithm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// How a recorded request's body was framed, as the backend read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The head, request line to the blank line, exactly as sent.
    pub head: String,
    pub method: String,
    pub path: String,
    pub framing: Framing,
    /// The body after de-chunking.
    pub body: Vec<u8>,
    /// False when the connection ended before the body did.
    pub complete: bool,
}

impl Recorded {
    /// The values of header `name` (case-insensitive), in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

/// What a backend does with one request: answer on `tcp` and hand it back to keep the
/// connection, or `None` to end it.
pub type Reply = Pin<Box<dyn Future<Output = std::io::Result<Option<TcpStream>>> + Send>>;

type Handler = dyn Fn(Recorded, TcpStream) -> Reply + Send + Sync;

/// A raw HTTP/1.1 backend on 127.0.0.1:0 that reads each request with its own framing
/// (Content-Length, or chunked when `Transfer-Encoding` names it), records it, and lets a
/// handler answer (or misbehave).
pub struct Backend {
    pub addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    received: Arc<Mutex<Vec<u8>>>,
    accepted: Arc<AtomicUsize>,
}

impl Backend {
    /// Answers `200 ok <path>` to everything.
    pub async fn recording() -> Self {
        Self::start(|request, tcp| Box::pin(ok(request, tcp))).await
    }

    pub async fn start(
        handler: impl Fn(Recorded, TcpStream) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let (log, raw, count) = (requests.clone(), received.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (log, raw, handler) = (log.clone(), raw.clone(), handler.clone());
                tokio::spawn(async move {
                    let mut tcp = tcp;
                    let mut buf = Vec::new();
                    loop {
                        let Ok(Some(request)) = read_request(&mut tcp, &mut buf, &raw).await else {
                            return;
                        };
                        log.lock().unwrap().push(request.clone());
                        if !request.complete {
                            return;
                        }
                        match handler(request, tcp).await {
                            Ok(Some(back)) => tcp = back,
                            _ => return,
                        }
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            received,
            accepted,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Every byte received so far, as text.
    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// `200 ok <path>`, keeping the connection.
pub async fn ok(request: Recorded, mut tcp: TcpStream) -> std::io::Result<Option<TcpStream>> {
    let body = format!("ok {}", request.path);
    tcp.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    Ok(Some(tcp))
}

/// Reads more bytes into `buf`; false at the end of the stream.
async fn fill(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    raw: &Mutex<Vec<u8>>,
) -> std::io::Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    let n = tcp.read(&mut chunk).await?;
    raw.lock().unwrap().extend_from_slice(&chunk[..n]);
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

fn find(buf: &[u8], needle: &[u8]) -> Option<usize> {
    buf.windows(needle.len()).position(|w| w == needle)
}

/// One request from `tcp` (bytes past it stay in `buf`); `None` at a clean end of stream.
async fn read_request(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    raw: &Mutex<Vec<u8>>,
) -> std::io::Result<Option<Recorded>> {
    let end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end + 4;
        }
        if !fill(tcp, buf, raw).await? {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let path = words.next().unwrap_or_default().to_owned();
    let mut request = Recorded {
        head,
        method,
        path,
        framing: Framing::None,
        body: Vec::new(),
        complete: true,
    };
    let chunked = request
        .header("transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = request
        .header("content-length")
        .first()
        .and_then(|v| v.parse::<usize>().ok());
    if chunked {
        request.framing = Framing::Chunked;
        loop {
            let line = loop {
                if let Some(at) = find(buf, b"\r\n") {
                    break at;
                }
                if !fill(tcp, buf, raw).await? {
                    request.complete = false;
                    return Ok(Some(request));
                }
            };
            let size_text = String::from_utf8_lossy(&buf[..line]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or(0);
            buf.drain(..line + 2);
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    if let Some(at) = find(buf, b"\r\n") {
                        buf.drain(..at + 2);
                        if at == 0 {
                            return Ok(Some(request));
                        }
                        continue;
                    }
                    if !fill(tcp, buf, raw).await? {
                        request.complete = false;
                        return Ok(Some(request));
                    }
                }
            }
            while buf.len() < size + 2 {
                if !fill(tcp, buf, raw).await? {
                    request.complete = false;
                    request.body.extend_from_slice(buf);
                    return Ok(Some(request));
                }
            }
            request.body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    } else if let Some(length) = length {
        request.framing = Framing::Length(length);
        while buf.len() < length {
            if !fill(tcp, buf, raw).await? {
                request.complete = false;
                request.body = std::mem::take(buf);
                return Ok(Some(request));
            }
        }
        request.body = buf.drain(..length).collect();
    }
    Ok(Some(request))
}

/// A server proxying every path to `backend`, with `extra` appended to its config.
pub async fn proxy_to(
    dir: &std::path::Path,
    backend: &str,
    extra: &str,
) -> (TestServer, CertificateDer<'static>) {
    proxy_with(dir, backend, "", extra).await
}

/// As [`proxy_to`], with `upstream` (lines such as `response_timeout: 2s`) added to the pool.
pub async fn proxy_with(
    dir: &std::path::Path,
    backend: &str,
    upstream: &str,
    extra: &str,
) -> (TestServer, CertificateDer<'static>) {
    let upstream: String = upstream
        .lines()
        .map(|line| format!("    {line}\n"))
        .collect();
    let config = format!(
        "upstreams:\n  app:\n    servers: [{backend}]\n{upstream}routes:\n  - path: /\n    upstream: app\n{extra}"
    );
    serve_site(dir, &config).await
}

/// A server for `localhost` (a certificate from a fixture CA) with `config` added.
pub async fn serve_site(
    dir: &std::path::Path,
    config: &str,
) -> (TestServer, CertificateDer<'static>) {
    let ca = fixture_ca(dir);
    fixture_cert(&ca, dir, "site", &["localhost"], KeyAlgorithm::EcdsaP256);
    let config = format!("tls:\n  certificates:\n    - pem_file: site.pem\n{config}");
    (TestServer::start(&config, dir).await.unwrap(), ca.cert_der)
}

/// Polls `condition` until it holds or `limit` passes; returns the time it took.
pub async fn within(limit: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if condition() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition().then(|| started.elapsed())
}

/// A normal HTTP/1.1 client is answered `ok /hello` within `limit`; returns its latency.
pub async fn normal_client_within(
    server: &TestServer,
    ca: &CertificateDer<'static>,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let client = default_client(std::slice::from_ref(ca));
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        https_get(server.main, "localhost", client, "/hello"),
    )
    .await
    .expect("a normal client is answered within 10 s during the attack");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body, "ok /hello");
    let took = started.elapsed();
    assert!(
        took < limit,
        "a normal client took {took:?} (limit {limit:?})"
    );
    took
}

/// A normal client is served within 2 s (TLS handshake, request, response).
pub async fn normal_client_is_served(
    server: &TestServer,
    ca: &CertificateDer<'static>,
) -> Duration {
    normal_client_within(server, ca, Duration::from_secs(2)).await
}

/// The value of the unlabelled metric `name` on the server's admin listener.
pub async fn metric(server: &TestServer, name: &str) -> Option<f64> {
    let admin = server.admin.expect("the test server has an admin listener");
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        http_get(admin, "127.0.0.1", "/metrics"),
    )
    .await
    .expect("the admin listener answers within 5 s");
    series(&response.body, name)
}

/// The value of the series `line` (`name` or `name{labels}`) in the exposition `metrics`.
pub fn series(metrics: &str, line: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The server's open connections (`tlsgate_open_connections`).
pub async fn open_connections(server: &TestServer) -> f64 {
    metric(server, "tlsgate_open_connections")
        .await
        .expect("tlsgate_open_connections is exported")
}

/// Waits until the server's open connections fall to `baseline`; returns the time it took.
pub async fn connections_back_to(
    server: &TestServer,
    baseline: f64,
    limit: Duration,
) -> Result<Duration, f64> {
    let started = Instant::now();
    loop {
        let open = open_connections(server).await;
        if open <= baseline {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            return Err(open);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// This process's resident set (`VmRSS`), in KiB.
pub fn rss_kib() -> u64 {
    rss_kib_of("self")
}

/// The resident set of process `pid` (`self` for this one), in KiB; 0 when unreadable.
pub fn rss_kib_of(pid: impl std::fmt::Display) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One raw exchange over TLS: writes `request`, reads until the connection ends, a response
/// with a Content-Length is complete, or `wait` passes. Returns the status of the first
/// response (0: none), everything read, and whether the server closed the connection.
pub async fn raw_exchange(
    server: &TestServer,
    ca: &CertificateDer<'static>,
    request: &[u8],
    wait: Duration,
) -> (u16, String, bool) {
    let mut tls = tls_connect(
        server.main,
        "localhost",
        default_client(std::slice::from_ref(ca)),
    )
    .await
    .unwrap();
    let _ = tls.write_all(request).await;
    let mut received = Vec::new();
    let mut closed = false;
    let _ = tokio::time::timeout(wait, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    closed = true;
                    break;
                }
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text, closed)
}

/// Answers on `tcp` with `200` and `html` (the pages the browser tests serve).
pub async fn write_html(tcp: &mut TcpStream, html: &str) -> std::io::Result<()> {
    tcp.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{html}",
            html.len()
        )
        .as_bytes(),
    )
    .await
}
