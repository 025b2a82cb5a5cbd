//! Errors a request can end in, and their status codes: the one mapping in the codebase.

use http::StatusCode;

use super::{text_response, Response};

/// An error with its causes, for one log line or message. A cause whose text the line already
/// holds is left out (some errors print their source in their own message).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("not found")]
    NotFound,
    #[error("TLS required")]
    TlsRequired,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("WebSocket upgrade required")]
    UpgradeRequired,
    #[error("unsupported WebSocket version (only 13)")]
    UnsupportedWebSocketVersion,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("misdirected request: the Host does not match the TLS server name")]
    MisdirectedRequest,
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// A CORS preflight this route's policy does not allow (origin, method or header); the
    /// browser then refuses the request it was asking about.
    #[error("CORS preflight refused: {0} not allowed")]
    CorsPreflightRefused(&'static str),
    /// Refused for a reason the body states (the admin listener's Host and Origin checks).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The route needs a verified client certificate (mTLS) and the client sent none.
    #[error("a client certificate is required")]
    ClientCertRequired,
    /// The client certificate's subject and SANs are none the route allows.
    #[error("this client certificate is not allowed here")]
    ClientCertNotAllowed,
    #[error("no upstream server available")]
    NoUpstream,
    #[error("bad gateway")]
    BadGateway,
    #[error("gateway timeout")]
    GatewayTimeout,
    #[error("request timeout")]
    RequestTimeout,
    /// No valid token: `401` with this `WWW-Authenticate` challenge (RFC 6750).
    #[error("authentication required")]
    Unauthorized(String),
    /// A valid token lacking a required claim: `403` with this challenge.
    #[error("forbidden: the token lacks a required claim")]
    InsufficientClaims(String),
    /// Over a rate-limit zone's burst or a per-IP cap: the zone's status (`429`, or nginx's
    /// `503`) with `Retry-After` (seconds until a slot frees).
    #[error("too many requests")]
    RateLimited { status: u16, retry_after: u64 },
    /// The client address is banned (`bans:`).
    #[error("forbidden: address banned")]
    Banned,
    /// The route's `allow`/`deny` lists refuse the client address.
    #[error("forbidden: address not allowed")]
    AddressNotAllowed,
}

impl HttpError {
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::NotFound => StatusCode::NOT_FOUND,
            HttpError::TlsRequired => StatusCode::FORBIDDEN,
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::UpgradeRequired | HttpError::UnsupportedWebSocketVersion => {
                StatusCode::UPGRADE_REQUIRED
            }
            HttpError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            HttpError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            HttpError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            HttpError::OriginNotAllowed
            | HttpError::CorsPreflightRefused(_)
            | HttpError::Forbidden(_)
            | HttpError::ClientCertRequired
            | HttpError::ClientCertNotAllowed => StatusCode::FORBIDDEN,
            HttpError::NoUpstream => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::BadGateway => StatusCode::BAD_GATEWAY,
            HttpError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            HttpError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            HttpError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            HttpError::InsufficientClaims(_) => StatusCode::FORBIDDEN,
            HttpError::RateLimited { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::TOO_MANY_REQUESTS)
            }
            HttpError::Banned | HttpError::AddressNotAllowed => StatusCode::FORBIDDEN,
        }
    }

    pub fn into_response(self) -> Response {
        let mut response = text_response(self.status(), &self.to_string());
        let headers = response.headers_mut();
        match self {
            HttpError::UpgradeRequired => {
                headers.insert(
                    http::header::UPGRADE,
                    http::HeaderValue::from_static("websocket"),
                );
                headers.insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("upgrade"),
                );
            }
            HttpError::UnsupportedWebSocketVersion => {
                headers.insert(
                    http::header::SEC_WEBSOCKET_VERSION,
                    http::HeaderValue::from_static("13"),
                );
            }
            HttpError::MethodNotAllowed => {
                headers.insert(
                    http::header::ALLOW,
                    http::HeaderValue::from_static("GET, HEAD"),
                );
            }
            HttpError::Unauthorized(challenge) | HttpError::InsufficientClaims(challenge) => {
                if let Ok(value) = http::HeaderValue::from_str(&challenge) {
                    headers.insert(http::header::WWW_AUTHENTICATE, value);
                }
                headers.insert(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static("no-store"),
                );
            }
            HttpError::RateLimited { retry_after, .. } => {
                headers.insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from(retry_after),
                );
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(HttpError::NotFound.status(), 404);
        assert_eq!(HttpError::TlsRequired.status(), 403);
        assert_eq!(HttpError::UpgradeRequired.status(), 426);
        assert_eq!(HttpError::PayloadTooLarge.status(), 413);
        assert_eq!(HttpError::MisdirectedRequest.status(), 421);
        assert_eq!(HttpError::CorsPreflightRefused("origin").status(), 403);
        assert_eq!(HttpError::ClientCertRequired.status(), 403);
        assert_eq!(HttpError::ClientCertNotAllowed.status(), 403);
        assert_eq!(HttpError::BadGateway.status(), 502);
        assert_eq!(HttpError::NoUpstream.status(), 503);
        assert_eq!(HttpError::GatewayTimeout.status(), 504);
        let response = HttpError::TlsRequired.into_response();
        assert_eq!(response.status(), 403);
        let response = HttpError::Unauthorized("Bearer realm=\"r\"".into()).into_response();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"r\"");
        assert_eq!(HttpError::InsufficientClaims(String::new()).status(), 403);
        let response = HttpError::UnsupportedWebSocketVersion.into_response();
        assert_eq!(response.headers()["sec-websocket-version"], "13");
        let limited = HttpError::RateLimited {
            status: 429,
            retry_after: 12,
        };
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.into_response().headers()["retry-after"], "12");
        let nginx_like = HttpError::RateLimited {
            status: 503,
            retry_after: 1,
        };
        assert_eq!(nginx_like.status(), 503);
        assert_eq!(HttpError::Banned.status(), 403);
        assert_eq!(HttpError::AddressNotAllowed.status(), 403);
    }
}
