//! Combined PEM files and Kubernetes TLS Secret manifests.

use std::path::Path;

use super::pem::{encode_certificates, read_certificates, read_private_key};
use super::CertError;

/// Certificate, then chain, then key, each checked to parse (HAProxy's `crt` format).
pub fn combined_pem(cert: &Path, key: &Path, chain: &[&Path]) -> Result<String, CertError> {
    let mut certs = read_certificates(cert)?;
    for file in chain {
        certs.extend(read_certificates(file)?);
    }
    read_private_key(key)?;
    let key_pem = std::fs::read_to_string(key).map_err(|source| CertError::Read {
        path: key.to_path_buf(),
        source,
    })?;
    let key_block = key_pem
        .find("-----BEGIN")
        .map(|start| &key_pem[start..])
        .unwrap_or(&key_pem);
    Ok(format!(
        "{}{}",
        encode_certificates(&certs),
        key_block.trim_end().to_owned() + "\n"
    ))
}

/// A `kubernetes.io/tls` Secret, as `kubectl create secret tls NAME --cert --key` makes.
pub fn k8s_secret(
    name: &str,
    namespace: Option<&str>,
    cert: &Path,
    key: &Path,
) -> Result<String, CertError> {
    let certs = read_certificates(cert)?;
    read_private_key(key)?;
    let key_bytes = std::fs::read(key).map_err(|source| CertError::Read {
        path: key.to_path_buf(),
        source,
    })?;
    let namespace = namespace
        .map(|ns| format!("  namespace: {ns}\n"))
        .unwrap_or_default();
    Ok(format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n{namespace}type: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        super::pem::base64(encode_certificates(&certs).as_bytes()),
        super::pem::base64(&key_bytes),
    ))
}
