//! Host names as they enter the config, names that become paths on disk, and the names the
//! config gives its own items (upstreams, policies).

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("`{0}` is not a valid host name")]
    Invalid(String),
    #[error(
        "`{0}`: a wildcard must be a single `*.` at the start, followed by at least two labels"
    )]
    BadWildcard(String),
    #[error("`{0}` cannot be used as a file name (no `/`, `\\`, `..`, NUL or leading `.`)")]
    UnsafePath(String),
}

/// Normalises a DNS name or wildcard: lower case, IDNA to ASCII, no trailing dot. IP
/// addresses are returned unchanged.
pub fn normalize_dns_name(name: &str) -> Result<String, NameError> {
    let trimmed = name.trim().trim_end_matches('.');
    if trimmed.parse::<std::net::IpAddr>().is_ok() {
        return Ok(trimmed.to_owned());
    }
    let (wildcard, rest) = match trimmed.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    if rest.contains('*') {
        return Err(NameError::BadWildcard(name.to_owned()));
    }
    let ascii =
        idna::domain_to_ascii_strict(rest).map_err(|_| NameError::Invalid(name.to_owned()))?;
    let valid_labels = !ascii.is_empty()
        && ascii.len() <= 253
        && ascii.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid_labels {
        return Err(NameError::Invalid(name.to_owned()));
    }
    if wildcard {
        if !ascii.contains('.') {
            return Err(NameError::BadWildcard(name.to_owned()));
        }
        return Ok(format!("*.{ascii}"));
    }
    Ok(ascii)
}

/// Checks that a name is safe to use as one path component under the data folder.
pub fn validate_path_component(name: &str) -> Result<&str, NameError> {
    let unsafe_name = name.is_empty()
        || name.starts_with('.')
        || name.contains(['/', '\\', '\0'])
        || name.contains("..")
        || name.len() > 255;
    if unsafe_name {
        return Err(NameError::UnsafePath(name.to_owned()));
    }
    Ok(name)
}

/// A name the config gives (an upstream, a policy): letters, digits, `-`, `_`, `.`.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised() {
        assert_eq!(normalize_dns_name("Example.COM."), Ok("example.com".into()));
        assert_eq!(
            normalize_dns_name("*.Example.com"),
            Ok("*.example.com".into())
        );
        assert_eq!(
            normalize_dns_name("bücher.de"),
            Ok("xn--bcher-kva.de".into())
        );
        assert_eq!(normalize_dns_name("::1"), Ok("::1".into()));
        assert!(normalize_dns_name("a.*.com").is_err());
        assert!(normalize_dns_name("*.com").is_err());
        assert!(normalize_dns_name("bad name.com").is_err());
        assert!(normalize_dns_name("-bad.com").is_err());
        assert!(normalize_dns_name("../etc").is_err());
    }

    #[test]
    fn path_components_refuse_traversal() {
        assert!(validate_path_component("example.com").is_ok());
        for bad in ["../etc", "a/b", "..", ".hidden", "", "a\\b", "x\0y"] {
            assert!(validate_path_component(bad).is_err(), "{bad:?} accepted");
        }
    }
}
