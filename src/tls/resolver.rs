//! Certificate choice per ClientHello: exact name, then wildcard, then the default (which also
//! serves clients that send no SNI). Within a name, the first certificate whose key can sign
//! with a scheme the client offers wins, so an RSA and an ECDSA certificate can share a name.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

#[derive(Debug, Default)]
pub struct CertTable {
    exact: HashMap<String, Vec<Arc<CertifiedKey>>>,
    /// Keyed by the parent domain: `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Vec<Arc<CertifiedKey>>>,
    default: Vec<Arc<CertifiedKey>>,
}

impl CertTable {
    /// Adds a certificate for `names` (normalised DNS names or `*.` wildcards).
    pub fn insert(&mut self, names: &[String], key: Arc<CertifiedKey>, is_default: bool) {
        for name in names {
            let slot = match name.strip_prefix("*.") {
                Some(parent) => self.wildcard.entry(parent.to_owned()).or_default(),
                None => self.exact.entry(name.clone()).or_default(),
            };
            slot.push(key.clone());
        }
        if is_default {
            self.default.push(key);
        }
    }

    /// The certificates that may serve a server name (already lower case).
    fn candidates(&self, server_name: Option<&str>) -> &[Arc<CertifiedKey>] {
        server_name
            .and_then(|name| {
                self.exact.get(name).or_else(|| {
                    let (_, parent) = name.split_once('.')?;
                    self.wildcard.get(parent)
                })
            })
            .unwrap_or(&self.default)
    }

    /// The certificate for a server name (already lower case) and the client's signature
    /// schemes.
    pub fn lookup(
        &self,
        server_name: Option<&str>,
        schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let candidates = self.candidates(server_name);
        candidates
            .iter()
            .find(|key| key.key.choose_scheme(schemes).is_some())
            .or_else(|| candidates.first())
            .cloned()
    }
}

/// The resolver rustls calls; the table behind it is swapped whole on reload or renewal.
#[derive(Debug)]
pub struct SniResolver {
    table: ArcSwap<CertTable>,
}

impl SniResolver {
    pub fn new(table: CertTable) -> Self {
        Self {
            table: ArcSwap::from_pointee(table),
        }
    }

    /// Whether some certificate serves this name (lower case), the default included.
    pub fn covers(&self, server_name: Option<&str>) -> bool {
        !self.table.load().candidates(server_name).is_empty()
    }

    /// Replaces every certificate at once; handshakes already under way keep the old ones.
    pub fn replace(&self, table: CertTable) {
        self.table.store(Arc::new(table));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        self.table
            .load()
            .lookup(name.as_deref(), hello.signature_schemes())
    }
}
