//! The small HTTP client edge policy fetches with (a JWKS, a forward-auth answer): HTTP/1.1
//! over plain TCP or TLS (the system's roots), every exchange bounded by a deadline and its
//! body by a size.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why an exchange gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

/// A client trusting the system's roots (read once per process).
pub fn build() -> HttpClient {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    let roots = ROOTS
        .get_or_init(|| {
            crate::certs::verify::load_roots(None)
                .unwrap_or_else(|_| rustls::RootCertStore::empty())
        })
        .clone();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let connector = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(tls) => builder.with_tls_config(tls.with_root_certificates(roots).with_no_client_auth()),
        // Cannot happen with the built-in provider; plain HTTP still works without it.
        Err(_) => builder.with_tls_config(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    }
    .https_or_http()
    .enable_http1()
    .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Sends `request`; the answer's head and at most `max_body` bytes of body, within `deadline`.
pub async fn send(
    client: &HttpClient,
    request: http::Request<Full<Bytes>>,
    deadline: Duration,
    max_body: usize,
) -> Result<http::Response<Bytes>, FetchError> {
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| FetchError::Failed(crate::http::error::error_chain(&e)))?;
        let (head, body) = response.into_parts();
        let body = Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|e| FetchError::Failed(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(http::Response::from_parts(head, body))
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| FetchError::Timeout(deadline))?
}

/// `GET url`, expecting `200`: its body.
pub async fn get(
    client: &HttpClient,
    url: &str,
    deadline: Duration,
    max_body: usize,
) -> Result<Bytes, String> {
    let request = http::Request::get(url)
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("bad URL: {e}"))?;
    let response = send(client, request, deadline, max_body)
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    Ok(response.into_body())
}
