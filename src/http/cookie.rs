//! The request's `Cookie` header, read and edited the one way: the sticky-session cookie the
//! proxy strips and the token cookie the policy stage reads and strips.

use http::header;
use http::{HeaderMap, HeaderValue};

/// The request's cookies as (name, value) pairs, in order, across every `Cookie` header.
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

/// The value of cookie `name` in the request, if any.
pub fn value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    pairs(headers).find_map(|(key, value)| (key == name).then_some(value))
}

/// Removes cookie `name`, keeping the others in one `Cookie` header (none when none is left).
pub fn strip(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').map(|(k, _)| k) != Some(name))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
        if !kept.is_empty() {
            headers.insert(header::COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_read_and_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; SERVERID=abc; b=2"),
        );
        assert_eq!(value(&h, "SERVERID"), Some("abc"));
        strip(&mut h, "SERVERID");
        assert_eq!(h[header::COOKIE], "a=1; b=2");
        let mut only = HeaderMap::new();
        only.insert(header::COOKIE, HeaderValue::from_static("SERVERID=abc"));
        strip(&mut only, "SERVERID");
        assert!(!only.contains_key(header::COOKIE));
    }
}
