//! The client-side deployment checker behind `tlsgate check`. It never depends on `server`:
//! it grades any HTTPS/WSS deployment, not only tlsgate.

pub mod certificate;
pub mod findings;
pub mod grade;
pub mod http;
pub mod modern;
pub mod probe;
pub mod suites;
pub mod target;
pub mod tls_scan;
pub mod websocket;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("rustls offers no TLS client for these settings")]
    NoTlsClient,
    #[error("HTTP: {0}")]
    Http(String),
    #[error(transparent)]
    Roots(#[from] crate::certs::CertError),
    #[error(transparent)]
    Probe(#[from] probe::ProbeError),
}

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use serde::Serialize;

use findings::{Finding, Status};
use grade::{GradeInput, GradeResult};
use target::Target;
use tls_scan::TlsScan;

/// Everything `tlsgate check` was asked to do.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub url: String,
    pub resolve: Option<String>,
    pub cacert: Option<PathBuf>,
    /// Report trust problems as warnings and leave them out of the grade.
    pub insecure: bool,
    pub headers: Vec<(String, String)>,
    pub token: Option<String>,
    /// The plain-HTTP port; `None`: 80, or 8080 when HTTPS is on 8443.
    pub http_port: Option<u16>,
    pub websocket: Option<websocket::WsOptions>,
    /// Per network step.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    pub address: String,
    #[serde(flatten)]
    pub grade: GradeResult,
    pub findings: Vec<Finding>,
    pub tls: TlsScan,
    pub elapsed_ms: u128,
}

impl Report {
    pub fn failures(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.status == Status::Fail)
            .count()
    }
}

/// Checks, in this order of report: certificate, protocols, ciphers, key exchange, HTTP,
/// WebSocket. The network steps run side by side; `progress` hears each one start.
pub async fn run(
    options: &CheckOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Report, CheckError> {
    let started = Instant::now();
    let target = Target::new(&options.url, options.resolve.as_deref())?;
    let roots = crate::certs::verify::load_roots(options.cacert.as_deref())?;
    progress("certificate");
    // One connection: its chain is the certificate section's, and it carries the HTTP check.
    let config =
        modern::default_client_config(&[b"h2", b"http/1.1"]).ok_or(CheckError::NoTlsClient)?;
    let tls = modern::connect(target.addr, &target.host, config, options.timeout).await?;
    let mut chain = tls
        .as_ref()
        .map(|tls| crate::certs::remote::peer_chain(tls.get_ref().1))
        .unwrap_or_default();
    let http_port = options
        .http_port
        .unwrap_or_else(|| http::default_http_port(target.port));
    let mut headers = options.headers.clone();
    if let Some(token) = &options.token {
        headers.push(("authorization".into(), format!("Bearer {token}")));
    }

    let scan = tls_scan::scan(target.addr, &target.host, options.timeout, progress);
    let web = async {
        let answer = match tls {
            Some(tls) => http::fetch(&target, tls, &headers, options.timeout).await,
            None => Err(CheckError::Http("the TLS handshake failed".into())),
        };
        let redirect = http::redirect_finding(&target, http_port, options.timeout).await;
        (answer, redirect)
    };
    let ws = async {
        match &options.websocket {
            Some(ws) => websocket::check(&target, ws, http_port, progress).await,
            None => Vec::new(),
        }
    };
    let (scan, (answer, redirect), ws_findings) = tokio::join!(scan, web, ws);
    if chain.is_empty() {
        // rustls could not complete a handshake (an old or CBC-only server): read the chain
        // from a legacy handshake's Certificate message, which TLS ≤ 1.2 sends in clear.
        if let Some(protocol) = tls_scan::newest_legacy(&scan) {
            let sni = Some(target.host.as_str());
            if let Ok(flight) = probe::exchange(
                target.addr,
                sni,
                protocol,
                probe::BROAD_SUITES,
                true,
                options.timeout,
            )
            .await
            {
                chain = flight
                    .certificates
                    .into_iter()
                    .map(CertificateDer::from)
                    .collect();
            }
        }
    }

    let mut findings = if chain.is_empty() {
        vec![Finding::new(
            "certificate",
            "chain",
            Status::Fail,
            "not read: no TLS 1.2 or 1.3 handshake with a modern suite succeeded",
        )]
    } else {
        certificate::assess(&chain, roots, &target.host)
    };
    let mut trust_problems = Vec::new();
    for finding in &mut findings {
        let trust = matches!(
            finding.check,
            "chain" | "host" | "expiry" | "signature" | "parse"
        );
        if trust && finding.status == Status::Fail {
            if options.insecure {
                finding.status = Status::Warn;
                finding.reason.push_str(" (ignored: --insecure)");
            } else {
                trust_problems.push(format!("{}: {}", finding.check, finding.reason));
            }
        }
    }
    findings.extend(tls_scan::findings(&scan));

    let hsts = match &answer {
        Ok(answer) => {
            findings.extend(http::findings(answer, &target.path, target.path_given));
            answer.hsts().map_or(grade::HstsSeen::Missing, |h| {
                grade::HstsSeen::MaxAge(h.max_age)
            })
        }
        Err(error) => {
            findings.push(Finding::new(
                "http",
                "response",
                Status::Fail,
                error.to_string(),
            ));
            grade::HstsSeen::NotMeasured
        }
    };
    findings.push(redirect);
    findings.extend(ws_findings);

    let (key_type, key_bits) = chain
        .first()
        .and_then(|leaf| crate::certs::CertInfo::parse(leaf).ok())
        .map(|info| (info.key_type, info.key_bits))
        .unwrap_or_default();
    let grade = grade::grade(&GradeInput {
        scan: &scan,
        key_type,
        key_bits,
        trust_problems,
        hsts,
    });
    Ok(Report {
        url: options.url.clone(),
        address: target.addr.to_string(),
        grade,
        findings,
        tls: scan,
        elapsed_ms: started.elapsed().as_millis(),
    })
}
