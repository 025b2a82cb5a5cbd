//! The HTTP section: HTTP/2 through ALPN, the response to the checked path with its security
//! headers, and what the plain-HTTP port does with the same path.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::findings::{Finding, Status};
use super::target::Target;
use super::CheckError;

const SECTION: &str = "http";
/// A year, the HSTS max-age browsers' preload lists and SSL Labs ask for.
pub const HSTS_MIN_AGE: u64 = 31_536_000;
/// Appended to the redirect probe's query so a kept query is told apart from a default one.
const MARKER: &str = "tlsgate-check=1";

/// What the HTTPS response said.
#[derive(Debug, Clone, Serialize)]
pub struct HttpsAnswer {
    pub alpn: Option<String>,
    pub status: u16,
    #[serde(skip)]
    pub headers: HeaderMap,
}

/// The parsed Strict-Transport-Security header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Hsts {
    pub max_age: u64,
    pub include_subdomains: bool,
    pub preload: bool,
}

impl Hsts {
    pub fn parse(value: &str) -> Option<Hsts> {
        let mut hsts = Hsts::default();
        let mut has_max_age = false;
        for directive in value.split(';').map(str::trim) {
            let (name, argument) = directive.split_once('=').unwrap_or((directive, ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "max-age" => {
                    hsts.max_age = argument.trim().trim_matches('"').parse().ok()?;
                    has_max_age = true;
                }
                "includesubdomains" => hsts.include_subdomains = true,
                "preload" => hsts.preload = true,
                _ => {}
            }
        }
        has_max_age.then_some(hsts)
    }
}

impl HttpsAnswer {
    /// The Strict-Transport-Security header, when sent and valid.
    pub fn hsts(&self) -> Option<Hsts> {
        header(&self.headers, "strict-transport-security").and_then(Hsts::parse)
    }
}

/// GET `target.path` on `tls`, a connection that offered h2 and http/1.1 through ALPN.
pub async fn fetch(
    target: &Target,
    tls: TlsStream<TcpStream>,
    extra_headers: &[(String, String)],
    timeout: Duration,
) -> Result<HttpsAnswer, CheckError> {
    let alpn = tls
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let h2 = alpn.as_deref() == Some("h2");
    let authority = target.authority(target.port, 443);
    // HTTP/2 takes the absolute URI (:scheme, :authority); HTTP/1.1 the origin form plus Host,
    // as browsers send it (some servers refuse an absolute request target).
    let mut builder = if h2 {
        Request::get(format!("https://{authority}{}", target.path))
    } else {
        Request::get(target.path.as_str()).header(http::header::HOST, &authority)
    };
    builder = builder.header(
        http::header::USER_AGENT,
        concat!("tlsgate-check/", env!("CARGO_PKG_VERSION")),
    );
    for (name, value) in extra_headers {
        builder = builder.header(name, value);
    }
    let request = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| CheckError::Http(format!("cannot build the request: {e}")))?;
    let exchange = async {
        let io = TokioIo::new(tls);
        let response = if h2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(connection);
            sender.send_request(request).await?
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(connection);
            sender.send_request(request).await?
        };
        // The head is what is judged; the body (maybe a stream) is not read.
        Ok::<_, hyper::Error>((response.status().as_u16(), response.headers().clone()))
    };
    let (status, headers) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| CheckError::Http(format!("no HTTP answer within {timeout:?}")))?
        .map_err(|e| CheckError::Http(e.to_string()))?;
    Ok(HttpsAnswer {
        alpn,
        status,
        headers,
    })
}

/// What the plain-HTTP port answered to the same path.
#[derive(Debug, Clone, Serialize)]
pub enum PlainAnswer {
    Refused(String),
    Answered {
        status: u16,
        location: Option<String>,
    },
}

/// Sends `request_headers` (plus Host) for `path` to the plain-HTTP port.
pub async fn plain_request(
    addr: SocketAddr,
    host: &str,
    path: &str,
    upgrade_to_websocket: bool,
    timeout: Duration,
) -> PlainAnswer {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection.with_upgrades());
        let mut builder = Request::get(path).header(http::header::HOST, host);
        if upgrade_to_websocket {
            builder = builder
                .header(http::header::CONNECTION, "Upgrade")
                .header(http::header::UPGRADE, "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGxzZ2F0ZSBjaGVjayBrZXk=");
        }
        let request = builder
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let location = response
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok::<_, String>(PlainAnswer::Answered {
            status: response.status().as_u16(),
            location,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(reason)) => PlainAnswer::Refused(reason),
        Err(_) => PlainAnswer::Refused(format!("no answer within {timeout:?}")),
    }
}

/// The plain-HTTP port to try: 80, or 8080 when HTTPS is on the development port 8443.
pub fn default_http_port(https_port: u16) -> u16 {
    if https_port == 8443 {
        8080
    } else {
        80
    }
}

/// The redirect probe: the plain-HTTP port must send the same path and query to HTTPS.
pub async fn redirect_finding(target: &Target, http_port: u16, timeout: Duration) -> Finding {
    let separator = if target.path.contains('?') { '&' } else { '?' };
    let path = format!("{}{separator}{MARKER}", target.path);
    let addr = SocketAddr::new(target.addr.ip(), http_port);
    let answer = plain_request(
        addr,
        &target.authority(http_port, 80),
        &path,
        false,
        timeout,
    )
    .await;
    let expected = format!("https://{}{path}", target.authority(target.port, 443));
    let (status, reason) = match answer {
        PlainAnswer::Refused(reason) => (
            Status::Warn,
            format!("nothing answers on port {http_port} ({reason}): visitors typing http:// get an error instead of a redirect"),
        ),
        PlainAnswer::Answered { status, location } => {
            let redirect = (300..400).contains(&status);
            match location {
                Some(location) if redirect && location == expected => {
                    if status == 301 || status == 308 {
                        (Status::Pass, format!("port {http_port}: {status} to {location} (path and query kept)"))
                    } else {
                        (Status::Warn, format!("port {http_port}: {status} to {location}: a temporary redirect is not cached; use 301 or 308"))
                    }
                }
                Some(location) if redirect && location.starts_with("https://") => (
                    Status::Warn,
                    format!("port {http_port}: {status} to {location}, expected {expected} (path, query or port lost)"),
                ),
                Some(location) if redirect => (
                    Status::Fail,
                    format!("port {http_port}: {status} to {location}, which is not HTTPS"),
                ),
                _ if status < 300 => (
                    Status::Fail,
                    format!("port {http_port} serves the page over plain HTTP ({status}) instead of redirecting to HTTPS"),
                ),
                _ => (
                    Status::Warn,
                    format!("port {http_port} answers {status} without a redirect: safe, but visitors typing http:// are not sent to HTTPS"),
                ),
            }
        }
    };
    Finding::new(SECTION, "HTTP redirect", status, reason)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Findings for the HTTPS answer. `path_given`: the operator named a path, so it must answer.
pub fn findings(answer: &HttpsAnswer, path: &str, path_given: bool) -> Vec<Finding> {
    let mut findings = Vec::new();
    let (status, reason) = match answer.alpn.as_deref() {
        Some("h2") => (Status::Pass, "HTTP/2 negotiated through ALPN".to_owned()),
        Some(other) => (
            Status::Warn,
            format!("ALPN chose {other}: HTTP/2 not offered"),
        ),
        None => (Status::Warn, "no ALPN: HTTP/2 not offered".to_owned()),
    };
    findings.push(Finding::new(SECTION, "HTTP/2", status, reason));

    let code = StatusCode::from_u16(answer.status).ok();
    let status_text = code
        .map(|c| c.to_string())
        .unwrap_or_else(|| answer.status.to_string());
    let (status, reason) = match answer.status {
        200..=399 => (Status::Pass, format!("GET {path}: {status_text}")),
        _ if path_given => (Status::Fail, format!("GET {path}: {status_text}")),
        _ => (
            Status::Warn,
            format!("GET {path}: {status_text} (pass the health path in the URL)"),
        ),
    };
    findings.push(Finding::new(SECTION, "response", status, reason));

    let (status, reason) = match header(&answer.headers, "strict-transport-security") {
        None => (
            Status::Warn,
            format!("no Strict-Transport-Security: browsers try plain HTTP first (SSL stripping); send max-age={HSTS_MIN_AGE}"),
        ),
        Some(value) => match Hsts::parse(value) {
            None => (Status::Warn, format!("`{value}` is not a valid HSTS header (no max-age)")),
            Some(hsts) if hsts.max_age < HSTS_MIN_AGE => (
                Status::Warn,
                format!("max-age={} is shorter than a year ({HSTS_MIN_AGE})", hsts.max_age),
            ),
            Some(hsts) => {
                let mut extras = Vec::new();
                if hsts.include_subdomains {
                    extras.push("includeSubDomains");
                }
                if hsts.preload {
                    extras.push("preload");
                }
                let extras = if extras.is_empty() {
                    " (consider includeSubDomains and preload)".to_owned()
                } else {
                    format!(" + {}", extras.join(" + "))
                };
                (Status::Pass, format!("max-age={}{extras}", hsts.max_age))
            }
        },
    };
    findings.push(Finding::new(SECTION, "HSTS", status, reason));

    let (status, reason) = match header(&answer.headers, "x-content-type-options") {
        Some(v) if v.trim().eq_ignore_ascii_case("nosniff") => (Status::Pass, "nosniff".to_owned()),
        Some(v) => (Status::Warn, format!("`{v}`: expected nosniff")),
        None => (
            Status::Warn,
            "missing: browsers may sniff content types; send nosniff".to_owned(),
        ),
    };
    findings.push(Finding::new(
        SECTION,
        "X-Content-Type-Options",
        status,
        reason,
    ));

    let frame_ancestors = header(&answer.headers, "content-security-policy").and_then(|csp| {
        csp.split(';')
            .map(str::trim)
            .find(|d| d.to_ascii_lowercase().starts_with("frame-ancestors"))
    });
    let (status, reason) = match (header(&answer.headers, "x-frame-options"), frame_ancestors) {
        (_, Some(directive))
            if directive
                .split_whitespace()
                .skip(1)
                .any(|source| source == "*" || source.ends_with(':')) =>
        {
            (
                Status::Warn,
                format!("CSP {directive} lets any site frame the pages"),
            )
        }
        (_, Some(directive)) => (Status::Pass, format!("CSP {directive}")),
        (Some(v), None)
            if ["deny", "sameorigin"].contains(&v.trim().to_ascii_lowercase().as_str()) =>
        {
            (Status::Pass, format!("X-Frame-Options: {v}"))
        }
        (Some(v), None) => (
            Status::Warn,
            format!("X-Frame-Options `{v}`: expected DENY or SAMEORIGIN"),
        ),
        (None, None) => (
            Status::Warn,
            "neither X-Frame-Options nor CSP frame-ancestors: pages can be framed (clickjacking)"
                .to_owned(),
        ),
    };
    findings.push(Finding::new(SECTION, "framing", status, reason));

    let (status, reason) = match header(&answer.headers, "referrer-policy") {
        Some(v) if v.to_ascii_lowercase().contains("unsafe-url") => (
            Status::Warn,
            format!("`{v}` sends full URLs to other sites"),
        ),
        Some(v) => (Status::Pass, v.to_owned()),
        None => (
            Status::Warn,
            "missing: send strict-origin-when-cross-origin or stricter".to_owned(),
        ),
    };
    findings.push(Finding::new(SECTION, "Referrer-Policy", status, reason));

    let disclosed: Vec<String> = ["server", "x-powered-by"]
        .into_iter()
        .filter_map(|name| header(&answer.headers, name).map(|v| (name, v)))
        .filter(|(name, v)| *name == "x-powered-by" || v.chars().any(|c| c.is_ascii_digit()))
        .map(|(name, v)| format!("{name}: {v}"))
        .collect();
    let (status, reason) = if disclosed.is_empty() {
        (Status::Pass, "no software version disclosed".to_owned())
    } else {
        (
            Status::Warn,
            format!("{} discloses the software version", disclosed.join(", ")),
        )
    };
    findings.push(Finding::new(SECTION, "server version", status, reason));
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsts_header_is_parsed() {
        assert_eq!(
            Hsts::parse("max-age=31536000; includeSubDomains; preload"),
            Some(Hsts {
                max_age: 31_536_000,
                include_subdomains: true,
                preload: true
            })
        );
        assert_eq!(
            Hsts::parse("max-age=\"600\""),
            Some(Hsts {
                max_age: 600,
                include_subdomains: false,
                preload: false
            })
        );
        assert_eq!(Hsts::parse("includeSubDomains"), None);
        assert_eq!(Hsts::parse("max-age=soon"), None);
    }

    #[test]
    fn headers_are_judged() {
        let mut headers = HeaderMap::new();
        headers.insert("server", "nginx/1.22.1".parse().unwrap());
        headers.insert("strict-transport-security", "max-age=600".parse().unwrap());
        headers.insert(
            "content-security-policy",
            "default-src 'self'; frame-ancestors 'none'"
                .parse()
                .unwrap(),
        );
        let answer = HttpsAnswer {
            alpn: Some("http/1.1".into()),
            status: 404,
            headers,
        };
        let findings = findings(&answer, "/health", true);
        let by_check = |check: &str| findings.iter().find(|f| f.check == check).unwrap().clone();
        assert_eq!(by_check("HTTP/2").status, Status::Warn);
        assert_eq!(by_check("response").status, Status::Fail);
        assert_eq!(by_check("HSTS").status, Status::Warn);
        assert_eq!(by_check("framing").status, Status::Pass);
        assert_eq!(by_check("X-Content-Type-Options").status, Status::Warn);
        let server = by_check("server version");
        assert_eq!(server.status, Status::Warn);
        assert!(server.reason.contains("nginx/1.22.1"));
    }

    #[test]
    fn default_plain_port_follows_the_https_port() {
        assert_eq!(default_http_port(443), 80);
        assert_eq!(default_http_port(8443), 8080);
    }
}
