//! The zero-config local development CA (`ca/root.crt`, `ca/root.key`) and the `localhost`
//! certificate it signs (`live/localhost/`). Both are reused across starts; the leaf is
//! re-issued when less than a third of its lifetime is left, when it no longer chains to the
//! CA, or when it lacks a local name.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::RootCertStore;

use super::generate::{CertificateAuthority, KeyAlgorithm, Usage};
use super::inspect::CertInfo;
use super::pem::{read_certificates, read_private_key};
use super::store::{
    ensure_private_dir, tighten_dir, write_atomic, LivePaths, PUBLIC_MODE, SECRET_MODE,
};
use super::CertError;

pub const CA_LIFETIME: Duration = Duration::from_secs(3650 * 86_400);
pub const LEAF_LIFETIME: Duration = Duration::from_secs(90 * 86_400);
/// The names the local certificate serves.
pub const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
pub const LEAF_NAME: &str = "localhost";

#[derive(Debug, Clone, PartialEq)]
pub enum LeafAction {
    Reused,
    Issued,
    Reissued(String),
}

#[derive(Debug, Clone)]
pub struct LocalCertificate {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub ca_created: bool,
    pub live: LivePaths,
    pub leaf: LeafAction,
}

/// Whether a certificate has less than a third of its lifetime left.
pub fn in_renewal_window(info: &CertInfo, now: i64) -> bool {
    info.remaining_secs(now) * 3 < info.lifetime_secs()
}

/// Makes sure the local CA and a current `localhost` certificate exist in `data_dir`.
pub fn ensure(data_dir: &Path) -> Result<LocalCertificate, CertError> {
    ensure_private_dir(data_dir)?;
    let ca_dir = data_dir.join("ca");
    tighten_dir(&ca_dir)?;
    let ca_cert = ca_dir.join("root.crt");
    let ca_key = ca_dir.join("root.key");

    // The key is written before the certificate, so a key alone is an interrupted first run:
    // no client can trust a CA certificate that was never written, so start over.
    let (ca, ca_created) = if ca_cert.exists() {
        (load_ca(&ca_cert, &ca_key)?, false)
    } else {
        let ca = CertificateAuthority::new(
            &format!("tlsgate local development CA ({})", host_label()),
            CA_LIFETIME,
            KeyAlgorithm::EcdsaP256,
        )?;
        write_atomic(&ca_key, ca.key_pem().as_bytes(), SECRET_MODE)?;
        write_atomic(&ca_cert, ca.cert_pem.as_bytes(), PUBLIC_MODE)?;
        (ca, true)
    };

    let live = LivePaths::new(data_dir, LEAF_NAME)?;
    let (reason, previous_serial) = if ca_created {
        (Some(None), current_serial(&live))
    } else {
        match leaf_problem(&live, &ca) {
            None => (None, None),
            Some(problem) => (Some(problem), current_serial(&live)),
        }
    };
    let leaf = match reason {
        None => LeafAction::Reused,
        Some(reason) => {
            let names: Vec<String> = LOCAL_NAMES.iter().map(|s| s.to_string()).collect();
            let issued = ca.issue(
                &names,
                LEAF_LIFETIME,
                KeyAlgorithm::EcdsaP256,
                Usage::Server,
            )?;
            // No intermediates: the CA is the trust anchor, which is never sent.
            live.store(
                data_dir,
                &issued.cert_pem,
                "",
                &issued.key_pem,
                previous_serial.as_deref(),
            )?;
            match reason {
                Some(why) if previous_serial.is_some() => LeafAction::Reissued(why),
                _ => LeafAction::Issued,
            }
        }
    };
    Ok(LocalCertificate {
        ca_cert,
        ca_key,
        ca_created,
        live,
        leaf,
    })
}

fn load_ca(cert: &Path, key: &Path) -> Result<CertificateAuthority, CertError> {
    let read = super::pem::read_capped_text;
    let ca = CertificateAuthority::from_pem(&read(cert)?, &read(key)?).map_err(|error| {
        CertError::Malformed {
            path: cert.to_path_buf(),
            reason: format!(
                "the local CA cannot be loaded ({error}); move the `ca` folder away to create a new one (clients must then trust the new CA)"
            ),
        }
    })?;
    let info = CertInfo::parse(&ca.cert_der).map_err(|reason| CertError::Malformed {
        path: cert.to_path_buf(),
        reason,
    })?;
    if info.remaining_secs(super::inspect::unix_now()) <= 0 {
        return Err(CertError::Malformed {
            path: cert.to_path_buf(),
            reason: "the local CA has expired; move the `ca` folder away to create a new one"
                .into(),
        });
    }
    Ok(ca)
}

fn current_serial(live: &LivePaths) -> Option<String> {
    let certs = read_certificates(&live.cert).ok()?;
    CertInfo::parse(certs.first()?).ok().map(|info| info.serial)
}

/// Why the live leaf must be (re-)issued, or `None` when it is fine. `Some(None)` means it
/// does not exist yet.
fn leaf_problem(live: &LivePaths, ca: &CertificateAuthority) -> Option<Option<String>> {
    if !live.exists() {
        return Some(None);
    }
    let Ok(chain) = read_certificates(&live.fullchain) else {
        return Some(Some("the certificate file does not parse".into()));
    };
    let Some(leaf) = chain.first() else {
        return Some(Some("the certificate file is empty".into()));
    };
    let Ok(info) = CertInfo::parse(leaf) else {
        return Some(Some("the certificate does not parse".into()));
    };
    let Ok(key) = read_private_key(&live.privkey) else {
        return Some(Some("the key file does not parse".into()));
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    if rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider).is_err() {
        return Some(Some("the key does not match the certificate".into()));
    }
    if LOCAL_NAMES.iter().any(|name| !info.covers(name)) {
        return Some(Some(format!(
            "it lacks a local name (has {})",
            info.san_list()
        )));
    }
    let now = super::inspect::unix_now();
    if in_renewal_window(&info, now) {
        return Some(Some(format!(
            "less than a third of its lifetime is left (expires {})",
            super::inspect::format_time(info.not_after)
        )));
    }
    let mut roots = RootCertStore::empty();
    if roots.add(ca.cert_der.clone()).is_err() {
        return Some(Some("the CA certificate is unusable".into()));
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build();
    let chains = match verifier {
        Ok(verifier) => verifier
            .verify_server_cert(
                leaf,
                &chain[1..],
                &ServerName::try_from(LEAF_NAME).ok()?,
                &[],
                UnixTime::now(),
            )
            .is_ok(),
        Err(_) => false,
    };
    if !chains {
        return Some(Some("it is not signed by the current local CA".into()));
    }
    None
}

/// A short label naming this machine in the CA's subject, so several machines' CAs can be
/// told apart in a trust store.
fn host_label() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.len() < 64)
        .unwrap_or_else(|| "this machine".into())
}
