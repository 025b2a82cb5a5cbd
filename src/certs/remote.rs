//! Fetching the certificate chain a TLS server sends, for `cert inspect` and `cert expiry`.
//! The chain is read, never trusted: verification is a separate step.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use super::CertError;

/// `https://HOST[:PORT][/path]` → (host, port).
pub fn parse_url(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() {
        return None;
    }
    if let Some(inner) = authority.strip_prefix('[') {
        let (host, after) = inner.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None if after.is_empty() => 443,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((authority.to_owned(), 443)),
    }
}

/// Accepts any chain: used only to read what a server sends (the chain is judged apart).
/// Handshake signatures are still checked.
#[derive(Debug)]
pub struct ReadOnly(pub Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for ReadOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client offering only `versions`, `suites` and `groups` and reading any chain (it is judged
/// apart). `None` when rustls has no suite for those versions.
pub fn client_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: Vec<rustls::SupportedCipherSuite>,
    groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
    alpn: &[&[u8]],
) -> Option<rustls::ClientConfig> {
    let base = rustls::crypto::aws_lc_rs::default_provider();
    let verifier = Arc::new(ReadOnly(Arc::new(base.clone())));
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites,
        kx_groups: groups,
        ..base
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Some(config)
}

/// The default reading client (TLS 1.3 and 1.2, every suite and group rustls has) with `alpn`.
pub fn default_client_config(alpn: &[&[u8]]) -> Option<rustls::ClientConfig> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    client_config(
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        provider.cipher_suites,
        provider.kx_groups,
        alpn,
    )
}

/// The chain a connected server sent, leaf first (empty if none).
pub fn peer_chain(connection: &rustls::ClientConnection) -> Vec<CertificateDer<'static>> {
    connection
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default()
}

/// Connects to `host:port` (SNI `host`) and returns the chain the server sent.
pub async fn fetch_chain(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let target = format!("{host}:{port}");
    let fail = |reason: String| CertError::Remote {
        target: target.clone(),
        reason,
    };
    let config =
        default_client_config(&[]).ok_or_else(|| fail("no TLS client configuration".into()))?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| fail(e.to_string()))?;
    let connect = async {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("TLS handshake failed: {e}")))?;
        let chain = peer_chain(tls.get_ref().1);
        if chain.is_empty() {
            return Err(fail("the server sent no certificate".into()));
        }
        Ok(chain)
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| fail(format!("no answer within {}s", timeout.as_secs())))?
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://example.com"),
            Some(("example.com".into(), 443))
        );
        assert_eq!(
            parse_url("https://example.com:8443/x"),
            Some(("example.com".into(), 8443))
        );
        assert_eq!(parse_url("https://[::1]:8443"), Some(("::1".into(), 8443)));
        assert_eq!(parse_url("http://example.com"), None);
        assert_eq!(parse_url("https://a:notaport"), None);
    }
}
