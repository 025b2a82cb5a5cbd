//! Pending challenge answers, read by the listeners: HTTP-01 tokens for the plain-HTTP
//! listener and TLS-ALPN-01 certificates for ClientHellos offering `acme-tls/1`. Swapped
//! whole (ArcSwap), so the request path never locks.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, Default)]
pub struct ChallengeStore {
    http: ArcSwap<HashMap<String, String>>,
    alpn: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// `DATA_DIR/acme/http-01/`: HTTP-01 answers shared between processes, so
    /// `tlsgate acme issue` can order while a running server answers the validation.
    shared_dir: Option<std::path::PathBuf>,
}

/// ACME tokens are base64url; anything else never becomes a path.
fn safe_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 128
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ChallengeStore {
    /// A store whose HTTP-01 answers are also kept in `DATA_DIR/acme/http-01/`.
    pub fn shared(data_dir: &std::path::Path) -> Self {
        Self {
            shared_dir: Some(data_dir.join("acme").join("http-01")),
            ..Self::default()
        }
    }

    /// The key authorization for an HTTP-01 token, if one is pending (here or in another
    /// tlsgate process sharing the data folder).
    pub fn http_answer(&self, token: &str) -> Option<String> {
        if let Some(answer) = self.http.load().get(token) {
            return Some(answer.clone());
        }
        let dir = self.shared_dir.as_ref()?;
        if !safe_token(token) {
            return None;
        }
        std::fs::read_to_string(dir.join(token)).ok()
    }

    /// The answer to an HTTP-01 validation request (`GET /.well-known/acme-challenge/TOKEN`),
    /// when its token is pending: the one responder of the server's plain-HTTP listener and
    /// of `tlsgate acme`'s temporary one.
    pub fn http_response<B>(&self, request: &http::Request<B>) -> Option<crate::http::Response> {
        let token = request
            .uri()
            .path()
            .strip_prefix(crate::http::redirect::ACME_CHALLENGE_PREFIX)?;
        let answer = self.http_answer(token)?;
        let mut response = hyper::Response::new(crate::http::full(answer));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/octet-stream"),
        );
        Some(response)
    }

    pub fn add_http(&self, token: &str, key_authorization: &str) {
        if let (Some(dir), true) = (&self.shared_dir, safe_token(token)) {
            let written = crate::certs::store::ensure_private_dir(dir).and_then(|()| {
                crate::certs::store::write_atomic(
                    &dir.join(token),
                    key_authorization.as_bytes(),
                    crate::certs::store::PUBLIC_MODE,
                )
            });
            if let Err(error) = written {
                tracing::warn!(%error, "cannot share the HTTP-01 answer with other processes");
            }
        }
        self.http.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(token.to_owned(), key_authorization.to_owned());
            map
        });
    }

    pub fn remove_http(&self, token: &str) {
        if let (Some(dir), true) = (&self.shared_dir, safe_token(token)) {
            let _ = std::fs::remove_file(dir.join(token));
        }
        self.http.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(token);
            map
        });
    }

    pub fn add_alpn(&self, name: &str, certificate: Arc<CertifiedKey>) {
        self.alpn.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(name.to_owned(), certificate.clone());
            map
        });
    }

    pub fn remove_alpn(&self, name: &str) {
        self.alpn.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(name);
            map
        });
    }
}

/// Serves TLS-ALPN-01 challenge certificates by SNI.
#[derive(Debug)]
pub struct AlpnChallengeResolver(pub Arc<ChallengeStore>);

impl ResolvesServerCert for AlpnChallengeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        self.0.alpn.load().get(&name).cloned()
    }
}

/// The protocol a TLS-ALPN-01 validator offers (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_shared_through_the_data_folder_and_tokens_never_escape_it() {
        let dir = tempfile::tempdir().unwrap();
        let writer = ChallengeStore::shared(dir.path());
        let reader = ChallengeStore::shared(dir.path());
        writer.add_http("tok-EN_1", "tok-EN_1.thumb");
        assert_eq!(
            reader.http_answer("tok-EN_1").as_deref(),
            Some("tok-EN_1.thumb")
        );
        // A readable file right outside the answers folder stays out of reach.
        std::fs::write(dir.path().join("acme").join("secret"), "do not serve").unwrap();
        assert_eq!(reader.http_answer("../secret"), None);
        assert_eq!(reader.http_answer("..%2Fsecret"), None);
        writer.remove_http("tok-EN_1");
        assert_eq!(reader.http_answer("tok-EN_1"), None);
    }
}
