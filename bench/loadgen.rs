//! The benchmark's own load client and backends (`bench/run.py` drives it). Built with
//! `cargo build --release --example loadgen`.
//!
//! - `backend`: a plain-HTTP backend answering every request with the same 1 KiB body, and a
//!   WebSocket echo backend, each on its own port.
//! - `handshakes`: new TLS connections with one request each, full or resumed handshakes.
//! - `ws-echo`: 64-byte WebSocket echo round trips through `wss://`, with latency percentiles.
//! - `ws-idle`: opens many `wss://` connections and holds them until stdin closes.
//! - `hub-idle`, `hub-fanout`, `hub-connect`: subscribers, publisher and connection set-up of a
//!   publish/subscribe WebSocket hub (`bench/hub.py`; see `loadgen_hub.rs`).
//!
//! Each measuring command prints one JSON line.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

#[path = "loadgen_hub.rs"]
mod hub;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plain-HTTP 1 KiB backend and WebSocket echo backend.
    Backend {
        #[arg(long)]
        http: SocketAddr,
        #[arg(long)]
        ws: SocketAddr,
    },
    /// New TLS connections, one `GET /` each.
    Handshakes {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Resume sessions (TLS 1.3 tickets) instead of full handshakes.
        #[arg(long)]
        resume: bool,
    },
    /// WebSocket echo round trips.
    WsEcho {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Opens `connections` idle WebSockets and holds them until stdin closes.
    WsIdle {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
    },
    /// Opens `connections` subscribed hub connections and holds them until stdin closes.
    HubIdle {
        #[command(flatten)]
        hub: hub::Hub,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
    },
    /// Hub subscribers and a publisher; one measured phase per stdin line.
    HubFanout {
        #[command(flatten)]
        hub: hub::Hub,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// The hub's publish URL (http or https); `…/broadcast` beside it takes batches.
        #[arg(long)]
        publish_url: String,
        /// Publishing connections (keep-alive), so a hub that answers after its fan-out
        /// still sees publications at the rate asked for.
        #[arg(long, default_value_t = 8)]
        publishers: usize,
        /// Bytes of each publication's data.
        #[arg(long, default_value_t = 100)]
        size: usize,
    },
    /// New connections with subscription acknowledged, per second.
    HubConnect {
        #[command(flatten)]
        hub: hub::Hub,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
}

#[derive(clap::Args, Clone)]
struct Target {
    /// Where to connect.
    #[arg(long)]
    addr: SocketAddr,
    /// SNI and Host.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Path (for WebSockets, the endpoint).
    #[arg(long, default_value = "/")]
    path: String,
    /// CA certificate to trust.
    #[arg(long)]
    cacert: PathBuf,
    /// Offer the post-quantum hybrid X25519MLKEM768 first (rustls' default). Without it the
    /// client offers X25519 alone, as OpenSSL 3.0 clients (wrk, h2load) do, so every proxy
    /// does the same key exchange.
    #[arg(long)]
    post_quantum: bool,
    /// Verify the server's chain and handshake signature on every connection. By default only
    /// the first connection is verified, and later ones must present the very same
    /// certificate: the client's two ECDSA verifications per handshake (about 50 µs) made the
    /// client, not the proxy under test, the bottleneck of the handshake measurement.
    #[arg(long)]
    verify_every: bool,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    raise_fd_limit();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Backend { http, ws } => backend(http, ws).await,
            Command::Handshakes {
                target,
                connections,
                seconds,
                resume,
            } => handshakes(target, connections, seconds, resume).await,
            Command::WsEcho {
                target,
                connections,
                seconds,
                size,
            } => ws_echo(target, connections, seconds, size).await,
            Command::WsIdle {
                target,
                connections,
            } => ws_idle(target, connections).await,
            Command::HubIdle { hub, connections } => hub::idle(hub, connections).await,
            Command::HubFanout {
                hub,
                subscribers,
                publish_url,
                publishers,
                size,
            } => hub::fanout(hub, subscribers, publish_url, publishers, size).await,
            Command::HubConnect {
                hub,
                connections,
                seconds,
            } => hub::connect_rate(hub, connections, seconds).await,
        }
    })
}

fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}

const BODY: [u8; 1024] = [b'x'; 1024];

async fn backend(http: SocketAddr, ws: SocketAddr) -> Result<(), Error> {
    let http_listener = TcpListener::bind(http).await?;
    let ws_listener = TcpListener::bind(ws).await?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = ws_listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if (message.is_binary() || message.is_text())
                        && socket.send(message).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    println!("backend ready");
    loop {
        let (stream, _) = http_listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_request: hyper::Request<Incoming>| async {
                Ok::<_, Infallible>(
                    hyper::Response::builder()
                        .header("content-type", "text/plain")
                        .body(Full::new(Bytes::from_static(&BODY)))
                        .unwrap_or_default(),
                )
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn client_config(target: &Target, resume: bool) -> Result<Arc<rustls::ClientConfig>, Error> {
    let roots = tlsgate::certs::verify::load_roots(Some(&target.cacert))?;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !target.post_quantum {
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    }
    let provider = Arc::new(provider);
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(VerifyFirst {
            webpki,
            every: target.verify_every,
            verified: std::sync::OnceLock::new(),
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// Verifies the first connection fully; afterwards the same end-entity certificate is
/// trusted without repeating the work (unless `every`). A different certificate is verified
/// in full. Later connections thus skip the handshake signature, name and expiry checks: a
/// server replaying the public certificate would pass. Fit for a loopback benchmark against a
/// proxy it started itself, never for anything else.
#[derive(Debug)]
struct VerifyFirst {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    every: bool,
    /// The end-entity certificate whose chain and signature checked out.
    verified: std::sync::OnceLock<Vec<u8>>,
}

impl VerifyFirst {
    fn already_verified(&self, certificate: &rustls::pki_types::CertificateDer<'_>) -> bool {
        !self.every
            && self
                .verified
                .get()
                .is_some_and(|known| known.as_slice() == certificate.as_ref())
    }
}

impl rustls::client::danger::ServerCertVerifier for VerifyFirst {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self.already_verified(end_entity) {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &rustls::pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki
            .verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &rustls::pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        if self.already_verified(certificate) {
            return Ok(rustls::client::danger::HandshakeSignatureValid::assertion());
        }
        let valid = self
            .webpki
            .verify_tls13_signature(message, certificate, signature)?;
        // The chain was verified just before this, on the same connection.
        let _ = self.verified.set(certificate.to_vec());
        Ok(valid)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

async fn connect(
    target: &Target,
    config: &Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(target.host.clone())?;
    Ok(tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await?)
}

/// The key-exchange group the server chose, as seen on the first connection.
static NEGOTIATED_GROUP: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// One `GET` on a fresh connection; `Ok(resumed)` once the whole response is in.
async fn one_request(target: &Target, config: &Arc<rustls::ClientConfig>) -> Result<bool, Error> {
    let mut tls = connect(target, config).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    if let Some(group) = tls.get_ref().1.negotiated_key_exchange_group() {
        let _ = NEGOTIATED_GROUP.set(format!("{:?}", group.name()));
    }
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        target.path, target.host
    );
    tls.write_all(request.as_bytes()).await?;
    let mut buffer = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let read = tls.read(&mut chunk).await?;
        if read == 0 {
            return Err("closed before the response was complete".into());
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                return Err(format!("status: {}", head.lines().next().unwrap_or("")).into());
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                return Ok(resumed);
            }
        }
    }
}

async fn handshakes(
    target: Target,
    connections: usize,
    seconds: f64,
    resume: bool,
) -> Result<(), Error> {
    let config = client_config(&target, resume)?;
    // Prime the session cache so the first resumed handshakes have a ticket.
    if resume {
        one_request(&target, &config).await?;
    }
    let done = Arc::new(AtomicU64::new(0));
    let resumed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (target, config) = (target.clone(), config.clone());
        let (done, resumed, errors, stop) =
            (done.clone(), resumed.clone(), errors.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match one_request(&target, &config).await {
                    Ok(was_resumed) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        if was_resumed {
                            resumed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for worker in workers {
        let _ = worker.await;
    }
    let done = done.load(Ordering::Relaxed);
    println!(
        "{{\"operations\":{done},\"resumed\":{},\"errors\":{},\"seconds\":{elapsed:.3},\"rate\":{:.1},\"group\":\"{}\"}}",
        resumed.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        done as f64 / elapsed,
        NEGOTIATED_GROUP.get().map_or("", String::as_str)
    );
    Ok(())
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

async fn open_websocket(
    target: &Target,
    config: &Arc<rustls::ClientConfig>,
) -> Result<Socket, Error> {
    let tls = connect(target, config).await?;
    let url = format!("wss://{}{}", target.host, target.path);
    let (socket, _) = tokio_tungstenite::client_async(url, tls).await?;
    Ok(socket)
}

async fn ws_echo(
    target: Target,
    connections: usize,
    seconds: f64,
    size: usize,
) -> Result<(), Error> {
    let config = client_config(&target, false)?;
    let mut sockets = Vec::new();
    for _ in 0..connections {
        sockets.push(open_websocket(&target, &config).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let payload = Bytes::from(vec![b'm'; size]);
    let mut workers = Vec::new();
    for mut socket in sockets {
        let (stop, payload) = (stop.clone(), payload.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                if socket.send(Message::Binary(payload.clone())).await.is_err() {
                    errors += 1;
                    break;
                }
                match socket.next().await {
                    Some(Ok(Message::Binary(echo))) if echo.len() == payload.len() => {
                        latencies.push(sent.elapsed().as_micros() as u32);
                    }
                    _ => {
                        errors += 1;
                        break;
                    }
                }
            }
            let _ = socket.close(None).await;
            (latencies, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = Vec::new();
    let mut errors = 0;
    for worker in workers {
        if let Ok((latencies, worker_errors)) = worker.await {
            all.extend(latencies);
            errors += worker_errors;
        }
    }
    all.sort_unstable();
    let percentile = |p: f64| -> u32 {
        if all.is_empty() {
            return 0;
        }
        all[((all.len() - 1) as f64 * p).round() as usize]
    };
    println!(
        "{{\"operations\":{},\"errors\":{errors},\"seconds\":{elapsed:.3},\"rate\":{:.1},\"p50_us\":{},\"p99_us\":{}}}",
        all.len(),
        all.len() as f64 / elapsed,
        percentile(0.50),
        percentile(0.99)
    );
    Ok(())
}

async fn ws_idle(target: Target, connections: usize) -> Result<(), Error> {
    let config = client_config(&target, false)?;
    let results: Vec<Result<Socket, Error>> = futures_util::stream::iter(0..connections)
        .map(|_| open_websocket(&target, &config))
        .buffer_unordered(128)
        .collect()
        .await;
    let mut open = Vec::new();
    let mut failed = 0;
    let mut first_error = String::new();
    for result in results {
        match result {
            Ok(socket) => open.push(socket),
            Err(error) => {
                if first_error.is_empty() {
                    first_error = error.to_string();
                }
                failed += 1;
            }
        }
    }
    println!(
        "{{\"open\":{},\"failed\":{failed},\"first_error\":{:?}}}",
        open.len(),
        first_error
    );
    // Hold every connection until the harness closes stdin.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
    })
    .await;
    drop(open);
    Ok(())
}
