//! ACME against a real Pebble: HTTP-01 and TLS-ALPN-01 through the running server.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::pebble::Pebble;
use common::*;

fn acme_yaml(pebble: &Pebble, challenge: &str, names: &str) -> String {
    format!(
        "acme:\n  directory: {}\n  ca_root: {}\n  email: ops@example.com\n  agree_tos: true\n  challenge: {challenge}\n  check_interval: 1s\ntls:\n  certificates:\n    - acme:\n        names: [{names}]\n",
        pebble.directory,
        pebble.https_root.display()
    )
}

async fn wait_for(path: &std::path::Path, what: &str, dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{what} did not appear; pebble log:\n{}",
            std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn issued_through(challenge: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (https_port, http_port) = (free_port(), free_port());
    let pebble = Pebble::start(dir.path(), http_port, https_port, &[]);
    let server = TestServer::start_at(
        &acme_yaml(&pebble, challenge, "localhost"),
        dir.path(),
        https_port,
        http_port,
    )
    .await
    .unwrap();
    let live = dir.path().join("data/live/localhost");
    wait_for(
        &live.join("fullchain.pem"),
        "the issued certificate",
        dir.path(),
    )
    .await;
    // Swapped in without a restart: a client trusting only Pebble's issuing root connects.
    let client = default_client(&[pebble.issuing_root()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match tls_connect(server.main, "localhost", client.clone()).await {
            Ok(stream) => break stream,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "never served the ACME certificate: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let leaf = served_leaf(&stream);
    assert!(leaf.issuer.contains("Pebble"), "{}", leaf.issuer);
    assert_eq!(leaf.dns_names, vec!["localhost"]);
    let response = request_on(stream, false, "localhost", "/health").await;
    assert_eq!(response.status, 200);

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&live.join("privkey.pem")), 0o600);
    for file in ["cert.pem", "chain.pem", "fullchain.pem"] {
        assert!(live.join(file).exists(), "{file}");
    }
    let accounts = dir.path().join("data/acme");
    let account = std::fs::read_dir(&accounts)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("account.json"))
        .find(|p| p.exists())
        .expect("account saved");
    assert_eq!(mode(&account), 0o600);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_issuance_end_to_end() {
    issued_through("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issuance_end_to_end() {
    issued_through("tls-alpn-01").await;
}
