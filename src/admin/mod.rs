//! The admin listener's router (default 127.0.0.1:9090): `/metrics`, `/health`, `/ready`,
//! `/certificates` and `POST /reload`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Method, StatusCode};
use serde::Serialize;

use crate::certs::inspect::format_time;
use crate::control::ReloadHandle;
use crate::http::error::HttpError;
use crate::http::{full, Response};
use crate::metrics::Metrics;
use crate::tls::CertSummary;

/// What the server currently serves, for `/certificates` and `/ready`.
#[derive(Debug, Default)]
pub struct CertificateState {
    pub served: Vec<CertSummary>,
    /// ACME certificates still on order (their names).
    pub pending: Vec<Vec<String>>,
}

/// What the admin endpoints read and ask for.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub certificates: Arc<ArcSwap<CertificateState>>,
    /// Set once every listener accepts connections.
    pub listening: Arc<AtomicBool>,
    pub reload: ReloadHandle,
}

#[derive(Serialize)]
struct CertificateView<'a> {
    names: &'a [String],
    file: String,
    subject: &'a str,
    issuer: &'a str,
    serial: &'a str,
    not_after: String,
    not_after_unix: i64,
    days_left: i64,
    default: bool,
    sha256_fingerprint: &'a str,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_renewal: Option<String>,
}

fn json(status: StatusCode, value: &impl Serialize) -> Response {
    let body = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".into());
    let mut response = hyper::Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Answers one admin request.
pub async fn handle<B>(
    context: Arc<AdminState>,
    request: hyper::Request<B>,
) -> Result<Response, Infallible> {
    let path = request.uri().path();
    let method = request.method();
    let response = match (method, path) {
        (&Method::GET, "/metrics") => {
            let mut response = hyper::Response::new(full(context.metrics.encode()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        (&Method::GET, "/health") => {
            json(StatusCode::OK, &serde_json::json!({"status": "healthy"}))
        }
        (&Method::GET, "/ready") => {
            let state = context.certificates.load();
            let listening = context.listening.load(Ordering::Acquire);
            if listening && state.pending.is_empty() {
                json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
            } else {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({"status": "not ready", "listening": listening, "pending_certificates": state.pending}),
                )
            }
        }
        (&Method::GET, "/certificates") => {
            let state = context.certificates.load();
            let now = crate::certs::inspect::unix_now();
            let served: Vec<CertificateView<'_>> = state
                .served
                .iter()
                .map(|c| CertificateView {
                    names: &c.names,
                    file: c.cert_path.display().to_string(),
                    subject: &c.info.subject,
                    issuer: &c.info.issuer,
                    serial: &c.info.serial,
                    not_after: format_time(c.info.not_after),
                    not_after_unix: c.info.not_after,
                    days_left: c.info.remaining_secs(now).div_euclid(86_400),
                    default: c.is_default,
                    sha256_fingerprint: &c.info.sha256_fingerprint,
                    source: c.source,
                    next_renewal: c.next_renewal().map(format_time),
                })
                .collect();
            json(
                StatusCode::OK,
                &serde_json::json!({"certificates": served, "pending": state.pending}),
            )
        }
        (&Method::POST, "/reload") => match context.reload.reload().await {
            Ok(message) => json(
                StatusCode::OK,
                &serde_json::json!({"result": "success", "message": message}),
            ),
            Err(error) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &serde_json::json!({"result": "failure", "error": error.to_string()}),
            ),
        },
        (_, "/reload") => HttpError::MethodNotAllowed.into_response(),
        _ => HttpError::NotFound.into_response(),
    };
    Ok(response)
}
