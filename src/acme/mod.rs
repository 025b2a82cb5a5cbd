//! ACME: accounts, orders with HTTP-01 / TLS-ALPN-01 / DNS-01, certbot-style storage, and the
//! renewal schedule (ARI when the CA offers it, else a third of the lifetime).

pub mod challenges;
pub mod client;
mod http;
pub mod manager;

pub use challenges::ChallengeStore;
pub use manager::{AcmeManager, CertificateStatus};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME CA {directory}: {source}")]
    Protocol {
        directory: String,
        #[source]
        source: instant_acme::Error,
    },
    #[error("the CA refused {names}: {reason}")]
    Refused { names: String, reason: String },
    #[error("{0}")]
    Certificate(#[from] crate::certs::CertError),
    #[error("{path}: {reason}")]
    Account { path: PathBuf, reason: String },
    #[error("DNS hook {hook} {action} {name}: {reason}")]
    DnsHook {
        hook: PathBuf,
        action: &'static str,
        name: String,
        reason: String,
    },
    #[error("another tlsgate process is ordering {lineage} (lock {lock})")]
    Locked { lineage: String, lock: PathBuf },
    #[error("{0}")]
    Other(String),
}
