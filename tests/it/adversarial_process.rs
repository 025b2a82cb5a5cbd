//! The whole process under attack: secrets and logs at trace level, running out of file
//! descriptors, keys under a permissive umask, and a deeply nested config.

use crate::cli::{tlsgate, Running};
use crate::common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::upstream::Upstream;

/// CPU seconds (user + system) the process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11..13)
        .map(|t| t.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_cookie_or_credential_reaches_the_logs_even_at_trace_level() {
    let backend = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = tlsgate(dir.path());
    command.env("TLSGATE_LOG", "trace");
    let server = Running::start(&mut command, &["--upstream", &backend.url()]);
    let main = server.main;
    let ca = common::read_certs(&dir.path().join("tlsgate-data/ca/root.crt"));
    let secrets = [
        "Bearer-sekrit-authorization-1f3a",
        "sekrit-cookie-9b2c",
        "sekrit-query-token-77d1",
        "sekrit-basic-dXNlcjpwYXNz",
    ];
    let client = common::default_client(&ca);
    for (path, header, value) in [
        (
            format!("/echo?token={}", secrets[2]),
            "authorization",
            format!("Bearer {}", secrets[0]),
        ),
        ("/echo".into(), "cookie", format!("session={}", secrets[1])),
        (
            "/echo".into(),
            "authorization",
            format!("Basic {}", secrets[3]),
        ),
    ] {
        let stream = common::tls_connect(main, "localhost", client.clone())
            .await
            .unwrap();
        let request = http::Request::get(&path)
            .header("host", "localhost")
            .header(header, value)
            .body(common::body_of(""))
            .unwrap();
        let response = common::send_on(stream, request).await;
        assert_eq!(response.status, 200);
    }
    // A WebSocket with its token in the query, as the seeds' browser clients send it.
    let stream = common::tls_connect(main, "localhost", client.clone())
        .await
        .unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost/ws?token={}", secrets[2]), stream)
            .await
            .unwrap();
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, log) = server.stop();
    assert!(log.contains("TRACE"), "the log really is at trace level");
    for secret in secrets {
        assert!(
            !log.contains(secret),
            "{secret} is in the trace log:\n{}",
            log.lines()
                .filter(|l| l.contains(secret))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn out_of_file_descriptors_the_accept_loop_backs_off_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    // 96 descriptors: the listeners, the runtime and a few dozen connections.
    let mut command = std::process::Command::new("prlimit");
    command
        .current_dir(dir.path())
        .args(["--nofile=96:96", env!("CARGO_BIN_EXE_tlsgate")]);
    let server = Running::start(&mut command, &[]);
    let pid = server.child.id();
    let mut held = Vec::new();
    for _ in 0..200 {
        match std::net::TcpStream::connect(server.main) {
            Ok(stream) => held.push(stream),
            Err(_) => break,
        }
    }
    // Descriptors are exhausted now; over two seconds the process must stay nearly idle.
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_seconds(pid) - before;
    assert!(
        spent < 0.5,
        "{spent:.2} s of CPU in 2 s with descriptors exhausted"
    );
    // Once they are given back, a normal client is served again.
    drop(held);
    let started = Instant::now();
    let served = loop {
        let answer = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                "--cacert",
            ])
            .arg(dir.path().join("tlsgate-data/ca/root.crt"))
            .arg(format!("https://localhost:{}/health", server.main.port()))
            .args([
                "--resolve",
                &format!("localhost:{}:127.0.0.1", server.main.port()),
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&answer.stdout) == "200" {
            break true;
        }
        if started.elapsed() > Duration::from_secs(10) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        served,
        "a normal client is served once descriptors are free"
    );
    let (_, log) = server.stop();
    assert!(
        log.contains("open") || log.contains("descriptor") || log.contains("accept"),
        "the exhaustion is logged: {log}"
    );
}

#[test]
fn keys_and_folders_keep_their_modes_under_umask_000() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_tlsgate");
    let status = std::process::Command::new("sh")
        .current_dir(dir.path())
        .arg("-c")
        .arg(format!(
            "umask 000 && {binary} cert self-signed localhost --out out/certs >/dev/null 2>&1"
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let out = dir.path().join("out/certs");
    assert_eq!(mode(&out), 0o700);
    let keys: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".key") || p.to_string_lossy().contains("key"))
        .collect();
    assert!(!keys.is_empty(), "a key was written");
    for key in keys {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }
    // The zero-config data folder, created under umask 000 by a server that is then stopped.
    let mut child = std::process::Command::new("sh")
        .current_dir(dir.path())
        .arg("-c")
        .arg(format!(
            "umask 000 && exec {binary} serve --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0"
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let data = dir.path().join("tlsgate-data");
    let key = data.join("live/localhost/privkey.pem");
    let appeared = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        key.exists()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(appeared);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("ca")), 0o700);
    assert_eq!(mode(&data.join("ca/root.key")), 0o600);
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn a_deeply_nested_config_is_refused_with_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let depth = 100_000;
    let yaml = format!("listen: {}1{}\n", "[".repeat(depth), "]".repeat(depth));
    let path = dir.path().join("deep.yaml");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(yaml.as_bytes()))
        .unwrap();
    let mut child = tlsgate(dir.path())
        .args(["config", "check", "-c"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "config check hangs"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    assert_eq!(
        status.code(),
        Some(2),
        "a clean refusal, not a crash: {stderr}"
    );
    assert!(stderr.contains("deep.yaml"), "{stderr}");
}
