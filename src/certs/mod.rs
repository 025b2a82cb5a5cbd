//! Certificates on disk: reading PEM/DER, generating keys and certificates (local CA,
//! self-signed, issued), inspecting them, and the data folder's storage layout. Never depends
//! on the server.

pub mod bundle;
pub mod expiry;
pub mod generate;
pub mod inspect;
pub mod local_ca;
pub mod pem;
pub mod remote;
pub mod store;
pub mod trust;
pub mod verify;

use std::path::PathBuf;

pub use generate::{CertificateAuthority, IssuedCertificate, KeyAlgorithm};
pub use inspect::CertInfo;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no certificate found (expected a PEM `BEGIN CERTIFICATE` block)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no private key found (expected a PEM `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY` block)")]
    NoKey { path: PathBuf },
    #[error("{path}: the private key is encrypted; tlsgate needs an unencrypted key file readable only by its user (mode 0600)")]
    EncryptedKey { path: PathBuf },
    #[error("{path} is larger than {} MiB: not a certificate or key file (is it the right path?)", .limit >> 20)]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path} is writable by others (mode {mode:04o}): anyone on this machine could replace the keys kept there; run: chmod 700 {path}")]
    WritableByOthers { path: PathBuf, mode: u32 },
    #[error("{path}: malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{path} already exists (use --force to replace it)")]
    Exists { path: PathBuf },
    #[error("{target}: {reason}")]
    Remote { target: String, reason: String },
    #[error("no system root certificates found; pass a CA file")]
    NoRoots,
    #[error("cannot generate {what}: {reason}")]
    Generate { what: String, reason: String },
}
