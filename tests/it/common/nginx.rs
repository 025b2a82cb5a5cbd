//! A real nginx (Debian package) on loopback, as a peer for `tlsgate check`: one process, no
//! daemon, everything it writes inside the test's folder. Killed when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    child: Child,
}

impl Nginx {
    /// Starts nginx with `servers` (server blocks) inside an `http` block, and waits until
    /// every address in `ready` accepts connections.
    pub async fn start(dir: &Path, servers: &str, ready: &[SocketAddr]) -> Nginx {
        let dir = dir.display();
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\n\
             error_log {dir}/nginx-error.log warn;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/client_body;\n\
             proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n\
             uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n{servers}\n}}\n"
        );
        let path = format!("{dir}/nginx.conf");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("nginx")
            .args([
                "-p",
                &dir.to_string(),
                "-c",
                &path,
                "-e",
                &format!("{dir}/nginx-error.log"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx is installed by scripts/test.sh");
        let nginx = Nginx { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        for addr in ready {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                let log =
                    std::fs::read_to_string(format!("{dir}/nginx-error.log")).unwrap_or_default();
                assert!(
                    Instant::now() < deadline,
                    "nginx did not listen on {addr}: {log}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
