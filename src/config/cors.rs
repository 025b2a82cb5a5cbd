//! CORS: named policies at the top level (`cors: {api: {...}}`) and a route's `cors:`, which
//! is either such a name or a policy written in place — file schema, typed settings and their
//! validation.
//!
//! Defaults are django-cors-headers' (methods, request headers, max age), so a Django
//! `CORS_ALLOWED_ORIGINS` list translates one to one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_saphyr::Spanned;

use super::units::{self, ConfigDuration};
use super::{normalize_dns_name, ConfigError, Origin};

// ---------- file schema ----------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsFile {
    pub allowed_origins: Option<Vec<Spanned<String>>>,
    pub allowed_methods: Option<Vec<Spanned<String>>>,
    pub allowed_headers: Option<Vec<Spanned<String>>>,
    pub exposed_headers: Option<Vec<Spanned<String>>>,
    pub allow_credentials: Option<bool>,
    pub max_age: Option<ConfigDuration>,
    /// Answer Private Network Access preflights (`Access-Control-Request-Private-Network`).
    pub allow_private_network: Option<bool>,
}

/// A route's `cors:`: the name of a top-level policy, or a policy in place.
#[derive(Debug)]
pub enum CorsRouteFile {
    Name(String),
    Policy(CorsFile),
}

impl<'de> Deserialize<'de> for CorsRouteFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RouteVisitor;
        impl<'de> Visitor<'de> for RouteVisitor {
            type Value = CorsRouteFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the name of a top-level cors policy, or a cors mapping")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CorsRouteFile::Name(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                CorsFile::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(CorsRouteFile::Policy)
            }
        }
        deserializer.deserialize_any(RouteVisitor)
    }
}

// ---------- settings ----------

/// django-cors-headers' `default_methods`.
const DEFAULT_METHODS: [&str; 6] = ["DELETE", "GET", "OPTIONS", "PATCH", "POST", "PUT"];
/// django-cors-headers' `default_headers`.
const DEFAULT_HEADERS: [&str; 6] = [
    "accept",
    "authorization",
    "content-type",
    "user-agent",
    "x-csrftoken",
    "x-requested-with",
];
/// django-cors-headers' `CORS_PREFLIGHT_MAX_AGE` (browsers cap it: Chromium at 2 h).
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CorsSettings {
    /// `*`, exact origins (`https://app.example.com`, lower case, default port dropped) and
    /// wildcards (`https://*.example.com`: one or more labels under the suffix).
    pub allowed_origins: Vec<String>,
    /// Upper case.
    pub allowed_methods: Vec<String>,
    /// Lower case.
    pub allowed_headers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exposed_headers: Vec<String>,
    pub allow_credentials: bool,
    #[serde(serialize_with = "units::serialize_duration")]
    pub max_age: Duration,
    pub allow_private_network: bool,
}

/// A route's CORS policy: the named one it refers to, or its own.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCors {
    pub name: Option<String>,
    pub policy: Arc<CorsSettings>,
}

/// Printed as written: the name, or the policy in place.
impl Serialize for RouteCors {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.name {
            Some(name) => s.serialize_str(name),
            None => self.policy.serialize(s),
        }
    }
}

// ---------- validation ----------

/// Validates the named policies, then resolves each route's `cors:` into its place in
/// `targets` (`routes[i]` is the `cors:` written for `targets[i]`, each route's own field).
/// Returns the named policies.
pub fn resolve<'a>(
    named: Option<BTreeMap<String, Spanned<CorsFile>>>,
    routes: Vec<Option<Spanned<CorsRouteFile>>>,
    targets: impl Iterator<Item = &'a mut Option<RouteCors>>,
    origin: &dyn Fn(u64, u64) -> Origin,
) -> Result<BTreeMap<String, CorsSettings>, ConfigError> {
    let mut policies = BTreeMap::new();
    for (name, spanned) in named.into_iter().flatten() {
        let field = format!("cors.{name}");
        if !super::names::valid_name(&name) {
            return Err(ConfigError::invalid(
                super::origin_of(origin, &spanned),
                "cors",
                format!("`{name}` is not a valid policy name (letters, digits, - _ .)"),
            ));
        }
        let policy = settings(&spanned, &field, origin)?;
        policies.insert(name, Arc::new(policy));
    }
    for (target, file) in targets.zip(routes) {
        let Some(file) = file else { continue };
        let here = super::origin_of(origin, &file);
        *target = Some(match &file.value {
            CorsRouteFile::Name(name) => match policies.get(name) {
                Some(policy) => RouteCors {
                    name: Some(name.clone()),
                    policy: policy.clone(),
                },
                None => {
                    return Err(ConfigError::invalid(
                        here,
                        "routes.cors",
                        if policies.is_empty() {
                            format!("`{name}` is not a CORS policy: none is defined under the top-level `cors:`")
                        } else {
                            format!(
                                "`{name}` is not a CORS policy (defined: {})",
                                super::defined_list(policies.keys())
                            )
                        },
                    ));
                }
            },
            CorsRouteFile::Policy(policy) => RouteCors {
                name: None,
                policy: Arc::new(settings_of(policy, here, "routes.cors", origin)?),
            },
        });
    }
    Ok(policies
        .into_iter()
        .map(|(name, policy)| (name, CorsSettings::clone(&policy)))
        .collect())
}

fn settings(
    spanned: &Spanned<CorsFile>,
    field: &str,
    at: &dyn Fn(u64, u64) -> Origin,
) -> Result<CorsSettings, ConfigError> {
    let here = super::origin_of(at, spanned);
    settings_of(&spanned.value, here, field, at)
}

fn settings_of(
    file: &CorsFile,
    here: Origin,
    field: &str,
    at: &dyn Fn(u64, u64) -> Origin,
) -> Result<CorsSettings, ConfigError> {
    let item_at = |s: &Spanned<String>| super::origin_of(at, s);
    let credentials = file.allow_credentials.unwrap_or(false);
    let origins = file.allowed_origins.as_deref().unwrap_or_default();
    if origins.is_empty() {
        return Err(ConfigError::invalid(
            here,
            format!("{field}.allowed_origins"),
            "list the origins that may read responses (`*` for any, without credentials)",
        ));
    }
    let mut allowed_origins = Vec::new();
    for entry in origins {
        let normalized = normalize_origin(&entry.value).map_err(|reason| {
            ConfigError::invalid(item_at(entry), format!("{field}.allowed_origins"), reason)
        })?;
        if normalized == "*" && credentials {
            return Err(ConfigError::invalid(
                item_at(entry),
                format!("{field}.allowed_origins"),
                "`*` cannot be used with allow_credentials: true (browsers refuse it, and echoing any origin with credentials lets every site read the user's data); list the origins",
            ));
        }
        if !allowed_origins.contains(&normalized) {
            allowed_origins.push(normalized);
        }
    }
    if allowed_origins.len() > 1 && allowed_origins.iter().any(|o| o == "*") {
        return Err(ConfigError::invalid(
            here,
            format!("{field}.allowed_origins"),
            "`*` allows every origin: it stands alone",
        ));
    }
    let mut allowed_methods = Vec::new();
    match &file.allowed_methods {
        None => allowed_methods.extend(DEFAULT_METHODS.iter().map(|m| (*m).to_owned())),
        Some(methods) => {
            for method in methods {
                let upper = method.value.trim().to_ascii_uppercase();
                if upper.is_empty()
                    || upper == "*"
                    || http::Method::from_bytes(upper.as_bytes()).is_err()
                {
                    return Err(ConfigError::invalid(
                        item_at(method),
                        format!("{field}.allowed_methods"),
                        format!(
                            "`{}` is not an HTTP method (list them; `*` is not accepted)",
                            method.value
                        ),
                    ));
                }
                if !allowed_methods.contains(&upper) {
                    allowed_methods.push(upper);
                }
            }
        }
    }
    let header_list = |list: &Option<Vec<Spanned<String>>>,
                       default: &[&str],
                       name: &str|
     -> Result<Vec<String>, ConfigError> {
        let Some(list) = list else {
            return Ok(default.iter().map(|h| (*h).to_owned()).collect());
        };
        let mut headers = Vec::new();
        for header in list {
            let lower = header.value.trim().to_ascii_lowercase();
            if lower == "*" || http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                return Err(ConfigError::invalid(
                    item_at(header),
                    format!("{field}.{name}"),
                    format!(
                        "`{}` is not a header name (list them; `*` is not accepted)",
                        header.value
                    ),
                ));
            }
            if !headers.contains(&lower) {
                headers.push(lower);
            }
        }
        Ok(headers)
    };
    let allowed_headers = header_list(&file.allowed_headers, &DEFAULT_HEADERS, "allowed_headers")?;
    let exposed_headers = header_list(&file.exposed_headers, &[], "exposed_headers")?;
    let max_age = file.max_age.map_or(DEFAULT_MAX_AGE, |d| d.0);
    if max_age > Duration::from_secs(86_400) {
        return Err(ConfigError::invalid(
            here,
            format!("{field}.max_age"),
            "at most 1d (browsers cap it lower: Chromium at 2h, Firefox at 1d)",
        ));
    }
    Ok(CorsSettings {
        allowed_origins,
        allowed_methods,
        allowed_headers,
        exposed_headers,
        allow_credentials: credentials,
        max_age: Duration::from_secs(max_age.as_secs()),
        allow_private_network: file.allow_private_network.unwrap_or(false),
    })
}

/// An allowed origin as the browser serialises one: `*`, `scheme://host[:port]` in lower
/// case with the default port dropped, or a wildcard `scheme://*.suffix[:port]`.
pub fn normalize_origin(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text == "*" {
        return Ok("*".into());
    }
    let lower = text.trim_end_matches('/').to_ascii_lowercase();
    if lower == "null" {
        return Err("the `null` origin is sent by sandboxed frames and file: pages, which any site can make: it is never allowed".into());
    }
    let (scheme, rest) = match lower.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        _ => {
            return Err(format!(
                "`{text}` is not an origin (https://host[:port], or https://*.example.com)"
            ))
        }
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', '\\']) {
        return Err(format!(
            "`{text}` is not an origin: scheme://host[:port], no path, query or user"
        ));
    }
    let (host, port) = split_port(rest).ok_or_else(|| format!("`{text}`: bad port"))?;
    let host = if host.starts_with('[') {
        match host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|h| h.parse::<std::net::Ipv6Addr>().ok())
        {
            Some(ip) => format!("[{ip}]"),
            None => return Err(format!("`{text}`: bad IPv6 address")),
        }
    } else {
        let name = normalize_dns_name(host).map_err(|e| format!("`{text}`: {e}"))?;
        if let Some(suffix) = name.strip_prefix("*.") {
            if suffix.split('.').count() < 2 {
                return Err(format!(
                    "`{text}`: a wildcard needs at least two labels after `*.` (`https://*.example.com`); `*.{suffix}` would match every site under .{suffix}"
                ));
            }
        }
        name
    };
    let default_port = if scheme == "https" { 443 } else { 80 };
    Ok(match port {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// `host[:port]` → (host, port); `None` for a port that is not a number in 1..=65535.
fn split_port(rest: &str) -> Option<(&str, Option<u16>)> {
    let colon = match rest.rfind(':') {
        Some(i) if !rest[i..].contains(']') => i,
        _ => return Some((rest, None)),
    };
    let port: u16 = rest[colon + 1..]
        .parse()
        .ok()
        .filter(|p| *p > 0 && rest[colon + 1..].bytes().all(|b| b.is_ascii_digit()))?;
    Some((&rest[..colon], Some(port)))
}

/// Named policies no route refers to, for `Settings::warnings` (`used`: the routes' `cors`).
pub fn unused<'a>(
    named: &BTreeMap<String, CorsSettings>,
    used: impl Iterator<Item = Option<&'a RouteCors>> + Clone,
) -> Vec<String> {
    named
        .keys()
        .filter(|name| {
            !used
                .clone()
                .any(|c| c.and_then(|c| c.name.as_ref()) == Some(*name))
        })
        .map(|name| format!("cors policy `{name}` is not used by any route"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, to_yaml, Overrides, Settings};

    fn load(yaml: &str) -> Result<Settings, ConfigError> {
        let yaml = format!("upstreams:\n  app:\n    servers: [http://127.0.0.1:9]\n{yaml}");
        load_str(
            &yaml,
            Some(std::path::Path::new("/etc/tlsgate/tlsgate.yaml")),
            &Overrides::default(),
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
    fn named_and_in_place_policies_resolve_print_back_and_unused_ones_warn() {
        let yaml = "cors:\n  api:\n    allowed_origins: [https://app.example.com, \"https://*.example.com\"]\n    allow_credentials: true\n    exposed_headers: [X-Request-Id]\n    max_age: 10m\n  spare:\n    allowed_origins: [\"*\"]\nroutes:\n  - path: /api\n    upstream: app\n    cors: api\n  - path: /public\n    upstream: app\n    cors:\n      allowed_origins: [\"*\"]\n      allowed_methods: [get, post]\n      allowed_headers: [Content-Type]\n";
        let settings = load(yaml).unwrap();
        let api = settings.proxy.routes[0].cors.as_ref().unwrap();
        assert_eq!(api.name.as_deref(), Some("api"));
        assert_eq!(
            api.policy.allowed_origins,
            ["https://app.example.com", "https://*.example.com"]
        );
        assert!(api.policy.allow_credentials);
        assert_eq!(api.policy.exposed_headers, ["x-request-id"]);
        assert_eq!(api.policy.max_age, Duration::from_secs(600));
        // django-cors-headers' defaults.
        assert_eq!(api.policy.allowed_methods, DEFAULT_METHODS);
        assert_eq!(api.policy.allowed_headers, DEFAULT_HEADERS);
        let public = settings.proxy.routes[1].cors.as_ref().unwrap();
        assert_eq!(public.name, None);
        assert_eq!(public.policy.allowed_methods, ["GET", "POST"]);
        assert_eq!(public.policy.allowed_headers, ["content-type"]);
        assert_eq!(
            settings.warnings(),
            ["cors policy `spare` is not used by any route"]
        );
        // `config check` prints the effective policy, and it reads back the same.
        let printed = to_yaml(&settings);
        assert!(printed.contains("cors: api"), "{printed}");
        assert!(printed.contains("max_age: 10m"), "{printed}");
        let again = load_str(&printed, None, &Overrides::default(), &|_| None).unwrap();
        assert_eq!(to_yaml(&again), printed);
    }

    #[test]
    fn credentials_with_any_origin_missing_names_and_bad_entries_are_errors_with_their_line() {
        let error = refused("routes:\n  - path: /\n    upstream: app\n    cors:\n      allow_credentials: true\n      allowed_origins:\n        - https://app.example.com\n        - \"*\"\n");
        assert!(
            error.starts_with("/etc/tlsgate/tlsgate.yaml:11:")
                && error.contains("allow_credentials"),
            "{error}"
        );
        let error = refused("routes:\n  - path: /\n    upstream: app\n    cors: api\n");
        assert!(
            error.starts_with("/etc/tlsgate/tlsgate.yaml:7:")
                && error.contains("`api` is not a CORS policy"),
            "{error}"
        );
        let error = refused("cors:\n  api:\n    allowed_origins: [https://a.example.com]\nroutes:\n  - path: /\n    upstream: app\n    cors: apj\n");
        assert!(error.contains("(defined: api)"), "{error}");
        let error = refused("cors:\n  api:\n    allowed_origins: [\"https://*.com\"]\n");
        assert!(error.starts_with("/etc/tlsgate/tlsgate.yaml:6:"), "{error}");
        let error = refused("cors:\n  api:\n    allowed_origins: [https://a.example.com]\n    allowed_headers: [\"*\"]\n");
        assert!(error.contains("allowed_headers"), "{error}");
        let error = refused("cors:\n  api:\n    allow_credentials: true\n");
        assert!(error.contains("allowed_origins"), "{error}");
        let error = refused("cors:\n  api:\n    allowed_origins: [https://a.example.com]\n    alowed_methods: [GET]\n");
        assert!(error.contains("alowed_methods"), "{error}");
    }

    #[test]
    fn origins_are_normalised_as_browsers_send_them() {
        for (written, normalized) in [
            ("https://App.Example.com/", "https://app.example.com"),
            ("https://app.example.com:443", "https://app.example.com"),
            ("http://localhost:3000", "http://localhost:3000"),
            ("http://127.0.0.1:80", "http://127.0.0.1"),
            ("https://[::1]:8443", "https://[::1]:8443"),
            ("https://*.example.com", "https://*.example.com"),
            ("https://*.Example.com:8443", "https://*.example.com:8443"),
            ("*", "*"),
        ] {
            assert_eq!(
                normalize_origin(written).as_deref(),
                Ok(normalized),
                "{written}"
            );
        }
        for bad in [
            "null",
            "app.example.com",
            "ftp://app.example.com",
            "https://app.example.com/api",
            "https://user@app.example.com",
            "https://app.*.com",
            "https://*example.com",
            "https://*.com",
            "https://app.example.com:0",
            "https://app.example.com:99999",
            "https://app.example.com:8x",
            "*.example.com",
        ] {
            assert!(normalize_origin(bad).is_err(), "{bad} accepted");
        }
    }
}
