//! `tlsgate check`'s probes against real servers: tlsgate itself and `openssl s_server` set
//! up to accept what tlsgate refuses (TLS 1.0, CBC, RSA key exchange).

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::check_report::*;
use common::*;
use tlsgate::certs::KeyAlgorithm;
use tlsgate::check::probe::{probe, ProbeAnswer, Protocol, BROAD_SUITES};

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const ECDHE_ECDSA_AES128_GCM: u16 = 0xC02B;
const ECDHE_ECDSA_AES128_CBC_SHA: u16 = 0xC009;
const RSA_AES128_CBC_SHA: u16 = 0x002F;
const PROTOCOL_VERSION: u8 = 70;
const HANDSHAKE_FAILURE: u8 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsgate_refuses_old_versions_and_cbc_and_accepts_tls12_aead() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let host = Some("localhost");
    for old in [Protocol::Ssl3, Protocol::Tls10, Protocol::Tls11] {
        let answer = probe(server.main, host, old, BROAD_SUITES, PROBE_TIMEOUT)
            .await
            .unwrap();
        assert!(
            matches!(answer, ProbeAnswer::Alert(_)),
            "{} not refused with an alert: {answer:?}",
            old.name()
        );
    }
    let answer = probe(
        server.main,
        host,
        Protocol::Tls10,
        BROAD_SUITES,
        PROBE_TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(answer, ProbeAnswer::Alert(PROTOCOL_VERSION));
    let answer = probe(
        server.main,
        host,
        Protocol::Tls12,
        &[ECDHE_ECDSA_AES128_GCM],
        PROBE_TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(
        answer,
        ProbeAnswer::Accepted {
            version: 0x0303,
            suite: ECDHE_ECDSA_AES128_GCM
        }
    );
    for weak in [
        ECDHE_ECDSA_AES128_CBC_SHA,
        RSA_AES128_CBC_SHA,
        0x000A,
        0x0005,
    ] {
        let answer = probe(server.main, host, Protocol::Tls12, &[weak], PROBE_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(
            answer,
            ProbeAnswer::Alert(HANDSHAKE_FAILURE),
            "suite {weak:#06x}"
        );
    }
    server.stop().await;
}

/// `openssl s_server` on a free port; killed when dropped.
struct OpensslServer(Child);

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_openssl_server_is_seen_accepting_tls10_and_cbc() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "legacy",
        &["legacy.test"],
        KeyAlgorithm::Rsa2048,
    );
    let port = free_port();
    let _server = OpensslServer(
        Command::new("openssl")
            .current_dir(dir.path())
            .args([
                "s_server",
                "-quiet",
                "-accept",
                &port.to_string(),
                "-cert",
                "legacy.crt",
                "-key",
                "legacy.key",
                "-tls1",
                "-cipher",
                "AES128-SHA:ECDHE-RSA-AES128-SHA:@SECLEVEL=0",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl is installed by scripts/test.sh"),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "s_server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let host = Some("legacy.test");
    let answer = probe(
        addr,
        host,
        Protocol::Tls10,
        &[RSA_AES128_CBC_SHA],
        PROBE_TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(
        answer,
        ProbeAnswer::Accepted {
            version: 0x0301,
            suite: RSA_AES128_CBC_SHA
        }
    );
    // Offered TLS 1.2, this server negotiates down to 1.0: that ServerHello says 1.0, so the
    // scan does not count it as TLS 1.2 support.
    let answer = probe(addr, host, Protocol::Tls12, BROAD_SUITES, PROBE_TIMEOUT)
        .await
        .unwrap();
    assert!(
        matches!(
            answer,
            ProbeAnswer::Accepted {
                version: 0x0301,
                ..
            }
        ),
        "{answer:?}"
    );
    assert!(!answer.accepts(Protocol::Tls12));
    let answer = probe(
        addr,
        host,
        Protocol::Tls10,
        &[ECDHE_ECDSA_AES128_GCM],
        PROBE_TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(answer, ProbeAnswer::Alert(HANDSHAKE_FAILURE));

    // The whole check against a TLS 1.0-only server, which rustls cannot talk to: F, with the
    // certificate read from the legacy handshake. --resolve sends the name to loopback.
    let ca_file = dir.path().join("ca.crt");
    let (code, report) = check_json(&args(&[
        &format!("https://legacy.test:{port}/"),
        "--resolve",
        "legacy.test:127.0.0.1",
        "--http-port",
        "1",
        "--cacert",
        ca_file.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["grade"], "F", "{report:#}");
    let reasons = report["reasons"].to_string();
    assert!(reasons.contains("neither TLS 1.2 nor TLS 1.3"), "{reasons}");
    let certificate = |check: &str| finding(&report, "certificate", check);
    assert_eq!(certificate("chain")["status"], "pass", "{report:#}");
    assert_eq!(certificate("host")["status"], "pass");
    assert_eq!(certificate("key")["reason"], "RSA 2048");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suites_and_groups_of_tlsgate_are_enumerated_as_configured() {
    use tlsgate::check::{modern, probe::accepted_suites, probe::suite_name};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        "tls:\n  tls13_cipher_suites: [TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256]\n  tls12_cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256]\n",
        dir.path(),
    )
    .await
    .unwrap();
    let tls12: Vec<String> = accepted_suites(
        server.main,
        Some("localhost"),
        Protocol::Tls12,
        PROBE_TIMEOUT,
    )
    .await
    .0
    .into_iter()
    .map(suite_name)
    .collect();
    assert_eq!(
        tls12,
        [
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
        ]
    );
    let tls13 = modern::tls13_suites(server.main, "localhost", PROBE_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        tls13,
        ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
    );
    let groups = modern::key_exchange_groups(server.main, "localhost", PROBE_TIMEOUT)
        .await
        .unwrap();
    for group in ["X25519MLKEM768", "X25519", "secp256r1", "secp384r1"] {
        assert!(
            groups.iter().any(|g| g == group),
            "{group} missing: {groups:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_findings_for_a_served_chain() {
    use tlsgate::check::certificate::assess;
    use tlsgate::check::findings::Status;
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    // Ten days left: under the 30-day warning line.
    let issued = ca
        .issue(
            &["app.test".to_owned()],
            Duration::from_secs(10 * 86_400),
            KeyAlgorithm::Rsa2048,
            tlsgate::certs::generate::Usage::Server,
        )
        .unwrap();
    write_fixture(dir.path(), "site", &issued, &ca.cert_pem);
    let server = TestServer::start(
        "tls:\n  certificates:\n    - cert_file: site.crt\n      key_file: site.key\n",
        dir.path(),
    )
    .await
    .unwrap();
    let chain = tlsgate::certs::remote::fetch_chain(
        "127.0.0.1",
        server.main.port(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let roots = || {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        roots
    };
    let status = |findings: &[tlsgate::check::findings::Finding], check: &str| {
        findings
            .iter()
            .find(|f| f.check == check)
            .map(|f| f.status)
            .unwrap_or_else(|| panic!("no {check} finding: {findings:?}"))
    };
    let findings = assess(&chain, roots(), "app.test");
    assert_eq!(status(&findings, "chain"), Status::Pass, "{findings:?}");
    assert_eq!(status(&findings, "host"), Status::Pass);
    assert_eq!(status(&findings, "expiry"), Status::Warn, "{findings:?}");
    assert_eq!(status(&findings, "key"), Status::Pass);
    assert_eq!(status(&findings, "signature"), Status::Pass);
    assert_eq!(status(&findings, "chain order"), Status::Pass);
    let wrong_host = assess(&chain, roots(), "other.test");
    assert_eq!(status(&wrong_host, "host"), Status::Fail);
    // Not trusted: the system roots do not know this CA.
    let untrusted = assess(&chain, rustls::RootCertStore::empty(), "app.test");
    assert_eq!(status(&untrusted, "chain"), Status::Fail);
    server.stop().await;
}
