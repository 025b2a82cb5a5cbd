//! The WebSocket section: a `wss://` upgrade with the operator's token and headers, a text and a
//! binary exchange, ping/pong, survival of an idle period (the proxy-timeout catcher) and what a
//! plain `ws://` attempt gets.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::tungstenite::Error as WsError;

use super::findings::{Finding, Status};
use super::http::{plain_request, PlainAnswer};
use super::modern;
use super::target::Target;

const SECTION: &str = "websocket";

/// What a reply to a sent message must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The same message back.
    Echo,
    /// Any message.
    Any,
    /// A text message containing this.
    Contains(String),
    /// Do not send this kind of message at all.
    Skip,
}

impl std::str::FromStr for Expect {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "echo" => Ok(Expect::Echo),
            "any" => Ok(Expect::Any),
            "skip" => Ok(Expect::Skip),
            _ => text
                .strip_prefix("contains:")
                .map(|s| Expect::Contains(s.to_owned()))
                .ok_or_else(|| format!("`{text}`: expected echo, any, skip or contains:TEXT")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WsOptions {
    /// Path (and query) of the WebSocket endpoint.
    pub path: String,
    pub token: Option<String>,
    /// Query parameter the token also travels in (browsers cannot set headers); `None`: header only.
    pub token_param: Option<String>,
    pub headers: Vec<(String, String)>,
    pub text: String,
    pub expect_text: Expect,
    pub expect_binary: Expect,
    pub idle: Duration,
    pub timeout: Duration,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Runs every WebSocket check against `target`.
/// `http_port`: where a plain `ws://` attempt goes.
pub async fn check(
    target: &Target,
    options: &WsOptions,
    http_port: u16,
    progress: &(dyn Fn(&str) + Sync),
) -> Vec<Finding> {
    let mut findings = Vec::new();
    progress("WebSocket upgrade");
    let mut socket = match upgrade(target, options).await {
        Ok((socket, reason)) => {
            findings.push(Finding::new(SECTION, "upgrade", Status::Pass, reason));
            socket
        }
        Err(reason) => {
            findings.push(Finding::new(SECTION, "upgrade", Status::Fail, reason));
            findings.push(plain_ws_finding(target, options, http_port).await);
            return findings;
        }
    };
    if options.expect_text != Expect::Skip {
        let sent = Message::text(options.text.clone());
        findings.push(
            exchange(
                &mut socket,
                "text message",
                sent,
                &options.expect_text,
                options.timeout,
            )
            .await,
        );
    }
    if options.expect_binary != Expect::Skip {
        let mut payload = [0u8; 16];
        let _ = aws_lc_rs::rand::fill(&mut payload);
        let sent = Message::binary(payload.to_vec());
        findings.push(
            exchange(
                &mut socket,
                "binary message",
                sent,
                &options.expect_binary,
                options.timeout,
            )
            .await,
        );
    }
    findings.push(ping(&mut socket, options.timeout).await);
    if !options.idle.is_zero() {
        findings.push(idle(&mut socket, options, progress).await);
    }
    let _ = tokio::time::timeout(options.timeout, socket.close(None)).await;
    findings.push(plain_ws_finding(target, options, http_port).await);
    findings
}

fn ws_url(target: &Target, options: &WsOptions) -> String {
    let mut path = options.path.clone();
    if let (Some(token), Some(param)) = (&options.token, &options.token_param) {
        let separator = if path.contains('?') { '&' } else { '?' };
        path = format!("{path}{separator}{param}={}", encode_query(token));
    }
    format!("wss://{}{path}", target.authority(target.port, 443))
}

/// Percent-encodes what may not stand in a query value.
fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn upgrade(target: &Target, options: &WsOptions) -> Result<(Socket, String), String> {
    let mut request = ws_url(target, options)
        .into_client_request()
        .map_err(|e| format!("bad WebSocket URL: {e}"))?;
    let headers = request.headers_mut();
    if let Some(token) = &options.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        headers.insert(http::header::AUTHORIZATION, value);
    }
    for (name, value) in &options.headers {
        let name: http::HeaderName = name
            .parse()
            .map_err(|_| format!("bad header name `{name}`"))?;
        let value = value
            .parse()
            .map_err(|_| format!("bad value for header {name}"))?;
        headers.insert(name, value);
    }
    let config = modern::default_client_config(&[b"http/1.1"]).ok_or("no TLS client")?;
    let tls = modern::connect(target.addr, &target.host, config, options.timeout)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the TLS handshake failed")?;
    let handshake = tokio_tungstenite::client_async(request, tls);
    match tokio::time::timeout(options.timeout, handshake).await {
        Err(_) => Err(format!("no upgrade answer within {:?}", options.timeout)),
        Ok(Err(WsError::Http(response))) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| {
                    String::from_utf8_lossy(&b[..b.len().min(120)])
                        .trim()
                        .to_owned()
                })
                .filter(|b| !b.is_empty())
                .map(|b| format!(": {b}"))
                .unwrap_or_default();
            Err(format!(
                "{} refused the upgrade with HTTP {}{body}",
                options.path,
                response.status()
            ))
        }
        Ok(Err(error)) => Err(format!("upgrade failed: {error}")),
        Ok(Ok((socket, response))) => {
            let protocol = response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(|p| format!(", subprotocol {p}"))
                .unwrap_or_default();
            let with = if options.token.is_some() {
                " with the token"
            } else {
                ""
            };
            Ok((
                socket,
                format!("wss://…{} upgraded{with} (101{protocol})", options.path),
            ))
        }
    }
}

/// The next data message, answering pings meanwhile; `Err` says why none came.
async fn next_message(socket: &mut Socket, timeout: Duration) -> Result<Message, String> {
    let wait = async {
        loop {
            match socket.next().await {
                None => return Err("the connection closed".to_owned()),
                Some(Err(error)) => return Err(format!("the connection failed: {error}")),
                Some(Ok(Message::Close(frame))) => {
                    return Err(match frame {
                        Some(frame) => format!(
                            "the server closed with {} {}",
                            u16::from(frame.code),
                            frame.reason
                        ),
                        None => "the server closed the connection".to_owned(),
                    })
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(message)) => return Ok(message),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or_else(|_| Err(format!("no reply within {timeout:?}")))
}

fn describe(message: &Message) -> String {
    match message {
        Message::Text(text) => {
            let text = text.as_str();
            let shown: String = text.chars().take(60).collect();
            let more = if shown.len() < text.len() { "…" } else { "" };
            format!("text `{shown}{more}`")
        }
        Message::Binary(bytes) => format!("{} binary bytes", bytes.len()),
        other => format!("{other:?}"),
    }
}

fn meets(reply: &Message, sent: &Message, expect: &Expect) -> bool {
    match expect {
        Expect::Echo => reply == sent,
        Expect::Any | Expect::Skip => true,
        Expect::Contains(needle) => {
            matches!(reply, Message::Text(t) if t.as_str().contains(needle.as_str()))
        }
    }
}

/// Sends `sent` and waits for a reply meeting `expect`; other messages (server pushes) are
/// skipped until the timeout.
async fn exchange(
    socket: &mut Socket,
    check: &'static str,
    sent: Message,
    expect: &Expect,
    timeout: Duration,
) -> Finding {
    let what = describe(&sent);
    match tokio::time::timeout(timeout, socket.send(sent.clone())).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            return Finding::new(
                SECTION,
                check,
                Status::Fail,
                format!("cannot send {what}: {error}"),
            )
        }
        Err(_) => {
            return Finding::new(
                SECTION,
                check,
                Status::Fail,
                format!("cannot send {what} within {timeout:?}"),
            )
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut other = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_message(socket, left).await {
            Ok(reply) if meets(&reply, &sent, expect) => {
                let how = if reply == sent {
                    "echoed".to_owned()
                } else {
                    format!("reply: {}", describe(&reply))
                };
                return Finding::new(SECTION, check, Status::Pass, format!("sent {what}, {how}"));
            }
            Ok(reply) => other = Some(reply),
            Err(reason) => {
                let reason = match other {
                    Some(reply) => {
                        format!("sent {what}, expected {expect:?}, got {}", describe(&reply))
                    }
                    None => format!("sent {what}: {reason}"),
                };
                return Finding::new(SECTION, check, Status::Fail, reason);
            }
        }
    }
}

async fn ping(socket: &mut Socket, timeout: Duration) -> Finding {
    let payload = b"tlsgate-check".to_vec();
    let sent =
        match tokio::time::timeout(timeout, socket.send(Message::Ping(payload.clone().into())))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("not sent within {timeout:?}")),
        };
    if let Err(error) = sent {
        return Finding::new(
            SECTION,
            "ping",
            Status::Fail,
            format!("cannot send a ping: {error}"),
        );
    }
    let wait = async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Pong(bytes))) if bytes.as_ref() == payload.as_slice() => {
                    return Ok(())
                }
                Some(Ok(Message::Close(_))) | None => {
                    return Err("the connection closed".to_owned())
                }
                Some(Err(error)) => return Err(error.to_string()),
                Some(Ok(_)) => continue,
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(())) => Finding::new(
            SECTION,
            "ping",
            Status::Pass,
            "ping answered with a matching pong",
        ),
        Ok(Err(reason)) => {
            Finding::new(SECTION, "ping", Status::Fail, format!("no pong: {reason}"))
        }
        Err(_) => Finding::new(
            SECTION,
            "ping",
            Status::Fail,
            format!("no pong within {timeout:?}"),
        ),
    }
}

/// Stays silent for the idle period (still answering the server's pings), then checks the
/// connection still carries a message.
async fn idle(
    socket: &mut Socket,
    options: &WsOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Finding {
    let seconds = options.idle.as_secs_f64();
    let started = tokio::time::Instant::now();
    let deadline = started + options.idle;
    loop {
        // Wake every second to show the countdown: this is the step a long check waits on.
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        progress(&format!(
            "WebSocket idle period: {:.0}s of {seconds:.0}s",
            (now - started).as_secs_f64()
        ));
        let tick = deadline.min(now + Duration::from_secs(1));
        match tokio::time::timeout_at(tick, socket.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(Message::Close(frame)))) => {
                let code = frame
                    .map(|f| format!(" with {} {}", u16::from(f.code), f.reason))
                    .unwrap_or_default();
                return Finding::new(
                    SECTION,
                    "idle",
                    Status::Fail,
                    format!("closed{code} after {:.1}s of silence (goal {seconds:.0}s): a proxy read timeout? keep-alive pings or a longer timeout fix it", started.elapsed().as_secs_f64()),
                );
            }
            Ok(None | Some(Err(_))) => {
                return Finding::new(
                    SECTION,
                    "idle",
                    Status::Fail,
                    format!("dropped after {:.1}s of silence (goal {seconds:.0}s): a proxy read timeout? keep-alive pings or a longer timeout fix it", started.elapsed().as_secs_f64()),
                );
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
    // After the silence the connection must still answer: a ping when messages are skipped,
    // else the configured message.
    let (after, what) = if options.expect_text == Expect::Skip {
        (ping(socket, options.timeout).await, "pings")
    } else {
        let sent = Message::text(options.text.clone());
        let after = exchange(socket, "idle", sent, &options.expect_text, options.timeout).await;
        (after, "messages")
    };
    if after.status == Status::Pass {
        Finding::new(
            SECTION,
            "idle",
            Status::Pass,
            format!("still answers {what} after {seconds:.0}s of silence"),
        )
    } else {
        Finding::new(
            SECTION,
            "idle",
            Status::Fail,
            format!("after {seconds:.0}s of silence: {}", after.reason),
        )
    }
}

/// A plain `ws://` upgrade on the HTTP port must be redirected or refused, never accepted.
async fn plain_ws_finding(target: &Target, options: &WsOptions, port: u16) -> Finding {
    let addr = SocketAddr::new(target.addr.ip(), port);
    let host = target.authority(port, 80);
    match plain_request(addr, &host, &options.path, true, options.timeout).await {
        PlainAnswer::Refused(reason) => Finding::new(
            SECTION,
            "plain ws://",
            Status::Pass,
            format!("port {port} refuses it ({reason})"),
        ),
        PlainAnswer::Answered { status: 101, .. } => Finding::new(
            SECTION,
            "plain ws://",
            Status::Fail,
            format!(
                "ws://{host}{} is accepted without TLS: messages and tokens travel in clear",
                options.path
            ),
        ),
        PlainAnswer::Answered {
            status,
            location: Some(location),
        } if (300..400).contains(&status) => Finding::new(
            SECTION,
            "plain ws://",
            Status::Pass,
            format!("redirected ({status} to {location})"),
        ),
        PlainAnswer::Answered { status, .. } => Finding::new(
            SECTION,
            "plain ws://",
            Status::Pass,
            format!("refused with HTTP {status}"),
        ),
    }
}
