//! A route's policy, evaluated in the pipeline's policy stage for plain requests and WebSocket
//! upgrades alike, before the target is touched: a target never re-decides policy.
//!
//! The decisions themselves (tokens, limits, bans, CORS, IP lists) are `crate::policy`'s;
//! this stage runs them in order over the request and its context, and may answer at the edge
//! ([`Verdict::Answer`]) or refuse ([`HttpError`]).

use std::time::Duration;

use http::header;
use http_body::Body;

use crate::config::client_auth::RouteClientCert;
use crate::http::context::RequestContext;
use crate::http::error::HttpError;
use crate::http::Response;
use crate::metrics::{Metrics, UpgradeLabels};
use crate::policy::client_cert;

/// What the policy stage decided for a request it did not refuse.
#[derive(Debug)]
pub enum Verdict {
    /// On to the route's target.
    Pass,
    /// Answered here, no target contacted (a CORS preflight, a WebSocket accepted only to be
    /// closed with its reason).
    Answer(Response),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Origins a WebSocket may be opened from (lower case, no trailing `/`); empty: any.
    pub allowed_origins: Vec<String>,
    /// The most a request body may carry; more is a `413`.
    pub max_body_size: u64,
    /// How long a WebSocket may stay quiet both ways before it is closed.
    pub websocket_idle_timeout: Duration,
    /// Client-certificate requirement, subject/SAN rules, and whether the PEM is passed on.
    pub client_cert: RouteClientCert,
}

impl Policy {
    /// Whether `request` may reach the route's target. `websocket` says it is an opening
    /// request; refusals of those are counted per route. Stages may rewrite the request's
    /// headers (identity headers for the upstream) and record what they learnt in `ctx`.
    pub async fn evaluate<B: Body>(
        &self,
        request: &mut http::Request<B>,
        ctx: &mut RequestContext,
        websocket: bool,
        metrics: &Metrics,
    ) -> Result<Verdict, HttpError> {
        let route = &*ctx.route;
        // (4) Client certificate: requirement and rules; identity headers (inbound copies
        // removed on every route, mTLS or not).
        let identity = ctx.conn.client_cert.as_deref();
        match client_cert::check(&self.client_cert, identity) {
            Ok(()) => {}
            Err(client_cert::Refusal::Missing) => {
                tracing::info!(%route, "no client certificate: refused");
                return Err(HttpError::ClientCertRequired);
            }
            Err(client_cert::Refusal::NotAllowed) => {
                tracing::info!(%route, subject = identity.map(|i| i.subject.as_str()), "client certificate not allowed on this route");
                return Err(HttpError::ClientCertNotAllowed);
            }
        }
        client_cert::set_identity_headers(
            request.headers_mut(),
            identity,
            self.client_cert.pass_pem,
        );
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
        Ok(Verdict::Pass)
    }

    /// The policy's part of the response (headers such as CORS'), in the response-headers
    /// stage; `ctx` is the request's.
    pub fn on_response(&self, _response: &mut Response, _ctx: &RequestContext) {}

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
            client_cert: RouteClientCert::default(),
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

    fn context() -> RequestContext {
        RequestContext {
            conn: crate::http::context::ConnectionInfo {
                peer: std::net::SocketAddr::from(([192, 0, 2, 1], 40000)),
                sni: None,
                secure: true,
                tls_version: Some("1.3"),
                activity: None,
                client_cert: None,
            },
            host: "app.example.com".into(),
            client_ip: std::net::IpAddr::from([192, 0, 2, 1]),
            peer_trusted: false,
            route: "r".into(),
            body_limit: 10,
            version: http::Version::HTTP_11,
            started: std::time::Instant::now(),
            claims: None,
        }
    }

    /// `policy` evaluated over `request` as a WebSocket opening or not.
    async fn evaluate(
        policy: &Policy,
        mut request: http::Request<http_body_util::Full<bytes::Bytes>>,
        websocket: bool,
        metrics: &Metrics,
    ) -> Result<Verdict, HttpError> {
        policy
            .evaluate(&mut request, &mut context(), websocket, metrics)
            .await
    }

    #[tokio::test]
    async fn origins_are_checked_for_websockets_and_counted() {
        let metrics = Metrics::new();
        let policy = policy();
        assert!(matches!(
            evaluate(
                &policy,
                request(Some("https://APP.example.com/"), ""),
                true,
                &metrics
            )
            .await,
            Ok(Verdict::Pass)
        ));
        assert!(matches!(
            evaluate(
                &policy,
                request(Some("https://evil.test"), ""),
                true,
                &metrics
            )
            .await,
            Err(HttpError::OriginNotAllowed)
        ));
        assert!(matches!(
            evaluate(&policy, request(None, ""), true, &metrics).await,
            Err(HttpError::OriginNotAllowed)
        ));
        assert!(
            matches!(
                evaluate(
                    &policy,
                    request(Some("https://evil.test"), ""),
                    false,
                    &metrics
                )
                .await,
                Ok(Verdict::Pass)
            ),
            "a plain request is not a WebSocket: no Origin rule"
        );
        assert!(metrics.encode().contains(
            r#"tlsgate_websocket_upgrades_total{route="r",result="forbidden_origin"} 2"#
        ));
    }

    #[tokio::test]
    async fn a_declared_body_over_the_limit_is_refused() {
        let metrics = Metrics::new();
        assert!(matches!(
            evaluate(&policy(), request(None, "12345678901"), false, &metrics).await,
            Err(HttpError::PayloadTooLarge)
        ));
        assert!(matches!(
            evaluate(&policy(), request(None, "1234567890"), false, &metrics).await,
            Ok(Verdict::Pass)
        ));
    }
}
