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
}

impl ChallengeStore {
    /// The key authorization for an HTTP-01 token, if one is pending.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        self.http.load().get(token).cloned()
    }

    pub fn add_http(&self, token: &str, key_authorization: &str) {
        self.http.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(token.to_owned(), key_authorization.to_owned());
            map
        });
    }

    pub fn remove_http(&self, token: &str) {
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
