//! The TLS edge: certificates loaded into an SNI table, rustls server configs built from
//! [`crate::config::TlsSettings`], and the state shared across reloads (ticket keys, session
//! cache).

pub mod accept;
mod buffers;
mod certificates;
pub mod client_auth;
mod edge;
pub mod established;
mod resolver;
mod server_config;
pub mod stream;

pub use accept::{Accepted, HandshakeFailure, TlsConnectionIo, TlsEdge};
pub(crate) use buffers::Outgoing;
pub use certificates::{check_data_dir, load_certificates, CertSummary, LoadedCertificates};
pub use resolver::{CertTable, SniResolver};
pub use server_config::{build_server_config, ServerConfigs, SessionState};

use std::path::PathBuf;

use crate::certs::CertError;
use crate::config::Origin;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate configured at {origin}: {source}")]
    Certificate {
        origin: Origin,
        #[source]
        source: CertError,
    },
    #[error("certificate configured at {origin}: the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch {
        origin: Origin,
        cert: PathBuf,
        key: PathBuf,
    },
    /// The key could not be checked against the certificate because rustls cannot read the
    /// certificate itself (a true mismatch is [`TlsError::KeyMismatch`]).
    #[error("certificate configured at {origin}: {cert}: {reason}")]
    UnreadableLeaf {
        origin: Origin,
        cert: PathBuf,
        reason: String,
    },
    #[error("certificate configured at {origin}: the private key in {key} is not usable: {reason} (supported: RSA 2048-4096, ECDSA P-256/P-384, Ed25519)")]
    UnsupportedKey {
        origin: Origin,
        key: PathBuf,
        reason: String,
    },
    #[error(
        "certificate configured at {origin}: {cert} does not cover `{name}` (its names: {sans})"
    )]
    NameNotCovered {
        origin: Origin,
        cert: PathBuf,
        name: String,
        sans: String,
    },
    #[error("data folder: {source}")]
    DataDir {
        #[source]
        source: CertError,
    },
    #[error("local development CA in {data_dir}: {source}")]
    LocalCa {
        data_dir: PathBuf,
        #[source]
        source: CertError,
    },
    #[error("client_auth configured at {origin}: {path}: {reason}")]
    ClientAuth {
        origin: Origin,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS configuration refused by rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The served certificates as `certificate_expiry_timestamp_seconds` reports them.
pub fn expiry_metrics(summaries: &[CertSummary]) -> Vec<crate::metrics::CertificateExpiry> {
    summaries
        .iter()
        .map(|summary| crate::metrics::CertificateExpiry {
            certificate: summary
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| summary.cert_path.display().to_string()),
            serial: summary.info.serial.clone(),
            not_after: summary.info.not_after,
        })
        .collect()
}
