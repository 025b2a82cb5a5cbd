//! Environment variables that override the file. Besides `TLSGATE_*`, the two families the
//! seeds' services already use: `SSL_CERTFILE` + `SSL_KEYFILE` (seed 002) and `SSL_ENABLED` +
//! `SSL_CERT_FILE` + `SSL_KEY_FILE` (seed 003).

use std::path::PathBuf;

use super::{ConfigError, EnvLookup, Origin};

/// A certificate named by environment variables.
#[derive(Debug, Clone)]
pub struct EnvCertificate {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub origin: Origin,
}

#[derive(Debug, Default)]
pub struct EnvOverlay {
    pub data_dir: Option<(String, Origin)>,
    pub listen: Option<(String, Origin)>,
    pub http_listen: Option<(String, Origin)>,
    pub http_mode: Option<(String, Origin)>,
    pub min_version: Option<(String, Origin)>,
    /// `Some(false)` from `SSL_ENABLED=false` or `TLSGATE_TLS=off`.
    pub tls_enabled: Option<(bool, Origin)>,
    pub certificate: Option<EnvCertificate>,
}

/// Every variable read here (the README documents each).
#[cfg(test)]
pub const VARIABLES: &[&str] = &[
    "TLSGATE_DATA_DIR",
    "TLSGATE_LISTEN",
    "TLSGATE_HTTP",
    "TLSGATE_HTTP_LISTEN",
    "TLSGATE_TLS",
    "TLSGATE_MIN_TLS_VERSION",
    "TLSGATE_CERT_FILE",
    "TLSGATE_KEY_FILE",
    "SSL_CERTFILE",
    "SSL_KEYFILE",
    "SSL_ENABLED",
    "SSL_CERT_FILE",
    "SSL_KEY_FILE",
];

pub fn read_overlay(env: EnvLookup<'_>) -> Result<EnvOverlay, ConfigError> {
    let get = |name: &'static str| {
        env(name)
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
            .map(|value| (value, Origin::Env(name)))
    };
    let mut overlay = EnvOverlay {
        data_dir: get("TLSGATE_DATA_DIR"),
        listen: get("TLSGATE_LISTEN"),
        http_listen: get("TLSGATE_HTTP_LISTEN"),
        http_mode: get("TLSGATE_HTTP"),
        min_version: get("TLSGATE_MIN_TLS_VERSION"),
        ..EnvOverlay::default()
    };

    // Lowest precedence first: a later family replaces an earlier one.
    for (enabled_var, cert_var, key_var) in [
        (None, "SSL_CERT_FILE", "SSL_KEY_FILE"),
        (None, "SSL_CERTFILE", "SSL_KEYFILE"),
        (Some("SSL_ENABLED"), "", ""),
        (Some("TLSGATE_TLS"), "TLSGATE_CERT_FILE", "TLSGATE_KEY_FILE"),
    ] {
        if let Some(var) = enabled_var {
            if let Some((value, origin)) = get(var) {
                let enabled = parse_switch(&value).ok_or_else(|| {
                    ConfigError::invalid(
                        origin.clone(),
                        var,
                        format!("`{value}` is not on/off (use true, false, on, off, 1 or 0)"),
                    )
                })?;
                overlay.tls_enabled = Some((enabled, origin));
            }
        }
        if cert_var.is_empty() {
            continue;
        }
        match (get(cert_var), get(key_var)) {
            (Some((cert, _)), Some((key, _))) => {
                overlay.certificate = Some(EnvCertificate {
                    cert_file: PathBuf::from(cert),
                    key_file: PathBuf::from(key),
                    origin: Origin::Env(cert_var),
                });
            }
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    Origin::Env(cert_var),
                    cert_var,
                    format!("is set but {key_var} is not: set both, or neither"),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    Origin::Env(key_var),
                    key_var,
                    format!("is set but {cert_var} is not: set both, or neither"),
                ))
            }
            (None, None) => {}
        }
    }
    Ok(overlay)
}

/// `true/false`, `on/off`, `yes/no`, `1/0`, any case.
pub fn parse_switch(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" | "enabled" => Some(true),
        "false" | "off" | "no" | "0" | "disabled" => Some(false),
        _ => None,
    }
}
