//! Client certificates (mTLS): `tls.client_auth` for the listener and per certificate entry
//! (per SNI name), and the per-route `require_client_cert`, `client_cert` rules and
//! `pass_client_cert`. The file schema, the typed settings and their validation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::{ConfigError, Origin, Settings};

// ---------- file ----------

/// `client_auth: {mode: off|optional|required, ca_files: [...], crl_files: [...]}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthFile {
    pub mode: Option<Spanned<String>>,
    pub ca_files: Option<Vec<Spanned<String>>>,
    pub crl_files: Option<Vec<Spanned<String>>>,
}

/// A route's `client_cert: {subjects: [...], sans: [...]}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertRuleFile {
    pub subjects: Option<Vec<Spanned<String>>>,
    pub sans: Option<Vec<Spanned<String>>>,
}

// ---------- settings ----------

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    /// No certificate is asked for.
    #[default]
    Off,
    /// Asked for; a client without one is let through, one with a bad one is refused.
    Optional,
    /// A client without a valid certificate fails the handshake.
    Required,
}

/// Client-certificate verification for the listener or one certificate entry's names.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClientAuthSettings {
    pub mode: ClientAuthMode,
    /// The CAs whose certificates are accepted (PEM).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ca_files: Vec<PathBuf>,
    /// Revocation lists (PEM or DER), one per CA in the chain at least.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub crl_files: Vec<PathBuf>,
    #[serde(skip)]
    pub origin: Origin,
}

impl ClientAuthSettings {
    pub fn is_on(&self) -> bool {
        self.mode != ClientAuthMode::Off
    }

    /// Every file the verifier reads (watched for changes like certificate files).
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.ca_files.iter().chain(&self.crl_files)
    }
}

/// One SAN pattern of a route's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SanRule {
    /// `DNS:name` or `*.example.com` (one label, as in certificates).
    Dns(String),
    Email(String),
    Uri(String),
    Ip(std::net::IpAddr),
    /// A bare value: equal to any SAN of any type (DNS names compared without case).
    Any(String),
}

impl SanRule {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty SAN pattern".into());
        }
        let lower = text.to_ascii_lowercase();
        let rule = if let Some(rest) = lower.strip_prefix("dns:") {
            SanRule::Dns(rest.trim().to_owned())
        } else if lower.starts_with("email:") {
            SanRule::Email(text[6..].trim().to_owned())
        } else if lower.starts_with("uri:") {
            SanRule::Uri(text[4..].trim().to_owned())
        } else if let Some(rest) = lower.strip_prefix("ip:") {
            SanRule::Ip(
                rest.trim()
                    .parse()
                    .map_err(|_| format!("`{text}`: not an IP address"))?,
            )
        } else if lower.starts_with("*.") {
            SanRule::Dns(lower)
        } else {
            SanRule::Any(text.to_owned())
        };
        if let SanRule::Dns(name) = &rule {
            let rest = name.strip_prefix("*.").unwrap_or(name);
            if rest.is_empty() || rest.contains('*') {
                return Err(format!(
                    "`{text}`: a wildcard is only `*.` before a domain (e.g. `*.example.com`)"
                ));
            }
        }
        Ok(rule)
    }
}

impl std::fmt::Display for SanRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SanRule::Dns(name) => write!(f, "DNS:{name}"),
            SanRule::Email(email) => write!(f, "email:{email}"),
            SanRule::Uri(uri) => write!(f, "URI:{uri}"),
            SanRule::Ip(ip) => write!(f, "IP:{ip}"),
            SanRule::Any(value) => f.write_str(value),
        }
    }
}

impl Serialize for SanRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a route asks of the client certificate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteClientCert {
    /// `403` without a verified client certificate (implied by `subjects`/`sans`).
    pub require: bool,
    /// Allowed subjects, in the RFC 4514 form `X-Client-Cert-Subject` carries.
    pub subjects: Vec<String>,
    /// Allowed SANs; a certificate passes when its subject or one of its SANs is listed.
    pub sans: Vec<SanRule>,
    /// `pass_client_cert: pem`: the URL-encoded PEM in `X-Client-Cert` too.
    pub pass_pem: bool,
}

/// Printed as the route keys it was written with (flattened into the route), so `config
/// check`'s output reads back.
impl Serialize for RouteClientCert {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        #[derive(Serialize)]
        struct Rules<'a> {
            #[serde(skip_serializing_if = "Vec::is_empty")]
            subjects: &'a Vec<String>,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            sans: &'a Vec<SanRule>,
        }
        let mut map = s.serialize_map(None)?;
        let rules = !self.subjects.is_empty() || !self.sans.is_empty();
        if self.require && !rules {
            map.serialize_entry("require_client_cert", &true)?;
        }
        if rules {
            let rules = Rules {
                subjects: &self.subjects,
                sans: &self.sans,
            };
            map.serialize_entry("client_cert", &rules)?;
        }
        if self.pass_pem {
            map.serialize_entry("pass_client_cert", "pem")?;
        }
        map.end()
    }
}

// ---------- validation ----------

/// `tls.client_auth` (or a certificate entry's, `field` saying which).
pub fn client_auth_settings(
    raw: Spanned<ClientAuthFile>,
    field: &str,
    origin: &dyn Fn(u64, u64) -> Origin,
    file_path: &dyn Fn(&str) -> PathBuf,
) -> Result<ClientAuthSettings, ConfigError> {
    let section = super::origin_of(origin, &raw);
    let file = raw.value;
    let mode = match &file.mode {
        None => ClientAuthMode::Required,
        Some(mode) => match mode.value.trim().to_ascii_lowercase().as_str() {
            "off" | "false" | "no" => ClientAuthMode::Off,
            "optional" => ClientAuthMode::Optional,
            "required" | "on" | "true" | "yes" => ClientAuthMode::Required,
            other => {
                return Err(ConfigError::invalid(
                    super::origin_of(origin, mode),
                    format!("{field}.mode"),
                    format!("`{other}` is not a mode; valid: off, optional, required"),
                ))
            }
        },
    };
    let paths = |list: Option<Vec<Spanned<String>>>| -> Vec<PathBuf> {
        list.unwrap_or_default()
            .iter()
            .map(|s| file_path(s.value.trim()))
            .collect()
    };
    let ca_files = paths(file.ca_files);
    let crl_files = paths(file.crl_files);
    if mode != ClientAuthMode::Off && ca_files.is_empty() {
        return Err(ConfigError::invalid(
            section,
            format!("{field}.ca_files"),
            "client certificates need at least one CA file to verify them against",
        ));
    }
    Ok(ClientAuthSettings {
        mode,
        ca_files,
        crl_files,
        origin: section,
    })
}

/// A route's `require_client_cert`, `client_cert` and `pass_client_cert`.
pub fn route_client_cert(
    require: Option<bool>,
    rules: Option<Spanned<ClientCertRuleFile>>,
    pass: Option<Spanned<String>>,
    origin: &dyn Fn(u64, u64) -> Origin,
) -> Result<RouteClientCert, ConfigError> {
    let mut settings = RouteClientCert {
        require: require.unwrap_or(false),
        ..Default::default()
    };
    if let Some(rules) = rules {
        let at = super::origin_of(origin, &rules);
        for subject in rules.value.subjects.unwrap_or_default() {
            let text = subject.value.trim();
            if text.is_empty() {
                return Err(ConfigError::invalid(
                    super::origin_of(origin, &subject),
                    "routes.client_cert.subjects",
                    "an empty subject",
                ));
            }
            settings.subjects.push(text.to_owned());
        }
        for san in rules.value.sans.unwrap_or_default() {
            let rule = SanRule::parse(&san.value).map_err(|reason| {
                ConfigError::invalid(
                    super::origin_of(origin, &san),
                    "routes.client_cert.sans",
                    reason,
                )
            })?;
            settings.sans.push(rule);
        }
        if settings.subjects.is_empty() && settings.sans.is_empty() {
            return Err(ConfigError::invalid(
                at,
                "routes.client_cert",
                "lists neither `subjects` nor `sans`",
            ));
        }
        settings.require = true;
    }
    if let Some(pass) = pass {
        settings.pass_pem = match pass.value.trim().to_ascii_lowercase().as_str() {
            "pem" => true,
            "off" | "false" | "no" | "headers" => false,
            other => {
                return Err(ConfigError::invalid(
                    super::origin_of(origin, &pass),
                    "routes.pass_client_cert",
                    format!("`{other}` is not a choice; valid: pem, off (identity headers are always sent when a certificate was verified)"),
                ))
            }
        };
    }
    Ok(settings)
}

/// A route that asks for a client certificate while no listener or certificate entry asks
/// clients for one can never pass.
pub fn warnings(settings: &Settings) -> Vec<String> {
    let asked = settings.tls.enabled
        && (settings.tls.client_auth.is_on()
            || settings
                .tls
                .certificates
                .iter()
                .any(|c| c.client_auth.as_ref().is_some_and(|a| a.is_on())));
    if asked {
        return Vec::new();
    }
    settings
        .proxy
        .routes
        .iter()
        .filter(|route| route.client_cert.require)
        .map(|route| {
            format!(
                "route {}{} requires a client certificate, but no `tls.client_auth` asks clients for one: every request to it gets 403",
                route.host.as_deref().unwrap_or("*"),
                route.path
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Settings, ConfigError> {
        super::super::load_str(
            yaml,
            Some(std::path::Path::new("/etc/tlsgate/tlsgate.yaml")),
            &Default::default(),
            &|_| None,
        )
    }

    fn refused(yaml: &str) -> String {
        match load(yaml) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn listener_and_per_name_settings() {
        let settings = load(
            "tls:\n  client_auth: {mode: optional, ca_files: [ca.crt], crl_files: [/crl/a.crl]}\n  certificates:\n    - pem_file: s.pem\n      names: [secure.test]\n      client_auth: {ca_files: [other.crt]}\n",
        )
        .unwrap();
        let auth = &settings.tls.client_auth;
        assert_eq!(auth.mode, ClientAuthMode::Optional);
        assert_eq!(auth.ca_files, vec![PathBuf::from("/etc/tlsgate/ca.crt")]);
        assert_eq!(auth.crl_files, vec![PathBuf::from("/crl/a.crl")]);
        let named = settings.tls.certificates[0].client_auth.as_ref().unwrap();
        assert_eq!(
            named.mode,
            ClientAuthMode::Required,
            "a mapping means required"
        );
        assert!(!load("").unwrap().tls.client_auth.is_on(), "off by default");
        let printed = super::super::to_yaml(&settings);
        assert!(printed.contains("mode: optional"), "{printed}");
    }

    #[test]
    fn mistakes_are_refused_with_their_line() {
        let error = refused("tls:\n  client_auth: {mode: sometimes, ca_files: [ca.crt]}\n");
        assert!(
            error.contains("tlsgate.yaml:2") && error.contains("sometimes"),
            "{error}"
        );
        let error = refused("tls:\n  client_auth: {mode: required}\n");
        assert!(
            error.contains("tlsgate.yaml:2") && error.contains("ca_files"),
            "{error}"
        );
        let error = refused("tls:\n  client_auth: {mode: required, ca_file: [x]}\n");
        assert!(error.contains("ca_file"), "{error}");
        let error = refused(
            "tls:\n  certificates:\n    - pem_file: s.pem\n      client_auth: {ca_files: [a.crt]}\n",
        );
        assert!(error.contains("names"), "{error}");
        let route = |extra: &str| {
            format!("routes:\n  - path: /\n    upstream: http://127.0.0.1:1\n    {extra}\n")
        };
        let error = refused(&route("client_cert: {sans: ['dns:a.*.test']}"));
        assert!(
            error.contains("tlsgate.yaml:4") && error.contains("wildcard"),
            "{error}"
        );
        let error = refused(&route("client_cert: {}"));
        assert!(error.contains("neither"), "{error}");
        let error = refused(&route("pass_client_cert: der"));
        assert!(error.contains("pem"), "{error}");
    }

    #[test]
    fn a_route_needing_a_certificate_nobody_asks_for_is_a_warning() {
        let yaml = "routes:\n  - path: /\n    upstream: http://127.0.0.1:1\n    require_client_cert: true\n";
        let settings = load(yaml).unwrap();
        assert!(settings.proxy.routes[0].client_cert.require);
        assert!(
            settings
                .warnings()
                .iter()
                .any(|w| w.contains("requires a client certificate")),
            "{:?}",
            settings.warnings()
        );
        let asked = format!("tls:\n  client_auth: {{mode: optional, ca_files: [ca.crt]}}\n{yaml}");
        assert!(load(&asked).unwrap().warnings().is_empty());
        // The effective config reads back.
        let rules = "routes:\n  - path: /\n    upstream: http://127.0.0.1:1\n    client_cert: {subjects: ['CN=a,O=b'], sans: ['*.svc.test']}\n    pass_client_cert: pem\n";
        let first = load(rules).unwrap();
        let printed = super::super::to_yaml(&first);
        let again = load(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(again.proxy.routes, first.proxy.routes);
    }

    #[test]
    fn san_patterns() {
        assert_eq!(
            SanRule::parse("*.Example.com").unwrap(),
            SanRule::Dns("*.example.com".into())
        );
        assert_eq!(
            SanRule::parse("DNS:a.example.com").unwrap(),
            SanRule::Dns("a.example.com".into())
        );
        assert_eq!(
            SanRule::parse("email:Bob@example.com").unwrap(),
            SanRule::Email("Bob@example.com".into())
        );
        assert_eq!(
            SanRule::parse("ip:10.0.0.1").unwrap(),
            SanRule::Ip("10.0.0.1".parse().unwrap())
        );
        assert!(SanRule::parse("dns:*.*.example.com").is_err());
        assert!(SanRule::parse("dns:a.*.com").is_err());
        assert!(SanRule::parse("ip:nope").is_err());
        assert_eq!(
            SanRule::parse("alice").unwrap(),
            SanRule::Any("alice".into())
        );
    }
}
