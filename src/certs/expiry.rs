//! `cert expiry`: OK / WARNING / EXPIRED for every certificate found in files, folders and
//! globs (URLs are fetched by the caller), with text, JSON and Prometheus output.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use serde::Serialize;

use super::inspect::{format_time, unix_now};
use super::pem::read_certificates;
use super::CertInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok,
    Warning,
    Expired,
    Error,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Expired => "EXPIRED",
            Status::Error => "ERROR",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub source: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after_unix: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days_left: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Entry {
    pub fn error(source: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            status: Status::Error,
            subject: None,
            serial: None,
            not_after: None,
            not_after_unix: None,
            days_left: None,
            error: Some(error.into()),
        }
    }
}

/// One entry per certificate in `chain`.
pub fn entries_for_chain(
    source: &str,
    chain: &[CertificateDer<'_>],
    warn_days: i64,
    now: i64,
) -> Vec<Entry> {
    chain
        .iter()
        .map(|der| match CertInfo::parse(der) {
            Err(reason) => Entry::error(source, reason),
            Ok(info) => {
                let remaining = info.remaining_secs(now);
                let days_left = remaining.div_euclid(86_400);
                let status = if remaining <= 0 {
                    Status::Expired
                } else if days_left < warn_days {
                    Status::Warning
                } else {
                    Status::Ok
                };
                Entry {
                    source: source.to_owned(),
                    status,
                    subject: Some(info.subject.clone()),
                    serial: Some(info.serial.clone()),
                    not_after: Some(format_time(info.not_after)),
                    not_after_unix: Some(info.not_after),
                    days_left: Some(days_left),
                    error: None,
                }
            }
        })
        .collect()
}

const CERT_EXTENSIONS: &[&str] = &["pem", "crt", "cer", "der", "cert"];

/// Expands a path argument: a file, a folder (certificate files inside, recursively), or a
/// glob pattern.
pub fn expand(argument: &str) -> Result<Vec<PathBuf>, String> {
    let path = Path::new(argument);
    if path.is_dir() {
        let mut found = Vec::new();
        let mut stack = vec![path.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| CERT_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
                {
                    found.push(path);
                }
            }
        }
        found.sort();
        return Ok(found);
    }
    if path.exists() || !argument.contains(['*', '?', '[']) {
        return Ok(vec![path.to_path_buf()]);
    }
    let matches: Vec<PathBuf> = glob::glob(argument)
        .map_err(|e| format!("{argument}: bad pattern: {e}"))?
        .flatten()
        .collect();
    if matches.is_empty() {
        return Err(format!("{argument}: no file matches"));
    }
    Ok(matches)
}

/// Checks one file; a file with no certificate in a folder scan is skipped (key files).
pub fn check_file(path: &Path, warn_days: i64, from_folder: bool) -> Vec<Entry> {
    let source = path.display().to_string();
    match read_certificates(path) {
        Ok(chain) => entries_for_chain(&source, &chain, warn_days, unix_now()),
        Err(super::CertError::NoCertificate { .. }) if from_folder => Vec::new(),
        Err(error) => vec![Entry::error(&source, error.to_string())],
    }
}

/// The overall exit code: 0 all OK, 1 any warning, 2 any expired or unreadable.
pub fn exit_code(entries: &[Entry]) -> u8 {
    match entries.iter().map(|e| e.status).max() {
        None | Some(Status::Ok) => 0,
        Some(Status::Warning) => 1,
        Some(Status::Expired) | Some(Status::Error) => 2,
    }
}

fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text format, for node_exporter's textfile collector.
pub fn prometheus(entries: &[Entry]) -> String {
    let mut out = String::new();
    out.push_str("# HELP tlsgate_certificate_expiry_timestamp_seconds When the certificate expires (Unix time).\n");
    out.push_str("# TYPE tlsgate_certificate_expiry_timestamp_seconds gauge\n");
    for entry in entries {
        if let (Some(subject), Some(serial), Some(not_after)) =
            (&entry.subject, &entry.serial, entry.not_after_unix)
        {
            let _ = writeln!(
                out,
                "tlsgate_certificate_expiry_timestamp_seconds{{source=\"{}\",subject=\"{}\",serial=\"{}\"}} {not_after}",
                label_value(&entry.source),
                label_value(subject),
                label_value(serial)
            );
        }
    }
    out.push_str("# HELP tlsgate_certificate_check_error Whether the source could not be read (1) or was read (0).\n");
    out.push_str("# TYPE tlsgate_certificate_check_error gauge\n");
    let sources: std::collections::BTreeSet<&str> =
        entries.iter().map(|e| e.source.as_str()).collect();
    for source in sources {
        let failed = entries
            .iter()
            .any(|e| e.source == source && e.status == Status::Error);
        let _ = writeln!(
            out,
            "tlsgate_certificate_check_error{{source=\"{}\"}} {}",
            label_value(source),
            u8::from(failed)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_worst_status() {
        let mut entry = Entry::error("a", "x");
        assert_eq!(exit_code(&[]), 0);
        entry.status = Status::Ok;
        assert_eq!(exit_code(std::slice::from_ref(&entry)), 0);
        let mut warning = entry.clone();
        warning.status = Status::Warning;
        assert_eq!(exit_code(&[entry.clone(), warning.clone()]), 1);
        let mut expired = entry.clone();
        expired.status = Status::Expired;
        assert_eq!(exit_code(&[warning, expired]), 2);
    }

    #[test]
    fn prometheus_labels_are_escaped() {
        let mut entry = Entry::error("/a\"b", "x");
        entry.status = Status::Ok;
        entry.subject = Some("CN=x".into());
        entry.serial = Some("01".into());
        entry.not_after_unix = Some(1_800_000_000);
        let text = prometheus(&[entry]);
        assert!(text.contains("source=\"/a\\\"b\""), "{text}");
        assert!(text.contains("} 1800000000\n"), "{text}");
        assert!(
            text.contains("tlsgate_certificate_check_error{source=\"/a\\\"b\"} 0"),
            "{text}"
        );
    }
}
