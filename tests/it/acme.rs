//! ACME against a real Pebble: HTTP-01 and TLS-ALPN-01 through the running server.

use crate::common;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_in_window_swaps_without_dropping_an_open_websocket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let (https_port, http_port) = (free_port(), free_port());
    let (old_root, old_serial) = plant(dir.path(), 10);
    // Pebble is down at first: the renewal fails, the old certificate keeps serving.
    let mut pebble = Pebble::start(dir.path(), http_port, https_port, &[]);
    let yaml = acme_yaml(&pebble, "http-01", "localhost");
    pebble.stop();
    let server = TestServer::start_at(&yaml, dir.path(), https_port, http_port)
        .await
        .unwrap();
    let both = |pebble: &Pebble| default_client(&[old_root.clone(), pebble.issuing_root()]);
    let old_only = default_client(std::slice::from_ref(&old_root));

    let stream = tls_connect(server.main, "localhost", old_only.clone())
        .await
        .unwrap();
    assert_eq!(served_leaf(&stream).serial, old_serial);
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", stream)
        .await
        .unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    // A few failed attempts with the CA down: still the old certificate.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stream = tls_connect(server.main, "localhost", old_only.clone())
        .await
        .unwrap();
    assert_eq!(
        served_leaf(&stream).serial,
        old_serial,
        "the current certificate stays in service"
    );

    // The CA comes back (same ports, fresh state): the next attempt renews and swaps.
    pebble.restart();
    let client = both(&pebble);
    let deadline = Instant::now() + Duration::from_secs(60);
    let renewed = loop {
        let stream = tls_connect(server.main, "localhost", client.clone())
            .await
            .unwrap();
        let leaf = served_leaf(&stream);
        if leaf.serial != old_serial {
            break leaf;
        }
        assert!(Instant::now() < deadline, "never renewed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(renewed.issuer.contains("Pebble"), "{}", renewed.issuer);
    // The WebSocket opened before the swap is untouched.
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("after"));
    let archived = dir.path().join("data/archive/localhost").join(&old_serial);
    assert!(
        archived.join("cert.pem").exists(),
        "the old certificate is archived"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_01_with_a_hook_issues_a_wildcard() {
    let dir = tempfile::tempdir().unwrap();
    let (dns_port, management) = (free_port(), free_port());
    let mut challtestsrv = std::process::Command::new("pebble-challtestsrv")
        .args([
            "-defaultIPv6",
            "",
            "-dns01",
            &format!("127.0.0.1:{dns_port}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{management}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pebble-challtestsrv (Debian package pebble)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", management)).is_err() {
        assert!(Instant::now() < deadline, "challtestsrv did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Any DNS provider works through a hook; this one is challtestsrv's management API.
    let hook = dir.path().join("dns-hook.sh");
    let calls = dir.path().join("hook-calls.log");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$1 $2\" >> {calls}\ncase \"$1\" in\n  present) curl -sf -d \"{{\\\"host\\\":\\\"$2.\\\",\\\"value\\\":\\\"$3\\\"}}\" http://127.0.0.1:{management}/set-txt ;;\n  cleanup) curl -sf -d \"{{\\\"host\\\":\\\"$2.\\\"}}\" http://127.0.0.1:{management}/clear-txt ;;\nesac\n",
            calls = calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();

    let (https_port, http_port) = (free_port(), free_port());
    let pebble = Pebble::start_with(dir.path(), http_port, https_port, &[], Some(dns_port));
    let yaml = format!(
        "acme:\n  directory: {}\n  ca_root: {}\n  agree_tos: true\n  challenge: dns-01\n  dns_hook: {}\n  check_interval: 1s\ntls:\n  certificates:\n    - acme:\n        names: ['*.example.test', example.test]\n",
        pebble.directory,
        pebble.https_root.display(),
        hook.display()
    );
    let server = TestServer::start_at(&yaml, dir.path(), https_port, http_port)
        .await
        .unwrap();
    wait_for(
        &dir.path()
            .join("data/live/_wildcard.example.test/fullchain.pem"),
        "the wildcard certificate",
        dir.path(),
    )
    .await;
    let client = default_client(&[pebble.issuing_root()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let leaf = loop {
        match tls_connect(server.main, "www.example.test", client.clone()).await {
            Ok(stream) => break served_leaf(&stream),
            Err(error) => {
                assert!(Instant::now() < deadline, "wildcard never served: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut names = leaf.dns_names.clone();
    names.sort();
    assert_eq!(names, vec!["*.example.test", "example.test"]);
    let log = std::fs::read_to_string(&calls).unwrap();
    assert!(
        log.contains("present _acme-challenge.example.test"),
        "{log}"
    );
    assert!(
        log.contains("cleanup _acme-challenge.example.test"),
        "records are removed afterwards: {log}"
    );
    let _ = challtestsrv.kill();
    let _ = challtestsrv.wait();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_nonces_are_retried() {
    // Pebble rejects half of all nonces as badNonce; issuance still completes.
    let dir = tempfile::tempdir().unwrap();
    let (https_port, http_port) = (free_port(), free_port());
    let pebble = Pebble::start(
        dir.path(),
        http_port,
        https_port,
        &[("PEBBLE_WFE_NONCEREJECT", "50")],
    );
    let server = TestServer::start_at(
        &acme_yaml(&pebble, "http-01", "localhost"),
        dir.path(),
        https_port,
        http_port,
    )
    .await
    .unwrap();
    wait_for(
        &dir.path().join("data/live/localhost/fullchain.pem"),
        "the certificate",
        dir.path(),
    )
    .await;
    // An order takes about ten signed requests; with half the nonces rejected, completing it
    // without retrying badNonce would happen about once in a thousand runs.
    let posts = pebble.log().matches("POST ").count();
    assert!(posts >= 8, "{posts} signed requests");
    server.stop().await;
}

fn tlsgate(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .current_dir(dir)
        .args(args)
        .env_remove("SSL_CERT_FILE")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_issue_list_renew_and_the_lock_prevents_a_double_order() {
    let dir = tempfile::tempdir().unwrap();
    let (https_port, http_port) = (free_port(), free_port());
    let pebble = Pebble::start(dir.path(), http_port, https_port, &[]);
    let yaml = acme_yaml(&pebble, "http-01", "localhost");
    let config = dir.path().join("tlsgate.yaml");
    std::fs::write(&config, format!("data_dir: data\nadmin: off\nlisten: 127.0.0.1:{https_port}\nhttp:\n  listen: 127.0.0.1:{http_port}\n{yaml}")).unwrap();
    let path = dir.path().to_path_buf();
    let run = move |args: Vec<&'static str>| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let mut full = args.clone();
            full.extend(["-c", "tlsgate.yaml"]);
            tlsgate(&path, &full)
        })
    };

    let (code, out, err) = run(vec!["acme", "list"]).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("(not issued yet)") && out.contains("next renewal  now"),
        "{out}"
    );

    // No server running: `acme issue` answers HTTP-01 on the configured address itself.
    let (code, out, err) = run(vec!["acme", "issue", "localhost"]).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Issued localhost in"), "{out}");
    let (code, out, _) = run(vec!["acme", "list", "--json"]).await.unwrap();
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        listed[0]["issuer"].as_str().unwrap().contains("Pebble"),
        "{out}"
    );
    assert!(
        listed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("a third of the lifetime"),
        "{out}"
    );
    let (code, out, _) = run(vec!["acme", "renew"]).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("not due"), "{out}");

    // Another process holds the order lock: no double order.
    let lock_path = dir.path().join("data/acme/localhost.lock");
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(&lock_path)
        .unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let (code, _, err) = run(vec!["acme", "renew", "--force"]).await.unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains("another tlsgate process is ordering localhost"),
        "{err}"
    );
    drop(lock);

    // A server runs: `acme renew --force` orders while the server answers HTTP-01, then tells
    // it to load the new certificate (SIGHUP via the pid file).
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .current_dir(dir.path())
        .args(["serve", "-c", "tlsgate.yaml"])
        .env_remove("SSL_CERT_FILE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !dir.path().join("data/tlsgate.pid").exists() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = default_client(&[pebble.issuing_root()]);
    let main: std::net::SocketAddr = format!("127.0.0.1:{https_port}").parse().unwrap();
    let before = served_leaf(
        &tls_connect(main, "localhost", client.clone())
            .await
            .unwrap(),
    )
    .serial;
    let (code, out, err) = run(vec!["acme", "renew", "--force"]).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("in use: the running server answers"), "{err}");
    assert!(out.contains("told the running server"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = served_leaf(
            &tls_connect(main, "localhost", client.clone())
                .await
                .unwrap(),
        )
        .serial;
        if now != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the running server kept the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
}

/// A loopback listener and a TLS acceptor whose certificate for 127.0.0.1 `ca` issued: the
/// start of a stand-in HTTPS server.
async fn tls_listener(
    ca: &tlsgate::certs::CertificateAuthority,
) -> (tokio_rustls::TlsAcceptor, tokio::net::TcpListener, u16) {
    let leaf = ca
        .issue(
            &["127.0.0.1".to_string()],
            DAY,
            tlsgate::certs::KeyAlgorithm::EcdsaP256,
            tlsgate::certs::generate::Usage::Server,
        )
        .unwrap();
    let key = tlsgate::certs::pem::private_key_from_bytes(
        leaf.key_pem.as_bytes(),
        std::path::Path::new("k"),
    )
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der.clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (acceptor, listener, port)
}

/// A directory in front of Pebble that adds ACME Renewal Information (Pebble 2.4 has none):
/// `/dir` is Pebble's directory plus `renewalInfo`, and `/renewal-info/…` serves `window`.
async fn ari_directory(pebble: &Pebble, window: (i64, i64)) -> String {
    use http_body_util::Full;
    let directory = {
        let url = pebble.directory.clone();
        let root = pebble.https_root.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("curl")
                .args(["-sS", "--cacert", root.to_str().unwrap(), &url])
                .output()
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        })
        .await
        .unwrap()
    };
    let (acceptor, listener, port) = tls_listener(&pebble.https_ca).await;
    let mut directory = directory;
    directory["renewalInfo"] =
        serde_json::Value::String(format!("https://127.0.0.1:{port}/renewal-info"));
    let format = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let info = serde_json::json!({"suggestedWindow": {"start": format(window.0), "end": format(window.1)}});
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, directory, info) =
                (acceptor.clone(), directory.to_string(), info.to_string());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let body = if req.uri().path() == "/dir" {
                            directory.clone()
                        } else {
                            info.clone()
                        };
                        let mut response =
                            hyper::Response::new(Full::new(bytes::Bytes::from(body)));
                        response
                            .headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        response
                            .headers_mut()
                            .insert("retry-after", "3600".parse().unwrap());
                        std::future::ready(Ok::<_, std::convert::Infallible>(response))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    format!("https://127.0.0.1:{port}/dir")
}

/// Puts a locally made certificate for `localhost` with `left` of its 90 days left into
/// `live/localhost/`, as if an earlier order had produced it. Returns its issuer and serial.
fn plant(dir: &std::path::Path, left: i64) -> (rustls::pki_types::CertificateDer<'static>, String) {
    let ca = tlsgate::certs::CertificateAuthority::new(
        "old issuer",
        400 * DAY,
        tlsgate::certs::KeyAlgorithm::EcdsaP256,
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let cert = ca
        .issue_between(
            &["localhost".into()],
            now - time::Duration::days(90 - left),
            now + time::Duration::days(left),
            tlsgate::certs::KeyAlgorithm::EcdsaP256,
            tlsgate::certs::generate::Usage::Server,
        )
        .unwrap();
    let live = dir.join("data/live/localhost");
    std::fs::create_dir_all(&live).unwrap();
    std::fs::write(live.join("cert.pem"), &cert.cert_pem).unwrap();
    std::fs::write(live.join("chain.pem"), &ca.cert_pem).unwrap();
    std::fs::write(
        live.join("fullchain.pem"),
        format!("{}{}", cert.cert_pem, ca.cert_pem),
    )
    .unwrap();
    std::fs::write(live.join("privkey.pem"), &cert.key_pem).unwrap();
    let serial = tlsgate::certs::CertInfo::parse(&cert.der).unwrap().serial;
    (ca.cert_der, serial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ari_window_decides_over_the_lifetime_rule() {
    let now = tlsgate::certs::inspect::unix_now();
    for (left, window, expect_renewal) in [
        // 60 of 90 days left (not due by the 1/3 rule), but the CA says: renew now.
        (60, (now - 3600, now - 60), true),
        // 10 of 90 days left (due by the 1/3 rule), but the CA says: not before next week.
        (10, (now + 7 * 86_400, now + 8 * 86_400), false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (https_port, http_port) = (free_port(), free_port());
        let pebble = Pebble::start(dir.path(), http_port, https_port, &[]);
        let directory = ari_directory(&pebble, window).await;
        let serial = plant(dir.path(), left).1;
        let yaml =
            acme_yaml(&pebble, "http-01", "localhost").replace(&pebble.directory, &directory);
        std::fs::write(
            dir.path().join("tlsgate.yaml"),
            format!("data_dir: data\nadmin: off\nlisten: 127.0.0.1:{https_port}\nhttp:\n  listen: 127.0.0.1:{http_port}\n{yaml}"),
        )
        .unwrap();
        // The same schedule the server's renewal loop follows, run once: `acme renew`.
        let path = dir.path().to_path_buf();
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            tlsgate(&path, &["acme", "renew", "-c", "tlsgate.yaml"])
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{out}{err}");
        let current = tlsgate::certs::CertInfo::parse(
            &read_certs(&dir.path().join("data/live/localhost/cert.pem"))[0],
        )
        .unwrap();
        assert_eq!(
            current.serial != serial,
            expect_renewal,
            "left {left} days, window {window:?}: {out}{err}"
        );
        if expect_renewal {
            assert!(current.issuer.contains("Pebble"), "{}", current.issuer);
        } else {
            assert!(
                out.contains("not due") && out.contains("ACME renewal information"),
                "{out}"
            );
        }
        let path = dir.path().to_path_buf();
        // `acme list` asks the CA only with an account already registered (by `renew` above).
        let (_, listed, _) = tokio::task::spawn_blocking(move || {
            tlsgate(&path, &["acme", "list", "-c", "tlsgate.yaml"])
        })
        .await
        .unwrap();
        assert!(
            listed.contains("ACME renewal information: window"),
            "{listed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding() {
    let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    for (kid, secret, works) in [
        ("kid-1", key, true),
        (
            "kid-1",
            "bm90LXRoZS1yaWdodC1rZXktYXQtYWxsLW5vcGUtbm9wZQ",
            false,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (https_port, http_port) = (free_port(), free_port());
        let pebble = Pebble::start_full(
            dir.path(),
            http_port,
            https_port,
            &[],
            None,
            Some(("kid-1", key)),
        );
        let yaml = acme_yaml(&pebble, "http-01", "localhost").replace(
            "  agree_tos: true\n",
            &format!("  agree_tos: true\n  eab_kid: {kid}\n  eab_hmac_key: {secret}\n"),
        );
        std::fs::write(dir.path().join("tlsgate.yaml"), format!("data_dir: data\nadmin: off\nlisten: 127.0.0.1:{https_port}\nhttp:\n  listen: 127.0.0.1:{http_port}\n{yaml}")).unwrap();
        let path = dir.path().to_path_buf();
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            tlsgate(&path, &["acme", "issue", "localhost", "-c", "tlsgate.yaml"])
        })
        .await
        .unwrap();
        assert_eq!(code == 0, works, "{secret}: {out}{err}");
        assert!(
            !out.contains(key) && !err.contains(key),
            "the real HMAC key is never printed"
        );
        if !works {
            assert!(err.contains("error:"), "{err}");
            assert!(!err.contains(secret), "the HMAC key is not printed: {err}");
        }
    }
}

/// How a CA under test misbehaves once a client is connected.
#[derive(Clone, Copy, Debug)]
enum Silence {
    /// Takes the TCP connection, never says a TLS word.
    NoHandshake,
    /// Completes TLS, reads the request, never answers.
    NoAnswer,
    /// Sends a response head announcing 100 bytes, then 10 of them, then nothing.
    StalledBody,
}

/// A "CA" on loopback that is up but silent in the way `silence` says. Returns its directory
/// URL and the PEM file of the root that signed its certificate.
async fn silent_ca(dir: &std::path::Path, silence: Silence) -> (String, std::path::PathBuf) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = tlsgate::certs::CertificateAuthority::new(
        "silent CA",
        DAY,
        tlsgate::certs::KeyAlgorithm::EcdsaP256,
    )
    .unwrap();
    let root = dir.join("silent-ca.pem");
    std::fs::write(&root, &ca.cert_pem).unwrap();
    let (acceptor, listener, port) = tls_listener(&ca).await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Silence::NoHandshake = silence {
                    let _held = tcp;
                    return tokio::time::sleep(Duration::from_secs(60)).await;
                }
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = [0u8; 4096];
                let _ = tls.read(&mut request).await;
                if let Silence::StalledBody = silence {
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"newNonce";
                    let _ = tls.write_all(head.as_bytes()).await;
                    let _ = tls.flush().await;
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    (format!("https://127.0.0.1:{port}/dir"), root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_is_up_but_silent_is_given_up_on_at_the_request_timeout() {
    for silence in [
        Silence::NoHandshake,
        Silence::NoAnswer,
        Silence::StalledBody,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (directory, root) = silent_ca(dir.path(), silence).await;
        std::fs::write(
            dir.path().join("tlsgate.yaml"),
            format!(
                "data_dir: data\nadmin: off\nlisten: 127.0.0.1:{}\nhttp:\n  listen: 127.0.0.1:{}\n\
                 acme:\n  directory: {directory}\n  ca_root: {}\n  agree_tos: true\n  request_timeout: 700ms\n\
                 tls:\n  certificates:\n    - acme:\n        names: [localhost]\n",
                free_port(),
                free_port(),
                root.display()
            ),
        )
        .unwrap();
        let path = dir.path().to_path_buf();
        let started = Instant::now();
        // `timeout` ends a tlsgate that would wait forever (exit 124) instead of the test.
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("timeout")
                .current_dir(&path)
                .args([
                    "20",
                    env!("CARGO_BIN_EXE_tlsgate"),
                    "acme",
                    "issue",
                    "localhost",
                ])
                .args(["-c", "tlsgate.yaml"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let took = started.elapsed();
        let (code, out, err) = (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        eprintln!("{silence:?} after {took:?}: {err}");
        assert_ne!(code, 0, "{silence:?}: {out}{err}");
        assert!(
            err.contains(&format!("GET {directory}: no answer within 700ms")),
            "{silence:?}: {out}{err}"
        );
        // One deadline per request, and no endless retry of the directory.
        assert!(took < Duration::from_secs(10), "{silence:?}: took {took:?}");
        assert!(
            !dir.path().join("data/live/localhost").exists(),
            "{silence:?}"
        );
    }
}
