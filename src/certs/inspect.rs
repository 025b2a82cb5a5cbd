//! Reading the facts out of a certificate: names, validity, issuer, key.

use std::net::IpAddr;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, Clone, PartialEq)]
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
}

impl CertInfo {
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
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
        })
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
}
