//! Shared test helpers: start a real server on 127.0.0.1:0, make fixtures with the product's
//! own certificate code, and talk to the server over real sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tlsgate::certs::generate::{self, CertificateAuthority, KeyAlgorithm, Usage};
use tlsgate::certs::CertInfo;
use tlsgate::config::{self, Overrides};
use tlsgate::server::Server;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

pub const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

pub struct TestServer {
    pub main: SocketAddr,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<()>,
    pub data_dir: PathBuf,
}

impl TestServer {
    /// Starts a server from `yaml` (paths relative to `dir`), on ephemeral loopback ports.
    pub async fn start(yaml: &str, dir: &Path) -> Result<Self, String> {
        Self::start_at(yaml, dir, 0, 0).await
    }

    /// As [`Self::start`], on given ports (0: any free one).
    pub async fn start_at(
        yaml: &str,
        dir: &Path,
        port: u16,
        http_port: u16,
    ) -> Result<Self, String> {
        let overrides = Overrides {
            data_dir: Some(dir.join("data")),
            listen: Some(format!("127.0.0.1:{port}")),
            http_listen: Some(format!("127.0.0.1:{http_port}")),
            admin_listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        // Written out, so reload tests can change it and ask the server to re-read it.
        std::fs::write(dir.join("tlsgate.yaml"), yaml).map_err(|e| e.to_string())?;
        let settings = config::load(Some(&dir.join("tlsgate.yaml")), &overrides, &|_| None)
            .map_err(|e| e.to_string())?;
        let shutdown = CancellationToken::new();
        let server = Server::bind(settings, overrides, shutdown.clone())
            .await
            .map_err(|e| e.to_string())?;
        let main = server.main_addr().ok_or("no main address")?;
        let http = server.http_addr();
        let admin = server.admin_addr();
        let data_dir = dir.join("data");
        let handle = tokio::spawn(server.run());
        Ok(Self {
            main,
            http,
            admin,
            shutdown,
            handle,
            data_dir,
        })
    }

    pub fn local_ca(&self) -> CertificateDer<'static> {
        read_certs(&self.data_dir.join("ca/root.crt")).remove(0)
    }

    /// A WebSocket over TLS to `path`, trusting the local CA.
    pub async fn wss_connect(
        &self,
        path: &str,
    ) -> (
        tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>,
        u16,
    ) {
        self.try_wss_connect(path).await.expect("WebSocket upgrade")
    }

    /// As [`Self::wss_connect`]; a refused upgrade is the error (e.g. `Http(429)`).
    pub async fn try_wss_connect(
        &self,
        path: &str,
    ) -> Result<
        (
            tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>,
            u16,
        ),
        tokio_tungstenite::tungstenite::Error,
    > {
        let stream = tls_connect(self.main, "localhost", default_client(&[self.local_ca()]))
            .await
            .expect("TLS connect");
        let (ws, response) =
            tokio_tungstenite::client_async(format!("wss://localhost{path}"), stream).await?;
        Ok((ws, response.status().as_u16()))
    }

    /// The admin listener's `/metrics`, as text.
    pub async fn metrics_text(&self) -> String {
        let admin = self.admin.expect("the test server has an admin listener");
        http_get(admin, "127.0.0.1", "/metrics").await.body
    }

    /// `POST /reload` on the admin listener.
    pub async fn post_reload(&self) -> SimpleResponse {
        let admin = self.admin.expect("the test server has an admin listener");
        let stream = tokio::net::TcpStream::connect(admin).await.unwrap();
        let post = http::Request::post("/reload")
            .header("host", "127.0.0.1")
            .body(body_of(""))
            .unwrap();
        send_on(stream, post).await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), self.handle)
            .await
            .expect("the server stops within 10 s of shutdown")
            .expect("the server task does not panic");
    }
}

pub fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    tlsgate::certs::pem::read_certificates(path).expect("certificate file")
}

/// A client that trusts only `roots`, offering `versions` and `alpn`.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    client_config_with(
        rustls::crypto::aws_lc_rs::default_provider(),
        roots,
        versions,
        alpn,
    )
}

/// As [`client_config`], with `provider`'s suites and groups (e.g. a chosen suite order).
pub fn client_config_with(
    provider: rustls::crypto::CryptoProvider,
    roots: &[CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("root");
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub fn default_client(roots: &[CertificateDer<'static>]) -> Arc<ClientConfig> {
    client_config(roots, rustls::ALL_VERSIONS, &[b"http/1.1"])
}

pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned()).expect("server name");
    TlsConnector::from(config).connect(name, tcp).await
}

/// The leaf certificate the server presented on this connection.
pub fn served_leaf(stream: &TlsStream<TcpStream>) -> CertInfo {
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("peer certificates");
    CertInfo::parse(&certs[0]).expect("leaf parses")
}

pub struct SimpleResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
    pub version: http::Version,
}

/// One request over an established stream, HTTP/2 if `h2` else HTTP/1.1.
pub async fn request_on<S>(stream: S, h2: bool, host: &str, path: &str) -> SimpleResponse
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let request = http::Request::builder()
        .uri(if h2 {
            format!("https://{host}{path}")
        } else {
            path.to_owned()
        })
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        sender.send_request(request).await.expect("h2 response")
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        sender.send_request(request).await.expect("h1 response")
    };
    let status = response.status();
    let version = response.version();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    SimpleResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        version,
    }
}

pub async fn https_get(
    addr: SocketAddr,
    host: &str,
    config: Arc<ClientConfig>,
    path: &str,
) -> SimpleResponse {
    let stream = tls_connect(addr, host, config).await.expect("TLS connect");
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    request_on(stream, h2, host, path).await
}

pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> SimpleResponse {
    let stream = TcpStream::connect(addr).await.expect("connect");
    request_on(stream, false, host, path).await
}

/// A private CA for fixtures, written to `dir/ca.crt`.
pub fn fixture_ca(dir: &Path) -> CertificateAuthority {
    let ca = CertificateAuthority::new("tlsgate test CA", 30 * DAY, KeyAlgorithm::EcdsaP256)
        .expect("CA");
    std::fs::write(dir.join("ca.crt"), &ca.cert_pem).expect("write CA");
    ca
}

/// Issues a server certificate for `names` and writes `dir/NAME.crt` (leaf + CA chain),
/// `dir/NAME.key` (0600) and `dir/NAME.pem` (chain + key).
pub fn fixture_cert(
    ca: &CertificateAuthority,
    dir: &Path,
    file: &str,
    names: &[&str],
    algorithm: KeyAlgorithm,
) -> generate::IssuedCertificate {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let issued = ca
        .issue(&names, 30 * DAY, algorithm, Usage::Server)
        .expect("issue");
    write_fixture(dir, file, &issued, &ca.cert_pem);
    issued
}

pub fn write_fixture(dir: &Path, file: &str, issued: &generate::IssuedCertificate, chain: &str) {
    use std::os::unix::fs::PermissionsExt;
    let crt = format!("{}{}", issued.cert_pem, chain);
    std::fs::write(dir.join(format!("{file}.crt")), &crt).expect("crt");
    let key = dir.join(format!("{file}.key"));
    std::fs::write(&key, &issued.key_pem).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let pem = dir.join(format!("{file}.pem"));
    std::fs::write(&pem, format!("{crt}{}", issued.key_pem)).expect("pem");
    std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// Runs `openssl` with stdin closed; returns (success, stdout+stderr).
pub fn openssl(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed (scripts/test.sh installs it)");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

pub async fn openssl_async(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        openssl(&refs)
    })
    .await
    .expect("openssl task")
}

pub mod check_report;
pub mod nginx;
pub mod upstream;

pub type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

pub fn body_of(bytes: impl Into<Bytes>) -> TestBody {
    http_body_util::Full::new(bytes.into()).boxed()
}

/// Any request over an established stream (HTTP/1.1), full response collected.
pub async fn send_on<S>(stream: S, request: http::Request<TestBody>) -> SimpleResponse
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let version = response.version();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    SimpleResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        version,
    }
}

/// A port that was free a moment ago, for peers that need fixed ports (Pebble validates on
/// the ports it is configured with). Chosen below Linux's ephemeral range (32768 and up),
/// where every other test's `127.0.0.1:0` lands, so another test cannot take it meanwhile.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seed = std::process::id().wrapping_mul(7919).wrapping_add(nanos);
    loop {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(step.wrapping_mul(7919)) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub mod chromium;
pub mod hostile;
pub mod pebble;
pub mod pyjwt;

/// The close frame the client receives (text and binary messages before it are skipped, and
/// counted): (code, reason, messages skipped).
pub async fn close_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> (u16, String, usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut skipped = 0;
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("a close frame within 10 s")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (frame.code.into(), frame.reason.to_string(), skipped)
            }
            Some(Ok(Message::Text(_) | Message::Binary(_))) => skipped += 1,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}
