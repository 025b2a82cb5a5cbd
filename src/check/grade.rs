//! The grade, after SSL Labs' published rating guide: a score from protocol support, key
//! exchange and cipher strength, then caps for known weaknesses, T for trust problems, and A+
//! for a clean A with long HSTS. Every lost point is given a reason.

use serde::Serialize;

use super::suites::{CipherKind, KeyExchange};
use super::tls_scan::{TlsScan, TLS13};

/// The rules, printed by `tlsgate check --help`.
pub const RULES: &str = "\
Grading (after SSL Labs' rating guide):
  score = 30% protocol + 30% key exchange + 40% cipher strength
    protocol: mean of the best and worst accepted version
              (TLS 1.3/1.2 100, TLS 1.1 95, TLS 1.0 90, SSLv3 80)
    key exchange: the weaker of the certificate key and the weakest accepted key exchange,
              in RSA-equivalent bits (<512 0, <1024 40, <2048 80, <4096 90, else 100;
              P-256, X25519 and Ed25519 count as 3072, P-384 as 7680)
    cipher strength: mean of the strongest and weakest accepted suite
              (0 bits 0, <128 20, <256 80, 256 100)
  letter: A >= 80, B >= 65, C >= 50, D >= 35, E >= 20, else F
  caps:
    F   SSLv3, a NULL, EXPORT, DES or anonymous suite, an RSA key or DHE group < 1024 bits,
        or neither TLS 1.2 nor 1.3
    C   RC4 or 3DES accepted
    B   TLS 1.0 or 1.1 accepted, no forward-secret suite, or an RSA key or DHE group < 2048 bits
    A-  a suite without forward secrecy, a CBC suite, or no TLS 1.3
    T   untrusted, expired or wrong-host certificate, or a SHA-1/MD5 signature
        (unless it is F anyway; the grade it would have with a trusted certificate is shown
        too; --insecure ignores trust)
  A+  an A with none of the above, and HSTS with max-age >= 1 year";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Grade {
    T,
    F,
    E,
    D,
    C,
    B,
    #[serde(rename = "A-")]
    AMinus,
    A,
    #[serde(rename = "A+")]
    APlus,
}

impl Grade {
    pub fn name(self) -> &'static str {
        match self {
            Grade::T => "T",
            Grade::F => "F",
            Grade::E => "E",
            Grade::D => "D",
            Grade::C => "C",
            Grade::B => "B",
            Grade::AMinus => "A-",
            Grade::A => "A",
            Grade::APlus => "A+",
        }
    }

    fn from_score(score: u32) -> Grade {
        match score {
            80.. => Grade::A,
            65.. => Grade::B,
            50.. => Grade::C,
            35.. => Grade::D,
            20.. => Grade::E,
            _ => Grade::F,
        }
    }
}

impl std::fmt::Display for Grade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Grade {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            Grade::APlus,
            Grade::A,
            Grade::AMinus,
            Grade::B,
            Grade::C,
            Grade::D,
            Grade::E,
            Grade::F,
        ]
        .into_iter()
        .find(|g| g.name().eq_ignore_ascii_case(text))
        .ok_or_else(|| format!("`{text}`: expected one of A+, A, A-, B, C, D, E, F"))
    }
}

/// What the grade is computed from, gathered by the sections.
#[derive(Debug, Clone)]
pub struct GradeInput<'a> {
    pub scan: &'a TlsScan,
    /// The leaf's key: type (RSA, ECDSA, Ed25519…) and size in bits.
    pub key_type: String,
    pub key_bits: u32,
    /// Trust problems (chain, host, expiry, signature), each a reason; empty when trusted.
    pub trust_problems: Vec<String>,
    pub hsts: HstsSeen,
}

/// What the HTTPS response said about HSTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HstsSeen {
    MaxAge(u64),
    Missing,
    /// The HTTPS request failed, so the header could not be seen.
    NotMeasured,
}

#[derive(Debug, Clone, Serialize)]
pub struct GradeResult {
    pub grade: Grade,
    pub score: u32,
    /// With a T: the grade the server would get with a trusted certificate.
    pub ignoring_trust: Option<Grade>,
    /// Every reason a point or a letter was lost.
    pub reasons: Vec<String>,
}

fn protocol_score(protocol: &str) -> u32 {
    match protocol {
        "SSLv3" => 80,
        "TLS 1.0" => 90,
        "TLS 1.1" => 95,
        _ => 100,
    }
}

fn strength_score(rsa_bits: u32) -> u32 {
    match rsa_bits {
        0..=511 => 0,
        512..=1023 => 40,
        1024..=2047 => 80,
        2048..=4095 => 90,
        _ => 100,
    }
}

fn cipher_score(bits: u16) -> u32 {
    match bits {
        0 => 0,
        1..=127 => 20,
        128..=255 => 80,
        _ => 100,
    }
}

/// RSA-equivalent strength of a certificate key.
fn key_rsa_bits(key_type: &str, bits: u32) -> u32 {
    match key_type {
        "RSA" => bits,
        "Ed25519" => 3072,
        "Ed448" => 7680,
        _ => match bits {
            0..=255 => bits * 6,
            256..=383 => 3072,
            384..=520 => 7680,
            _ => 15360,
        },
    }
}

/// RSA-equivalent strength of a key-exchange group, by rustls' name.
fn group_rsa_bits(group: &str) -> u32 {
    if group.contains("MLKEM") || group.contains("384") || group.contains("521") {
        7680
    } else {
        3072
    }
}

pub fn grade(input: &GradeInput) -> GradeResult {
    let scan = input.scan;
    let mut reasons = Vec::new();
    let mut cap = Grade::APlus;
    let mut limit = |grade: Grade, reason: String, reasons: &mut Vec<String>| {
        cap = cap.min(grade);
        reasons.push(format!("capped at {grade}: {reason}"));
    };

    let accepted: Vec<&str> = scan
        .protocols
        .iter()
        .filter(|p| p.accepted)
        .map(|p| p.protocol)
        .collect();
    let protocol = match (accepted.first(), accepted.last()) {
        (Some(worst), Some(best)) => {
            let score = (protocol_score(worst) + protocol_score(best)) / 2;
            if score < 100 {
                reasons.push(format!(
                    "protocol {score}/100: the oldest accepted version is {worst}"
                ));
            }
            score
        }
        _ => 0,
    };

    let key_bits = key_rsa_bits(&input.key_type, input.key_bits);
    let mut exchange_bits = key_bits;
    let mut exchange_reason = if input.key_type.is_empty() {
        "no certificate key could be read".to_owned()
    } else if input.key_type == "RSA" {
        format!("the certificate key is RSA {key_bits}")
    } else {
        format!(
            "the certificate key ({} {}) ≈ RSA {key_bits}",
            input.key_type, input.key_bits
        )
    };
    let mut exchanges: Vec<(u32, String)> = scan
        .groups
        .iter()
        .map(|group| {
            let bits = group_rsa_bits(group);
            (bits, format!("key-exchange group {group} ≈ RSA {bits}"))
        })
        .collect();
    if let Some(bits) = scan.dhe_bits {
        exchanges.push((bits, format!("the DHE group has {bits} bits")));
    }
    for (bits, reason) in exchanges {
        if strength_score(bits) < strength_score(exchange_bits) {
            exchange_bits = bits;
            exchange_reason = reason;
        }
    }
    let key_exchange = strength_score(exchange_bits);
    if key_exchange < 100 {
        reasons.push(format!(
            "key exchange {key_exchange}/100: {exchange_reason}"
        ));
    }

    let traits: Vec<_> = scan.suites.iter().map(|s| (s, s.traits())).collect();
    let strongest = traits.iter().map(|(_, t)| t.bits).max().unwrap_or(0);
    let weakest = traits.iter().min_by_key(|(_, t)| t.bits);
    let cipher = match weakest {
        Some((suite, t)) => {
            let score = (cipher_score(strongest) + cipher_score(t.bits)) / 2;
            if score < 100 {
                reasons.push(format!(
                    "cipher strength {score}/100: the weakest accepted suite is {}-bit ({})",
                    t.bits, suite.name
                ));
            }
            score
        }
        None => 0,
    };
    let score = (30 * protocol + 30 * key_exchange + 40 * cipher) / 100;
    let by_score = Grade::from_score(score);
    if by_score < Grade::A {
        reasons.push(format!("score {score}/100 gives {by_score}"));
    }

    let accepts = |name: &str| scan.accepts(name);
    let any_kind = |kinds: &[CipherKind]| traits.iter().any(|(_, t)| kinds.contains(&t.kind));
    let rsa_key = input.key_type == "RSA";
    if accepts("SSLv3") {
        limit(Grade::F, "SSLv3 accepted".into(), &mut reasons);
    }
    if any_kind(&[CipherKind::Null, CipherKind::Export, CipherKind::Des]) {
        limit(
            Grade::F,
            "a NULL, EXPORT or DES suite accepted".into(),
            &mut reasons,
        );
    }
    if traits
        .iter()
        .any(|(_, t)| t.key_exchange == KeyExchange::Anonymous)
    {
        limit(
            Grade::F,
            "an anonymous suite accepted (no server authentication)".into(),
            &mut reasons,
        );
    }
    match scan.dhe_bits {
        Some(bits) if bits < 1024 => limit(Grade::F, format!("{bits}-bit DHE group"), &mut reasons),
        Some(bits) if bits < 2048 => limit(Grade::B, format!("{bits}-bit DHE group"), &mut reasons),
        _ => {}
    }
    if rsa_key && input.key_bits < 1024 {
        limit(
            Grade::F,
            format!("RSA key of {} bits", input.key_bits),
            &mut reasons,
        );
    }
    if !accepts("TLS 1.2") && !accepts(TLS13) {
        limit(
            Grade::F,
            "neither TLS 1.2 nor TLS 1.3 accepted".into(),
            &mut reasons,
        );
    }
    if any_kind(&[CipherKind::Rc4, CipherKind::TripleDes]) {
        limit(Grade::C, "RC4 or 3DES accepted".into(), &mut reasons);
    }
    for old in ["TLS 1.0", "TLS 1.1"] {
        if accepts(old) {
            limit(Grade::B, format!("{old} accepted"), &mut reasons);
        }
    }
    let without_fs = scan.suite_names(|t| !t.forward_secret()).len();
    if !traits.is_empty() && without_fs == scan.suite_names(|_| true).len() {
        limit(Grade::B, "no forward-secret suite".into(), &mut reasons);
    } else if without_fs > 0 {
        limit(
            Grade::AMinus,
            format!("{without_fs} suite(s) without forward secrecy"),
            &mut reasons,
        );
    }
    if rsa_key && (1024..2048).contains(&input.key_bits) {
        limit(
            Grade::B,
            format!("RSA key of {} bits (2048 is the minimum)", input.key_bits),
            &mut reasons,
        );
    }
    let cbc = scan.suite_names(|t| t.kind == CipherKind::Cbc).len();
    if cbc > 0 {
        limit(
            Grade::AMinus,
            format!("{cbc} CBC suite(s) accepted"),
            &mut reasons,
        );
    }
    if !accepts(TLS13) {
        limit(Grade::AMinus, "TLS 1.3 not accepted".into(), &mut reasons);
    }

    let mut trusted_grade = by_score.min(cap);
    let long_hsts = match input.hsts {
        HstsSeen::MaxAge(age) if age >= super::http::HSTS_MIN_AGE => true,
        HstsSeen::MaxAge(age) => {
            reasons.push(format!("no A+: HSTS max-age={age} is under a year"));
            false
        }
        HstsSeen::Missing => {
            reasons.push("no A+: no HSTS header".into());
            false
        }
        HstsSeen::NotMeasured => {
            reasons.push("no A+: HSTS not measured (the HTTPS request failed)".into());
            false
        }
    };
    if trusted_grade == Grade::A && long_hsts {
        trusted_grade = Grade::APlus;
    }
    for problem in &input.trust_problems {
        reasons.push(format!("certificate not trusted: {problem}"));
    }
    let (grade, ignoring_trust) = if input.trust_problems.is_empty() || trusted_grade == Grade::F {
        (trusted_grade, None)
    } else {
        (Grade::T, Some(trusted_grade))
    };
    GradeResult {
        grade,
        score,
        ignoring_trust,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::tls_scan::{AcceptedSuite, ProtocolSupport};

    fn scan(
        protocols: &[&'static str],
        suites: &[(&'static str, &str)],
        groups: &[&str],
    ) -> TlsScan {
        TlsScan {
            protocols: ["SSLv3", "TLS 1.0", "TLS 1.1", "TLS 1.2", TLS13]
                .into_iter()
                .map(|protocol| ProtocolSupport {
                    protocol,
                    accepted: protocols.contains(&protocol),
                })
                .collect(),
            suites: suites
                .iter()
                .map(|(protocol, name)| AcceptedSuite {
                    protocol,
                    name: (*name).to_owned(),
                })
                .collect(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..TlsScan::default()
        }
    }

    fn input(scan: &TlsScan, hsts: Option<u64>) -> GradeInput<'_> {
        let hsts = hsts.map_or(HstsSeen::Missing, HstsSeen::MaxAge);
        GradeInput {
            scan,
            key_type: "ECDSA".into(),
            key_bits: 256,
            trust_problems: vec![],
            hsts,
        }
    }

    #[test]
    fn modern_server_with_hsts_gets_a_plus_and_without_it_an_a() {
        let modern = scan(
            &["TLS 1.2", TLS13],
            &[
                ("TLS 1.2", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
                (TLS13, "TLS_AES_256_GCM_SHA384"),
            ],
            &["X25519MLKEM768", "X25519"],
        );
        let result = grade(&input(&modern, Some(31_536_000)));
        assert_eq!(result.grade, Grade::APlus, "{:?}", result.reasons);
        assert_eq!(result.score, 93);
        let result = grade(&input(&modern, None));
        assert_eq!(result.grade, Grade::A);
        assert!(result.reasons.iter().any(|r| r.contains("no HSTS")));
    }

    #[test]
    fn weaknesses_cap_the_grade_with_a_reason_each() {
        let legacy = scan(
            &["TLS 1.0", "TLS 1.1", "TLS 1.2"],
            &[
                ("TLS 1.0", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"),
                ("TLS 1.2", "TLS_RSA_WITH_AES_128_CBC_SHA"),
                ("TLS 1.2", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
            ],
            &["X25519"],
        );
        let result = grade(&GradeInput {
            key_type: "RSA".into(),
            key_bits: 2048,
            ..input(&legacy, Some(31_536_000))
        });
        assert_eq!(result.grade, Grade::B, "{:?}", result.reasons);
        for expected in [
            "TLS 1.0 accepted",
            "TLS 1.1 accepted",
            "without forward secrecy",
            "CBC",
            "TLS 1.3 not accepted",
            "oldest accepted version is TLS 1.0",
        ] {
            assert!(
                result.reasons.iter().any(|r| r.contains(expected)),
                "{expected}: {:?}",
                result.reasons
            );
        }
        let triple_des = scan(
            &["TLS 1.2"],
            &[("TLS 1.2", "TLS_RSA_WITH_3DES_EDE_CBC_SHA")],
            &[],
        );
        assert_eq!(grade(&input(&triple_des, None)).grade, Grade::C);
        let ssl3 = scan(
            &["SSLv3", "TLS 1.2"],
            &[("TLS 1.2", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")],
            &[],
        );
        assert_eq!(grade(&input(&ssl3, None)).grade, Grade::F);
    }

    #[test]
    fn trust_problems_give_t_with_the_grade_it_would_have() {
        let modern = scan(&[TLS13], &[(TLS13, "TLS_AES_128_GCM_SHA256")], &["X25519"]);
        let result = grade(&GradeInput {
            trust_problems: vec!["expired".into()],
            ..input(&modern, Some(31_536_000))
        });
        assert_eq!(result.grade, Grade::T);
        assert_eq!(result.ignoring_trust, Some(Grade::APlus));
        assert!(Grade::T < Grade::F && Grade::AMinus < Grade::A && Grade::B < Grade::AMinus);
        assert_eq!("a-".parse::<Grade>(), Ok(Grade::AMinus));
    }
}
