//! A route's policy, evaluated in the pipeline's policy stage for plain requests and WebSocket
//! upgrades alike, before the target is touched: a target never re-decides policy.
//!
//! The decisions themselves (tokens, limits, bans, CORS, IP lists) are `crate::policy`'s;
//! this stage runs them in order over the request and its context, and may answer at the edge
//! ([`Verdict::Answer`]) or refuse ([`HttpError`]).

use std::sync::Arc;
use std::time::Duration;

use http::header;
use http_body::Body;

use super::builtin::EchoContext;
use crate::config::client_auth::RouteClientCert;
use crate::config::jwt::WebsocketAuthFailure;
use crate::config::websocket::MessageLimits;
use crate::http::context::ConnectionSlot;
use crate::http::context::RequestContext;
use crate::http::error::HttpError;
use crate::http::Response;
use crate::metrics::{Metrics, UpgradeLabels};
use crate::policy::client_cert;
use crate::policy::cors::{self, Cors};
use crate::policy::forward_auth::{Asked, Decision, ForwardAuth};
use crate::policy::jwt::{self, RouteAuth};
use crate::policy::limits::{RouteLimiter, Stage};

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
    /// The route's `auth:` (JWT) and `forward_auth:`.
    pub auth: Option<Arc<Authentication>>,
    /// The route's CORS policy: preflights answered here, CORS headers on every response.
    pub cors: Option<Arc<Cors>>,
    /// Limits on a proxied WebSocket's client messages, enforced by the tunnel.
    pub websocket_messages: Option<MessageLimits>,
    /// IP lists, bans, rate-limit zones and per-IP WebSocket caps.
    pub limits: RouteLimiter,
    /// Client-certificate requirement, subject/SAN rules, and whether the PEM is passed on.
    pub client_cert: RouteClientCert,
}

/// A route's authentication: its JWT rules and its forward-auth service.
#[derive(Debug)]
pub struct Authentication {
    pub jwt: Option<RouteAuth>,
    pub forward_auth: Option<Arc<ForwardAuth>>,
    /// The route's path when it is a template (`/ws/tenant/{id}`), and whether it is exact:
    /// the claim rules read its parameters.
    pub template: Option<(String, bool)>,
    /// Where a WebSocket accepted only to be closed (`websocket_auth_failure: close`) runs.
    pub upgrades: EchoContext,
    /// A request without a token passes unauthenticated (a hub endpoint: its session then
    /// waits for an `auth` message); a bad token is still refused.
    pub token_optional: bool,
}

impl PartialEq for Authentication {
    fn eq(&self, other: &Self) -> bool {
        self.jwt == other.jwt
            && self.forward_auth == other.forward_auth
            && self.template == other.template
    }
}

impl Authentication {
    fn count(&self, metrics: &Metrics, route: &str, result: &str) {
        metrics
            .auth_results
            .get_or_create(&UpgradeLabels {
                route: route.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Step 6: the token, verified, its claims in `ctx.claims`; `Some` answers the request.
    async fn jwt<B>(
        &self,
        request: &mut http::Request<B>,
        ctx: &mut RequestContext,
        websocket: bool,
        metrics: &Metrics,
    ) -> Result<Option<Verdict>, HttpError> {
        let Some(auth) = &self.jwt else {
            return Ok(None);
        };
        let parameters = match &self.template {
            Some((template, exact)) => {
                let path = crate::http::without_parameters(request.uri().path());
                jwt::match_template(template, &path, *exact).unwrap_or_default()
            }
            None => Vec::new(),
        };
        let bearer = websocket && jwt::offered_bearer(request.headers());
        // Taken out and put back: the headers and the URI are both edited (the token stripped).
        let mut uri = std::mem::take(request.uri_mut());
        let outcome = auth
            .authenticate(request.headers_mut(), &mut uri, &parameters)
            .await;
        *request.uri_mut() = uri;
        let route = &*ctx.route;
        let failure = match outcome {
            Ok(claims) => {
                self.count(metrics, route, "ok");
                ctx.claims = Some(claims);
                if bearer {
                    ctx.websocket_protocol = Some("bearer");
                }
                return Ok(None);
            }
            Err(jwt::AuthFailure::Missing) if self.token_optional && websocket => {
                self.count(metrics, route, "deferred");
                return Ok(None);
            }
            Err(failure) => failure,
        };
        self.count(metrics, route, failure.result());
        if websocket {
            metrics
                .websocket_upgrades
                .get_or_create(&UpgradeLabels {
                    route: route.to_owned(),
                    result: "unauthorized".into(),
                })
                .inc();
        }
        // Never the token: only why it was refused.
        tracing::info!(%route, client = %ctx.client_ip, result = failure.result(), reason = ?failure, "authentication refused");
        let settings = &auth.settings;
        if websocket && settings.websocket_auth_failure == WebsocketAuthFailure::Close {
            let (code, reason) = failure.close();
            let answer =
                super::builtin::close_websocket(&self.upgrades, request, code, reason, bearer)?;
            return Ok(Some(Verdict::Answer(answer)));
        }
        let challenge = failure.challenge(&settings.realm);
        Err(match failure {
            jwt::AuthFailure::Forbidden(_) => HttpError::InsufficientClaims(challenge),
            _ => HttpError::Unauthorized(challenge),
        })
    }

    /// Step 7: the forward-auth service's verdict; `Some` answers the request.
    async fn forward_auth<B>(
        &self,
        request: &mut http::Request<B>,
        ctx: &RequestContext,
        metrics: &Metrics,
    ) -> Result<Option<Verdict>, HttpError> {
        let Some(service) = &self.forward_auth else {
            return Ok(None);
        };
        // Only the service sets these.
        for name in service.answer_headers() {
            request.headers_mut().remove(name.as_str());
        }
        let asked = Asked {
            method: request.method(),
            uri: request.uri(),
            host: &ctx.host,
            secure: ctx.conn.secure,
            client_ip: ctx.client_ip,
            headers: request.headers(),
        };
        let route = &*ctx.route;
        match service.check(&asked).await {
            Ok(Decision::Pass(headers)) => {
                self.count(metrics, route, "ok");
                for (name, value) in headers {
                    request.headers_mut().append(name, value);
                }
                Ok(None)
            }
            Ok(Decision::Deny(answer)) => {
                self.count(metrics, route, "denied");
                tracing::info!(%route, client = %ctx.client_ip, status = answer.status().as_u16(), service = %service.name, "forward auth refused");
                Ok(Some(Verdict::Answer(answer.map(crate::http::full))))
            }
            Err(error) => {
                self.count(metrics, route, "error");
                tracing::warn!(%route, service = %service.name, %error, "forward auth failed: request refused");
                Err(match error {
                    crate::policy::client::FetchError::Timeout(_) => HttpError::GatewayTimeout,
                    crate::policy::client::FetchError::Failed(_) => HttpError::BadGateway,
                })
            }
        }
    }
}

/// Marks a preflight answered by the policy stage: its CORS headers are complete.
#[derive(Debug, Clone, Copy)]
struct PreflightAnswer;

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
        // CORS's Origin, noted before any step may refuse: refusals carry CORS headers too,
        // so a page can read their status (a 429 or 401 rather than an opaque network error).
        if self.cors.is_some() {
            ctx.cors_origin = request.headers().get(header::ORIGIN).cloned();
        }
        // (1) IP allow/deny lists and bans.
        self.limits.screen(ctx)?;
        // (2) Rate-limit zones keyed by ip/header/route, and the per-IP WebSocket caps.
        self.limits
            .limit(request.headers(), ctx, Stage::Early)
            .await?;
        if websocket {
            let place = self.limits.upgrade(ctx)?;
            // The WebSocket's place rides with the connection slot the tunnel keeps for the
            // WebSocket's life; a refused upgrade drops it with the request.
            let slot = request.extensions_mut().remove::<ConnectionSlot>();
            request
                .extensions_mut()
                .insert(ConnectionSlot(Arc::new((slot, place))));
        }
        let route = &*ctx.route;
        // (3) CORS preflight answered at the edge (a preflight carries no credentials).
        if let Some(cors) = &self.cors {
            if cors::is_preflight(request.method(), request.headers()) {
                return self.preflight(cors, request.headers(), route, metrics);
            }
        }
        // (4) WebSocket Origin: cheap, and a cross-site page learns nothing of the auth below.
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
        // (5) Client certificate: requirement and rules; identity headers (inbound copies
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
        // (6) JWT.
        if let Some(auth) = &self.auth {
            if let Some(verdict) = auth.jwt(request, ctx, websocket, metrics).await? {
                return Ok(verdict);
            }
        }
        // (7) forward_auth.
        if let Some(auth) = &self.auth {
            if let Some(verdict) = auth.forward_auth(request, ctx, metrics).await? {
                return Ok(verdict);
            }
        }
        // (8) Rate-limit zones keyed by a JWT claim (by IP when there are no claims).
        self.limits
            .limit(request.headers(), ctx, Stage::Claims)
            .await?;
        // (9) Body size: a declared length is refused at once; a streamed body is counted as
        // it goes.
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
    pub fn on_response(&self, response: &mut Response, ctx: &RequestContext) {
        // 401/403 answers to requests with an `Authorization` header count towards a ban.
        self.limits.on_response(response.status(), ctx);
        // An accepted WebSocket (101, or 200 to an extended CONNECT) whose upstream selected
        // no subprotocol: select the `bearer` the browser offered its token with.
        if let Some(protocol) = ctx.websocket_protocol {
            let accepted = response.status() == http::StatusCode::SWITCHING_PROTOCOLS
                || response.status() == http::StatusCode::OK;
            let headers = response.headers_mut();
            if accepted && !headers.contains_key(header::SEC_WEBSOCKET_PROTOCOL) {
                headers.insert(
                    header::SEC_WEBSOCKET_PROTOCOL,
                    http::HeaderValue::from_static(protocol),
                );
            }
        }
        if let Some(cors) = &self.cors {
            if response.status() != http::StatusCode::SWITCHING_PROTOCOLS
                && response.extensions().get::<PreflightAnswer>().is_none()
            {
                cors.on_response(ctx.cors_origin.as_ref(), response.headers_mut());
            }
        }
    }

    /// A preflight's answer: `204` with the CORS headers, or `403` (never the backend's).
    fn preflight(
        &self,
        cors: &Cors,
        headers: &http::HeaderMap,
        route: &str,
        metrics: &Metrics,
    ) -> Result<Verdict, HttpError> {
        let outcome = cors.preflight(headers);
        metrics
            .cors_preflights
            .get_or_create(&UpgradeLabels {
                route: route.to_owned(),
                result: outcome.as_ref().map_or_else(|r| r.label(), |_| "ok").into(),
            })
            .inc();
        match outcome {
            Ok(cors_headers) => {
                let mut response = hyper::Response::new(crate::http::full(Vec::new()));
                *response.status_mut() = http::StatusCode::NO_CONTENT;
                *response.headers_mut() = cors_headers;
                response.extensions_mut().insert(PreflightAnswer);
                Ok(Verdict::Answer(response))
            }
            Err(refusal) => {
                tracing::debug!(%route, reason = refusal.label(), "CORS preflight refused");
                Err(HttpError::CorsPreflightRefused(refusal.label()))
            }
        }
    }

    /// The WebSocket Origin check: the route's `allowed_origins`, or, when it has none, its
    /// CORS policy's origins (so a CORS route never accepts WebSockets from everywhere).
    fn origin_allowed<B>(&self, request: &http::Request<B>) -> bool {
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        if self.allowed_origins.is_empty() {
            return match &self.cors {
                None => true,
                Some(cors) => origin.is_some_and(|o| cors.origin_allowed(o)),
            };
        }
        origin
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
            auth: None,
            cors: None,
            websocket_messages: None,
            limits: RouteLimiter::unlimited(),
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
            websocket_protocol: None,
            cors_origin: None,
            authorization_sent: false,
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

    fn cors_policy(allowed_origins: Vec<String>) -> Policy {
        let settings = crate::config::cors::CorsSettings {
            allowed_origins: vec!["https://*.example.com".into()],
            allowed_methods: vec!["GET".into(), "PUT".into()],
            allowed_headers: vec!["content-type".into()],
            exposed_headers: Vec::new(),
            allow_credentials: true,
            max_age: Duration::from_secs(60),
            allow_private_network: false,
        };
        Policy {
            allowed_origins,
            cors: Some(Arc::new(Cors::new(&settings))),
            ..policy()
        }
    }

    #[tokio::test]
    async fn preflights_are_answered_here_and_the_answer_keeps_its_headers() {
        let metrics = Metrics::new();
        let policy = cors_policy(Vec::new());
        let preflight = |origin: &str, method: &str| {
            http::Request::options("/api")
                .header(header::ORIGIN, origin)
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, method)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap()
        };
        let mut ctx = context();
        let mut request = preflight("https://app.example.com", "PUT");
        let Ok(Verdict::Answer(mut answer)) = policy
            .evaluate(&mut request, &mut ctx, false, &metrics)
            .await
        else {
            panic!("not answered at the edge");
        };
        assert_eq!(answer.status(), 204);
        policy.on_response(&mut answer, &ctx);
        assert_eq!(answer.headers()["access-control-allow-methods"], "GET, PUT");
        assert_eq!(answer.headers().get_all(header::VARY).iter().count(), 1);
        assert!(matches!(
            evaluate(
                &policy,
                preflight("https://evil.test", "PUT"),
                false,
                &metrics
            )
            .await,
            Err(HttpError::CorsPreflightRefused("origin"))
        ));
        assert!(matches!(
            evaluate(
                &policy,
                preflight("https://app.example.com", "DELETE"),
                false,
                &metrics
            )
            .await,
            Err(HttpError::CorsPreflightRefused("method"))
        ));
        assert!(metrics
            .encode()
            .contains(r#"tlsgate_cors_preflights_total{route="r",result="ok"} 1"#));
    }

    #[tokio::test]
    async fn a_cors_route_without_allowed_origins_holds_websockets_to_its_cors_origins() {
        let metrics = Metrics::new();
        let policy = cors_policy(Vec::new());
        assert!(matches!(
            evaluate(
                &policy,
                request(Some("https://a.example.com"), ""),
                true,
                &metrics
            )
            .await,
            Ok(Verdict::Pass)
        ));
        for origin in [Some("https://evil.test"), None] {
            assert!(matches!(
                evaluate(&policy, request(origin, ""), true, &metrics).await,
                Err(HttpError::OriginNotAllowed)
            ));
        }
        // Its own allowed_origins decide when set.
        let own = cors_policy(vec!["https://other.test".into()]);
        assert!(matches!(
            evaluate(
                &own,
                request(Some("https://a.example.com"), ""),
                true,
                &metrics
            )
            .await,
            Err(HttpError::OriginNotAllowed)
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
