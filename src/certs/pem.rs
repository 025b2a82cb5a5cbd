//! Reading certificate chains and private keys from PEM (or DER) files, with messages that
//! name the file.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::CertError;

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn malformed(path: &Path, error: pem::Error) -> CertError {
    CertError::Malformed {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

/// Whether a file is DER rather than PEM: a DER structure starts with a SEQUENCE tag (0x30),
/// which is also the character `0`, so text that starts with it (a comment, a serial) is PEM
/// when it holds a PEM block.
fn is_der(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x30) && !bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// All certificates in a file, in file order (leaf first for a server chain). A file holding
/// one DER certificate is accepted too.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = read(path)?;
    certificates_from_bytes(&bytes, path)
}

pub fn certificates_from_bytes(
    bytes: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    if is_der(bytes) {
        return match x509_parser::parse_x509_certificate(bytes) {
            Ok(_) => Ok(vec![CertificateDer::from(bytes.to_vec())]),
            Err(error) => Err(CertError::Malformed {
                path: path.to_path_buf(),
                reason: format!("not a DER certificate: {error}"),
            }),
        };
    }
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| malformed(path, error))?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    for cert in &certs {
        if let Err(error) = x509_parser::parse_x509_certificate(cert) {
            return Err(CertError::Malformed {
                path: path.to_path_buf(),
                reason: format!("a certificate block does not parse: {error}"),
            });
        }
    }
    Ok(certs)
}

/// The private key in a file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), PEM or DER.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let bytes = read(path)?;
    private_key_from_bytes(&bytes, path)
}

pub fn private_key_from_bytes(
    bytes: &[u8],
    path: &Path,
) -> Result<PrivateKeyDer<'static>, CertError> {
    if is_der(bytes) {
        return PrivateKeyDer::try_from(bytes.to_vec()).map_err(|reason| CertError::Malformed {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        });
    }
    let text = String::from_utf8_lossy(bytes);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(CertError::EncryptedKey {
            path: path.to_path_buf(),
        });
    }
    match PrivateKeyDer::from_pem_slice(bytes) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(CertError::NoKey {
            path: path.to_path_buf(),
        }),
        Err(error) => Err(malformed(path, error)),
    }
}

/// PEM text for a list of certificates.
pub fn encode_certificates(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|cert| encode_block("CERTIFICATE", cert))
        .collect()
}

/// One PEM block, wrapped at 64 columns.
pub fn encode_block(label: &str, der: &[u8]) -> String {
    use std::fmt::Write;
    let encoded = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

/// Standard base64 (RFC 4648) without line breaks.
pub fn base64(bytes: &[u8]) -> String {
    base64_encode(bytes)
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "pem_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), expected);
        }
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let error = read_certificates(&missing).unwrap_err().to_string();
        assert!(
            error.contains("nope.pem") && error.contains("No such file"),
            "{error}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "hello\n").unwrap();
        let error = read_certificates(&empty).unwrap_err().to_string();
        assert!(error.contains("no certificate found"), "{error}");
        let error = read_private_key(&empty).unwrap_err().to_string();
        assert!(error.contains("no private key found"), "{error}");
    }
}
