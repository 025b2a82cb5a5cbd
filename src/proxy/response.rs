//! Shaping an upstream's response for the client, the same for proxied requests and for a
//! WebSocket upgrade the backend refused: hop-by-hop headers and `Server` go, the sticky
//! cookie is set, and the server's in-flight count is held until the body ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::body::BoxError;
use super::headers::remove_hop_by_hop;
use super::pool::{InFlight, Pool};
use crate::config::proxy::Balance;
use crate::http::context::UpstreamServer;
use crate::http::Response;

pub fn respond<B>(
    pool: &Arc<Pool>,
    index: usize,
    response: hyper::Response<B>,
    in_flight: InFlight,
    sticky: Option<&str>,
    secure: bool,
) -> Response
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = response.into_parts();
    parts
        .extensions
        .insert(UpstreamServer(pool.servers[index].url.clone()));
    remove_hop_by_hop(&mut parts.headers);
    // As nginx does: the backend's `Server` (often with a version) is not passed on.
    parts.headers.remove(header::SERVER);
    if pool.settings.balance == Balance::Cookie {
        let token = pool.cookie_token(index);
        if sticky != Some(token) {
            let cookie = format!(
                "{}={token}; Path=/; HttpOnly; SameSite=Lax{}",
                pool.settings.sticky_cookie,
                if secure { "; Secure" } else { "" }
            );
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                parts.headers.append(header::SET_COOKIE, value);
            }
            // HAProxy's `nocache`: a response that sets the cookie must not be cached.
            if !parts.headers.contains_key(header::CACHE_CONTROL) {
                parts
                    .headers
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
            }
        }
    }
    hyper::Response::from_parts(
        parts,
        Guarded::new(body, in_flight).map_err(Into::into).boxed(),
    )
}

/// Holds an [`InFlight`] until the body ends or is dropped.
pub struct Guarded<B> {
    inner: B,
    guard: Option<InFlight>,
}

impl<B> Guarded<B> {
    pub fn new(inner: B, guard: InFlight) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let result = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(result, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.guard = None;
        }
        result
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
