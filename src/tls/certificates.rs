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
use crate::certs::verify::{key_matches, KeyCheckError, MAX_DER_CERTIFICATE};
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

/// The data folder's mode, when keys live in it (the local CA, ACME certificates and
/// accounts): refused when others may write to it, a warning when the group may.
pub fn check_data_dir(tls: &TlsSettings, data_dir: &Path) -> Result<Option<String>, TlsError> {
    let keys_inside = tls.certificates.is_empty()
        || tls
            .certificates
            .iter()
            .any(|entry| matches!(entry.source, CertSource::Acme { .. }));
    if !keys_inside {
        return Ok(None);
    }
    crate::certs::store::check_key_folder(data_dir).map_err(|source| TlsError::DataDir { source })
}

/// Loads every configured certificate; with none configured, makes sure the local CA and its
/// `localhost` certificate exist in `data_dir` and loads that.
pub fn load_certificates(
    tls: &TlsSettings,
    data_dir: &Path,
) -> Result<LoadedCertificates, TlsError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let data_dir_warning = check_data_dir(tls, data_dir)?;
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
            client_auth: None,
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
    let mut warnings: Vec<String> = data_dir_warning.into_iter().collect();
    let now = unix_now();
    for (index, (entry, key, info, names)) in loaded.into_iter().enumerate() {
        warnings.extend(expiry_warning(entry.source.cert_path(), &info, now));
        warnings.extend(key_permission_warning(entry.source.key_path()));
        warnings.extend(chain_size_warning(entry.source.cert_path(), &key.cert));
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
    match key_matches(&certified) {
        Ok(()) => {}
        Err(KeyCheckError::Mismatch) => {
            return Err(TlsError::KeyMismatch {
                origin: entry.origin.clone(),
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            })
        }
        Err(KeyCheckError::UnreadableLeaf { reason }) => {
            return Err(TlsError::UnreadableLeaf {
                origin: entry.origin.clone(),
                cert: cert_path.to_path_buf(),
                reason,
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

/// rustls clients refuse handshake messages over 64 KiB, so a longer chain is served but only
/// to other TLS stacks (OpenSSL, browsers).
fn chain_size_warning(
    path: &Path,
    chain: &[rustls::pki_types::CertificateDer<'_>],
) -> Option<String> {
    // Each certificate costs its length, a 3-byte length and 2 bytes of (empty) extensions.
    let size: usize = chain.iter().map(|cert| cert.len() + 5).sum();
    (size > MAX_DER_CERTIFICATE).then(|| {
        format!(
            "certificate chain {} is {} KiB: clients built on rustls refuse certificate messages over 64 KiB (OpenSSL and browsers accept it); drop intermediates the clients do not need",
            path.display(),
            size.div_ceil(1024)
        )
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::generate::{key_pem, CertificateAuthority, KeyAlgorithm, Usage};
    use rcgen::{BasicConstraints, CertificateParams, CustomExtension, IsCa, Issuer, KeyPair};

    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

    /// Loads one `cert_file` + `key_file` pair as `serve` would.
    fn load(dir: &Path, chain_pem: &str, key_pem: &str) -> Result<LoadedCertificates, TlsError> {
        std::fs::write(dir.join("site.crt"), chain_pem).unwrap();
        std::fs::write(dir.join("site.key"), key_pem).unwrap();
        let yaml = "tls:\n  certificates:\n    - cert_file: site.crt\n      key_file: site.key\n";
        let settings = crate::config::load_str(
            yaml,
            Some(&dir.join("tlsgate.yaml")),
            &Default::default(),
            &|_| None,
        )
        .unwrap();
        load_certificates(&settings.tls, &dir.join("data"))
    }

    #[test]
    fn a_leaf_over_64_kib_is_refused_as_too_large_not_as_a_key_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::new("test CA", DAY, KeyAlgorithm::EcdsaP256).unwrap();
        // 3000 names of 25 bytes: about 80 KiB of subjectAltName.
        let names: Vec<String> = (0..3000)
            .map(|i| format!("host-{i:05}.big.example.com"))
            .collect();
        let leaf = ca
            .issue(&names, DAY, KeyAlgorithm::EcdsaP256, Usage::Server)
            .unwrap();
        assert!(leaf.der.len() > 0xffff, "{} bytes", leaf.der.len());
        let error = load(dir.path(), &leaf.cert_pem, &leaf.key_pem).unwrap_err();
        let TlsError::UnreadableLeaf { reason, .. } = &error else {
            panic!("not refused as unreadable: {error}");
        };
        assert!(
            reason.starts_with(&format!("the leaf certificate is {} bytes; rustls reads certificates of at most 65535 bytes", leaf.der.len())),
            "{reason}"
        );

        // A real mismatch is still called one.
        let small = ca
            .issue(
                &["a.example".into()],
                DAY,
                KeyAlgorithm::EcdsaP256,
                Usage::Server,
            )
            .unwrap();
        let error = load(dir.path(), &small.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
    }

    #[test]
    fn a_valid_chain_over_64_kib_with_its_key_is_accepted_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let ca_params = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            // A 12 KiB private extension per intermediate: six of them exceed 64 KiB.
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 4, 1, 55555, 1],
                    vec![0x04, 0x82, 0x30, 0x00]
                        .into_iter()
                        .chain(std::iter::repeat_n(0x61, 0x3000))
                        .collect(),
                ));
            params
        };
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("root");
        let root = root_params.self_signed(&root_key).unwrap();
        let mut issuer = Issuer::new(root_params, root_key);
        let mut intermediates = Vec::new();
        for i in 0..6 {
            let key = KeyPair::generate().unwrap();
            let params = ca_params(&format!("intermediate {i}"));
            let cert = params.signed_by(&key, &issuer).unwrap();
            intermediates.push(cert.pem());
            issuer = Issuer::new(params, key);
        }
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["big-chain.example".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        // fullchain order: leaf, then each issuer up to the root.
        let mut chain = leaf.pem();
        for pem in intermediates.iter().rev() {
            chain.push_str(pem);
        }
        chain.push_str(&root.pem());
        let loaded = load(dir.path(), &chain, &key_pem(&leaf_key)).unwrap();
        assert_eq!(loaded.summaries[0].names, ["big-chain.example"]);
        assert!(
            loaded.warnings.iter().any(|w| w
                .contains("KiB: clients built on rustls refuse certificate messages over 64 KiB")),
            "{:?}",
            loaded.warnings
        );
    }
}
