//! The HTTPS client that talks to the ACME CA: every request, body included, must finish within
//! `acme.request_timeout`. instant-acme's own client has no deadline, so a CA that accepts the
//! connection and never answers would hold a renewal (and every renewal after it) forever.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

use super::AcmeError;
use crate::config::units::format_duration;
use crate::config::AcmeSettings;
use crate::http::error::error_chain;

/// ACME answers are JSON documents and certificate chains: a few KiB. More is not an ACME CA.
const MAX_ANSWER_BYTES: usize = 1 << 20;

type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

pub struct DeadlineClient {
    client: Client<HttpsConnector, BodyWrapper<Bytes>>,
    deadline: Duration,
}

impl DeadlineClient {
    /// Trusts `acme.ca_root` when set (every certificate in the file), else the system's roots.
    pub fn new(settings: &AcmeSettings) -> Result<Self, AcmeError> {
        let roots = roots(settings)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AcmeError::Other(format!("ACME client TLS settings: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(settings.request_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            deadline: settings.request_timeout,
        })
    }
}

/// `acme.ca_root` is read each time (a small file an operator may replace); the system's roots
/// once per process, as they are many files and every renewal check builds a client.
fn roots(settings: &AcmeSettings) -> Result<rustls::RootCertStore, AcmeError> {
    static SYSTEM_ROOTS: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();
    if let Some(path) = &settings.ca_root {
        return Ok(crate::certs::verify::load_roots(Some(path))?);
    }
    if let Some(roots) = SYSTEM_ROOTS.get() {
        return Ok(roots.clone());
    }
    let loaded = crate::certs::verify::load_roots(None)?;
    Ok(SYSTEM_ROOTS.get_or_init(|| loaded).clone())
}

impl HttpClient for DeadlineClient {
    fn request(
        &self,
        request: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let what = format!("{} {}", request.method(), request.uri());
        let deadline = self.deadline;
        let sent = self.client.request(request);
        Box::pin(async move {
            let exchange = async {
                let response = sent.await.map_err(|e| failed(&what, e))?;
                let (head, body) = response.into_parts();
                let body = Limited::new(body, MAX_ANSWER_BYTES)
                    .collect()
                    .await
                    .map_err(|e| failed(&what, e))?
                    .to_bytes();
                Ok(BytesResponse::from(http::Response::from_parts(
                    head,
                    Full::new(body),
                )))
            };
            match tokio::time::timeout(deadline, exchange).await {
                Ok(result) => result,
                Err(_) => Err(failed(
                    &what,
                    format!("no answer within {}", format_duration(deadline)),
                )),
            }
        })
    }
}

fn failed(
    what: &str,
    error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> instant_acme::Error {
    let error: Box<dyn std::error::Error + Send + Sync> = error.into();
    // hyper's errors say "client error (Connect)" and keep the reason in their sources.
    instant_acme::Error::Other(format!("{what}: {}", error_chain(&*error)).into())
}
