//! The protocol and cipher sections: which versions, suites and key-exchange groups a server
//! accepts, found one handshake (or one ClientHello) per question.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::findings::{Finding, Status};
use super::modern;
use super::probe::{self, Protocol, BROAD_SUITES, KNOWN_SUITES};
use super::suites::SuiteTraits;

pub const TLS13: &str = "TLS 1.3";

#[derive(Debug, Clone, Serialize)]
pub struct ProtocolSupport {
    pub protocol: &'static str,
    pub accepted: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AcceptedSuite {
    pub protocol: &'static str,
    pub name: String,
}

impl AcceptedSuite {
    pub fn traits(&self) -> SuiteTraits {
        SuiteTraits::of(&self.name)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TlsScan {
    /// SSLv3 to TLS 1.3, oldest first.
    pub protocols: Vec<ProtocolSupport>,
    pub suites: Vec<AcceptedSuite>,
    pub groups: Vec<String>,
    /// The size of the DHE group, when DHE suites are accepted.
    pub dhe_bits: Option<u32>,
    /// Probes that got no answer (timeouts, refused connections), counted as refusals.
    pub unanswered: usize,
}

impl TlsScan {
    /// Distinct names of the accepted suites whose traits satisfy `keep` (a suite accepted at
    /// several versions counts once), sorted.
    pub fn suite_names(&self, keep: impl Fn(&SuiteTraits) -> bool) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .suites
            .iter()
            .filter(|s| keep(&s.traits()))
            .map(|s| s.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    pub fn accepts(&self, protocol: &str) -> bool {
        self.protocols
            .iter()
            .any(|p| p.protocol == protocol && p.accepted)
    }
}

/// Scans `addr` (SNI `server_name`), reporting each step to `progress`. A probe that gets no
/// answer counts as refused and is tallied in `unanswered`: one dropped packet must not
/// void the whole report.
pub async fn scan(
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> TlsScan {
    let sni = Some(server_name);
    let mut scan = TlsScan::default();
    progress("protocols");
    let legacy = futures_util::future::join_all(Protocol::ALL.map(|protocol| async move {
        let answer = probe::probe(addr, sni, protocol, BROAD_SUITES, timeout).await;
        (protocol, answer)
    }))
    .await;
    let tls13 = modern::handshake(
        addr,
        server_name,
        &[&rustls::version::TLS13],
        modern::suites_of(&rustls::version::TLS13),
        all_groups(),
        timeout,
    )
    .await;
    let mut accepted_legacy = Vec::new();
    for (protocol, answer) in legacy {
        let accepted = match answer {
            Ok(answer) => answer.accepts(protocol),
            Err(_) => {
                scan.unanswered += 1;
                false
            }
        };
        if accepted {
            accepted_legacy.push(protocol);
        }
        scan.protocols.push(ProtocolSupport {
            protocol: protocol.name(),
            accepted,
        });
    }
    let tls13 = tls13.unwrap_or_else(|_| {
        scan.unanswered += 1;
        false
    });
    scan.protocols.push(ProtocolSupport {
        protocol: TLS13,
        accepted: tls13,
    });

    progress("cipher suites");
    for protocol in &accepted_legacy {
        let (codes, unanswered) = probe::accepted_suites(addr, sni, *protocol, timeout).await;
        scan.unanswered += unanswered;
        for code in codes {
            scan.suites.push(AcceptedSuite {
                protocol: protocol.name(),
                name: probe::suite_name(code),
            });
        }
    }
    if tls13 {
        match modern::tls13_suites(addr, server_name, timeout).await {
            Ok(suites) => scan
                .suites
                .extend(suites.into_iter().map(|name| AcceptedSuite {
                    protocol: TLS13,
                    name,
                })),
            Err(_) => scan.unanswered += 1,
        }
    }

    progress("key exchange groups");
    if tls13 || scan.accepts(Protocol::Tls12.name()) {
        match modern::key_exchange_groups(addr, server_name, timeout).await {
            Ok(groups) => scan.groups = groups,
            Err(_) => scan.unanswered += 1,
        }
    }
    // The DHE group size, from the ServerKeyExchange of a handshake offering only the
    // accepted DHE suites at the newest accepted version before 1.3.
    let dhe: Vec<u16> = KNOWN_SUITES
        .iter()
        .filter(|(_, name)| name.contains("_DHE_") && scan.suites.iter().any(|s| s.name == *name))
        .map(|(code, _)| *code)
        .collect();
    if let (false, Some(protocol)) = (dhe.is_empty(), accepted_legacy.last()) {
        match probe::exchange(addr, sni, *protocol, &dhe, true, timeout).await {
            Ok(flight) => scan.dhe_bits = flight.dh_bits,
            Err(_) => scan.unanswered += 1,
        }
    }
    scan
}

/// The newest version before TLS 1.3 the scan saw accepted.
pub fn newest_legacy(scan: &TlsScan) -> Option<Protocol> {
    Protocol::ALL
        .into_iter()
        .rev()
        .find(|p| scan.accepts(p.name()))
}

fn all_groups() -> Vec<&'static dyn rustls::crypto::SupportedKxGroup> {
    rustls::crypto::aws_lc_rs::ALL_KX_GROUPS.to_vec()
}

/// The protocol, cipher and key-exchange findings.
pub fn findings(scan: &TlsScan) -> Vec<Finding> {
    let mut findings = Vec::new();
    let modern = scan.accepts(TLS13) || scan.accepts(Protocol::Tls12.name());
    for support in &scan.protocols {
        let (status, reason) = match (support.protocol, support.accepted) {
            ("SSLv3", true) => (
                Status::Fail,
                "accepted: SSLv3 is broken (POODLE); turn it off",
            ),
            ("TLS 1.0" | "TLS 1.1", true) => (
                Status::Fail,
                "accepted: deprecated since 2021 (RFC 8996); turn it off",
            ),
            (_, false) if support.protocol == TLS13 => (
                Status::Warn,
                "refused: TLS 1.3 is faster (one round trip) and always forward secret; enable it",
            ),
            ("TLS 1.2", false) if modern => (
                Status::Pass,
                "refused (TLS 1.3 only: clients older than about 2018 cannot connect)",
            ),
            ("TLS 1.2", false) => (Status::Fail, "refused, and TLS 1.3 too: no modern protocol"),
            (_, true) => (Status::Pass, "accepted"),
            (_, false) => (Status::Pass, "refused"),
        };
        findings.push(Finding::new("protocols", support.protocol, status, reason));
    }

    for suite in &scan.suites {
        let traits = suite.traits();
        let (status, reason) = match traits.weakness() {
            None => (
                Status::Pass,
                format!("{} (forward secret, AEAD, {}-bit)", suite.name, traits.bits),
            ),
            Some(weakness) if traits.is_broken() => {
                (Status::Fail, format!("{}: {weakness}", suite.name))
            }
            Some(weakness) => (Status::Warn, format!("{}: {weakness}", suite.name)),
        };
        findings.push(Finding::new("ciphers", suite.protocol, status, reason));
    }
    let without_fs = scan.suite_names(|t| !t.forward_secret());
    let (status, reason) = if scan.suites.is_empty() {
        (Status::Fail, "no cipher suite accepted".to_owned())
    } else if without_fs.is_empty() {
        (
            Status::Pass,
            "every accepted suite uses ephemeral key exchange".to_owned(),
        )
    } else if scan.suite_names(|_| true).len() == without_fs.len() {
        (
            Status::Fail,
            "no accepted suite is forward secret: recorded traffic can be decrypted once the key leaks".to_owned(),
        )
    } else {
        (
            Status::Warn,
            format!(
                "{} suite(s) without forward secrecy accepted: {}",
                without_fs.len(),
                without_fs.join(", ")
            ),
        )
    };
    findings.push(Finding::new("ciphers", "forward secrecy", status, reason));

    let (status, reason) = if scan.groups.is_empty() {
        (
            Status::Warn,
            "no elliptic-curve group accepted through TLS 1.2 or 1.3".to_owned(),
        )
    } else if scan.groups.iter().any(|g| g.contains("MLKEM")) {
        (
            Status::Pass,
            format!("{} (post-quantum hybrid offered)", scan.groups.join(", ")),
        )
    } else {
        (
            Status::Warn,
            format!(
                "{}: no post-quantum hybrid (X25519MLKEM768), so recorded traffic is exposed to a future quantum computer",
                scan.groups.join(", ")
            ),
        )
    };
    findings.push(Finding::new("key exchange", "groups", status, reason));
    if let Some(bits) = scan.dhe_bits {
        let (status, reason) = match bits {
            0..=1023 => (
                Status::Fail,
                format!("{bits}-bit DHE group: breakable (Logjam); use 2048 bits or drop DHE"),
            ),
            1024..=2047 => (
                Status::Warn,
                format!("{bits}-bit DHE group: below 2048 bits"),
            ),
            _ => (Status::Pass, format!("{bits}-bit DHE group")),
        };
        findings.push(Finding::new("key exchange", "DHE", status, reason));
    }
    if scan.unanswered > 0 {
        findings.push(Finding::new(
            "protocols",
            "unanswered probes",
            Status::Warn,
            format!(
                "{} probe(s) got no answer (timeouts or refused connections) and count as refused: a firewall or rate limit may hide accepted suites",
                scan.unanswered
            ),
        ));
    }
    findings
}
