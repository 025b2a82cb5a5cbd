//! Client certificates (mTLS): the rustls verifier built from `client_auth` settings, the
//! CRLs it checks (read from PEM or DER files and checked before use: signature by a
//! configured CA, validity, and CRL numbers that never go down), the verified identity read
//! after the handshake, and the failure reasons counted in metrics.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::num_bigint::BigUint;
use x509_parser::prelude::*;

use super::TlsError;
use crate::config::client_auth::{ClientAuthMode, ClientAuthSettings};
use crate::http::context::ClientCertIdentity;

/// The highest CRL number loaded per issuer (its DER-encoded name): a CRL that goes below is
/// a rollback (an attacker, or a stale copy, bringing back revoked certificates) and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrlNumbers {
    numbers: BTreeMap<Vec<u8>, Option<BigUint>>,
    /// The earliest nextUpdate (Unix seconds) per issuer, as its name prints.
    next_updates: BTreeMap<String, i64>,
}

impl CrlNumbers {
    /// Per issuer, when its CRL in force expires (`crl_next_update_timestamp_seconds`).
    pub fn next_updates(&self) -> Vec<(String, i64)> {
        self.next_updates
            .iter()
            .map(|(issuer, at)| (issuer.clone(), *at))
            .collect()
    }
}

/// The verifier for `settings`, none when the mode is off. CRL numbers are checked against
/// `floor` (the set in force) and the ones loaded are recorded in `loaded`.
pub fn verifier(
    settings: &ClientAuthSettings,
    floor: &CrlNumbers,
    loaded: &mut CrlNumbers,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsError> {
    if !settings.is_on() {
        return Ok(None);
    }
    let error = |path: &Path, reason: String| TlsError::ClientAuth {
        origin: settings.origin.clone(),
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    let mut cas = Vec::new();
    for path in &settings.ca_files {
        let bytes = std::fs::read(path).map_err(|e| error(path, e.to_string()))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| error(path, format!("not a PEM certificate file: {e}")))?;
        if certs.is_empty() {
            return Err(error(path, "holds no CERTIFICATE block".into()));
        }
        for cert in certs {
            roots
                .add(cert.clone())
                .map_err(|e| error(path, format!("not usable as a CA: {e}")))?;
            cas.push(cert);
        }
    }
    let now = ASN1Time::now();
    let mut crls = Vec::new();
    for path in &settings.crl_files {
        for crl in read_crls(path).map_err(|reason| error(path, reason))? {
            check_crl(&crl, &cas, now, floor, loaded).map_err(|reason| error(path, reason))?;
            crls.push(crl);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).with_crls(crls);
    if !settings.crl_files.is_empty() {
        // A CRL past its nextUpdate may miss newer revocations: refuse rather than trust it
        // (OpenSSL's, so nginx's, behaviour).
        builder = builder.enforce_revocation_expiration();
    }
    if settings.mode == ClientAuthMode::Optional {
        builder = builder.allow_unauthenticated();
    }
    let verifier = builder.build().map_err(|e| TlsError::ClientAuth {
        origin: settings.origin.clone(),
        path: settings.ca_files.first().cloned().unwrap_or_default(),
        reason: e.to_string(),
    })?;
    Ok(Some(verifier))
}

/// The CRLs in a PEM (`X509 CRL` blocks) or DER file.
fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("not a PEM CRL file: {e}"))?;
        if crls.is_empty() {
            return Err("holds no X509 CRL block".into());
        }
        Ok(crls)
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
}

/// Checks one CRL before it is put in force: issued and signed by one of `cas`, current at
/// `now`, and not older (by CRL number) than the one in force from the same issuer.
fn check_crl(
    der: &CertificateRevocationListDer<'_>,
    cas: &[CertificateDer<'_>],
    now: ASN1Time,
    floor: &CrlNumbers,
    loaded: &mut CrlNumbers,
) -> Result<(), String> {
    let (_, crl) = parse_x509_crl(der).map_err(|e| format!("not a CRL: {e}"))?;
    let issuer = crl.issuer();
    let ca = cas
        .iter()
        .filter_map(|der| parse_x509_certificate(der).ok().map(|(_, c)| c))
        .find(|ca| ca.subject().as_raw() == issuer.as_raw())
        .ok_or_else(|| format!("the CRL's issuer `{issuer}` is none of the configured ca_files"))?;
    crl.verify_signature(ca.public_key())
        .map_err(|e| format!("the CRL is not signed by its issuer `{issuer}`: {e}"))?;
    // A CA whose clock runs a little ahead must not have its fresh CRL refused (the watcher
    // would not try the same file again).
    let leeway = ::time::Duration::minutes(5);
    let ahead = (now + leeway).unwrap_or(now);
    if crl.last_update() > ahead {
        return Err(format!(
            "the CRL is not valid yet (thisUpdate {})",
            crl.last_update()
        ));
    }
    if let Some(next) = crl.next_update() {
        if next <= now {
            return Err(format!(
                "the CRL expired at its nextUpdate {next}: publish a fresh one from the CA"
            ));
        }
    }
    let number = crl.crl_number().cloned();
    let key = issuer.as_raw().to_vec();
    if let Some(in_force) = floor.numbers.get(&key) {
        match (in_force, &number) {
            (Some(old), Some(new)) if new < old => {
                return Err(format!(
                    "CRL number {new} is lower than the {old} in force for `{issuer}` (a rollback): refused"
                ))
            }
            (Some(old), None) => {
                return Err(format!(
                    "the CRL has no CRL number, while the one in force for `{issuer}` has {old}: refused"
                ))
            }
            _ => {}
        }
    }
    let entry = loaded.numbers.entry(key).or_insert(None);
    if number > *entry {
        *entry = number;
    }
    if let Some(next) = crl.next_update() {
        let at = next.timestamp();
        let earliest = loaded.next_updates.entry(issuer.to_string()).or_insert(at);
        *earliest = (*earliest).min(at);
    }
    Ok(())
}

/// The verified leaf certificate's identity; none if it cannot be parsed (rustls verified it,
/// so that does not happen in practice).
pub fn identity(der: &CertificateDer<'_>) -> Option<ClientCertIdentity> {
    let (_, cert) = parse_x509_certificate(der).ok()?;
    let sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(n) => Some(format!("DNS:{n}")),
                    GeneralName::RFC822Name(n) => Some(format!("email:{n}")),
                    GeneralName::URI(n) => Some(format!("URI:{n}")),
                    GeneralName::IPAddress(bytes) => ip_of(bytes).map(|ip| format!("IP:{ip}")),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    Some(ClientCertIdentity {
        subject: rfc4514(cert.subject()),
        sans,
        fingerprint: hex(digest.as_ref()),
        serial: cert.serial.to_str_radix(16),
        pem: crate::certs::pem::encode_block("CERTIFICATE", der),
        header_values: Default::default(),
        pem_value: Default::default(),
    })
}

fn ip_of(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// A name in RFC 4514 form: the last RDN first, `,` between RDNs, `+` within one.
fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let oid = attr.attr_type();
                    let key = attribute_name(&oid.to_id_string());
                    let value = match attr.as_str() {
                        Ok(text) => escape_dn_value(text),
                        Err(_) => format!("#{}", hex(attr.attr_value().data)),
                    };
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn attribute_name(oid: &str) -> String {
    match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.5" => "serialNumber",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "emailAddress",
        other => return other.to_owned(),
    }
    .to_owned()
}

fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        if c.is_control() {
            out.push_str(&format!("\\{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A client-certificate failure as a bounded label value
/// (`tlsgate_tls_client_cert_failures_total{reason}`: no_certificate, unknown_ca, expired,
/// revoked, bad_signature, wrong_usage, crl_expired, other); none for other handshake
/// failures.
pub fn failure_reason(error: &rustls::Error) -> Option<&'static str> {
    use rustls::CertificateError as E;
    match error {
        rustls::Error::NoCertificatesPresented => Some("no_certificate"),
        rustls::Error::InvalidCertificate(cert) => Some(match cert {
            E::UnknownIssuer => "unknown_ca",
            E::Expired
            | E::ExpiredContext { .. }
            | E::NotValidYet
            | E::NotValidYetContext { .. } => "expired",
            E::Revoked => "revoked",
            E::BadSignature => "bad_signature",
            // E.g. a server certificate (serverAuth only) offered as a client certificate.
            E::InvalidPurpose | E::InvalidPurposeContext { .. } => "wrong_usage",
            // Every client is refused until a fresh CRL is published: worth its own label.
            E::ExpiredRevocationList | E::ExpiredRevocationListContext { .. } => "crl_expired",
            _ => "other",
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        for len in [0usize, 1, 2, 3, 4, 100, 1000] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let text = crate::certs::pem::encode_block("CERTIFICATE", &der);
            let back = CertificateDer::from_pem_slice(text.as_bytes());
            match len {
                0 => assert!(back.is_err() || back.unwrap().is_empty()),
                _ => assert_eq!(back.unwrap().as_ref(), der.as_slice()),
            }
        }
    }

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(escape_dn_value("a,b"), "a\\,b");
        assert_eq!(escape_dn_value(" x "), "\\ x\\ ");
        assert_eq!(escape_dn_value("#1"), "\\#1");
        assert_eq!(escape_dn_value("plain"), "plain");
    }

    #[test]
    fn failures_map_to_bounded_reasons() {
        use rustls::CertificateError as E;
        let reason = |e: E| failure_reason(&rustls::Error::InvalidCertificate(e));
        assert_eq!(reason(E::UnknownIssuer), Some("unknown_ca"));
        assert_eq!(reason(E::Revoked), Some("revoked"));
        assert_eq!(reason(E::Expired), Some("expired"));
        assert_eq!(reason(E::BadSignature), Some("bad_signature"));
        assert_eq!(reason(E::UnknownRevocationStatus), Some("other"));
        assert_eq!(reason(E::ExpiredRevocationList), Some("crl_expired"));
        assert_eq!(reason(E::InvalidPurpose), Some("wrong_usage"));
        assert_eq!(
            failure_reason(&rustls::Error::NoCertificatesPresented),
            Some("no_certificate")
        );
        assert_eq!(failure_reason(&rustls::Error::DecryptError), None);
    }

    #[test]
    fn identity_of_an_issued_client_certificate() {
        use crate::certs::generate::{CertificateAuthority, KeyAlgorithm, Usage};
        let ca = CertificateAuthority::new(
            "Test CA",
            std::time::Duration::from_secs(86_400),
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
        let issued = ca
            .issue(
                &["alice.example.com".into()],
                std::time::Duration::from_secs(3600),
                KeyAlgorithm::EcdsaP256,
                Usage::Client,
            )
            .unwrap();
        let id = identity(&issued.der).unwrap();
        assert_eq!(id.subject, "CN=alice.example.com");
        assert_eq!(id.sans, vec!["DNS:alice.example.com".to_string()]);
        assert_eq!(id.fingerprint.len(), 64);
        assert_eq!(
            CertificateDer::from_pem_slice(id.pem.as_bytes()).unwrap(),
            issued.der
        );
    }
}
