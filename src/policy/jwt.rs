//! JWT verification at the edge: named verifiers (a secret, a PEM public key, or a JWKS
//! fetched and refreshed in the background), and a route's use of one (where the token is
//! looked for, claim rules, claims passed upstream, the token stripped).
//!
//! The algorithm comes from the verifier's configuration: a token's `alg` header only picks
//! among the configured ones, so `none` and algorithm confusion (HS256 "signed" with an RSA
//! public key) never verify. JWKS keys are cached under the verifier's issuer and the `kid`,
//! and the JWKS URL is configuration only, never built from a token.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use aws_lc_rs::{hmac, signature};
use http::{header, HeaderMap, HeaderValue, Uri};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::jwt::{
    base64_decode, ClaimValue, JwtAlgorithm, JwtKey, JwtSettings, KeyKind, RouteAuthSettings,
    TokenSource,
};
use crate::http::percent_decode;

use super::client::{self, HttpClient};

pub type Claims = Arc<Map<String, Value>>;

/// The longest token looked at: real ones are well under 8 KiB, and a header of that size
/// is already near the server's header limit.
const MAX_TOKEN: usize = 16 * 1024;
/// At most one JWKS fetch for an unknown `kid` (or with no keys yet) per this interval.
const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// How long a request waits for that fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The most keys kept from one JWKS.
const MAX_JWKS_KEYS: usize = 64;
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("the token's signing key is unknown")]
    UnknownKey,
    #[error("the signing keys are not available yet")]
    NoKeys,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token has no expiry")]
    MissingExpiry,
    #[error("the token's issuer is not accepted")]
    Issuer,
    #[error("the token's audience is not accepted")]
    Audience,
    /// Two tokens where one is read (two `Authorization` headers, `?token=` twice): the edge
    /// would verify one and a backend might read the other.
    #[error("the request carries more than one token")]
    Ambiguous,
}

impl TokenError {
    /// The metric's result label.
    pub fn result(self) -> &'static str {
        match self {
            TokenError::Expired => "expired",
            _ => "invalid",
        }
    }
}

/// Why a route refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No token in any configured source.
    Missing,
    Invalid(TokenError),
    /// A valid token lacking a required claim (the claim's name).
    Forbidden(String),
}

impl AuthFailure {
    pub fn result(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid(error) => error.result(),
            AuthFailure::Forbidden(_) => "forbidden",
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3).
    pub fn challenge(&self, realm: &str) -> String {
        match self {
            AuthFailure::Missing => format!("Bearer realm=\"{realm}\""),
            AuthFailure::Invalid(error) => format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{error}\""
            ),
            AuthFailure::Forbidden(_) => format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"a required claim is missing\""
            ),
        }
    }

    /// The WebSocket close code and reason for `websocket_auth_failure: close`.
    pub fn close(&self) -> (u16, &'static str) {
        match self {
            AuthFailure::Missing => (4001, "Missing token"),
            AuthFailure::Invalid(TokenError::Expired) => (4003, "Expired token"),
            AuthFailure::Invalid(_) => (4003, "Invalid token"),
            AuthFailure::Forbidden(_) => (4003, "Forbidden"),
        }
    }
}

/// A public key as the verifier uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum VerifyKey {
    /// PKCS#1 `RSAPublicKey` DER (from a PEM file).
    RsaDer(Vec<u8>),
    /// Modulus and exponent (from a JWK).
    RsaParts {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (`04 || x || y`) on P-256 or P-384.
    Ec(KeyKind, Vec<u8>),
    Ed25519(Vec<u8>),
}

impl VerifyKey {
    fn kind(&self) -> KeyKind {
        match self {
            VerifyKey::RsaDer(_) | VerifyKey::RsaParts { .. } => KeyKind::Rsa,
            VerifyKey::Ec(kind, _) => *kind,
            VerifyKey::Ed25519(_) => KeyKind::Ed25519,
        }
    }

    fn verify(&self, algorithm: JwtAlgorithm, message: &[u8], sig: &[u8]) -> bool {
        if algorithm.key_kind() != Some(self.kind()) {
            return false;
        }
        let rsa: &signature::RsaParameters = match algorithm {
            JwtAlgorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            JwtAlgorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            JwtAlgorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            JwtAlgorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            _ => &signature::RSA_PKCS1_2048_8192_SHA256,
        };
        match self {
            VerifyKey::RsaDer(der) => signature::UnparsedPublicKey::new(rsa, der)
                .verify(message, sig)
                .is_ok(),
            VerifyKey::RsaParts { n, e } => signature::RsaPublicKeyComponents { n, e }
                .verify(rsa, message, sig)
                .is_ok(),
            VerifyKey::Ec(KeyKind::EcP256, point) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            VerifyKey::Ec(_, point) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            VerifyKey::Ed25519(raw) => signature::UnparsedPublicKey::new(&signature::ED25519, raw)
                .verify(message, sig)
                .is_ok(),
        }
    }
}

/// One key of a JWKS.
#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    /// The key's own `alg`, when it names one: then only that algorithm.
    alg: Option<JwtAlgorithm>,
    key: VerifyKey,
}

/// The keys of one JWKS, under the verifier's issuer and each key's `kid`.
#[derive(Debug, Default)]
struct KeySet {
    keys: HashMap<(Option<String>, Option<String>), Vec<Jwk>>,
    /// When the keys were fetched (none yet: `None`).
    fetched: Option<Instant>,
}

/// A JWKS source: its keys, swapped whole on each fetch.
#[derive(Debug)]
struct Jwks {
    url: String,
    issuer: Option<String>,
    keys: ArcSwap<KeySet>,
    /// Held during a fetch (one at a time); when an unknown key id last caused one.
    attempt: tokio::sync::Mutex<Option<Instant>>,
    client: HttpClient,
}

impl Jwks {
    async fn fetch(&self) -> Result<usize, String> {
        let body = client::get(&self.client, &self.url, FETCH_TIMEOUT, MAX_JWKS_BYTES).await?;
        let keys = parse_jwks(&body)?;
        let count = keys.len();
        let mut set = KeySet {
            keys: HashMap::new(),
            fetched: Some(Instant::now()),
        };
        for jwk in keys {
            set.keys
                .entry((self.issuer.clone(), jwk.kid.clone()))
                .or_default()
                .push(jwk);
        }
        self.keys.store(Arc::new(set));
        Ok(count)
    }

    /// A fetch unless one was tried in the last [`REFETCH_INTERVAL`]; callers queue behind a
    /// running one and then find its keys.
    async fn refetch(&self, name: &str) {
        let mut attempt = self.attempt.lock().await;
        if attempt.is_some_and(|at| at.elapsed() < REFETCH_INTERVAL) {
            return;
        }
        *attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(count) => tracing::info!(
                verifier = name,
                keys = count,
                "JWKS fetched (unknown key id)"
            ),
            Err(error) => {
                tracing::warn!(verifier = name, url = %self.url, %error, "JWKS fetch failed")
            }
        }
    }

    /// Keys fetched at start, then every `ttl` (sooner again after a failure), until `stop`.
    async fn refresh(self: Arc<Self>, name: String, ttl: Duration, stop: CancellationToken) {
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
            // Under the lock (one fetch at a time), but not counted against the refetches
            // for unknown key ids: a rotation right after a scheduled fetch is still seen.
            let result = {
                let _one_at_a_time = self.attempt.lock().await;
                self.fetch().await
            };
            wait = match result {
                Ok(count) => {
                    tracing::debug!(verifier = %name, keys = count, "JWKS fetched");
                    ttl
                }
                Err(error) => {
                    let first = self.keys.load().fetched.is_none();
                    if first {
                        tracing::error!(verifier = %name, url = %self.url, %error, "JWKS fetch failed: tokens for this verifier are refused (401) until its keys arrive");
                    } else {
                        tracing::warn!(verifier = %name, url = %self.url, %error, "JWKS refresh failed: keeping the keys fetched before");
                    }
                    ttl.min(Duration::from_secs(30))
                }
            };
        }
    }
}

fn b64_field(object: &Map<String, Value>, name: &str) -> Option<Vec<u8>> {
    object.get(name)?.as_str().and_then(base64_decode)
}

/// The verifying keys of a JWKS document (`{"keys": [...]}`); keys for encryption or of
/// unknown types are skipped.
fn parse_jwks(body: &[u8]) -> Result<Vec<Jwk>, String> {
    let document: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let keys = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no `keys` array")?;
    let mut out = Vec::new();
    for key in keys.iter().filter_map(Value::as_object) {
        if key
            .get("use")
            .and_then(Value::as_str)
            .is_some_and(|u| u != "sig")
        {
            continue;
        }
        let kid = key.get("kid").and_then(Value::as_str).map(str::to_owned);
        let alg = match key.get("alg").and_then(Value::as_str) {
            Some(text) => match JwtAlgorithm::parse(text) {
                Some(alg) => Some(alg),
                None => continue,
            },
            None => None,
        };
        let crv = key.get("crv").and_then(Value::as_str);
        let parsed = match key.get("kty").and_then(Value::as_str) {
            Some("RSA") => match (b64_field(key, "n"), b64_field(key, "e")) {
                (Some(n), Some(e)) => Some(VerifyKey::RsaParts { n, e }),
                _ => None,
            },
            Some("EC") => {
                let (kind, size) = match crv {
                    Some("P-256") => (KeyKind::EcP256, 32),
                    Some("P-384") => (KeyKind::EcP384, 48),
                    _ => continue,
                };
                match (b64_field(key, "x"), b64_field(key, "y")) {
                    (Some(x), Some(y)) if x.len() == size && y.len() == size => {
                        let mut point = vec![4];
                        point.extend_from_slice(&x);
                        point.extend_from_slice(&y);
                        Some(VerifyKey::Ec(kind, point))
                    }
                    _ => None,
                }
            }
            Some("OKP") if crv == Some("Ed25519") => b64_field(key, "x")
                .filter(|x| x.len() == 32)
                .map(VerifyKey::Ed25519),
            _ => None,
        };
        if let Some(key) = parsed {
            if alg.is_some_and(|a| a.key_kind() != Some(key.kind())) {
                continue;
            }
            out.push(Jwk { kid, alg, key });
        }
        if out.len() >= MAX_JWKS_KEYS {
            break;
        }
    }
    Ok(out)
}

#[derive(Debug)]
enum Keys {
    /// The secret keyed once per configured HMAC algorithm.
    Secret(Vec<(JwtAlgorithm, hmac::Key)>),
    Static(VerifyKey),
    Jwks(Arc<Jwks>),
}

/// A named verifier.
#[derive(Debug)]
pub struct Verifier {
    pub name: String,
    pub settings: JwtSettings,
    keys: Keys,
    /// Stops the JWKS refresh when a reload drops the verifier.
    stop: CancellationToken,
}

impl Verifier {
    /// Builds the verifier; a JWKS one starts fetching in the background on `tasks`.
    pub fn start(
        name: &str,
        settings: &JwtSettings,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Self> {
        let stop = shutdown.child_token();
        let keys = match &settings.key {
            JwtKey::Secret { bytes, .. } => Keys::Secret(
                settings
                    .algorithms
                    .iter()
                    .filter_map(|a| {
                        let digest = match a {
                            JwtAlgorithm::HS256 => hmac::HMAC_SHA256,
                            JwtAlgorithm::HS384 => hmac::HMAC_SHA384,
                            JwtAlgorithm::HS512 => hmac::HMAC_SHA512,
                            _ => return None,
                        };
                        Some((*a, hmac::Key::new(digest, bytes)))
                    })
                    .collect(),
            ),
            JwtKey::PublicKey { key, .. } => Keys::Static(match key.kind {
                KeyKind::Rsa => VerifyKey::RsaDer(key.bits.clone()),
                KeyKind::Ed25519 => VerifyKey::Ed25519(key.bits.clone()),
                kind => VerifyKey::Ec(kind, key.bits.clone()),
            }),
            JwtKey::Jwks { url } => {
                let jwks = Arc::new(Jwks {
                    url: url.clone(),
                    issuer: settings.issuer.clone(),
                    keys: ArcSwap::default(),
                    attempt: tokio::sync::Mutex::new(None),
                    client: client::build(),
                });
                tasks.spawn(
                    jwks.clone()
                        .refresh(name.to_owned(), settings.jwks_ttl, stop.clone()),
                );
                Keys::Jwks(jwks)
            }
        };
        Arc::new(Self {
            name: name.to_owned(),
            settings: settings.clone(),
            keys,
            stop,
        })
    }

    /// A verifier that accepts no token (no algorithm), for a route whose verifier is missing.
    pub fn refusing(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            settings: JwtSettings {
                algorithms: Vec::new(),
                key: JwtKey::Secret {
                    from: "none".into(),
                    bytes: Vec::new(),
                },
                issuer: None,
                audience: Vec::new(),
                leeway: Duration::ZERO,
                require_exp: true,
                jwks_ttl: Duration::from_secs(300),
            },
            keys: Keys::Secret(Vec::new()),
            stop: CancellationToken::new(),
        })
    }

    /// Stops background work (a reload dropped this verifier).
    pub fn retire(&self) {
        self.stop.cancel();
    }

    /// Verifies `token` and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, SystemTime::now()).await
    }

    async fn verify_at(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(head), Some(body), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header = decode_object(head)?;
        let claims = decode_object(body)?;
        let signature = base64_decode(sig).ok_or(TokenError::Malformed)?;
        // The header only picks among the configured algorithms.
        let algorithm = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(JwtAlgorithm::parse)
            .filter(|a| self.settings.algorithms.contains(a))
            .ok_or(TokenError::Algorithm)?;
        // Extensions a verifier must understand (RFC 7515 §4.1.11): none are.
        if header.contains_key("crit") {
            return Err(TokenError::Malformed);
        }
        let message = &token.as_bytes()[..head.len() + 1 + body.len()];
        let verified = match &self.keys {
            Keys::Secret(keys) => match keys.iter().find(|(a, _)| *a == algorithm) {
                Some((_, key)) => hmac::verify(key, message, &signature).is_ok(),
                None => return Err(TokenError::Algorithm),
            },
            Keys::Static(key) => key.verify(algorithm, message, &signature),
            Keys::Jwks(jwks) => {
                let kid = header.get("kid").and_then(Value::as_str);
                // The issuer is unverified here: it only selects a cache entry, which exists
                // solely under the configured issuer; it is checked again below.
                let issuer = match &self.settings.issuer {
                    Some(expected) => {
                        let claimed = claims.get("iss").and_then(Value::as_str);
                        if claimed != Some(expected.as_str()) {
                            return Err(TokenError::Issuer);
                        }
                        Some(expected.clone())
                    }
                    None => None,
                };
                let try_keys = |set: &KeySet| -> Option<bool> {
                    let candidates: Vec<&Jwk> = match kid {
                        Some(kid) => set
                            .keys
                            .get(&(issuer.clone(), Some(kid.to_owned())))?
                            .iter()
                            .collect(),
                        None => set
                            .keys
                            .iter()
                            .filter(|((iss, _), _)| *iss == issuer)
                            .flat_map(|(_, keys)| keys.iter())
                            .collect(),
                    };
                    let usable: Vec<&Jwk> = candidates
                        .into_iter()
                        .filter(|k| k.alg.is_none_or(|a| a == algorithm))
                        .filter(|k| algorithm.key_kind() == Some(k.key.kind()))
                        .collect();
                    if usable.is_empty() {
                        return None;
                    }
                    Some(
                        usable
                            .iter()
                            .any(|k| k.key.verify(algorithm, message, &signature)),
                    )
                };
                let set = jwks.keys.load_full();
                match try_keys(&set) {
                    Some(ok) => ok,
                    None => {
                        // An unknown key id (a rotation) or no keys yet: one rate-limited fetch.
                        jwks.refetch(&self.name).await;
                        let set = jwks.keys.load_full();
                        match try_keys(&set) {
                            Some(ok) => ok,
                            None if set.fetched.is_none() => return Err(TokenError::NoKeys),
                            None => return Err(TokenError::UnknownKey),
                        }
                    }
                }
            }
        };
        if !verified {
            return Err(TokenError::Signature);
        }
        self.check_claims(&claims, now)?;
        Ok(Arc::new(claims))
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: SystemTime) -> Result<(), TokenError> {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as f64;
        let leeway = self.settings.leeway.as_secs_f64();
        let number = |name: &str| -> Result<Option<f64>, TokenError> {
            match claims.get(name) {
                None => Ok(None),
                Some(value) => value.as_f64().map(Some).ok_or(TokenError::Malformed),
            }
        };
        match number("exp")? {
            Some(exp) if now > exp + leeway => return Err(TokenError::Expired),
            Some(_) => {}
            None if self.settings.require_exp => return Err(TokenError::MissingExpiry),
            None => {}
        }
        if number("nbf")?.is_some_and(|nbf| now + leeway < nbf) {
            return Err(TokenError::NotYetValid);
        }
        if let Some(issuer) = &self.settings.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
                return Err(TokenError::Issuer);
            }
        }
        if !self.settings.audience.is_empty() {
            let accepted = |aud: &str| self.settings.audience.iter().any(|a| a == aud);
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => accepted(aud),
                Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(accepted),
                _ => false,
            };
            if !ok {
                return Err(TokenError::Audience);
            }
        }
        Ok(())
    }
}

fn decode_object(part: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = base64_decode(part).ok_or(TokenError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TokenError::Malformed),
    }
}

/// Every verifier of one configuration, by name.
#[derive(Debug, Default)]
pub struct Verifiers(BTreeMap<String, Arc<Verifier>>);

impl Verifiers {
    /// Builds the verifiers of `settings`; one whose settings did not change since `previous`
    /// is handed over (its fetched keys and refresh task with it).
    pub fn start(
        settings: &BTreeMap<String, JwtSettings>,
        previous: Option<&Verifiers>,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        Self(
            settings
                .iter()
                .map(|(name, settings)| {
                    let kept = previous
                        .and_then(|p| p.0.get(name))
                        .filter(|v| v.settings == *settings)
                        .cloned();
                    let verifier =
                        kept.unwrap_or_else(|| Verifier::start(name, settings, shutdown, tasks));
                    (name.clone(), verifier)
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Verifier>> {
        self.0.get(name)
    }

    /// Stops the verifiers `next` does not keep.
    pub fn retire(&self, next: &Verifiers) {
        for (name, verifier) in &self.0 {
            if !next.0.get(name).is_some_and(|n| Arc::ptr_eq(n, verifier)) {
                verifier.retire();
            }
        }
    }
}

/// A route's `auth:` with its verifier.
#[derive(Debug)]
pub struct RouteAuth {
    pub settings: RouteAuthSettings,
    pub verifier: Arc<Verifier>,
}

impl PartialEq for RouteAuth {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings && Arc::ptr_eq(&self.verifier, &other.verifier)
    }
}

/// Where a token was found, so it can be stripped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Header,
    Cookie(String),
    Query(String),
    WebsocketProtocol,
}

impl RouteAuth {
    /// Authenticates a request: the token from the first source that has one, verified, the
    /// claim rules checked against `parameters` (the route's path parameters). On success the
    /// claims are passed upstream (inbound copies of those headers always removed first) and
    /// the token is stripped when configured.
    pub async fn authenticate(
        &self,
        headers: &mut HeaderMap,
        uri: &mut Uri,
        parameters: &[(String, String)],
    ) -> Result<Claims, AuthFailure> {
        // A client never chooses what the upstream reads as a verified claim.
        for name in self.settings.pass_claims.values() {
            headers.remove(name.as_str());
        }
        let (found, token) = self
            .find(headers, uri)
            .map_err(AuthFailure::Invalid)?
            .ok_or(AuthFailure::Missing)?;
        let claims = self
            .verifier
            .verify(&token)
            .await
            .map_err(AuthFailure::Invalid)?;
        for (claim, rule) in &self.settings.claims {
            let wanted = match rule {
                ClaimValue::Literal(value) => value.clone(),
                ClaimValue::PathParameter(name) => match parameters.iter().find(|(n, _)| n == name)
                {
                    Some((_, value)) => Value::String(value.clone()),
                    None => return Err(AuthFailure::Forbidden(claim.clone())),
                },
            };
            let ok = match claims.get(claim) {
                Some(Value::Array(list)) => list.contains(&wanted),
                Some(value) => *value == wanted,
                None => false,
            };
            if !ok {
                return Err(AuthFailure::Forbidden(claim.clone()));
            }
        }
        for (claim, name) in &self.settings.pass_claims {
            let Some(value) = claims.get(claim).and_then(header_value) else {
                continue;
            };
            if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                headers.insert(name, value);
            }
        }
        if self.settings.strip_token {
            strip(headers, uri, &found);
        }
        Ok(claims)
    }

    /// The token of the first source that has one; a source holding two is refused.
    fn find(&self, headers: &HeaderMap, uri: &Uri) -> Result<Option<(Found, String)>, TokenError> {
        let found = self
            .settings
            .sources
            .iter()
            .find_map(|source| match source {
                TokenSource::Header => bearer(headers).map(|t| (Found::Header, t)),
                TokenSource::Cookie(name) => {
                    cookie(headers, name).map(|t| (Found::Cookie(name.clone()), t))
                }
                TokenSource::Query(name) => {
                    query_param(uri, name).map(|t| (Found::Query(name.clone()), t))
                }
                TokenSource::WebsocketProtocol => {
                    protocol_token(headers).map(|t| (Found::WebsocketProtocol, t))
                }
            });
        let copies = match &found {
            None | Some((Found::WebsocketProtocol, _)) => 1,
            Some((Found::Header, _)) => headers.get_all(header::AUTHORIZATION).iter().count(),
            Some((Found::Cookie(name), _)) => crate::http::cookie::pairs(headers)
                .filter(|(n, _)| n == name)
                .count(),
            Some((Found::Query(name), _)) => query_pairs(uri).filter(|(n, _)| n == name).count(),
        };
        if copies > 1 {
            return Err(TokenError::Ambiguous);
        }
        Ok(found)
    }
}

/// A claim as a header value: strings as they are, arrays joined with `,`, others as JSON.
fn header_value(value: &Value) -> Option<HeaderValue> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Array(list) => list
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Null => return None,
        other => other.to_string(),
    };
    HeaderValue::from_str(&text).ok()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    crate::http::cookie::pairs(headers)
        .find(|(n, v)| *n == name && !v.is_empty())
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

/// The query's parameters, names decoded, values as written.
fn query_pairs(uri: &Uri) -> impl Iterator<Item = (String, &str)> {
    crate::http::query_pairs(uri.query().unwrap_or(""))
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    query_pairs(uri)
        .find(|(n, v)| n == name && !v.is_empty())
        .map(|(_, v)| percent_decode(v))
}

/// The `Sec-WebSocket-Protocol` bearer convention: the offered list holds `bearer` and, right
/// after it, the token (`new WebSocket(url, ["bearer", token])`).
fn protocol_token(headers: &HeaderMap) -> Option<String> {
    let offered = protocols(headers);
    let at = offered
        .iter()
        .position(|p| p.eq_ignore_ascii_case("bearer"))?;
    offered.get(at + 1).filter(|t| !t.is_empty()).cloned()
}

fn protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect()
}

/// Whether the client offered the `bearer` subprotocol (the answer to a browser must then
/// select it).
pub fn offered_bearer(headers: &HeaderMap) -> bool {
    protocols(headers)
        .iter()
        .any(|p| p.eq_ignore_ascii_case("bearer"))
}

/// Removes the token from where it was found.
fn strip(headers: &mut HeaderMap, uri: &mut Uri, found: &Found) {
    match found {
        Found::Header => {
            headers.remove(header::AUTHORIZATION);
        }
        Found::Cookie(name) => crate::http::cookie::strip(headers, name),
        Found::Query(name) => {
            if let Some(stripped) = without_query_param(uri, name) {
                *uri = stripped;
            }
        }
        Found::WebsocketProtocol => {
            let offered = protocols(headers);
            let at = offered
                .iter()
                .position(|p| p.eq_ignore_ascii_case("bearer"));
            let kept: Vec<&str> = offered
                .iter()
                .enumerate()
                .filter(|(i, _)| at.is_none_or(|b| *i != b + 1))
                .map(|(_, p)| p.as_str())
                .collect();
            headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
            if let Ok(value) = HeaderValue::from_str(&kept.join(", ")) {
                headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
            }
        }
    }
}

fn without_query_param(uri: &Uri, name: &str) -> Option<Uri> {
    let query = uri.query()?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| percent_decode(pair.split_once('=').map_or(*pair, |(n, _)| n)) != name)
        .collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Whether `path` matches a route template (`/ws/tenant/{id}`: `{name}` takes one whole
/// segment), the whole path when `exact`, else its leading segments; with the parameters.
pub fn match_template(template: &str, path: &str, exact: bool) -> Option<Vec<(String, String)>> {
    let mut parameters = Vec::new();
    walk_template(template, path, exact, |name, value| {
        parameters.push((name.to_owned(), percent_decode(value)));
    })
    .then_some(parameters)
}

/// As [`match_template`] without collecting the parameters (the route table's test, on every
/// request: no allocation).
pub fn template_matches(template: &str, path: &str, exact: bool) -> bool {
    walk_template(template, path, exact, |_, _| {})
}

fn walk_template(
    template: &str,
    path: &str,
    exact: bool,
    mut parameter: impl FnMut(&str, &str),
) -> bool {
    let mut want = template.split('/');
    let mut have = path.split('/');
    loop {
        match (want.next(), have.next()) {
            (None, None) => return true,
            // A prefix template covers what is below it (a trailing `/` leaves one empty).
            (None, Some(rest)) => return !exact || rest.is_empty() && have.next().is_none(),
            (Some(""), None) if !exact => return true,
            (Some(_), None) => return false,
            (Some(segment), Some(actual)) => {
                match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) if !actual.is_empty() => parameter(name, actual),
                    Some(_) => return false,
                    None if segment == actual => {}
                    None => return false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(algorithms: &[JwtAlgorithm], key: JwtKey) -> JwtSettings {
        JwtSettings {
            algorithms: algorithms.to_vec(),
            key,
            issuer: Some("https://issuer.test".into()),
            audience: vec!["api".into()],
            leeway: Duration::from_secs(60),
            require_exp: true,
            jwks_ttl: Duration::from_secs(300),
        }
    }

    fn b64(bytes: &[u8]) -> String {
        crate::certs::pem::base64(bytes)
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_")
    }

    fn hs256(secret: &[u8], header: &str, claims: &str) -> String {
        let signing = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, secret),
            signing.as_bytes(),
        );
        format!("{signing}.{}", b64(tag.as_ref()))
    }

    fn verifier() -> Arc<Verifier> {
        let settings = settings(
            &[JwtAlgorithm::HS256],
            JwtKey::Secret {
                from: "test".into(),
                bytes: b"secret".to_vec(),
            },
        );
        Verifier::start(
            "t",
            &settings,
            &CancellationToken::new(),
            &TaskTracker::new(),
        )
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    #[tokio::test]
    async fn hmac_tokens_and_their_claims() {
        let v = verifier();
        let good = hs256(
            b"secret",
            HEADER,
            r#"{"sub":"u1","exp":2000,"nbf":1000,"iss":"https://issuer.test","aud":["x","api"]}"#,
        );
        assert_eq!(v.verify_at(&good, at(1500)).await.unwrap()["sub"], "u1");
        assert_eq!(
            v.verify_at(&good, at(2059)).await.map(drop),
            Ok(()),
            "leeway"
        );
        assert_eq!(
            v.verify_at(&good, at(2061)).await.map(drop),
            Err(TokenError::Expired)
        );
        assert_eq!(
            v.verify_at(&good, at(900)).await.map(drop),
            Err(TokenError::NotYetValid)
        );
        let wrong_key = hs256(
            b"other",
            HEADER,
            r#"{"exp":2000,"iss":"https://issuer.test","aud":"api"}"#,
        );
        assert_eq!(
            v.verify_at(&wrong_key, at(1500)).await.map(drop),
            Err(TokenError::Signature)
        );
        let no_exp = hs256(
            b"secret",
            HEADER,
            r#"{"iss":"https://issuer.test","aud":"api"}"#,
        );
        assert_eq!(
            v.verify_at(&no_exp, at(1500)).await.map(drop),
            Err(TokenError::MissingExpiry)
        );
        let wrong_iss = hs256(
            b"secret",
            HEADER,
            r#"{"exp":2000,"iss":"https://evil.test","aud":"api"}"#,
        );
        assert_eq!(
            v.verify_at(&wrong_iss, at(1500)).await.map(drop),
            Err(TokenError::Issuer)
        );
        let wrong_aud = hs256(
            b"secret",
            HEADER,
            r#"{"exp":2000,"iss":"https://issuer.test","aud":"web"}"#,
        );
        assert_eq!(
            v.verify_at(&wrong_aud, at(1500)).await.map(drop),
            Err(TokenError::Audience)
        );
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(br#"{"exp":2000,"iss":"https://issuer.test","aud":"api"}"#)
        );
        assert_eq!(
            v.verify_at(&none, at(1500)).await.map(drop),
            Err(TokenError::Algorithm)
        );
        let hs512 = hs256(b"secret", r#"{"alg":"HS512"}"#, r#"{"exp":2000}"#);
        assert_eq!(
            v.verify_at(&hs512, at(1500)).await.map(drop),
            Err(TokenError::Algorithm)
        );
        assert_eq!(
            v.verify_at("a.b", at(1500)).await.map(drop),
            Err(TokenError::Malformed)
        );
    }

    #[tokio::test]
    async fn a_missing_verifier_refuses_every_token() {
        let good = hs256(b"secret", HEADER, r#"{"exp":2000}"#);
        let refusing = Verifier::refusing("gone");
        assert_eq!(
            refusing.verify_at(&good, at(1500)).await.map(drop),
            Err(TokenError::Algorithm)
        );
    }

    #[tokio::test]
    async fn a_reload_keeps_unchanged_verifiers_and_stops_the_others() {
        let (shutdown, tasks) = (CancellationToken::new(), TaskTracker::new());
        let jwks = |url: &str| {
            let mut s = settings(&[JwtAlgorithm::RS256], JwtKey::Jwks { url: url.into() });
            s.jwks_ttl = Duration::from_secs(3600);
            s
        };
        let mut first = BTreeMap::new();
        first.insert("a".to_owned(), jwks("http://127.0.0.1:9/a"));
        first.insert("b".to_owned(), jwks("http://127.0.0.1:9/b"));
        let old = Verifiers::start(&first, None, &shutdown, &tasks);
        let mut second = first.clone();
        second.insert("b".to_owned(), jwks("http://127.0.0.1:9/b2"));
        let new = Verifiers::start(&second, Some(&old), &shutdown, &tasks);
        old.retire(&new);
        assert!(
            Arc::ptr_eq(old.get("a").unwrap(), new.get("a").unwrap()),
            "kept with its keys"
        );
        assert!(!new.get("a").unwrap().stop.is_cancelled());
        assert!(
            old.get("b").unwrap().stop.is_cancelled(),
            "the replaced one stops refreshing"
        );
        assert!(!new.get("b").unwrap().stop.is_cancelled());
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
    }

    #[test]
    fn templates_match_whole_segments() {
        let params = |t, p, e| match_template(t, p, e);
        assert_eq!(
            params("/ws/tenant/{id}", "/ws/tenant/acme", true),
            Some(vec![("id".into(), "acme".into())])
        );
        assert!(params("/ws/tenant/{id}", "/ws/tenant/acme/x", true).is_none());
        assert!(params("/ws/tenant/{id}", "/ws/tenant/acme/x", false).is_some());
        assert!(params("/ws/tenant/{id}", "/ws/tenant/", false).is_none());
        assert!(params("/ws/tenant/{id}", "/ws/tenant", false).is_none());
        assert!(params("/ws/tenant/{id}", "/ws/other/acme", false).is_none());
    }

    #[test]
    fn sources_and_stripping() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; jwt=TOK; b=2"),
        );
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat, bearer, PTOK"),
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer HTOK"),
        );
        let mut uri: Uri = "/ws?x=1&token=Q%2ETOK&y=2".parse().unwrap();
        assert_eq!(bearer(&headers).as_deref(), Some("HTOK"));
        assert_eq!(cookie(&headers, "jwt").as_deref(), Some("TOK"));
        assert_eq!(query_param(&uri, "token").as_deref(), Some("Q.TOK"));
        assert_eq!(protocol_token(&headers).as_deref(), Some("PTOK"));
        strip(&mut headers, &mut uri, &Found::Query("token".into()));
        assert_eq!(uri, "/ws?x=1&y=2");
        strip(&mut headers, &mut uri, &Found::Cookie("jwt".into()));
        assert_eq!(headers[header::COOKIE], "a=1; b=2");
        strip(&mut headers, &mut uri, &Found::WebsocketProtocol);
        assert_eq!(headers[header::SEC_WEBSOCKET_PROTOCOL], "chat, bearer");
        strip(&mut headers, &mut uri, &Found::Header);
        assert!(headers.get(header::AUTHORIZATION).is_none());
    }

    #[test]
    fn jwks_documents() {
        let keys = parse_jwks(
            br#"{"keys":[
                {"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB","alg":"RS256"},
                {"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},
                {"kty":"EC","kid":"bad","crv":"P-256","x":"AQAB","y":"AQAB"},
                {"kty":"OKP","kid":"o","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
                {"kty":"oct","k":"c2VjcmV0"}
            ]}"#,
        )
        .unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["r", "o"]);
        assert!(parse_jwks(b"[]").is_err());
    }
}

#[cfg(test)]
#[path = "jwt_fuzz.rs"]
mod fuzz;
