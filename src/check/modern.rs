//! TLS 1.3 suites and key-exchange groups, found with rustls itself: one handshake per suite
//! or group, each client offering only that one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::SupportedKxGroup;
use rustls::pki_types::ServerName;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::probe::ProbeError;

pub use crate::certs::remote::{client_config, default_client_config};

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

/// One handshake offering only `versions`, `suites` and `groups`: whether the server took it.
pub async fn handshake(
    addr: SocketAddr,
    server_name: &str,
    versions: &[&'static SupportedProtocolVersion],
    suites: Vec<SupportedCipherSuite>,
    groups: Vec<&'static dyn SupportedKxGroup>,
    timeout: Duration,
) -> Result<bool, ProbeError> {
    let Some(config) = client_config(versions, suites, groups, &[]) else {
        return Ok(false);
    };
    Ok(connect(addr, server_name, config, timeout).await?.is_some())
}

/// The suites rustls has for `version`.
pub fn suites_of(version: &'static SupportedProtocolVersion) -> Vec<SupportedCipherSuite> {
    rustls::crypto::aws_lc_rs::default_provider()
        .cipher_suites
        .into_iter()
        .filter(|s| s.version() == version)
        .collect()
}

/// Every TLS 1.3 suite the server accepts, by IANA name.
pub async fn tls13_suites(
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
) -> Result<Vec<String>, ProbeError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mut accepted = Vec::new();
    for suite in suites_of(&rustls::version::TLS13) {
        let accepts = handshake(
            addr,
            server_name,
            &[&rustls::version::TLS13],
            vec![suite],
            provider.kx_groups.clone(),
            timeout,
        )
        .await?;
        if accepts {
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
        let accepts = handshake(
            addr,
            server_name,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
            provider.cipher_suites.clone(),
            vec![group],
            timeout,
        )
        .await?;
        if accepts {
            accepted.push(format!("{:?}", group.name()));
        }
    }
    Ok(accepted)
}
