//! The main listener's rustls configs, built by one function for `serve` and `config check`,
//! so a setting rustls refuses is reported the same way by both.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::client_auth::{self, CrlNumbers};
use super::{
    build_server_config, CertTable, ServerConfigs, SessionState, SniResolver, TlsEdge, TlsError,
};
use crate::acme::challenges::{AlpnChallengeResolver, ACME_TLS_ALPN};
use crate::acme::ChallengeStore;
use crate::config::TlsSettings;

impl TlsEdge {
    /// The main listener's TLS side for `tls` and the certificates in `table` (from
    /// [`super::load_certificates`]); `challenges`: the ACME challenge store, when ACME is on.
    pub fn build(
        tls: &TlsSettings,
        table: CertTable,
        challenges: Option<&Arc<ChallengeStore>>,
    ) -> Result<Self, TlsError> {
        let resolver = Arc::new(SniResolver::new(table));
        let sessions = SessionState::new()?;
        let configs = build_configs(tls, &resolver, &sessions, &CrlNumbers::default())?;
        let acme_config = match challenges {
            Some(store) => {
                // A TLS-ALPN-01 validator has no client certificate.
                let mut acme = build_server_config(tls, resolver.clone(), &sessions, None)?;
                acme.cert_resolver = Arc::new(AlpnChallengeResolver(store.clone()));
                acme.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
                Some(Arc::new(acme))
            }
            None => None,
        };
        Ok(Self {
            resolver,
            configs: ArcSwap::from_pointee(configs),
            sessions,
            acme_config,
        })
    }

    /// The configs for new settings (a reload), over this edge's resolver and session state,
    /// so sessions resume across the swap. Nothing changes until the caller stores them.
    /// CA and CRL files are read again; a CRL whose number is below the one in force is refused.
    pub fn configs_for(&self, tls: &TlsSettings) -> Result<ServerConfigs, TlsError> {
        let floor = self.configs.load().crl_numbers.clone();
        build_configs(tls, &self.resolver, &self.sessions, &floor)
    }
}

/// The listener's config and one per certificate entry with its own `client_auth`.
fn build_configs(
    tls: &TlsSettings,
    resolver: &Arc<SniResolver>,
    sessions: &SessionState,
    floor: &CrlNumbers,
) -> Result<ServerConfigs, TlsError> {
    let mut loaded = CrlNumbers::default();
    let verifier = client_auth::verifier(&tls.client_auth, floor, &mut loaded)?;
    let config = build_server_config(tls, resolver.clone(), sessions, verifier)?;
    let mut configs = ServerConfigs::new(config);
    for entry in &tls.certificates {
        if let Some(auth) = &entry.client_auth {
            let verifier = client_auth::verifier(auth, floor, &mut loaded)?;
            let config = build_server_config(tls, resolver.clone(), sessions, verifier)?;
            configs.insert_named(&entry.names, config);
        }
    }
    configs.crl_numbers = loaded;
    Ok(configs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KxGroup, Tls12Suite, Tls13Suite, TlsVersion};

    /// A certificate entry's own client auth serves its exact and wildcard names (one label),
    /// and everything else gets the listener's config.
    #[test]
    fn per_name_configs_are_chosen_by_sni() {
        use crate::certs::generate::{CertificateAuthority, KeyAlgorithm};
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::new(
            "clients",
            std::time::Duration::from_secs(86_400),
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
        std::fs::write(dir.path().join("ca.crt"), &ca.cert_pem).unwrap();
        let yaml = "tls:\n  certificates:\n    - pem_file: s.pem\n      names: [secure.test, '*.mtls.test']\n      client_auth: {ca_files: [ca.crt]}\n";
        let tls = crate::config::load_str(
            yaml,
            Some(&dir.path().join("tlsgate.yaml")),
            &Default::default(),
            &|_| None,
        )
        .unwrap()
        .tls;
        let edge = TlsEdge::build(&tls, CertTable::default(), None).unwrap();
        let configs = edge.configs.load();
        let pick = |name: Option<&str>| configs.for_hello(name, &[]);
        let named = pick(Some("secure.test"));
        assert!(Arc::ptr_eq(&named, &pick(Some("a.mtls.test"))));
        let listener = pick(None);
        assert!(!Arc::ptr_eq(&named, &listener));
        for other in ["b.a.mtls.test", "mtls.test", "other.test"] {
            assert!(Arc::ptr_eq(&pick(Some(other)), &listener), "{other}");
        }
    }

    /// rustls refuses a config with no suite for the enabled versions, no groups, or a suite
    /// no group can serve. Validation leaves none of these (lists are never empty, TLS 1.3 is
    /// always on, every group is ECDHE), so even the narrowest lists build. If this fails, a
    /// new option needs a validation rule rather than a start-up failure.
    #[test]
    fn every_setting_validation_accepts_builds() {
        let base = crate::config::load_str("", None, &Default::default(), &|_| None)
            .expect("defaults validate")
            .tls;
        let store = Arc::new(ChallengeStore::default());
        for min_version in [TlsVersion::Tls12, TlsVersion::Tls13] {
            for tls13 in Tls13Suite::ALL {
                for tls12 in Tls12Suite::ALL {
                    for group in KxGroup::ALL {
                        let tls = TlsSettings {
                            min_version,
                            tls13_cipher_suites: vec![*tls13],
                            tls12_cipher_suites: vec![*tls12],
                            key_exchange_groups: vec![*group],
                            ..base.clone()
                        };
                        let built = TlsEdge::build(&tls, CertTable::default(), Some(&store));
                        assert!(built.is_ok(), "{tls:?}: {:?}", built.err());
                    }
                }
            }
        }
    }
}
