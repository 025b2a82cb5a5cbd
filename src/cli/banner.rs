//! The start-up banner: where to connect, what to trust, and one command to check it.

use std::fmt::Write;
use std::net::SocketAddr;

use crate::config::HttpMode;
use crate::server::Server;

/// The host name to show in URLs: `localhost` for the local CA, else a configured name.
fn display_host(server: &Server, addr: SocketAddr) -> String {
    if server.local_certificate().is_some() {
        return "localhost".into();
    }
    let certificates = server.certificates();
    let configured = certificates
        .iter()
        .flat_map(|c| c.names.iter())
        .find(|n| !n.starts_with("*."));
    match configured {
        Some(name) => name.clone(),
        None if addr.ip().is_unspecified() => "localhost".into(),
        None if addr.is_ipv6() => format!("[{}]", addr.ip()),
        None => addr.ip().to_string(),
    }
}

fn port_suffix(port: u16, default: u16) -> String {
    if port == default {
        String::new()
    } else {
        format!(":{port}")
    }
}

pub fn render(server: &Server) -> String {
    let mut out = String::new();
    let version = env!("CARGO_PKG_VERSION");
    let Some(main) = server.main_addr() else {
        return out;
    };
    let settings = server.settings();
    if !server.is_tls() {
        let base = format!(
            "{}:{}",
            if main.ip().is_unspecified() {
                "localhost".to_owned()
            } else {
                main.ip().to_string()
            },
            main.port()
        );
        let _ = writeln!(out, "tlsgate {version}: WARNING: TLS IS OFF. Serving plain, unencrypted HTTP and WS on {main}");
        let _ = writeln!(out, "  Anyone on the network path can read and change this traffic. Remove `tls: off` / SSL_ENABLED=false to serve HTTPS and WSS.");
        let _ = writeln!(out, "  http://{base}/health");
        let _ = writeln!(out, "  ws://{base}/ws   (WebSocket echo)");
        return out;
    }
    let host = display_host(server, main);
    let base = format!("{host}{}", port_suffix(main.port(), 443));
    let versions = match settings.tls.min_version {
        crate::config::TlsVersion::Tls13 => "TLS 1.3",
        crate::config::TlsVersion::Tls12 => "TLS 1.3 and 1.2",
    };
    let _ = writeln!(
        out,
        "tlsgate {version}: serving HTTPS and WSS on {main} ({versions})"
    );
    if settings.proxy.is_enabled() || settings.hub.is_enabled() {
        for route in &settings.proxy.routes {
            let host = route.host.clone().unwrap_or_else(|| base.clone());
            if route.hub_endpoint.is_some() {
                let _ = writeln!(out, "  wss://{host}{} → hub", route.path);
            } else {
                let _ = writeln!(out, "  https://{host}{} → {}", route.path, route.upstream);
            }
        }
        if let Some(default) = &settings.proxy.default_route {
            let _ = writeln!(out, "  https://{base}/… (everything else) → {default}");
        }
        if let (true, Some(admin)) = (settings.hub.is_enabled(), settings.admin) {
            let _ = writeln!(out, "  publish: POST http://{admin}/hub/publish");
        }
    } else {
        let _ = writeln!(out, "  https://{base}/health");
        let _ = writeln!(out, "  wss://{base}/ws   (WebSocket echo)");
    }
    if let Some(http) = server.http_addr() {
        let what = match settings.http.mode {
            HttpMode::Reject => "answers 403 TLS required",
            _ => "redirects to HTTPS",
        };
        let _ = writeln!(out, "  http://{http}/ {what}");
    }
    if let Some(local) = server.local_certificate() {
        let state = if local.ca_created {
            " (new: trust it once)"
        } else {
            ""
        };
        let _ = writeln!(out, "  CA to trust: {}{state}", local.ca_cert.display());
        let _ = writeln!(
            out,
            "  Check: curl --cacert {} https://{base}/health",
            local.ca_cert.display()
        );
    } else {
        for cert in server.certificates() {
            let names = if cert.names.is_empty() {
                "(default)".to_owned()
            } else {
                cert.names.join(", ")
            };
            let _ = writeln!(out, "  certificate {}: {names}", cert.cert_path.display());
        }
        let resolve = if main.ip().is_loopback() || main.ip().is_unspecified() {
            format!(" --resolve {host}:{}:127.0.0.1", main.port())
        } else {
            String::new()
        };
        let _ = writeln!(out, "  Check: curl{resolve} https://{base}/health");
    }
    out
}
