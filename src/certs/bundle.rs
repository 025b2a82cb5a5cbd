//! Combined PEM files and Kubernetes TLS Secret manifests.

use std::path::Path;

use rustls::pki_types::PrivateKeyDer;

use super::pem::{encode_block, encode_certificates, read_certificates, read_private_key};
use super::CertError;

/// Certificate, then chain, then key, each parsed first (HAProxy's `crt` format). The key is
/// re-encoded from what was parsed, so a combined PEM or a DER key given as `key` works.
pub fn combined_pem(cert: &Path, key: &Path, chain: &[&Path]) -> Result<String, CertError> {
    let mut certs = read_certificates(cert)?;
    for file in chain {
        certs.extend(read_certificates(file)?);
    }
    let key_pem = key_to_pem(&read_private_key(key)?);
    Ok(format!("{}{key_pem}", encode_certificates(&certs)))
}

/// A `kubernetes.io/tls` Secret, as `kubectl create secret tls NAME --cert --key` makes.
pub fn k8s_secret(
    name: &str,
    namespace: Option<&str>,
    cert: &Path,
    key: &Path,
) -> Result<String, CertError> {
    let certs = read_certificates(cert)?;
    let key_pem = key_to_pem(&read_private_key(key)?);
    let namespace = namespace
        .map(|ns| format!("  namespace: {ns}\n"))
        .unwrap_or_default();
    Ok(format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n{namespace}type: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        super::pem::base64(encode_certificates(&certs).as_bytes()),
        super::pem::base64(key_pem.as_bytes()),
    ))
}

/// The key as PEM in its own format (PKCS#8, PKCS#1 or SEC1).
fn key_to_pem(key: &PrivateKeyDer<'_>) -> String {
    let label = match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    encode_block(label, key.secret_der())
}
