//! What a cipher suite's IANA name says about it: key exchange, cipher and strength. Grading
//! and the cipher findings read these traits, never the names themselves.

/// How the session key is agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyExchange {
    /// Ephemeral (EC)DH, or any TLS 1.3 suite: forward secret.
    Ephemeral,
    /// The client encrypts the secret to the server's RSA key: no forward secrecy.
    Rsa,
}

/// The bulk cipher's family, from sound to broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CipherKind {
    Aead,
    Cbc,
    TripleDes,
    Rc4,
    Export,
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuiteTraits {
    pub key_exchange: KeyExchange,
    pub kind: CipherKind,
    /// Effective symmetric strength in bits (3DES counts 112, EXPORT 40, NULL 0).
    pub bits: u16,
}

impl SuiteTraits {
    pub fn of(name: &str) -> SuiteTraits {
        let key_exchange = if name.starts_with("TLS_RSA_") {
            KeyExchange::Rsa
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
        } else {
            let bits = if name.contains("_128_") { 128 } else { 256 };
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

    /// One short phrase on what is wrong with the suite, if anything.
    pub fn weakness(&self) -> Option<&'static str> {
        match self.kind {
            CipherKind::Null => Some("no encryption at all"),
            CipherKind::Export => Some("EXPORT-grade 40-bit encryption (FREAK/Logjam)"),
            CipherKind::Rc4 => Some("RC4 is broken (RFC 7465 forbids it)"),
            CipherKind::TripleDes => Some("3DES has 64-bit blocks (SWEET32)"),
            CipherKind::Cbc if self.key_exchange == KeyExchange::Rsa => {
                Some("RSA key exchange (no forward secrecy) and CBC mode")
            }
            CipherKind::Cbc => Some("CBC mode (padding-oracle attacks such as Lucky13)"),
            CipherKind::Aead if self.key_exchange == KeyExchange::Rsa => {
                Some("RSA key exchange: no forward secrecy")
            }
            CipherKind::Aead => None,
        }
    }

    /// Broken, not merely dated: a server accepting it fails the check.
    pub fn is_broken(&self) -> bool {
        self.kind >= CipherKind::TripleDes
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
            (KeyExchange::Rsa, CipherKind::Cbc, 256)
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
    }
}
