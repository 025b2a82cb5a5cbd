//! The load client's hub modes (`bench/hub.py` drives them): WebSocket subscribers of a
//! publish/subscribe hub, a publisher over its HTTP API, and connection set-up.
//!
//! Two wire protocols: `json` (tlsgate's hub, the FastAPI and Django peers): send
//! `{"action":"subscribe","channel":C}`, wait for `{"type":"subscribed",…}`, then every text
//! message is a publication; `socketio` (Engine.IO v4 over a plain WebSocket): `0{…}` open
//! packet, `40` connect, `42["subscribe",C]`, `42["subscribed",C]`, then `42["message",DATA]`,
//! with the server's `2` pings answered by `3`.
//!
//! Each publication's data carries its phase and its send time (CLOCK_REALTIME ns; publisher
//! and subscribers are one process) as `{"ph":P,"s":SEQ,"t":NS,"pad":"…"}`, so receivers need
//! no table of what was sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::{client_config, connect, Error, Socket, Target};

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Json,
    Socketio,
}

#[derive(clap::Args, Clone)]
pub struct Hub {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, value_enum, default_value = "json")]
    pub protocol: Protocol,
    /// Subscriber `i` takes channel `PREFIX(i % channels)`.
    #[arg(long, default_value_t = 1000)]
    pub channels: usize,
    #[arg(long, default_value = "bench:")]
    pub prefix: String,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
}

/// What a subscriber task records, per phase.
struct Phase {
    delivered: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

struct Stats {
    phases: Vec<Phase>,
    /// Publications whose data could not be read (neither a phase nor a time in it).
    unparsed: AtomicU64,
}

const MAX_PHASES: usize = 64;

impl Stats {
    fn new() -> Arc<Self> {
        Arc::new(Stats {
            phases: (0..MAX_PHASES)
                .map(|_| Phase {
                    delivered: AtomicU64::new(0),
                    latencies_us: Mutex::new(Vec::new()),
                })
                .collect(),
            unparsed: AtomicU64::new(0),
        })
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The unsigned number after `"key":` (whitespace allowed, as Python's json.dumps writes it).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let rest = text[start..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn record(stats: &Stats, text: &str) {
    let (Some(phase), Some(sent)) = (number_after(text, "\"ph\":"), number_after(text, "\"t\":"))
    else {
        stats.unparsed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some(slot) = stats.phases.get(phase as usize) else {
        return;
    };
    let micros = now_ns().saturating_sub(sent) / 1000;
    slot.delivered.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut latencies) = slot.latencies_us.lock() {
        latencies.push(micros.min(u32::MAX as u64) as u32);
    }
}

async fn open(
    target: &Target,
    config: &Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<Socket, Error> {
    let tls = connect(target, config).await?;
    let url = format!("wss://{}{}", target.host, path);
    let (socket, _) = tokio_tungstenite::client_async(url, tls).await?;
    Ok(socket)
}

/// The next text message, answering Engine.IO pings on the way; `Err` at close.
async fn next_text(socket: &mut Socket, protocol: Protocol) -> Result<String, Error> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                if protocol == Protocol::Socketio && text.as_str() == "2" {
                    socket.send(Message::text("3")).await?;
                    continue;
                }
                return Ok(text.as_str().to_owned());
            }
            Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}").into()),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error.into()),
            None => return Err("closed".into()),
        }
    }
}

/// Opens one connection and subscribes it to `channel`, returning once the hub acknowledged.
async fn subscribe(
    hub: &Hub,
    config: &Arc<rustls::ClientConfig>,
    path: &str,
    channel: &str,
) -> Result<Socket, Error> {
    let mut socket = open(&hub.target, config, path).await?;
    let wait = async {
        match hub.protocol {
            Protocol::Json => {
                let request = serde_json::json!({"action": "subscribe", "channel": channel});
                socket.send(Message::text(request.to_string())).await?;
                loop {
                    let text = next_text(&mut socket, hub.protocol).await?;
                    if text.contains("\"subscribed\"") {
                        return Ok::<_, Error>(());
                    }
                }
            }
            Protocol::Socketio => {
                let open_packet = next_text(&mut socket, hub.protocol).await?;
                if !open_packet.starts_with('0') {
                    return Err(format!(
                        "expected an Engine.IO open packet, got {open_packet:.80}"
                    )
                    .into());
                }
                socket.send(Message::text("40")).await?;
                let connected = next_text(&mut socket, hub.protocol).await?;
                if !connected.starts_with("40") {
                    return Err(format!("expected a socket.io connect, got {connected:.80}").into());
                }
                let request = serde_json::json!(["subscribe", channel]);
                socket.send(Message::text(format!("42{request}"))).await?;
                loop {
                    let text = next_text(&mut socket, hub.protocol).await?;
                    if text.starts_with("42[\"subscribed\"") {
                        return Ok(());
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .map_err(|_| "no subscription acknowledgement within 30 s")??;
    Ok(socket)
}

/// Reads publications until the connection closes.
async fn receive(mut socket: Socket, protocol: Protocol, stats: Arc<Stats>) {
    while let Ok(text) = next_text(&mut socket, protocol).await {
        record(&stats, &text);
    }
}

struct Subscribed {
    /// Subscribers per channel index, counting only those the hub acknowledged.
    per_channel: Vec<u64>,
    open: usize,
    failed: usize,
    first_error: String,
    seconds: f64,
}

async fn open_subscribers(
    hub: &Hub,
    count: usize,
    stats: &Arc<Stats>,
) -> Result<Subscribed, Error> {
    let config = client_config(&hub.target, false)?;
    let started = Instant::now();
    let results: Vec<(usize, Result<Socket, Error>)> = futures_util::stream::iter(0..count)
        .map(|i| {
            let config = config.clone();
            let channel = format!("{}{}", hub.prefix, i % hub.channels);
            async move { (i, subscribe(hub, &config, &hub.target.path, &channel).await) }
        })
        .buffer_unordered(hub.concurrency.max(1))
        .collect()
        .await;
    let mut subscribed = Subscribed {
        per_channel: vec![0; hub.channels],
        open: 0,
        failed: 0,
        first_error: String::new(),
        seconds: started.elapsed().as_secs_f64(),
    };
    for (i, result) in results {
        match result {
            Ok(socket) => {
                subscribed.open += 1;
                subscribed.per_channel[i % hub.channels] += 1;
                tokio::spawn(receive(socket, hub.protocol, stats.clone()));
            }
            Err(error) => {
                if subscribed.first_error.is_empty() {
                    subscribed.first_error = error.to_string();
                }
                subscribed.failed += 1;
            }
        }
    }
    Ok(subscribed)
}

/// `hub-idle`: opens `connections` subscribed sockets and holds them until stdin closes.
pub async fn idle(hub: Hub, connections: usize) -> Result<(), Error> {
    let stats = Stats::new();
    let subscribed = open_subscribers(&hub, connections, &stats).await?;
    println!(
        "{{\"open\":{},\"failed\":{},\"first_error\":{:?},\"seconds\":{:.3}}}",
        subscribed.open, subscribed.failed, subscribed.first_error, subscribed.seconds
    );
    let mut lines = stdin_lines();
    while lines.recv().await.is_some() {}
    Ok(())
}

/// Lines of stdin, read on a thread of their own (the crate's tokio has no `io-std`); the
/// channel closes at end of input.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if sender.blocking_send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// An HTTP/1.1 keep-alive connection to the hub's publish API, plain or TLS.
struct Publisher {
    uri: http::Uri,
    target: Target,
    config: Arc<rustls::ClientConfig>,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Publisher {
    async fn connection(
        &mut self,
    ) -> Result<&mut hyper::client::conn::http1::SendRequest<Full<Bytes>>, Error> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let authority = self
                .uri
                .authority()
                .ok_or("publish URL without host:port")?;
            let addr: std::net::SocketAddr = authority.as_str().parse()?;
            let sender = if self.uri.scheme_str() == Some("https") {
                let target = Target {
                    addr,
                    ..self.target.clone()
                };
                let tls = connect(&target, &self.config).await?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(connection);
                sender
            } else {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(connection);
                sender
            };
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or_else(|| "no connection".into())
    }

    async fn post(&mut self, path: &str, body: String) -> Result<(), Error> {
        let host = self
            .uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let sender = self.connection().await?;
        sender.ready().await?;
        let request = hyper::Request::post(path)
            .header("host", host)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(format!("publish: {status} {}", String::from_utf8_lossy(&body)).into());
        }
        Ok(())
    }
}

struct Job {
    phase: usize,
    seq: u64,
    first_channel: usize,
    batch: usize,
    sent_ns: u64,
    /// Subscriptions this publication reaches.
    fan: u64,
}

struct Shared {
    accepted: AtomicU64,
    expected: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<String>,
}

fn job_body(job: &Job, hub: &Hub, pad: &str) -> (bool, String) {
    let data = format!(
        "{{\"ph\":{},\"s\":{},\"t\":{},\"pad\":\"{pad}\"}}",
        job.phase, job.seq, job.sent_ns
    );
    let names: Vec<String> = (0..job.batch)
        .map(|k| {
            format!(
                "\"{}{}\"",
                hub.prefix,
                (job.first_channel + k) % hub.channels
            )
        })
        .collect();
    if job.batch == 1 {
        (
            false,
            format!("{{\"channel\":{},\"data\":{data}}}", names[0]),
        )
    } else {
        (
            true,
            format!("{{\"channels\":[{}],\"data\":{data}}}", names.join(",")),
        )
    }
}

/// `hub-fanout`: subscribers, then one measured phase per stdin line, `rate R SECONDS BATCH`
/// (R publications a second, open loop) or `saturate WINDOW SECONDS BATCH` (as fast as the hub
/// delivers, at most WINDOW publications' deliveries outstanding). One JSON line per phase.
pub async fn fanout(
    hub: Hub,
    subscribers: usize,
    publish_url: String,
    publishers: usize,
    size: usize,
) -> Result<(), Error> {
    let stats = Stats::new();
    let subscribed = open_subscribers(&hub, subscribers, &stats).await?;
    println!(
        "{{\"open\":{},\"failed\":{},\"first_error\":{:?},\"seconds\":{:.3}}}",
        subscribed.open, subscribed.failed, subscribed.first_error, subscribed.seconds
    );
    let uri: http::Uri = publish_url.parse()?;
    let publish_path = uri.path().to_owned();
    let broadcast_path = match publish_path.strip_suffix("publish") {
        Some(base) => format!("{base}broadcast"),
        None => return Err("the publish URL must end in `publish`".into()),
    };
    let config = client_config(&hub.target, false)?;
    let pad = "x".repeat(size.saturating_sub(60));
    let per_channel = Arc::new(subscribed.per_channel);
    let hub = Arc::new(hub);
    let mut lines = stdin_lines();
    let mut phase = 0usize;
    while let Some(line) = lines.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [mode, value, seconds, batch] = words[..] else {
            return Err(format!("expected `MODE VALUE SECONDS BATCH`, got {line:?}").into());
        };
        let (value, seconds, batch): (f64, f64, usize) =
            (value.parse()?, seconds.parse()?, batch.parse()?);
        phase += 1;
        if phase >= MAX_PHASES {
            return Err("too many phases".into());
        }
        let shared = Arc::new(Shared {
            accepted: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(String::new()),
        });
        let (jobs_tx, jobs_rx) = tokio::sync::mpsc::channel::<Job>(1 << 16);
        let jobs_rx = Arc::new(tokio::sync::Mutex::new(jobs_rx));
        let mut workers = Vec::new();
        for _ in 0..publishers.max(1) {
            let mut publisher = Publisher {
                uri: uri.clone(),
                target: hub.target.clone(),
                config: config.clone(),
                sender: None,
            };
            let (jobs_rx, shared, hub, pad) =
                (jobs_rx.clone(), shared.clone(), hub.clone(), pad.clone());
            let (publish_path, broadcast_path) = (publish_path.clone(), broadcast_path.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let Some(job) = jobs_rx.lock().await.recv().await else {
                        break;
                    };
                    let (many, body) = job_body(&job, &hub, &pad);
                    let path = if many { &broadcast_path } else { &publish_path };
                    match publisher.post(path, body).await {
                        Ok(()) => {
                            shared.accepted.fetch_add(1, Ordering::Relaxed);
                            shared.expected.fetch_add(job.fan, Ordering::Relaxed);
                        }
                        Err(error) => {
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                            publisher.sender = None;
                            if let Ok(mut first) = shared.first_error.lock() {
                                if first.is_empty() {
                                    *first = error.to_string();
                                }
                            }
                        }
                    }
                }
            }));
        }
        let fan_of = |first: usize| -> u64 {
            (0..batch.max(1))
                .map(|k| per_channel[(first + k) % hub.channels])
                .sum()
        };
        let delivered = |stats: &Stats| stats.phases[phase].delivered.load(Ordering::Relaxed);
        let started = Instant::now();
        let started_ns = now_ns();
        let mut seq = 0u64;
        let mut sent_fan = 0u64;
        let mut written_off = 0u64;
        let mut stalls = 0u64;
        while started.elapsed().as_secs_f64() < seconds {
            let first_channel = (seq as usize * batch.max(1)) % hub.channels;
            let sent_ns = match mode {
                "rate" => {
                    // Stamped with the time it was due, not the time it left: a publisher held
                    // up by a slow hub must not hide that wait from the latency figures.
                    let due = Duration::from_secs_f64(seq as f64 / value.max(1e-3));
                    tokio::time::sleep_until(tokio::time::Instant::from_std(started + due)).await;
                    started_ns + due.as_nanos() as u64
                }
                "saturate" => {
                    let window = value.max(1.0) as u64 * fan_of(first_channel).max(1);
                    let mut last = (delivered(&stats), Instant::now());
                    while sent_fan.saturating_sub(delivered(&stats) + written_off) > window {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        let now = delivered(&stats);
                        if now != last.0 {
                            last = (now, Instant::now());
                        } else if last.1.elapsed() > Duration::from_secs(1) {
                            // Deliveries the hub dropped would hold the window shut forever.
                            written_off = sent_fan.saturating_sub(now);
                            stalls += 1;
                        }
                        if started.elapsed().as_secs_f64() >= seconds {
                            break;
                        }
                    }
                    now_ns()
                }
                other => return Err(format!("unknown mode {other:?}").into()),
            };
            if started.elapsed().as_secs_f64() >= seconds {
                break;
            }
            let fan = fan_of(first_channel);
            sent_fan += fan;
            let job = Job {
                phase,
                seq,
                first_channel,
                batch: batch.max(1),
                sent_ns,
                fan,
            };
            seq += 1;
            if jobs_tx.send(job).await.is_err() {
                break;
            }
        }
        let publish_seconds = started.elapsed().as_secs_f64();
        drop(jobs_tx);
        for worker in workers {
            let _ = worker.await;
        }
        // Drain: until every accepted publication is delivered, nothing arrives for 10 s, or
        // 60 s have passed. Some hubs hand a large group its first delivery seconds after
        // the publication (Channels takes about 2 s for 4,000 subscribers here).
        let mut last = (delivered(&stats), Instant::now());
        let drain_started = Instant::now();
        while delivered(&stats) < shared.expected.load(Ordering::Relaxed)
            && last.1.elapsed() < Duration::from_secs(10)
            && drain_started.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = delivered(&stats);
            if now != last.0 {
                last = (now, Instant::now());
            }
        }
        let total_seconds = started.elapsed().as_secs_f64();
        let mut latencies = match stats.phases[phase].latencies_us.lock() {
            Ok(mut guard) => std::mem::take(&mut *guard),
            Err(_) => Vec::new(),
        };
        latencies.sort_unstable();
        let percentile = |p: f64| -> u32 {
            if latencies.is_empty() {
                return 0;
            }
            latencies[((latencies.len() - 1) as f64 * p).round() as usize]
        };
        let got = delivered(&stats);
        let expected = shared.expected.load(Ordering::Relaxed);
        let first_error = shared
            .first_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        println!(
            "{{\"phase\":{phase},\"mode\":{mode:?},\"value\":{value},\"batch\":{batch},\"published\":{},\"publish_errors\":{},\"first_error\":{first_error:?},\"expected\":{expected},\"delivered\":{got},\"lost\":{},\"stalls\":{stalls},\"publish_seconds\":{publish_seconds:.3},\"seconds\":{total_seconds:.3},\"rate\":{:.1},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"unparsed\":{}}}",
            shared.accepted.load(Ordering::Relaxed),
            shared.errors.load(Ordering::Relaxed),
            expected.saturating_sub(got),
            got as f64 / total_seconds,
            percentile(0.50),
            percentile(0.99),
            latencies.last().copied().unwrap_or(0),
            stats.unparsed.load(Ordering::Relaxed),
        );
    }
    Ok(())
}

/// `hub-connect`: new TLS connection + WebSocket upgrade (the path carries the token) +
/// subscription acknowledged, then a close frame; `connections` workers in a loop.
pub async fn connect_rate(hub: Hub, connections: usize, seconds: f64) -> Result<(), Error> {
    let config = client_config(&hub.target, false)?;
    let hub = Arc::new(hub);
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(String::new()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut workers = Vec::new();
    for worker in 0..connections {
        let (hub, config, done, errors, first_error) = (
            hub.clone(),
            config.clone(),
            done.clone(),
            errors.clone(),
            first_error.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut n = worker;
            while Instant::now() < deadline {
                let channel = format!("{}{}", hub.prefix, n % hub.channels);
                n += connections;
                match subscribe(&hub, &config, &hub.target.path, &channel).await {
                    Ok(mut socket) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        let _ = socket.send(Message::Close(None)).await;
                    }
                    Err(error) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut first) = first_error.lock() {
                            if first.is_empty() {
                                *first = error.to_string();
                            }
                        }
                        // A refusing hub must not turn this into a busy loop.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let done = done.load(Ordering::Relaxed);
    let first_error = first_error.lock().map(|e| e.clone()).unwrap_or_default();
    println!(
        "{{\"operations\":{done},\"errors\":{},\"first_error\":{first_error:?},\"seconds\":{elapsed:.3},\"rate\":{:.1}}}",
        errors.load(Ordering::Relaxed),
        done as f64 / elapsed
    );
    Ok(())
}
