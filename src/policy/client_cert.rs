//! Client-certificate decisions per route: whether the verified certificate (if any) may pass,
//! and the identity headers the upstream gets. The handshake already verified the chain, so
//! this only reads the identity the TLS layer recorded.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::client_auth::{RouteClientCert, SanRule};
use crate::http::context::ClientCertIdentity;
use crate::http::error::HttpError;

pub const SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
pub const SAN: HeaderName = HeaderName::from_static("x-client-cert-san");
pub const FINGERPRINT: HeaderName = HeaderName::from_static("x-client-cert-fingerprint");
pub const SERIAL: HeaderName = HeaderName::from_static("x-client-cert-serial");
pub const PEM: HeaderName = HeaderName::from_static("x-client-cert");

/// Every header this module sets; inbound copies are removed on every route, since a client
/// could otherwise claim any identity to an upstream that trusts them.
pub const HEADERS: [HeaderName; 5] = [SUBJECT, SAN, FINGERPRINT, SERIAL, PEM];

/// The server names whose certificate entry has its own `client_auth`. A client that sent
/// no SNI got the listener's client auth, so it may not ask for one of these hosts (the
/// `421` rule covers a client that named another host in its SNI).
#[derive(Debug, Clone, Default)]
pub struct ClientAuthNames {
    exact: std::collections::HashSet<String>,
    /// Wildcards, by their parent domain.
    wildcard: std::collections::HashSet<String>,
}

impl ClientAuthNames {
    pub fn of(tls: &crate::config::TlsSettings) -> Self {
        let mut names = Self::default();
        if !tls.enabled {
            return names;
        }
        for entry in tls.certificates.iter().filter(|c| c.client_auth.is_some()) {
            for name in &entry.names {
                match name.strip_prefix("*.") {
                    Some(parent) => names.wildcard.insert(parent.to_owned()),
                    None => names.exact.insert(name.clone()),
                };
            }
        }
        names
    }

    /// `421` for a request to one of these hosts over a connection without SNI.
    pub fn check(&self, host: Option<&str>, sni: Option<&str>) -> Result<(), HttpError> {
        let (Some(host), None) = (host, sni) else {
            return Ok(());
        };
        let scoped = self.exact.contains(host)
            || host
                .split_once('.')
                .is_some_and(|(_, parent)| self.wildcard.contains(parent));
        if scoped {
            Err(HttpError::MisdirectedRequest)
        } else {
            Ok(())
        }
    }
}

/// Why a route refused the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The route needs a client certificate and the client sent none.
    Missing,
    /// The certificate's subject and SANs are none the route lists.
    NotAllowed,
}

/// Whether a client with `identity` may use a route asking `rule`.
pub fn check(rule: &RouteClientCert, identity: Option<&ClientCertIdentity>) -> Result<(), Refusal> {
    if !rule.require {
        return Ok(());
    }
    let identity = identity.ok_or(Refusal::Missing)?;
    if rule.subjects.is_empty() && rule.sans.is_empty() {
        return Ok(());
    }
    let subject_ok = rule.subjects.iter().any(|s| s == &identity.subject);
    let san_ok = rule
        .sans
        .iter()
        .any(|pattern| identity.sans.iter().any(|san| san_matches(pattern, san)));
    if subject_ok || san_ok {
        Ok(())
    } else {
        Err(Refusal::NotAllowed)
    }
}

/// `san` as [`ClientCertIdentity::sans`] holds it (`DNS:…`, `email:…`, `URI:…`, `IP:…`).
fn san_matches(pattern: &SanRule, san: &str) -> bool {
    let Some((kind, value)) = san.split_once(':') else {
        return false;
    };
    match pattern {
        SanRule::Dns(name) => kind == "DNS" && dns_matches(name, value),
        SanRule::Email(email) => kind == "email" && email.eq_ignore_ascii_case(value),
        SanRule::Uri(uri) => kind == "URI" && uri == value,
        SanRule::Ip(ip) => kind == "IP" && value.parse() == Ok(*ip),
        SanRule::Any(text) => match kind {
            "DNS" => dns_matches(&text.to_ascii_lowercase(), value),
            "email" => text.eq_ignore_ascii_case(value),
            _ => text == value,
        },
    }
}

/// `*.example.com` covers exactly one label, as in certificates.
fn dns_matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => name == pattern,
    }
}

/// Removes inbound identity headers, then sets the verified identity's (the PEM URL-encoded
/// when `pass_pem`).
pub fn set_identity_headers(
    headers: &mut HeaderMap,
    identity: Option<&ClientCertIdentity>,
    pass_pem: bool,
) {
    for name in &HEADERS {
        headers.remove(name);
    }
    let Some(identity) = identity else {
        return;
    };
    // A value a header cannot carry (a control character in a name) is left out rather than
    // forwarded altered.
    let values = identity.header_values.get_or_init(|| {
        let sans = (!identity.sans.is_empty()).then(|| identity.sans.join(", "));
        [
            (SUBJECT, Some(identity.subject.as_str())),
            (SAN, sans.as_deref()),
            (FINGERPRINT, Some(identity.fingerprint.as_str())),
            (SERIAL, Some(identity.serial.as_str())),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, HeaderValue::from_str(value?).ok()?)))
        .collect()
    });
    for (name, value) in values {
        headers.insert(name.clone(), value.clone());
    }
    if pass_pem {
        let pem = identity
            .pem_value
            .get_or_init(|| HeaderValue::from_str(&url_encode(&identity.pem)).ok());
        if let Some(value) = pem {
            headers.insert(PEM, value.clone());
        }
    }
}

/// Percent-encoding of everything but RFC 3986's unreserved characters (nginx's
/// `$ssl_client_escaped_cert`).
fn url_encode(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len() * 2);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> ClientCertIdentity {
        ClientCertIdentity {
            subject: "CN=alice,O=Example".into(),
            sans: vec![
                "DNS:alice.svc.example.com".into(),
                "email:alice@example.com".into(),
            ],
            fingerprint: "ab".repeat(32),
            serial: "1f".into(),
            pem: "-----BEGIN CERTIFICATE-----\nAB+/=\n-----END CERTIFICATE-----\n".into(),
            header_values: Default::default(),
            pem_value: Default::default(),
        }
    }

    fn rule(subjects: &[&str], sans: &[SanRule]) -> RouteClientCert {
        RouteClientCert {
            require: true,
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            sans: sans.to_vec(),
            pass_pem: false,
        }
    }

    #[test]
    fn hosts_with_their_own_client_auth_need_the_sni() {
        let tls = crate::config::load_str(
            "tls:\n  certificates:\n    - pem_file: a.pem\n      names: [secure.test, '*.mtls.test']\n      client_auth: {ca_files: [ca.crt]}\n    - pem_file: b.pem\n      names: [open.test]\n",
            None,
            &Default::default(),
            &|_| None,
        )
        .unwrap()
        .tls;
        let names = ClientAuthNames::of(&tls);
        assert!(names.check(Some("secure.test"), None).is_err());
        assert!(names.check(Some("x.mtls.test"), None).is_err());
        assert!(names
            .check(Some("secure.test"), Some("secure.test"))
            .is_ok());
        assert!(names.check(Some("open.test"), None).is_ok());
        assert!(names.check(None, None).is_ok());
    }

    #[test]
    fn requirement_and_rules() {
        let id = identity();
        assert_eq!(check(&RouteClientCert::default(), None), Ok(()));
        assert_eq!(check(&rule(&[], &[]), None), Err(Refusal::Missing));
        assert_eq!(check(&rule(&[], &[]), Some(&id)), Ok(()));
        assert_eq!(
            check(&rule(&["CN=alice,O=Example"], &[]), Some(&id)),
            Ok(())
        );
        assert_eq!(
            check(&rule(&["CN=bob,O=Example"], &[]), Some(&id)),
            Err(Refusal::NotAllowed)
        );
        let wildcard = SanRule::Dns("*.svc.example.com".into());
        assert_eq!(check(&rule(&[], &[wildcard]), Some(&id)), Ok(()));
        let too_deep = SanRule::Dns("*.example.com".into());
        assert_eq!(
            check(&rule(&[], &[too_deep]), Some(&id)),
            Err(Refusal::NotAllowed),
            "a wildcard covers one label"
        );
        let email = SanRule::Email("ALICE@example.com".into());
        assert_eq!(check(&rule(&[], &[email]), Some(&id)), Ok(()));
        let any = SanRule::Any("alice.svc.example.com".into());
        assert_eq!(check(&rule(&[], &[any]), Some(&id)), Ok(()));
        let ip = SanRule::Ip("10.0.0.1".parse().unwrap());
        assert_eq!(
            check(&rule(&[], &[ip]), Some(&id)),
            Err(Refusal::NotAllowed)
        );
    }

    #[test]
    fn inbound_copies_are_removed_and_the_identity_set() {
        let mut headers = HeaderMap::new();
        for name in &HEADERS {
            headers.insert(name, HeaderValue::from_static("forged"));
        }
        set_identity_headers(&mut headers, None, true);
        assert!(HEADERS.iter().all(|name| !headers.contains_key(name)));

        headers.insert(SUBJECT, HeaderValue::from_static("forged"));
        set_identity_headers(&mut headers, Some(&identity()), false);
        assert_eq!(headers[SUBJECT], "CN=alice,O=Example");
        assert_eq!(
            headers[SAN],
            "DNS:alice.svc.example.com, email:alice@example.com"
        );
        assert_eq!(headers[SERIAL], "1f");
        assert!(!headers.contains_key(PEM));
        set_identity_headers(&mut headers, Some(&identity()), true);
        assert_eq!(
            headers[PEM],
            "-----BEGIN%20CERTIFICATE-----%0AAB%2B%2F%3D%0A-----END%20CERTIFICATE-----%0A"
        );
    }
}
