//! The admin listener: metrics scraped after real traffic, health, readiness, the certificate
//! inventory and reload.

use crate::common;

use std::time::Duration;

use common::upstream::Upstream;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tlsgate::certs::KeyAlgorithm;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// The value of the first sample whose line starts with `name{` and contains every label.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn admin_get(server: &TestServer, path: &str) -> SimpleResponse {
    http_get(server.admin.unwrap(), "127.0.0.1", path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_real_handshakes_requests_and_websockets() {
    let backend = Upstream::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    let issued = fixture_cert(
        &ca,
        dir.path(),
        "site",
        &["app.test"],
        KeyAlgorithm::EcdsaP256,
    );
    let yaml = format!(
        "tls:\n  certificates:\n    - pem_file: site.pem\nupstreams:\n  pool:\n    servers: [{}]\nroutes:\n  - path: /\n    upstream: pool\n",
        backend.url()
    );
    let server = TestServer::start(&yaml, dir.path()).await.unwrap();
    assert!(server.admin.unwrap().ip().is_loopback());
    let roots = [ca.cert_der.clone()];

    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let client = client_config(&roots, &[version], &[b"http/1.1"]);
        let response = https_get(server.main, "app.test", client, "/echo").await;
        assert_eq!(response.status, 200);
    }
    // Failed handshakes: not TLS at all, and plain HTTP sent to the TLS port (answered).
    let mut tcp = tokio::net::TcpStream::connect(server.main).await.unwrap();
    tcp.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
    drop(tcp);
    let mut tcp = tokio::net::TcpStream::connect(server.main).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut answer)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    drop(tcp);
    // Refused by version and by cipher, as an old client would be.
    let connect = server.main.to_string();
    let tls11 = [
        "s_client",
        "-connect",
        &connect,
        "-servername",
        "app.test",
        "-tls1_1",
        "-cipher",
        "DEFAULT@SECLEVEL=0",
    ];
    let _ = openssl_async(tls11.map(String::from).to_vec()).await;
    let cbc = [
        "s_client",
        "-connect",
        &connect,
        "-servername",
        "app.test",
        "-tls1_2",
        "-cipher",
        "ECDHE-ECDSA-AES128-SHA:AES128-SHA",
    ];
    let _ = openssl_async(cbc.map(String::from).to_vec()).await;
    let stream = tls_connect(server.main, "app.test", default_client(&roots))
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://app.test/ws", stream)
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let scraped = admin_get(&server, "/metrics").await;
    assert_eq!(scraped.status, 200);
    let m = &scraped.body;
    assert_eq!(
        sample(
            m,
            "tlsgate_tls_handshakes_total",
            &["version=\"1.3\"", "cipher=\"TLS13_"]
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(
            m,
            "tlsgate_tls_handshakes_total",
            &["version=\"1.2\"", "cipher=\"TLS_ECDHE_ECDSA_WITH_"]
        ),
        Some(1.0),
        "{m}"
    );
    for reason in [
        "bad_client_hello",
        "plain_http",
        "protocol_version",
        "no_shared_cipher",
    ] {
        let label = format!("reason=\"{reason}\"");
        assert_eq!(
            sample(m, "tlsgate_tls_handshake_failures_total", &[&label]),
            Some(1.0),
            "{reason}: {m}"
        );
    }
    assert!(
        sample(m, "tlsgate_tls_handshake_duration_seconds_count", &[]).unwrap_or(0.0) >= 3.0,
        "{m}"
    );
    assert_eq!(
        sample(
            m,
            "tlsgate_http_requests_total",
            &["route=\"*/\"", "status=\"2xx\""]
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(
            m,
            "tlsgate_http_requests_total",
            &["route=\"*/\"", "status=\"1xx\""]
        ),
        Some(1.0),
        "the upgrade: {m}"
    );
    assert_eq!(
        sample(m, "tlsgate_open_websockets", &["route=\"*/\""]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(m, "tlsgate_websocket_upgrades_total", &["result=\"ok\""]),
        Some(1.0),
        "{m}"
    );
    assert!(
        sample(m, "tlsgate_open_connections", &[]).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert_eq!(
        sample(m, "tlsgate_upstream_server_up", &["upstream=\"pool\""]),
        Some(1.0),
        "{m}"
    );
    let not_after = tlsgate::certs::CertInfo::parse(&issued.der)
        .unwrap()
        .not_after as f64;
    assert_eq!(
        sample(
            m,
            "tlsgate_certificate_expiry_timestamp_seconds",
            &["certificate=\"app.test\""]
        ),
        Some(not_after),
        "{m}"
    );
    // Every metric the alert rules and the dashboard query is one this server exports.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut used = referenced_metrics(
        &std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap(),
    );
    used.extend(referenced_metrics(
        &std::fs::read_to_string(root.join("deploy/grafana/tlsgate.json")).unwrap(),
    ));
    assert!(used.len() >= 10, "{used:?}");
    for name in used {
        let base = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        assert!(
            m.contains(&format!("# TYPE {base} ")),
            "{name} is not exported:\n{m}"
        );
    }
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = admin_get(&server, "/metrics").await.body;
    assert_eq!(
        sample(&m, "tlsgate_open_websockets", &["route=\"*/\""]),
        Some(0.0),
        "{m}"
    );
    backend.kill();
    server.stop().await;
}

/// A server whose one certificate, `site.pem` for `app.test`, is a file in `dir`.
async fn start_with_site_certificate(
    dir: &std::path::Path,
) -> (
    TestServer,
    tlsgate::certs::generate::CertificateAuthority,
    tlsgate::certs::generate::IssuedCertificate,
) {
    let ca = fixture_ca(dir);
    let site = fixture_cert(&ca, dir, "site", &["app.test"], KeyAlgorithm::EcdsaP256);
    let server = TestServer::start("tls:\n  certificates:\n    - pem_file: site.pem\n", dir)
        .await
        .unwrap();
    (server, ca, site)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_certificates_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca, first) = start_with_site_certificate(dir.path()).await;
    let health = admin_get(&server, "/health").await;
    assert_eq!(
        (health.status.as_u16(), health.body.contains("healthy")),
        (200, true)
    );
    assert_eq!(admin_get(&server, "/ready").await.status, 200);
    let inventory: serde_json::Value =
        serde_json::from_str(&admin_get(&server, "/certificates").await.body).unwrap();
    let first_serial = tlsgate::certs::CertInfo::parse(&first.der).unwrap().serial;
    assert_eq!(
        inventory["certificates"][0]["serial"],
        first_serial.as_str()
    );
    assert_eq!(inventory["certificates"][0]["names"][0], "app.test");
    assert_eq!(inventory["certificates"][0]["source"], "file");
    assert_eq!(admin_get(&server, "/reload").await.status, 405);

    // The certificate file is replaced; POST /reload swaps it in for new handshakes.
    let second = fixture_cert(
        &ca,
        dir.path(),
        "site",
        &["app.test"],
        KeyAlgorithm::EcdsaP256,
    );
    let reloaded = server.post_reload().await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    let leaf = served_leaf(
        &tls_connect(
            server.main,
            "app.test",
            default_client(std::slice::from_ref(&ca.cert_der)),
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        leaf.serial,
        tlsgate::certs::CertInfo::parse(&second.der).unwrap().serial
    );

    // A broken file: the reload is refused and the old certificate keeps serving.
    std::fs::write(dir.path().join("site.pem"), "garbage").unwrap();
    let refused = server.post_reload().await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body.contains("site.pem"), "{}", refused.body);
    let leaf = served_leaf(
        &tls_connect(
            server.main,
            "app.test",
            default_client(std::slice::from_ref(&ca.cert_der)),
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        leaf.serial,
        tlsgate::certs::CertInfo::parse(&second.der).unwrap().serial
    );
    let m = admin_get(&server, "/metrics").await.body;
    // The file watcher may also have reloaded on the same changes: at least one of each.
    let successes = sample(&m, "tlsgate_config_reloads_total", &["result=\"success\""]);
    assert!(successes.is_some_and(|n| n >= 1.0), "{m}");
    let failures = sample(&m, "tlsgate_config_reloads_total", &["result=\"failure\""]);
    assert!(failures.is_some_and(|n| n >= 1.0), "{m}");
    assert!(
        sample(
            &m,
            "tlsgate_config_last_reload_success_timestamp_seconds",
            &[]
        )
        .unwrap_or(0.0)
            > 1.7e9,
        "{m}"
    );
    server.stop().await;
}

/// `tlsgate_…` metric names used in a text (alert expressions, dashboard queries).
fn referenced_metrics(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .match_indices("tlsgate_")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| name.len() > "tlsgate_".len())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_dashboard_use_metrics_tlsgate_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let promtool = |args: &[&str], dir: &std::path::Path| {
        let output = std::process::Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("promtool is installed (scripts/test.sh installs Debian's prometheus package)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    };
    let (ok, text) = promtool(&["check", "rules", "deploy/prometheus/alerts.yml"], root);
    assert!(ok && text.contains("SUCCESS"), "{text}");
    // The expiry alerts fire at the right thresholds, on the right labels.
    let (ok, text) = promtool(
        &["test", "rules", "alerts_test.yml"],
        &root.join("tests/promtool"),
    );
    assert!(ok, "{text}");

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/tlsgate.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Days until certificate expiry",
        "TLS handshake success rate",
        "TLS handshake errors by reason",
        "TLS handshake latency",
        "TLS version distribution",
        "Cipher suite distribution",
    ] {
        assert!(
            titles.contains(&wanted),
            "seed 001's panel {wanted} is missing: {titles:?}"
        );
    }
    for panel in panels {
        assert!(!panel["targets"].as_array().unwrap().is_empty(), "{panel}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_reloads_for_certificate_files_not_for_their_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca, _) = start_with_site_certificate(dir.path()).await;
    let reloads =
        |m: &str| sample(m, "tlsgate_config_reloads_total", &["result=\"success\""]).unwrap_or(0.0);
    // A log file and a scratch file next to the certificate, written for a second.
    let log = dir.path().join("service.log");
    for i in 0..20 {
        std::fs::write(&log, format!("line {i}\n")).unwrap();
        std::fs::write(dir.path().join(format!("tmp-{i}")), "x").unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let m = admin_get(&server, "/metrics").await.body;
    assert_eq!(reloads(&m), 0.0, "unrelated files caused reloads:\n{m}");

    // The certificate itself is replaced: picked up without being asked.
    let second = fixture_cert(
        &ca,
        dir.path(),
        "site",
        &["app.test"],
        KeyAlgorithm::EcdsaP256,
    );
    let wanted = tlsgate::certs::CertInfo::parse(&second.der).unwrap().serial;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stream = tls_connect(
            server.main,
            "app.test",
            default_client(std::slice::from_ref(&ca.cert_der)),
        )
        .await
        .unwrap();
        if served_leaf(&stream).serial == wanted {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = admin_get(&server, "/metrics").await.body;
    assert!(reloads(&m) >= 1.0, "{m}");
    server.stop().await;
}

/// One request written by hand (any Host, any headers); the status, or `None` when the
/// connection closes without an answer.
async fn admin_raw(addr: std::net::SocketAddr, head: &str) -> Option<(u16, String)> {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_rebinding_hosts_and_cross_site_posts() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let admin = server.admin.unwrap();

    // DNS rebinding: the attacker's name, resolved to 127.0.0.1, in Host.
    let (status, body) = admin_raw(
        admin,
        "GET /certificates HTTP/1.1\r\nHost: rebind.attacker.example:9090\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("an answer");
    assert_eq!(status, 403);
    assert_eq!(
        body,
        "forbidden: the admin listener answers only a Host that is an IP address or localhost, not `rebind.attacker.example:9090` (DNS-rebinding protection): use http://127.0.0.1:PORT/ or the listener's IP\n"
    );
    for host in ["127.0.0.1", "localhost:9090", "[::1]"] {
        let (status, _) = admin_raw(
            admin,
            &format!("GET /certificates HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await
        .expect("an answer");
        assert_eq!(status, 200, "{host}");
    }

    // A "simple" cross-site POST (no preflight): refused before the reload runs.
    let (status, body) = admin_raw(
        admin,
        &format!("POST /reload HTTP/1.1\r\nHost: {admin}\r\nOrigin: https://attacker.example\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await
    .expect("an answer");
    assert_eq!(status, 403);
    assert_eq!(
        body,
        format!("forbidden: cross-site request refused: Origin `https://attacker.example` is not this admin listener's (http://{admin})\n")
    );
    let reloads = |metrics: &str| {
        ["success", "failure"].map(|result| {
            sample(
                metrics,
                "tlsgate_config_reloads_total",
                &[&format!("result=\"{result}\"")],
            )
        })
    };
    let metrics = admin_get(&server, "/metrics").await.body;
    assert_eq!(reloads(&metrics), [Some(0.0); 2], "no reload ran");
    // Same origin, and no Origin at all (curl, `tlsgate reload`), still reload.
    let (status, _) = admin_raw(
        admin,
        &format!("POST /reload HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://{admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await
    .expect("an answer");
    assert_eq!(status, 200);
    assert_eq!(server.post_reload().await.status, 200);
    let metrics = admin_get(&server, "/metrics").await.body;
    assert_eq!(reloads(&metrics), [Some(2.0), Some(0.0)]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_do_not_lock_monitoring_out_for_long() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let admin = server.admin.unwrap();
    let ready = "GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    assert_eq!(admin_raw(admin, ready).await.map(|(s, _)| s), Some(200));

    // 70 local sockets that connect and say nothing: the admin budget (64) is taken.
    let mut idle = Vec::new();
    for _ in 0..70 {
        idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(admin_raw(admin, ready).await, None, "over budget: closed");

    // The admin listener's idle timeout (5 s, not the main listener's 60 s) frees it.
    let started = std::time::Instant::now();
    let mut answered = None;
    while started.elapsed() < Duration::from_secs(12) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some((status, _)) = admin_raw(admin, ready).await {
            answered = Some((status, started.elapsed()));
            break;
        }
    }
    let (status, after) = answered.expect("the admin listener answers again within 12 s");
    assert_eq!(status, 200);
    assert!(after >= Duration::from_secs(3), "{after:?}");
    drop(idle);
    server.stop().await;
}
