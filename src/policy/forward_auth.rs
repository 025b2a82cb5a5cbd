//! Forward auth (nginx `auth_request`, Traefik ForwardAuth): an auth service is asked about
//! each request (its method, URI, host, scheme and chosen headers); a `2xx` passes, with chosen
//! answer headers for the upstream, anything else is the client's answer. Verdicts may be kept
//! a few seconds per credential.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Uri};
use http_body_util::Full;

use crate::config::jwt::ForwardAuthSettings;

use super::client::{self, FetchError, HttpClient};

/// The largest auth answer body passed back to a client.
const MAX_ANSWER: usize = 64 * 1024;
/// The most verdicts kept per service.
const MAX_CACHED: usize = 10_000;
/// Headers of a refusal passed back to the client.
const DENY_HEADERS: [HeaderName; 4] = [
    header::WWW_AUTHENTICATE,
    header::LOCATION,
    header::CONTENT_TYPE,
    header::SET_COOKIE,
];

/// The auth service's verdict.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Headers for the upstream (the configured `response_headers` the answer had).
    Pass(Vec<(HeaderName, HeaderValue)>),
    /// The answer to give the client.
    Deny(http::Response<Bytes>),
}

/// What the auth service is told about the request.
pub struct Asked<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub host: &'a str,
    pub secure: bool,
    pub client_ip: std::net::IpAddr,
    pub headers: &'a HeaderMap,
}

#[derive(Debug)]
pub struct ForwardAuth {
    pub name: String,
    pub settings: ForwardAuthSettings,
    client: HttpClient,
    /// Verdicts by a digest of the credentials and the request line; never the raw values.
    cache: Mutex<HashMap<[u8; 32], (Instant, Decision)>>,
}

impl PartialEq for ForwardAuth {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.settings == other.settings
    }
}

impl ForwardAuth {
    pub fn new(name: &str, settings: &ForwardAuthSettings) -> Self {
        Self {
            name: name.to_owned(),
            settings: settings.clone(),
            client: client::build(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A service no request passes (a refused connection: `502`), for a route whose service
    /// is missing.
    pub fn unreachable(name: &str) -> Self {
        Self::new(
            name,
            &ForwardAuthSettings {
                url: "http://127.0.0.1:0/".into(),
                timeout: std::time::Duration::from_secs(1),
                request_headers: Vec::new(),
                response_headers: Vec::new(),
                cache: std::time::Duration::ZERO,
            },
        )
    }

    /// Inbound copies of the headers the service may set: removed before asking.
    pub fn answer_headers(&self) -> &[String] {
        &self.settings.response_headers
    }

    /// Asks the service (or the cache) about a request.
    pub async fn check(&self, asked: &Asked<'_>) -> Result<Decision, FetchError> {
        let key = (!self.settings.cache.is_zero()).then(|| self.key(asked));
        if let Some(key) = &key {
            if let Ok(cache) = self.cache.lock() {
                if let Some((at, decision)) = cache.get(key) {
                    if at.elapsed() < self.settings.cache {
                        return Ok(decision.clone());
                    }
                }
            }
        }
        let decision = self.ask(asked).await?;
        if let Some(key) = key {
            if let Ok(mut cache) = self.cache.lock() {
                if cache.len() >= MAX_CACHED {
                    let ttl = self.settings.cache;
                    cache.retain(|_, (at, _)| at.elapsed() < ttl);
                    if cache.len() >= MAX_CACHED {
                        cache.clear();
                    }
                }
                cache.insert(key, (Instant::now(), decision.clone()));
            }
        }
        Ok(decision)
    }

    /// The credentials (the copied request headers) with the method and URI they were used
    /// for: a verdict may depend on the path, so it is never reused for another.
    fn key(&self, asked: &Asked<'_>) -> [u8; 32] {
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [asked.method.as_str(), asked.host, &asked.uri.to_string()] {
            context.update(part.as_bytes());
            context.update(b"\0");
        }
        for name in &self.settings.request_headers {
            for value in asked.headers.get_all(name.as_str()) {
                context.update(name.as_bytes());
                context.update(b":");
                context.update(value.as_bytes());
                context.update(b"\0");
            }
        }
        let mut key = [0; 32];
        key.copy_from_slice(context.finish().as_ref());
        key
    }

    async fn ask(&self, asked: &Asked<'_>) -> Result<Decision, FetchError> {
        let mut request = http::Request::get(&self.settings.url);
        for name in &self.settings.request_headers {
            for value in asked.headers.get_all(name.as_str()) {
                request = request.header(name.as_str(), value);
            }
        }
        let uri = asked
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let request = request
            .header("x-forwarded-method", asked.method.as_str())
            .header(
                "x-forwarded-proto",
                if asked.secure { "https" } else { "http" },
            )
            .header("x-forwarded-host", asked.host)
            .header("x-forwarded-uri", uri)
            .header("x-forwarded-for", asked.client_ip.to_string())
            .body(Full::new(Bytes::new()))
            .map_err(|e| FetchError::Failed(e.to_string()))?;
        let answer = client::send(&self.client, request, self.settings.timeout, MAX_ANSWER).await?;
        if answer.status().is_success() {
            let mut pass = Vec::new();
            for name in &self.settings.response_headers {
                let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
                    continue;
                };
                for value in answer.headers().get_all(&header) {
                    pass.push((header.clone(), value.clone()));
                }
            }
            return Ok(Decision::Pass(pass));
        }
        let (head, body) = answer.into_parts();
        let mut denial = http::Response::new(body);
        *denial.status_mut() = head.status;
        for name in DENY_HEADERS {
            for value in head.headers.get_all(&name) {
                denial.headers_mut().append(name.clone(), value.clone());
            }
        }
        Ok(Decision::Deny(denial))
    }
}
