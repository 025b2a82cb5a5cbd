//! Reading the facts out of a certificate: names, validity, issuer, key.

use std::net::IpAddr;

use rustls_pki_types::CertificateDer;
use serde::Serialize;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    /// DNS names from the SAN extension, lower case.
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    pub self_issued: bool,
    /// `RSA`, `ECDSA`, `Ed25519`, …
    pub key_type: String,
    pub key_bits: u32,
    /// `P-256`, `P-384` for ECDSA keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_curve: Option<String>,
    pub signature_algorithm: String,
    /// SHA-256 of the DER, as colon-separated upper-case hex (what browsers show).
    pub sha256_fingerprint: String,
    /// Extended key usages: `serverAuth`, `clientAuth`, … (empty: any).
    pub extended_key_usage: Vec<String>,
}

impl CertInfo {
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let (key_type, key_bits, key_curve) = key_facts(&cert);
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => dns_names.push(dns.to_ascii_lowercase()),
                    GeneralName::IPAddress(bytes) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                            ip_addresses.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                            ip_addresses.push(IpAddr::from(v6));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string().replace(':', ""),
            dns_names,
            ip_addresses,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
            self_issued: cert.subject() == cert.issuer(),
            key_type: key_type.into(),
            key_bits,
            key_curve,
            signature_algorithm: signature_name(&cert),
            sha256_fingerprint: fingerprint(der),
            extended_key_usage: extended_key_usage(&cert),
        })
    }

    /// `ECDSA P-256`, `RSA 2048`, `Ed25519`.
    pub fn key_description(&self) -> String {
        match (&self.key_curve, self.key_type.as_str()) {
            (Some(curve), _) => format!("{} {curve}", self.key_type),
            (None, "Ed25519") | (None, "Ed448") => self.key_type.clone(),
            (None, _) => format!("{} {}", self.key_type, self.key_bits),
        }
    }

    /// Whether a configured name (host, wildcard or IP) is covered by this certificate's SANs.
    pub fn covers(&self, name: &str) -> bool {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return self.ip_addresses.contains(&ip);
        }
        let name = name.to_ascii_lowercase();
        if self.dns_names.contains(&name) {
            return true;
        }
        // A SAN wildcard covers exactly one extra label.
        match name.split_once('.') {
            Some((label, parent)) if label != "*" => self
                .dns_names
                .iter()
                .any(|san| san.strip_prefix("*.") == Some(parent)),
            _ => false,
        }
    }

    /// All SANs, for messages.
    pub fn san_list(&self) -> String {
        let mut all: Vec<String> = self.dns_names.clone();
        all.extend(self.ip_addresses.iter().map(IpAddr::to_string));
        if all.is_empty() {
            "none".into()
        } else {
            all.join(", ")
        }
    }

    pub fn lifetime_secs(&self) -> i64 {
        self.not_after - self.not_before
    }

    /// Seconds until expiry (negative once expired).
    pub fn remaining_secs(&self, now: i64) -> i64 {
        self.not_after - now
    }
}

fn key_facts(cert: &X509Certificate<'_>) -> (&'static str, u32, Option<String>) {
    let spki = cert.public_key();
    let algorithm = spki.algorithm.algorithm.to_id_string();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => ("RSA", rsa.key_size() as u32, None),
        Ok(PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| match oid.to_id_string().as_str() {
                    "1.2.840.10045.3.1.7" => "P-256".to_owned(),
                    "1.3.132.0.34" => "P-384".to_owned(),
                    "1.3.132.0.35" => "P-521".to_owned(),
                    other => other.to_owned(),
                });
            ("ECDSA", point.key_size() as u32, curve)
        }
        _ if algorithm == "1.3.101.112" => ("Ed25519", 256, None),
        _ if algorithm == "1.3.101.113" => ("Ed448", 456, None),
        Ok(PublicKey::DSA(_)) => ("DSA", 0, None),
        _ => ("unknown", 0, None),
    }
}

fn extended_key_usage(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(eku)) = cert.extended_key_usage() else {
        return Vec::new();
    };
    let eku = eku.value;
    let mut usages = Vec::new();
    for (present, name) in [
        (eku.server_auth, "serverAuth"),
        (eku.client_auth, "clientAuth"),
        (eku.code_signing, "codeSigning"),
        (eku.email_protection, "emailProtection"),
        (eku.any, "any"),
    ] {
        if present {
            usages.push(name.to_owned());
        }
    }
    usages
}

impl CertInfo {
    /// A certificate only for TLS clients (mTLS), not servers.
    pub fn is_client_only(&self) -> bool {
        self.extended_key_usage.iter().any(|u| u == "clientAuth")
            && !self
                .extended_key_usage
                .iter()
                .any(|u| u == "serverAuth" || u == "any")
    }
}

fn signature_name(cert: &X509Certificate<'_>) -> String {
    let oid = &cert.signature_algorithm.algorithm;
    match x509_parser::objects::oid2sn(oid, x509_parser::objects::oid_registry()) {
        Ok(name) => name.to_owned(),
        Err(_) => oid.to_id_string(),
    }
}

/// SHA-256 of `der` as `AB:CD:…`.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether each certificate in a chain is issued by the next one (leaf first).
pub fn chain_in_order(chain: &[CertInfo]) -> bool {
    chain
        .windows(2)
        .all(|pair| pair[0].issuer == pair[1].subject)
}

/// Whether `der` is a self-signed certificate (issuer = subject, signed by its own key): a
/// trust anchor. A self-issued certificate signed by another key (a root's key rollover) is
/// not one.
pub fn is_self_signed(der: &CertificateDer<'_>) -> bool {
    X509Certificate::from_der(der).is_ok_and(|(_, cert)| {
        cert.subject() == cert.issuer() && cert.verify_signature(None).is_ok()
    })
}

/// `chain` without the self-signed certificates at its end. A client must already hold its
/// trust anchor, so sending it only costs bytes (RFC 8446 §4.4.2, RFC 5246 §7.4.2). The first
/// certificate always stays: a self-signed leaf is the whole chain.
pub fn without_trust_anchor(
    mut chain: Vec<CertificateDer<'static>>,
) -> Vec<CertificateDer<'static>> {
    while chain.len() > 1 && chain.last().is_some_and(is_self_signed) {
        chain.pop();
    }
    chain
}

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An RFC 3339 date for a Unix timestamp, for people.
pub fn format_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(dns: &[&str], ips: &[&str]) -> CertInfo {
        CertInfo {
            subject: String::new(),
            issuer: String::new(),
            serial: String::new(),
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ip_addresses: ips.iter().map(|s| s.parse().unwrap()).collect(),
            not_before: 0,
            not_after: 0,
            is_ca: false,
            self_issued: false,
            key_type: String::new(),
            key_bits: 0,
            key_curve: None,
            signature_algorithm: String::new(),
            sha256_fingerprint: String::new(),
            extended_key_usage: Vec::new(),
        }
    }

    #[test]
    fn wildcard_covers_one_label_only() {
        let cert = info(&["*.example.com", "example.com"], &["127.0.0.1"]);
        assert!(cert.covers("api.example.com"));
        assert!(cert.covers("example.com"));
        assert!(cert.covers("*.example.com"));
        assert!(!cert.covers("a.b.example.com"));
        assert!(!cert.covers("example.org"));
        assert!(cert.covers("127.0.0.1"));
        assert!(!cert.covers("::1"));
    }

    #[test]
    fn only_a_self_signed_tail_is_dropped_from_a_chain() {
        use crate::certs::generate::{self, CertificateAuthority, KeyAlgorithm, Usage};
        let day = std::time::Duration::from_secs(86_400);
        let names = vec!["app.test".to_owned()];
        let ca = CertificateAuthority::new("root", day, KeyAlgorithm::EcdsaP256).unwrap();
        let leaf = ca
            .issue(&names, day, KeyAlgorithm::EcdsaP256, Usage::Server)
            .unwrap()
            .der;
        let root = ca.cert_der.clone();
        assert!(is_self_signed(&root) && !is_self_signed(&leaf));
        let only_leaf = vec![leaf.clone()];
        assert_eq!(
            without_trust_anchor(vec![leaf.clone(), root.clone()]),
            only_leaf
        );
        assert_eq!(without_trust_anchor(only_leaf.clone()), only_leaf);
        // A self-signed leaf is the whole chain; it stays.
        let alone = generate::self_signed(&names, day, KeyAlgorithm::EcdsaP256)
            .unwrap()
            .der;
        assert!(is_self_signed(&alone));
        assert_eq!(without_trust_anchor(vec![alone.clone()]), [alone]);
        // Issuer = subject, but signed by the CA's key, not its own: not an anchor.
        let named = vec!["root".to_owned()];
        let self_issued = ca
            .issue(&named, day, KeyAlgorithm::EcdsaP256, Usage::Server)
            .unwrap()
            .der;
        let info = CertInfo::parse(&self_issued).unwrap();
        assert!(
            info.self_issued && !is_self_signed(&self_issued),
            "{info:?}"
        );
        assert_eq!(
            without_trust_anchor(vec![leaf.clone(), self_issued.clone()]).len(),
            2
        );
    }
}
