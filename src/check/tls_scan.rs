//! The protocol and cipher sections: which versions, suites and key-exchange groups a server
//! accepts, found one handshake (or one ClientHello) per question.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use serde::Serialize;

use super::findings::{Finding, Status};
use super::modern;
use super::probe::{self, ProbeError, Protocol, BROAD_SUITES, KNOWN_SUITES};
use super::suites::{KeyExchange, SuiteTraits};

/// Probes in flight at once: fast on loopback, gentle enough for a production server.
const PARALLEL_PROBES: usize = 8;
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

/// Scans `addr` (SNI `server_name`), reporting each step to `progress`.
pub async fn scan(
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<TlsScan, ProbeError> {
    let sni = Some(server_name);
    progress("protocols");
    let legacy = futures_util::future::try_join_all(Protocol::ALL.map(|protocol| async move {
        let answer = probe::probe(addr, sni, protocol, BROAD_SUITES, timeout).await?;
        Ok::<_, ProbeError>((protocol, answer.accepts(protocol)))
    }))
    .await?;
    let tls13 = modern::handshake(
        addr,
        server_name,
        &[&rustls::version::TLS13],
        modern_suites(&rustls::version::TLS13),
        all_groups(),
        timeout,
    )
    .await?
    .is_some();
    let mut scan = TlsScan::default();
    for (protocol, accepted) in &legacy {
        scan.protocols.push(ProtocolSupport {
            protocol: protocol.name(),
            accepted: *accepted,
        });
    }
    scan.protocols.push(ProtocolSupport {
        protocol: TLS13,
        accepted: tls13,
    });

    progress("cipher suites");
    for (protocol, accepted) in legacy {
        if !accepted {
            continue;
        }
        let answers: Vec<Result<Option<u16>, ProbeError>> = stream::iter(KNOWN_SUITES)
            .map(|(code, _)| async move {
                let answer = probe::probe(addr, sni, protocol, &[*code], timeout).await?;
                Ok(answer.accepts(protocol).then_some(*code))
            })
            .buffered(PARALLEL_PROBES)
            .collect()
            .await;
        for answer in answers {
            if let Some(code) = answer? {
                scan.suites.push(AcceptedSuite {
                    protocol: protocol.name(),
                    name: probe::suite_name(code),
                });
            }
        }
    }
    if tls13 {
        for suite in modern::tls13_suites(addr, server_name, timeout).await? {
            scan.suites.push(AcceptedSuite {
                protocol: TLS13,
                name: suite,
            });
        }
    }
    progress("key exchange groups");
    if tls13 || scan.accepts(Protocol::Tls12.name()) {
        scan.groups = modern::key_exchange_groups(addr, server_name, timeout).await?;
    }
    Ok(scan)
}

fn modern_suites(
    version: &'static rustls::SupportedProtocolVersion,
) -> Vec<rustls::SupportedCipherSuite> {
    rustls::crypto::aws_lc_rs::default_provider()
        .cipher_suites
        .into_iter()
        .filter(|s| s.version() == version)
        .collect()
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
    let without_fs = scan.suite_names(|t| t.key_exchange == KeyExchange::Rsa);
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
    findings
}
