//! The certificate section: the chain a server sent, judged against the roots, the host name,
//! the calendar and current key and signature strength.

use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use super::findings::{Finding, Status};
use crate::certs::inspect::{chain_in_order, unix_now};
use crate::certs::CertInfo;

const SECTION: &str = "certificate";
const DAY: i64 = 86_400;
/// Fewer days left than this is a warning.
pub const WARN_DAYS: i64 = 30;

/// Findings for `chain` (leaf first, as sent) served for `host`.
pub fn assess(chain: &[CertificateDer<'static>], roots: RootCertStore, host: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    let infos: Vec<CertInfo> = match chain.iter().map(CertInfo::parse).collect() {
        Ok(infos) => infos,
        Err(error) => {
            findings.push(Finding::new(
                SECTION,
                "parse",
                Status::Fail,
                format!("the server sent a certificate that cannot be read: {error}"),
            ));
            return findings;
        }
    };
    let Some(leaf) = infos.first() else {
        findings.push(Finding::new(
            SECTION,
            "chain",
            Status::Fail,
            "the server sent no certificate",
        ));
        return findings;
    };
    let complete = chain_complete(chain, &infos, &roots);
    for check in crate::certs::verify::verify(chain, leaf, false, roots, Some(host), None) {
        let status = if check.ok { Status::Pass } else { Status::Fail };
        findings.push(Finding::new(SECTION, check.check, status, check.detail));
    }

    let days_left = (leaf.not_after - unix_now()).div_euclid(DAY);
    let (status, reason) = if leaf.not_after <= unix_now() {
        (
            Status::Fail,
            format!(
                "expired on {}",
                crate::certs::inspect::format_time(leaf.not_after)
            ),
        )
    } else if days_left < WARN_DAYS {
        (
            Status::Warn,
            format!("{days_left} days left (renew before {WARN_DAYS})"),
        )
    } else {
        (Status::Pass, format!("{days_left} days left"))
    };
    findings.push(Finding::new(SECTION, "expiry", status, reason));

    let (status, reason) = match leaf.key_type.as_str() {
        "RSA" if leaf.key_bits < 2048 => (
            Status::Fail,
            format!("{}: under 2048 bits", leaf.key_description()),
        ),
        "ECDSA" if leaf.key_bits < 256 => (
            Status::Fail,
            format!("{}: under 256 bits", leaf.key_description()),
        ),
        "RSA" | "ECDSA" | "Ed25519" | "Ed448" => (Status::Pass, leaf.key_description()),
        other => (
            Status::Warn,
            format!("{other} key: not one browsers expect (RSA ≥ 2048 or ECDSA)"),
        ),
    };
    findings.push(Finding::new(SECTION, "key", status, reason));

    // Every signature a client checks: all but a self-signed root (whose own is never used).
    let weak_signatures: Vec<String> = infos
        .iter()
        .filter(|info| !info.self_issued)
        .filter(|info| {
            let algorithm = info.signature_algorithm.to_ascii_lowercase();
            algorithm.contains("sha1") || algorithm.contains("md5")
        })
        .map(|info| format!("{} ({})", info.subject, info.signature_algorithm))
        .collect();
    findings.push(if weak_signatures.is_empty() {
        Finding::new(
            SECTION,
            "signature",
            Status::Pass,
            leaf.signature_algorithm.clone(),
        )
    } else {
        Finding::new(
            SECTION,
            "signature",
            Status::Fail,
            format!("broken hash in the chain: {}", weak_signatures.join(", ")),
        )
    });

    let (status, reason) = if chain_in_order(&infos) {
        (
            Status::Pass,
            format!("{} certificate(s), in order", infos.len()),
        )
    } else {
        (
            Status::Warn,
            "out of order: each certificate should be followed by its issuer".to_owned(),
        )
    };
    findings.push(Finding::new(SECTION, "chain order", status, reason));
    let (status, reason) = match complete {
        Ok(reason) => (Status::Pass, reason),
        Err(reason) => (Status::Warn, reason),
    };
    findings.push(Finding::new(SECTION, "chain complete", status, reason));
    findings
}

/// Whether the chain reaches a trust anchor without fetching anything: it ends in a
/// self-issued certificate, or the last certificate's issuer is one of `roots`.
fn chain_complete(
    chain: &[CertificateDer<'static>],
    infos: &[CertInfo],
    roots: &RootCertStore,
) -> Result<String, String> {
    let (Some(last), Some(last_info)) = (chain.last(), infos.last()) else {
        return Err("no certificate".into());
    };
    if last_info.self_issued {
        return Ok("ends in a self-issued certificate (a root, which need not be sent)".into());
    }
    let issuer = x509_parser::parse_x509_certificate(last)
        .map(|(_, cert)| cert.issuer().as_raw().to_vec())
        .unwrap_or_default();
    let issuer_value = der_value(&issuer);
    let anchored = roots
        .roots
        .iter()
        .any(|anchor| anchor.subject.as_ref() == issuer_value || anchor.subject.as_ref() == issuer);
    if anchored {
        Ok(format!(
            "ends at a certificate issued by a trusted root ({})",
            last_info.issuer
        ))
    } else {
        Err(format!(
            "the last certificate's issuer ({}) is neither sent nor a trusted root: send the intermediate, or trust that CA (--cacert)",
            last_info.issuer
        ))
    }
}

/// The contents of a DER TLV (trust anchors keep a name without its SEQUENCE header).
fn der_value(tlv: &[u8]) -> &[u8] {
    let Some(&first) = tlv.get(1) else {
        return tlv;
    };
    let header = if first < 0x80 {
        2
    } else {
        2 + usize::from(first & 0x7F)
    };
    tlv.get(header..).unwrap_or(tlv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::generate::{CertificateAuthority, KeyAlgorithm, Usage};
    use std::time::Duration;

    fn status_of(findings: &[Finding], check: &str) -> Status {
        findings
            .iter()
            .find(|f| f.check == check)
            .map(|f| f.status)
            .unwrap_or_else(|| panic!("no {check}"))
    }

    #[test]
    fn a_leaf_only_chain_is_complete_when_its_issuer_is_trusted() {
        let ca = CertificateAuthority::new(
            "complete test CA",
            Duration::from_secs(86_400),
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
        let leaf = ca
            .issue(
                &["site.test".into()],
                Duration::from_secs(3_600),
                KeyAlgorithm::EcdsaP256,
                Usage::Server,
            )
            .unwrap();
        let chain = vec![leaf.der.clone()];
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let trusted = assess(&chain, roots, "site.test");
        assert_eq!(status_of(&trusted, "chain complete"), Status::Pass);
        assert_eq!(status_of(&trusted, "chain"), Status::Pass);
        assert_eq!(
            status_of(&trusted, "expiry"),
            Status::Warn,
            "an hour left is under 30 days"
        );
        let untrusted = assess(&chain, RootCertStore::empty(), "other.test");
        assert_eq!(status_of(&untrusted, "chain complete"), Status::Warn);
        assert_eq!(status_of(&untrusted, "chain"), Status::Fail);
        assert_eq!(status_of(&untrusted, "host"), Status::Fail);
    }
}
