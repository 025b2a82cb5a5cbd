//! What is being checked: the URL taken apart, and the address to connect to (DNS, or the
//! operator's `--resolve`, for servers not yet in DNS or reached through a tunnel).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use super::CheckError;

#[derive(Debug, Clone)]
pub struct Target {
    /// Host name (or IP) from the URL: SNI, Host header and the name the certificate must cover.
    pub host: String,
    pub port: u16,
    /// Path and query from the URL, `/` when none.
    pub path: String,
    /// Whether the URL named a path (the health path, which must then answer).
    pub path_given: bool,
    /// Where to connect.
    pub addr: SocketAddr,
}

impl Target {
    /// Parses `https://HOST[:PORT][/path]` and resolves it, `resolve` (`HOST:IP` or curl's
    /// `HOST:PORT:IP`) taking precedence over DNS.
    pub fn new(url: &str, resolve: Option<&str>) -> Result<Target, CheckError> {
        let bad = |reason: &str| CheckError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (host, port) = crate::certs::remote::parse_url(url)
            .ok_or_else(|| bad("expected https://HOST[:PORT][/path]"))?;
        let rest = &url["https://".len()..];
        let rest = rest.split('#').next().unwrap_or_default();
        let path = match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('?') => format!("/{}", &rest[at..]),
            Some(at) => rest[at..].to_owned(),
            None => "/".to_owned(),
        };
        let path_given = rest
            .find(['/', '?'])
            .is_some_and(|at| rest[at..].starts_with('/'))
            && path != "/";
        // A fully qualified name's final dot is not part of the SNI or certificate name.
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let addr = match resolve {
            Some(spec) => resolve_override(spec, &host, port)?,
            None => lookup(&host, port)?,
        };
        Ok(Target {
            host,
            port,
            path,
            path_given,
            addr,
        })
    }

    /// The host as written in a URL authority (IPv6 in brackets).
    pub fn host_for_url(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    /// `host[:port]` for a Host header or URL, the port left out when it is `default_port`.
    pub fn authority(&self, port: u16, default_port: u16) -> String {
        if port == default_port {
            self.host_for_url()
        } else {
            format!("{}:{port}", self.host_for_url())
        }
    }
}

fn lookup(host: &str, port: u16) -> Result<SocketAddr, CheckError> {
    let resolved = (host, port)
        .to_socket_addrs()
        .map_err(|e| CheckError::Resolve {
            host: host.to_owned(),
            reason: e.to_string(),
        })?
        .collect::<Vec<_>>();
    // Prefer IPv4 like most clients do when both exist; either is fine.
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| resolved.first())
        .copied()
        .ok_or_else(|| CheckError::Resolve {
            host: host.to_owned(),
            reason: "no address".to_owned(),
        })
}

fn resolve_override(spec: &str, host: &str, port: u16) -> Result<SocketAddr, CheckError> {
    let bad = |reason: String| CheckError::Resolve {
        host: host.to_owned(),
        reason: format!("--resolve {spec}: {reason}"),
    };
    let (name, rest) = spec
        .split_once(':')
        .ok_or_else(|| bad("expected HOST:IP or HOST:PORT:IP".into()))?;
    if !name.eq_ignore_ascii_case(host) {
        return Err(bad(format!("names {name}, but the URL's host is {host}")));
    }
    let parse_ip = |text: &str| {
        text.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
    };
    if let Some(ip) = parse_ip(rest) {
        return Ok(SocketAddr::new(ip, port));
    }
    let (port_text, ip_text) = rest
        .split_once(':')
        .ok_or_else(|| bad("not an IP address".into()))?;
    let given_port: u16 = port_text
        .parse()
        .map_err(|_| bad(format!("`{port_text}` is not a port")))?;
    let ip = parse_ip(ip_text).ok_or_else(|| bad(format!("`{ip_text}` is not an IP address")))?;
    if given_port != port {
        return Err(bad(format!(
            "port {given_port}, but the URL's port is {port}"
        )));
    }
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_resolve_overrides() {
        let target = Target::new(
            "https://API.example.com:8443/health?x=1",
            Some("api.example.com:127.0.0.1"),
        )
        .unwrap();
        assert_eq!(target.host, "api.example.com");
        assert_eq!(target.port, 8443);
        assert_eq!(target.path, "/health?x=1");
        assert_eq!(target.addr, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(target.authority(8443, 443), "api.example.com:8443");

        let target = Target::new("https://example.com", Some("example.com:443:[::1]")).unwrap();
        assert_eq!(target.path, "/");
        assert_eq!(target.addr, "[::1]:443".parse().unwrap());
        assert_eq!(target.authority(443, 443), "example.com");

        let target = Target::new("https://example.com?q", Some("example.com:10.0.0.1")).unwrap();
        assert_eq!(target.path, "/?q");
        assert!(!target.path_given);
        let target = Target::new("https://example.com.#a/b", Some("example.com:10.0.0.1")).unwrap();
        assert_eq!(
            (target.host.as_str(), target.path.as_str()),
            ("example.com", "/")
        );
        let target =
            Target::new("https://example.com/health#x", Some("example.com:10.0.0.1")).unwrap();
        assert_eq!(target.path, "/health");
        assert!(target.path_given);

        for (url, resolve, expected) in [
            ("http://example.com", None, "expected https://"),
            (
                "https://example.com",
                Some("other.com:1.2.3.4"),
                "the URL's host is example.com",
            ),
            (
                "https://example.com",
                Some("example.com:80:1.2.3.4"),
                "the URL's port is 443",
            ),
            ("https://example.com", Some("example.com:nope"), "not an IP"),
        ] {
            let error = Target::new(url, resolve).unwrap_err().to_string();
            assert!(error.contains(expected), "{url} {resolve:?}: {error}");
        }
    }
}
