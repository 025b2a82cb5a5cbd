//! Loading configured certificates (or the local CA's) into a [`CertTable`], refusing what
//! cannot work and warning about what will hurt soon.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;

use super::{CertTable, TlsError};
use crate::certs::inspect::{format_time, unix_now, without_trust_anchor};
use crate::certs::local_ca::{self, LocalCertificate};
use crate::certs::pem::{read_certificates, read_private_key};
use crate::certs::CertInfo;
use crate::config::{CertSource, CertificateSettings, Origin, TlsSettings};

const EXPIRY_WARNING_DAYS: i64 = 30;

/// What was loaded, for the banner, `config check` and logs.
#[derive(Debug, Clone)]
pub struct CertSummary {
    pub cert_path: PathBuf,
    pub names: Vec<String>,
    pub info: CertInfo,
    pub is_default: bool,
    /// `file`, `acme` or `local CA`.
    pub source: &'static str,
}

impl CertSummary {
    /// When tlsgate itself will renew this certificate (ACME and local CA certificates, a
    /// third of the lifetime before expiry; the CA's renewal information may move an ACME
    /// renewal), or `None` for files it does not manage.
    pub fn next_renewal(&self) -> Option<i64> {
        (self.source != "file").then(|| self.info.not_after - self.info.lifetime_secs() / 3)
    }
}

#[derive(Debug)]
pub struct LoadedCertificates {
    pub table: CertTable,
    pub summaries: Vec<CertSummary>,
    /// Problems that do not stop start-up: expiry, loose key permissions.
    pub warnings: Vec<String>,
    /// Set when no certificate is configured and the local CA provides one.
    pub local: Option<LocalCertificate>,
    /// ACME certificates not obtained yet (their names), served once issued.
    pub pending: Vec<Vec<String>>,
}

/// Loads every configured certificate; with none configured, makes sure the local CA and its
/// `localhost` certificate exist in `data_dir` and loads that.
pub fn load_certificates(
    tls: &TlsSettings,
    data_dir: &Path,
) -> Result<LoadedCertificates, TlsError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mut local = None;
    let entries: Vec<CertificateSettings> = if tls.certificates.is_empty() {
        let made = local_ca::ensure(data_dir).map_err(|source| TlsError::LocalCa {
            data_dir: data_dir.to_path_buf(),
            source,
        })?;
        let entry = CertificateSettings {
            source: CertSource::Files {
                cert_file: made.live.fullchain.clone(),
                key_file: made.live.privkey.clone(),
            },
            names: Vec::new(),
            default: true,
            origin: Origin::Default,
        };
        local = Some(made);
        vec![entry]
    } else {
        tls.certificates.clone()
    };

    let mut pending = Vec::new();
    let entries: Vec<CertificateSettings> = entries
        .into_iter()
        .filter(|entry| match &entry.source {
            CertSource::Acme {
                acme,
                fullchain,
                privkey,
            } if !(fullchain.exists() && privkey.exists()) => {
                pending.push(acme.names.clone());
                false
            }
            _ => true,
        })
        .collect();
    let mut loaded = Vec::with_capacity(entries.len());
    for entry in &entries {
        let (key, info) = load_one(entry, &provider)?;
        let mut names = if entry.names.is_empty() {
            info.dns_names.clone()
        } else {
            entry.names.clone()
        };
        names.sort();
        loaded.push((entry, key, info, names));
    }
    // The default is the marked entry (else the first), plus every entry serving exactly the
    // same names, so an RSA + ECDSA pair is a default pair whatever the file order.
    let default_index = entries.iter().position(|e| e.default).unwrap_or(0);
    let default_names = loaded
        .get(default_index)
        .map(|(_, _, _, names)| names.clone())
        .unwrap_or_default();

    let mut table = CertTable::default();
    let mut summaries = Vec::new();
    let mut warnings = Vec::new();
    let now = unix_now();
    for (index, (entry, key, info, names)) in loaded.into_iter().enumerate() {
        warnings.extend(expiry_warning(entry.source.cert_path(), &info, now));
        warnings.extend(key_permission_warning(entry.source.key_path()));
        let is_default = index == default_index || (!names.is_empty() && names == default_names);
        table.insert(&names, Arc::new(key), is_default);
        let source = match (&entry.source, local.is_some()) {
            (CertSource::Acme { .. }, _) => "acme",
            (_, true) => "local CA",
            _ => "file",
        };
        summaries.push(CertSummary {
            cert_path: entry.source.cert_path().to_path_buf(),
            names,
            info,
            is_default,
            source,
        });
    }
    Ok(LoadedCertificates {
        table,
        summaries,
        warnings,
        local,
        pending,
    })
}

fn load_one(
    entry: &CertificateSettings,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, CertInfo), TlsError> {
    let cert_path = entry.source.cert_path();
    let key_path = entry.source.key_path();
    let wrap = |source| TlsError::Certificate {
        origin: entry.origin.clone(),
        source,
    };
    // Files written by older versions (and some operators' bundles) end in the root.
    let chain = without_trust_anchor(read_certificates(cert_path).map_err(wrap)?);
    let key_der = read_private_key(key_path).map_err(wrap)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|error| TlsError::UnsupportedKey {
            origin: entry.origin.clone(),
            key: key_path.to_path_buf(),
            reason: error.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(TlsError::KeyMismatch {
                origin: entry.origin.clone(),
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            })
        }
    }
    let info = CertInfo::parse(&certified.cert[0]).map_err(|reason| TlsError::Certificate {
        origin: entry.origin.clone(),
        source: crate::certs::CertError::Malformed {
            path: cert_path.to_path_buf(),
            reason,
        },
    })?;
    for name in &entry.names {
        if !info.covers(name) {
            return Err(TlsError::NameNotCovered {
                origin: entry.origin.clone(),
                cert: cert_path.to_path_buf(),
                name: name.clone(),
                sans: info.san_list(),
            });
        }
    }
    Ok((certified, info))
}

fn expiry_warning(path: &Path, info: &CertInfo, now: i64) -> Option<String> {
    let days_left = info.remaining_secs(now).div_euclid(86_400);
    if info.remaining_secs(now) <= 0 {
        Some(format!(
            "certificate {} EXPIRED on {}: clients will refuse it",
            path.display(),
            format_time(info.not_after)
        ))
    } else if days_left < EXPIRY_WARNING_DAYS {
        Some(format!(
            "certificate {} expires in {days_left} days ({})",
            path.display(),
            format_time(info.not_after)
        ))
    } else if info.not_before > now {
        Some(format!(
            "certificate {} is not valid until {}",
            path.display(),
            format_time(info.not_before)
        ))
    } else {
        None
    }
}

fn key_permission_warning(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "private key {} is readable by group or others (mode {mode:04o}); run: chmod 600 {}",
            path.display(),
            path.display()
        )
    })
}
