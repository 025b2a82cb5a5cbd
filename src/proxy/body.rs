//! Body types for proxying: the request body sent upstream, with a size limit and a stall
//! timeout, and the stall timer the upstream client shares.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use http_body_util::combinators::BoxBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies sent upstream.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Fires when nothing moved for a while: re-armed whenever the progress count changes.
#[derive(Default)]
pub(super) struct StallTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    seen: u64,
}

impl StallTimer {
    pub(super) fn reset(&mut self) {
        self.sleep = None;
    }

    /// `Ready` once `limit` has passed with `progress` unchanged.
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        progress: u64,
        limit: Duration,
    ) -> Poll<()> {
        if progress != self.seen {
            self.seen = progress;
            self.sleep = None;
        }
        self.sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)))
            .as_mut()
            .poll(cx)
    }
}

/// Why a request body failed on the client's side: such failures are never the upstream's
/// fault (no passive-health strike) and map to the client's status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    TooLarge,
    Stalled,
    Aborted,
}

#[derive(Debug, thiserror::Error)]
#[error("request body: {0:?}")]
pub struct ClientFaultError(pub ClientFault);

/// What a [`Bounded`] body tells the forwarding code: the client's fault, if any, and when the
/// whole body has been handed over (the response timeout starts then).
#[derive(Debug, Default)]
pub struct BodyState {
    pub fault: std::sync::OnceLock<ClientFault>,
    pub finished: tokio::sync::Notify,
}

/// A request body with a byte limit and a limit on the pause between chunks.
pub struct Bounded<B> {
    inner: B,
    limit: u64,
    seen: u64,
    stall: Duration,
    timer: StallTimer,
    state: std::sync::Arc<BodyState>,
    signalled: bool,
}

impl<B> Bounded<B> {
    pub fn new(inner: B, limit: u64, stall: Duration, state: std::sync::Arc<BodyState>) -> Self {
        Self {
            inner,
            limit,
            seen: 0,
            stall,
            timer: StallTimer::default(),
            state,
            signalled: false,
        }
    }

    fn fail(&self, fault: ClientFault) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let _ = self.state.fault.set(fault);
        Poll::Ready(Some(Err(Box::new(ClientFaultError(fault)))))
    }

    fn finish(&mut self) {
        if !self.signalled {
            self.signalled = true;
            self.state.finished.notify_one();
        }
    }
}

impl<B> Body for Bounded<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.timer.reset();
                if let Some(data) = frame.data_ref() {
                    self.seen += data.len() as u64;
                    if self.seen > self.limit {
                        return self.fail(ClientFault::TooLarge);
                    }
                }
                // A body of known length may never be polled to its end.
                if self.inner.is_end_stream() {
                    self.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => self.fail(ClientFault::Aborted),
            Poll::Ready(None) => {
                self.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let (seen, stall) = (self.seen, self.stall);
                match self.timer.poll(cx, seen, stall) {
                    Poll::Ready(()) => self.fail(ClientFault::Stalled),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::Arc;

    /// A client upload: `chunks`, then a pause for ever (a client that stopped sending).
    fn upload(
        chunks: &[&'static [u8]],
    ) -> impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = chunks
            .iter()
            .map(|chunk| Ok(Frame::data(Bytes::from_static(chunk))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames).chain(futures_util::stream::pending()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_upload_is_cut_after_its_pause_limit_not_before() {
        let state = Arc::new(BodyState::default());
        let mut body = Bounded::new(
            upload(&[b"abc", b"def"]),
            1024,
            Duration::from_secs(30),
            state.clone(),
        );
        let started = tokio::time::Instant::now();
        for _ in 0..2 {
            let frame = body.frame().await.unwrap().unwrap();
            assert!(frame.is_data());
        }
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert!(error.to_string().contains("Stalled"), "{error}");
        assert_eq!(state.fault.get(), Some(&ClientFault::Stalled));
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_over_the_limit_is_the_clients_fault() {
        let state = Arc::new(BodyState::default());
        let mut body = Bounded::new(
            upload(&[b"0123456789", b"x"]),
            10,
            Duration::from_secs(30),
            state.clone(),
        );
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(state.fault.get(), Some(&ClientFault::TooLarge));
    }
}
