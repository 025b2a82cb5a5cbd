//! `cert verify`: chain to trusted roots, host name, key match — one result per check.

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use serde::Serialize;

use super::{CertError, CertInfo};

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Why a chain failed, in words.
fn explain(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(reason) => match reason {
            CertificateError::UnknownIssuer => {
                "not issued by a trusted CA (unknown issuer: is an intermediate missing, or is it a private CA?)".into()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".into(),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not valid yet".into()
            }
            CertificateError::BadSignature => "a signature in the chain does not verify".into(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "the certificate is not for this purpose (extended key usage)".into()
            }
            other => format!("{other:?}"),
        },
        other => other.to_string(),
    }
}

/// The trust anchors: every certificate in `ca`, or the system's roots when `ca` is `None`.
pub fn load_roots(ca: Option<&std::path::Path>) -> Result<RootCertStore, CertError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in super::pem::read_certificates(path)? {
                roots.add(cert).map_err(|e| CertError::Malformed {
                    path: path.to_owned(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // One unusable system root must not hide the others.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(CertError::NoRoots);
            }
        }
    }
    Ok(roots)
}

/// Verifies `chain` (leaf first) against `roots`; checks `host` and `key` when given.
pub fn verify(
    chain: &[CertificateDer<'static>],
    leaf: &CertInfo,
    is_client_certificate: bool,
    roots: RootCertStore,
    host: Option<&str>,
    key: Option<PrivateKeyDer<'static>>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = Arc::new(roots);
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return checks;
    };
    let chain_result = if is_client_certificate {
        WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| e.to_string())
            .and_then(|verifier| {
                verifier
                    .verify_client_cert(end_entity, intermediates, UnixTime::now())
                    .map(|_| ())
                    .map_err(|e| explain(&e))
            })
    } else {
        // The chain check uses the certificate's own first name; the host check is separate.
        let own_name = leaf
            .dns_names
            .iter()
            .find(|n| !n.starts_with("*."))
            .cloned()
            .or_else(|| {
                leaf.dns_names
                    .first()
                    .map(|w| w.replacen('*', "wildcard", 1))
            })
            .or_else(|| leaf.ip_addresses.first().map(|ip| ip.to_string()));
        match own_name.and_then(|n| ServerName::try_from(n).ok()) {
            None => Err(
                "the certificate has no DNS or IP names (SAN): TLS clients will refuse it".into(),
            ),
            Some(name) => WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| e.to_string())
                .and_then(|verifier| {
                    verifier
                        .verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())
                        .map(|_| ())
                        .map_err(|e| explain(&e))
                }),
        }
    };
    checks.push(Check {
        check: "chain",
        ok: chain_result.is_ok(),
        detail: match chain_result {
            Ok(()) => format!(
                "valid: {} certificate(s) lead to a trusted root ({} usage)",
                chain.len(),
                if is_client_certificate {
                    "client"
                } else {
                    "server"
                }
            ),
            Err(reason) => reason,
        },
    });

    if let Some(host) = host {
        let ok = leaf.covers(host);
        checks.push(Check {
            check: "host",
            ok,
            detail: if ok {
                format!("{host} matches")
            } else {
                format!(
                    "{host} is not among the certificate's names ({})",
                    leaf.san_list()
                )
            },
        });
    }

    if let Some(key) = key {
        let detail = match provider.key_provider.load_private_key(key) {
            Err(error) => Err(format!("the key is not usable: {error}")),
            Ok(signing_key) => {
                match key_matches(&rustls::sign::CertifiedKey::new(
                    chain.to_vec(),
                    signing_key,
                )) {
                    Ok(()) => Ok("the key matches the certificate".to_owned()),
                    Err(KeyCheckError::Mismatch) => {
                        Err("the key does NOT match the certificate".to_owned())
                    }
                    Err(error) => Err(error.to_string()),
                }
            }
        };
        checks.push(Check {
            check: "key",
            ok: detail.is_ok(),
            detail: detail.unwrap_or_else(|e| e),
        });
    }
    checks
}

/// The largest certificate rustls (webpki) parses: DER lengths of at most two bytes.
pub const MAX_DER_CERTIFICATE: usize = 0xffff;

/// Why a key is not confirmed as the certificate's.
#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    #[error("the key does not match the certificate")]
    Mismatch,
    /// The check parses the leaf first; its failure says nothing about the key.
    #[error("{reason}")]
    UnreadableLeaf { reason: String },
}

/// rustls's key check, with a leaf it cannot read told apart from a key that is not the
/// leaf's. A key whose public half rustls cannot compute passes (rustls checks it when
/// signing).
pub fn key_matches(certified: &rustls::sign::CertifiedKey) -> Result<(), KeyCheckError> {
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(KeyCheckError::Mismatch)
        }
        Err(error) => {
            let len = certified.cert.first().map_or(0, |leaf| leaf.len());
            Err(KeyCheckError::UnreadableLeaf {
                reason: if len > MAX_DER_CERTIFICATE {
                    format!(
                        "the leaf certificate is {len} bytes; rustls reads certificates of at most {MAX_DER_CERTIFICATE} bytes (64 KiB), so it can neither check the key nor be served (make the certificate smaller: fewer names or extensions)"
                    )
                } else {
                    format!("rustls cannot read the leaf certificate to check its key: {error}")
                },
            })
        }
    }
}
