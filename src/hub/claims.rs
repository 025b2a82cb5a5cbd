//! Claims as the hub reads them: channel templates filled from a token's claims and the
//! endpoint's path parameters, claim rules (`require`), `channels` patterns, the expiry.

use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::config::hub::{Requirement, RequirementTest, Template, TemplatePart};

/// When the token expires (its `exp`), as a timer.
pub fn expiry(claims: &Map<String, Value>) -> Option<Instant> {
    let exp = claims.get("exp")?.as_f64()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    let left = (exp - now).max(0.0);
    Some(Instant::now() + Duration::from_secs_f64(left.min(10.0 * 365.0 * 86_400.0)))
}

/// A claim as text: strings as they are, numbers and booleans written out.
pub fn claim_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Fills a template from the path parameters and claims; none when a part is missing.
pub fn fill(
    template: &Template,
    claims: Option<&Map<String, Value>>,
    parameters: &[(String, String)],
) -> Option<String> {
    let mut out = String::new();
    for part in &template.parts {
        match part {
            TemplatePart::Text(text) => out.push_str(text),
            TemplatePart::Parameter(name) => {
                let (_, value) = parameters.iter().find(|(n, _)| n == name)?;
                out.push_str(value);
            }
            TemplatePart::Claim(name) => out.push_str(&claim_text(claims?.get(name)?)?),
        }
    }
    Some(out)
}

/// Whether `claims` meet `rule` (its template filled from `parameters`).
pub fn satisfied(
    rule: &Requirement,
    claims: Option<&Map<String, Value>>,
    parameters: &[(String, String)],
) -> bool {
    let (template, contains) = match &rule.test {
        RequirementTest::Contains(t) => (t, true),
        RequirementTest::Equals(t) => (t, false),
    };
    let Some(wanted) = fill(template, claims, parameters) else {
        return false;
    };
    let Some(value) = claims.and_then(|c| c.get(&rule.claim)) else {
        return false;
    };
    match value {
        Value::Array(list) if contains => list
            .iter()
            .any(|item| claim_text(item).as_deref() == Some(wanted.as_str())),
        other => claim_text(other).as_deref() == Some(wanted.as_str()),
    }
}

/// `*` matches any run of characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else {
                return false;
            };
            if tail.is_empty() {
                return true;
            }
            (0..=rest.len())
                .filter(|i| rest.is_char_boundary(*i))
                .any(|i| glob(tail, &rest[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::hub::template;
    use crate::hub::protocol::into_map;
    use serde_json::json;

    #[test]
    fn templates_fill_from_claims_and_parameters_and_rules_check_claims() {
        let claims: Map<String, Value> =
            into_map(json!({"sub": "u1", "tenants": ["t1", "t2"], "role": "admin", "n": 7}));
        let params = vec![("id".to_owned(), "t2".to_owned())];
        let t = template("user:{claims.sub}", &[]).unwrap();
        assert_eq!(fill(&t, Some(&claims), &params).as_deref(), Some("user:u1"));
        let t = template("tenant:{id}", &["id".into()]).unwrap();
        assert_eq!(
            fill(&t, Some(&claims), &params).as_deref(),
            Some("tenant:t2")
        );
        let t = template("x:{claims.missing}", &[]).unwrap();
        assert_eq!(fill(&t, Some(&claims), &params), None);
        let rule = |claim: &str, test| Requirement {
            claim: claim.into(),
            test,
        };
        let id = template("{id}", &["id".into()]).unwrap();
        assert!(satisfied(
            &rule("tenants", RequirementTest::Contains(id.clone())),
            Some(&claims),
            &params
        ));
        let other = vec![("id".to_owned(), "t9".to_owned())];
        assert!(!satisfied(
            &rule("tenants", RequirementTest::Contains(id.clone())),
            Some(&claims),
            &other
        ));
        assert!(!satisfied(
            &rule("tenants", RequirementTest::Contains(id)),
            None,
            &params
        ));
        let admin = template("admin", &[]).unwrap();
        assert!(satisfied(
            &rule("role", RequirementTest::Equals(admin.clone())),
            Some(&claims),
            &params
        ));
        assert!(!satisfied(
            &rule("sub", RequirementTest::Equals(admin)),
            Some(&claims),
            &params
        ));
    }

    #[test]
    fn channel_patterns_match_with_stars() {
        assert!(glob("chat:*", "chat:room-1"));
        assert!(glob("*", "anything"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("chat:*", "prices"));
        assert!(!glob("prices", "prices:btc"));
        assert!(glob("prices", "prices"));
    }
}
