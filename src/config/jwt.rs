//! Tokens at the edge: the named JWT verifiers (`jwt:`), the named forward-auth services
//! (`forward_auth:`) and a route's `auth:` — file schema, typed settings and validation.
//!
//! Keys are read here, once per load (a secret from the environment or a file, a PEM public
//! key), so a missing or unreadable key is a configuration error with its file and line, and
//! the request path never reads a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::units::{self, ConfigDuration};
use super::{ConfigError, Origin};

// ---------- file schema ----------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    pub algorithms: Option<Vec<Spanned<String>>>,
    pub secret_env: Option<Spanned<String>>,
    pub secret_file: Option<Spanned<String>>,
    pub public_key_file: Option<Spanned<String>>,
    pub jwks_url: Option<Spanned<String>>,
    pub issuer: Option<String>,
    pub audience: Option<OneOrMany>,
    pub leeway: Option<ConfigDuration>,
    pub require_exp: Option<bool>,
    pub jwks_ttl: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthFile {
    pub url: Option<Spanned<String>>,
    pub timeout: Option<ConfigDuration>,
    pub request_headers: Option<Vec<Spanned<String>>>,
    pub response_headers: Option<Vec<Spanned<String>>>,
    pub cache: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub jwt: Option<Spanned<String>>,
    pub sources: Option<Vec<Spanned<String>>>,
    pub claims: Option<BTreeMap<String, serde_json::Value>>,
    pub pass_claims: Option<BTreeMap<String, Spanned<String>>>,
    pub strip_token: Option<bool>,
    pub realm: Option<String>,
    pub websocket_auth_failure: Option<Spanned<String>>,
}

// ---------- settings ----------

/// The signature algorithms a verifier may accept; `none` is not one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "HS256" => Self::HS256,
            "HS384" => Self::HS384,
            "HS512" => Self::HS512,
            "RS256" => Self::RS256,
            "RS384" => Self::RS384,
            "RS512" => Self::RS512,
            "PS256" => Self::PS256,
            "ES256" => Self::ES256,
            "ES384" => Self::ES384,
            "EdDSA" => Self::EdDSA,
            _ => return None,
        })
    }

    pub fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }

    /// The kind of public key the algorithm verifies with (`None`: a shared secret).
    pub fn key_kind(self) -> Option<KeyKind> {
        match self {
            Self::HS256 | Self::HS384 | Self::HS512 => None,
            Self::RS256 | Self::RS384 | Self::RS512 | Self::PS256 => Some(KeyKind::Rsa),
            Self::ES256 => Some(KeyKind::EcP256),
            Self::ES384 => Some(KeyKind::EcP384),
            Self::EdDSA => Some(KeyKind::Ed25519),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

/// A public key from a PEM file: its kind and the SPKI's key bits (an RSA key's PKCS#1 DER,
/// an EC key's uncompressed point, an Ed25519 key's 32 bytes) as the verifier takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kind: KeyKind,
    pub bits: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JwtKey {
    /// A shared secret (HS*): never printed, only where it came from (`env NAME` or
    /// `file PATH`).
    Secret {
        from: String,
        bytes: Vec<u8>,
    },
    PublicKey {
        file: PathBuf,
        key: PublicKey,
    },
    Jwks {
        url: String,
    },
}

/// Printed as the key it was written with (`secret_env`, `secret_file`, `public_key_file`,
/// `jwks_url`), so `config check`'s output loads again; a secret only by where it is.
impl Serialize for JwtKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (key, value) = match self {
            JwtKey::Secret { from, .. } => match from.split_once(' ') {
                Some(("env", name)) => ("secret_env", name.to_owned()),
                Some((_, path)) => ("secret_file", path.to_owned()),
                None => ("secret_file", from.clone()),
            },
            JwtKey::PublicKey { file, .. } => ("public_key_file", file.display().to_string()),
            JwtKey::Jwks { url } => ("jwks_url", url.clone()),
        };
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(key, &value)?;
        map.end()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JwtSettings {
    pub algorithms: Vec<JwtAlgorithm>,
    #[serde(flatten)]
    pub key: JwtKey,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    #[serde(serialize_with = "units::serialize_duration")]
    pub leeway: Duration,
    pub require_exp: bool,
    /// How often the JWKS is fetched again.
    #[serde(serialize_with = "units::serialize_duration")]
    pub jwks_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForwardAuthSettings {
    /// `http://` or `https://` URL of the auth service; the original request's path is not
    /// appended (it goes in `X-Forwarded-Uri`).
    pub url: String,
    #[serde(serialize_with = "units::serialize_duration")]
    pub timeout: Duration,
    /// Request headers copied to the auth request (lower case).
    pub request_headers: Vec<String>,
    /// Auth-response headers copied upstream on a pass (lower case).
    pub response_headers: Vec<String>,
    /// How long a verdict is kept per credential; zero: not cached.
    #[serde(serialize_with = "units::serialize_duration")]
    pub cache: Duration,
}

/// Where a route looks for its token, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer TOKEN`.
    Header,
    Cookie(String),
    Query(String),
    /// `Sec-WebSocket-Protocol: bearer, TOKEN` (browsers cannot set headers on a WebSocket).
    WebsocketProtocol,
}

/// Printed as written: `header`, `cookie:NAME`, `query:NAME`, `websocket_protocol`.
impl Serialize for TokenSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TokenSource::Header => s.serialize_str("header"),
            TokenSource::Cookie(name) => s.serialize_str(&format!("cookie:{name}")),
            TokenSource::Query(name) => s.serialize_str(&format!("query:{name}")),
            TokenSource::WebsocketProtocol => s.serialize_str("websocket_protocol"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebsocketAuthFailure {
    /// An HTTP 401/403 to the upgrade.
    Status,
    /// Accept the upgrade, then close with 4001 (no token) or 4003 (refused).
    Close,
}

/// A claim rule: the claim equals the value, or (an array claim) contains it. A value
/// `{name}` stands for the route's path parameter `name`.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimValue {
    Literal(serde_json::Value),
    /// The parameter's name.
    PathParameter(String),
}

impl Serialize for ClaimValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ClaimValue::Literal(value) => value.serialize(s),
            ClaimValue::PathParameter(name) => s.serialize_str(&format!("{{{name}}}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteAuthSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<String>,
    pub sources: Vec<TokenSource>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, ClaimValue>,
    /// Claim → upstream header (lower case).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pass_claims: BTreeMap<String, String>,
    pub strip_token: bool,
    pub realm: String,
    pub websocket_auth_failure: WebsocketAuthFailure,
    /// Where the route's `auth:` is, for errors found once the verifiers are known.
    #[serde(skip)]
    pub origin: Option<Origin>,
}

/// A route's reference to a named item, printed as the name.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct NamedRef {
    pub name: String,
    #[serde(skip)]
    pub origin: Option<Origin>,
}

/// The top-level `jwt:` and `forward_auth:` sections.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AuthSettings {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub jwt: BTreeMap<String, JwtSettings>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub forward_auth: BTreeMap<String, ForwardAuthSettings>,
}

impl AuthSettings {
    /// A warning per verifier or auth service that no route uses.
    /// `routes`: each route's `auth:` and `forward_auth:`.
    pub fn unused<'a>(
        &self,
        routes: impl Iterator<Item = (Option<&'a RouteAuthSettings>, Option<&'a NamedRef>)> + Clone,
    ) -> Vec<String> {
        let mut warnings = Vec::new();
        for name in self.jwt.keys() {
            if !routes
                .clone()
                .any(|(auth, _)| auth.and_then(|a| a.jwt.as_ref()) == Some(name))
            {
                warnings.push(format!("jwt verifier `{name}` is not used by any route"));
            }
        }
        for name in self.forward_auth.keys() {
            if !routes
                .clone()
                .any(|(_, service)| service.map(|f| &f.name) == Some(name))
            {
                warnings.push(format!(
                    "forward_auth service `{name}` is not used by any route"
                ));
            }
        }
        warnings
    }
}

// ---------- validation ----------

type OriginOf<'a> = &'a dyn Fn(u64, u64) -> Origin;

use super::origin_of as at;

/// Relative key files are relative to the config file's folder.
pub(super) fn file_path(config: Option<&Path>, text: &str) -> PathBuf {
    let path = PathBuf::from(text);
    match config.and_then(Path::parent) {
        Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => dir.join(path),
        _ => path,
    }
}

/// The largest key file read (a JWKS or a PEM key is a few KiB).
const MAX_KEY_FILE: u64 = 64 * 1024;

pub(super) fn read_key_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(format!("{} is larger than 64 KiB", path.display()));
    }
    Ok(bytes)
}

/// Base64 (standard or URL-safe alphabet, padding optional), strict about anything else.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0u32);
    let body = text.trim_end_matches('=');
    if text.len() - body.len() > 2 {
        return None;
    }
    for c in body.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    // A lone 6-bit group cannot end a valid encoding, and the bits past the last byte must be
    // zero (RFC 4648 §3.5): one value has one encoding, so a token cannot be varied unsigned.
    (count < 6 && bits == 0).then_some(out)
}

/// A `PUBLIC KEY` PEM (SPKI) → its kind and key bits.
pub fn parse_public_key_pem(pem: &[u8]) -> Result<PublicKey, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file".to_owned())?;
    let begin = "-----BEGIN PUBLIC KEY-----";
    let start = text.find(begin).ok_or_else(|| {
        if text.contains("-----BEGIN RSA PUBLIC KEY-----") {
            "an RSA PUBLIC KEY (PKCS#1) PEM: convert it with `openssl rsa -RSAPublicKey_in -pubout`".to_owned()
        } else {
            "no `-----BEGIN PUBLIC KEY-----` block (an SPKI public key; `openssl pkey -pubout` writes one)".to_owned()
        }
    })?;
    let rest = &text[start + begin.len()..];
    let end = rest
        .find("-----END PUBLIC KEY-----")
        .ok_or_else(|| "the PUBLIC KEY block has no END line".to_owned())?;
    let body: String = rest[..end].split_whitespace().collect();
    let der =
        base64_decode(&body).ok_or_else(|| "the PUBLIC KEY block is not base64".to_owned())?;
    parse_spki(&der)
}

/// An SPKI DER → its kind and key bits.
pub fn parse_spki(der: &[u8]) -> Result<PublicKey, String> {
    use x509_parser::prelude::FromDer;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
        .map_err(|e| format!("not a public key: {e}"))?;
    let algorithm = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|oid| oid.to_id_string());
    let kind = match (algorithm.as_str(), curve.as_deref()) {
        ("1.2.840.113549.1.1.1", _) => KeyKind::Rsa,
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => KeyKind::EcP256,
        ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => KeyKind::EcP384,
        ("1.3.101.112", _) => KeyKind::Ed25519,
        _ => {
            return Err(format!(
                "unsupported key type ({algorithm}): use RSA, EC P-256/P-384 or Ed25519"
            ))
        }
    };
    Ok(PublicKey {
        kind,
        bits: spki.subject_public_key.data.to_vec(),
    })
}

/// A URL a verifier or an auth service is fetched from: `http://` or `https://`, with a host.
fn check_url(text: &str) -> Result<String, String> {
    let uri: http::Uri = text.parse().map_err(|_| format!("`{text}` is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!("`{text}` needs http:// or https:// and a host"));
    }
    Ok(text.to_owned())
}

fn header_name(text: &str) -> Option<String> {
    http::HeaderName::from_bytes(text.as_bytes())
        .ok()
        .map(|name| name.as_str().to_owned())
}

pub struct AuthInput<'a> {
    pub jwt: Option<BTreeMap<String, Spanned<JwtFile>>>,
    pub forward_auth: Option<BTreeMap<String, Spanned<ForwardAuthFile>>>,
    pub config: Option<&'a Path>,
    /// The `secret_env` variables, read through the configuration's environment lookup.
    pub secrets: &'a Secrets,
    pub origin: OriginOf<'a>,
}

/// Secrets read from the environment, by variable; `Debug` shows the names only.
#[derive(Default)]
pub struct Secrets(BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The values of the variables the verifiers name in `secret_env`.
pub fn secret_variables(
    verifiers: &Option<BTreeMap<String, Spanned<JwtFile>>>,
    env: super::EnvLookup<'_>,
) -> Secrets {
    Secrets(
        verifiers
            .iter()
            .flatten()
            .filter_map(|(_, file)| file.value.secret_env.as_ref())
            .filter_map(|name| Some((name.value.clone(), env(&name.value)?)))
            .collect(),
    )
}

/// The named verifiers and auth services, and each route's references checked against them:
/// a route naming a missing one is an error at the route.
pub fn validate<'a>(
    mut input: AuthInput<'_>,
    routes: impl Iterator<Item = (Option<&'a RouteAuthSettings>, Option<&'a NamedRef>)>,
) -> Result<AuthSettings, ConfigError> {
    let mut jwt = BTreeMap::new();
    for (name, spanned) in input.jwt.take().into_iter().flatten() {
        let settings = verifier(&input, &name, &spanned)?;
        jwt.insert(name, settings);
    }
    let mut forward_auth = BTreeMap::new();
    for (name, spanned) in input.forward_auth.take().into_iter().flatten() {
        let settings = forward_auth_settings(&input, &name, &spanned)?;
        forward_auth.insert(name, settings);
    }
    for (auth, service) in routes {
        if let Some(auth) = auth {
            if let Some(name) = &auth.jwt {
                if !jwt.contains_key(name) {
                    return Err(ConfigError::invalid(
                        auth.origin.clone().unwrap_or(Origin::Default),
                        "routes.auth.jwt",
                        format!(
                            "no verifier `{name}` under `jwt:` (defined: {})",
                            super::defined_list(jwt.keys())
                        ),
                    ));
                }
            }
        }
        if let Some(NamedRef { name, origin }) = service {
            if !forward_auth.contains_key(name) {
                return Err(ConfigError::invalid(
                    origin.clone().unwrap_or(Origin::Default),
                    "routes.forward_auth",
                    format!(
                        "no service `{name}` under `forward_auth:` (defined: {})",
                        super::defined_list(forward_auth.keys())
                    ),
                ));
            }
        }
    }
    Ok(AuthSettings { jwt, forward_auth })
}

fn verifier(
    input: &AuthInput<'_>,
    name: &str,
    spanned: &Spanned<JwtFile>,
) -> Result<JwtSettings, ConfigError> {
    let origin = at(input.origin, spanned);
    let file = &spanned.value;
    let field = |f: &str| format!("jwt.{name}.{f}");
    let mut algorithms = Vec::new();
    for text in file.algorithms.iter().flatten() {
        let algorithm = match text.value.as_str() {
            t if t.eq_ignore_ascii_case("none") => {
                return Err(ConfigError::invalid(
                    at(input.origin, text),
                    field("algorithms"),
                    "`none` (an unsigned token) is never accepted",
                ))
            }
            t => JwtAlgorithm::parse(t).ok_or_else(|| {
                ConfigError::invalid(
                    at(input.origin, text),
                    field("algorithms"),
                    format!("`{t}` is not one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384, EdDSA"),
                )
            })?,
        };
        if !algorithms.contains(&algorithm) {
            algorithms.push(algorithm);
        }
    }
    if algorithms.is_empty() {
        return Err(ConfigError::invalid(
            origin,
            field("algorithms"),
            "list the accepted algorithms (the token's header is never trusted to choose)",
        ));
    }
    let sources = [
        file.secret_env.is_some(),
        file.secret_file.is_some(),
        file.public_key_file.is_some(),
        file.jwks_url.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err(ConfigError::invalid(
            origin,
            name_field(name),
            "give exactly one key: secret_env, secret_file, public_key_file or jwks_url",
        ));
    }
    let hmac = algorithms.iter().any(|a| a.is_hmac());
    let public = algorithms.iter().any(|a| !a.is_hmac());
    let key = if let Some(var) = &file.secret_env {
        let bytes = input
            .secrets
            .0
            .get(&var.value)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| {
                ConfigError::invalid(
                    at(input.origin, var),
                    field("secret_env"),
                    format!("environment variable `{}` is not set", var.value),
                )
            })?;
        JwtKey::Secret {
            from: format!("env {}", var.value),
            bytes: bytes.into_bytes(),
        }
    } else if let Some(path) = &file.secret_file {
        let full = file_path(input.config, &path.value);
        let mut bytes = read_key_file(&full)
            .map_err(|e| ConfigError::invalid(at(input.origin, path), field("secret_file"), e))?;
        // A trailing newline is an editor's, not the secret's.
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(ConfigError::invalid(
                at(input.origin, path),
                field("secret_file"),
                "the file is empty",
            ));
        }
        JwtKey::Secret {
            from: format!("file {}", full.display()),
            bytes,
        }
    } else if let Some(path) = &file.public_key_file {
        let full = file_path(input.config, &path.value);
        let key = read_key_file(&full)
            .and_then(|pem| parse_public_key_pem(&pem))
            .map_err(|e| {
                ConfigError::invalid(at(input.origin, path), field("public_key_file"), e)
            })?;
        if let Some(wrong) = algorithms.iter().find(|a| a.key_kind() != Some(key.kind)) {
            return Err(ConfigError::invalid(
                at(input.origin, path),
                field("algorithms"),
                format!(
                    "{wrong:?} cannot be verified with this {:?} key (an HMAC algorithm beside a public key is the algorithm-confusion attack)",
                    key.kind
                ),
            ));
        }
        JwtKey::PublicKey { file: full, key }
    } else if let Some(url) = &file.jwks_url {
        let url = check_url(&url.value)
            .map_err(|e| ConfigError::invalid(at(input.origin, url), field("jwks_url"), e))?;
        JwtKey::Jwks { url }
    } else {
        // Not reached: exactly one source was checked above.
        return Err(ConfigError::invalid(origin, name_field(name), "no key"));
    };
    match &key {
        JwtKey::Secret { .. } if public => {
            return Err(ConfigError::invalid(
                origin,
                field("algorithms"),
                "a secret verifies only HS256/HS384/HS512",
            ))
        }
        JwtKey::Jwks { .. } if hmac => {
            return Err(ConfigError::invalid(
                origin,
                field("algorithms"),
                "a JWKS holds public keys: HS* algorithms need secret_env or secret_file",
            ))
        }
        _ => {}
    }
    let audience = match &file.audience {
        None => Vec::new(),
        Some(OneOrMany::One(one)) => vec![one.clone()],
        Some(OneOrMany::Many(many)) => many.clone(),
    };
    let leeway = file.leeway.map_or(Duration::from_secs(60), |d| d.0);
    if leeway > Duration::from_secs(3600) {
        return Err(ConfigError::invalid(origin, field("leeway"), "at most 1h"));
    }
    let jwks_ttl = file.jwks_ttl.map_or(Duration::from_secs(300), |d| d.0);
    if jwks_ttl < Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            origin,
            field("jwks_ttl"),
            "at least 1s",
        ));
    }
    Ok(JwtSettings {
        algorithms,
        key,
        issuer: file.issuer.clone(),
        audience,
        leeway,
        require_exp: file.require_exp.unwrap_or(true),
        jwks_ttl,
    })
}

fn name_field(name: &str) -> String {
    format!("jwt.{name}")
}

fn forward_auth_settings(
    input: &AuthInput<'_>,
    name: &str,
    spanned: &Spanned<ForwardAuthFile>,
) -> Result<ForwardAuthSettings, ConfigError> {
    let origin = at(input.origin, spanned);
    let file = &spanned.value;
    let field = |f: &str| format!("forward_auth.{name}.{f}");
    let url = match &file.url {
        Some(url) => check_url(&url.value)
            .map_err(|e| ConfigError::invalid(at(input.origin, url), field("url"), e))?,
        None => return Err(ConfigError::invalid(origin, field("url"), "required")),
    };
    let headers = |list: &Option<Vec<Spanned<String>>>, f: &str, default: &[&str]| {
        let Some(list) = list else {
            return Ok(default.iter().map(|s| (*s).to_owned()).collect());
        };
        list.iter()
            .map(|h| {
                header_name(&h.value).ok_or_else(|| {
                    ConfigError::invalid(
                        at(input.origin, h),
                        field(f),
                        format!("`{}` is not a header name", h.value),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let timeout = file.timeout.map_or(Duration::from_secs(5), |d| d.0);
    if timeout.is_zero() || timeout > Duration::from_secs(60) {
        return Err(ConfigError::invalid(
            origin,
            field("timeout"),
            "between 1ms and 60s",
        ));
    }
    let cache = file.cache.map_or(Duration::ZERO, |d| d.0);
    if cache > Duration::from_secs(300) {
        return Err(ConfigError::invalid(origin, field("cache"), "at most 5m"));
    }
    Ok(ForwardAuthSettings {
        url,
        timeout,
        request_headers: headers(
            &file.request_headers,
            "request_headers",
            &["authorization", "cookie"],
        )?,
        response_headers: headers(&file.response_headers, "response_headers", &[])?,
        cache,
    })
}

/// The `{name}` parameters of a route path template (`/ws/tenant/{id}`), in order; a
/// malformed template is refused.
pub fn path_parameters(path: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for segment in path.split('/') {
        if !segment.contains(['{', '}']) {
            continue;
        }
        let name = segment
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .filter(|n| {
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
            .ok_or_else(|| {
                format!("`{segment}` in `{path}`: a parameter is a whole segment `{{name}}` (letters, digits, _)")
            })?;
        if names.iter().any(|n| n == name) {
            return Err(format!("parameter `{{{name}}}` appears twice in `{path}`"));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// A route's `auth:`, checked on its own (the verifier's name is checked in [`validate`]).
pub fn route_auth(
    file: Option<Spanned<AuthFile>>,
    path: &str,
    origin_of: OriginOf<'_>,
) -> Result<Option<RouteAuthSettings>, ConfigError> {
    let Some(spanned) = file else {
        return Ok(None);
    };
    let origin = at(origin_of, &spanned);
    let file = spanned.value;
    let Some(jwt) = &file.jwt else {
        return Err(ConfigError::invalid(
            origin,
            "routes.auth.jwt",
            "name the verifier (a key under `jwt:`)",
        ));
    };
    let mut sources = Vec::new();
    for source in file.sources.iter().flatten() {
        let text = source.value.trim();
        let parsed = match text.split_once(':') {
            None if text == "header" || text.eq_ignore_ascii_case("authorization") => {
                Some(TokenSource::Header)
            }
            None if text == "websocket_protocol" => Some(TokenSource::WebsocketProtocol),
            None if text == "query" => Some(TokenSource::Query("token".into())),
            Some(("cookie", name)) if valid_token_name(name) => {
                Some(TokenSource::Cookie(name.to_owned()))
            }
            Some(("query", name)) if valid_token_name(name) => {
                Some(TokenSource::Query(name.to_owned()))
            }
            _ => None,
        };
        let parsed = parsed.ok_or_else(|| {
            ConfigError::invalid(
                at(origin_of, source),
                "routes.auth.sources",
                format!("`{text}` is not a source: header, cookie:NAME, query (or query:NAME), websocket_protocol"),
            )
        })?;
        if !sources.contains(&parsed) {
            sources.push(parsed);
        }
    }
    if sources.is_empty() {
        sources.push(TokenSource::Header);
    }
    let parameters = path_parameters(path)
        .map_err(|e| ConfigError::invalid(origin.clone(), "routes.path", e))?;
    let mut claims = BTreeMap::new();
    for (claim, value) in file.claims.unwrap_or_default() {
        let rule = match value
            .as_str()
            .and_then(|s| s.strip_prefix('{')?.strip_suffix('}'))
        {
            Some(name) => {
                if !parameters.iter().any(|p| p == name) {
                    return Err(ConfigError::invalid(
                        origin,
                        format!("routes.auth.claims.{claim}"),
                        format!("`{{{name}}}` is not a parameter of the route's path `{path}`"),
                    ));
                }
                ClaimValue::PathParameter(name.to_owned())
            }
            None if value.is_object() || value.is_null() => {
                return Err(ConfigError::invalid(
                    origin,
                    format!("routes.auth.claims.{claim}"),
                    "a string, number, boolean or `{parameter}`",
                ))
            }
            None => ClaimValue::Literal(value),
        };
        claims.insert(claim, rule);
    }
    let mut pass_claims = BTreeMap::new();
    for (claim, header) in file.pass_claims.unwrap_or_default() {
        let name = header_name(&header.value)
            .filter(|n| !is_hop_or_framing(n))
            .ok_or_else(|| {
                ConfigError::invalid(
                    at(origin_of, &header),
                    format!("routes.auth.pass_claims.{claim}"),
                    format!(
                        "`{}` is not a header a claim may be passed in",
                        header.value
                    ),
                )
            })?;
        pass_claims.insert(claim, name);
    }
    let websocket_auth_failure = match file
        .websocket_auth_failure
        .as_ref()
        .map(|s| s.value.as_str())
    {
        None | Some("status") => WebsocketAuthFailure::Status,
        Some("close") => WebsocketAuthFailure::Close,
        Some(other) => {
            return Err(ConfigError::invalid(
                file.websocket_auth_failure
                    .as_ref()
                    .map_or(origin, |s| at(origin_of, s)),
                "routes.auth.websocket_auth_failure",
                format!("`{other}` is not status or close"),
            ))
        }
    };
    let realm = file.realm.unwrap_or_else(|| "tlsgate".into());
    if realm.contains(['"', '\\']) || realm.chars().any(char::is_control) {
        return Err(ConfigError::invalid(
            origin,
            "routes.auth.realm",
            "no quotes, backslashes or control characters",
        ));
    }
    Ok(Some(RouteAuthSettings {
        jwt: Some(jwt.value.clone()),
        sources,
        claims,
        pass_claims,
        strip_token: file.strip_token.unwrap_or(false),
        realm,
        websocket_auth_failure,
        origin: Some(origin),
    }))
}

fn valid_token_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Headers that describe the message rather than the client: a claim never goes in one.
fn is_hop_or_framing(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "connection"
            | "content-length"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "keep-alive"
            | "proxy-connection"
            | "authorization"
            | "cookie"
    ) || name.starts_with("sec-websocket")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(dir: &Path, yaml: &str) -> Result<super::super::Settings, ConfigError> {
        let path = dir.join("tlsgate.yaml");
        super::super::load_str(
            &format!("upstreams:\n  app:\n    servers: [http://127.0.0.1:9]\n{yaml}"),
            Some(&path),
            &super::super::Overrides::default(),
            &|name| (name == "JWT_SECRET").then(|| "from-the-environment".to_owned()),
        )
    }

    fn refused(dir: &Path, yaml: &str) -> String {
        load(dir, yaml).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn verifiers_are_checked_where_they_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("s"), "secret\n").unwrap();
        let error = refused(
            d,
            "jwt:\n  a:\n    algorithms: [none]\n    secret_file: s\n",
        );
        assert!(
            error.contains("tlsgate.yaml:6") && error.contains("never accepted"),
            "{error}"
        );
        let error = refused(
            d,
            "jwt:\n  a:\n    algorithms: [HS256]\n    secret_env: NOT_SET\n",
        );
        assert!(error.contains("`NOT_SET` is not set"), "{error}");
        let settings = load(
            d,
            "jwt:\n  a:\n    algorithms: [HS256]\n    secret_env: JWT_SECRET\n",
        )
        .unwrap();
        assert!(
            matches!(&settings.auth.jwt["a"].key, JwtKey::Secret { bytes, .. } if bytes == b"from-the-environment")
        );
        let error = refused(d, "jwt:\n  a:\n    secret_file: s\n");
        assert!(error.contains("list the accepted algorithms"), "{error}");
        let error = refused(
            d,
            "jwt:\n  a:\n    algorithms: [RS256]\n    secret_file: s\n",
        );
        assert!(error.contains("only HS256"), "{error}");
        let error = refused(
            d,
            "jwt:\n  a:\n    algorithms: [HS256]\n    secret_file: s\n    jwks_url: http://x/\n",
        );
        assert!(error.contains("exactly one key"), "{error}");
        let error = refused(
            d,
            "jwt:\n  a:\n    algorithms: [HS256]\n    secret_file: missing\n",
        );
        assert!(error.contains("cannot read"), "{error}");
        let error = refused(
            d,
            "jwt:\n  a:\n    algorithms: [HS256]\n    jwks_url: ftp://x/\n",
        );
        assert!(error.contains("http://"), "{error}");
        let error = refused(
            d,
            "routes:\n  - path: /api\n    upstream: app\n    auth: {jwt: nope}\n",
        );
        assert!(
            error.contains("tlsgate.yaml:7") && error.contains("no verifier `nope`"),
            "{error}"
        );
        let error = refused(
            d,
            "routes:\n  - path: /api\n    upstream: app\n    forward_auth: nope\n",
        );
        assert!(
            error.contains("tlsgate.yaml:7") && error.contains("no service `nope`"),
            "{error}"
        );
        let error = refused(
            d,
            "jwt:\n  a:\n    algorithms: [HS256]\n    secret_file: s\nroutes:\n  - path: /t/{id}\n    upstream: app\n    auth: {jwt: a, claims: {tenants: '{tenant}'}}\n",
        );
        assert!(error.contains("not a parameter"), "{error}");
        let error = refused(
            d,
            "jwt:\n  a:\n    algorithms: [HS256]\n    secret_file: s\nroutes:\n  - path: /t\n    upstream: app\n    auth: {jwt: a, sources: [body]}\n",
        );
        assert!(error.contains("not a source"), "{error}");
    }

    #[test]
    fn a_public_key_fixes_its_algorithms_and_secrets_are_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("s"), "top-secret-value\n").unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(d.join("ec.pub"), key.public_key_pem()).unwrap();
        let error = refused(
            d,
            "jwt:\n  a:\n    algorithms: [HS256]\n    public_key_file: ec.pub\n",
        );
        assert!(error.contains("algorithm-confusion"), "{error}");
        let error = refused(
            d,
            "jwt:\n  a:\n    algorithms: [RS256]\n    public_key_file: ec.pub\n",
        );
        assert!(error.contains("EcP256"), "{error}");
        let settings = load(
            d,
            "jwt:\n  ec:\n    algorithms: [ES256]\n    public_key_file: ec.pub\n  hs:\n    algorithms: [HS256]\n    secret_file: s\nroutes:\n  - path: /t/{id}\n    upstream: app\n    auth: {jwt: hs, claims: {tenants: '{id}', role: admin}, pass_claims: {sub: X-Auth-Sub}}\n",
        )
        .unwrap();
        let JwtKey::Secret { bytes, .. } = &settings.auth.jwt["hs"].key else {
            panic!("not a secret");
        };
        assert_eq!(
            bytes, b"top-secret-value",
            "the file's newline is not the secret's"
        );
        let printed = serde_json::to_string(&settings).unwrap();
        assert!(!printed.contains("top-secret-value"), "{printed}");
        assert!(
            printed.contains(r#""claims":{"role":"admin","tenants":"{id}"}"#),
            "{printed}"
        );
        assert!(
            printed.contains(r#""pass_claims":{"sub":"x-auth-sub"}"#),
            "{printed}"
        );
        assert_eq!(
            settings.warnings(),
            vec!["jwt verifier `ec` is not used by any route".to_owned()]
        );
    }

    #[test]
    fn the_printed_settings_load_again_to_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("s"), "top-secret-value\n").unwrap();
        let first = load(
            d,
            "jwt:\n  hs:\n    algorithms: [HS256]\n    secret_file: s\n  env:\n    algorithms: [HS384]\n    secret_env: JWT_SECRET\n  remote:\n    algorithms: [RS256]\n    jwks_url: https://issuer.test/jwks\nroutes:\n  - path: /a\n    upstream: app\n    auth: {jwt: hs, sources: [cookie:session, query, header, websocket_protocol]}\n  - path: /b\n    upstream: app\n    auth: {jwt: env}\n  - path: /c\n    upstream: app\n    auth: {jwt: remote}\n",
        )
        .unwrap();
        let printed = super::super::to_yaml(&first);
        assert!(!printed.contains("top-secret-value"), "{printed}");
        assert!(!printed.contains("from-the-environment"), "{printed}");
        let again = super::super::load_str(
            &printed,
            Some(&d.join("printed.yaml")),
            &super::super::Overrides::default(),
            &|name| (name == "JWT_SECRET").then(|| "from-the-environment".to_owned()),
        )
        .unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(again.auth, first.auth);
        assert_eq!(super::super::to_yaml(&again), printed, "a fixed point");
    }

    #[test]
    fn base64_both_alphabets() {
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("-_8").unwrap(), [0xfb, 0xff]);
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("a b").is_none());
        assert!(
            base64_decode("aGVsbG9=").is_none(),
            "non-zero bits past the end"
        );
    }

    #[test]
    fn path_templates() {
        assert_eq!(
            path_parameters("/ws/tenant/{id}").unwrap(),
            vec!["id".to_owned()]
        );
        assert!(path_parameters("/ws/{a}/{b}").is_ok());
        assert!(path_parameters("/ws/x{id}").is_err());
        assert!(path_parameters("/ws/{id}/{id}").is_err());
        assert!(path_parameters("/ws/{}").is_err());
        assert!(path_parameters("/api").unwrap().is_empty());
    }
}
