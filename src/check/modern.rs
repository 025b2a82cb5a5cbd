//! TLS 1.3 suites and key-exchange groups, found with rustls itself: one handshake per suite
//! or group, each client offering only that one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::ServerName;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::probe::ProbeError;
use crate::certs::remote::ReadOnly;

/// What one successful handshake agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub version: String,
    pub suite: String,
    pub group: Option<String>,
}

/// A client offering only `versions`, `suites` and `groups` and accepting any certificate
/// (the chain is judged apart). `None` when rustls has no suite for those versions.
pub fn client_config(
    versions: &[&'static SupportedProtocolVersion],
    suites: Vec<SupportedCipherSuite>,
    groups: Vec<&'static dyn SupportedKxGroup>,
    alpn: &[&[u8]],
) -> Option<rustls::ClientConfig> {
    let base = rustls::crypto::aws_lc_rs::default_provider();
    let verifier = Arc::new(ReadOnly(Arc::new(base.clone())));
    let provider = CryptoProvider {
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

/// The default client (every version, suite and group rustls has) with `alpn`.
pub fn default_client_config(alpn: &[&[u8]]) -> Option<rustls::ClientConfig> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    client_config(
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        provider.cipher_suites,
        provider.kx_groups,
        alpn,
    )
}

/// Connects and completes a handshake. `Ok(None)`: the server refused the handshake.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    config: rustls::ClientConfig,
    timeout: Duration,
) -> Result<Option<TlsStream<TcpStream>>, ProbeError> {
    let name = ServerName::try_from(server_name.to_owned())
        .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .ok())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ProbeError::Timeout { addr, timeout })?
}

/// One handshake offering only `versions`, `suites` and `groups`. `Ok(None)`: refused.
pub async fn handshake(
    addr: SocketAddr,
    server_name: &str,
    versions: &[&'static SupportedProtocolVersion],
    suites: Vec<SupportedCipherSuite>,
    groups: Vec<&'static dyn SupportedKxGroup>,
    timeout: Duration,
) -> Result<Option<Negotiated>, ProbeError> {
    let Some(config) = client_config(versions, suites, groups, &[]) else {
        return Ok(None);
    };
    let Some(tls) = connect(addr, server_name, config, timeout).await? else {
        return Ok(None);
    };
    let connection = tls.get_ref().1;
    Ok(Some(Negotiated {
        version: connection
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        suite: connection
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        group: connection
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name())),
    }))
}

/// Every TLS 1.3 suite the server accepts, by IANA name.
pub async fn tls13_suites(
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
) -> Result<Vec<String>, ProbeError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mut accepted = Vec::new();
    for suite in provider
        .cipher_suites
        .iter()
        .filter(|s| s.version() == &rustls::version::TLS13)
    {
        let answer = handshake(
            addr,
            server_name,
            &[&rustls::version::TLS13],
            vec![*suite],
            provider.kx_groups.clone(),
            timeout,
        )
        .await?;
        if answer.is_some() {
            accepted.push(format!("{:?}", suite.suite()).replacen("TLS13_", "TLS_", 1));
        }
    }
    Ok(accepted)
}

/// Every key-exchange group the server accepts (TLS 1.3, or 1.2 for servers without it).
pub async fn key_exchange_groups(
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
) -> Result<Vec<String>, ProbeError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mut groups: Vec<&'static dyn SupportedKxGroup> = provider.kx_groups.clone();
    for extra in rustls::crypto::aws_lc_rs::ALL_KX_GROUPS {
        if !groups.iter().any(|g| g.name() == extra.name()) {
            groups.push(*extra);
        }
    }
    let mut accepted = Vec::new();
    for group in groups {
        let answer = handshake(
            addr,
            server_name,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
            provider.cipher_suites.clone(),
            vec![group],
            timeout,
        )
        .await?;
        if answer.is_some() {
            accepted.push(format!("{:?}", group.name()));
        }
    }
    Ok(accepted)
}
