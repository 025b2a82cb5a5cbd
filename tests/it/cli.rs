//! The binary as an operator runs it: start-up errors and exit codes, the banner, the seeds'
//! environment variables, `config check` over every example, SIGTERM.

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use tlsgate::certs::KeyAlgorithm;

const BIN: &str = env!("CARGO_BIN_EXE_tlsgate");

pub(crate) fn tlsgate(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(dir);
    for (key, _) in std::env::vars() {
        if key.starts_with("TLSGATE_") || key.starts_with("SSL_") {
            command.env_remove(key);
        }
    }
    command
}

/// Runs to completion; returns (exit code, stdout, stderr).
pub(crate) fn run(command: &mut Command) -> (i32, String, String) {
    let output = command.output().expect("run tlsgate");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) banner: String,
    pub(crate) main: SocketAddr,
    pub(crate) http: Option<SocketAddr>,
    stderr: mpsc::Receiver<String>,
}

/// A test that panics still stops its server: an orphan would hold ports (and, once, the
/// build lock) for ever.
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Starts `serve` on ephemeral ports and waits for the banner.
    pub(crate) fn start(command: &mut Command, extra: &[&str]) -> Running {
        let mut child = command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(if extra.contains(&"--admin-listen") {
                &[][..]
            } else {
                &["--admin-listen", "127.0.0.1:0"][..]
            })
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().unwrap();
        let mut stderr_pipe = child.stderr.take().unwrap();
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            let _ = err_tx.send(text);
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut banner = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                banner.push_str(&line);
                banner.push('\n');
                if line.starts_with("  Check:") || line.starts_with("  ws://") {
                    let _ = tx.send(banner.clone());
                }
            }
        });
        let Ok(banner) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let stderr = err_rx
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default();
            panic!("no banner; stderr:\n{stderr}");
        };
        let main = banner
            .split_whitespace()
            .find_map(|w| w.parse::<SocketAddr>().ok())
            .expect("main address in banner");
        let http = banner
            .lines()
            .find_map(|l| l.trim().strip_prefix("http://"))
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok())
            .filter(|addr: &SocketAddr| *addr != main);
        Running {
            child,
            banner,
            main,
            http,
            stderr: err_rx,
        }
    }

    /// SIGTERM, then the exit code and everything written to stderr.
    pub(crate) fn stop(mut self) -> (i32, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let code = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status.code().unwrap_or(-1);
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                break -1;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (
            code,
            self.stderr
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_config_banner_files_and_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let running = Running::start(&mut tlsgate(dir.path()), &[]);
    let data = dir.path().join("tlsgate-data");
    let ca_path = data.join("ca/root.crt");
    assert!(
        running
            .banner
            .contains(&format!("https://localhost:{}/health", running.main.port())),
        "{}",
        running.banner
    );
    assert!(running
        .banner
        .contains(&format!("wss://localhost:{}/ws", running.main.port())));
    assert!(
        running
            .banner
            .contains(&format!("CA to trust: {}", ca_path.display())),
        "{}",
        running.banner
    );
    assert!(running.banner.contains(&format!(
        "curl --cacert {} https://localhost:{}/health",
        ca_path.display(),
        running.main.port()
    )));
    assert!(running.http.is_some(), "{}", running.banner);

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("ca")), 0o700);
    assert_eq!(mode(&data.join("ca/root.key")), 0o600);
    assert_eq!(mode(&data.join("live/localhost/privkey.pem")), 0o600);

    // The copy-paste check from the banner works as printed.
    let curl = Command::new("curl")
        .args(["-sS", "--cacert", ca_path.to_str().unwrap()])
        .arg(format!("https://localhost:{}/health", running.main.port()))
        .output()
        .expect("curl is installed (scripts/test.sh installs it)");
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        r#"{"status":"healthy"}"#
    );
    let (code, _) = running.stop();
    assert_eq!(code, 0, "SIGTERM exits 0");

    let ca_before = std::fs::read(&ca_path).unwrap();
    let leaf_before = std::fs::read(data.join("live/localhost/cert.pem")).unwrap();
    let running = Running::start(&mut tlsgate(dir.path()), &[]);
    assert!(
        !running.banner.contains("(new"),
        "the CA is reused: {}",
        running.banner
    );
    running.stop();
    assert_eq!(std::fs::read(&ca_path).unwrap(), ca_before, "CA reused");
    assert_eq!(
        std::fs::read(data.join("live/localhost/cert.pem")).unwrap(),
        leaf_before,
        "leaf reused"
    );
}

#[test]
fn leaf_near_expiry_or_from_another_ca_is_reissued_at_start() {
    use tlsgate::certs::generate::{CertificateAuthority, Usage};
    use tlsgate::certs::local_ca::{self, LeafAction};
    let dir = tempfile::tempdir().unwrap();
    let first = local_ca::ensure(dir.path()).unwrap();
    assert!(first.ca_created);
    assert_eq!(first.leaf, LeafAction::Issued);
    assert_eq!(
        local_ca::ensure(dir.path()).unwrap().leaf,
        LeafAction::Reused
    );

    // Replace the leaf with one that has 10 of its 90 days left: less than a third.
    let ca = CertificateAuthority::from_pem(
        &std::fs::read_to_string(&first.ca_cert).unwrap(),
        &std::fs::read_to_string(&first.ca_key).unwrap(),
    )
    .unwrap();
    let names: Vec<String> = local_ca::LOCAL_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let now = time::OffsetDateTime::now_utc();
    let old = ca
        .issue_between(
            &names,
            now - time::Duration::days(80),
            now + time::Duration::days(10),
            KeyAlgorithm::EcdsaP256,
            Usage::Server,
        )
        .unwrap();
    std::fs::write(
        &first.live.fullchain,
        format!("{}{}", old.cert_pem, ca.cert_pem),
    )
    .unwrap();
    std::fs::write(&first.live.cert, &old.cert_pem).unwrap();
    std::fs::write(&first.live.privkey, &old.key_pem).unwrap();
    let renewed = local_ca::ensure(dir.path()).unwrap();
    assert!(
        matches!(&renewed.leaf, LeafAction::Reissued(why) if why.contains("less than a third")),
        "{:?}",
        renewed.leaf
    );
    let fresh = tlsgate::certs::CertInfo::parse(&read_certs(&renewed.live.cert)[0]).unwrap();
    assert!(fresh.remaining_secs(tlsgate::certs::inspect::unix_now()) > 89 * 86_400);
    assert_eq!(
        local_ca::ensure(dir.path()).unwrap().leaf,
        LeafAction::Reused
    );

    // A leaf signed by a different CA is replaced.
    let stranger =
        CertificateAuthority::new("stranger", 30 * DAY, KeyAlgorithm::EcdsaP256).unwrap();
    let foreign = stranger
        .issue(&names, 90 * DAY, KeyAlgorithm::EcdsaP256, Usage::Server)
        .unwrap();
    std::fs::write(&first.live.fullchain, &foreign.cert_pem).unwrap();
    std::fs::write(&first.live.cert, &foreign.cert_pem).unwrap();
    std::fs::write(&first.live.privkey, &foreign.key_pem).unwrap();
    let again = local_ca::ensure(dir.path()).unwrap();
    assert!(
        matches!(&again.leaf, LeafAction::Reissued(why) if why.contains("not signed by the current local CA")),
        "{:?}",
        again.leaf
    );
    let serial = tlsgate::certs::CertInfo::parse(&foreign.der)
        .unwrap()
        .serial;
    assert!(
        dir.path()
            .join("archive/localhost")
            .join(serial)
            .join("cert.pem")
            .exists(),
        "old leaf archived"
    );
}

#[test]
fn mismatched_key_is_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(&ca, dir.path(), "a", &["a.test"], KeyAlgorithm::EcdsaP256);
    fixture_cert(&ca, dir.path(), "b", &["b.test"], KeyAlgorithm::EcdsaP256);
    std::fs::write(
        dir.path().join("tlsgate.yaml"),
        "tls:\n  certificates:\n    - cert_file: a.crt\n      key_file: b.key\n",
    )
    .unwrap();
    let (code, _, stderr) = run(tlsgate(dir.path()).args([
        "serve",
        "-c",
        "tlsgate.yaml",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("tlsgate.yaml:3:7"), "{stderr}");
    assert!(
        stderr.contains("b.key does not match the certificate in") && stderr.contains("a.crt"),
        "{stderr}"
    );
}

#[test]
fn missing_file_is_refused_never_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tlsgate.yaml"),
        "tls:\n  certificates:\n    - pem_file: /nonexistent/site.pem\n",
    )
    .unwrap();
    let (code, stdout, stderr) =
        run(tlsgate(dir.path()).args(["serve", "-c", "tlsgate.yaml", "--listen", "127.0.0.1:0"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("/nonexistent/site.pem") && stderr.contains("No such file"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "nothing served: {stdout}");

    // The seeds' variables pointing at a missing file: same, no fall-back to plain WS.
    let (code, _, stderr) = run(tlsgate(dir.path())
        .env("SSL_CERTFILE", "/app/certs/server.crt")
        .env("SSL_KEYFILE", "/app/certs/server.key")
        .args(["serve", "--listen", "127.0.0.1:0"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("SSL_CERTFILE") && stderr.contains("/app/certs/server.crt"),
        "{stderr}"
    );
}

#[test]
fn unknown_config_key_names_line_and_suggests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tlsgate.yaml"),
        "listen: 127.0.0.1:0\ntls:\n  min_versoin: \"1.3\"\n",
    )
    .unwrap();
    let commands: [&[&str]; 2] = [
        &["serve", "-c", "tlsgate.yaml"],
        &["config", "check", "-c", "tlsgate.yaml"],
    ];
    for command in commands {
        let mut cmd = tlsgate(dir.path());
        cmd.args(command);
        let (code, _, stderr) = run(&mut cmd);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains("tlsgate.yaml:3:3: unknown field `min_versoin`"),
            "{stderr}"
        );
        assert!(stderr.contains("did you mean `min_version`?"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_certificate_and_loose_key_warn_but_serve() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    let names = vec!["soon.test".to_string()];
    let issued = ca
        .issue(
            &names,
            5 * DAY,
            KeyAlgorithm::EcdsaP256,
            tlsgate::certs::generate::Usage::Server,
        )
        .unwrap();
    write_fixture(dir.path(), "soon", &issued, &ca.cert_pem);
    std::fs::set_permissions(
        dir.path().join("soon.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tlsgate.yaml"),
        "tls:\n  certificates:\n    - cert_file: soon.crt\n      key_file: soon.key\n",
    )
    .unwrap();
    let running = Running::start(&mut tlsgate(dir.path()), &["-c", "tlsgate.yaml"]);
    assert!(
        running.banner.contains("https://soon.test:"),
        "{}",
        running.banner
    );
    assert!(
        running.banner.contains(&format!(
            "--resolve soon.test:{}:127.0.0.1",
            running.main.port()
        )),
        "{}",
        running.banner
    );
    let response = https_get(
        running.main,
        "soon.test",
        default_client(std::slice::from_ref(&ca.cert_der)),
        "/health",
    )
    .await;
    assert_eq!(response.status, 200);
    let (_, stderr) = running.stop();
    assert!(
        stderr.contains("soon.crt expires in 4 days")
            || stderr.contains("soon.crt expires in 5 days"),
        "{stderr}"
    );
    assert!(
        stderr.contains("soon.key is readable by group or others (mode 0644)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002_variables_ssl_certfile_and_keyfile() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "server",
        &["localhost"],
        KeyAlgorithm::Rsa2048,
    );
    let running = Running::start(
        tlsgate(dir.path())
            .env("SSL_CERTFILE", dir.path().join("server.crt"))
            .env("SSL_KEYFILE", dir.path().join("server.key")),
        &[],
    );
    let response = https_get(
        running.main,
        "localhost",
        default_client(std::slice::from_ref(&ca.cert_der)),
        "/health",
    )
    .await;
    assert_eq!(response.status, 200);
    assert!(
        !dir.path().join("tlsgate-data/ca").exists(),
        "no local CA when a certificate is given"
    );
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_003_variables_ssl_enabled_with_combined_pem_as_cert_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "camera-service",
        &["localhost"],
        KeyAlgorithm::Rsa2048,
    );
    // Seed 003 points SSL_CERT_FILE at the combined .pem (certificate + key) and
    // SSL_KEY_FILE at the key.
    let running = Running::start(
        tlsgate(dir.path())
            .env("SSL_ENABLED", "true")
            .env("SSL_CERT_FILE", dir.path().join("camera-service.pem"))
            .env("SSL_KEY_FILE", dir.path().join("camera-service.key")),
        &[],
    );
    let response = https_get(
        running.main,
        "localhost",
        default_client(std::slice::from_ref(&ca.cert_der)),
        "/health",
    )
    .await;
    assert_eq!(response.status, 200);
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_enabled_false_serves_plain_http_and_ws_with_a_warning() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let running = Running::start(tlsgate(dir.path()).env("SSL_ENABLED", "false"), &[]);
    assert!(
        running.banner.contains("WARNING: TLS IS OFF"),
        "{}",
        running.banner
    );
    assert!(
        running
            .banner
            .contains(&format!("ws://127.0.0.1:{}/ws", running.main.port())),
        "{}",
        running.banner
    );
    let response = http_get(running.main, "localhost", "/health").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, r#"{"status":"healthy"}"#);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", running.main))
        .await
        .unwrap();
    ws.send(Message::text("plain")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("plain"));
    let (code, stderr) = running.stop();
    assert_eq!(code, 0);
    assert!(stderr.contains("TLS is off"), "{stderr}");
}

#[test]
fn every_example_passes_config_check() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        // Each example runs in its own folder with the certificates it names made by our
        // own CA code, so names, keys and paths are all checked for real.
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tlsgate.yaml");
        std::fs::copy(&path, &config).unwrap();
        let settings = tlsgate::config::load(Some(&config), &Default::default(), &|_| None)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ca = fixture_ca(dir.path());
        for cert in &settings.tls.certificates {
            let file = cert.source.cert_path();
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            let issued = ca
                .issue(
                    &cert.names,
                    90 * DAY,
                    KeyAlgorithm::EcdsaP256,
                    tlsgate::certs::generate::Usage::Server,
                )
                .unwrap();
            let chain = format!("{}{}", issued.cert_pem, ca.cert_pem);
            match &cert.source {
                // Obtained by ACME at run time; config check needs no file for it.
                tlsgate::config::CertSource::Acme { .. } => {}
                tlsgate::config::CertSource::Files {
                    cert_file,
                    key_file,
                } => {
                    std::fs::write(cert_file, &chain).unwrap();
                    std::fs::write(key_file, &issued.key_pem).unwrap();
                    std::fs::set_permissions(key_file, std::fs::Permissions::from_mode(0o600))
                        .unwrap();
                }
                tlsgate::config::CertSource::Combined { pem_file } => {
                    std::fs::write(pem_file, format!("{chain}{}", issued.key_pem)).unwrap();
                    std::fs::set_permissions(pem_file, std::fs::Permissions::from_mode(0o600))
                        .unwrap();
                }
            }
        }
        let (code, stdout, stderr) =
            run(tlsgate(dir.path()).args(["config", "check", "-c", "tlsgate.yaml"]));
        assert_eq!(code, 0, "{}: {stderr}", path.display());
        assert!(stderr.contains("configuration OK"), "{stderr}");
        assert!(
            !stderr.contains("warning: certificate") && !stderr.contains("readable by group"),
            "{stderr}"
        );
        assert!(
            stdout.contains("listen:") && stdout.contains("limits:"),
            "{stdout}"
        );
        checked += 1;
    }
    assert_eq!(checked, 4, "all four examples checked");
}

#[test]
fn config_check_prints_effective_config_that_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tlsgate.yaml"), "http: reject\n").unwrap();
    let (code, stdout, stderr) =
        run(tlsgate(dir.path()).args(["config", "check", "-c", "tlsgate.yaml"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("mode: reject"), "{stdout}");
    assert!(
        stdout.contains("max-age") || stdout.contains("max_age: 365d"),
        "{stdout}"
    );
    std::fs::write(dir.path().join("effective.yaml"), &stdout).unwrap();
    let (code, again, stderr) =
        run(tlsgate(dir.path()).args(["config", "check", "-c", "effective.yaml"]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(again, stdout);
    assert!(
        !dir.path().join("tlsgate-data").exists(),
        "config check writes nothing"
    );
}

#[test]
fn help_documents_exit_codes() {
    let (code, stdout, _) = run(tlsgate(Path::new(".")).arg("--help"));
    assert_eq!(code, 0);
    assert!(
        stdout.contains("Exit codes:") && stdout.contains("2  configuration or start-up error"),
        "{stdout}"
    );
}

#[test]
fn certificate_not_covering_a_configured_name_and_malformed_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "site",
        &["example.com"],
        KeyAlgorithm::EcdsaP256,
    );
    std::fs::write(
        dir.path().join("names.yaml"),
        "tls:\n  certificates:\n    - pem_file: site.pem\n      names: [example.com, api.example.com]\n",
    )
    .unwrap();
    let (code, _, stderr) = run(tlsgate(dir.path()).args(["config", "check", "-c", "names.yaml"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("site.pem does not cover `api.example.com` (its names: example.com)"),
        "{stderr}"
    );

    std::fs::write(
        dir.path().join("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("garbage.yaml"),
        "tls:\n  certificates:\n    - cert_file: garbage.pem\n      key_file: site.key\n",
    )
    .unwrap();
    let (code, _, stderr) =
        run(tlsgate(dir.path()).args(["serve", "-c", "garbage.yaml", "--listen", "127.0.0.1:0"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("garbage.yaml:3:7") && stderr.contains("garbage.pem: malformed"),
        "{stderr}"
    );

    // An encrypted key gets a clear reason instead of "no key found".
    std::fs::write(
        dir.path().join("enc.key"),
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("enc.yaml"),
        "tls:\n  certificates:\n    - cert_file: site.crt\n      key_file: enc.key\n",
    )
    .unwrap();
    let (code, _, stderr) = run(tlsgate(dir.path()).args(["config", "check", "-c", "enc.yaml"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("enc.key: the private key is encrypted"),
        "{stderr}"
    );
}

/// `config check` builds the TLS edge through the same function as `serve`
/// (`tls::TlsEdgeConfig::build`), so what stops `serve` stops it, in the same words. Validation
/// leaves rustls nothing to refuse (`tls::edge`'s unit test builds every accepted setting), so
/// the failure provoked is the certificate half of that build: a key that is not the
/// certificate's.
#[test]
fn config_check_refuses_what_serve_refuses_when_building_tls_with_the_same_message() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    fixture_cert(&ca, dir.path(), "a", &["a.test"], KeyAlgorithm::EcdsaP256);
    fixture_cert(&ca, dir.path(), "b", &["b.test"], KeyAlgorithm::EcdsaP256);
    std::fs::write(
        dir.path().join("tlsgate.yaml"),
        "tls:\n  certificates:\n    - cert_file: a.crt\n      key_file: b.key\n",
    )
    .unwrap();
    let (code, stdout, check) =
        run(tlsgate(dir.path()).args(["config", "check", "-c", "tlsgate.yaml"]));
    assert_eq!(code, 2, "{check}");
    assert!(
        stdout.is_empty(),
        "no effective config on failure: {stdout}"
    );
    let message = check
        .lines()
        .find_map(|line| line.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("no error line: {check}"));
    assert!(
        message.starts_with("certificate configured at ")
            && message.contains("tlsgate.yaml:3:7")
            && message.contains("b.key does not match the certificate in"),
        "{message}"
    );

    let (code, _, serve) = run(tlsgate(dir.path()).args([
        "serve",
        "-c",
        "tlsgate.yaml",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]));
    assert_eq!(code, 2, "{serve}");
    assert!(
        serve.contains(&format!("error: cannot start: {message}\n")),
        "serve:\n{serve}\nconfig check:\n{check}"
    );
}

#[test]
fn readme_documents_every_variable_the_code_reads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut found = Vec::new();
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for quoted in text.split('"').skip(1).step_by(2) {
                let is_var = (quoted.starts_with("TLSGATE_") || quoted.starts_with("SSL_"))
                    && quoted.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
                if is_var && !found.contains(&quoted.to_owned()) {
                    found.push(quoted.to_owned());
                }
            }
        }
    }
    assert!(found.len() >= 15, "{found:?}");
    for var in &found {
        assert!(
            readme.contains(var.as_str()),
            "README does not document {var}"
        );
    }
}

#[test]
fn local_ca_recovers_from_an_interrupted_first_run_and_refuses_a_foreign_key() {
    use tlsgate::certs::local_ca;
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    // A key with no certificate: the first run stopped between the two writes.
    std::fs::write(ca_dir.join("root.key"), "leftover").unwrap();
    let made = local_ca::ensure(dir.path()).unwrap();
    assert!(made.ca_created);

    // A CA key restored from somewhere else is refused, with the way out.
    let other =
        tlsgate::certs::CertificateAuthority::new("other", 30 * DAY, KeyAlgorithm::EcdsaP256)
            .unwrap();
    std::fs::write(&made.ca_key, other.key_pem()).unwrap();
    let error = local_ca::ensure(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("does not match the CA certificate"),
        "{error}"
    );
    assert!(error.contains("move the `ca` folder away"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_reverse_proxy_with_upstream_flag() {
    let backend = common::upstream::Upstream::start("backend").await;
    let dir = tempfile::tempdir().unwrap();
    let running = Running::start(&mut tlsgate(dir.path()), &["--upstream", &backend.url()]);
    assert!(
        running.banner.contains(&format!("→ {}", backend.url())),
        "{}",
        running.banner
    );
    let ca = read_certs(&dir.path().join("tlsgate-data/ca/root.crt")).remove(0);
    let response = https_get(
        running.main,
        "localhost",
        default_client(&[ca]),
        "/anything?x=1",
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response.body.contains("\"server\":\"backend\""),
        "{}",
        response.body
    );
    assert!(response.body.contains("/anything?x=1"), "{}", response.body);
    let (_, stderr) = running.stop();
    let access = stderr
        .lines()
        .find(|l| l.contains("tlsgate::access") && l.contains("/anything"))
        .unwrap_or_else(|| panic!("no access log line: {stderr}"));
    for field in [
        "status=200",
        "tls=\"1.3\"",
        &format!("upstream=\"{}\"", backend.url()),
        "client=127.0.0.1",
        "route=default",
    ] {
        assert!(access.contains(field), "{field} missing: {access}");
    }
    assert!(!access.contains("x=1"), "queries are not logged: {access}");
}

#[test]
fn config_check_reports_proxy_mistakes_with_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "routes:\n  - path: /api\n    upstream: missing\n",
            "tlsgate.yaml:3:15",
            "`missing` is neither a URL nor a defined upstream",
        ),
        (
            "upstreams:\n  api:\n    servers: [https://10.0.0.1:8000]\n",
            "tlsgate.yaml:3:15",
            "upstreams are plain HTTP",
        ),
        (
            "upstreams:\n  api:\n    servers: [http://10.0.0.1:8000]\n    balance: random\n",
            "tlsgate.yaml:4:14",
            "round_robin, least_conn, ip_hash or cookie",
        ),
        (
            "trusted_proxies: [10.0.0.0/33]\n",
            "tlsgate.yaml:1:19",
            "not an IP address or CIDR block",
        ),
        (
            "routes:\n  - path: api\n    upstream: http://127.0.0.1:1\n",
            "tlsgate.yaml:2:11",
            "must start with /",
        ),
    ];
    for (yaml, at, message) in cases {
        std::fs::write(dir.path().join("tlsgate.yaml"), yaml).unwrap();
        let (code, _, stderr) =
            run(tlsgate(dir.path()).args(["config", "check", "-c", "tlsgate.yaml"]));
        assert_eq!(code, 2, "{yaml}: {stderr}");
        assert!(
            stderr.contains(at) && stderr.contains(message),
            "{yaml}\n{stderr}"
        );
    }
    std::fs::write(
        dir.path().join("tlsgate.yaml"),
        "upstreams:\n  api:\n    servers:\n      - url: http://10.0.0.1:8000\n        weight: 3\n      - http://10.0.0.2:8000\n    balance: least_conn\n    health_check: {path: /health/, interval: 5s}\nroutes:\n  - host: api.example.com\n    path: /api\n    upstream: api\n",
    )
    .unwrap();
    let (code, stdout, stderr) =
        run(tlsgate(dir.path()).args(["config", "check", "-c", "tlsgate.yaml"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("balance: least_conn") && stdout.contains("path: /health/"),
        "{stdout}"
    );
    std::fs::write(dir.path().join("effective.yaml"), &stdout).unwrap();
    let (code, again, stderr) =
        run(tlsgate(dir.path()).args(["config", "check", "-c", "effective.yaml"]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        again, stdout,
        "the effective proxy config reads back unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_command_and_certificate_files_watched_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fixture_ca(dir.path());
    // Kubernetes mounts a Secret as files behind a `..data` symlink that is swapped on update.
    let version = |n: u32| {
        let folder = dir.path().join(format!("..v{n}"));
        std::fs::create_dir_all(&folder).unwrap();
        let issued = fixture_cert(&ca, &folder, "tls", &["app.test"], KeyAlgorithm::EcdsaP256);
        (
            format!("..v{n}"),
            tlsgate::certs::CertInfo::parse(&issued.der).unwrap().serial,
        )
    };
    let (v1, serial1) = version(1);
    std::os::unix::fs::symlink(&v1, dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", dir.path().join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", dir.path().join("tls.key")).unwrap();
    let admin = free_port();
    std::fs::write(
        dir.path().join("tlsgate.yaml"),
        format!("admin:\n  listen: 127.0.0.1:{admin}\ntls:\n  certificates:\n    - cert_file: tls.crt\n      key_file: tls.key\n"),
    )
    .unwrap();
    let running = Running::start(
        &mut tlsgate(dir.path()),
        &[
            "-c",
            "tlsgate.yaml",
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ],
    );
    let client = default_client(std::slice::from_ref(&ca.cert_der));
    let main = running.main;
    let serial = |client: std::sync::Arc<rustls::ClientConfig>| async move {
        served_leaf(&tls_connect(main, "app.test", client).await.unwrap()).serial
    };
    assert_eq!(serial(client.clone()).await, serial1);

    // The symlink swap, as the kubelet does it: new target, then rename over `..data`.
    let (v2, serial2) = version(2);
    std::os::unix::fs::symlink(&v2, dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while serial(client.clone()).await != serial2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the swapped Secret was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // `tlsgate reload`: success, then a refusal with the reason and the old certificate kept.
    let (code, out, err) = run(tlsgate(dir.path()).args(["reload", "-c", "tlsgate.yaml"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 certificate(s) loaded"), "{out}");
    std::fs::write(dir.path().join(&v2).join("tls.key"), "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (code, _, err) = run(tlsgate(dir.path()).args(["reload", "-c", "tlsgate.yaml"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("reload refused") && err.contains("tls.key"),
        "{err}"
    );
    assert_eq!(
        serial(client.clone()).await,
        serial2,
        "the old certificate keeps serving"
    );

    // The configuration moves the certificate to another folder: that folder is watched now.
    let moved = dir.path().join("moved");
    std::fs::create_dir_all(&moved).unwrap();
    let issue = || {
        let issued = fixture_cert(&ca, &moved, "site", &["app.test"], KeyAlgorithm::EcdsaP256);
        tlsgate::certs::CertInfo::parse(&issued.der).unwrap().serial
    };
    let serial3 = issue();
    std::fs::write(
        dir.path().join("tlsgate.yaml"),
        format!("admin:\n  listen: 127.0.0.1:{admin}\ntls:\n  certificates:\n    - cert_file: moved/site.pem\n      key_file: moved/site.key\n"),
    )
    .unwrap();
    let (code, out, err) = run(tlsgate(dir.path()).args(["reload", "-c", "tlsgate.yaml"]));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(serial(client.clone()).await, serial3);
    // Let the watcher's own reload for the rewritten tlsgate.yaml pass first.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let serial4 = issue();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while serial(client.clone()).await != serial4 {
        assert!(
            std::time::Instant::now() < deadline,
            "a certificate in the newly configured folder was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, stderr) = running.stop();
    assert_eq!(code, 0);
    assert!(
        stderr.contains("certificate replaced") && stderr.contains(&serial2),
        "an audit line names the new serial: {stderr}"
    );
    let (code, _, err) = run(tlsgate(dir.path()).args(["reload", "-c", "tlsgate.yaml"]));
    assert_eq!(code, 2, "no server: {err}");
}

#[test]
fn json_logs_carry_access_and_audit_lines() {
    let dir = tempfile::tempdir().unwrap();
    let running = Running::start(&mut tlsgate(dir.path()), &["--log-format", "json"]);
    let port = running.main.port();
    let ca = dir.path().join("tlsgate-data/ca/root.crt");
    let output = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .args([
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            &format!("https://localhost:{port}/health?token=secret"),
        ])
        .output()
        .expect("curl is installed by scripts/test.sh");
    assert!(output.status.success(), "{output:?}");
    let (code, stderr) = running.stop();
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let access = lines
        .iter()
        .find(|l| l["target"] == "tlsgate::access")
        .unwrap_or_else(|| panic!("no access line: {stderr}"));
    let fields = &access["fields"];
    assert_eq!(fields["status"], 200, "{access}");
    assert_eq!(
        fields["path"], "/health",
        "no query (secrets) logged: {access}"
    );
    assert_eq!(fields["tls"], "1.3", "{access}");
    assert_eq!(fields["client"], "127.0.0.1", "{access}");
    assert_eq!(fields["route"], "builtin", "{access}");
    assert!(!stderr.contains("secret"), "{stderr}");
    let audit = lines
        .iter()
        .find(|l| l["fields"]["audit"] == "certificate loaded")
        .unwrap_or_else(|| panic!("no audit line: {stderr}"));
    let leaf = tlsgate::certs::pem::read_certificates(
        &dir.path().join("tlsgate-data/live/localhost/cert.pem"),
    )
    .unwrap();
    let info = tlsgate::certs::CertInfo::parse(&leaf[0]).unwrap();
    assert_eq!(audit["fields"]["serial"], info.serial.as_str(), "{audit}");
    assert_eq!(
        audit["fields"]["fingerprint"],
        info.sha256_fingerprint.as_str(),
        "{audit}"
    );
    // A first start issues the localhost certificate: that is audited too.
    let issued = lines
        .iter()
        .find(|l| l["fields"]["audit"] == "certificate issued")
        .unwrap_or_else(|| panic!("no issuance audit line: {stderr}"));
    assert_eq!(issued["fields"]["serial"], info.serial.as_str(), "{issued}");
}

/// Runs to completion or panics after `limit` (the child is killed first).
fn run_within(command: &mut Command, limit: Duration) -> (i32, String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn config_check_of_dev_zero_fails_fast_naming_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run_within(
        tlsgate(dir.path()).args(["config", "check", "-c", "/dev/zero"]),
        Duration::from_secs(10),
    );
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: config file /dev/zero is larger than 4 MiB: not a configuration file (is it the right path?)"
    );
    assert!(stdout.is_empty(), "{stdout}");
}

#[test]
fn yaml_mistakes_are_told_in_the_file_s_terms() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dup.yaml"),
        "data_dir: data\nlisten: 127.0.0.1:0\nadmin: off\ntls: on\naccess_log: true\nhttp: on\nlisten: 127.0.0.1:1\n",
    )
    .unwrap();
    let (code, _, stderr) = run(tlsgate(dir.path()).args(["config", "check", "-c", "dup.yaml"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with(
            "error: dup.yaml:7:1: duplicate key `listen`: a key may appear only once in a mapping\n"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("DuplicateKeyPolicy"), "{stderr}");

    let mut bomb = format!(
        "trusted_proxies: &a [{}]\nupstreams:\n",
        vec!["10.0.0.1"; 1000].join(",")
    );
    for i in 0..300 {
        bomb.push_str(&format!("  u{i}:\n    servers: *a\n"));
    }
    std::fs::write(dir.path().join("bomb.yaml"), bomb).unwrap();
    let (code, _, stderr) = run_within(
        tlsgate(dir.path()).args(["config", "check", "-c", "bomb.yaml"]),
        Duration::from_secs(20),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(": the YAML has too many nodes (over 250,000), e.g. an alias bomb"),
        "{stderr}"
    );
    assert!(!stderr.contains("budget breached"), "{stderr}");
}

#[test]
fn certificate_files_are_read_up_to_a_cap() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("zero.yaml"),
        "tls:\n  certificates:\n    - cert_file: /dev/zero\n      key_file: /dev/zero\n",
    )
    .unwrap();
    let (code, _, stderr) = run_within(
        tlsgate(dir.path()).args(["config", "check", "-c", "zero.yaml"]),
        Duration::from_secs(10),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "zero.yaml:3:7: /dev/zero is larger than 1 MiB: not a certificate or key file"
        ),
        "{stderr}"
    );

    let ca = fixture_ca(dir.path());
    fixture_cert(
        &ca,
        dir.path(),
        "site",
        &["a.test"],
        KeyAlgorithm::EcdsaP256,
    );
    // A real chain followed by 1 MiB of comment lines: over the cap, whatever it holds.
    let mut big = std::fs::read_to_string(dir.path().join("site.crt")).unwrap();
    big.push_str(&"# padding padding padding padding padding padding padding\n".repeat(20_000));
    std::fs::write(dir.path().join("big.crt"), big).unwrap();
    std::fs::write(
        dir.path().join("big.yaml"),
        "tls:\n  certificates:\n    - cert_file: big.crt\n      key_file: site.key\n",
    )
    .unwrap();
    let (code, _, stderr) = run(tlsgate(dir.path()).args(["config", "check", "-c", "big.yaml"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("big.crt is larger than 1 MiB"), "{stderr}");
}

#[test]
fn a_data_folder_others_may_write_is_refused_and_a_group_writable_one_warned() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tlsgate-data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let expected = format!(
        "data folder: {} is writable by others (mode 0777): anyone on this machine could replace the keys kept there; run: chmod 700 {}",
        data.display(),
        data.display()
    );
    let (code, _, stderr) = run(tlsgate(dir.path()).args(["config", "check"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
    let (code, stdout, stderr) = run(tlsgate(dir.path()).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stdout.is_empty(), "nothing served: {stdout}");
    assert!(!data.join("ca").exists(), "no key written there");

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o770)).unwrap();
    let (code, _, stderr) = run(tlsgate(dir.path()).args(["config", "check"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: data folder {} is writable by its group (mode 0770): members could replace the keys kept there; run: chmod 700 {}",
            data.display(),
            data.display()
        )),
        "{stderr}"
    );
}

#[test]
fn pid_file_is_0600_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("sh");
    command
        .current_dir(dir.path())
        .args(["-c", "umask 000 && exec \"$0\" \"$@\"", BIN]);
    let running = Running::start(&mut command, &[]);
    let data = dir.path().join("tlsgate-data");
    let pid_file = data.join("tlsgate.pid");
    // Written just after the banner.
    for _ in 0..100 {
        if pid_file.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Read before stopping, asserted after: a panic here would leave the server running.
    let mode = std::fs::metadata(&pid_file)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777);
    let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
    let (code, _) = running.stop();
    assert_eq!(code, 0);
    assert_eq!(mode, Some(0o600), "pid file mode {mode:?}");
    assert!(pid.trim().parse::<u32>().is_ok(), "{pid}");
    assert!(!pid_file.exists(), "removed on exit");
}

#[test]
fn an_admin_listener_off_loopback_is_warned_about() {
    // `config check` only: it binds nothing, and tests never listen on 0.0.0.0. `serve`
    // prints the same `Settings::warnings` at start.
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(tlsgate(dir.path())
        .env("TLSGATE_ADMIN_LISTEN", "0.0.0.0:9090")
        .args(["config", "check"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: admin listener on 0.0.0.0:9090 is not loopback: its endpoints have no authentication"),
        "{stderr}"
    );
}
