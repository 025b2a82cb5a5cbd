//! Where each request on the main listener goes: the `421` check, then the proxy (when routes
//! are configured) or the built-in endpoints, then security headers on the way out.

use std::convert::Infallible;
use std::sync::Arc;

use http::StatusCode;
use hyper::body::Incoming;

use crate::http::error::HttpError;
use crate::http::headers::SecurityHeaders;
use crate::http::service::{builtin, ConnectionInfo, EdgeContext, RouteName, UpstreamServer};
use crate::http::Response;
use crate::proxy::forward::request_host;
use crate::proxy::Proxy;

#[derive(Debug)]
pub struct Dispatcher {
    /// Empty on a plain (TLS off) listener: HSTS is never sent over plain HTTP.
    pub security_headers: SecurityHeaders,
    pub builtin: EdgeContext,
    pub proxy: Option<Arc<Proxy>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub access_log: bool,
}

impl Dispatcher {
    pub async fn handle(
        self: Arc<Self>,
        request: hyper::Request<Incoming>,
    ) -> Result<Response, Infallible> {
        let started = std::time::Instant::now();
        let conn = request.extensions().get::<ConnectionInfo>().cloned();
        // The path without its query: queries often carry tokens, which never reach the logs.
        let logged = self
            .access_log
            .then(|| (request.method().clone(), request.uri().path().to_owned()));
        let client = conn.as_ref().map(|c| (c.peer.ip(), c.tls_version));
        // Parsed once: for the 421 check and for routing.
        let host = if self.proxy.is_some() || conn.as_ref().is_some_and(|c| c.sni.is_some()) {
            request_host(&request)
        } else {
            None
        };
        let mut response = match self.misdirected(host.as_deref(), conn.as_ref()) {
            Some(refusal) => refusal,
            None => match (&self.proxy, conn) {
                (Some(proxy), Some(conn)) => {
                    crate::proxy::forward::handle(proxy, request, conn, host).await
                }
                _ => builtin(&self.builtin, request),
            },
        };
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            self.security_headers.apply(response.headers_mut());
        }
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        let route = match response.extensions().get::<RouteName>() {
            Some(RouteName(stats)) => {
                stats.record(status, elapsed.as_secs_f64());
                stats.name.as_str()
            }
            None => {
                let route = if self.proxy.is_some() {
                    "none"
                } else {
                    "builtin"
                };
                self.metrics.request(route, status, elapsed.as_secs_f64());
                route
            }
        };
        if let Some((method, path)) = logged {
            let upstream = response
                .extensions()
                .get::<UpstreamServer>()
                .map(|u| &*u.0)
                .unwrap_or("-");
            let bytes = http_body::Body::size_hint(response.body()).exact();
            tracing::info!(
                target: "tlsgate::access",
                client = %client.map(|(ip, _)| ip.to_string()).unwrap_or_default(),
                tls = client.and_then(|(_, v)| v).unwrap_or("-"),
                %method,
                %path,
                status = response.status().as_u16(),
                %route,
                upstream,
                bytes = bytes.map(|b| b.to_string()).unwrap_or_else(|| "streamed".into()),
                ms = elapsed.as_secs_f64() * 1000.0,
                "request"
            );
        }
        Ok(response)
    }

    /// `421` when a request's host is not the name its TLS connection was opened for
    /// (RFC 9110 §15.5.20): certificates and routes are chosen per name, so a client must not
    /// reuse a connection for another host.
    fn misdirected(&self, host: Option<&str>, conn: Option<&ConnectionInfo>) -> Option<Response> {
        let sni = conn?.sni.as_deref()?;
        (host? != sni).then(|| HttpError::MisdirectedRequest.into_response())
    }
}
