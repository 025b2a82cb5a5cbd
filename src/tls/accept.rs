//! The TLS accept step: read the ClientHello, choose the configuration (the TLS-ALPN-01
//! challenge config, or the cipher-suite order for this client), hand the same bytes to
//! rustls, and report a failure as a typed [`HandshakeFailure`] with a bounded metrics reason.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;

use super::stream::{self, TlsServerStream};
use super::{ServerConfigs, SessionState, SniResolver};
use crate::acme::challenges::ACME_TLS_ALPN;

/// The TLS side of the main listener: certificates behind an SNI resolver, and configs that
/// a reload swaps without touching the listener.
pub struct TlsEdge {
    pub resolver: Arc<SniResolver>,
    pub configs: ArcSwap<ServerConfigs>,
    /// Ticket keys and session cache, shared by every config built, so sessions resume across
    /// reloads.
    pub sessions: SessionState,
    /// For ClientHellos offering `acme-tls/1` (TLS-ALPN-01 validation), when ACME is on.
    pub acme_config: Option<Arc<rustls::ServerConfig>>,
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    #[error("the handshake did not complete within {0:?}")]
    Timeout(Duration),
    #[error("plain HTTP request on the TLS port (answered with a 400)")]
    PlainHttp,
    /// A client that fell back below the best version both sides speak, saying so with
    /// `TLS_FALLBACK_SCSV` (RFC 7507): answered with the `inappropriate_fallback` alert.
    #[error("downgraded ClientHello with TLS_FALLBACK_SCSV (refused: inappropriate_fallback)")]
    InappropriateFallback,
    /// Only possible with no default certificate: e.g. ACME certificates still on order.
    #[error("no certificate for {}", name.as_deref().unwrap_or("clients without SNI"))]
    NoCertificate { name: Option<String> },
    #[error("TLS: {0}")]
    Tls(#[source] rustls::Error),
    #[error("{0}")]
    Io(#[source] io::Error),
}

impl HandshakeFailure {
    /// The failure as a bounded label value (`tlsgate_tls_handshake_failures{reason}`).
    pub fn reason(&self) -> &'static str {
        use rustls::{Error, PeerIncompatible};
        match self {
            Self::Timeout(_) => "timeout",
            Self::PlainHttp => "plain_http",
            Self::InappropriateFallback => "inappropriate_fallback",
            Self::NoCertificate { .. } => "no_certificate",
            Self::Tls(error) => match error {
                Error::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon) => {
                    "no_shared_cipher"
                }
                Error::PeerIncompatible(PeerIncompatible::NoKxGroupsInCommon) => "no_shared_group",
                Error::PeerIncompatible(PeerIncompatible::NoSignatureSchemesInCommon) => {
                    "no_shared_signature_scheme"
                }
                // A TLS 1.0/1.1 ClientHello has no signature_algorithms or supported_versions
                // extension: rustls reports the missing extension; the cause is the old version.
                Error::PeerIncompatible(
                    PeerIncompatible::SignatureAlgorithmsExtensionRequired
                    | PeerIncompatible::SupportedVersionsExtensionRequired
                    | PeerIncompatible::Tls12NotOffered
                    | PeerIncompatible::Tls12NotOfferedOrEnabled
                    | PeerIncompatible::ServerDoesNotSupportTls12Or13,
                ) => "protocol_version",
                Error::PeerIncompatible(_) => "incompatible_client",
                Error::InvalidCertificate(_) | Error::NoCertificatesPresented => {
                    "bad_client_certificate"
                }
                Error::AlertReceived(_) => "alert_from_client",
                Error::InvalidMessage(_)
                | Error::PeerMisbehaved(_)
                | Error::InappropriateMessage { .. }
                | Error::InappropriateHandshakeMessage { .. } => "bad_client_hello",
                _ => "other",
            },
            Self::Io(error) => match error.kind() {
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => "closed_by_client",
                io::ErrorKind::InvalidData => "bad_client_hello",
                _ => "other",
            },
        }
    }

    /// The client-certificate failure behind this one, as a bounded label value
    /// (`tlsgate_tls_client_cert_failures_total{reason}`).
    pub fn client_cert_reason(&self) -> Option<&'static str> {
        match self {
            Self::Tls(error) => super::client_auth::failure_reason(error),
            _ => None,
        }
    }

    /// rustls' errors come back from the stream wrapped in an `io::Error`; unwrap them.
    fn from_io(error: io::Error) -> Self {
        if error
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            if let Some(inner) = error.into_inner() {
                if let Ok(tls) = inner.downcast::<rustls::Error>() {
                    return Self::Tls(*tls);
                }
            }
            return Self::Io(io::Error::other("TLS error"));
        }
        Self::Io(error)
    }
}

/// The IO of a TLS connection as hyper serves it. A WebSocket tunnel takes the bare TLS stream
/// back out of hyper's upgrade by downcasting to this type, so it lives here, below both the
/// server that makes it and the proxy that takes it apart.
pub type TlsConnectionIo =
    hyper_util::rt::TokioIo<crate::http::activity::TrackedIo<TlsServerStream>>;

/// A completed handshake and what it negotiated.
pub struct Accepted {
    pub stream: TlsServerStream,
    /// `1.3` or `1.2`.
    pub version: &'static str,
    pub cipher: &'static str,
    /// The client certificate the handshake verified (mTLS).
    pub client_cert: Option<Arc<crate::http::context::ClientCertIdentity>>,
}

impl TlsEdge {
    /// Runs the whole accept step on a fresh connection, bounded by `timeout`.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        timeout: Duration,
    ) -> Result<Accepted, HandshakeFailure> {
        let stream = tokio::time::timeout(timeout, self.handshake(tcp))
            .await
            .map_err(|_| HandshakeFailure::Timeout(timeout))??;
        let connection = stream.connection();
        let version = match connection.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
            _ => "other",
        };
        let cipher = connection
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown");
        let client_cert = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(super::client_auth::identity)
            .map(Arc::new);
        Ok(Accepted {
            stream,
            version,
            cipher,
            client_cert,
        })
    }

    /// The ClientHello is read first, so a TLS-ALPN-01 validator gets its challenge
    /// certificate and everyone else the normal configuration.
    async fn handshake(&self, mut tcp: TcpStream) -> Result<TlsServerStream, HandshakeFailure> {
        let mut received = Vec::new();
        let hello = match stream::read_client_hello(&mut tcp, &mut received)
            .await
            .map_err(HandshakeFailure::Io)?
        {
            Some(hello) => hello,
            None if stream::is_plain_http(&received) => {
                stream::answer_plain_http(&mut tcp).await;
                return Err(HandshakeFailure::PlainHttp);
            }
            None => Default::default(),
        };
        let wants_acme = hello.alpn.iter().any(|p| p == ACME_TLS_ALPN);
        let config = match (&self.acme_config, wants_acme) {
            (Some(acme), true) => acme.clone(),
            _ => self
                .configs
                .load()
                .for_hello(hello.server_name.as_deref(), &hello.cipher_suites),
        };
        if hello.is_inappropriate_fallback(&config) {
            stream::refuse_fallback(&mut tcp, &hello).await;
            return Err(HandshakeFailure::InappropriateFallback);
        }
        let name = hello.server_name;
        let covered = wants_acme || self.resolver.covers(name.as_deref());
        TlsServerStream::accept(tcp, received, config, name.clone())
            .await
            .map_err(|error| match HandshakeFailure::from_io(error) {
                HandshakeFailure::Tls(_) if !covered => HandshakeFailure::NoCertificate { name },
                failure => failure,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded_and_typed() {
        let incompatible = HandshakeFailure::Tls(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::SupportedVersionsExtensionRequired,
        ));
        assert_eq!(incompatible.reason(), "protocol_version");
        let eof = HandshakeFailure::from_io(io::Error::new(io::ErrorKind::UnexpectedEof, "eof"));
        assert_eq!(eof.reason(), "closed_by_client");
        let wrapped = HandshakeFailure::from_io(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::PeerIncompatible(rustls::PeerIncompatible::NoCipherSuitesInCommon),
        ));
        assert!(matches!(wrapped, HandshakeFailure::Tls(_)));
        assert_eq!(wrapped.reason(), "no_shared_cipher");
        assert_eq!(HandshakeFailure::PlainHttp.reason(), "plain_http");
        assert_eq!(
            HandshakeFailure::InappropriateFallback.reason(),
            "inappropriate_fallback"
        );
        assert_eq!(
            HandshakeFailure::Timeout(Duration::from_secs(1)).reason(),
            "timeout"
        );
    }
}
