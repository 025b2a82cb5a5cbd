//! `tlsgate cert …` as an operator runs it, with `openssl` and `certutil` as independent
//! oracles for everything it writes.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tlsgate::certs::KeyAlgorithm;

const BIN: &str = env!("CARGO_BIN_EXE_tlsgate");

fn cert(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BIN)
        .current_dir(dir)
        .arg("cert")
        .args(args)
        .env_remove("TLSGATE_DATA_DIR")
        .output()
        .expect("run tlsgate");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn path_str(dir: &Path, file: &str) -> String {
    dir.join(file).to_string_lossy().into_owned()
}

#[test]
fn self_signed_every_key_type_parses_in_openssl() {
    let dir = tempfile::tempdir().unwrap();
    for key in [
        "ecdsa-p256",
        "ecdsa-p384",
        "rsa-2048",
        "rsa-3072",
        "ed25519",
    ] {
        let sub = dir.path().join(key);
        std::fs::create_dir(&sub).unwrap();
        let (code, out, err) = cert(
            &sub,
            &[
                "self-signed",
                "example.test",
                "*.example.test",
                "127.0.0.1",
                "--key",
                key,
                "--days",
                "30",
            ],
        );
        assert_eq!(code, 0, "{key}: {err}");
        for expected in [
            "subject",
            "example.test, *.example.test, 127.0.0.1",
            "not before",
            "not after",
            "example.test.key",
            "example.test.crt",
            "example.test.pem",
        ] {
            assert!(out.contains(expected), "{key}: missing {expected}:\n{out}");
        }
        assert!(!out.contains("PRIVATE KEY"), "the key is never printed");
        assert_eq!(mode(&sub.join("example.test.key")), 0o600);
        assert_eq!(mode(&sub.join("example.test.pem")), 0o600);

        let (ok, text) = openssl(&[
            "x509",
            "-in",
            &path_str(&sub, "example.test.crt"),
            "-noout",
            "-text",
        ]);
        assert!(ok, "{text}");
        assert!(
            text.contains("DNS:example.test, DNS:*.example.test, IP Address:127.0.0.1"),
            "{text}"
        );
        assert!(text.contains("TLS Web Server Authentication"), "{text}");
        let check: &[&str] = if key == "ed25519" {
            &["-noout"]
        } else {
            &["-check", "-noout"]
        };
        let mut args = vec!["pkey", "-in"];
        let key_path = path_str(&sub, "example.test.key");
        args.push(&key_path);
        args.extend_from_slice(check);
        let (ok, text) = openssl(&args);
        assert!(ok, "{key}: {text}");
        let (ok, text) = openssl(&["x509", "-in", &path_str(&sub, "example.test.pem"), "-noout"]);
        assert!(ok, "combined PEM holds the certificate: {text}");
        let combined = std::fs::read_to_string(sub.join("example.test.pem")).unwrap();
        assert!(combined.contains("BEGIN CERTIFICATE") && combined.contains("PRIVATE KEY"));
    }
    let (_, out, _) = cert(
        &dir.path().join("rsa-2048"),
        &["inspect", "example.test.crt"],
    );
    assert!(out.contains("RSA 2048"), "{out}");
    let (_, out, _) = cert(
        &dir.path().join("ecdsa-p384"),
        &["inspect", "example.test.crt"],
    );
    assert!(out.contains("ECDSA P-384"), "{out}");
}

#[test]
fn out_folders_that_do_not_exist_are_created_0700() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = cert(
        dir.path(),
        &["self-signed", "a.test", "--out", "new/nested/certs"],
    );
    assert_eq!(code, 0, "{out}{err}");
    for folder in ["new", "new/nested", "new/nested/certs"] {
        assert_eq!(mode(&dir.path().join(folder)), 0o700, "{folder}");
    }
    assert_eq!(mode(&dir.path().join("new/nested/certs/a.test.key")), 0o600);
    let (ok, text) = openssl(&[
        "x509",
        "-in",
        &path_str(dir.path(), "new/nested/certs/a.test.crt"),
        "-noout",
        "-subject",
    ]);
    assert!(ok && text.contains("a.test"), "{text}");

    // Every other subcommand whose --out names a folder does the same.
    assert_eq!(cert(dir.path(), &["ca", "init", "--out", "pki/ca"]).0, 0);
    for args in [
        &[
            "ca", "issue", "b.test", "--ca", "pki/ca", "--out", "issued/b",
        ][..],
        &["csr", "c.test", "--out", "requests/c"],
    ] {
        let (code, out, err) = cert(dir.path(), args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        let folder = dir.path().join(args[args.len() - 1]);
        assert_eq!(mode(&folder), 0o700, "{args:?}");
        assert_eq!(mode(folder.parent().unwrap()), 0o700, "{args:?}");
    }
    assert!(dir.path().join("issued/b/b.test.crt").exists());
    assert!(dir.path().join("requests/c/c.test.csr").exists());
    // An existing folder is the operator's: its mode is left alone.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        cert(dir.path(), &["self-signed", "d.test", "--out", "shared"]).0,
        0
    );
    assert_eq!(mode(&shared), 0o755);
}

#[test]
fn bad_input_gets_one_clear_line_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = cert(dir.path(), &["self-signed", "bad name.test"]);
    assert_eq!(code, 2);
    assert_eq!(
        err.trim(),
        "error: `bad name.test` is not a valid DNS name, wildcard or IP address"
    );
    // A folder that cannot be made (a file is in the way) is one clear line too.
    std::fs::write(dir.path().join("a-file"), "").unwrap();
    let (code, _, err) = cert(
        dir.path(),
        &["self-signed", "a.test", "--out", "a-file/dir"],
    );
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: cannot write a-file/dir: "), "{err}");
    let (code, _, err) = cert(dir.path(), &["self-signed", "a.test", "--key", "dsa-1024"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown key type `dsa-1024`"), "{err}");

    assert_eq!(cert(dir.path(), &["self-signed", "a.test"]).0, 0);
    let before = std::fs::read(dir.path().join("a.test.key")).unwrap();
    let (code, _, err) = cert(dir.path(), &["self-signed", "a.test"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("a.test.key already exists (use --force to replace it)"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("a.test.key")).unwrap(),
        before
    );
    assert_eq!(cert(dir.path(), &["self-signed", "a.test", "--force"]).0, 0);
    assert_ne!(
        std::fs::read(dir.path().join("a.test.key")).unwrap(),
        before
    );

    std::fs::write(dir.path().join("junk.crt"), "not a certificate").unwrap();
    let (code, _, err) = cert(dir.path(), &["inspect", "junk.crt"]);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("junk.crt: no certificate found"), "{err}");
    let (code, _, err) = cert(dir.path(), &["ca", "issue", "x.test", "--ca", "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("nope: no such folder"), "{err}");
}

#[test]
fn private_ca_chains_verify_in_openssl_with_correct_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = cert(
        dir.path(),
        &["ca", "init", "--name", "Example internal CA", "--out", "ca"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("CN=Example internal CA"), "{out}");
    assert_eq!(mode(&dir.path().join("ca")), 0o700);
    assert_eq!(mode(&dir.path().join("ca/ca.key")), 0o600);
    let (code, _, err) = cert(
        dir.path(),
        &[
            "ca",
            "issue",
            "api.internal",
            "10.0.0.5",
            "--ca",
            "ca",
            "--key",
            "rsa-2048",
        ],
    );
    assert_eq!(code, 0, "{err}");
    // The files served from hold the leaf only: never the CA, a trust anchor clients have.
    for file in ["api.internal.crt", "api.internal.pem"] {
        let certs = read_certs(&dir.path().join(file));
        assert_eq!(certs.len(), 1, "{file}");
        let info = tlsgate::certs::CertInfo::parse(&certs[0]).unwrap();
        assert!(!info.is_ca && !info.self_issued, "{file}");
    }
    let (_, text) = openssl(&[
        "x509",
        "-in",
        &path_str(dir.path(), "api.internal.crt"),
        "-noout",
        "-text",
    ]);
    assert!(
        text.contains("Digital Signature, Key Encipherment"),
        "RSA server keys also encipher: {text}"
    );
    let (code, _, err) = cert(
        dir.path(),
        &["ca", "issue", "alice", "--client", "--ca", "ca"],
    );
    assert_eq!(code, 0, "{err}");

    let ca = path_str(dir.path(), "ca/ca.crt");
    let (_, text) = openssl(&["x509", "-in", &ca, "-noout", "-text"]);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(!text.contains("Name Constraints"), "off by default: {text}");
    let server = path_str(dir.path(), "api.internal.crt");
    let (ok, out) = openssl(&["verify", "-CAfile", &ca, "-purpose", "sslserver", &server]);
    assert!(ok, "{out}");
    let (_, text) = openssl(&["x509", "-in", &server, "-noout", "-text"]);
    assert!(
        text.contains("CA:FALSE") && text.contains("TLS Web Server Authentication"),
        "{text}"
    );
    assert!(
        text.contains("DNS:api.internal, IP Address:10.0.0.5"),
        "{text}"
    );
    assert!(text.contains("Digital Signature"), "{text}");
    let client = path_str(dir.path(), "alice.crt");
    let (ok, out) = openssl(&["verify", "-CAfile", &ca, "-purpose", "sslclient", &client]);
    assert!(ok, "{out}");
    let (_, text) = openssl(&["x509", "-in", &client, "-noout", "-text"]);
    assert!(
        text.contains("TLS Web Client Authentication")
            && !text.contains("TLS Web Server Authentication"),
        "{text}"
    );

    // Name constraints, when asked for.
    let (code, _, err) = cert(
        dir.path(),
        &[
            "ca",
            "init",
            "--out",
            "constrained",
            "--permit",
            "internal.example.com",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (_, text) = openssl(&[
        "x509",
        "-in",
        &path_str(dir.path(), "constrained/ca.crt"),
        "-noout",
        "-text",
    ]);
    assert!(
        text.contains("Name Constraints") && text.contains("DNS:internal.example.com"),
        "{text}"
    );
    let constrained = path_str(dir.path(), "constrained/ca.crt");
    for (name, allowed) in [
        ("db.internal.example.com", true),
        ("evil.test", false),
        ("10.1.2.3", false),
    ] {
        let out_dir = dir.path().join(format!("nc-{name}"));
        std::fs::create_dir(&out_dir).unwrap();
        let (code, _, err) = cert(
            dir.path(),
            &[
                "ca",
                "issue",
                name,
                "--ca",
                "constrained",
                "--out",
                out_dir.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{err}");
        let leaf = out_dir.join(format!("{name}.crt"));
        let (ok, out) = openssl(&["verify", "-CAfile", &constrained, leaf.to_str().unwrap()]);
        assert_eq!(ok, allowed, "{name}: {out}");
    }
    let (code, _, err) = cert(
        dir.path(),
        &["ca", "init", "--out", "bad", "--permit", "10.0.0.0"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("give a DNS domain"), "{err}");
    // The CA refuses to be replaced by accident.
    let (code, _, err) = cert(dir.path(), &["ca", "init", "--out", "ca"]);
    assert_eq!(code, 2);
    assert!(err.contains("already exists"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_server_certificate_passes_s_client_verify_return_error() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(cert(dir.path(), &["ca", "init", "--out", "ca"]).0, 0);
    assert_eq!(
        cert(dir.path(), &["ca", "issue", "api.internal", "--ca", "ca"]).0,
        0
    );
    let yaml = "tls:\n  certificates:\n    - cert_file: api.internal.crt\n      key_file: api.internal.key\n";
    let server = TestServer::start(yaml, dir.path()).await.unwrap();
    let ca = path_str(dir.path(), "ca/ca.crt");
    let (ok, out) = openssl_async(
        [
            "s_client",
            "-connect",
            &server.main.to_string(),
            "-servername",
            "api.internal",
            "-verify_return_error",
            "-verify_hostname",
            "api.internal",
            "-CAfile",
            &ca,
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(ok && out.contains("Verify return code: 0 (ok)"), "{out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_authenticates_to_an_mtls_server() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(cert(dir.path(), &["ca", "init", "--out", "ca"]).0, 0);
    assert_eq!(
        cert(dir.path(), &["ca", "issue", "localhost", "--ca", "ca"]).0,
        0
    );
    assert_eq!(
        cert(
            dir.path(),
            &["ca", "issue", "alice", "--client", "--ca", "ca"]
        )
        .0,
        0
    );

    // A rustls server that requires a client certificate from the private CA.
    let ca_der = read_certs(&dir.path().join("ca/ca.crt")).remove(0);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain = read_certs(&dir.path().join("localhost.crt"));
    let key = tlsgate::certs::pem::read_private_key(&dir.path().join("localhost.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let accepted = acceptor.accept(tcp).await;
            let subject = accepted.as_ref().ok().and_then(|s| {
                s.get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| tlsgate::certs::CertInfo::parse(&c[0]).unwrap().subject)
            });
            outcomes.push(subject);
        }
        outcomes
    });
    let ca = path_str(dir.path(), "ca/ca.crt");
    let with_cert = openssl_async(
        [
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
            "-CAfile",
            &ca,
            "-cert",
            &path_str(dir.path(), "alice.crt"),
            "-key",
            &path_str(dir.path(), "alice.key"),
            "-verify_return_error",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let without = openssl_async(
        [
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
            "-CAfile",
            &ca,
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let outcomes = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    // s_client may report the server's plain close afterwards; the handshake is what counts.
    assert!(
        with_cert.1.contains("Verify return code: 0 (ok)"),
        "{}",
        with_cert.1
    );
    assert_eq!(
        outcomes[0].as_deref(),
        Some("CN=alice"),
        "the server saw alice's certificate"
    );
    assert_eq!(
        outcomes[1], None,
        "no client certificate, no connection: {}",
        without.1
    );
}

#[test]
fn csr_verifies_in_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = cert(
        dir.path(),
        &["csr", "example.com", "www.example.com", "--key", "rsa-2048"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("example.com.csr") && !out.contains("PRIVATE KEY"),
        "{out}"
    );
    assert_eq!(mode(&dir.path().join("example.com.key")), 0o600);
    let (ok, text) = openssl(&[
        "req",
        "-in",
        &path_str(dir.path(), "example.com.csr"),
        "-verify",
        "-noout",
        "-text",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("verify OK") || text.contains("Certificate request self-signature verify OK"),
        "{text}"
    );
    assert!(
        text.contains("DNS:example.com, DNS:www.example.com"),
        "{text}"
    );
    assert!(
        text.contains("CN = example.com") || text.contains("CN=example.com"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_files_and_live_servers_and_chain_order() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "site",
        &["site.test"],
        KeyAlgorithm::EcdsaP256,
    );
    // site.crt is leaf + CA: in order.
    let (code, out, _) = cert(dir.path(), &["inspect", "site.crt"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Certificate 1 of 2: leaf") && out.contains("Certificate 2 of 2: root CA"),
        "{out}"
    );
    assert!(out.contains("Chain order: OK"), "{out}");
    for field in [
        "subject",
        "issuer",
        "serial",
        "names",
        "days left",
        "ECDSA P-256",
        "ecdsa-with-SHA256",
        "SHA-256",
    ] {
        assert!(out.contains(field), "missing {field}: {out}");
    }
    let text = std::fs::read_to_string(dir.path().join("site.crt")).unwrap();
    let blocks: Vec<&str> = text
        .split_inclusive("-----END CERTIFICATE-----\n")
        .collect();
    std::fs::write(
        dir.path().join("reversed.crt"),
        format!("{}{}", blocks[1], blocks[0]),
    )
    .unwrap();
    let (_, out, _) = cert(dir.path(), &["inspect", "reversed.crt"]);
    assert!(out.contains("NOT IN ORDER"), "{out}");

    // The fingerprint agrees with openssl's.
    let (_, json, _) = cert(dir.path(), &["inspect", "site.crt", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let ours = report["certificates"][0]["sha256_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, theirs) = openssl(&[
        "x509",
        "-in",
        &path_str(dir.path(), "site.crt"),
        "-noout",
        "-fingerprint",
        "-sha256",
    ]);
    assert!(theirs.contains(&ours), "{ours} vs {theirs}");
    assert_eq!(report["chain_in_order"], true);

    // A live server: the chain it sends. site.crt ends in the CA, a trust anchor, which the
    // server leaves out: the leaf alone.
    let yaml = "tls:\n  certificates:\n    - cert_file: site.crt\n      key_file: site.key\n";
    let server = TestServer::start(yaml, dir.path()).await.unwrap();
    let url = format!("https://127.0.0.1:{}", server.main.port());
    let path = dir.path().to_path_buf();
    let (code, out, err) = tokio::task::spawn_blocking(move || cert(&path, &["inspect", &url]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("site.test") && out.contains("Certificate 1 of 1: leaf"),
        "{out}"
    );
    server.stop().await;
    let (code, _, err) = cert(dir.path(), &["inspect", "https://127.0.0.1:1"]);
    assert_eq!(code, 2);
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn verify_checks_chain_host_and_key() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(cert(dir.path(), &["ca", "init", "--out", "ca"]).0, 0);
    assert_eq!(
        cert(dir.path(), &["ca", "issue", "api.internal", "--ca", "ca"]).0,
        0
    );
    assert_eq!(cert(dir.path(), &["self-signed", "other.test"]).0, 0);
    let (code, out, _) = cert(
        dir.path(),
        &[
            "verify",
            "api.internal.crt",
            "--ca",
            "ca/ca.crt",
            "--host",
            "api.internal",
            "--key",
            "api.internal.key",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("PASS")).count(),
        3,
        "{out}"
    );
    let (code, out, _) = cert(
        dir.path(),
        &[
            "verify",
            "api.internal.crt",
            "--ca",
            "ca/ca.crt",
            "--host",
            "evil.test",
            "--key",
            "other.test.key",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL host") && out.contains("FAIL key") && out.contains("PASS chain"),
        "{out}"
    );
    // Against the system roots, a private CA is unknown.
    let (code, out, _) = cert(dir.path(), &["verify", "api.internal.crt"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL chain") && out.contains("unknown issuer"),
        "{out}"
    );

    // Expired, made with back-dated validity.
    let ca = fixture_ca(dir.path());
    let now = time::OffsetDateTime::now_utc();
    let old = ca
        .issue_between(
            &["old.test".into()],
            now - time::Duration::days(100),
            now - time::Duration::days(10),
            KeyAlgorithm::EcdsaP256,
            tlsgate::certs::generate::Usage::Server,
        )
        .unwrap();
    write_fixture(dir.path(), "old", &old, "");
    let (code, out, _) = cert(dir.path(), &["verify", "old.crt", "--ca", "ca.crt"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL chain") && out.contains("expired"),
        "{out}"
    );
}

fn backdated(dir: &Path, name: &str, start_days_ago: i64, end_in_days: i64) {
    let ca = tlsgate::certs::CertificateAuthority::new(
        "expiry test CA",
        400 * DAY,
        KeyAlgorithm::EcdsaP256,
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let issued = ca
        .issue_between(
            &[format!("{name}.test")],
            now - time::Duration::days(start_days_ago),
            now + time::Duration::days(end_in_days) + time::Duration::hours(1),
            KeyAlgorithm::EcdsaP256,
            tlsgate::certs::generate::Usage::Server,
        )
        .unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), &issued.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &issued.key_pem).unwrap();
}

#[test]
fn expiry_reports_ok_warning_expired_with_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    backdated(&certs, "valid", 10, 80);
    backdated(&certs, "soon", 80, 10);
    backdated(&certs, "gone", 100, -5);

    let (code, out, _) = cert(dir.path(), &["expiry", "certs/valid.crt"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("OK") && out.contains("80 days"), "{out}");
    let (code, out, _) = cert(dir.path(), &["expiry", "certs/valid.crt", "certs/soon.crt"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("WARNING") && out.contains("10 days"), "{out}");
    let (code, out, _) = cert(dir.path(), &["expiry", "certs"]);
    assert_eq!(code, 2, "a folder: {out}");
    assert!(out.contains("EXPIRED") && out.contains("-5 days"), "{out}");
    assert_eq!(
        out.lines().count(),
        3,
        "key files in the folder are skipped: {out}"
    );
    let (code, out, _) = cert(dir.path(), &["expiry", "certs/s*.crt", "--warn-days", "5"]);
    assert_eq!(code, 0, "a glob, with a narrower window: {out}");
    let keys_only = dir.path().join("keys");
    std::fs::create_dir(&keys_only).unwrap();
    std::fs::copy(certs.join("valid.key"), keys_only.join("valid.pem")).unwrap();
    let (code, out, _) = cert(dir.path(), &["expiry", "keys"]);
    assert_eq!(
        code, 2,
        "a folder with no certificate is an error, not silence: {out}"
    );
    assert!(out.contains("no certificate found"), "{out}");
    let (code, out, _) = cert(
        dir.path(),
        &["expiry", "certs/valid.crt", "certs/missing.crt"],
    );
    assert_eq!(code, 2, "unreadable: {out}");
    assert!(
        out.contains("ERROR") && out.contains("missing.crt"),
        "{out}"
    );

    let (_, json, _) = cert(dir.path(), &["expiry", "certs", "--json"]);
    let entries: serde_json::Value = serde_json::from_str(&json).unwrap();
    let statuses: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["EXPIRED", "WARNING", "OK"], "{json}");

    let (_, prom, _) = cert(
        dir.path(),
        &[
            "expiry",
            "certs/missing.crt",
            "certs",
            "certs/missing.crt",
            "--prometheus",
        ],
    );
    assert_eq!(
        prom.matches("check_error{source=\"certs/missing.crt\"}")
            .count(),
        1,
        "no repeated series: {prom}"
    );
    assert!(
        prom.contains("# TYPE tlsgate_certificate_expiry_timestamp_seconds gauge"),
        "{prom}"
    );
    assert_eq!(
        prom.lines()
            .filter(|l| l.starts_with("tlsgate_certificate_expiry_timestamp_seconds{"))
            .count(),
        3,
        "{prom}"
    );
    assert!(
        prom.contains("tlsgate_certificate_check_error{source=\"certs/missing.crt\"} 1"),
        "{prom}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_of_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let url = format!("https://localhost:{}", server.main.port());
    let path = dir.path().to_path_buf();
    let (code, out, err) = tokio::task::spawn_blocking(move || cert(&path, &["expiry", &url]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("OK") && out.contains("CN=localhost"),
        "{out}"
    );
    server.stop().await;
}

#[test]
fn bundle_and_k8s_secret() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    let issued = fixture_cert(
        &ca,
        dir.path(),
        "site",
        &["site.test"],
        KeyAlgorithm::EcdsaP256,
    );
    std::fs::write(dir.path().join("leaf.crt"), &issued.cert_pem).unwrap();
    let (code, _, err) = cert(
        dir.path(),
        &[
            "bundle",
            "--cert",
            "leaf.crt",
            "--chain",
            "ca.crt",
            "--key",
            "site.key",
            "--out",
            "combined.pem",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(mode(&dir.path().join("combined.pem")), 0o600);
    let combined = std::fs::read_to_string(dir.path().join("combined.pem")).unwrap();
    assert_eq!(combined.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(
        combined.trim_end().ends_with("-----END PRIVATE KEY-----"),
        "{combined}"
    );
    // The bundle is what `pem_file` expects.
    std::fs::write(
        dir.path().join("t.yaml"),
        "tls:\n  certificates:\n    - pem_file: combined.pem\n",
    )
    .unwrap();
    let check = Command::new(BIN)
        .current_dir(dir.path())
        .args(["config", "check", "-c", "t.yaml"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // A combined PEM given as --key: only its key is taken.
    let (code, _, err) = cert(
        dir.path(),
        &[
            "bundle",
            "--cert",
            "leaf.crt",
            "--key",
            "site.pem",
            "--out",
            "again.pem",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let again = std::fs::read_to_string(dir.path().join("again.pem")).unwrap();
    assert_eq!(again.matches("BEGIN CERTIFICATE").count(), 1, "{again}");
    let (code, _, err) = cert(
        dir.path(),
        &[
            "bundle", "--cert", "leaf.crt", "--key", "ca.crt", "--out", "x.pem",
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("ca.crt: no private key found"), "{err}");

    let (code, manifest, err) = cert(
        dir.path(),
        &[
            "k8s-secret",
            "api-tls-secret",
            "--cert",
            "site.crt",
            "--key",
            "site.key",
            "--namespace",
            "analytics",
            "--out",
            "-",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        manifest.contains("kind: Secret\n") && manifest.contains("type: kubernetes.io/tls\n"),
        "{manifest}"
    );
    assert!(
        manifest.contains("  name: api-tls-secret\n  namespace: analytics\n"),
        "{manifest}"
    );
    for (field, file) in [("tls.crt", "site.crt"), ("tls.key", "site.key")] {
        let encoded = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{field}: ")))
            .unwrap();
        std::fs::write(dir.path().join("b64"), encoded).unwrap();
        let decoded = Command::new("openssl")
            .args(["base64", "-d", "-A", "-in"])
            .arg(dir.path().join("b64"))
            .output()
            .unwrap();
        let original = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&decoded.stdout).trim(),
            original.trim(),
            "{field}"
        );
    }
    let (code, _, err) = cert(
        dir.path(),
        &[
            "k8s-secret",
            "Bad_Name",
            "--cert",
            "site.crt",
            "--key",
            "site.key",
            "--out",
            "-",
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("not a valid Kubernetes name"), "{err}");
}

#[test]
fn k8s_secret_without_out_prints_the_manifest_like_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "site",
        &["site.test"],
        KeyAlgorithm::EcdsaP256,
    );
    let (code, manifest, err) = cert(
        dir.path(),
        &[
            "k8s-secret",
            "api-tls-secret",
            "--cert",
            "site.crt",
            "--key",
            "site.key",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "", "nothing else on standard error");
    // Nothing written next to it: standard output is the result.
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["ca.crt", "site.crt", "site.key", "site.pem"]);
    let parsed: serde_json::Value =
        serde_saphyr::from_str(&manifest).unwrap_or_else(|e| panic!("not YAML ({e}):\n{manifest}"));
    assert_eq!(parsed["kind"], "Secret", "{manifest}");
    assert_eq!(parsed["apiVersion"], "v1", "{manifest}");
    assert_eq!(parsed["type"], "kubernetes.io/tls", "{manifest}");
    assert_eq!(parsed["metadata"]["name"], "api-tls-secret", "{manifest}");
    for (field, file) in [("tls.crt", "site.crt"), ("tls.key", "site.key")] {
        let encoded = parsed["data"][field].as_str().unwrap_or_default();
        std::fs::write(dir.path().join("b64"), encoded).unwrap();
        let decoded = Command::new("openssl")
            .args(["base64", "-d", "-A", "-in"])
            .arg(dir.path().join("b64"))
            .output()
            .unwrap();
        let original = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&decoded.stdout).trim(),
            original.trim(),
            "{field}"
        );
    }
}

#[test]
fn trust_and_untrust_a_temporary_nss_database_and_store_folder() {
    let dir = tempfile::tempdir().unwrap();
    let nss = dir.path().join("nssdb");
    let store = dir.path().join("anchors");
    std::fs::create_dir_all(&nss).unwrap();
    std::fs::create_dir_all(&store).unwrap();
    let made = Command::new("certutil")
        .args(["-N", "--empty-password", "-d"])
        .arg(format!("sql:{}", nss.display()))
        .output()
        .expect("certutil is installed (scripts/test.sh installs libnss3-tools)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert_eq!(cert(dir.path(), &["ca", "init", "--out", "ca"]).0, 0);

    let args = [
        "--ca",
        "ca/ca.crt",
        "--system-store",
        "anchors",
        "--nss-db",
        "nssdb",
        "--yes",
    ];
    let (code, out, err) = cert(dir.path(), &[&["trust"][..], &args[..]].concat());
    assert_eq!(code, 0, "{out}{err}");
    let anchors: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(anchors.len(), 1, "{out}");
    let stored = read_certs(&anchors[0]);
    assert_eq!(stored.len(), 1, "exactly the CA certificate");
    assert_eq!(stored[0], read_certs(&dir.path().join("ca/ca.crt"))[0]);
    let name = anchors[0]
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        out.contains(&name) && out.contains("NSS database"),
        "says what it changed: {out}"
    );
    let listed = Command::new("certutil")
        .args(["-L", "-d"])
        .arg(format!("sql:{}", nss.display()))
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&name) && l.contains("C,,")),
        "{listed}"
    );

    let (code, out, err) = cert(dir.path(), &[&["untrust"][..], &args[..]].concat());
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), 0);
    let listed = Command::new("certutil")
        .args(["-L", "-d"])
        .arg(format!("sql:{}", nss.display()))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&name));

    // Without --yes and without a terminal to ask on, nothing is changed.
    let (code, _, err) = cert(
        dir.path(),
        &[
            "trust",
            "--ca",
            "ca/ca.crt",
            "--system-store",
            "anchors",
            "--nss-db",
            "nssdb",
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("without confirmation"), "{err}");
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), 0);
    let listed = Command::new("certutil")
        .args(["-L", "-d"])
        .arg(format!("sql:{}", nss.display()))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&name));

    // untrust on a database certutil cannot open is a failure, not "not present".
    let (code, out, _) = cert(
        dir.path(),
        &[
            "untrust",
            "--ca",
            "ca/ca.crt",
            "--no-system",
            "--nss-db",
            "no-such-db",
            "--yes",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED"), "{out}");

    // A leaf is not a CA.
    assert_eq!(cert(dir.path(), &["self-signed", "leaf.test"]).0, 0);
    let (code, _, err) = cert(
        dir.path(),
        &[
            "trust",
            "--ca",
            "leaf.test.crt",
            "--nss-db",
            "nssdb",
            "--yes",
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("not a CA certificate"), "{err}");
}

#[test]
fn every_cert_command_shows_an_example_in_help() {
    for command in [
        &["self-signed"][..],
        &["ca", "init"],
        &["ca", "issue"],
        &["csr"],
        &["inspect"],
        &["verify"],
        &["expiry"],
        &["bundle"],
        &["k8s-secret"],
        &["trust"],
        &["untrust"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let (code, out, _) = cert(Path::new("."), &args);
        assert_eq!(code, 0);
        assert!(out.contains("Example"), "{command:?}: {out}");
        assert!(out.contains("Exit codes"), "{command:?}: {out}");
    }
}
