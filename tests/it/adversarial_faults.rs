//! Faults around certificate writes: a full disk under the data folder and SIGKILL in the
//! middle of writing. Nothing half-written is ever loaded, the previous certificate keeps
//! serving, and the next attempt succeeds.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tlsgate::certs::store::LivePaths;
use tlsgate::certs::KeyAlgorithm;

/// A small tmpfs mounted for the test's life (the test runs as root, as CI does).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a {size} tmpfs needs root (CI and scripts/test.sh run as root)"
        );
        Self(at.to_path_buf())
    }

    /// Fills the disk to its last byte; returns the filler to free it.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        while file.write_all(&block[..1]).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The public key of a certificate file and of a key file, by openssl (an independent reader).
fn public_keys(cert: &Path, key: &Path) -> (String, String) {
    let (ok, from_cert) = openssl(&["x509", "-noout", "-pubkey", "-in", &cert.to_string_lossy()]);
    assert!(ok, "{}: {from_cert}", cert.display());
    let (ok, from_key) = openssl(&["pkey", "-pubout", "-in", &key.to_string_lossy()]);
    assert!(ok, "{}: {from_key}", key.display());
    (from_cert, from_key)
}

fn serial_of(cert: &Path) -> String {
    let (ok, text) = openssl(&["x509", "-noout", "-serial", "-in", &cert.to_string_lossy()]);
    assert!(ok, "{text}");
    text.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_during_a_certificate_write_keeps_the_previous_set_serving_and_the_next_write_succeeds(
) {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("certs"), "512k");
    let ca = fixture_ca(dir.path());
    let names = ["localhost".to_owned()];
    let issue = || {
        ca.issue(
            &names,
            30 * DAY,
            KeyAlgorithm::EcdsaP256,
            tlsgate::certs::generate::Usage::Server,
        )
        .unwrap()
    };
    let live = LivePaths::new(&disk.0, "site").unwrap();
    let first = issue();
    live.store(&disk.0, &first.cert_pem, &ca.cert_pem, &first.key_pem, None)
        .expect("the first set fits");
    let first_serial = serial_of(&live.cert);

    // The disk fills up; the renewal's write fails with a clear error.
    let filler = disk.fill();
    let second = issue();
    let error = live
        .store(
            &disk.0,
            &second.cert_pem,
            &ca.cert_pem,
            &second.key_pem,
            Some("01"),
        )
        .expect_err("a write to a full disk fails");
    let text = error.to_string();
    assert!(
        text.contains("No space left") || text.contains("space"),
        "{text}"
    );
    // The live set is the previous one, whole: its key still matches its certificate.
    assert_eq!(serial_of(&live.cert), first_serial);
    let (cert_key, key) = public_keys(&live.fullchain, &live.privkey);
    assert_eq!(cert_key, key, "the live key matches the live certificate");

    // A server started on the live files now serves the previous certificate.
    let config = format!(
        "tls:\n  certificates:\n    - cert_file: {}\n      key_file: {}\n",
        live.fullchain.display(),
        live.privkey.display()
    );
    let server = TestServer::start(&config, dir.path()).await.unwrap();
    let stream = tls_connect(
        server.main,
        "localhost",
        default_client(std::slice::from_ref(&ca.cert_der)),
    )
    .await
    .unwrap();
    let served = served_leaf(&stream);
    assert_eq!(
        format!("serial={}", served.serial).to_uppercase(),
        first_serial.to_uppercase(),
        "the previous certificate keeps serving"
    );
    server.stop().await;

    // Space comes back: the next attempt succeeds and the new set is whole.
    std::fs::remove_file(filler).unwrap();
    live.store(
        &disk.0,
        &second.cert_pem,
        &ca.cert_pem,
        &second.key_pem,
        Some("01"),
    )
    .expect("the next write succeeds");
    assert_ne!(serial_of(&live.cert), first_serial);
    let (cert_key, key) = public_keys(&live.fullchain, &live.privkey);
    assert_eq!(cert_key, key);
}

/// `tlsgate serve` with no config on ephemeral loopback ports, its data in `data`.
fn zero_config_serve(data: &Path, stderr: Stdio) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

#[test]
fn sigkill_while_the_zero_config_certificates_are_written_never_leaves_a_mismatched_set() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Killed at a spread of moments while it creates the CA and the localhost certificate;
    // each time, whatever is on disk is either absent or a whole, matching set.
    for delay_ms in [0u64, 2, 5, 10, 15, 20, 30, 40, 60, 80, 120, 160] {
        let _ = std::fs::remove_dir_all(&data);
        let mut child = zero_config_serve(&data, Stdio::null());
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let live = LivePaths::new(&data, "localhost").unwrap();
        if live.fullchain.exists() || live.privkey.exists() {
            assert!(
                live.fullchain.exists() && live.privkey.exists(),
                "after {delay_ms} ms: a certificate without its key or a key without its certificate"
            );
            let (cert_key, key) = public_keys(&live.fullchain, &live.privkey);
            assert_eq!(cert_key, key, "after {delay_ms} ms: a mismatched pair");
        }
        let (root, root_key) = (data.join("ca/root.crt"), data.join("ca/root.key"));
        if root.exists() && root_key.exists() {
            let (cert_key, key) = public_keys(&root, &root_key);
            assert_eq!(cert_key, key, "after {delay_ms} ms: a mismatched CA");
        }
        // The next start, on what the killed one left, comes up and serves.
        let mut next = zero_config_serve(&data, Stdio::piped());
        let up = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            LivePaths::new(&data, "localhost")
                .map(|live| live.fullchain.exists())
                .unwrap_or(false)
                && matches!(next.try_wait(), Ok(None))
        });
        let _ = next.kill();
        let output = next.wait_with_output().unwrap();
        assert!(
            up,
            "after a kill at {delay_ms} ms the next start failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
