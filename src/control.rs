//! Requests from the control surfaces (SIGHUP, `POST /reload`, the certificate-file watcher,
//! ACME renewals, the local CA's re-issue) to the running server, and their typed outcome.
//! It sits below `server` and `admin`, so both can hold a [`ReloadHandle`] without either
//! importing the other.

use std::net::SocketAddr;

use crate::config::ConfigError;
use crate::tls::TlsError;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("not applied: {} changed, which needs a restart (nothing else was changed either)", .0.join(", "))]
    NeedsRestart(Vec<&'static str>),
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// A listening socket that could not be opened (at start-up or by a reload).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    /// Which listener: `HTTPS`, `plain HTTP`, `HTTP redirect`, `admin`.
    pub what: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// What a successful reload did, in one line for people.
pub type ReloadReport = String;

type ReloadReply = tokio::sync::oneshot::Sender<Result<ReloadReport, ReloadError>>;

/// A reload request: with a reply channel when the asker waits for the outcome.
pub type ReloadRequest = Option<ReloadReply>;

/// Asks a running server to reload. The server runs one reload at a time, in order.
#[derive(Clone, Debug)]
pub struct ReloadHandle(tokio::sync::mpsc::Sender<ReloadRequest>);

impl ReloadHandle {
    /// A handle and the queue the server takes requests from.
    pub fn channel() -> (Self, tokio::sync::mpsc::Receiver<ReloadRequest>) {
        let (sender, requests) = tokio::sync::mpsc::channel(8);
        (Self(sender), requests)
    }

    /// Fire and forget (SIGHUP, renewals).
    pub fn trigger(&self) {
        let _ = self.0.try_send(None);
    }

    /// Reloads and reports the outcome.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        self.0
            .send(Some(reply))
            .await
            .map_err(|_| ReloadError::ShuttingDown)?;
        outcome.await.map_err(|_| ReloadError::ShuttingDown)?
    }
}
