//! WebSocket upgrade checks (RFC 6455 §4.2.1) and the built-in echo endpoint at `/ws`, a
//! stand-in until the hub exists.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::error::HttpError;

/// Whether header `name` lists `token` (comma-separated, any case).
pub(crate) fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// An HTTP/1.1 `Upgrade: websocket` or an HTTP/2 extended CONNECT for websocket (RFC 8441).
pub fn is_websocket<B>(request: &Request<B>) -> bool {
    if request.method() == Method::CONNECT {
        return request
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    }
    has_token(request.headers(), header::UPGRADE, "websocket")
}

/// Validates a WebSocket opening request of either kind: the HTTP/1.1 upgrade's headers
/// ([`check_upgrade`]), or an extended CONNECT's version.
pub fn check_opening<B>(request: &Request<B>) -> Result<(), HttpError> {
    if request.method() != Method::CONNECT {
        return check_upgrade(request).map(drop);
    }
    if request
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(HttpError::UnsupportedWebSocketVersion);
    }
    Ok(())
}

/// Validates an upgrade request; returns the `Sec-WebSocket-Accept` value for the `101`.
pub fn check_upgrade<B>(request: &Request<B>) -> Result<HeaderValue, HttpError> {
    let headers = request.headers();
    if request.method() != Method::GET {
        return Err(HttpError::MethodNotAllowed);
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(HttpError::UpgradeRequired);
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(HttpError::BadRequest(
            "Connection header must include `upgrade`",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(HttpError::UnsupportedWebSocketVersion);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|v| v.as_bytes())
        .filter(|k| k.len() == 24 && k.ends_with(b"=="))
        .ok_or(HttpError::BadRequest(
            "missing or malformed Sec-WebSocket-Key",
        ))?;
    HeaderValue::from_str(&derive_accept_key(key))
        .map_err(|_| HttpError::BadRequest("malformed Sec-WebSocket-Key"))
}

/// The echo's buffers and limits. tungstenite's defaults (a 64 MiB message of 16 MiB frames,
/// an unbounded write buffer) let four clients pin a few hundred MiB; an echo needs little.
fn echo_limits() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(ECHO_MAX_MESSAGE))
        .max_frame_size(Some(ECHO_MAX_MESSAGE))
}

/// The largest message the built-in echo takes; larger closes with 1009.
pub const ECHO_MAX_MESSAGE: usize = 64 * 1024;

/// Echoes text and binary messages until the client closes, the connection is idle for
/// `idle_timeout`, or the server shuts down (close code 1001).
pub async fn echo(upgraded: Upgraded, idle_timeout: Duration, shutdown: CancellationToken) {
    let mut socket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(echo_limits()))
            .await;
    let reason = loop {
        let next = tokio::select! {
            next = tokio::time::timeout(idle_timeout, socket.next()) => next,
            () = shutdown.cancelled() => break Some((CloseCode::Away, "server shutting down")),
        };
        let message = match next {
            Err(_) => break Some((CloseCode::Away, "idle timeout")),
            Ok(Some(Err(WsError::Capacity(_)))) => {
                break Some((CloseCode::Size, "message over 64 KiB"))
            }
            Ok(None) | Ok(Some(Err(_))) => break None,
            Ok(Some(Ok(message))) => message,
        };
        let reply = match message {
            Message::Text(_) | Message::Binary(_) => message,
            // tungstenite answers pings and close frames itself, on the next read.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => {
                // That read writes the close reply and then ends the stream.
                let drain = async { while let Some(Ok(_)) = socket.next().await {} };
                let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
                break None;
            }
        };
        if socket.send(reply).await.is_err() {
            break None;
        }
    };
    if let Some((code, reason)) = reason {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = socket.close(Some(frame)).await;
    }
}

/// Completes an accepted WebSocket by closing it at once with `code` and `reason` (a refusal
/// a browser can read: it cannot read the status of a failed upgrade), then waits briefly for
/// the client's close.
pub async fn close_at_once(
    upgraded: Upgraded,
    code: u16,
    reason: &'static str,
    shutdown: CancellationToken,
) {
    let mut socket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(echo_limits()))
            .await;
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    if socket.close(Some(frame)).await.is_err() {
        return;
    }
    let drain = async { while let Some(Ok(_)) = socket.next().await {} };
    tokio::select! {
        _ = tokio::time::timeout(Duration::from_secs(5), drain) => {}
        () = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_request(version: &str, key: Option<&str>, connection: &str) -> Request<()> {
        let mut builder = Request::builder()
            .uri("/ws")
            .header("upgrade", "websocket")
            .header("connection", connection)
            .header("sec-websocket-version", version);
        if let Some(key) = key {
            builder = builder.header("sec-websocket-key", key);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn accept_key_matches_rfc6455_example() {
        let accept = check_upgrade(&upgrade_request(
            "13",
            Some("dGhlIHNhbXBsZSBub25jZQ=="),
            "keep-alive, Upgrade",
        ))
        .unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn bad_upgrades_get_the_right_status() {
        let key = Some("dGhlIHNhbXBsZSBub25jZQ==");
        let err = check_upgrade(&upgrade_request("8", key, "upgrade")).unwrap_err();
        assert_eq!(err.status(), 426);
        let err = check_upgrade(&upgrade_request("13", None, "upgrade")).unwrap_err();
        assert_eq!(err.status(), 400);
        let err = check_upgrade(&upgrade_request("13", key, "keep-alive")).unwrap_err();
        assert_eq!(err.status(), 400);
        let plain = Request::builder().uri("/ws").body(()).unwrap();
        assert_eq!(check_upgrade(&plain).unwrap_err().status(), 426);
    }
}
