//! The TLS edge over real loopback sockets: protocol versions, suites, SNI, ALPN, headers,
//! WebSocket, limits. Clients are rustls, hyper, tokio-tungstenite and `openssl s_client`.

use crate::common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tlsgate::certs::KeyAlgorithm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_config_serves_tls13_and_tls12_checked_against_the_local_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let ca = server.local_ca();

    for (version, expected) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let config = client_config(std::slice::from_ref(&ca), &[version], &[b"http/1.1"]);
        let stream = tls_connect(server.main, "localhost", config).await.unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
        let response = request_on(stream, false, "localhost", "/health").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.body, r#"{"status":"healthy"}"#);
        assert_eq!(response.headers["content-type"], "application/json");
    }

    // The host name is checked: the local certificate is not valid for another name.
    let error = tls_connect(
        server.main,
        "example.com",
        default_client(std::slice::from_ref(&ca)),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("not valid for name"), "{error}");

    // A client that does not trust the local CA is refused.
    let other_ca = fixture_ca(dir.path());
    let error = tls_connect(
        server.main,
        "localhost",
        default_client(&[other_ca.cert_der]),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_certificates_pass_openssl_verify() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let ca = server.data_dir.join("ca/root.crt");
    let leaf = server.data_dir.join("live/localhost/cert.pem");
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    assert!(ok && out.contains(": OK"), "{out}");
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().unwrap(),
        "-purpose",
        "sslserver",
        "-verify_hostname",
        "localhost",
        "-verify_ip",
        "127.0.0.1",
        leaf.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let (_, text) = openssl(&["x509", "-in", ca.to_str().unwrap(), "-noout", "-text"]);
    assert!(text.contains("CA:TRUE"), "{text}");
    assert!(
        text.contains("prime256v1") || text.contains("P-256"),
        "{text}"
    );
    server.stop().await;
}

/// The certificates `openssl s_client -showcerts` receives from `addr` for `localhost`.
async fn showcerts(addr: std::net::SocketAddr) -> (usize, String) {
    let (_, out) = openssl_async(
        [
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
            "-showcerts",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    (out.matches("-----BEGIN CERTIFICATE-----").count(), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trust_anchor_is_never_served_nor_written_into_fullchain() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let (count, out) = showcerts(server.main).await;
    assert_eq!(count, 1, "only the leaf: {out}");
    assert!(out.contains(" 0 s:CN") && !out.contains(" 1 s:"), "{out}");
    let live = server.data_dir.join("live/localhost");
    assert_eq!(read_certs(&live.join("fullchain.pem")).len(), 1);
    let chain = std::fs::read_to_string(live.join("chain.pem")).unwrap();
    assert!(
        !chain.contains("BEGIN CERTIFICATE"),
        "no intermediates: {chain}"
    );
    server.stop().await;

    // A data folder from an older version, whose fullchain.pem ends in the root: the leaf is
    // kept (it is still good), and the root is not sent.
    let root = std::fs::read_to_string(dir.path().join("data/ca/root.crt")).unwrap();
    let leaf = std::fs::read_to_string(live.join("cert.pem")).unwrap();
    std::fs::write(live.join("fullchain.pem"), format!("{leaf}{root}")).unwrap();
    std::fs::write(live.join("chain.pem"), &root).unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let (count, out) = showcerts(server.main).await;
    assert_eq!(count, 1, "only the leaf: {out}");
    let stream = tls_connect(
        server.main,
        "localhost",
        default_client(&[server.local_ca()]),
    )
    .await
    .unwrap();
    let served = served_leaf(&stream);
    let on_disk = tlsgate::certs::CertInfo::parse(&read_certs(&live.join("cert.pem"))[0]).unwrap();
    assert_eq!(served.serial, on_disk.serial, "the leaf was not re-issued");
    server.stop().await;

    // A configured file of leaf + root (as the fixtures write them): the root is not sent.
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "site",
        &["localhost"],
        KeyAlgorithm::EcdsaP256,
    );
    assert_eq!(read_certs(&dir.path().join("site.crt")).len(), 2);
    let yaml = "tls:\n  certificates:\n    - cert_file: site.crt\n      key_file: site.key\n";
    let server = TestServer::start(yaml, dir.path()).await.unwrap();
    let (count, out) = showcerts(server.main).await;
    assert_eq!(count, 1, "only the leaf: {out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_and_cbc_only_clients_are_refused_by_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let connect = server.main.to_string();

    // SECLEVEL=0 makes OpenSSL 3 really offer TLS 1.1; the byte counts prove a ClientHello
    // went out and an alert came back, so the refusal is the server's.
    let (ok, out) = openssl_async(
        [
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "localhost",
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(!ok, "TLS 1.1 was accepted:\n{out}");
    assert!(out.contains("no peer certificate available"), "{out}");
    assert!(
        out.contains("alert"),
        "server answered with an alert:\n{out}"
    );
    assert!(
        !out.contains("written 0 bytes"),
        "a ClientHello was sent:\n{out}"
    );

    let (ok, out) = openssl_async(
        [
            "s_client", "-connect", &connect, "-servername", "localhost", "-tls1_2", "-cipher",
            "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA:AES128-SHA:AES256-SHA256",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(!ok, "a CBC-only TLS 1.2 client was accepted:\n{out}");
    assert!(
        out.contains("no peer certificate available") && out.contains("alert"),
        "{out}"
    );

    // Control: the same tool with an AEAD suite succeeds, so the refusals above are real.
    let ca = server.data_dir.join("ca/root.crt");
    let (ok, out) = openssl_async(
        [
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "localhost",
            "-tls1_2",
            "-CAfile",
            ca.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(ok && out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(
        out.contains("ECDHE-ECDSA-AES256-GCM-SHA384")
            || out.contains("GCM")
            || out.contains("CHACHA20"),
        "{out}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_only_refuses_tls12_and_hybrid_pq_is_negotiated() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("tls:\n  min_version: \"1.3\"\n", dir.path())
        .await
        .unwrap();
    let ca = server.local_ca();
    let tls12 = client_config(std::slice::from_ref(&ca), &[&rustls::version::TLS12], &[]);
    assert!(tls_connect(server.main, "localhost", tls12).await.is_err());
    let stream = tls_connect(server.main, "localhost", default_client(&[ca]))
        .await
        .unwrap();
    let group = stream
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .map(|g| g.name());
    assert_eq!(group, Some(rustls::NamedGroup::X25519MLKEM768));
    server.stop().await;
}

/// A ClientHello record for `localhost` offering ECDHE AES-GCM suites (and TLS_FALLBACK_SCSV,
/// 0x5600, if `fallback`), with `versions` in supported_versions if any (and a TLS 1.3 suite
/// if 1.3 is among them).
fn client_hello(fallback: bool, versions: &[u16]) -> Vec<u8> {
    fn vec16(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }
    fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend(vec16(body));
        out
    }
    let mut suites: Vec<u16> = vec![0xc02b, 0xc02f, 0xc02c, 0xc030];
    if versions.contains(&0x0304) {
        suites.insert(0, 0x1301); // TLS_AES_128_GCM_SHA256
    }
    if fallback {
        suites.push(0x5600);
    }
    let suites: Vec<u8> = suites.iter().flat_map(|s| s.to_be_bytes()).collect();
    let mut sni = vec![0u8];
    sni.extend(vec16(b"localhost"));
    let mut extensions = extension(0, &vec16(&sni));
    extensions.extend(extension(10, &vec16(&[0x00, 0x1d, 0x00, 0x17]))); // x25519, P-256
    extensions.extend(extension(11, &[1, 0])); // uncompressed points
    extensions.extend(extension(13, &vec16(&[0x04, 0x03, 0x08, 0x04, 0x04, 0x01])));
    extensions.extend(extension(23, &[])); // extended master secret
    extensions.extend(extension(0xff01, &[0])); // renegotiation_info
    if !versions.is_empty() {
        let mut list = vec![(versions.len() * 2) as u8];
        list.extend(versions.iter().flat_map(|v| v.to_be_bytes()));
        extensions.extend(extension(43, &list));
        // No shares: a TLS 1.3 server asks for one (HelloRetryRequest, a ServerHello too).
        extensions.extend(extension(51, &vec16(&[])));
    }
    let mut hello = vec![0x03, 0x03];
    hello.extend([7u8; 32]); // random
    hello.push(0); // no session id
    hello.extend(vec16(&suites));
    hello.extend([1, 0]); // null compression
    hello.extend(vec16(&extensions));
    let mut handshake = vec![1u8];
    handshake.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![22u8, 0x03, 0x01];
    record.extend(vec16(&handshake));
    record
}

/// Sends `hello` and returns the first record's type and its first two bytes.
async fn first_answer(server: &TestServer, hello: &[u8]) -> (u8, [u8; 2]) {
    let mut tcp = tokio::net::TcpStream::connect(server.main).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut head = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut head))
        .await
        .expect("an answer within 5 s")
        .expect("an answer of at least 7 bytes");
    (head[0], [head[5], head[6]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls12_fallback_hello_gets_inappropriate_fallback_and_sslscan_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    // RFC 7507: the server speaks TLS 1.3, so a 1.2 hello with the SCSV is a downgrade.
    // Alert record: type 21, level 2 (fatal), description 86 (inappropriate_fallback).
    let alert = (21, [2, 86]);
    assert_eq!(first_answer(&server, &client_hello(true, &[])).await, alert);
    let listed = client_hello(true, &[0x0303]);
    assert_eq!(first_answer(&server, &listed).await, alert);
    // Without the SCSV, or offering TLS 1.3 too: a ServerHello (handshake record, type 2).
    for hello in [
        client_hello(false, &[]),
        client_hello(true, &[0x0304, 0x0303]),
    ] {
        let (record, [kind, detail]) = first_answer(&server, &hello).await;
        assert_eq!((record, kind), (22, 2), "{detail}");
    }

    let connect = server.main.to_string();
    let (ok, out) = openssl_async(
        [
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "localhost",
            "-tls1_2",
            "-fallback_scsv",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(!ok, "{out}");
    // The server's alert, not OpenSSL's own downgrade check of the ServerHello random.
    assert!(out.contains("alert inappropriate fallback"), "{out}");
    assert!(out.contains("alert number 86"), "{out}");
    // A real TLS 1.2 client without the SCSV still connects.
    let ca = server.local_ca();
    let tls12 = client_config(std::slice::from_ref(&ca), &[&rustls::version::TLS12], &[]);
    assert!(tls_connect(server.main, "localhost", tls12).await.is_ok());

    let output = tokio::process::Command::new("sslscan")
        .args([
            "--no-colour",
            "--no-heartbleed",
            "--no-renegotiation",
            "--no-compression",
            "--no-ciphersuites",
            "--no-groups",
            "--no-check-certificate",
            "--sni-name=localhost",
        ])
        .arg(&connect)
        .output()
        .await
        .expect("sslscan is installed by scripts/test.sh");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains("Server supports TLS Fallback SCSV"),
        "{report}"
    );

    let admin = server.admin.unwrap();
    let metrics = http_get(admin, "127.0.0.1", "/metrics").await.body;
    let counted = metrics.lines().find(|l| {
        l.starts_with("tlsgate_tls_handshake_failures_total")
            && l.contains("reason=\"inappropriate_fallback\"")
    });
    // Two hand-built hellos, openssl, and sslscan's probe (at least one).
    let count: f64 = counted
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    assert!(count >= 3.0, "{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_tls13_suite_list_is_what_gets_negotiated() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "tls:\n  tls13_cipher_suites: [TLS_CHACHA20_POLY1305_SHA256]\n";
    let server = TestServer::start(yaml, dir.path()).await.unwrap();
    let stream = tls_connect(
        server.main,
        "localhost",
        default_client(&[server.local_ca()]),
    )
    .await
    .unwrap();
    let suite = stream
        .get_ref()
        .1
        .negotiated_cipher_suite()
        .map(|s| s.suite());
    assert_eq!(
        suite,
        Some(rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_exact_then_wildcard_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "exact",
        &["api.example.com"],
        KeyAlgorithm::EcdsaP256,
    );
    fixture_cert(
        &ca,
        dir.path(),
        "wild",
        &["*.example.com"],
        KeyAlgorithm::EcdsaP384,
    );
    fixture_cert(
        &ca,
        dir.path(),
        "fallback",
        &["default.test", "127.0.0.1"],
        KeyAlgorithm::Rsa2048,
    );
    let yaml = "tls:\n  certificates:\n    - cert_file: exact.crt\n      key_file: exact.key\n    - pem_file: wild.pem\n    - cert_file: fallback.crt\n      key_file: fallback.key\n      default: true\n";
    let server = TestServer::start(yaml, dir.path()).await.unwrap();
    let client = default_client(std::slice::from_ref(&ca.cert_der));

    let served = |name: &'static str| {
        let client = client.clone();
        let addr = server.main;
        async move { served_leaf(&tls_connect(addr, name, client).await.unwrap()).dns_names }
    };
    assert_eq!(served("api.example.com").await, vec!["api.example.com"]);
    assert_eq!(served("www.example.com").await, vec!["*.example.com"]);
    assert_eq!(served("default.test").await, vec!["default.test"]);

    // No SNI (an IP address as server name sends none): the default certificate.
    let stream = tls_connect(server.main, "127.0.0.1", client.clone())
        .await
        .unwrap();
    assert_eq!(served_leaf(&stream).dns_names, vec!["default.test"]);

    // An unknown name gets the default too (and fails verification for that name).
    let ca_path = dir.path().join("ca.crt");
    let (_, out) = openssl_async(
        [
            "s_client",
            "-connect",
            &server.main.to_string(),
            "-servername",
            "unknown.test",
            "-CAfile",
            ca_path.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(
        out.contains("CN = default.test") || out.contains("CN=default.test"),
        "{out}"
    );
    // openssl without -servername sends no SNI: default certificate.
    let (_, out) = openssl_async(
        [
            "s_client",
            "-connect",
            &server.main.to_string(),
            "-noservername",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(out.contains("default.test"), "{out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_and_ecdsa_for_one_name_each_client_gets_what_it_can_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "ec",
        &["dual.test"],
        KeyAlgorithm::EcdsaP256,
    );
    fixture_cert(
        &ca,
        dir.path(),
        "rsa",
        &["dual.test"],
        KeyAlgorithm::Rsa2048,
    );
    // The default is listed second: the pair is the default for no-SNI clients either way.
    let yaml = "tls:\n  certificates:\n    - pem_file: rsa.pem\n    - pem_file: ec.pem\n      default: true\n";
    let server = TestServer::start(yaml, dir.path()).await.unwrap();
    let ca_path = dir.path().join("ca.crt");
    for (sigalgs, expected, sni) in [
        ("rsa_pss_rsae_sha256:RSA+SHA256", "RSA", "-servername"),
        ("ECDSA+SHA256", "EC", "-servername"),
        ("rsa_pss_rsae_sha256:RSA+SHA256", "RSA", "-noservername"),
        ("ECDSA+SHA256", "EC", "-noservername"),
    ] {
        let mut args = vec!["s_client", "-connect"];
        let connect = server.main.to_string();
        args.push(&connect);
        args.push(sni);
        if sni == "-servername" {
            args.push("dual.test");
        }
        let (ok, out) = openssl_async(
            args.into_iter()
                .chain([
                    "-tls1_2",
                    "-sigalgs",
                    sigalgs,
                    "-CAfile",
                    ca_path.to_str().unwrap(),
                ])
                .map(String::from)
                .collect(),
        )
        .await;
        assert!(ok, "{sigalgs} {sni}: {out}");
        let key_line = out
            .lines()
            .find(|l| l.contains("Server public key is"))
            .unwrap_or("");
        let expected_bits = if expected == "RSA" {
            "2048 bit"
        } else {
            "256 bit"
        };
        assert!(
            key_line.contains(expected_bits),
            "{sigalgs}: {key_line}\n{out}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_format_and_type_loads() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    let kinds = [
        ("p256", KeyAlgorithm::EcdsaP256, None),
        ("p384", KeyAlgorithm::EcdsaP384, Some("ec")), // SEC1
        ("rsa2048", KeyAlgorithm::Rsa2048, Some("rsa")), // PKCS#1
        ("rsa4096", KeyAlgorithm::Rsa4096, None),
        ("ed25519", KeyAlgorithm::Ed25519, None),
    ];
    let mut yaml = String::from("tls:\n  certificates:\n");
    for (name, algorithm, traditional) in kinds {
        let host = format!("{name}.test");
        fixture_cert(&ca, dir.path(), name, &[host.as_str()], algorithm);
        let key = dir.path().join(format!("{name}.key"));
        if let Some(kind) = traditional {
            // openssl rewrites the PKCS#8 key as PKCS#1 (RSA) or SEC1 (EC).
            let converted = dir.path().join(format!("{name}.traditional.key"));
            let (ok, out) = openssl(&[
                "pkey",
                "-in",
                key.to_str().unwrap(),
                "-out",
                converted.to_str().unwrap(),
                "-traditional",
            ]);
            assert!(ok, "{out}");
            std::fs::rename(&converted, &key).unwrap();
            let text = std::fs::read_to_string(&key).unwrap();
            let label = if kind == "rsa" {
                "BEGIN RSA PRIVATE KEY"
            } else {
                "BEGIN EC PRIVATE KEY"
            };
            assert!(text.contains(label), "{text}");
        }
        yaml.push_str(&format!(
            "    - cert_file: {name}.crt\n      key_file: {name}.key\n"
        ));
    }
    let server = TestServer::start(&yaml, dir.path()).await.unwrap();
    for (name, _, _) in kinds {
        let host = format!("{name}.test");
        let host: &'static str = Box::leak(host.into_boxed_str());
        let client = default_client(std::slice::from_ref(&ca.cert_der));
        let response = https_get(server.main, host, client, "/health").await;
        assert_eq!(response.status, 200, "{name}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_and_http11_both_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let ca = server.local_ca();
    let h2 = client_config(
        std::slice::from_ref(&ca),
        rustls::ALL_VERSIONS,
        &[b"h2", b"http/1.1"],
    );
    let stream = tls_connect(server.main, "localhost", h2).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let response = request_on(stream, true, "localhost", "/health").await;
    assert_eq!(response.version, http::Version::HTTP_2);
    assert_eq!(response.status, 200);
    assert!(response.headers.contains_key("strict-transport-security"));

    let h1 = client_config(
        std::slice::from_ref(&ca),
        rustls::ALL_VERSIONS,
        &[b"http/1.1"],
    );
    let stream = tls_connect(server.main, "localhost", h1).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let response = request_on(stream, false, "localhost", "/health").await;
    assert_eq!(response.version, http::Version::HTTP_11);
    server.stop().await;
}

/// `curl -sI` over the given HTTP version, trusting the local CA; (exit code, output).
async fn curl_head(server: &TestServer, version: &str, path: &str) -> (i32, String) {
    let ca = server.data_dir.join("ca/root.crt");
    let port = server.main.port();
    let output = tokio::process::Command::new("curl")
        .args(["-sSI", version, "--max-time", "5", "--cacert"])
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .await
        .expect("curl is installed (scripts/test.sh installs it)");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_over_http2_gets_the_get_headers_and_no_body() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    for version in ["--http2", "--http1.1"] {
        let (code, out) = curl_head(&server, version, "/health").await;
        assert_eq!(code, 0, "{version}: {out}");
        assert!(out.starts_with("HTTP/"), "{version}: {out}");
        assert!(
            out.lines().next().unwrap().contains(" 200"),
            "{version}: {out}"
        );
        assert!(
            out.contains("content-type: application/json"),
            "{version}: {out}"
        );
        // As GET's would be (RFC 9110 §9.3.2).
        assert!(out.contains("content-length: 20"), "{version}: {out}");
        let (code, out) = curl_head(&server, version, "/nope").await;
        assert_eq!(code, 0, "{version}: {out}");
        assert!(
            out.lines().next().unwrap().contains(" 404"),
            "{version}: {out}"
        );
        assert!(out.contains("content-type: text/plain"), "{version}: {out}");
    }

    // hyper's HTTP/2 client: the stream ends after the headers, not in a reset.
    let ca = server.local_ca();
    let h2 = client_config(std::slice::from_ref(&ca), rustls::ALL_VERSIONS, &[b"h2"]);
    let stream = tls_connect(server.main, "localhost", h2).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for (path, status) in [("/health", 200), ("/nope", 404), ("/health", 200)] {
        let head = http::Request::head(format!("https://localhost{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender.send_request(head).await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(response.version(), http::Version::HTTP_2);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert!(body.is_empty(), "{path}: {body:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_on_every_https_response_and_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let client = default_client(&[server.local_ca()]);
    for path in ["/health", "/nope", "/ws"] {
        let response = https_get(server.main, "localhost", client.clone(), path).await;
        let h = &response.headers;
        assert_eq!(
            h["strict-transport-security"], "max-age=31536000; includeSubDomains",
            "{path}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(
            h["referrer-policy"], "strict-origin-when-cross-origin",
            "{path}"
        );
        assert!(h.get("server").is_none(), "no Server header on {path}");
    }
    server.stop().await;

    let yaml = "headers:\n  hsts:\n    preload: true\n  x_frame_options: off\n  custom:\n    Permissions-Policy: camera=()\n";
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(yaml, dir.path()).await.unwrap();
    let response = https_get(
        server.main,
        "localhost",
        default_client(&[server.local_ca()]),
        "/health",
    )
    .await;
    assert_eq!(
        response.headers["strict-transport-security"],
        "max-age=31536000; includeSubDomains; preload"
    );
    assert!(response.headers.get("x-frame-options").is_none());
    assert_eq!(response.headers["permissions-policy"], "camera=()");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_answers_carry_a_csp_that_allows_nothing() {
    const CSP: &str = "default-src 'none'; frame-ancestors 'none'";
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let ca = server.local_ca();
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let client = client_config(std::slice::from_ref(&ca), rustls::ALL_VERSIONS, &[alpn]);
        for (path, status) in [("/health", 200), ("/nope", 404)] {
            let response = https_get(server.main, "localhost", client.clone(), path).await;
            assert_eq!(response.status, status, "{path}");
            assert_eq!(response.headers["content-security-policy"], CSP, "{path}");
        }
    }
    // 421: the Host is not the name the connection was opened for.
    let stream = tls_connect(
        server.main,
        "localhost",
        default_client(std::slice::from_ref(&ca)),
    )
    .await
    .unwrap();
    let response = request_on(stream, false, "127.0.0.1", "/health").await;
    assert_eq!(response.status, 421);
    assert_eq!(response.headers["content-security-policy"], CSP);
    // The redirect's body, on the plain-HTTP listener.
    let response = http_get(server.http.unwrap(), "localhost", "/x").await;
    assert_eq!(response.status, 301);
    assert_eq!(response.headers["content-security-policy"], CSP);
    // The answer to plain HTTP sent to the TLS port.
    let mut plain = tokio::net::TcpStream::connect(server.main).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.contains(&format!("content-security-policy: {CSP}\r\n")),
        "{answer}"
    );
    // curl agrees, over HTTP/2.
    let (code, out) = curl_head(&server, "--http2", "/health").await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("content-security-policy: {CSP}")),
        "{out}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listener_redirects_exactly_and_never_sends_hsts() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let http = server.http.unwrap();
    let response = http_get(http, "localhost:8080", "/api/items?page=2&sort=name").await;
    assert_eq!(response.status, 301);
    assert_eq!(
        response.headers["location"],
        format!(
            "https://localhost:{}/api/items?page=2&sort=name",
            server.main.port()
        )
        .as_str()
    );
    assert!(response.headers.get("strict-transport-security").is_none());
    let response = http_get(http, "localhost", "/.well-known/acme-challenge/token123").await;
    assert_eq!(response.status, 404);
    server.stop().await;

    // The port is left out for 443, and reject mode answers 403.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("http:\n  redirect_port: 443\n", dir.path())
        .await
        .unwrap();
    let response = http_get(server.http.unwrap(), "example.com", "/x").await;
    assert_eq!(response.headers["location"], "https://example.com/x");
    server.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("http: reject\n", dir.path())
        .await
        .unwrap();
    let response = http_get(server.http.unwrap(), "example.com", "/x").await;
    assert_eq!(response.status, 403);
    assert_eq!(response.body.trim(), "TLS required");
    server.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("http: off\n", dir.path()).await.unwrap();
    assert!(server.http.is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_sent_to_the_tls_port_gets_an_answer_it_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    // curl as the independent client: an HTTP answer it parses, not a TLS alert.
    let url = format!("http://127.0.0.1:{}/some/path", server.main.port());
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", &url])
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        printed.starts_with("This port speaks HTTPS") && printed.ends_with("\n400"),
        "{printed}"
    );
    // A POST with a body larger than the first read gets the same answer (`Expect:` empty:
    // curl sends the body at once instead of waiting for a 100).
    let body = dir.path().join("body");
    std::fs::write(&body, "x".repeat(200_000)).unwrap();
    let data = format!("@{}", body.display());
    let output = tokio::process::Command::new("curl")
        .args([
            "-H",
            "Expect:",
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
            &data,
            &url,
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "400",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A request line that arrives in pieces, split inside a method longer than a TLS record
    // header (5 bytes), gets the same answer, not a TLS alert.
    let mut typed = tokio::net::TcpStream::connect(server.main).await.unwrap();
    typed.set_nodelay(true).unwrap();
    typed.write_all(b"OPTIO").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    typed
        .write_all(b"NS * HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), typed.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("use https:// instead"), "{answer}");
    // The port still speaks TLS.
    let response = https_get(
        server.main,
        "localhost",
        default_client(&[server.local_ca()]),
        "/health",
    )
    .await;
    assert_eq!(response.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_echo_text_binary_ping() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let (mut ws, status) = server.wss_connect("/ws").await;
    assert_eq!(status, 101);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(b"p".to_vec().into())
    );
    // The client's close is answered with a close frame (a closing handshake, not a drop).
    ws.send(Message::Close(None)).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(reply, Ok(Some(Ok(Message::Close(_))))),
        "close reply: {reply:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_gets_431() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("limits:\n  max_header_size: 8KiB\n", dir.path())
        .await
        .unwrap();
    let mut stream = tls_connect(
        server.main,
        "localhost",
        default_client(&[server.local_ca()]),
    )
    .await
    .unwrap();
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    server.stop().await;
}

async fn get_on(stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_but_idle_keepalive_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "limits:\n  header_read_timeout: 1s\n  idle_timeout: 30s\n  handshake_timeout: 1s\n";
    let server = TestServer::start(yaml, dir.path()).await.unwrap();
    let client = default_client(&[server.local_ca()]);

    // Slowloris: half a request head, then nothing.
    let mut stream = tls_connect(server.main, "localhost", client.clone())
        .await
        .unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server closed the slow connection");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(buf.is_empty(), "no response to a request never completed");

    // A keep-alive connection idle for longer than the header timeout still works: the
    // header deadline starts with a request's first byte, not with the idle wait.
    let mut stream = tls_connect(server.main, "localhost", client.clone())
        .await
        .unwrap();
    assert!(get_on(&mut stream).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(get_on(&mut stream).await.starts_with("HTTP/1.1 200"));

    // A TCP client that never starts the handshake.
    let mut tcp = tokio::net::TcpStream::connect(server.main).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "silent client was dropped: {closed:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_closed_after_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "limits:\n  header_read_timeout: 30s\n  idle_timeout: 1s\n";
    let server = TestServer::start(yaml, dir.path()).await.unwrap();
    let client = default_client(&[server.local_ca()]);
    let mut stream = tls_connect(server.main, "localhost", client.clone())
        .await
        .unwrap();
    assert!(get_on(&mut stream).await.starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle keep-alive connection was closed");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the idle timeout"
    );

    // HTTP/2: GOAWAY after the idle timeout, too.
    let h2 = client_config(&[server.local_ca()], rustls::ALL_VERSIONS, &[b"h2"]);
    let stream = tls_connect(server.main, "localhost", h2).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (_sender, connection) = hyper::client::conn::http2::handshake::<
        _,
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioExecutor::new(), io)
    .await
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(
        ended.is_ok(),
        "idle HTTP/2 connection was closed by the server"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_and_tickets_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let client = default_client(&[server.local_ca()]);
    for _ in 0..2 {
        // The first connection stores a ticket in the client's session cache.
        let mut stream = tls_connect(server.main, "localhost", client.clone())
            .await
            .unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    }
    let stream = tls_connect(server.main, "localhost", client).await.unwrap();
    assert_eq!(
        stream.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );

    // TLS 1.2: a ticket is issued by default, and not with session_tickets: false.
    let ca = server.data_dir.join("ca/root.crt");
    let args = |addr: std::net::SocketAddr| {
        [
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
            "-tls1_2",
            "-CAfile",
            ca.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let (_, out) = openssl_async(args(server.main)).await;
    assert!(out.contains("TLS session ticket:"), "{out}");
    server.stop().await;

    let dir2 = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir2.path().join("data")).unwrap();
    copy_dir(&dir.path().join("data"), &dir2.path().join("data"));
    let server = TestServer::start("tls:\n  session_tickets: false\n", dir2.path())
        .await
        .unwrap();
    let (ok, out) = openssl_async(args(server.main)).await;
    assert!(ok, "{out}");
    assert!(!out.contains("TLS session ticket:"), "{out}");
    server.stop().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_websockets_with_1001() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let (mut ws, _) = server.wss_connect("/ws").await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));
    server.shutdown.cancel();
    let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    match message {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(5), server.handle)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_mode_serves_http_and_ws() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("tls: off\n", dir.path()).await.unwrap();
    assert!(server.http.is_none(), "no redirect listener without TLS");
    let response = http_get(server.main, "localhost", "/health").await;
    assert_eq!(response.status, 200);
    assert!(response.headers.get("strict-transport-security").is_none());
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.main))
        .await
        .unwrap();
    ws.send(Message::text("plain")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("plain"));
    assert!(
        !dir.path().join("data/ca").exists(),
        "no CA made in plain mode"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_holds_extra_clients_until_a_slot_frees() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("limits:\n  max_connections: 1\n", dir.path())
        .await
        .unwrap();
    let client = default_client(&[server.local_ca()]);
    let first = tls_connect(server.main, "localhost", client.clone())
        .await
        .unwrap();
    // The second client is accepted by the kernel but not served while the first is open.
    let second = tokio::time::timeout(
        Duration::from_millis(700),
        tls_connect(server.main, "localhost", client.clone()),
    )
    .await;
    assert!(
        second.is_err(),
        "second connection was served beyond the limit"
    );
    drop(first);
    let third = tokio::time::timeout(
        Duration::from_secs(5),
        tls_connect(server.main, "localhost", client),
    )
    .await;
    assert!(
        matches!(third, Ok(Ok(_))),
        "a slot freed up after the first closed"
    );
    server.stop().await;
}

/// A client offering TLS 1.3 suites in `order` (codes as rustls names them).
fn client_with_suites(
    roots: &[rustls::pki_types::CertificateDer<'static>],
    order: &[rustls::CipherSuite],
) -> std::sync::Arc<rustls::ClientConfig> {
    let base = rustls::crypto::aws_lc_rs::default_provider();
    let suites = order
        .iter()
        .map(|code| {
            *base
                .cipher_suites
                .iter()
                .find(|s| s.suite() == *code)
                .unwrap()
        })
        .collect();
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites,
        ..base
    };
    client_config_with(provider, roots, &[&rustls::version::TLS13], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_suite_order_wins_except_for_clients_that_prefer_chacha() {
    use rustls::CipherSuite::{
        TLS13_AES_128_GCM_SHA256 as AES128, TLS13_AES_256_GCM_SHA384 as AES256,
        TLS13_CHACHA20_POLY1305_SHA256 as CHACHA,
    };
    let negotiated = |stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        stream
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .unwrap()
            .suite()
    };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let roots = [server.local_ca()];
    // Default order: AES-128-GCM first, even for a client that lists AES-256 first (as
    // OpenSSL and rustls clients do).
    let stream = tls_connect(
        server.main,
        "localhost",
        client_with_suites(&roots, &[AES256, AES128, CHACHA]),
    )
    .await
    .unwrap();
    assert_eq!(negotiated(&stream), AES128);
    // A client listing ChaCha20 first (no AES hardware) gets ChaCha20.
    let stream = tls_connect(
        server.main,
        "localhost",
        client_with_suites(&roots, &[CHACHA, AES256, AES128]),
    )
    .await
    .unwrap();
    assert_eq!(negotiated(&stream), CHACHA);
    server.stop().await;

    // A configured order is the server's preference.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        "tls:\n  tls13_cipher_suites: [TLS_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256]\n",
        dir.path(),
    )
    .await
    .unwrap();
    let roots = [server.local_ca()];
    let stream = tls_connect(
        server.main,
        "localhost",
        client_with_suites(&roots, &[AES128, AES256]),
    )
    .await
    .unwrap();
    assert_eq!(negotiated(&stream), AES256);
    server.stop().await;
}

/// Reads from a blocking rustls client until the response to one request is complete (the
/// server closes after it: `Connection: close`).
fn read_response_blocking(
    client: &mut rustls::ClientConnection,
    tcp: &mut std::net::TcpStream,
) -> String {
    use std::io::Read;
    let mut response = Vec::new();
    loop {
        match client.complete_io(tcp) {
            Ok((0, 0)) => break,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(error) => panic!("reading the response: {error}"),
        }
        let mut chunk = [0u8; 4096];
        match client.reader().read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => panic!("reading plaintext: {error}"),
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_split_across_reads_key_updates_and_close_notify_work_on_tls13_and_tls12() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let ca = server.local_ca();
    let addr = server.main;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = client_config(std::slice::from_ref(&ca), &[version], &[b"http/1.1"]);
        let tls13 = version.version == rustls::ProtocolVersion::TLSv1_3;
        let answer = tokio::task::spawn_blocking(move || {
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut client = rustls::ClientConnection::new(config, name).unwrap();
            while client.is_handshaking() {
                client.complete_io(&mut tcp).unwrap();
            }
            // A key update first (TLS 1.3): the server must switch keys both ways, answering
            // with its own, or nothing after it decrypts.
            if tls13 {
                client.refresh_traffic_keys().unwrap();
            }
            client
                .writer()
                .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            // Every record reaches the server in pieces, a pause between them.
            for piece in wire.chunks(7) {
                tcp.write_all(piece).unwrap();
                tcp.flush().unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            let response = read_response_blocking(&mut client, &mut tcp);
            // The server closed with close_notify, not a bare FIN.
            let clean = client
                .process_new_packets()
                .map(|state| state.peer_has_closed());
            (response, clean)
        })
        .await
        .unwrap();
        let (response, clean) = answer;
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "{version:?}: {response}"
        );
        assert!(
            response.ends_with(r#"{"status":"healthy"}"#),
            "{version:?}: {response}"
        );
        assert_eq!(clean.ok(), Some(true), "{version:?}: close_notify received");
    }
    server.stop().await;
}

/// A client that sends its request in the same write as its Finished: the server holds its
/// TLS 1.3 session tickets back to send them with the response. The response must come
/// whole, and the tickets with it: the next connection resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_held_for_the_response_arrive_with_it() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let ca = server.local_ca();
    let addr = server.main;
    let config = client_config(
        std::slice::from_ref(&ca),
        &[&rustls::version::TLS13],
        &[b"http/1.1"],
    );
    let kinds = tokio::task::spawn_blocking(move || {
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.set_nodelay(true).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut client = rustls::ClientConnection::new(config.clone(), name).unwrap();
            // Queued before the handshake: rustls sends it right behind the Finished.
            client
                .writer()
                .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            tcp.write_all(&wire).unwrap();
            while client.is_handshaking() {
                client.read_tls(&mut tcp).unwrap();
                client.process_new_packets().unwrap();
            }
            // Finished and the request, in one write.
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            tcp.write_all(&wire).unwrap();
            let response = read_response_blocking(&mut client, &mut tcp);
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            assert!(response.ends_with(r#"{"status":"healthy"}"#), "{response}");
            kinds.push(client.handshake_kind());
        }
        kinds
    })
    .await
    .unwrap();
    assert_eq!(
        kinds,
        vec![
            Some(rustls::HandshakeKind::Full),
            Some(rustls::HandshakeKind::Resumed)
        ]
    );
    server.stop().await;
}

/// TLS 1.3 session tickets may wait to leave with the first response, but not while the
/// client still holds its request back: under Nagle's algorithm a client sends the request
/// only once its Finished is acknowledged, and with nothing coming back the server's delayed
/// ACK held every first request for about 40 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_under_nagles_algorithm_is_not_held_by_a_delayed_ack() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let ca = server.local_ca();
    let mut config = (*client_config(
        std::slice::from_ref(&ca),
        &[&rustls::version::TLS13],
        &[b"http/1.1"],
    ))
    .clone();
    config.resumption = rustls::client::Resumption::disabled();
    let config = std::sync::Arc::new(config);
    let mut took = Vec::new();
    for _ in 0..9 {
        let started = std::time::Instant::now();
        let tcp = tokio::net::TcpStream::connect(server.main).await.unwrap();
        tcp.set_nodelay(false).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        let reply = get_on(&mut tls).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        took.push(started.elapsed());
    }
    took.sort();
    assert!(
        took[4] < Duration::from_millis(25),
        "median connection + first request took {:?} ({took:?})",
        took[4]
    );
    server.stop().await;
}

/// The built-in endpoints pass the same pipeline as routes: the request checks refuse what no
/// target may see, before `/health` or the echo is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_endpoints_pass_the_request_checks_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start("", dir.path()).await.unwrap();
    let client = default_client(&[server.local_ca()]);
    let get = |path: &'static str| https_get(server.main, "localhost", client.clone(), path);
    assert_eq!(get("/health").await.status, 200);
    for path in ["/./health", "/x/../health", "/%2e%2e/health"] {
        let response = get(path).await;
        assert_eq!(response.status, 400, "{path}: {}", response.body);
        assert!(
            response.body.contains(". or .."),
            "{path}: {}",
            response.body
        );
    }
    // A WebSocket opening without a key is refused as a bad handshake, not echoed.
    let stream = tls_connect(server.main, "localhost", default_client_h1(&server))
        .await
        .unwrap();
    let request = http::Request::get("/ws")
        .header("host", "localhost")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-version", "13")
        .body(body_of(""))
        .unwrap();
    let response = send_on(stream, request).await;
    assert_eq!(response.status, 400, "{}", response.body);
    server.stop().await;
}

fn default_client_h1(server: &TestServer) -> std::sync::Arc<rustls::ClientConfig> {
    let mut config = (*default_client(&[server.local_ca()])).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    std::sync::Arc::new(config)
}
