//! Property tests of PEM/DER reading. Seeds: certificates and keys made by the crate's own
//! generator (as `tlsgate cert` makes them), in PEM and DER.

use std::sync::OnceLock;

use proptest::prelude::*;

use super::*;
use crate::certs::generate::{self, KeyAlgorithm};
use crate::fuzzing::{self, mutated};

struct Seeds {
    chain_pem: String,
    chain: Vec<CertificateDer<'static>>,
    keys_pem: Vec<String>,
}

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let day = std::time::Duration::from_secs(86_400);
        let ca = generate::CertificateAuthority::new("fuzz CA", day, KeyAlgorithm::EcdsaP256)
            .expect("a CA");
        let leaf = ca
            .issue(
                &["fuzz.test".to_owned(), "127.0.0.1".to_owned()],
                day,
                KeyAlgorithm::Ed25519,
                generate::Usage::Server,
            )
            .expect("a leaf");
        let own = generate::self_signed(&["self.test".to_owned()], day, KeyAlgorithm::EcdsaP384)
            .expect("self-signed");
        Seeds {
            chain_pem: format!("{}{}", leaf.cert_pem, ca.cert_pem),
            chain: vec![leaf.der.clone(), ca.cert_der.clone()],
            keys_pem: vec![leaf.key_pem, own.key_pem, ca.key_pem()],
        }
    })
}

fn path() -> &'static Path {
    Path::new("fuzz.pem")
}

fn all_seeds() -> Vec<Vec<u8>> {
    let seeds = seeds();
    let mut all = vec![
        seeds.chain_pem.clone().into_bytes(),
        seeds.chain[0].to_vec(),
    ];
    for key in &seeds.keys_pem {
        all.push(key.clone().into_bytes());
        if let Ok(der) = private_key_from_bytes(key.as_bytes(), path()) {
            all.push(der.secret_der().to_vec());
        }
    }
    all
}

#[test]
fn fuzz_pem_generated_files_read_back() {
    let seeds = seeds();
    let read = certificates_from_bytes(seeds.chain_pem.as_bytes(), path()).expect("the chain");
    assert_eq!(read, seeds.chain);
    let der = certificates_from_bytes(&seeds.chain[0], path()).expect("DER");
    assert_eq!(der, seeds.chain[..1]);
    for key in &seeds.keys_pem {
        let der = private_key_from_bytes(key.as_bytes(), path()).expect("the key");
        let again = private_key_from_bytes(der.secret_der(), path()).expect("DER key");
        assert_eq!(again.secret_der(), der.secret_der());
    }
}

/// Found by `fuzz_pem_round_trips`: a PEM file whose text starts with `0` (0x30, the DER
/// SEQUENCE tag) was read as DER and refused.
#[test]
fn fuzz_regression_pem_text_starting_with_zero_is_pem() {
    let seeds = seeds();
    let text = format!("0 serial\n{}", seeds.chain_pem);
    let read = certificates_from_bytes(text.as_bytes(), path()).expect("PEM");
    assert_eq!(read, seeds.chain);
    let key = format!("0\n{}", seeds.keys_pem[0]);
    assert!(private_key_from_bytes(key.as_bytes(), path()).is_ok());
}

proptest! {
    #![proptest_config(fuzzing::config(3000))]

    /// Mutated PEM and DER, read both as certificates and as keys: an error or a result,
    /// never a panic; certificates that come back each parse as X.509.
    #[test]
    fn fuzz_pem_mutated_never_panics(bytes in mutated(all_seeds())) {
        if let Ok(certs) = certificates_from_bytes(&bytes, path()) {
            prop_assert!(!certs.is_empty());
            for cert in &certs {
                prop_assert!(x509_parser::parse_x509_certificate(cert).is_ok());
            }
        }
        let _ = private_key_from_bytes(&bytes, path());
    }

    /// What we write reads back: the chain re-encoded, with CRLF line ends and text around
    /// the blocks as tools leave it; any bytes in a block through our base64.
    #[test]
    fn fuzz_pem_round_trips(
        crlf in any::<bool>(),
        before in "[ -~\n]{0,80}",
        after in "[ -~\n]{0,80}",
        der in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let seeds = seeds();
        let mut text = format!("{before}\n{}{after}", encode_certificates(&seeds.chain));
        if crlf {
            text = text.replace('\n', "\r\n");
        }
        if !before.contains("-----") && !after.contains("-----") {
            let read = certificates_from_bytes(text.as_bytes(), path());
            prop_assert_eq!(read.ok(), Some(seeds.chain.clone()));
        }
        let block = encode_block("CERTIFICATE", &der);
        let read: Result<Vec<CertificateDer<'_>>, _> =
            CertificateDer::pem_slice_iter(block.as_bytes()).collect();
        prop_assert_eq!(read.ok(), Some(vec![CertificateDer::from(der.clone())]));
    }
}
