//! One proxied HTTP exchange: forwarding headers, balancing with retries, timeouts, and the
//! response on its way back. Route and policy were decided by the pipeline before this runs.

use std::sync::Arc;

use http::{Request, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::body::{BodyState, Bounded, ClientFault};
use super::headers::upstream_headers;
use super::pool::Pool;
use super::response::respond;
use super::upstream::{self, is_idempotent, is_timeout, ResponseBody, UpstreamError};
use crate::http::context::RequestContext;
use crate::http::cookie;
use crate::http::error::{error_chain, HttpError};
use crate::http::Response;

/// Forwards `request` to a server of `pool` and returns its response (streamed). Requests
/// that are safe to repeat and carry no body go to another server when one cannot be reached.
pub async fn forward(
    pool: &Arc<Pool>,
    request: Request<Incoming>,
    ctx: &RequestContext,
) -> Result<Response, HttpError> {
    let (mut parts, body) = request.into_parts();
    let sticky = cookie::value(&parts.headers, &pool.settings.sticky_cookie).map(str::to_owned);
    let client_headers = std::mem::take(&mut parts.headers);
    let headers = upstream_headers(pool, client_headers, &parts.uri, ctx);
    let client_ip = ctx.client_ip;
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let empty_body = body.is_end_stream();
    let can_retry = is_idempotent(&parts.method) && empty_body;
    // Kept for a retry only when one could happen; otherwise the first attempt takes them.
    let mut headers = Some(headers);
    let state = Arc::new(BodyState::default());
    let mut body = Some(
        Bounded::new(
            body,
            ctx.body_limit,
            pool.settings.send_timeout,
            state.clone(),
        )
        .boxed(),
    );
    let mut tried = Vec::new();
    loop {
        let Some((index, in_flight)) = pool.acquire(client_ip, sticky.as_deref(), &tried) else {
            tracing::error!(route = %ctx.route, upstream = %pool.name, "no upstream server available");
            return Err(if tried.is_empty() {
                HttpError::NoUpstream
            } else {
                HttpError::BadGateway
            });
        };
        let server = &pool.servers[index];
        let retry_possible = can_retry && tried.len() + 1 < pool.servers.len();
        let attempt_headers = if retry_possible {
            headers.clone().unwrap_or_default()
        } else {
            headers.take().unwrap_or_default()
        };
        let mut upstream = Request::builder()
            .method(parts.method.clone())
            .uri(upstream_uri(server, &path))
            .version(if pool.settings.h2c {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            });
        if let Some(target) = upstream.headers_mut() {
            *target = attempt_headers;
        }
        let request_body: ProxyBody = body.take().unwrap_or_else(|| {
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed()
        });
        let Ok(upstream) = upstream.body(request_body) else {
            return Err(HttpError::BadRequest("request cannot be forwarded"));
        };
        let outcome = if pool.settings.h2c {
            exchange(pool, pool.client.request(upstream), &state, empty_body)
                .await
                .map(|result| {
                    result
                        .map(|response| response.map(ResponseBody::H2c))
                        .map_err(UpstreamError::from)
                })
        } else {
            let Some(authority) = &server.authority else {
                return Err(HttpError::BadGateway);
            };
            let target = upstream::Target {
                host: authority.host(),
                port: authority.port_u16().unwrap_or(80),
                idle: &server.idle,
                connect_timeout: pool.settings.connect_timeout,
                read_timeout: pool.settings.response_timeout,
                send_timeout: pool.settings.send_timeout,
            };
            exchange(pool, upstream::send(target, upstream), &state, empty_body)
                .await
                .map(|result| result.map(|response| response.map(ResponseBody::Http1)))
        };
        if let Some(fault) = state.fault.get() {
            // The client's doing: not the upstream's failure.
            return Err(match fault {
                ClientFault::TooLarge => HttpError::PayloadTooLarge,
                ClientFault::Stalled => HttpError::RequestTimeout,
                ClientFault::Aborted => HttpError::BadRequest("request body aborted"),
            });
        }
        match outcome {
            Ok(Ok(response)) => {
                pool.record_success(index);
                return Ok(respond(
                    pool,
                    index,
                    response,
                    in_flight,
                    sticky.as_deref(),
                    ctx,
                ));
            }
            Ok(Err(error)) => {
                if error.counts_against_server() {
                    pool.record_failure(index);
                }
                let never_sent = error.is_connect();
                let timed_out = is_timeout(&error);
                tracing::error!(route = %ctx.route, upstream = %pool.name, server = %server.url, error = %error_chain(&error), "upstream request failed");
                if never_sent && can_retry && tried.len() + 1 < pool.servers.len() {
                    tried.push(index);
                    continue;
                }
                return Err(if timed_out {
                    HttpError::GatewayTimeout
                } else {
                    HttpError::BadGateway
                });
            }
            Err(()) => {
                pool.record_failure(index);
                tracing::error!(route = %ctx.route, upstream = %pool.name, server = %server.url, timeout = ?pool.settings.response_timeout, "upstream response timed out");
                return Err(HttpError::GatewayTimeout);
            }
        }
    }
}

/// The upstream URI for `path` on `server`, assembled from parts (no formatting, no parsing)
/// when the server's authority is known.
fn upstream_uri(server: &super::pool::Server, path: &http::uri::PathAndQuery) -> http::Uri {
    if let Some(authority) = &server.authority {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(path.clone());
        if let Ok(uri) = http::Uri::from_parts(parts) {
            return uri;
        }
    }
    format!("{}{path}", server.url)
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"))
}

/// Sends a request; the response timeout runs from the moment the whole request body has been
/// handed over (at once for an empty body), so a slow upload is not a slow upstream.
async fn exchange<T>(
    pool: &Pool,
    sending: impl std::future::Future<Output = T>,
    state: &BodyState,
    empty_body: bool,
) -> Result<T, ()> {
    tokio::pin!(sending);
    let timeout = pool.settings.response_timeout;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut armed = empty_body;
    loop {
        tokio::select! {
            result = &mut sending => return Ok(result),
            () = state.finished.notified(), if !armed => {
                armed = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
            }
            () = &mut deadline, if armed => return Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(response_timeout: Duration) -> Pool {
        let mut settings = crate::config::proxy::url_upstream("http://127.0.0.1:9");
        settings.response_timeout = response_timeout;
        Pool::new("p", &settings)
    }

    #[tokio::test(start_paused = true)]
    async fn the_response_timeout_starts_once_the_upload_is_handed_over() {
        let pool = pool(Duration::from_secs(60));
        let state = BodyState::default();
        let started = tokio::time::Instant::now();
        let upload_done = async {
            // A slow upload: 5 minutes, far beyond the response timeout.
            tokio::time::sleep(Duration::from_secs(300)).await;
            state.finished.notify_one();
        };
        let waiting = exchange(&pool, std::future::pending::<()>(), &state, false);
        let (outcome, ()) = tokio::join!(waiting, upload_done);
        assert_eq!(outcome, Err(()));
        assert_eq!(started.elapsed(), Duration::from_secs(360));
        // No body: the timeout runs at once; an answer in time is taken.
        let started = tokio::time::Instant::now();
        let empty = BodyState::default();
        assert_eq!(
            exchange(&pool, std::future::pending::<()>(), &empty, true).await,
            Err(())
        );
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        let answer = async {
            tokio::time::sleep(Duration::from_secs(59)).await;
            7
        };
        assert_eq!(exchange(&pool, answer, &empty, true).await, Ok(7));
    }
}
