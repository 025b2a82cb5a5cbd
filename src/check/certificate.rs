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

    let weak_key = match leaf.key_type.as_str() {
        "RSA" => leaf.key_bits < 2048,
        "ECDSA" => leaf.key_bits < 256,
        _ => false,
    };
    findings.push(Finding::new(
        SECTION,
        "key",
        if weak_key { Status::Fail } else { Status::Pass },
        leaf.key_description(),
    ));

    let algorithm = leaf.signature_algorithm.to_ascii_lowercase();
    let weak_signature = algorithm.contains("sha1") || algorithm.contains("md5");
    findings.push(Finding::new(
        SECTION,
        "signature",
        if weak_signature {
            Status::Fail
        } else {
            Status::Pass
        },
        leaf.signature_algorithm.clone(),
    ));

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
    findings
}
