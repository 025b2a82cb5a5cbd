//! Shaping an upstream's response for the client, the same for proxied requests and for a
//! WebSocket upgrade the backend refused: hop-by-hop headers and `Server` go, the sticky
//! cookie is set, and the server's in-flight count is held until the body ends; an HTTP/2
//! body is released when its client keeps the stream's window shut for `send_timeout`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::header::{self, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::body::BoxError;
use super::headers::remove_hop_by_hop;
use super::pool::{InFlight, Pool};
use crate::config::proxy::Balance;
use crate::http::activity::{Activity, ClientPaced, InFlight as Busy};
use crate::http::context::{RequestContext, UpstreamServer};
use crate::http::Response;

pub fn respond<B>(
    pool: &Arc<Pool>,
    index: usize,
    response: hyper::Response<B>,
    in_flight: InFlight,
    sticky: Option<&str>,
    ctx: &RequestContext,
) -> Response
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let secure = ctx.conn.secure;
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
    hyper::Response::from_parts(parts, Guarded::new(body, in_flight, ctx).boxed())
}

/// The error a released body ends with: its client took nothing for `limits.send_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the client took no response bytes for send_timeout")]
pub struct ClientTooSlow;

/// What a proxied body holds until it ends: the upstream body, the pool's in-flight count
/// and the client connection's (a streaming response keeps its connection busy).
struct Held<B> {
    body: B,
    _pool: InFlight,
    _busy: Option<Busy>,
}

/// Holds an upstream body, and with it the in-flight counts, until it ends or is dropped. On
/// HTTP/2 it sits where the connection's watchdog can release it: a stream whose window the
/// client keeps shut must not hold an upstream connection for ever.
pub struct Guarded<B> {
    source: Source<B>,
}

enum Source<B> {
    Owned(Option<Held<B>>),
    Paced(Arc<PacedBody<B>>),
}

struct PacedBody<B> {
    held: Mutex<Option<Held<B>>>,
    /// As [`ClientPaced::waiting_since`]: set when a frame is handed to hyper, cleared when
    /// hyper asks for the next (the client took the last one).
    waiting_since: AtomicU64,
    activity: Arc<Activity>,
}

impl<B: Send> ClientPaced for PacedBody<B> {
    fn waiting_since(&self) -> u64 {
        self.waiting_since.load(Ordering::Relaxed)
    }

    fn release(&self) {
        let held = self.held.lock().map(|mut held| held.take());
        drop(held);
    }
}

fn poll_held<B>(
    slot: &mut Option<Held<B>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<B::Data>, BoxError>>>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    let Some(held) = slot.as_mut() else {
        return Poll::Ready(Some(Err(Box::new(ClientTooSlow))));
    };
    let result = Pin::new(&mut held.body).poll_frame(cx);
    match result {
        Poll::Ready(None) => {
            *slot = None;
            Poll::Ready(None)
        }
        Poll::Ready(Some(Err(error))) => {
            *slot = None;
            Poll::Ready(Some(Err(error.into())))
        }
        Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
        Poll::Pending => Poll::Pending,
    }
}

impl<B> Guarded<B>
where
    B: Send + 'static,
{
    pub fn new(body: B, pool: InFlight, ctx: &RequestContext) -> Self {
        let activity = ctx.conn.activity.as_ref();
        let held = Held {
            body,
            _pool: pool,
            _busy: activity.map(Activity::request),
        };
        let source = match activity {
            Some(activity) if ctx.version == http::Version::HTTP_2 => {
                let paced = Arc::new(PacedBody {
                    held: Mutex::new(Some(held)),
                    // Until hyper first asks for data, the stream may be waiting for window.
                    waiting_since: AtomicU64::new(activity.now_millis() + 1),
                    activity: activity.clone(),
                });
                let weak = Arc::downgrade(&paced);
                activity.pace(weak);
                Source::Paced(paced)
            }
            _ => Source::Owned(Some(held)),
        };
        Self { source }
    }
}

impl<B> Body for Guarded<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match &mut self.source {
            Source::Owned(slot) => poll_held(slot, cx),
            Source::Paced(paced) => {
                paced.waiting_since.store(0, Ordering::Relaxed);
                let Ok(mut slot) = paced.held.lock() else {
                    return Poll::Ready(Some(Err(Box::new(ClientTooSlow))));
                };
                let result = poll_held(&mut slot, cx);
                if matches!(result, Poll::Ready(Some(Ok(_)))) {
                    let now = paced.activity.now_millis();
                    paced.waiting_since.store(now + 1, Ordering::Relaxed);
                }
                result
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.peek(|held| held.is_none_or(|held| held.body.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        self.peek(|held| held.map_or(SizeHint::with_exact(0), |held| held.body.size_hint()))
    }
}

impl<B> Guarded<B> {
    /// Reads what the body still holds (`None` once it ended or the watchdog released it).
    fn peek<R>(&self, read: impl FnOnce(Option<&Held<B>>) -> R) -> R {
        match &self.source {
            Source::Owned(slot) => read(slot.as_ref()),
            Source::Paced(paced) => match paced.held.lock() {
                Ok(slot) => read(slot.as_ref()),
                Err(_) => read(None),
            },
        }
    }
}
