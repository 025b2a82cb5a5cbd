//! Names of the cipher suites and key-exchange groups tlsgate can offer. Accepts IANA names
//! (`TLS_AES_128_GCM_SHA256`) and OpenSSL names (`ECDHE-RSA-AES128-GCM-SHA256`, as the seeds'
//! nginx and HAProxy configs spell them). Only AEAD suites with ECDHE exist here: anything else
//! is refused with the reason.

use serde::{Serialize, Serializer};

macro_rules! named_enum {
    ($name:ident { $($variant:ident => [$iana:literal $(, $alias:literal)*]),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The canonical (IANA) name.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $iana),+ }
            }

            /// Looks a name up, case-insensitively, among canonical names and aliases.
            pub fn from_name(text: &str) -> Option<Self> {
                let text = text.trim();
                $(
                    if text.eq_ignore_ascii_case($iana) $(|| text.eq_ignore_ascii_case($alias))* {
                        return Some($name::$variant);
                    }
                )+
                None
            }

            pub fn valid_names() -> String {
                Self::ALL.iter().map(|v| v.name()).collect::<Vec<_>>().join(", ")
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
    };
}

named_enum!(Tls13Suite {
    Aes128GcmSha256 => ["TLS_AES_128_GCM_SHA256", "TLS13_AES_128_GCM_SHA256"],
    Aes256GcmSha384 => ["TLS_AES_256_GCM_SHA384", "TLS13_AES_256_GCM_SHA384"],
    Chacha20Poly1305Sha256 => ["TLS_CHACHA20_POLY1305_SHA256", "TLS13_CHACHA20_POLY1305_SHA256"],
});

named_enum!(Tls12Suite {
    EcdheEcdsaAes128Gcm => ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"],
    EcdheEcdsaAes256Gcm => ["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384"],
    EcdheEcdsaChacha20 => ["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"],
    EcdheRsaAes128Gcm => ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256"],
    EcdheRsaAes256Gcm => ["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384"],
    EcdheRsaChacha20 => ["TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-RSA-CHACHA20-POLY1305"],
});

named_enum!(KxGroup {
    X25519Mlkem768 => ["X25519MLKEM768"],
    Secp256r1Mlkem768 => ["SecP256r1MLKEM768", "P256MLKEM768"],
    X25519 => ["X25519"],
    Secp256r1 => ["secp256r1", "P-256", "prime256v1"],
    Secp384r1 => ["secp384r1", "P-384"],
});

/// Why a suite that parses as a real suite name is still refused, when it is a known weak one.
pub fn refusal_reason(text: &str) -> Option<&'static str> {
    let upper = text.to_ascii_uppercase();
    let weak = ["CBC", "RC4", "3DES", "DES-", "NULL", "EXPORT", "MD5", "CCM"];
    let looks_like_suite = upper.starts_with("TLS_")
        || upper.contains("AES")
        || upper.contains("ECDHE")
        || upper.contains("RSA");
    if !looks_like_suite {
        return None;
    }
    if upper.ends_with("_SHA") || upper.ends_with("-SHA") || weak.iter().any(|w| upper.contains(w))
    {
        return Some("it is not an AEAD suite (CBC, RC4, 3DES, NULL and EXPORT are never offered)");
    }
    if !upper.contains("ECDHE") {
        return Some("it has no forward secrecy (only ECDHE key exchange is offered)");
    }
    None
}

/// The defaults: every AEAD suite, AES-128-GCM first (hardware AES and SHA-256 make it the
/// cheapest; 128-bit keys are Mozilla's and Go's first choice too). Clients that list
/// ChaCha20 first get it regardless (see `tls::ServerConfigs`).
pub fn default_tls13() -> Vec<Tls13Suite> {
    vec![
        Tls13Suite::Aes128GcmSha256,
        Tls13Suite::Aes256GcmSha384,
        Tls13Suite::Chacha20Poly1305Sha256,
    ]
}

pub fn default_tls12() -> Vec<Tls12Suite> {
    vec![
        Tls12Suite::EcdheEcdsaAes128Gcm,
        Tls12Suite::EcdheEcdsaAes256Gcm,
        Tls12Suite::EcdheEcdsaChacha20,
        Tls12Suite::EcdheRsaAes128Gcm,
        Tls12Suite::EcdheRsaAes256Gcm,
        Tls12Suite::EcdheRsaChacha20,
    ]
}

/// Hybrid post-quantum first, then classical groups for older clients.
pub fn default_groups() -> Vec<KxGroup> {
    vec![
        KxGroup::X25519Mlkem768,
        KxGroup::X25519,
        KxGroup::Secp256r1,
        KxGroup::Secp384r1,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_naming_schemes_resolve() {
        assert_eq!(
            Tls12Suite::from_name("ECDHE-RSA-AES128-GCM-SHA256"),
            Some(Tls12Suite::EcdheRsaAes128Gcm)
        );
        assert_eq!(
            Tls13Suite::from_name("tls_aes_128_gcm_sha256"),
            Some(Tls13Suite::Aes128GcmSha256)
        );
        assert_eq!(KxGroup::from_name("P-256"), Some(KxGroup::Secp256r1));
    }

    #[test]
    fn weak_suites_are_explained() {
        assert!(refusal_reason("ECDHE-RSA-AES128-SHA").is_some());
        assert!(refusal_reason("TLS_RSA_WITH_AES_128_GCM_SHA256")
            .is_some_and(|r| r.contains("forward secrecy")));
        assert!(refusal_reason("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256").is_some());
        assert!(refusal_reason("banana").is_none());
    }
}
