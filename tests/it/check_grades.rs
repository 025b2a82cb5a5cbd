//! `tlsgate check` end to end, the real binary against real servers: tlsgate itself, nginx with
//! a strong and with a weak configuration (Debian's package), a WebSocket backend behind nginx
//! with a short `proxy_read_timeout`, and `sslscan` as an independent oracle for the protocol
//! and cipher findings.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::check_report::*;
use common::nginx::Nginx;
use common::upstream::Upstream;
use common::*;
use serde_json::Value;
use tlsgate::certs::generate::Usage;
use tlsgate::certs::KeyAlgorithm;

fn status(report: &Value, section: &str, check: &str) -> String {
    finding(report, section, check)["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn accepted_protocols(report: &Value) -> Vec<String> {
    report["tls"]["protocols"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["accepted"] == true)
        .map(|p| p["protocol"].as_str().unwrap().to_owned())
        .collect()
}

/// (protocol, suite) pairs the report lists, TLS 1.2 and older.
fn legacy_suites(report: &Value) -> Vec<(String, String)> {
    let mut suites: Vec<(String, String)> = report["tls"]["suites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["protocol"] != "TLS 1.3")
        .map(|s| {
            (
                s["protocol"].as_str().unwrap().to_owned(),
                s["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    suites.sort();
    suites
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsgate_with_defaults_gets_a_plus_with_every_websocket_check_passing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let ca = server.data_dir.join("ca/root.crt");
    let http_port = server.http.unwrap().port().to_string();
    let url = format!("https://localhost:{}/health", server.main.port());
    let started = Instant::now();
    let (code, report) = check_json(&args(&[
        &url,
        "--cacert",
        ca.to_str().unwrap(),
        "--http-port",
        &http_port,
        "--ws",
        "/ws",
        "--ws-idle",
        "1s",
    ]))
    .await;
    let elapsed = started.elapsed();
    assert_eq!(report["grade"], "A+", "{report:#}");
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["passed"], true);
    assert_eq!(report["min_grade"], "B");
    let failed_or_warned: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] != "pass")
        .collect();
    assert!(failed_or_warned.is_empty(), "{failed_or_warned:#?}");
    for (section, check) in [
        ("certificate", "chain"),
        ("http", "HTTP/2"),
        ("http", "HSTS"),
        ("http", "HTTP redirect"),
        ("websocket", "upgrade"),
        ("websocket", "text message"),
        ("websocket", "binary message"),
        ("websocket", "ping"),
        ("websocket", "idle"),
        ("websocket", "plain ws://"),
    ] {
        assert_eq!(status(&report, section, check), "pass");
    }
    assert_eq!(accepted_protocols(&report), ["TLS 1.2", "TLS 1.3"]);
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");

    // Without the CA the chain is untrusted: T, with the grade it would have otherwise.
    let (code, report) = check_json(&args(&[&url, "--http-port", &http_port])).await;
    assert_eq!(report["grade"], "T", "{report:#}");
    assert_eq!(report["ignoring_trust"], "A+");
    assert_eq!(report["passed"], false);
    assert_eq!(code, 1);
    // --insecure grades as if trusted, and keeps the problem as a warning.
    let (code, report) = check_json(&args(&[&url, "--http-port", &http_port, "--insecure"])).await;
    assert_eq!(report["grade"], "A+");
    assert_eq!(status(&report, "certificate", "chain"), "warn");
    assert_eq!(code, 0);
    // A WebSocket path that does not exist fails the upgrade, with the status in the reason.
    let (code, report) = check_json(&args(&[
        &url,
        "--cacert",
        ca.to_str().unwrap(),
        "--http-port",
        &http_port,
        "--ws",
        "/nope",
    ]))
    .await;
    assert_eq!(code, 1);
    let upgrade = finding(&report, "websocket", "upgrade");
    assert_eq!(upgrade["status"], "fail");
    assert!(
        upgrade["reason"].as_str().unwrap().contains("HTTP 404"),
        "{upgrade}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_output_has_symbols_sections_grade_reasons_and_help_has_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let ca = server.data_dir.join("ca/root.crt");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .args([
            "check",
            &format!("https://localhost:{}/health", server.main.port()),
        ])
        .args([
            "--cacert",
            ca.to_str().unwrap(),
            "--http-port",
            "1",
            "--min-grade",
            "A+",
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "Certificate\n",
        "Protocols\n",
        "  ✅ TLS 1.0",
        "Cipher suites\n",
        "HTTP\n",
        "⚠️  HTTP redirect",
        "nothing answers on port 1",
        "Grade: A+",
        "- cipher strength 90/100",
        "PASS (grade A+ ≥ A+, nothing marked ❌)",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert_eq!(output.status.code(), Some(0), "{text}");
    server.stop().await;

    let help = std::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .args(["check", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for rule in [
        "30% protocol",
        "caps:",
        "TLS 1.0 or 1.1 accepted",
        "A+  an A",
        "--ws-idle",
        "Exit codes:",
    ] {
        assert!(help.contains(rule), "--help lacks {rule:?}:\n{help}");
    }
    // Bad input: exit 2 with a clear message.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .args([
            "check",
            "https://localhost:1/",
            "--resolve",
            "other:127.0.0.1",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("the URL's host is localhost"));
    let unreachable = std::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .args(["check", &format!("https://127.0.0.1:{}/", free_port())])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot connect"));
}

/// Server blocks for a strong nginx: TLS 1.2/1.3 with AEAD ECDHE suites, HSTS, the security
/// headers, a redirecting plain port, and `/ws` proxied to `backend` with a short read timeout.
fn strong_nginx(dir: &Path, tls: SocketAddr, plain: SocketAddr, backend: SocketAddr) -> String {
    let dir = dir.display();
    format!(
        r#"
  server {{
    listen {tls} ssl http2;
    server_name localhost;
    ssl_certificate {dir}/site.crt;
    ssl_certificate_key {dir}/site.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305;
    server_tokens off;
    add_header Strict-Transport-Security "max-age=63072000; includeSubDomains" always;
    add_header X-Content-Type-Options nosniff always;
    add_header X-Frame-Options DENY always;
    add_header Referrer-Policy no-referrer always;
    location = /health {{ return 200 "ok\n"; }}
    location /ws {{
      proxy_pass http://{backend};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 2s;
    }}
  }}
  server {{
    listen {plain};
    server_tokens off;
    return 301 https://localhost:{tls_port}$request_uri;
  }}
"#,
        tls_port = tls.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_nginx_gets_an_a_plus_and_its_websocket_proxy_timeout_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "site",
        &["localhost"],
        KeyAlgorithm::EcdsaP256,
    );
    let backend = Upstream::start("ws-backend").await;
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _nginx = Nginx::start(
        dir.path(),
        &strong_nginx(dir.path(), tls, plain, backend.addr),
        &[tls, plain],
    )
    .await;
    let url = format!("https://localhost:{}/health", tls.port());
    let ca_file = dir.path().join("ca.crt");
    let common = [
        &url,
        "--cacert",
        ca_file.to_str().unwrap(),
        "--http-port",
        &plain.port().to_string(),
        "--ws",
        "/ws",
    ]
    .map(str::to_owned);

    // Idle shorter than nginx's 2 s proxy_read_timeout: everything passes.
    let mut quick = common.to_vec();
    quick.extend(args(&["--ws-idle", "1s"]));
    let (code, report) = check_json(&quick).await;
    assert_eq!(report["grade"], "A+", "{report:#}");
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(status(&report, "websocket", "idle"), "pass");
    assert_eq!(status(&report, "http", "HTTP redirect"), "pass");
    assert_eq!(status(&report, "http", "server version"), "pass");
    assert_eq!(accepted_protocols(&report), ["TLS 1.2", "TLS 1.3"]);
    assert_eq!(
        legacy_suites(&report),
        [
            (
                "TLS 1.2".to_owned(),
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_owned()
            ),
            (
                "TLS 1.2".to_owned(),
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".to_owned()
            ),
            (
                "TLS 1.2".to_owned(),
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256".to_owned()
            ),
        ]
    );

    // Idle longer than the proxy's timeout: the idle check catches the dropped connection.
    let mut slow = common.to_vec();
    slow.extend(args(&["--ws-idle", "4s"]));
    let (code, report) = check_json(&slow).await;
    assert_eq!(code, 1, "{report:#}");
    let idle = finding(&report, "websocket", "idle");
    assert_eq!(idle["status"], "fail", "{idle}");
    assert!(
        idle["reason"]
            .as_str()
            .unwrap()
            .contains("proxy read timeout"),
        "{idle}"
    );
    assert_eq!(report["grade"], "A+", "the TLS grade itself is unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_nginx_has_each_weakness_reported_and_graded_down_and_sslscan_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue_between(
            &["localhost".to_owned()],
            now - time::Duration::days(60),
            now - time::Duration::days(1),
            KeyAlgorithm::Rsa2048,
            Usage::Server,
        )
        .unwrap();
    write_fixture(dir.path(), "old", &expired, &ca.cert_pem);
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let servers = format!(
        r#"
  server {{
    listen {tls} ssl;
    ssl_certificate {dir}/old.crt;
    ssl_certificate_key {dir}/old.key;
    ssl_protocols TLSv1 TLSv1.1 TLSv1.2;
    ssl_ciphers ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-SHA:AES128-SHA:AES256-SHA256:@SECLEVEL=0;
    location / {{ return 200 "ok\n"; }}
  }}
"#,
        dir = dir.path().display()
    );
    let _nginx = Nginx::start(dir.path(), &servers, &[tls]).await;
    let url = format!("https://localhost:{}/", tls.port());
    let ca_file = dir.path().join("ca.crt");
    let (code, report) = check_json(&args(&[
        &url,
        "--cacert",
        ca_file.to_str().unwrap(),
        "--http-port",
        "1",
    ]))
    .await;
    assert_eq!(code, 1);
    assert_eq!(report["grade"], "T", "{report:#}");
    assert_eq!(report["ignoring_trust"], "B", "{report:#}");
    assert_eq!(status(&report, "certificate", "expiry"), "fail");
    assert_eq!(status(&report, "protocols", "TLS 1.0"), "fail");
    assert_eq!(status(&report, "protocols", "TLS 1.1"), "fail");
    assert_eq!(status(&report, "protocols", "TLS 1.3"), "warn");
    assert_eq!(status(&report, "ciphers", "forward secrecy"), "warn");
    assert_eq!(status(&report, "http", "HSTS"), "warn");
    assert_eq!(status(&report, "http", "server version"), "warn");
    let reasons = report["reasons"].to_string();
    for expected in [
        "TLS 1.0 accepted",
        "TLS 1.1 accepted",
        "CBC suite",
        "without forward secrecy",
        "no HSTS",
        "expiry",
    ] {
        assert!(
            reasons.contains(expected),
            "no reason {expected:?} in {reasons}"
        );
    }
    let cbc_warned = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["section"] == "ciphers"
                && f["status"] == "warn"
                && f["reason"].as_str().unwrap().contains("CBC")
        })
        .count();
    assert!(cbc_warned >= 3, "{report:#}");

    // sslscan, an independent implementation, must see the same protocols and suites.
    let (ours_protocols, ours_suites) = (accepted_protocols(&report), legacy_suites(&report));
    let xml = tokio::process::Command::new("sslscan")
        .args([
            "--no-colour",
            "--xml=-",
            "--no-heartbleed",
            "--no-renegotiation",
            "--no-compression",
            "--no-fallback",
        ])
        .arg("--sni-name=localhost")
        .arg(tls.to_string())
        .output()
        .await
        .expect("sslscan is installed by scripts/test.sh");
    let xml = String::from_utf8_lossy(&xml.stdout);
    let theirs_protocols = sslscan_protocols(&xml);
    assert_eq!(theirs_protocols, ours_protocols, "{xml}");
    let mut theirs_suites = sslscan_suites(&xml);
    theirs_suites.sort();
    assert_eq!(theirs_suites, ours_suites, "{xml}");
}

/// Protocol names sslscan's XML reports enabled, in our spelling, oldest first.
fn sslscan_protocols(xml: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (ours, theirs) in [
        ("SSLv3", r#"type="ssl" version="3" enabled="1""#),
        ("TLS 1.0", r#"type="tls" version="1.0" enabled="1""#),
        ("TLS 1.1", r#"type="tls" version="1.1" enabled="1""#),
        ("TLS 1.2", r#"type="tls" version="1.2" enabled="1""#),
        ("TLS 1.3", r#"type="tls" version="1.3" enabled="1""#),
    ] {
        if xml.contains(theirs) {
            found.push(ours.to_owned());
        }
    }
    found
}

/// (protocol, IANA name) of each accepted TLS ≤ 1.2 suite in sslscan's XML, named through its
/// `id` attribute and our table.
fn sslscan_suites(xml: &str) -> Vec<(String, String)> {
    let attribute = |element: &str, name: &str| {
        let start = element.find(&format!(" {name}=\""))? + name.len() + 3;
        let end = element[start..].find('"')? + start;
        Some(element[start..end].to_owned())
    };
    xml.split("<cipher ")
        .skip(1)
        .filter_map(|element| {
            let element = element.split("/>").next()?;
            let version = attribute(element, "sslversion")?;
            let protocol = match version.as_str() {
                "SSLv3" => "SSLv3",
                "TLSv1.0" => "TLS 1.0",
                "TLSv1.1" => "TLS 1.1",
                "TLSv1.2" => "TLS 1.2",
                _ => return None,
            };
            let id = attribute(element, "id")?;
            let code = u16::from_str_radix(id.trim_start_matches("0x"), 16).ok()?;
            Some((protocol.to_owned(), tlsgate::check::probe::suite_name(code)))
        })
        .collect()
}

/// A plain WebSocket echo backend that wants `?token=s3cret` and `Authorization: Bearer
/// s3cret`, and answers 401 otherwise.
// tungstenite's handshake callback returns its (large) ErrorResponse by value.
#[allow(clippy::result_large_err)]
async fn token_backend() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let authorize = |request: &Request, response: Response| {
                    let query_ok = request.uri().query() == Some("token=s3cret");
                    let header_ok = request
                        .headers()
                        .get("authorization")
                        .is_some_and(|v| v == "Bearer s3cret");
                    if query_ok && header_ok {
                        Ok(response)
                    } else {
                        let mut refusal = ErrorResponse::new(Some("bad token".into()));
                        *refusal.status_mut() = http::StatusCode::UNAUTHORIZED;
                        Err(refusal)
                    }
                };
                let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, authorize).await
                else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_text() || message.is_binary() {
                        let _ = socket.send(message).await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_headers_reach_the_websocket_endpoint_and_their_absence_is_reported() {
    let backend = token_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "routes:\n  - path: /ws\n    upstream: http://{backend}\n    allowed_origins: [https://app.test]\n"
    );
    let server = TestServer::start(&yaml, dir.path()).await.unwrap();
    let ca = server.data_dir.join("ca/root.crt");
    // No path: this config proxies only /ws, so / answers 404, which is only a warning.
    let base = args(&[
        &format!("https://localhost:{}", server.main.port()),
        "--cacert",
        ca.to_str().unwrap(),
        "--http-port",
        &server.http.unwrap().port().to_string(),
        "--ws",
        "/ws",
        "--ws-idle",
        "0s",
        "--ws-text",
        "hello hub",
        "--ws-expect",
        "contains:hub",
        "--ws-binary",
        "skip",
    ]);
    let with = |extra: &[&str]| {
        let mut all = base.clone();
        all.extend(args(extra));
        all
    };

    let (code, report) = check_json(&with(&[
        "--token",
        "s3cret",
        "--header",
        "Origin: https://app.test",
    ]))
    .await;
    assert_eq!(
        status(&report, "websocket", "upgrade"),
        "pass",
        "{report:#}"
    );
    let text = finding(&report, "websocket", "text message");
    assert_eq!(text["status"], "pass", "{text}");
    assert!(text["reason"].as_str().unwrap().contains("hello hub"));
    assert!(
        !report["findings"].to_string().contains("binary message"),
        "--ws-binary skip sends none"
    );
    assert_eq!(code, 0, "{report:#}");

    let (code, report) = check_json(&with(&["--header", "Origin: https://app.test"])).await;
    let upgrade = finding(&report, "websocket", "upgrade");
    assert_eq!(upgrade["status"], "fail");
    assert!(
        upgrade["reason"].as_str().unwrap().contains("HTTP 401"),
        "{upgrade}"
    );
    assert_eq!(code, 1);

    let (_, report) = check_json(&with(&["--token", "s3cret"])).await;
    let upgrade = finding(&report, "websocket", "upgrade");
    assert!(
        upgrade["reason"].as_str().unwrap().contains("HTTP 403"),
        "{upgrade}"
    );

    // An expectation the reply does not meet fails with what came instead.
    let mut wrong = with(&["--token", "s3cret", "--header", "Origin: https://app.test"]);
    wrong.extend(args(&["--ws-expect", "contains:pong", "--timeout", "1s"]));
    let (_, report) = check_json(&wrong).await;
    let text = finding(&report, "websocket", "text message");
    assert_eq!(text["status"], "fail");
    assert!(
        text["reason"]
            .as_str()
            .unwrap()
            .contains("got text `hello hub`"),
        "{text}"
    );
    server.stop().await;
}
