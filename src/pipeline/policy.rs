//! A route's policy, evaluated in the pipeline's policy stage for plain requests and WebSocket
//! upgrades alike, before the target is touched: a target never re-decides policy.

use std::time::Duration;

use http::header;
use http_body::Body;

use crate::http::error::HttpError;
use crate::metrics::{Metrics, UpgradeLabels};

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Origins a WebSocket may be opened from (lower case, no trailing `/`); empty: any.
    pub allowed_origins: Vec<String>,
    /// The most a request body may carry; more is a `413`.
    pub max_body_size: u64,
    /// How long a WebSocket may stay quiet both ways before it is closed.
    pub websocket_idle_timeout: Duration,
}

impl Policy {
    /// Whether `request` may reach the route's target. `websocket` says it is an opening
    /// request; refusals of those are counted per route.
    pub fn evaluate<B: Body>(
        &self,
        request: &http::Request<B>,
        websocket: bool,
        route: &str,
        metrics: &Metrics,
    ) -> Result<(), HttpError> {
        if websocket && !self.origin_allowed(request) {
            tracing::info!(%route, origin = ?request.headers().get(header::ORIGIN), "WebSocket origin refused");
            metrics
                .websocket_upgrades
                .get_or_create(&UpgradeLabels {
                    route: route.to_owned(),
                    result: "forbidden_origin".into(),
                })
                .inc();
            return Err(HttpError::OriginNotAllowed);
        }
        // A declared length is refused at once; a streamed body is counted as it goes.
        if request
            .body()
            .size_hint()
            .exact()
            .is_some_and(|length| length > self.max_body_size)
        {
            return Err(HttpError::PayloadTooLarge);
        }
        Ok(())
    }

    fn origin_allowed<B>(&self, request: &http::Request<B>) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        request
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(|origin| origin.trim_end_matches('/').to_ascii_lowercase())
            .is_some_and(|origin| self.allowed_origins.contains(&origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            allowed_origins: vec!["https://app.example.com".into()],
            max_body_size: 10,
            websocket_idle_timeout: Duration::from_secs(60),
        }
    }

    fn request(
        origin: Option<&str>,
        body: &'static str,
    ) -> http::Request<http_body_util::Full<bytes::Bytes>> {
        let mut builder = http::Request::get("/ws");
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        builder
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                body.as_bytes(),
            )))
            .unwrap()
    }

    #[test]
    fn origins_are_checked_for_websockets_and_counted() {
        let metrics = Metrics::new();
        let policy = policy();
        assert!(policy
            .evaluate(
                &request(Some("https://APP.example.com/"), ""),
                true,
                "r",
                &metrics
            )
            .is_ok());
        assert!(matches!(
            policy.evaluate(&request(Some("https://evil.test"), ""), true, "r", &metrics),
            Err(HttpError::OriginNotAllowed)
        ));
        assert!(matches!(
            policy.evaluate(&request(None, ""), true, "r", &metrics),
            Err(HttpError::OriginNotAllowed)
        ));
        assert!(
            policy
                .evaluate(
                    &request(Some("https://evil.test"), ""),
                    false,
                    "r",
                    &metrics
                )
                .is_ok(),
            "a plain request is not a WebSocket: no Origin rule"
        );
        assert!(metrics.encode().contains(
            r#"tlsgate_websocket_upgrades_total{route="r",result="forbidden_origin"} 2"#
        ));
    }

    #[test]
    fn a_declared_body_over_the_limit_is_refused() {
        let metrics = Metrics::new();
        assert!(matches!(
            policy().evaluate(&request(None, "12345678901"), false, "r", &metrics),
            Err(HttpError::PayloadTooLarge)
        ));
        assert!(policy()
            .evaluate(&request(None, "1234567890"), false, "r", &metrics)
            .is_ok());
    }
}
