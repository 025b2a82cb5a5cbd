//! Property tests of the token reader (`cargo test --lib fuzz`): mutated real tokens, JWKS
//! documents, cookies, queries and path templates give an answer or a refusal, never a panic,
//! and a mutated token never verifies.

use proptest::prelude::*;

use super::*;
use crate::fuzzing::{self, mutated};

const SECRET: &[u8] = b"fuzzing-secret";

fn b64(bytes: &[u8]) -> String {
    crate::certs::pem::base64(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn token() -> String {
    let signing = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(br#"{"sub":"s","exp":4000000000,"aud":["api"],"nbf":1}"#)
    );
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, SECRET),
        signing.as_bytes(),
    );
    format!("{signing}.{}", b64(tag.as_ref()))
}

fn verifier() -> Arc<Verifier> {
    let settings = JwtSettings {
        algorithms: vec![JwtAlgorithm::HS256, JwtAlgorithm::HS512],
        key: JwtKey::Secret {
            from: "fuzz".into(),
            bytes: SECRET.to_vec(),
        },
        issuer: None,
        audience: vec!["api".into()],
        leeway: Duration::from_secs(60),
        require_exp: true,
        jwks_ttl: Duration::from_secs(60),
    };
    Verifier::start(
        "fuzz",
        &settings,
        &CancellationToken::new(),
        &TaskTracker::new(),
    )
}

proptest! {
    #![proptest_config(fuzzing::config(2000))]

    /// A mutated token is refused (or, unchanged, verifies), never a panic.
    #[test]
    fn fuzz_jwt_mutated_tokens_never_verify(bytes in mutated(vec![token().into_bytes()])) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let result = runtime.block_on(verifier().verify(&text));
        if text != token() {
            prop_assert!(result.is_err(), "a changed token verified: {text}");
        } else {
            prop_assert!(result.is_ok());
        }
    }

    /// JWKS documents, cookies, queries, subprotocols and templates: no panic.
    #[test]
    fn fuzz_jwt_readers_never_panic(
        bytes in mutated(vec![
            br#"{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"},{"kty":"EC","crv":"P-256","x":"AQ","y":"AQ"}]}"#.to_vec(),
            b"a=1; session=abc.def.ghi; b".to_vec(),
            b"/ws/tenant/{id}/x?token=abc&x=%zz%4".to_vec(),
        ]),
        template in "(/(\\{[a-z]{1,3}\\}|[a-z%]{0,3})){0,4}",
    ) {
        let _ = parse_jwks(&bytes);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let _ = base64_decode(&text);
        let _ = percent_decode(&text);
        if let Ok(value) = HeaderValue::from_str(&text) {
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, value.clone());
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value.clone());
            headers.insert(header::AUTHORIZATION, value);
            let _ = (cookie(&headers, "session"), protocol_token(&headers), bearer(&headers));
            let mut uri: Uri = "/x?a=1".parse().unwrap();
            for found in [Found::Cookie("session".into()), Found::WebsocketProtocol, Found::Header] {
                strip(&mut headers, &mut uri, &found);
            }
        }
        if let Ok(uri) = text.parse::<Uri>() {
            let _ = query_param(&uri, "token");
            let mut stripped = uri.clone();
            strip(&mut HeaderMap::new(), &mut stripped, &Found::Query("token".into()));
            prop_assert!(query_param(&stripped, "token").is_none());
            for exact in [true, false] {
                let walked = match_template(&template, uri.path(), exact);
                prop_assert_eq!(walked.is_some(), template_matches(&template, uri.path(), exact));
            }
        }
    }
}
