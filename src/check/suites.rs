//! What a cipher suite's IANA name says about it: key exchange, cipher and strength. Grading
//! and the cipher findings read these traits, never the names themselves.

/// How the session key is agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyExchange {
    /// Ephemeral (EC)DH, or any TLS 1.3 suite: forward secret.
    Ephemeral,
    /// RSA key transport or static (EC)DH: the server's long-term key decrypts every recorded
    /// session, so no forward secrecy.
    Static,
    /// Anonymous (EC)DH: no server authentication at all.
    Anonymous,
}

/// The bulk cipher's family, from sound to broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CipherKind {
    Aead,
    Cbc,
    TripleDes,
    Rc4,
    Des,
    Export,
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuiteTraits {
    pub key_exchange: KeyExchange,
    pub kind: CipherKind,
    /// Effective symmetric strength in bits (3DES counts 112, DES 56, EXPORT 40, NULL 0).
    pub bits: u16,
}

impl SuiteTraits {
    pub fn of(name: &str) -> SuiteTraits {
        let key_exchange = if name.contains("_anon_") {
            KeyExchange::Anonymous
        } else if name.starts_with("TLS_RSA_")
            || name.starts_with("TLS_ECDH_")
            || name.starts_with("TLS_DH_")
        {
            KeyExchange::Static
        } else {
            KeyExchange::Ephemeral
        };
        let (kind, bits) = if name.contains("_EXPORT") {
            (CipherKind::Export, 40)
        } else if name.contains("_NULL_") {
            (CipherKind::Null, 0)
        } else if name.contains("_RC4_") {
            (CipherKind::Rc4, 128)
        } else if name.contains("3DES") {
            (CipherKind::TripleDes, 112)
        } else if name.contains("_DES_") {
            (CipherKind::Des, 56)
        } else {
            let bits = if name.contains("_256") || name.contains("CHACHA20") {
                256
            } else {
                128
            };
            if name.contains("_CBC_") {
                (CipherKind::Cbc, bits)
            } else {
                (CipherKind::Aead, bits)
            }
        };
        SuiteTraits {
            key_exchange,
            kind,
            bits,
        }
    }

    pub fn forward_secret(&self) -> bool {
        self.key_exchange == KeyExchange::Ephemeral
    }

    /// One short phrase on what is wrong with the suite, if anything.
    pub fn weakness(&self) -> Option<&'static str> {
        if self.key_exchange == KeyExchange::Anonymous {
            return Some(
                "anonymous key exchange: no server authentication (trivial man-in-the-middle)",
            );
        }
        let static_kx = self.key_exchange == KeyExchange::Static;
        match self.kind {
            CipherKind::Null => Some("no encryption at all"),
            CipherKind::Export => Some("EXPORT-grade 40-bit encryption (FREAK/Logjam)"),
            CipherKind::Des => Some("single DES: 56-bit keys, brute-forced in hours"),
            CipherKind::Rc4 => Some("RC4 is broken (RFC 7465 forbids it)"),
            CipherKind::TripleDes => Some("3DES has 64-bit blocks (SWEET32)"),
            CipherKind::Cbc if static_kx => {
                Some("static key exchange (no forward secrecy) and CBC mode")
            }
            CipherKind::Cbc => Some("CBC mode (padding-oracle attacks such as Lucky13)"),
            CipherKind::Aead if static_kx => Some("static key exchange: no forward secrecy"),
            CipherKind::Aead => None,
        }
    }

    /// Broken, not merely dated: a server accepting it fails the check.
    pub fn is_broken(&self) -> bool {
        self.kind >= CipherKind::TripleDes || self.key_exchange == KeyExchange::Anonymous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traits_from_names() {
        let gcm = SuiteTraits::of("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
        assert_eq!(
            (gcm.key_exchange, gcm.kind, gcm.bits),
            (KeyExchange::Ephemeral, CipherKind::Aead, 128)
        );
        assert_eq!(gcm.weakness(), None);
        assert_eq!(SuiteTraits::of("TLS_CHACHA20_POLY1305_SHA256").bits, 256);
        let rsa = SuiteTraits::of("TLS_RSA_WITH_AES_256_CBC_SHA256");
        assert_eq!(
            (rsa.key_exchange, rsa.kind, rsa.bits),
            (KeyExchange::Static, CipherKind::Cbc, 256)
        );
        assert!(!rsa.is_broken());
        assert_eq!(
            SuiteTraits::of("TLS_RSA_WITH_3DES_EDE_CBC_SHA").kind,
            CipherKind::TripleDes
        );
        assert_eq!(
            SuiteTraits::of("TLS_ECDHE_RSA_WITH_RC4_128_SHA").kind,
            CipherKind::Rc4
        );
        assert_eq!(SuiteTraits::of("TLS_RSA_EXPORT_WITH_RC4_40_MD5").bits, 40);
        assert_eq!(SuiteTraits::of("TLS_RSA_WITH_NULL_SHA").bits, 0);
        assert!(SuiteTraits::of("TLS_RSA_WITH_NULL_SHA").is_broken());
        let anon = SuiteTraits::of("TLS_DH_anon_WITH_AES_128_GCM_SHA256");
        assert_eq!(anon.key_exchange, KeyExchange::Anonymous);
        assert!(anon.is_broken());
        assert!(!SuiteTraits::of("TLS_ECDH_RSA_WITH_AES_128_GCM_SHA256").forward_secret());
        assert!(SuiteTraits::of("TLS_DHE_RSA_WITH_AES_128_GCM_SHA256").forward_secret());
        let des = SuiteTraits::of("TLS_RSA_WITH_DES_CBC_SHA");
        assert_eq!((des.kind, des.bits), (CipherKind::Des, 56));
        assert_eq!(SuiteTraits::of("TLS_RSA_WITH_SEED_CBC_SHA").bits, 128);
        assert_eq!(
            SuiteTraits::of("TLS_ECDHE_ECDSA_WITH_AES_256_CCM").kind,
            CipherKind::Aead
        );
        assert_eq!(SuiteTraits::of("TLS_AES_128_GCM_SHA256").bits, 128);
    }
}
