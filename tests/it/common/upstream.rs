//! A real plain-HTTP backend for proxy tests, started on 127.0.0.1:0.
//!
//! - `/echo…`: JSON with this server's id, method, path, headers and body length
//! - `/slow?ms=N`: answers after N ms
//! - `/stream?chunks=N`: N chunks of 64 KiB, the second after `/release` is hit
//! - `/upload`: reads the body as it arrives; `/upload-progress` tells how much came so far
//! - `/health`: 200, or 503 after `set_healthy(false)`
//! - `/ws…`: WebSocket echo

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

type Body = BoxBody<Bytes, Infallible>;

pub struct Upstream {
    pub addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    pub uploaded: Arc<AtomicU64>,
    pub release: Arc<Notify>,
    stop: CancellationToken,
}

impl Upstream {
    pub async fn start(id: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = Upstream {
            addr,
            healthy: Arc::new(AtomicBool::new(true)),
            uploaded: Arc::new(AtomicU64::new(0)),
            release: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
        };
        let state = State {
            id: id.to_owned(),
            healthy: upstream.healthy.clone(),
            uploaded: upstream.uploaded.clone(),
            release: upstream.release.clone(),
        };
        let stop = upstream.stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = stop.cancelled() => return,
                };
                let Ok((tcp, _)) = accepted else { continue };
                let state = state.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                    tokio::select! {
                        _ = conn => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
        upstream
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Stops listening and drops every connection: the server is gone.
    pub fn kill(&self) {
        self.stop.cancel();
    }
}

#[derive(Clone)]
struct State {
    id: String,
    healthy: Arc<AtomicBool>,
    uploaded: Arc<AtomicU64>,
    release: Arc<Notify>,
}

fn full(status: u16, text: impl Into<Bytes>) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Full::new(text.into()).boxed());
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    response
}

fn query(req: &hyper::Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

impl State {
    async fn handle(&self, mut req: hyper::Request<Incoming>) -> hyper::Response<Body> {
        let path = req.uri().path().to_owned();
        if path.starts_with("/ws") || path.contains("/ws") {
            return self.websocket(&mut req);
        }
        match path.as_str() {
            "/health" => {
                if self.healthy.load(Ordering::SeqCst) {
                    full(200, "ok")
                } else {
                    full(503, "down")
                }
            }
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(query(&req, "ms").unwrap_or(1000))).await;
                full(200, self.id.clone())
            }
            "/stream" => {
                let chunks = query(&req, "chunks").unwrap_or(4);
                let release = self.release.clone();
                let stream = async_stream(chunks, release);
                hyper::Response::new(BodyExt::boxed(StreamBody::new(stream)))
            }
            "/upload" => {
                let mut body = req.into_body();
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else { break };
                    if let Some(data) = frame.data_ref() {
                        self.uploaded.fetch_add(data.len() as u64, Ordering::SeqCst);
                    }
                }
                full(200, self.uploaded.load(Ordering::SeqCst).to_string())
            }
            _ => {
                let headers: BTreeMap<String, String> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                    .collect();
                let method = req.method().to_string();
                let version = format!("{:?}", req.version());
                let uri = req.uri().to_string();
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes().len())
                    .unwrap_or(0);
                let json = serde_json::json!({
                    "server": self.id, "method": method, "version": version, "path": uri, "headers": headers, "body_len": body,
                });
                let mut response = full(200, json.to_string());
                response
                    .headers_mut()
                    .insert("server", http::HeaderValue::from_static("backend/1.2.3"));
                response
            }
        }
    }

    fn websocket(&self, req: &mut hyper::Request<Incoming>) -> hyper::Response<Body> {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return full(400, "not a websocket request");
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let on_upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            while let Some(Ok(message)) = ws.next().await {
                if message.is_text() || message.is_binary() {
                    if ws.send(message).await.is_err() {
                        break;
                    }
                } else if message.is_close() {
                    break;
                }
            }
        });
        let mut response = full(101, Bytes::new());
        let h = response.headers_mut();
        h.insert("upgrade", http::HeaderValue::from_static("websocket"));
        h.insert("connection", http::HeaderValue::from_static("Upgrade"));
        h.insert(
            "sec-websocket-accept",
            http::HeaderValue::from_str(&accept).unwrap(),
        );
        h.insert("x-backend", http::HeaderValue::from_str(&self.id).unwrap());
        response
    }
}

fn async_stream(
    chunks: u64,
    release: Arc<Notify>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    futures_util::stream::unfold(0u64, move |sent| {
        let release = release.clone();
        async move {
            if sent >= chunks {
                return None;
            }
            if sent == 1 {
                // The first chunk must reach the client before the rest exists.
                release.notified().await;
            }
            Some((
                Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024]))),
                sent + 1,
            ))
        }
    })
}
