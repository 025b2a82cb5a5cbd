//! A real Pebble ACME server (Debian's `pebble`), started on free loopback ports with a
//! throw-away HTTPS certificate made by our own CA code.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tlsgate::certs::generate::{CertificateAuthority, KeyAlgorithm, Usage};

pub struct Pebble {
    child: Child,
    config: PathBuf,
    env: Vec<(String, String)>,
    dir: PathBuf,
    port: u16,
    pub directory: String,
    /// The CA that signs Pebble's own HTTPS certificate (for `acme.ca_root`).
    pub https_root: PathBuf,
    /// The same CA, to sign other test HTTPS servers `ca_root` must trust.
    pub https_ca: CertificateAuthority,
    pub management: u16,
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`.
    pub fn start(dir: &Path, http_port: u16, tls_port: u16, extra_env: &[(&str, &str)]) -> Pebble {
        Self::start_with(dir, http_port, tls_port, extra_env, None)
    }

    /// As [`Self::start`], resolving every name through `dns` (pebble-challtestsrv) if given.
    pub fn start_with(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        extra_env: &[(&str, &str)],
        dns: Option<u16>,
    ) -> Pebble {
        Self::start_full(dir, http_port, tls_port, extra_env, dns, None)
    }

    /// As [`Self::start_with`], requiring external account binding with `eab` (kid, key).
    pub fn start_full(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        extra_env: &[(&str, &str)],
        dns: Option<u16>,
        eab: Option<(&str, &str)>,
    ) -> Pebble {
        let day = Duration::from_secs(86_400);
        let ca = CertificateAuthority::new("pebble test https CA", day, KeyAlgorithm::EcdsaP256)
            .unwrap();
        let names: Vec<String> = ["localhost", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let leaf = ca
            .issue(&names, day, KeyAlgorithm::EcdsaP256, Usage::Server)
            .unwrap();
        let https_root = dir.join("pebble-https-ca.pem");
        std::fs::write(&https_root, &ca.cert_pem).unwrap();
        std::fs::write(dir.join("pebble-cert.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join("pebble-key.pem"), &leaf.key_pem).unwrap();
        let (port, management) = (super::free_port(), super::free_port());
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": dir.join("pebble-cert.pem"),
                "privateKey": dir.join("pebble-key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        if let Some((kid, key)) = eab {
            config["pebble"]["externalAccountBindingRequired"] = true.into();
            config["pebble"]["externalAccountMACKeys"] = serde_json::json!({ kid: key });
        }
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let mut env = vec![("PEBBLE_VA_NOSLEEP".to_owned(), "1".to_owned())];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        if let Some(dns) = dns {
            env.push(("TLSGATE_TEST_DNS".into(), format!("127.0.0.1:{dns}")));
        }
        let child = spawn(&config_path, &env, dir, port);
        Pebble {
            child,
            config: config_path,
            env,
            dir: dir.to_path_buf(),
            port,
            directory: format!("https://127.0.0.1:{port}/dir"),
            https_root,
            https_ca: ca,
            management,
        }
    }

    /// Starts again on the same ports after [`Self::stop`], with an empty database (as after a
    /// CA outage that lost state: accounts must be registered again).
    pub fn restart(&mut self) {
        self.child = spawn(&self.config, &self.env, &self.dir, self.port);
    }

    /// The root the issued chains lead to (random per Pebble start).
    pub fn issuing_root(&self) -> CertificateDer<'static> {
        let output = Command::new("curl")
            .args(["-sS", "--cacert", self.https_root.to_str().unwrap()])
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .output()
            .expect("curl");
        tlsgate::certs::pem::certificates_from_bytes(&output.stdout, Path::new("pebble root"))
            .expect("pebble root")
            .remove(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(config: &Path, env: &[(String, String)], dir: &Path, port: u16) -> Child {
    let mut command = Command::new("pebble");
    command
        .args(["-config", config.to_str().unwrap(), "-strict=false"])
        .stdout(Stdio::from(
            std::fs::File::create(dir.join("pebble.log")).unwrap(),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("pebble.err")).unwrap(),
        ));
    for (key, value) in env {
        if key == "TLSGATE_TEST_DNS" {
            command.args(["-dnsserver", value]);
        } else {
            command.env(key, value);
        }
    }
    let child = command
        .spawn()
        .expect("pebble is installed (scripts/test.sh installs the Debian package)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "pebble did not start: {}",
            std::fs::read_to_string(dir.join("pebble.err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}
