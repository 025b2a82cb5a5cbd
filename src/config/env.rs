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
    pub upstream: Option<(String, Origin)>,
    pub admin_listen: Option<(String, Origin)>,
    pub workers: Option<(String, Origin)>,
    /// The variables `jwt:` verifiers name in `secret_env`, as read (a secret: never printed).
    pub jwt_secrets: super::jwt::Secrets,
}

/// Every variable read here (the README documents each).
#[cfg(test)]
pub const VARIABLES: &[&str] = &[
    "TLSGATE_CONFIG",
    "TLSGATE_LOG",
    "TLSGATE_LOG_FORMAT",
    "TLSGATE_DATA_DIR",
    "TLSGATE_LISTEN",
    "TLSGATE_HTTP",
    "TLSGATE_HTTP_LISTEN",
    "TLSGATE_TLS",
    "TLSGATE_MIN_TLS_VERSION",
    "TLSGATE_UPSTREAM",
    "TLSGATE_ADMIN_LISTEN",
    "TLSGATE_WORKERS",
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
        upstream: get("TLSGATE_UPSTREAM"),
        admin_listen: get("TLSGATE_ADMIN_LISTEN"),
        workers: get("TLSGATE_WORKERS"),
        ..EnvOverlay::default()
    };

    // Highest precedence first; only the family that wins is checked, so a stray variable
    // of a lower family cannot block a complete higher one. Seed 003's SSL_CERT_FILE and
    // SSL_KEY_FILE count only with SSL_ENABLED=true: on their own they are OpenSSL's
    // CA-bundle variables, set system-wide on many machines.
    let switch = |var: &'static str| -> Result<Option<(bool, Origin)>, ConfigError> {
        match get(var) {
            Some((value, origin)) => parse_switch(&value)
                .map(|on| Some((on, origin.clone())))
                .ok_or_else(|| bad_switch(&origin, var, &value)),
            None => Ok(None),
        }
    };
    let ssl_enabled = switch("SSL_ENABLED")?;
    overlay.tls_enabled = switch("TLSGATE_TLS")?.or(ssl_enabled.clone());
    let families: [(&'static str, &'static str, bool); 3] = [
        ("TLSGATE_CERT_FILE", "TLSGATE_KEY_FILE", true),
        ("SSL_CERTFILE", "SSL_KEYFILE", true),
        (
            "SSL_CERT_FILE",
            "SSL_KEY_FILE",
            matches!(ssl_enabled, Some((true, _))),
        ),
    ];
    for (cert_var, key_var, active) in families {
        if active && (get(cert_var).is_some() || get(key_var).is_some()) {
            overlay.certificate = pair(&get, cert_var, key_var)?;
            break;
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

fn bad_switch(origin: &Origin, var: &str, value: &str) -> ConfigError {
    ConfigError::invalid(
        origin.clone(),
        var,
        format!("`{value}` is not on/off (use true, false, on, off, 1 or 0)"),
    )
}

/// A certificate from a pair of variables; one without the other is an error.
fn pair(
    get: &dyn Fn(&'static str) -> Option<(String, Origin)>,
    cert_var: &'static str,
    key_var: &'static str,
) -> Result<Option<EnvCertificate>, ConfigError> {
    match (get(cert_var), get(key_var)) {
        (Some((cert, origin)), Some((key, _))) => Ok(Some(EnvCertificate {
            cert_file: PathBuf::from(cert),
            key_file: PathBuf::from(key),
            origin,
        })),
        (Some((_, origin)), None) => Err(ConfigError::EnvCertificateIncomplete {
            origin,
            set: cert_var,
            missing: key_var,
        }),
        (None, Some((_, origin))) => Err(ConfigError::EnvCertificateIncomplete {
            origin,
            set: key_var,
            missing: cert_var,
        }),
        (None, None) => Ok(None),
    }
}
