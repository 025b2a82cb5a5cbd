//! rustls `ServerConfig` from settings. Ticket keys and the session cache live in
//! [`SessionState`], created once per process, so resumption survives reloads.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{cipher_suite, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    ProducesTickets, ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier,
};
use rustls::{ServerConfig, SupportedCipherSuite};

use super::client_auth::CrlNumbers;
use super::{SniResolver, TlsError};
use crate::config::{KxGroup, Tls12Suite, Tls13Suite, TlsSettings, TlsVersion};

/// Resumption state shared by every config this process builds.
#[derive(Clone)]
pub struct SessionState {
    /// Rotating ticket keys (aws-lc-rs rotates them every 6 hours).
    ticketer: Arc<dyn ProducesTickets>,
    /// Server-side session cache for clients resuming by session ID.
    cache: Arc<dyn StoresServerSessions>,
}

impl SessionState {
    pub fn new() -> Result<Self, TlsError> {
        Ok(Self {
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new()?,
            cache: ServerSessionMemoryCache::new(20_000),
        })
    }
}

fn tls13_suite(suite: Tls13Suite) -> SupportedCipherSuite {
    match suite {
        Tls13Suite::Aes128GcmSha256 => cipher_suite::TLS13_AES_128_GCM_SHA256,
        Tls13Suite::Aes256GcmSha384 => cipher_suite::TLS13_AES_256_GCM_SHA384,
        Tls13Suite::Chacha20Poly1305Sha256 => cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    }
}

fn tls12_suite(suite: Tls12Suite) -> SupportedCipherSuite {
    match suite {
        Tls12Suite::EcdheEcdsaAes128Gcm => cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        Tls12Suite::EcdheEcdsaAes256Gcm => cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        Tls12Suite::EcdheEcdsaChacha20 => {
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        Tls12Suite::EcdheRsaAes128Gcm => cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        Tls12Suite::EcdheRsaAes256Gcm => cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        Tls12Suite::EcdheRsaChacha20 => cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    }
}

fn group(group: KxGroup) -> &'static dyn SupportedKxGroup {
    match group {
        KxGroup::X25519Mlkem768 => kx_group::X25519MLKEM768,
        KxGroup::Secp256r1Mlkem768 => kx_group::SECP256R1MLKEM768,
        KxGroup::X25519 => kx_group::X25519,
        KxGroup::Secp256r1 => kx_group::SECP256R1,
        KxGroup::Secp384r1 => kx_group::SECP384R1,
    }
}

/// The server config for `tls`, choosing certificates through `resolver`, asking for client
/// certificates when `client_auth` is a verifier (mTLS).
pub fn build_server_config(
    tls: &TlsSettings,
    resolver: Arc<SniResolver>,
    sessions: &SessionState,
    client_auth: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<ServerConfig, TlsError> {
    let mut cipher_suites: Vec<SupportedCipherSuite> = tls
        .tls13_cipher_suites
        .iter()
        .copied()
        .map(tls13_suite)
        .collect();
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Tls12 => {
            cipher_suites.extend(tls.tls12_cipher_suites.iter().copied().map(tls12_suite));
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        }
    };
    let provider = CryptoProvider {
        cipher_suites,
        kx_groups: tls.key_exchange_groups.iter().copied().map(group).collect(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    // A resumed session skips certificate verification, so mTLS configs keep their own
    // session state, new with each build: after a reload (a CRL or CA change) every client
    // certificate is verified again.
    let own;
    let sessions = if client_auth.is_some() {
        own = SessionState::new()?;
        &own
    } else {
        sessions
    };
    let verifier = client_auth.unwrap_or_else(WebPkiClientVerifier::no_client_auth);
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The configured suite order is the server's preference (see `ServerConfigs`).
    config.ignore_client_order = true;
    config.session_storage = sessions.cache.clone();
    // Lets a hub session take its keys over once its handshake is done (see
    // `tls::established`); nothing else extracts them.
    config.enable_secret_extraction = true;
    if tls.session_tickets {
        config.ticketer = sessions.ticketer.clone();
    }
    Ok(config)
}

/// The configured suite order, and the client's for clients that list ChaCha20-Poly1305 first.
/// Those are typically phones without AES instructions, for which ChaCha20 is several times
/// faster. Everyone else gets the server's order, AES-128-GCM first by default: AES runs in
/// hardware there, and SHA-256 is cheaper than the SHA-384 of AES-256-GCM. This is the same
/// rule as Go's crypto/tls and OpenSSL's PRIORITIZE_CHACHA.
pub struct ServerConfigs {
    listener: SuiteOrders,
    /// Server names whose certificate entry has its own `client_auth`: exact names, and
    /// wildcards by their parent domain (as [`super::CertTable`] keeps them).
    exact: HashMap<String, Arc<SuiteOrders>>,
    wildcard: HashMap<String, Arc<SuiteOrders>>,
    /// The CRL numbers these configs hold, the floor for the next reload's.
    pub(super) crl_numbers: CrlNumbers,
}

/// One config in both suite orders.
struct SuiteOrders {
    server_order: Arc<ServerConfig>,
    client_order: Arc<ServerConfig>,
}

impl SuiteOrders {
    fn new(server_order: ServerConfig) -> Self {
        let mut client_order = server_order.clone();
        client_order.ignore_client_order = false;
        Self {
            server_order: Arc::new(server_order),
            client_order: Arc::new(client_order),
        }
    }
}

impl ServerConfigs {
    pub fn new(server_order: ServerConfig) -> Self {
        ServerConfigs {
            listener: SuiteOrders::new(server_order),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            crl_numbers: CrlNumbers::default(),
        }
    }

    /// `config` for handshakes naming one of `names` (a certificate entry's own client auth).
    pub(super) fn insert_named(&mut self, names: &[String], config: ServerConfig) {
        let orders = Arc::new(SuiteOrders::new(config));
        for name in names {
            match name.strip_prefix("*.") {
                Some(parent) => self.wildcard.insert(parent.to_owned(), orders.clone()),
                None => self.exact.insert(name.clone(), orders.clone()),
            };
        }
    }

    /// Per CRL issuer, when its CRL in force expires.
    pub fn crl_next_updates(&self) -> Vec<(String, i64)> {
        self.crl_numbers.next_updates()
    }

    /// The config for a ClientHello naming `server_name` (lower case) and offering
    /// `client_suites`.
    pub fn for_hello(
        &self,
        server_name: Option<&str>,
        client_suites: &[rustls::CipherSuite],
    ) -> Arc<ServerConfig> {
        let named = server_name.and_then(|name| {
            self.exact.get(name).or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        let orders = named.map_or(&self.listener, |orders| &**orders);
        if prefers_chacha(client_suites) {
            orders.client_order.clone()
        } else {
            orders.server_order.clone()
        }
    }
}

/// Whether the client's first suite is a ChaCha20-Poly1305 one.
fn prefers_chacha(suites: &[rustls::CipherSuite]) -> bool {
    use rustls::CipherSuite;
    matches!(
        suites.first(),
        Some(
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        )
    )
}

#[cfg(test)]
mod tests {
    use super::prefers_chacha;
    use rustls::CipherSuite;

    #[test]
    fn only_a_client_listing_chacha_first_gets_its_own_order() {
        assert!(prefers_chacha(&[
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            CipherSuite::TLS13_AES_128_GCM_SHA256
        ]));
        assert!(!prefers_chacha(&[
            CipherSuite::TLS13_AES_256_GCM_SHA384,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        ]));
        assert!(!prefers_chacha(&[]));
    }
}
