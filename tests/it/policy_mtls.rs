//! Client certificates (mTLS) end to end: client certificates from `tlsgate cert ca issue
//! --client`, checked with curl and `openssl s_client` as independent clients; CRLs made with
//! rcgen and cross-checked with `openssl verify -crl_check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tlsgate::certs::generate::{CertificateAuthority, KeyAlgorithm, Usage};

use crate::common::upstream::Upstream;
use crate::common::{fixture_ca, fixture_cert, openssl, write_fixture, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_tlsgate");

/// `tlsgate cert ARGS` in `dir`; panics unless it succeeds.
fn cert(dir: &Path, args: &[&str]) {
    let output = Command::new(BIN)
        .current_dir(dir)
        .arg("cert")
        .args(args)
        .env_remove("TLSGATE_DATA_DIR")
        .output()
        .expect("run tlsgate");
    assert!(
        output.status.success(),
        "tlsgate cert {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A server CA and certificate for `names` (`site.pem`, `ca.crt`), a client CA made by
/// `tlsgate cert ca init` (`clients/ca.crt`), and client certificates `alice` and `bob` from
/// `tlsgate cert ca issue --client` (`issued/NAME.crt`, `issued/NAME.key`).
fn pki(dir: &Path, names: &[&str]) -> CertificateAuthority {
    let ca = fixture_ca(dir);
    fixture_cert(&ca, dir, "site", names, KeyAlgorithm::EcdsaP256);
    cert(
        dir,
        &["ca", "init", "--name", "Test clients", "--out", "clients"],
    );
    for name in ["alice", "bob"] {
        cert(
            dir,
            &[
                "ca", "issue", name, "--client", "--ca", "clients", "--out", "issued",
            ],
        );
    }
    ca
}

fn tls_yaml(client_auth: &str, rest: &str) -> String {
    format!("tls:\n  certificates:\n    - pem_file: site.pem\n  client_auth: {client_auth}\n{rest}")
}

struct Curl {
    code: i32,
    status: u16,
    body: String,
    stderr: String,
}

/// `curl https://HOST:PORT/PATH`, trusting the fixture CA, with `--cert/--key` of
/// `issued/CLIENT` when given, and extra arguments.
async fn curl(
    dir: &Path,
    server: &TestServer,
    host: &str,
    path: &str,
    client: Option<&str>,
    extra: &[&str],
) -> Curl {
    let port = server.main.port();
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "10".into(),
        "--cacert".into(),
        dir.join("ca.crt").display().to_string(),
        "--resolve".into(),
        format!("{host}:{port}:127.0.0.1"),
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    if let Some(client) = client {
        args.push("--cert".into());
        args.push(
            dir.join(format!("issued/{client}.crt"))
                .display()
                .to_string(),
        );
        args.push("--key".into());
        args.push(
            dir.join(format!("issued/{client}.key"))
                .display()
                .to_string(),
        );
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("https://{host}:{port}{path}"));
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("curl is installed (scripts/test.sh installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    Curl {
        code: output.status.code().unwrap_or(-1),
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The headers the echo backend saw.
fn seen(curl: &Curl) -> serde_json::Value {
    let json: serde_json::Value = serde_json::from_str(&curl.body)
        .unwrap_or_else(|_| panic!("not JSON ({}): {} {}", curl.status, curl.body, curl.stderr));
    json["headers"].clone()
}

/// `openssl s_client` sending one HTTP/1.1 request; returns (exit success, output).
async fn s_client(dir: &Path, server: &TestServer, client: Option<&str>) -> (bool, String) {
    s_client_with(dir, server, client, &[]).await
}

/// As [`s_client`], with more `openssl s_client` arguments.
async fn s_client_with(
    dir: &Path,
    server: &TestServer,
    client: Option<&str>,
    extra: &[String],
) -> (bool, String) {
    let mut args: Vec<String> = [
        "s_client",
        "-connect",
        &server.main.to_string(),
        "-servername",
        "app.test",
        "-CAfile",
        &dir.join("ca.crt").display().to_string(),
        "-ign_eof",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(client) = client {
        args.push("-cert".into());
        args.push(
            dir.join(format!("issued/{client}.crt"))
                .display()
                .to_string(),
        );
        args.push("-key".into());
        args.push(
            dir.join(format!("issued/{client}.key"))
                .display()
                .to_string(),
        );
    }
    args.extend(extra.iter().cloned());
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        // Bounded: s_client -ign_eof waits for the server to close.
        let mut child = Command::new("timeout")
            .arg("20")
            .arg("openssl")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl");
        let mut stdin = child.stdin.take().unwrap();
        let _ =
            stdin.write_all(b"GET /echo HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n");
        drop(stdin);
        let output = child.wait_with_output().expect("openssl output");
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    })
    .await
    .unwrap()
}

async fn metrics(server: &TestServer) -> String {
    let admin = server.admin.expect("admin listener");
    crate::common::http_get(admin, "127.0.0.1", "/metrics")
        .await
        .body
}

/// The value of a metric line starting with `prefix`, 0 when absent.
fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_mode_refuses_clients_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, &["app.test"]);
    let backend = Upstream::start("b").await;
    let yaml = tls_yaml(
        "{mode: required, ca_files: [clients/ca.crt]}",
        &format!("default_route: {}\n", backend.url()),
    );
    let server = TestServer::start(&yaml, d).await.unwrap();

    // curl without a certificate: the handshake fails with the certificate_required alert.
    let refused = curl(d, &server, "app.test", "/echo", None, &[]).await;
    // curl sees the TLS 1.3 alert as a failed connect, send or receive (35, 55 or 56).
    assert!(
        [35, 55, 56].contains(&refused.code),
        "exit {}: {}",
        refused.code,
        refused.stderr
    );
    assert_eq!(refused.status, 0, "no HTTP answer: {}", refused.stderr);

    // openssl s_client without one: same alert, no HTTP answer.
    let (_, text) = s_client(d, &server, None).await;
    assert!(
        text.contains("certificate required") && !text.contains("HTTP/1.1 200"),
        "{text}"
    );

    // With a `cert ca issue --client` certificate: through, identity headers at the backend,
    // and a forged inbound header replaced.
    let ok = curl(
        d,
        &server,
        "app.test",
        "/echo",
        Some("alice"),
        &[
            "-H",
            "X-Client-Cert-Subject: CN=admin",
            "-H",
            "X-Client-Cert: forged",
        ],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.stderr);
    let headers = seen(&ok);
    assert_eq!(headers["x-client-cert-subject"], "CN=alice", "{headers}");
    assert_eq!(headers["x-client-cert-san"], "DNS:alice", "{headers}");
    assert!(headers.get("x-client-cert").is_none(), "{headers}");
    // The fingerprint and serial are openssl's.
    let leaf = d.join("issued/alice.crt").display().to_string();
    let (_, fingerprint) = openssl(&["x509", "-in", &leaf, "-noout", "-fingerprint", "-sha256"]);
    let fingerprint = fingerprint
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase();
    assert_eq!(headers["x-client-cert-fingerprint"], fingerprint.as_str());
    let (_, serial) = openssl(&["x509", "-in", &leaf, "-noout", "-serial"]);
    let serial = serial
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    assert_eq!(
        headers["x-client-cert-serial"],
        serial.trim_start_matches('0'),
        "{headers}"
    );

    let (_, text) = s_client(d, &server, Some("alice")).await;
    assert!(text.contains("HTTP/1.1 200"), "{text}");

    // A certificate from another CA (the server's own, as a client certificate would be).
    std::fs::create_dir_all(d.join("other")).unwrap();
    cert(d, &["ca", "init", "--name", "Other", "--out", "other/ca"]);
    cert(
        d,
        &[
            "ca", "issue", "mallory", "--client", "--ca", "other/ca", "--out", "issued",
        ],
    );
    let stranger = curl(d, &server, "app.test", "/echo", Some("mallory"), &[]).await;
    assert_ne!(stranger.code, 0, "{}", stranger.stderr);

    // A server certificate (serverAuth only) from the right CA is no client certificate.
    cert(
        d,
        &[
            "ca", "issue", "srv.test", "--ca", "clients", "--out", "issued",
        ],
    );
    let server_cert = curl(d, &server, "app.test", "/echo", Some("srv.test"), &[]).await;
    assert_ne!(server_cert.code, 0, "{}", server_cert.stderr);

    // An expired certificate from the right CA.
    let clients = CertificateAuthority::from_pem(
        &std::fs::read_to_string(d.join("clients/ca.crt")).unwrap(),
        &std::fs::read_to_string(d.join("clients/ca.key")).unwrap(),
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let old = clients
        .issue_between(
            &["old".into()],
            now - time::Duration::days(30),
            now - time::Duration::days(1),
            KeyAlgorithm::EcdsaP256,
            Usage::Client,
        )
        .unwrap();
    write_fixture(&d.join("issued"), "old", &old, "");
    let expired = curl(d, &server, "app.test", "/echo", Some("old"), &[]).await;
    assert_ne!(expired.code, 0, "{}", expired.stderr);

    let text = metrics(&server).await;
    assert!(
        metric(
            &text,
            "tlsgate_tls_client_cert_failures_total{reason=\"expired\"}"
        ) >= 1,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "tlsgate_tls_client_cert_failures_total{reason=\"wrong_usage\"}"
        ) >= 1,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "tlsgate_tls_client_cert_failures_total{reason=\"no_certificate\"}"
        ) >= 2,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "tlsgate_tls_client_cert_failures_total{reason=\"unknown_ca\"}"
        ) >= 1,
        "{text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_mode_lets_clients_through_and_routes_decide() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, &["app.test"]);
    let backend = Upstream::start("b").await;
    let url = backend.url();
    let routes = format!(
        "routes:\n  - path: /open\n    upstream: {url}\n  - path: /secure\n    upstream: {url}\n    require_client_cert: true\n  - path: /bob-only\n    upstream: {url}\n    client_cert: {{subjects: [CN=bob]}}\n  - path: /pem\n    upstream: {url}\n    client_cert: {{sans: [alice, 'DNS:*.svc.test']}}\n    pass_client_cert: pem\n  - path: /carol\n    upstream: {url}\n    client_cert: {{sans: ['email:carol@example.com']}}\n"
    );
    let yaml = tls_yaml("{mode: optional, ca_files: [clients/ca.crt]}", &routes);
    let server = TestServer::start(&yaml, d).await.unwrap();

    // No certificate: the open route answers, and forged identity headers never reach it.
    let open = curl(
        d,
        &server,
        "app.test",
        "/open",
        None,
        &[
            "-H",
            "X-Client-Cert-Subject: CN=bob",
            "-H",
            "X-Client-Cert-Fingerprint: ff",
        ],
    )
    .await;
    assert_eq!(open.status, 200, "{}", open.stderr);
    let headers = seen(&open);
    assert!(headers.get("x-client-cert-subject").is_none(), "{headers}");
    assert!(
        headers.get("x-client-cert-fingerprint").is_none(),
        "{headers}"
    );

    let secure = curl(d, &server, "app.test", "/secure", None, &[]).await;
    assert_eq!(secure.status, 403, "{}", secure.body);
    assert!(
        secure.body.contains("client certificate"),
        "{}",
        secure.body
    );
    let secure = curl(d, &server, "app.test", "/secure", Some("alice"), &[]).await;
    assert_eq!(secure.status, 200);
    // Optional is not lax: a certificate from an unknown CA still fails the handshake.
    cert(d, &["ca", "init", "--name", "Other", "--out", "other"]);
    cert(
        d,
        &[
            "ca", "issue", "mallory", "--client", "--ca", "other", "--out", "issued",
        ],
    );
    let stranger = curl(d, &server, "app.test", "/open", Some("mallory"), &[]).await;
    assert_ne!(stranger.code, 0, "{}", stranger.stderr);

    // Subject rules.
    assert_eq!(
        curl(d, &server, "app.test", "/bob-only", Some("alice"), &[])
            .await
            .status,
        403
    );
    assert_eq!(
        curl(d, &server, "app.test", "/bob-only", Some("bob"), &[])
            .await
            .status,
        200
    );

    // SAN rules and the URL-encoded PEM.
    assert_eq!(
        curl(d, &server, "app.test", "/pem", Some("bob"), &[])
            .await
            .status,
        403
    );
    let pem = curl(d, &server, "app.test", "/pem", Some("alice"), &[]).await;
    assert_eq!(pem.status, 200);
    let encoded = seen(&pem)["x-client-cert"].as_str().unwrap().to_owned();
    assert!(
        encoded.starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
        "{encoded}"
    );
    let decoded = percent_decode(&encoded);
    let file = std::fs::read_to_string(d.join("issued/alice.crt")).unwrap();
    assert!(file.starts_with(&decoded), "{decoded}\n---\n{file}");

    // A client certificate naming a person by email address.
    cert(
        d,
        &[
            "ca",
            "issue",
            "carol@example.com",
            "--client",
            "--ca",
            "clients",
            "--out",
            "issued",
        ],
    );
    let carol = curl(
        d,
        &server,
        "app.test",
        "/carol",
        Some("carol@example.com"),
        &[],
    )
    .await;
    assert_eq!(carol.status, 200, "{}", carol.body);
    let headers = seen(&carol);
    assert_eq!(headers["x-client-cert-san"], "email:carol@example.com");
    assert_eq!(headers["x-client-cert-subject"], "CN=carol@example.com");
    assert_eq!(
        curl(d, &server, "app.test", "/carol", Some("alice"), &[])
            .await
            .status,
        403
    );
    server.stop().await;
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// A CRL from the CA in `ca_dir` (`ca.crt`, `ca.key`) numbered `number`, revoking the
/// certificates in `revoked`, valid from `from` to `until` (relative to now).
fn crl(ca_dir: &Path, number: u64, revoked: &[PathBuf], from: i64, until: i64) -> String {
    use rcgen::{
        CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams,
        SerialNumber,
    };
    let key = KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).unwrap()).unwrap();
    let pem = std::fs::read_to_string(ca_dir.join("ca.crt")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&pem, key).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let revoked_certs = revoked
        .iter()
        .map(|path| {
            let der = tlsgate::certs::pem::read_certificates(path)
                .unwrap()
                .remove(0);
            let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
            RevokedCertParams {
                serial_number: SerialNumber::from_slice(parsed.raw_serial()),
                revocation_time: now - time::Duration::minutes(5),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }
        })
        .collect();
    let params = CertificateRevocationListParams {
        this_update: now + time::Duration::seconds(from),
        next_update: now + time::Duration::seconds(until),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params.signed_by(&issuer).unwrap().pem().unwrap()
}

/// Writes `text` to `path` by rename, as a CA publishing a new CRL would.
fn publish(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crls_revoke_reload_from_disk_and_never_roll_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, &["app.test"]);
    let backend = Upstream::start("b").await;
    let clients = d.join("clients");
    let alice = d.join("issued/alice.crt");
    std::fs::create_dir_all(d.join("crl")).unwrap();
    let crl_path = d.join("crl/clients.crl");
    publish(&crl_path, &crl(&clients, 2, &[], -60, 86_400));
    let yaml = tls_yaml(
        "{mode: required, ca_files: [clients/ca.crt], crl_files: [crl/clients.crl]}",
        &format!("default_route: {}\n", backend.url()),
    );
    let server = TestServer::start(&yaml, d).await.unwrap();
    assert_eq!(
        curl(d, &server, "app.test", "/echo", Some("alice"), &[])
            .await
            .status,
        200
    );

    // A TLS session of alice's, to try resuming once she is revoked.
    let session = d.join("alice.session").display().to_string();
    let (_, text) = s_client_with(
        d,
        &server,
        Some("alice"),
        &["-sess_out".into(), session.clone()],
    )
    .await;
    assert!(text.contains("HTTP/1.1 200"), "{text}");
    let (_, text) = s_client_with(
        d,
        &server,
        Some("alice"),
        &["-sess_in".into(), session.clone()],
    )
    .await;
    assert!(
        text.contains("Reused,") && text.contains("HTTP/1.1 200"),
        "the session resumes while alice is in good standing: {text}"
    );

    // A keep-alive connection of alice's, open across the reload below.
    let mut kept = mtls_connection(d, &server, "alice").await;
    assert_eq!(kept_get(&mut kept).await, 200);

    // CRL 3 revokes alice (openssl agrees it does); the file watcher puts it in force.
    let revoking = crl(&clients, 3, std::slice::from_ref(&alice), -60, 86_400);
    std::fs::write(d.join("revoking.crl"), &revoking).unwrap();
    let (ok, out) = openssl(&[
        "verify",
        "-crl_check",
        "-CRLfile",
        &d.join("revoking.crl").display().to_string(),
        "-CAfile",
        &clients.join("ca.crt").display().to_string(),
        &alice.display().to_string(),
    ]);
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    publish(&crl_path, &revoking);
    let mut refused = false;
    for _ in 0..100 {
        let attempt = curl(d, &server, "app.test", "/echo", Some("alice"), &[]).await;
        if attempt.code != 0 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "alice is refused once CRL 3 is on disk");
    assert_eq!(
        curl(d, &server, "app.test", "/echo", Some("bob"), &[])
            .await
            .status,
        200,
        "bob is not revoked"
    );
    // The reload dropped no connection: alice's open one was verified when it was made (as
    // in nginx, revocation applies to new handshakes).
    assert_eq!(kept_get(&mut kept).await, 200);
    // Resuming the session from before the revocation does not skip the check.
    let (_, text) = s_client_with(d, &server, Some("alice"), &["-sess_in".into(), session]).await;
    assert!(
        !text.contains("HTTP/1.1 200") && !text.contains("Reused,"),
        "{text}"
    );
    let text = metrics(&server).await;
    assert!(
        metric(
            &text,
            "tlsgate_tls_client_cert_failures_total{reason=\"revoked\"}"
        ) >= 1,
        "{text}"
    );

    // CRL 1 (older, revoking nobody) is a rollback: the reload is refused, CRL 3 stays.
    publish(&crl_path, &crl(&clients, 1, &[], -60, 86_400));
    let reload = server.post_reload().await;
    assert_ne!(reload.status, 200, "{}", reload.body);
    assert!(reload.body.contains("rollback"), "{}", reload.body);
    let still = curl(d, &server, "app.test", "/echo", Some("alice"), &[]).await;
    assert_ne!(still.code, 0, "the revoking CRL is still in force");

    // An expired CRL is refused on reload too; a newer valid one is taken.
    publish(&crl_path, &crl(&clients, 4, &[], -7200, -3600));
    let reload = server.post_reload().await;
    assert!(reload.body.contains("expired"), "{}", reload.body);
    publish(&crl_path, &crl(&clients, 5, &[], -60, 86_400));
    let reload = server.post_reload().await;
    assert_eq!(reload.status, 200, "{}", reload.body);
    assert_eq!(
        curl(d, &server, "app.test", "/echo", Some("alice"), &[])
            .await
            .status,
        200,
        "CRL 5 no longer lists alice"
    );
    // Its expiry is exported, for alerting before every client is refused.
    let text = metrics(&server).await;
    let next = metric(
        &text,
        "tlsgate_crl_next_update_timestamp_seconds{issuer=\"CN=Test clients\"}",
    ) as i64;
    let expected = time::OffsetDateTime::now_utc().unix_timestamp() + 86_400;
    assert!((next - expected).abs() < 120, "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_crls_stop_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, &["app.test"]);
    cert(d, &["ca", "init", "--name", "Other", "--out", "other"]);
    let yaml = tls_yaml(
        "{mode: required, ca_files: [clients/ca.crt], crl_files: [clients.crl]}",
        "",
    );
    for (crl_text, expected) in [
        (crl(&d.join("clients"), 1, &[], -7200, -3600), "expired"),
        (crl(&d.join("clients"), 1, &[], 3600, 7200), "not valid yet"),
        (
            crl(&d.join("other"), 1, &[], -60, 3600),
            "none of the configured ca_files",
        ),
        ("not a crl".to_owned(), "not a CRL"),
    ] {
        std::fs::write(d.join("clients.crl"), crl_text).unwrap();
        let error = match TestServer::start(&yaml, d).await {
            Ok(server) => {
                server.stop().await;
                panic!("started with a bad CRL ({expected})");
            }
            Err(error) => error,
        };
        assert!(
            error.contains(expected) && error.contains("clients.crl"),
            "{error}"
        );
    }
    // A CA whose clock runs a minute ahead: its CRL is taken.
    std::fs::write(
        d.join("clients.crl"),
        crl(&d.join("clients"), 1, &[], 60, 7200),
    )
    .unwrap();
    TestServer::start(&yaml, d).await.unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_entry_asks_for_client_certificates_for_its_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server_ca = pki(d, &["app.test"]);
    fixture_cert(
        &server_ca,
        d,
        "secure",
        &["secure.test"],
        KeyAlgorithm::EcdsaP256,
    );
    let backend = Upstream::start("b").await;
    let yaml = format!(
        "tls:\n  certificates:\n    - pem_file: site.pem\n      default: true\n    - pem_file: secure.pem\n      names: [secure.test]\n      client_auth: {{mode: required, ca_files: [clients/ca.crt]}}\ndefault_route: {}\n",
        backend.url()
    );
    let server = TestServer::start(&yaml, d).await.unwrap();
    assert_eq!(
        curl(d, &server, "app.test", "/echo", None, &[])
            .await
            .status,
        200,
        "app.test asks for no certificate"
    );
    let refused = curl(d, &server, "secure.test", "/echo", None, &[]).await;
    assert_ne!(refused.code, 0, "secure.test requires one");
    let ok = curl(d, &server, "secure.test", "/echo", Some("alice"), &[]).await;
    assert_eq!(ok.status, 200, "{}", ok.stderr);
    assert_eq!(seen(&ok)["x-client-cert-subject"], "CN=alice");
    // The name without client auth cannot reach the other's host (421 for a Host that is
    // not the TLS server name).
    let misdirected = curl(
        d,
        &server,
        "app.test",
        "/echo",
        None,
        &["-H", "Host: secure.test"],
    )
    .await;
    assert_eq!(misdirected.status, 421, "{}", misdirected.body);
    // Nor can a client that sends no SNI (it got the listener's config, without client auth).
    let (_, text) = no_sni_request(&server, &d.join("ca.crt"), "secure.test").await;
    assert!(text.contains("HTTP/1.1 421"), "{text}");
    let (_, text) = no_sni_request(&server, &d.join("ca.crt"), "app.test").await;
    assert!(text.contains("HTTP/1.1 200"), "{text}");
    server.stop().await;
}

/// One request for `host` over a TLS connection without SNI (`openssl s_client -noservername`).
async fn no_sni_request(server: &TestServer, ca: &Path, host: &str) -> (bool, String) {
    let args: Vec<String> = [
        "s_client",
        "-connect",
        &server.main.to_string(),
        "-noservername",
        "-CAfile",
        &ca.display().to_string(),
        "-ign_eof",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let request = format!("GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        // Bounded: s_client -ign_eof waits for the server to close.
        let mut child = Command::new("timeout")
            .arg("20")
            .arg("openssl")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl");
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(request.as_bytes());
        drop(stdin);
        let output = child.wait_with_output().expect("openssl output");
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    })
    .await
    .unwrap()
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// A TLS connection to app.test (HTTP/1.1), with `issued/CLIENT`'s certificate if given.
async fn mtls_stream(
    dir: &Path,
    server: &TestServer,
    client: Option<&str>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(crate::common::read_certs(&dir.join("ca.crt")).remove(0))
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        Some(client) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(dir.join(format!("issued/{client}.crt")))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
            let key =
                PrivateKeyDer::from_pem_file(dir.join(format!("issued/{client}.key"))).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    crate::common::tls_connect(server.main, "app.test", std::sync::Arc::new(config))
        .await
        .unwrap()
}

/// An HTTP/1.1 keep-alive connection to app.test with `issued/CLIENT`'s certificate (rustls).
async fn mtls_connection(dir: &Path, server: &TestServer, client: &str) -> Sender {
    let stream = mtls_stream(dir, server, Some(client)).await;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// `GET /echo` on a kept connection; its status.
async fn kept_get(sender: &mut Sender) -> u16 {
    let request = http::Request::get("/echo")
        .header("host", "app.test")
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    // Read to the end, so the connection is ready for the next request.
    http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    status
}

/// CRLs from OpenSSL's own CA tool (`openssl ca -revoke`, `-gencrl`), in PEM and DER.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_made_crls_revoke_in_pem_and_der() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, &["app.test"]);
    let backend = Upstream::start("b").await;
    std::fs::create_dir_all(d.join("oca")).unwrap();
    std::fs::write(d.join("oca/index.txt"), "").unwrap();
    std::fs::write(d.join("oca/crlnumber"), "1000\n").unwrap();
    let cnf = format!(
        "[ca]\ndefault_ca = c\n[c]\ndatabase = {0}/oca/index.txt\ncrlnumber = {0}/oca/crlnumber\ncertificate = {0}/clients/ca.crt\nprivate_key = {0}/clients/ca.key\ndefault_md = sha256\ndefault_crl_days = 1\n",
        d.display()
    );
    std::fs::write(d.join("oca/ca.cnf"), cnf).unwrap();
    let config = d.join("oca/ca.cnf").display().to_string();
    let alice = d.join("issued/alice.crt").display().to_string();
    let pem = d.join("crl.pem").display().to_string();
    let der = d.join("crl.der").display().to_string();
    let (ok, out) = openssl(&["ca", "-config", &config, "-revoke", &alice]);
    assert!(ok, "{out}");
    let (ok, out) = openssl(&["ca", "-config", &config, "-gencrl", "-out", &pem]);
    assert!(ok, "{out}");
    let (ok, out) = openssl(&["crl", "-in", &pem, "-outform", "DER", "-out", &der]);
    assert!(ok, "{out}");
    for file in ["crl.pem", "crl.der"] {
        let yaml = tls_yaml(
            &format!("{{mode: required, ca_files: [clients/ca.crt], crl_files: [{file}]}}"),
            &format!("default_route: {}\n", backend.url()),
        );
        let server = TestServer::start(&yaml, d).await.unwrap();
        let refused = curl(d, &server, "app.test", "/echo", Some("alice"), &[]).await;
        assert_ne!(refused.code, 0, "{file}: alice is revoked");
        let bob = curl(d, &server, "app.test", "/echo", Some("bob"), &[]).await;
        assert_eq!(bob.status, 200, "{file}: {}", bob.stderr);
        let text = metrics(&server).await;
        assert_eq!(
            metric(
                &text,
                "tlsgate_tls_client_cert_failures_total{reason=\"revoked\"}"
            ),
            1,
            "{text}"
        );
        server.stop().await;
    }
}

/// `tlsgate cert ca crl` revokes and publishes; a running tlsgate takes each new CRL from disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_ca_crl_revokes_and_a_running_server_follows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, &["app.test"]);
    let backend = Upstream::start("b").await;
    cert(
        d,
        &[
            "ca",
            "crl",
            "--ca",
            "clients",
            "--revoke",
            "issued/alice.crt",
        ],
    );
    let verify = |who: &str| {
        openssl(&[
            "verify",
            "-crl_check",
            "-CRLfile",
            &d.join("clients/crl.pem").display().to_string(),
            "-CAfile",
            &d.join("clients/ca.crt").display().to_string(),
            &d.join(format!("issued/{who}.crt")).display().to_string(),
        ])
    };
    let (ok, out) = verify("alice");
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let (ok, out) = verify("bob");
    assert!(ok, "{out}");
    let (_, text) = openssl(&[
        "crl",
        "-in",
        &d.join("clients/crl.pem").display().to_string(),
        "-noout",
        "-crlnumber",
    ]);
    assert!(
        text.contains("crlNumber=0x01") || text.contains("crlNumber=01"),
        "{text}"
    );

    let yaml = tls_yaml(
        "{mode: required, ca_files: [clients/ca.crt], crl_files: [clients/crl.pem]}",
        &format!("default_route: {}\n", backend.url()),
    );
    let server = TestServer::start(&yaml, d).await.unwrap();
    // `config check` loads the CRL as `serve` does and says when it expires.
    let check = Command::new(BIN)
        .current_dir(d)
        .args(["config", "check", "-c", "tlsgate.yaml"])
        .env_remove("TLSGATE_DATA_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{stderr}");
    assert!(
        stderr.contains("client CRL of CN=Test clients: next update"),
        "{stderr}"
    );
    assert_ne!(
        curl(d, &server, "app.test", "/echo", Some("alice"), &[])
            .await
            .code,
        0
    );
    assert_eq!(
        curl(d, &server, "app.test", "/echo", Some("bob"), &[])
            .await
            .status,
        200
    );

    // Revoking bob publishes CRL 2 (alice still listed); the server follows.
    cert(
        d,
        &["ca", "crl", "--ca", "clients", "--revoke", "issued/bob.crt"],
    );
    let (ok, out) = verify("alice");
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let mut refused = false;
    for _ in 0..100 {
        if curl(d, &server, "app.test", "/echo", Some("bob"), &[])
            .await
            .code
            != 0
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "bob is refused once CRL 2 is published");
    server.stop().await;

    // A certificate of another CA cannot be put on this CA's list.
    cert(d, &["ca", "init", "--name", "Other", "--out", "other"]);
    cert(
        d,
        &[
            "ca", "issue", "eve", "--client", "--ca", "other", "--out", "issued",
        ],
    );
    let output = Command::new(BIN)
        .current_dir(d)
        .args([
            "cert",
            "ca",
            "crl",
            "--ca",
            "clients",
            "--revoke",
            "issued/eve.crt",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not by this CA"));
}

/// WebSocket upgrades meet the same route rules as plain requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_need_the_client_certificate_too() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Error, Message};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, &["app.test"]);
    let backend = Upstream::start("b").await;
    let yaml = tls_yaml(
        "{mode: optional, ca_files: [clients/ca.crt]}",
        &format!(
            "routes:\n  - path: /ws\n    upstream: {}\n    client_cert: {{sans: [alice]}}\n",
            backend.url()
        ),
    );
    let server = TestServer::start(&yaml, d).await.unwrap();
    let stream = mtls_stream(d, &server, None).await;
    match tokio_tungstenite::client_async("wss://app.test/ws", stream).await {
        Err(Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("no certificate: {:?}", other.map(|(_, r)| r.status())),
    }
    let stream = mtls_stream(d, &server, Some("bob")).await;
    match tokio_tungstenite::client_async("wss://app.test/ws", stream).await {
        Err(Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("bob: {:?}", other.map(|(_, r)| r.status())),
    }
    let stream = mtls_stream(d, &server, Some("alice")).await;
    let (mut ws, response) = tokio_tungstenite::client_async("wss://app.test/ws", stream)
        .await
        .expect("alice's upgrade");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("hello"));
    server.stop().await;
}

/// The seed's camera clients: Python's `ssl` (OpenSSL) with a client certificate over WSS, as
/// `verify_mode = CERT_REQUIRED` expected, now checked by tlsgate in front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websocket_clients_with_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, &["localhost"]);
    let backend = Upstream::start("b").await;
    let yaml = tls_yaml(
        "{mode: required, ca_files: [clients/ca.crt]}",
        &format!(
            "routes:\n  - path: /ws\n    upstream: {}\n    require_client_cert: true\n",
            backend.url()
        ),
    );
    let server = TestServer::start(&yaml, d).await.unwrap();
    let script = |client: Option<&str>| {
        let load = client.map_or(String::new(), |c| {
            format!(
                "    ctx.load_cert_chain('{0}/issued/{c}.crt', '{0}/issued/{c}.key')\n",
                d.display()
            )
        });
        format!(
            "import asyncio, ssl, websockets\nasync def main():\n    ctx = ssl.create_default_context(cafile='{}/ca.crt')\n{load}    try:\n        async with websockets.connect('wss://localhost:{}/ws', ssl=ctx, open_timeout=10) as ws:\n            await ws.send('frame')\n            print('echo:', await asyncio.wait_for(ws.recv(), 10))\n    except Exception as e:\n        print('refused:', type(e).__name__)\nasyncio.run(main())\n",
            d.display(),
            server.main.port()
        )
    };
    for (client, expected) in [(Some("alice"), "echo: frame"), (None, "refused:")] {
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new("python3")
                .args(["-c", &script(client)])
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains(expected),
            "{client:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    server.stop().await;
}
