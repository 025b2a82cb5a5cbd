//! Configuration: the YAML file schema, the environment overlay and validation into
//! [`Settings`]. `serve`, reload and `config check` all go through [`load`].
//!
//! Pipeline: file text → `file::FileConfig` (strict serde, unknown keys rejected) → environment
//! and command-line overrides → `validate` → `Settings` (every default filled in, nothing left
//! for the request path to decide).

pub mod client_auth;
pub mod cors;
pub(crate) mod env;
mod file;
pub mod hub;
pub mod jwt;
pub mod limits;
mod names;
pub mod proxy;
mod suites;
pub mod units;
mod validate;
pub mod websocket;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};

pub use names::{normalize_dns_name, validate_path_component, NameError};
pub use suites::{KxGroup, Tls12Suite, Tls13Suite};

/// The `live/` folder name for an ACME certificate: its first name (`*.` becomes `_wildcard.`).
pub fn acme_lineage(names: &[String]) -> String {
    let first = names.first().map(String::as_str).unwrap_or("certificate");
    match first.strip_prefix("*.") {
        Some(rest) => format!("_wildcard.{rest}"),
        None => first.to_owned(),
    }
}

/// Default addresses: loopback only, so a first run never exposes anything.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./tlsgate-data";

/// The validated, typed configuration. Serializes to the same YAML schema it was read from,
/// which is what `config check` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    #[serde(skip)]
    pub source: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// The main listener: HTTPS/WSS, or plain HTTP/WS when TLS is off.
    pub listen: SocketAddr,
    pub http: HttpSettings,
    pub tls: TlsSettings,
    pub headers: HeaderSettings,
    pub limits: Limits,
    #[serde(flatten)]
    pub proxy: proxy::ProxySettings,
    /// `jwt:` verifiers and `forward_auth:` services, named by routes' `auth:`.
    #[serde(flatten)]
    pub auth: jwt::AuthSettings,
    /// Named CORS policies (routes refer to them by name).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub cors: BTreeMap<String, cors::CorsSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeSettings>,
    /// The admin listener (`/metrics`, `/health`, `/ready`, `/certificates`, `POST /reload`);
    /// `None`: off.
    #[serde(serialize_with = "serialize_admin")]
    pub admin: Option<SocketAddr>,
    pub access_log: bool,
    #[serde(flatten)]
    pub edge_limits: limits::EdgeLimitSettings,
    /// The WSS hub (`hub.endpoints` are also routes in `proxy.routes`).
    #[serde(skip_serializing_if = "hub_is_off")]
    pub hub: hub::HubSettings,
}

fn hub_is_off(hub: &hub::HubSettings) -> bool {
    !hub.is_enabled()
}

impl Settings {
    /// Settings that are valid but risky, for `serve` and `config check` to print alike.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = client_auth::warnings(self);
        if let Some(admin) = self.admin.filter(|addr| !addr.ip().is_loopback()) {
            // Not refused: containers bind 0.0.0.0 for a scraper in the next container. But
            // the endpoints have no authentication, so say what that exposes.
            warnings.push(format!(
                "admin listener on {admin} is not loopback: its endpoints have no authentication, so anyone who can reach it can read /metrics and /certificates and POST /reload; keep it on 127.0.0.1 (the default) or firewall the port"
            ));
        }
        let routes = &self.proxy.routes;
        warnings.extend(
            self.auth.unused(
                routes
                    .iter()
                    .map(|r| (r.auth.as_ref(), r.forward_auth.as_ref())),
            ),
        );
        warnings.extend(cors::unused(
            &self.cors,
            routes.iter().map(|r| r.cors.as_ref()),
        ));
        warnings.extend(self.edge_limits.warnings(routes.iter().map(|r| &r.limits)));
        warnings
    }
}

fn serialize_admin<S: Serializer>(admin: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    match admin {
        None => s.serialize_bool(false),
        Some(addr) => {
            let mut map = s.serialize_map(Some(1))?;
            map.serialize_entry("listen", &addr.to_string())?;
            map.end()
        }
    }
}

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// The ACME CA certificates marked `acme:` come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AcmeSettings {
    /// The directory URL (`letsencrypt` and `letsencrypt-staging` are expanded).
    pub directory: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub agree_tos: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eab_kid: Option<String>,
    /// Secret: never printed.
    #[serde(skip)]
    pub eab_hmac_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_root: Option<PathBuf>,
    pub challenge: AcmeChallenge,
    pub key_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_hook: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy_hook: Option<String>,
    /// How often renewal is considered (with jitter); twice a day by default.
    #[serde(serialize_with = "units::serialize_duration")]
    pub check_interval: Duration,
    /// The most one request to the CA may take, answer included.
    #[serde(serialize_with = "units::serialize_duration")]
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AcmeChallenge {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    #[serde(rename = "dns-01")]
    Dns01,
}

/// A certificate obtained from the ACME CA, kept in `live/NAME/`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AcmeCertificate {
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpSettings {
    pub mode: HttpMode,
    pub listen: SocketAddr,
    /// The port written into redirects; defaults to the main listener's port (e.g. when a
    /// container maps 443 to 8443, set 443 here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMode {
    /// `301` to the HTTPS URL.
    Redirect,
    /// `403 TLS required` (seed 001's nginx `return 403`).
    Reject,
    /// No plain-HTTP listener.
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TlsSettings {
    pub enabled: bool,
    pub min_version: TlsVersion,
    pub tls13_cipher_suites: Vec<Tls13Suite>,
    pub tls12_cipher_suites: Vec<Tls12Suite>,
    pub key_exchange_groups: Vec<KxGroup>,
    pub session_tickets: bool,
    /// Empty means: use the local development CA and its `localhost` certificate.
    pub certificates: Vec<CertificateSettings>,
    pub client_auth: client_auth::ClientAuthSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        }
    }
}

impl Serialize for TlsVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertificateSettings {
    pub source: CertSource,
    /// Names this certificate serves; empty means every DNS name in its SANs.
    pub names: Vec<String>,
    pub default: bool,
    /// Client certificates for this entry's names, instead of the listener's.
    pub client_auth: Option<client_auth::ClientAuthSettings>,
    /// Where this entry was configured, for error messages.
    pub origin: Origin,
}

/// Printed as it is written in a config file: an ACME entry's names are its `acme.names`
/// (copied into `names` when validated), so they appear once and the output reads back.
impl Serialize for CertificateSettings {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Written<'a> {
            #[serde(flatten)]
            source: &'a CertSource,
            #[serde(skip_serializing_if = "Option::is_none")]
            names: Option<&'a Vec<String>>,
            default: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            client_auth: Option<&'a client_auth::ClientAuthSettings>,
        }
        let names = match &self.source {
            CertSource::Acme { .. } => None,
            _ if self.names.is_empty() => None,
            _ => Some(&self.names),
        };
        Written {
            source: &self.source,
            names,
            default: self.default,
            client_auth: self.client_auth.as_ref(),
        }
        .serialize(serializer)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum CertSource {
    /// A certificate (chain) file and a key file. The certificate file may also hold the key.
    Files {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    /// One PEM holding the chain and the key (HAProxy's `crt`, seed 003's `.pem`).
    Combined { pem_file: PathBuf },
    /// Obtained and renewed over ACME; the files are its certbot-style `live/NAME/` copy.
    Acme {
        acme: AcmeCertificate,
        #[serde(skip)]
        fullchain: PathBuf,
        #[serde(skip)]
        privkey: PathBuf,
    },
}

impl CertSource {
    /// The file holding the certificate chain, for messages.
    pub fn cert_path(&self) -> &Path {
        match self {
            CertSource::Files { cert_file, .. } => cert_file,
            CertSource::Combined { pem_file } => pem_file,
            CertSource::Acme { fullchain, .. } => fullchain,
        }
    }

    pub fn key_path(&self) -> &Path {
        match self {
            CertSource::Files { key_file, .. } => key_file,
            CertSource::Combined { pem_file } => pem_file,
            CertSource::Acme { privkey, .. } => privkey,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeaderSettings {
    #[serde(serialize_with = "serialize_hsts")]
    pub hsts: Option<Hsts>,
    #[serde(serialize_with = "serialize_header")]
    pub x_content_type_options: Option<String>,
    #[serde(serialize_with = "serialize_header")]
    pub x_frame_options: Option<String>,
    #[serde(serialize_with = "serialize_header")]
    pub referrer_policy: Option<String>,
    #[serde(serialize_with = "serialize_header")]
    pub content_security_policy: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub custom: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hsts {
    #[serde(serialize_with = "units::serialize_duration")]
    pub max_age: Duration,
    pub include_subdomains: bool,
    pub preload: bool,
}

impl Hsts {
    /// The `Strict-Transport-Security` header value.
    pub fn header_value(&self) -> String {
        let mut value = format!("max-age={}", self.max_age.as_secs());
        if self.include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if self.preload {
            value.push_str("; preload");
        }
        value
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    /// Time allowed for a client to complete the TLS handshake.
    #[serde(serialize_with = "units::serialize_duration")]
    pub handshake_timeout: Duration,
    /// Time allowed for a client to send a request's headers (slowloris defence).
    #[serde(serialize_with = "units::serialize_duration")]
    pub header_read_timeout: Duration,
    /// Largest request head accepted; larger gets `431`.
    #[serde(serialize_with = "units::serialize_size")]
    pub max_header_size: u64,
    /// A keep-alive connection with no request in flight is closed after this long.
    #[serde(serialize_with = "units::serialize_duration")]
    pub idle_timeout: Duration,
    /// A client that takes no response bytes for this long is cut off (nginx's
    /// `send_timeout`): the connection when its socket stays full, one HTTP/2 stream when
    /// only that stream's flow-control window stays shut.
    #[serde(serialize_with = "units::serialize_duration")]
    pub send_timeout: Duration,
    /// An upgraded WebSocket with no traffic either way is closed after this long.
    #[serde(serialize_with = "units::serialize_duration")]
    pub websocket_idle_timeout: Duration,
    pub max_connections: usize,
    /// Threads that serve connections; `0`: one per CPU. Read at start only.
    pub workers: usize,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    #[serde(serialize_with = "units::serialize_duration")]
    pub shutdown_timeout: Duration,
    /// Largest request body proxied; larger gets `413` (routes may override).
    #[serde(serialize_with = "units::serialize_size")]
    pub max_body_size: u64,
    /// After a reload removes a route, its WebSockets close (1001) within this long, spread
    /// at random.
    #[serde(serialize_with = "units::serialize_duration")]
    pub reload_grace: Duration,
    pub per_ip: limits::PerIpSettings,
}

fn serialize_header<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(text) => s.serialize_str(text),
        None => s.serialize_bool(false),
    }
}

fn serialize_hsts<S: Serializer>(value: &Option<Hsts>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(hsts) => hsts.serialize(s),
        None => s.serialize_bool(false),
    }
}

/// Where a setting came from, so an error can point at it.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Origin {
    File {
        path: PathBuf,
        line: u64,
        column: u64,
    },
    Env(&'static str),
    Flag(&'static str),
    #[default]
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line, column } => {
                write!(f, "{}:{line}:{column}", path.display())
            }
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(flag) => write!(f, "command-line flag {flag}"),
            Origin::Default => f.write_str("built-in default"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file over [`MAX_CONFIG_BYTES`] (or an endless one such as `/dev/zero`).
    #[error("config file {path} is larger than {} MiB: not a configuration file (is it the right path?)", MAX_CONFIG_BYTES >> 20)]
    TooLarge { path: PathBuf },
    #[error("config file {path} is not UTF-8 text")]
    NotText { path: PathBuf },
    /// YAML that does not fit the schema: unknown key, wrong type, bad value.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    /// Well-formed YAML whose value is not acceptable.
    #[error("{origin}: {field}: {reason}")]
    Invalid {
        origin: Origin,
        field: String,
        reason: String,
    },

    // Rules that relate two or more fields or sections. Each has its own variant so callers
    // and tests can tell them apart without reading the message (Sōzu's `HstsOnPlainHttp`).
    // `origin` is what to change: the later or the more specific of the fields involved.
    /// `http.listen` equals `listen` while both listeners run.
    #[error("{origin}: http.listen: {addr} is also the main listener's address: give the plain-HTTP listener its own port, or set `http: off`")]
    HttpListenIsMainListen { origin: Origin, addr: SocketAddr },
    /// `challenge: http-01` with no plain-HTTP listener to answer on (`http: off`, or TLS off).
    #[error("{origin}: acme.challenge: http-01 is answered on the plain-HTTP listener{}", http01_advice(*.tls_enabled))]
    Http01WithoutHttpListener {
        origin: Origin,
        http_mode: HttpMode,
        tls_enabled: bool,
    },
    /// A second certificate marked `default: true`.
    #[error("{origin}: tls.certificates.default: only one certificate can be the default; {first} is already")]
    TwoDefaultCertificates { origin: Origin, first: Origin },
    /// `preload: true` with a `max_age` under a year.
    #[error("{origin}: headers.hsts.preload: the HSTS preload list requires max_age of at least 365d and include_subdomains: true (max_age is {})", units::format_duration(*.max_age))]
    HstsPreloadShortMaxAge { origin: Origin, max_age: Duration },
    /// `preload: true` with `include_subdomains: false`.
    #[error("{origin}: headers.hsts.preload: the HSTS preload list requires max_age of at least 365d and include_subdomains: true (include_subdomains is false)")]
    HstsPreloadWithoutSubdomains { origin: Origin },
    /// A certificate entry with `cert_file` and no `key_file`.
    #[error("{origin}: tls.certificates.key_file: cert_file needs a key_file (or use pem_file for one file holding chain and key)")]
    CertFileWithoutKeyFile { origin: Origin, cert_file: PathBuf },
    /// A certificate entry with `key_file` and no `cert_file`.
    #[error("{origin}: tls.certificates.cert_file: key_file needs a cert_file")]
    KeyFileWithoutCertFile { origin: Origin, key_file: PathBuf },
    /// A certificate entry with `pem_file` and also `cert_file` or `key_file`.
    #[error("{origin}: tls.certificates.pem_file: pem_file holds both chain and key: do not also give cert_file or key_file")]
    PemFileWithCertOrKeyFile { origin: Origin, pem_file: PathBuf },
    /// A certificate entry with none of `cert_file`, `key_file`, `pem_file`, `acme`.
    #[error("{origin}: tls.certificates: give cert_file and key_file, or pem_file")]
    CertificateWithoutFiles { origin: Origin },
    /// An `acme:` certificate entry that also names files or `names`.
    #[error("{origin}: tls.certificates.acme: an ACME certificate names its domains under acme.names and has no cert_file, key_file, pem_file or names (found: {})", .found.join(", "))]
    AcmeCertificateWithFiles {
        origin: Origin,
        found: Vec<&'static str>,
    },
    /// ACME certificates configured without an `acme:` section.
    #[error("{origin}: tls.certificates.acme: ACME certificates need an `acme:` section (directory, email, agree_tos)")]
    AcmeCertificateWithoutAcmeSection { origin: Origin },
    /// `challenge: dns-01` without `dns_hook`.
    #[error("{origin}: acme.dns_hook: dns-01 needs a dns_hook command (called with present|cleanup NAME VALUE)")]
    Dns01WithoutHook { origin: Origin },
    /// Two ACME certificates whose first names give the same `live/` folder.
    #[error("{origin}: tls.certificates.acme.names: shares its folder live/{lineage}/ with the certificate at {first}: give each ACME certificate a different first name")]
    AcmeFolderShared {
        origin: Origin,
        lineage: String,
        first: Origin,
    },
    /// An IP address among an ACME certificate's names with `challenge: dns-01`.
    #[error("{origin}: tls.certificates.acme.names: `{name}`: IP addresses cannot be validated with dns-01: use http-01 or tls-alpn-01")]
    AcmeIpNameWithDns01 { origin: Origin, name: String },
    /// A wildcard among an ACME certificate's names with a challenge other than dns-01.
    #[error("{origin}: tls.certificates.acme.names: `{name}`: wildcard names can only be validated with `challenge: dns-01`")]
    AcmeWildcardWithoutDns01 {
        origin: Origin,
        name: String,
        challenge: AcmeChallenge,
    },
    /// One of `eab_kid` / `eab_hmac_key` without the other; `missing` is the absent one.
    #[error(
        "{origin}: acme.{missing}: external account binding needs both eab_kid and eab_hmac_key"
    )]
    EabIncomplete {
        origin: Origin,
        missing: &'static str,
    },
    /// A route's `upstream` (or `default_route`) that is neither a URL nor an `upstreams:` name.
    #[error("{origin}: {field}: `{target}` is neither a URL nor a defined upstream (defined: {})", defined_list(.defined.iter()))]
    UnknownUpstream {
        origin: Origin,
        field: &'static str,
        target: String,
        defined: Vec<String>,
    },
    /// An upstream whose every server is `backup: true`.
    #[error("{origin}: upstreams.{upstream}.servers: every server is a backup: at least one must be primary")]
    AllServersBackup { origin: Origin, upstream: String },
    /// One variable of a certificate/key pair (`SSL_CERTFILE` + `SSL_KEYFILE`, …) without the other.
    #[error("{origin}: {set}: is set but {missing} is not: set both, or neither")]
    EnvCertificateIncomplete {
        origin: Origin,
        set: &'static str,
        missing: &'static str,
    },
}

fn http01_advice(tls_enabled: bool) -> &'static str {
    if tls_enabled {
        ": do not set `http: off` (or use tls-alpn-01 or dns-01)"
    } else {
        ", which runs only with TLS on: turn TLS on (or use dns-01)"
    }
}

/// Where `spanned` stands in the file, through `origin` (line, column → [`Origin`]), the form
/// in which the config's sub-validators are given the file's name.
pub(super) fn origin_of<T>(
    origin: &dyn Fn(u64, u64) -> Origin,
    spanned: &serde_saphyr::Spanned<T>,
) -> Origin {
    origin(spanned.referenced.line(), spanned.referenced.column())
}

/// The names an error offers instead of a missing one: `a, b`, or `none`.
pub(super) fn defined_list<S: AsRef<str>>(defined: impl IntoIterator<Item = S>) -> String {
    let list: Vec<S> = defined.into_iter().collect();
    if list.is_empty() {
        return "none".to_owned();
    }
    list.iter()
        .map(AsRef::as_ref)
        .collect::<Vec<&str>>()
        .join(", ")
}

impl ConfigError {
    fn invalid(origin: Origin, field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            origin,
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Command-line flags that override the file and the environment.
/// Let's Encrypt's production directory, and its staging twin (`acme renew --dry-run`).
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub http_listen: Option<String>,
    /// `--upstream URL`: proxy every request no route matches to this backend.
    pub upstream: Option<String>,
    pub admin_listen: Option<String>,
}

/// Reads environment variables; tests pass a map instead of touching the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, for the binary.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Loads and validates the configuration: file (if any), then environment, then flags.
pub fn load(
    path: Option<&Path>,
    overrides: &Overrides,
    env: EnvLookup<'_>,
) -> Result<Settings, ConfigError> {
    let (file, text) = match path {
        Some(path) => (Some(path), read_config_file(path)?),
        None => (None, String::new()),
    };
    load_str(&text, file, overrides, env)
}

/// The largest configuration file read. Real ones are a few KiB; the cap keeps a wrong path
/// (`/dev/zero`, a log file, a disk image) from being read whole into memory.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Reads at most [`MAX_CONFIG_BYTES`] (one byte more tells an oversized file): special files
/// that never end fail as soon as the cap is reached, and pipes (`-c <(...)`) still work.
fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    String::from_utf8(bytes).map_err(|_| ConfigError::NotText {
        path: path.to_path_buf(),
    })
}

/// As [`load`], from text already read. `path` names the text in messages and anchors
/// relative file paths.
pub fn load_str(
    text: &str,
    path: Option<&Path>,
    overrides: &Overrides,
    env: EnvLookup<'_>,
) -> Result<Settings, ConfigError> {
    let mut raw = parse_file(text, path)?;
    let mut env_overlay = env::read_overlay(env)?;
    env_overlay.jwt_secrets = jwt::secret_variables(&raw.jwt, env);
    validate::validate(&mut raw, path, &env_overlay, overrides)
}

fn parse_file(text: &str, path: Option<&Path>) -> Result<file::FileConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(file::FileConfig::default());
    }
    let shown = path.unwrap_or(Path::new("<config>")).to_path_buf();
    serde_saphyr::from_str::<file::FileConfig>(text).map_err(|error| {
        let (line, column) = error
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        ConfigError::Syntax {
            message: describe_syntax_error(&error.render_with_formatter(&PlainMessages), &shown),
            path: shown,
            line,
            column,
        }
    })
}

/// serde-saphyr's messages, except those written for the programmer calling it (its option
/// names, Rust `Debug` output): those are said in terms of the file.
struct PlainMessages;

impl serde_saphyr::MessageFormatter for PlainMessages {
    fn format_message<'a>(&self, error: &'a serde_saphyr::Error) -> std::borrow::Cow<'a, str> {
        use serde_saphyr::Error;
        match error {
            Error::DuplicateMappingKey { key: Some(key), .. } => {
                format!("duplicate key `{key}`: a key may appear only once in a mapping").into()
            }
            Error::DuplicateMappingKey { key: None, .. } => {
                "duplicate key: a key may appear only once in a mapping".into()
            }
            Error::Budget { breach, .. } => budget_message(breach).into(),
            other => serde_saphyr::DefaultMessageFormatter.format_message(other),
        }
    }
}

/// What a parser budget breach means for a configuration file.
fn budget_message(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach;
    let limits = serde_saphyr::Budget::default();
    let count = |n: usize| {
        // 250000 → "250,000": the limit as people read it.
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    match breach {
        BudgetBreach::Nodes { .. } => format!(
            "the YAML has too many nodes (over {}), e.g. an alias bomb: a configuration file needs far fewer",
            count(limits.max_nodes)
        ),
        BudgetBreach::Aliases { .. } | BudgetBreach::AliasAnchorRatio { .. } => {
            "the YAML uses too many aliases (`*name`), e.g. an alias bomb".into()
        }
        BudgetBreach::Depth { .. } => format!(
            "the YAML is nested too deeply (over {} levels)",
            count(limits.max_depth)
        ),
        _ => "the YAML is too large or too complex for a configuration file (a parser limit was reached)".into(),
    }
}

/// Turns serde-saphyr's report into ours: drop its own position prefix (we print
/// `file:line:column`), name the file in the snippet, and suggest the nearest valid key.
fn describe_syntax_error(report: &str, path: &Path) -> String {
    let mut text = report.replace("<input>", &path.display().to_string());
    if let Some(rest) = text.strip_prefix("error: ") {
        text = rest.to_owned();
    }
    if let Some(pos) = text.find(": ") {
        if text[..pos].starts_with("line ") {
            text = text[pos + 2..].to_owned();
        }
    }
    let (first, snippet) = match text.split_once('\n') {
        Some((first, snippet)) => (first.to_owned(), format!("\n{snippet}")),
        None => (text.clone(), String::new()),
    };
    let hint = suggest_key(&first)
        .map(|key| format!(" (did you mean `{key}`?)"))
        .unwrap_or_default();
    format!("{first}{hint}{snippet}")
}

/// From "unknown field `kye_file`, expected one of cert_file, key_file", the closest key.
fn suggest_key(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected")?.1;
    expected
        .trim_start_matches(" one of")
        .split([',', '`', ' '])
        .map(str::trim)
        .filter(|candidate| !candidate.is_empty() && *candidate != "or")
        .map(|candidate| (edit_distance(unknown, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate.to_owned())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// The effective configuration as YAML, every default filled in.
pub fn to_yaml(settings: &Settings) -> String {
    serde_saphyr::to_string(settings).unwrap_or_else(|error| format!("# cannot print: {error}\n"))
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
