//! Reading certificate chains and private keys from PEM (or DER) files, with messages that
//! name the file.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::CertError;

/// The largest certificate, key or CA bundle file read. A long chain is tens of KiB and the
/// system's whole root store about 200 KiB; the cap keeps a wrong path (`/dev/zero`, a log
/// file) from being read whole into memory.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// Reads a PEM/DER file, at most [`MAX_PEM_BYTES`] (one byte more tells an oversized file, so
/// endless special files fail as soon as the cap is reached).
pub fn read_capped(path: &Path) -> Result<Vec<u8>, CertError> {
    use std::io::Read;
    let read_error = |source| CertError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(CertError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_PEM_BYTES,
        });
    }
    Ok(bytes)
}

/// As [`read_capped`], as text (CA files parsed by rcgen).
pub fn read_capped_text(path: &Path) -> Result<String, CertError> {
    String::from_utf8(read_capped(path)?).map_err(|_| CertError::Malformed {
        path: path.to_path_buf(),
        reason: "not PEM text (not UTF-8)".into(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    read_capped(path)
}

fn malformed(path: &Path, error: pem::Error, bytes: &[u8]) -> CertError {
    CertError::Malformed {
        path: path.to_path_buf(),
        reason: describe_pem_error(&error, bytes),
    }
}

/// The 1-based number of the first line `matches` accepts.
fn line_number(bytes: &[u8], matches: impl Fn(&[u8]) -> bool) -> Option<usize> {
    bytes
        .split(|b| *b == b'\n')
        .position(matches)
        .map(|index| index + 1)
}

/// A PEM parse error in the file's terms (the parser's own text shows labels and lines as
/// byte arrays).
fn describe_pem_error(error: &pem::Error, bytes: &[u8]) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(end_marker);
            // The parser starts a block at every BEGIN line, so the block left open at the
            // end of the file is the last one.
            let begin = bytes
                .split(|b| *b == b'\n')
                .enumerate()
                .filter(|(_, line)| line.starts_with(b"-----BEGIN "))
                .last()
                .map(|(index, _)| format!(" (line {})", index + 1))
                .unwrap_or_default();
            format!("PEM block 'BEGIN {label}'{begin} has no END line (expected `-----END {label}-----`; is the file cut short?)")
        }
        pem::Error::IllegalSectionStart { line } => {
            let at = line_number(bytes, |l| {
                l == line.as_slice() || l == line.trim_ascii_end()
            })
            .map(|n| format!("line {n}: "))
            .unwrap_or_default();
            format!(
                "{at}`{}` is not a PEM header (expected `-----BEGIN LABEL-----`)",
                String::from_utf8_lossy(line).trim_end()
            )
        }
        pem::Error::Base64Decode(_) => {
            "a PEM block's contents are not valid base64 (a line changed or cut?)".into()
        }
        pem::Error::SectionTooLarge => "a PEM block is too large".into(),
        pem::Error::NoItemsFound => "no PEM block of the expected kind".into(),
        other => other.to_string(),
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
        .map_err(|error| malformed(path, error, bytes))?;
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
        Err(error) => Err(malformed(path, error, bytes)),
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

    #[test]
    fn unterminated_block_is_named_with_its_line() {
        let text = "# my chain\n-----BEGIN CERTIFICATE-----\nMIIB\n";
        let error = certificates_from_bytes(text.as_bytes(), Path::new("site.pem")).unwrap_err();
        let CertError::Malformed { reason, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(
            reason,
            "PEM block 'BEGIN CERTIFICATE' (line 2) has no END line (expected `-----END CERTIFICATE-----`; is the file cut short?)"
        );
        assert_eq!(error.to_string(), format!("site.pem: malformed: {reason}"));
        let key = "-----BEGIN PRIVATE KEY-----\nMIIB\n";
        let error = private_key_from_bytes(key.as_bytes(), Path::new("site.key")).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("PEM block 'BEGIN PRIVATE KEY' (line 1) has no END line"),
            "{error}"
        );
    }

    #[test]
    fn bad_header_and_bad_base64_are_said_plainly() {
        let text = "\n-----BEGIN CERTIFICATE----\nMIIB\n-----END CERTIFICATE-----\n";
        let error = certificates_from_bytes(text.as_bytes(), Path::new("a.pem")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "a.pem: malformed: line 2: `-----BEGIN CERTIFICATE----` is not a PEM header (expected `-----BEGIN LABEL-----`)"
        );
        let text = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        let error = certificates_from_bytes(text.as_bytes(), Path::new("a.pem")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "a.pem: malformed: a PEM block's contents are not valid base64 (a line changed or cut?)"
        );
    }

    #[test]
    fn oversized_and_endless_files_are_refused_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; MAX_PEM_BYTES as usize + 1]).unwrap();
        let error = read_certificates(&big).unwrap_err();
        assert!(
            matches!(&error, CertError::TooLarge { path, limit } if *path == big && *limit == MAX_PEM_BYTES),
            "{error:?}"
        );
        assert!(error.to_string().contains("larger than 1 MiB"), "{error}");
        assert!(matches!(
            read_private_key(&big),
            Err(CertError::TooLarge { .. })
        ));
        let started = std::time::Instant::now();
        assert!(matches!(
            read_certificates(Path::new("/dev/zero")),
            Err(CertError::TooLarge { .. })
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
