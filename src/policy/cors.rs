//! CORS decisions for a route (Fetch standard, "CORS protocol"): whether an `Origin` may read
//! responses, the answer to a preflight, and the headers an actual response carries. Header
//! values are built once per configuration; a request costs a few comparisons.
//!
//! The edge owns CORS on a route that has a policy: a backend's own `Access-Control-*`
//! response headers are removed (two sources of CORS headers are how browsers end up with two
//! `Access-Control-Allow-Origin` values and refuse the response).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::cors::CorsSettings;

const REQUEST_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-request-private-network");
const ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");

/// Response headers the edge owns on a CORS route.
const OWNED: [HeaderName; 7] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
    ALLOW_PRIVATE_NETWORK,
];

/// A route's CORS policy, ready for requests.
#[derive(Debug, PartialEq)]
pub struct Cors {
    any_origin: bool,
    /// Exact origins, lower case, as browsers serialise them.
    exact: Vec<String>,
    wildcards: Vec<Wildcard>,
    /// Upper case.
    methods: Vec<String>,
    allow_methods: HeaderValue,
    /// Lower case.
    headers: Vec<String>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
    private_network: bool,
}

/// `scheme://*.suffix[:port]`: one or more labels in front of `suffix`.
#[derive(Debug, PartialEq)]
struct Wildcard {
    /// `https://`
    scheme: String,
    /// `.example.com`
    suffix: String,
    /// `:8443`, or empty for the default port.
    port: String,
}

/// Why a preflight was refused (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Origin,
    Method,
    Header,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Origin => "origin",
            Refusal::Method => "method",
            Refusal::Header => "header",
        }
    }
}

/// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. Any other `OPTIONS` is an ordinary request.
pub fn is_preflight(method: &http::Method, headers: &HeaderMap) -> bool {
    method == http::Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Adds `token` to the response's `Vary` unless it is there (or `Vary: *`), keeping one line.
pub fn add_vary(headers: &mut HeaderMap, token: &'static str) {
    let mut existing = String::new();
    for value in headers.get_all(header::VARY) {
        let Ok(text) = value.to_str() else { continue };
        if text.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.eq_ignore_ascii_case(token)
        }) {
            return;
        }
        if !text.trim().is_empty() {
            if !existing.is_empty() {
                existing.push_str(", ");
            }
            existing.push_str(text.trim());
        }
    }
    if existing.is_empty() {
        headers.insert(header::VARY, HeaderValue::from_static(token));
    } else if let Ok(value) = HeaderValue::from_str(&format!("{existing}, {token}")) {
        headers.insert(header::VARY, value);
    }
}

fn joined(items: &[String]) -> Option<HeaderValue> {
    if items.is_empty() {
        return None;
    }
    HeaderValue::from_str(&items.join(", ")).ok()
}

impl Cors {
    pub fn new(settings: &CorsSettings) -> Self {
        let mut exact = Vec::new();
        let mut wildcards = Vec::new();
        let mut any_origin = false;
        for origin in &settings.allowed_origins {
            if origin == "*" {
                any_origin = true;
            } else if let Some((scheme, rest)) = origin.split_once("://*") {
                // Validated: `rest` is `.suffix[:port]`.
                let (suffix, port) = match rest.rfind(':') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, ""),
                };
                wildcards.push(Wildcard {
                    scheme: format!("{scheme}://"),
                    suffix: suffix.to_owned(),
                    port: port.to_owned(),
                });
            } else {
                exact.push(origin.clone());
            }
        }
        Cors {
            any_origin,
            exact,
            wildcards,
            methods: settings.allowed_methods.clone(),
            allow_methods: joined(&settings.allowed_methods)
                .unwrap_or(HeaderValue::from_static("")),
            headers: settings.allowed_headers.clone(),
            expose: joined(&settings.exposed_headers),
            credentials: settings.allow_credentials,
            max_age: HeaderValue::from(settings.max_age.as_secs()),
            private_network: settings.allow_private_network,
        }
    }

    /// Whether `origin` (an `Origin` header's text) is allowed; also the WebSocket Origin
    /// check of a route that has CORS and no `allowed_origins`.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        if self.any_origin {
            return true;
        }
        let bare = without_default_port(origin);
        if self.exact.iter().any(|o| o.eq_ignore_ascii_case(bare)) {
            return true;
        }
        !self.wildcards.is_empty() && self.wildcards.iter().any(|w| w.matches(origin))
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, when it is allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        let text = origin.to_str().ok()?;
        if !self.origin_allowed(text) {
            return None;
        }
        // `*` only when no credentials: then every origin gets the same answer.
        Some(if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        })
    }

    /// The headers of the `204` answering an allowed preflight, or why it is refused.
    pub fn preflight(&self, request: &HeaderMap) -> Result<HeaderMap, Refusal> {
        let origin = request.get(header::ORIGIN).ok_or(Refusal::Origin)?;
        let allow_origin = self.allow_origin(origin).ok_or(Refusal::Origin)?;
        let method = request
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| m.to_str().ok())
            .map(str::trim)
            .ok_or(Refusal::Method)?;
        let Some(configured) = self.methods.iter().find(|m| m.eq_ignore_ascii_case(method)) else {
            return Err(Refusal::Method);
        };
        let mut requested = Vec::new();
        for value in request.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            let text = value.to_str().map_err(|_| Refusal::Header)?;
            for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !self.headers.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                    return Err(Refusal::Header);
                }
                requested.push(name.to_ascii_lowercase());
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        // The browser compares the method byte for byte: a method asked in another case
        // (`patch`) is named as asked.
        if configured == method {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                self.allow_methods.clone(),
            );
        } else if let Ok(value) = HeaderValue::from_str(&format!(
            "{}, {method}",
            self.allow_methods.to_str().unwrap_or_default()
        )) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, value);
        }
        if let Some(value) = joined(&requested) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
        }
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if self.private_network
            && request
                .get(REQUEST_PRIVATE_NETWORK)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
        {
            headers.insert(ALLOW_PRIVATE_NETWORK, HeaderValue::from_static("true"));
        }
        headers.insert(
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        Ok(headers)
    }

    /// An actual response's CORS headers, for a request whose `Origin` was `origin`: the
    /// backend's own are replaced, `Vary: Origin` is always there.
    pub fn on_response(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        for name in &OWNED {
            headers.remove(name);
        }
        add_vary(headers, "Origin");
        let Some(allow) = origin.and_then(|o| self.allow_origin(o)) else {
            return;
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

/// `origin` without a default port (`https://a.example:443` is `https://a.example`): a
/// browser never sends one, but a hand-made client may, and the configured origins are
/// stored without it.
fn without_default_port(origin: &str) -> &str {
    let lower = |prefix: &str| {
        origin
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    if lower("https://") {
        if let Some(bare) = origin.strip_suffix(":443") {
            return bare;
        }
    } else if lower("http://") {
        if let Some(bare) = origin.strip_suffix(":80") {
            return bare;
        }
    }
    origin
}

impl Wildcard {
    fn matches(&self, origin: &str) -> bool {
        let bytes = origin.as_bytes();
        let scheme = self.scheme.as_bytes();
        if bytes.len() < scheme.len() || !bytes[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return false;
        }
        let rest = &origin[scheme.len()..];
        let (host, port) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains(']') => (&rest[..i], &rest[i..]),
            _ => (rest, ""),
        };
        // The default port is never in a browser's Origin, but may be in a hand-made one.
        let port = match (port, self.scheme.as_str()) {
            (":443", "https://") | (":80", "http://") => "",
            _ => port,
        };
        if port != self.port {
            return false;
        }
        let suffix = self.suffix.as_bytes();
        let host_bytes = host.as_bytes();
        if host_bytes.len() <= suffix.len()
            || !host_bytes[host_bytes.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        {
            return false;
        }
        // One or more whole labels in front of the suffix: `a.b` of `a.b.example.com`.
        let labels = &host[..host.len() - suffix.len()];
        labels.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(origins: &[&str], credentials: bool) -> CorsSettings {
        CorsSettings {
            allowed_origins: origins
                .iter()
                .map(|o| crate::config::cors::normalize_origin(o).unwrap())
                .collect(),
            allowed_methods: vec!["GET".into(), "POST".into(), "PATCH".into()],
            allowed_headers: vec!["content-type".into(), "x-custom".into()],
            exposed_headers: vec!["x-request-id".into()],
            allow_credentials: credentials,
            max_age: Duration::from_secs(600),
            allow_private_network: true,
        }
    }

    fn cors() -> Cors {
        Cors::new(&settings(
            &[
                "https://app.example.com",
                "https://*.example.com",
                "http://localhost:3000",
            ],
            true,
        ))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn an_exact_origin_matches_with_or_without_its_default_port() {
        let cors = Cors::new(&settings(
            &["https://app.example.com", "http://intranet.test"],
            true,
        ));
        for allowed in [
            "https://app.example.com",
            "https://app.example.com:443",
            "HTTPS://App.Example.com:443",
            "http://intranet.test:80",
        ] {
            assert!(cors.origin_allowed(allowed), "{allowed}");
        }
        for refused in [
            "https://app.example.com:8443",
            "http://app.example.com",
            "https://intranet.test:80",
            "https://app.example.com:4430",
        ] {
            assert!(!cors.origin_allowed(refused), "{refused}");
        }
    }

    #[test]
    fn wildcards_match_whole_labels_under_the_suffix_with_the_same_scheme_and_port() {
        let cors = cors();
        for allowed in [
            "https://app.example.com",
            "https://APP.example.com",
            "https://a.example.com",
            "https://a.b.example.com",
            "https://a.example.com:443",
            "http://localhost:3000",
        ] {
            assert!(cors.origin_allowed(allowed), "{allowed} refused");
        }
        for refused in [
            "https://example.com",
            "https://example.com.evil.test",
            "https://evilexample.com",
            "https://.example.com",
            "https://a..example.com",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://a.example.com.",
            "https://evil.test/.example.com",
            "https://evil.test?.example.com",
            "https://a@b.example.com",
            "http://localhost:3001",
            "null",
            "",
        ] {
            assert!(!cors.origin_allowed(refused), "{refused} allowed");
        }
        let ported = Cors::new(&settings(&["https://*.example.com:8443"], false));
        assert!(ported.origin_allowed("https://a.example.com:8443"));
        assert!(!ported.origin_allowed("https://a.example.com"));
    }

    #[test]
    fn an_allowed_preflight_names_the_origin_methods_asked_headers_and_varies() {
        let answer = cors()
            .preflight(&headers(&[
                ("origin", "https://a.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "Content-Type,X-Custom"),
                ("access-control-request-private-network", "true"),
            ]))
            .unwrap();
        assert_eq!(
            answer["access-control-allow-origin"],
            "https://a.example.com"
        );
        assert_eq!(answer["access-control-allow-methods"], "GET, POST, PATCH");
        assert_eq!(
            answer["access-control-allow-headers"],
            "content-type, x-custom"
        );
        assert_eq!(answer["access-control-max-age"], "600");
        assert_eq!(answer["access-control-allow-credentials"], "true");
        assert_eq!(answer["access-control-allow-private-network"], "true");
        assert_eq!(
            answer["vary"],
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        );
        // A method asked in lower case is named as asked: browsers compare bytes.
        let lower = cors()
            .preflight(&headers(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "patch"),
            ]))
            .unwrap();
        assert_eq!(
            lower["access-control-allow-methods"],
            "GET, POST, PATCH, patch"
        );
        assert!(!lower.contains_key("access-control-allow-headers"));
    }

    #[test]
    fn preflights_for_other_origins_methods_or_headers_are_refused() {
        let ask = |origin: &str, method: &str, requested: &str| {
            let mut pairs = vec![
                ("origin", origin),
                ("access-control-request-method", method),
            ];
            if !requested.is_empty() {
                pairs.push(("access-control-request-headers", requested));
            }
            cors().preflight(&headers(&pairs)).err()
        };
        assert_eq!(ask("https://evil.test", "GET", ""), Some(Refusal::Origin));
        assert_eq!(
            ask("https://example.com.evil.test", "GET", ""),
            Some(Refusal::Origin)
        );
        assert_eq!(
            ask("https://app.example.com", "DELETE", ""),
            Some(Refusal::Method)
        );
        assert_eq!(
            ask("https://app.example.com", "GET", "content-type, x-other"),
            Some(Refusal::Header)
        );
        assert_eq!(ask("https://app.example.com", "GET", "CONTENT-TYPE"), None);
    }

    #[test]
    fn actual_responses_get_the_edges_headers_only_and_vary_once() {
        let cors = cors();
        let mut response = headers(&[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-methods", "GET"),
            ("vary", "Accept-Encoding"),
        ]);
        let origin = HeaderValue::from_static("https://app.example.com");
        cors.on_response(Some(&origin), &mut response);
        assert_eq!(
            response["access-control-allow-origin"],
            "https://app.example.com"
        );
        assert_eq!(response["access-control-allow-credentials"], "true");
        assert_eq!(response["access-control-expose-headers"], "x-request-id");
        assert!(!response.contains_key("access-control-allow-methods"));
        assert_eq!(response["vary"], "Accept-Encoding, Origin");
        cors.on_response(Some(&origin), &mut response);
        assert_eq!(response.get_all("vary").iter().count(), 1);
        assert_eq!(response["vary"], "Accept-Encoding, Origin");

        // Another origin, or none: no CORS headers, still Vary.
        let mut other = headers(&[("access-control-allow-origin", "https://evil.test")]);
        cors.on_response(
            Some(&HeaderValue::from_static("https://evil.test")),
            &mut other,
        );
        assert!(!other.contains_key("access-control-allow-origin"));
        assert_eq!(other["vary"], "Origin");
        let mut star = headers(&[("vary", "*")]);
        cors.on_response(None, &mut star);
        assert_eq!(star["vary"], "*");

        // Any origin without credentials: `*`.
        let any = Cors::new(&settings(&["*"], false));
        let mut response = HeaderMap::new();
        any.on_response(Some(&origin), &mut response);
        assert_eq!(response["access-control-allow-origin"], "*");
        assert!(!response.contains_key("access-control-allow-credentials"));
    }
}
