//! Security headers added to every HTTPS response, precomputed once per config.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::HeaderSettings;

#[derive(Debug, Clone, Default)]
pub struct SecurityHeaders {
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl SecurityHeaders {
    /// Values were validated with the config; anything unparsable is skipped, not panicked on.
    pub fn new(settings: &HeaderSettings) -> Self {
        let mut headers = Vec::new();
        let mut add = |name: &str, value: Option<String>| {
            let Some(value) = value else { return };
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.push((name, value));
            }
        };
        add(
            "strict-transport-security",
            settings.hsts.as_ref().map(|h| h.header_value()),
        );
        add(
            "x-content-type-options",
            settings.x_content_type_options.clone(),
        );
        add("x-frame-options", settings.x_frame_options.clone());
        add("referrer-policy", settings.referrer_policy.clone());
        add(
            "content-security-policy",
            settings.content_security_policy.clone(),
        );
        for (name, value) in &settings.custom {
            add(name, Some(value.clone()));
        }
        Self { headers }
    }

    /// Sets each header, replacing what a handler set: the gateway's policy wins.
    pub fn apply(&self, target: &mut HeaderMap) {
        for (name, value) in &self.headers {
            target.insert(name.clone(), value.clone());
        }
    }
}
