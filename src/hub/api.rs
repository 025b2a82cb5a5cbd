//! The publish API (`/hub/*` on the admin listener): how backends publish, and how
//! operators see channels, presence and history.
//!
//! | request | answer |
//! |---|---|
//! | `POST /hub/publish {"channel","data","idempotency_key"?}` | `{"channel","epoch","offset","delivered","duplicate"}` |
//! | `POST /hub/broadcast {"channels":[…],"data","idempotency_key"?}` | `{"results":[…]}` |
//! | `POST /hub/disconnect {"user","code"?,"reason"?}` | `{"disconnected":N}` |
//! | `POST /hub/unsubscribe {"user","channel"}` | `{"unsubscribed":N}` |
//! | `GET /hub/presence?channel=C` | `{"channel","connections","users"}` |
//! | `GET /hub/history?channel=C&limit=N` | `{"channel","epoch","offset","publications":[{"offset","data"}]}` |
//! | `GET /hub/channels` | `{"channels":[{"channel","subscribers"}]}` |
//! | `GET /hub/stats` | `{"sessions","channels","subscriptions",…}` |
//!
//! `data` is kept as the publisher wrote it (no re-serialisation: key order and numbers
//! reach subscribers unchanged).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::registry::{Kick, Outgoing};
use super::Hub;
use crate::config::hub::valid_channel;

/// The most a publish request may carry (the namespace's own limit applies to `data`).
pub const MAX_BODY: usize = 64 << 20;

#[derive(Deserialize)]
struct PublishBody<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct BroadcastBody<'a> {
    channels: Vec<String>,
    #[serde(borrow)]
    data: &'a RawValue,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct DisconnectBody {
    user: String,
    code: Option<u16>,
    reason: Option<String>,
}

#[derive(Deserialize)]
struct UnsubscribeBody {
    user: String,
    channel: String,
}

fn bad(message: impl Into<String>) -> (StatusCode, Value) {
    (
        StatusCode::BAD_REQUEST,
        json!({"result": "failure", "error": message.into()}),
    )
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    crate::http::query_pairs(query?)
        .find(|(n, _)| n == name)
        .map(|(_, v)| crate::http::percent_decode(v))
}

/// Whether `path` is the publish API's.
pub fn is_hub_path(path: &str) -> bool {
    path == "/hub" || path.starts_with("/hub/")
}

/// Answers `/hub/*`: the status and JSON body.
pub async fn handle(
    hub: &Arc<Hub>,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: Bytes,
) -> (StatusCode, Value) {
    match (method, path) {
        (&Method::POST, "/hub/publish") => {
            let Ok(request) = serde_json::from_slice::<PublishBody<'_>>(&body) else {
                return bad(
                    "expected {\"channel\": string, \"data\": JSON, \"idempotency_key\"?: string}",
                );
            };
            let data = super::JsonText::from_raw(request.data);
            match hub
                .publish(&request.channel, data, request.idempotency_key.as_deref())
                .await
            {
                Ok(published) => (StatusCode::OK, published_json(&published)),
                Err(error) => bad(error.to_string()),
            }
        }
        (&Method::POST, "/hub/broadcast") => {
            let Ok(request) = serde_json::from_slice::<BroadcastBody<'_>>(&body) else {
                return bad("expected {\"channels\": [string], \"data\": JSON, \"idempotency_key\"?: string}");
            };
            if request.channels.is_empty() || request.channels.len() > 10_000 {
                return bad("`channels` must list 1 to 10000 channels");
            }
            let data = super::JsonText::from_raw(request.data);
            let key = request
                .idempotency_key
                .as_deref()
                .map(|key| format!("broadcast\0{key}"));
            let mut results = Vec::with_capacity(request.channels.len());
            for channel in &request.channels {
                results.push(
                    match hub.publish(channel, data.clone(), key.as_deref()).await {
                        Ok(published) => published_json(&published),
                        Err(error) => json!({"channel": channel, "error": error.to_string()}),
                    },
                );
            }
            (StatusCode::OK, json!({"results": results}))
        }
        (&Method::POST, "/hub/disconnect") => {
            let Ok(request) = serde_json::from_slice::<DisconnectBody>(&body) else {
                return bad(
                    "expected {\"user\": string, \"code\"?: 4000-4999, \"reason\"?: string}",
                );
            };
            let code = request.code.unwrap_or(4003);
            if !(4000..=4999).contains(&code) {
                return bad("`code` must be between 4000 and 4999");
            }
            let reason = request
                .reason
                .unwrap_or_else(|| "disconnected by the server".into());
            // Bounds what each kicked session keeps; the wire cuts it to the close frame's
            // 123 bytes (`Wire::queue_close`).
            let reason: String = reason.chars().take(100).collect();
            let sessions = hub.registry.sessions_of(&request.user);
            for session in &sessions {
                session.kick(Kick::Disconnect {
                    code,
                    reason: reason.clone(),
                });
            }
            (StatusCode::OK, json!({"disconnected": sessions.len()}))
        }
        (&Method::POST, "/hub/unsubscribe") => {
            let Ok(request) = serde_json::from_slice::<UnsubscribeBody>(&body) else {
                return bad("expected {\"user\": string, \"channel\": string}");
            };
            let channel: Arc<str> = Arc::from(request.channel.as_str());
            let sessions = hub.registry.sessions_of(&request.user);
            let mut count = 0;
            for session in &sessions {
                if session.push(Outgoing::Unsubscribed(channel.clone()), channel.len()) {
                    count += 1;
                }
            }
            (StatusCode::OK, json!({"unsubscribed": count}))
        }
        (&Method::GET, "/hub/presence") => {
            let Some(channel) = query_param(query, "channel").filter(|c| valid_channel(c)) else {
                return bad("`?channel=NAME` is required");
            };
            let presence = hub.registry.presence(&channel);
            (
                StatusCode::OK,
                json!({"channel": channel, "connections": presence.connections, "users": presence.users}),
            )
        }
        (&Method::GET, "/hub/history") => {
            let Some(channel) = query_param(query, "channel").filter(|c| valid_channel(c)) else {
                return bad("`?channel=NAME` is required");
            };
            let limit = query_param(query, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100usize)
                .min(10_000);
            let (position, entries) = hub.history().recent(&channel, limit).await;
            let publications: Vec<Value> = entries
                .iter()
                .map(|entry| {
                    let data: Value =
                        serde_json::from_str(entry.data.as_str()).unwrap_or(Value::Null);
                    json!({"offset": entry.offset, "data": data})
                })
                .collect();
            (
                StatusCode::OK,
                json!({"channel": channel, "epoch": &*position.epoch, "offset": position.offset, "publications": publications}),
            )
        }
        (&Method::GET, "/hub/channels") => {
            let channels: Vec<Value> = hub
                .registry
                .channels()
                .into_iter()
                .map(|(channel, subscribers)| json!({"channel": channel, "subscribers": subscribers}))
                .collect();
            (StatusCode::OK, json!({"channels": channels}))
        }
        (&Method::GET, "/hub/stats") => {
            let channels = hub.registry.channels();
            let subscriptions: usize = channels.iter().map(|(_, n)| n).sum();
            let metrics = &hub.metrics.hub;
            let load = |counter: &std::sync::atomic::AtomicU64| {
                counter.load(std::sync::atomic::Ordering::Relaxed)
            };
            (
                StatusCode::OK,
                json!({
                    "sessions": hub.registry.session_count(),
                    "channels": channels.len(),
                    "subscriptions": subscriptions,
                    "publications": load(&hub.publications),
                    "deliveries": load(&hub.deliveries),
                    "slow_consumer_drops": metrics
                        .drops
                        .get_or_create(&crate::metrics::ReasonLabels { reason: "slow_consumer".into() })
                        .get(),
                    "slow_consumer_disconnects": metrics
                        .disconnects
                        .get_or_create(&crate::metrics::ReasonLabels { reason: "slow_consumer".into() })
                        .get(),
                }),
            )
        }
        (_, "/hub/publish" | "/hub/broadcast" | "/hub/disconnect" | "/hub/unsubscribe") => (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"result": "failure", "error": "use POST"}),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            json!({"result": "failure", "error": "no such hub endpoint: /hub/publish, /hub/broadcast, /hub/disconnect, /hub/unsubscribe, /hub/presence, /hub/history, /hub/channels, /hub/stats"}),
        ),
    }
}

fn published_json(published: &super::Published) -> Value {
    json!({
        "channel": published.channel,
        "epoch": published.epoch,
        "offset": published.offset,
        "delivered": published.delivered,
        "duplicate": published.duplicate,
    })
}
