//! JSON-RPC 2.0 over the hub's WebSocket (seed 003): each request is checked at the edge
//! (method allowlist, a per-connection budget and per-method budgets, calls in flight),
//! then forwarded as an HTTP POST with the verified claims as headers; the backend's
//! JSON-RPC response goes back on the socket. Calls run as tasks, so a slow backend never
//! stops the session reading, pinging or delivering.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::registry::{Outgoing, SessionHandle};
use super::Hub;
use crate::config::hub::{Budget, RpcSettings};
use crate::metrics::ResultLabels;
use crate::policy::client::{self, HttpClient};
use crate::policy::jwt::Claims;

/// The most a backend's answer may carry.
const MAX_ANSWER: usize = 4 << 20;
/// JSON-RPC's code for a refused call over budget (implementation-defined server error).
pub const RATE_LIMITED: i64 = -32029;

/// A JSON-RPC error response.
pub fn error_response(id: Option<&Value>, code: i64, message: &str) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": {"code": code, "message": message},
    })
    .to_string()
}

/// A token bucket in thousandths of a call.
#[derive(Debug)]
struct Bucket {
    budget: Budget,
    milli: u64,
    at: Instant,
}

impl Bucket {
    fn new(budget: Budget) -> Self {
        Self {
            milli: u64::from(budget.burst) * 1000,
            budget,
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.at);
        self.at = now;
        let refill = (elapsed.as_secs_f64() * self.budget.milli_per_second as f64) as u64;
        self.milli = (self.milli + refill).min(u64::from(self.budget.burst) * 1000);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// One connection's budgets and calls in flight.
#[derive(Debug)]
pub struct Budgets {
    connection: Option<Bucket>,
    methods: HashMap<String, Bucket>,
    in_flight: Arc<AtomicUsize>,
}

/// An endpoint's forwarding: its settings and the HTTP client.
pub struct Forwarder {
    settings: RpcSettings,
    client: HttpClient,
}

impl Forwarder {
    pub fn new(settings: RpcSettings) -> Self {
        Self {
            settings,
            client: client::build(),
        }
    }

    pub fn budgets(&self) -> Budgets {
        Budgets {
            connection: self.settings.rate.map(Bucket::new),
            methods: HashMap::new(),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn count(hub: &Hub, result: &str) {
        hub.metrics
            .hub
            .rpc_calls
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// Checks `call` and starts forwarding it; `Err` is the JSON-RPC error to send now.
    pub fn call(
        &self,
        call: &Map<String, Value>,
        text: Utf8Bytes,
        claims: Option<Claims>,
        budgets: &mut Budgets,
        session: &Arc<SessionHandle>,
        hub: &Arc<Hub>,
    ) -> Result<(), String> {
        let id = call.get("id").cloned();
        let Some(method) = call
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            Self::count(hub, "refused");
            return Err(error_response(
                id.as_ref(),
                -32600,
                "Invalid Request: no method",
            ));
        };
        if !self.settings.methods.is_empty() && !self.settings.methods.contains(&method) {
            Self::count(hub, "refused");
            return Err(error_response(id.as_ref(), -32601, "Method not found"));
        }
        let now = Instant::now();
        let connection_ok = budgets.connection.as_mut().is_none_or(|b| b.take(now));
        let method_ok = match self.settings.method_rates.get(&method) {
            Some(budget) => budgets
                .methods
                .entry(method.clone())
                .or_insert_with(|| Bucket::new(*budget))
                .take(now),
            None => true,
        };
        if !connection_ok || !method_ok {
            Self::count(hub, "limited");
            return Err(error_response(
                id.as_ref(),
                RATE_LIMITED,
                "rate limit exceeded",
            ));
        }
        if budgets.in_flight.load(Ordering::Relaxed) >= self.settings.max_in_flight {
            Self::count(hub, "limited");
            return Err(error_response(
                id.as_ref(),
                RATE_LIMITED,
                "too many calls waiting for an answer",
            ));
        }
        let mut request = http::Request::post(self.settings.url.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json");
        if let Some(claims) = &claims {
            for (claim, header) in &self.settings.pass_claims {
                let value = match claims.get(claim) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => continue,
                    Some(other) => other.to_string(),
                };
                if let Ok(value) = http::HeaderValue::from_str(&value) {
                    request = request.header(header.as_str(), value);
                }
            }
        }
        // Forwarded as the client wrote it.
        let body = Bytes::from(text);
        let request = match request.body(Full::new(body)) {
            Ok(request) => request,
            Err(_) => {
                Self::count(hub, "failed");
                return Err(error_response(id.as_ref(), -32603, "Internal error"));
            }
        };
        let in_flight = budgets.in_flight.clone();
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (client, timeout) = (self.client.clone(), self.settings.timeout);
        let (session, hub) = (session.clone(), hub.clone());
        let shutdown = hub.shutdown.clone();
        hub.tasks.clone().spawn(async move {
            let answer = tokio::select! {
                answer = client::send(&client, request, timeout, MAX_ANSWER) => answer,
                () = shutdown.cancelled() => {
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            };
            in_flight.fetch_sub(1, Ordering::Relaxed);
            let reply = match answer {
                Ok(response) => match serde_json::from_slice::<Value>(response.body()) {
                    Ok(Value::Object(object)) if object.get("jsonrpc") == Some(&json!("2.0")) => {
                        let result = if object.contains_key("error") { "error" } else { "ok" };
                        Self::count(&hub, result);
                        Value::Object(object).to_string()
                    }
                    _ => {
                        Self::count(&hub, "failed");
                        tracing::info!(status = %response.status(), "JSON-RPC backend answered without a JSON-RPC response");
                        error_response(id.as_ref(), -32603, "the backend gave no JSON-RPC answer")
                    }
                },
                Err(error) => {
                    Self::count(&hub, "failed");
                    tracing::info!(%error, "JSON-RPC backend unreachable");
                    error_response(id.as_ref(), -32603, "the backend did not answer")
                }
            };
            // A notification (no `id`) gets no answer.
            if id.is_some() {
                let len = reply.len();
                session.push(Outgoing::Text(Utf8Bytes::from(reply)), len);
            }
        });
        Ok(())
    }
}
