use std::collections::HashMap;
use std::path::Path;

use super::*;

fn refused(yaml: &str) -> ConfigError {
    match load_with(yaml, &[]) {
        Ok(settings) => panic!("accepted:\n{yaml}\n{settings:?}"),
        Err(error) => error,
    }
}

/// Where an origin in the test file points: its line.
fn line(origin: &Origin) -> u64 {
    match origin {
        Origin::File { line, .. } => *line,
        other => panic!("not in the file: {other}"),
    }
}

fn load_with(yaml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |name: &str| env.get(name).cloned();
    load_str(
        yaml,
        Some(Path::new("/etc/tlsgate/tlsgate.yaml")),
        &Overrides::default(),
        &lookup,
    )
}

#[test]
fn empty_config_gives_safe_defaults() {
    let settings = load_with("", &[]).unwrap();
    assert_eq!(settings.listen.to_string(), "127.0.0.1:8443");
    assert_eq!(settings.http.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(settings.http.mode, HttpMode::Redirect);
    assert!(settings.tls.enabled);
    assert_eq!(settings.tls.min_version, TlsVersion::Tls12);
    assert!(settings.tls.session_tickets);
    assert_eq!(settings.tls.key_exchange_groups[0], KxGroup::X25519Mlkem768);
    assert_eq!(
        settings
            .headers
            .hsts
            .as_ref()
            .map(Hsts::header_value)
            .as_deref(),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(settings.headers.x_frame_options.as_deref(), Some("DENY"));
}

#[test]
fn unknown_key_names_file_line_and_nearest_key() {
    let yaml = "tls:\n  certificates:\n    - cert_file: a.crt\n      kye_file: a.key\n";
    let error = load_with(yaml, &[]).unwrap_err().to_string();
    assert!(
        error.starts_with("/etc/tlsgate/tlsgate.yaml:4:7: unknown field `kye_file`"),
        "{error}"
    );
    assert!(error.contains("did you mean `key_file`?"), "{error}");
    assert!(error.contains("cert_file"), "lists the valid keys: {error}");
}

#[test]
fn wrong_type_names_line() {
    let error = load_with("tls:\n  session_tickets: maybe\n", &[])
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("/etc/tlsgate/tlsgate.yaml:2:"), "{error}");
}

#[test]
fn old_tls_versions_are_refused_with_reason() {
    let error = load_with("tls:\n  min_version: \"1.1\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(error.contains(":2:"), "{error}");
    assert!(error.contains("RFC 8996"), "{error}");
    let settings = load_with("tls:\n  min_version: 1.3\n", &[]).unwrap();
    assert_eq!(settings.tls.min_version, TlsVersion::Tls13);
}

#[test]
fn weak_cipher_suites_are_refused_with_reason() {
    let yaml = "tls:\n  tls12_cipher_suites:\n    - ECDHE-RSA-AES128-GCM-SHA256\n    - ECDHE-RSA-AES128-SHA\n";
    let error = load_with(yaml, &[]).unwrap_err().to_string();
    assert!(error.contains(":4:"), "{error}");
    assert!(error.contains("not an AEAD suite"), "{error}");
    let yaml = "tls:\n  tls13_cipher_suites: [TLS_CHACHA20_POLY1305_SHA256]\n";
    let settings = load_with(yaml, &[]).unwrap();
    assert_eq!(
        settings.tls.tls13_cipher_suites,
        vec![Tls13Suite::Chacha20Poly1305Sha256]
    );
}

#[test]
fn shorthand_switches() {
    let settings = load_with("tls: off\nhttp: reject\n", &[]).unwrap();
    assert!(!settings.tls.enabled);
    assert_eq!(settings.http.mode, HttpMode::Reject);
    let settings = load_with(
        "http: off\nheaders:\n  hsts: off\n  x_frame_options: SAMEORIGIN\n",
        &[],
    )
    .unwrap();
    assert_eq!(settings.http.mode, HttpMode::Off);
    assert_eq!(settings.headers.hsts, None);
    assert_eq!(
        settings.headers.x_frame_options.as_deref(),
        Some("SAMEORIGIN")
    );
}

#[test]
fn certificate_paths_are_relative_to_the_config_file() {
    let yaml = "tls:\n  certificates:\n    - pem_file: certs/site.pem\n      names: [Example.COM, '*.example.com']\n";
    let settings = load_with(yaml, &[]).unwrap();
    let cert = &settings.tls.certificates[0];
    assert_eq!(
        cert.source,
        CertSource::Combined {
            pem_file: "/etc/tlsgate/certs/site.pem".into()
        }
    );
    assert_eq!(cert.names, vec!["example.com", "*.example.com"]);
    assert_eq!(cert.origin.to_string(), "/etc/tlsgate/tlsgate.yaml:3:7");
}

#[test]
fn certificate_entry_needs_a_key() {
    let error = refused("tls:\n  certificates:\n    - cert_file: a.crt\n");
    assert!(
        matches!(&error, ConfigError::CertFileWithoutKeyFile { origin, cert_file }
            if line(origin) == 3 && cert_file == Path::new("/etc/tlsgate/a.crt")),
        "{error:?}"
    );
    assert!(
        error.to_string().starts_with(
            "/etc/tlsgate/tlsgate.yaml:3:7: tls.certificates.key_file: cert_file needs a key_file"
        ),
        "{error}"
    );
}

#[test]
fn certificate_entry_needs_cert_and_key_or_pem_not_both() {
    let base = "tls:\n  certificates:\n";
    let error = refused(&format!("{base}    - key_file: a.key\n"));
    assert!(
        matches!(&error, ConfigError::KeyFileWithoutCertFile { origin, key_file }
            if line(origin) == 3 && key_file == Path::new("/etc/tlsgate/a.key")),
        "{error:?}"
    );
    let error = refused(&format!(
        "{base}    - pem_file: a.pem\n      key_file: a.key\n"
    ));
    assert!(
        matches!(&error, ConfigError::PemFileWithCertOrKeyFile { origin, pem_file }
            if line(origin) == 3 && pem_file == Path::new("/etc/tlsgate/a.pem")),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(": tls.certificates.pem_file: "),
        "{error}"
    );
    let error = refused(&format!("{base}    - names: [a.example]\n"));
    assert!(
        matches!(&error, ConfigError::CertificateWithoutFiles { origin } if line(origin) == 3),
        "{error:?}"
    );
}

#[test]
fn two_defaults_are_refused() {
    let yaml = "tls:\n  certificates:\n    - pem_file: a.pem\n      default: true\n    - pem_file: b.pem\n      default: true\n";
    let error = refused(yaml);
    assert!(
        matches!(&error, ConfigError::TwoDefaultCertificates { origin, first }
            if line(origin) == 5 && line(first) == 3),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "/etc/tlsgate/tlsgate.yaml:5:7: tls.certificates.default: only one certificate can be the default; /etc/tlsgate/tlsgate.yaml:3:7 is already"
    );
}

#[test]
fn preload_requires_a_long_max_age() {
    let yaml = "headers:\n  hsts:\n    max_age: 1d\n    preload: true\n";
    let error = refused(yaml);
    assert!(
        matches!(&error, ConfigError::HstsPreloadShortMaxAge { max_age, .. }
            if *max_age == std::time::Duration::from_secs(86_400)),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.starts_with("/etc/tlsgate/tlsgate.yaml:")
            && text.contains(
                ": headers.hsts.preload: the HSTS preload list requires max_age of at least 365d"
            )
            && text.ends_with("(max_age is 1d)"),
        "{text}"
    );
    let yaml = "headers:\n  hsts:\n    preload: true\n";
    let settings = load_with(yaml, &[]).unwrap();
    assert_eq!(
        settings.headers.hsts.unwrap().header_value(),
        "max-age=31536000; includeSubDomains; preload"
    );
}

#[test]
fn preload_requires_include_subdomains() {
    let yaml = "headers:\n  hsts:\n    include_subdomains: false\n    preload: true\n";
    let error = refused(yaml);
    assert!(
        matches!(&error, ConfigError::HstsPreloadWithoutSubdomains { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("(include_subdomains is false)"),
        "{error}"
    );
}

#[test]
fn plain_http_listener_cannot_share_the_main_address() {
    let error = refused("listen: 127.0.0.1:8443\nhttp:\n  listen: 127.0.0.1:8443\n");
    assert!(
        matches!(&error, ConfigError::HttpListenIsMainListen { addr, .. }
            if addr.to_string() == "127.0.0.1:8443"),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains(": http.listen: 127.0.0.1:8443 is also the main listener's address"),
        "{error}"
    );
    // No clash without a plain-HTTP listener, or with port 0 (each gets its own port).
    load_with(
        "listen: 127.0.0.1:8443\nhttp:\n  mode: off\n  listen: 127.0.0.1:8443\n",
        &[],
    )
    .unwrap();
    load_with("listen: 127.0.0.1:0\nhttp:\n  listen: 127.0.0.1:0\n", &[]).unwrap();
}

#[test]
fn http_01_needs_the_plain_http_listener() {
    let error = refused("http: off\nacme:\n  agree_tos: true\n");
    assert!(
        matches!(&error, ConfigError::Http01WithoutHttpListener {
            origin, http_mode: HttpMode::Off, tls_enabled: true
        } if line(origin) == 1),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("do not set `http: off`"),
        "{error}"
    );
    let error = refused("tls: off\nacme:\n  agree_tos: true\n");
    assert!(
        matches!(&error, ConfigError::Http01WithoutHttpListener { origin, tls_enabled: false, .. }
            if line(origin) == 1),
        "{error:?}"
    );
    assert!(error.to_string().contains("turn TLS on"), "{error}");
    let error = load_with("acme:\n  agree_tos: true\n", &[("TLSGATE_HTTP", "off")]).unwrap_err();
    assert!(
        matches!(
            &error,
            ConfigError::Http01WithoutHttpListener {
                origin: Origin::Env("TLSGATE_HTTP"),
                ..
            }
        ),
        "{error:?}"
    );
    load_with(
        "http: off\nacme:\n  agree_tos: true\n  challenge: tls-alpn-01\n",
        &[],
    )
    .unwrap();
}

#[test]
fn seed_002_environment_family() {
    let settings = load_with(
        "",
        &[
            ("SSL_CERTFILE", "/app/certs/server.crt"),
            ("SSL_KEYFILE", "/app/certs/server.key"),
        ],
    )
    .unwrap();
    assert_eq!(
        settings.tls.certificates[0].source,
        CertSource::Files {
            cert_file: "/app/certs/server.crt".into(),
            key_file: "/app/certs/server.key".into()
        }
    );
    let error = load_with("", &[("SSL_CERTFILE", "/x.crt")]).unwrap_err();
    assert!(
        matches!(
            &error,
            ConfigError::EnvCertificateIncomplete {
                origin: Origin::Env("SSL_CERTFILE"),
                set: "SSL_CERTFILE",
                missing: "SSL_KEYFILE",
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("SSL_KEYFILE is not"), "{error}");
}

#[test]
fn seed_003_environment_family_and_plain_mode() {
    let settings = load_with(
        "tls:\n  certificates:\n    - pem_file: file.pem\n",
        &[
            ("SSL_ENABLED", "true"),
            ("SSL_CERT_FILE", "/opt/ssl/camera.pem"),
            ("SSL_KEY_FILE", "/opt/ssl/camera.key"),
        ],
    )
    .unwrap();
    assert!(settings.tls.enabled);
    assert_eq!(
        settings.tls.certificates.len(),
        1,
        "environment replaces the file's list"
    );
    assert_eq!(
        settings.tls.certificates[0].source.cert_path(),
        Path::new("/opt/ssl/camera.pem")
    );
    let settings = load_with("", &[("SSL_ENABLED", "false")]).unwrap();
    assert!(!settings.tls.enabled);
    let error = load_with("", &[("SSL_ENABLED", "perhaps")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("SSL_ENABLED"), "{error}");
    // Without SSL_ENABLED, SSL_CERT_FILE is OpenSSL's CA-bundle variable: not ours.
    let settings = load_with(
        "",
        &[("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")],
    )
    .unwrap();
    assert!(settings.tls.certificates.is_empty());
}

#[test]
fn environment_overrides_file() {
    let settings = load_with(
        "listen: 127.0.0.1:9443\n",
        &[
            ("TLSGATE_LISTEN", "0.0.0.0:443"),
            ("TLSGATE_MIN_TLS_VERSION", "1.3"),
        ],
    )
    .unwrap();
    assert_eq!(settings.listen.to_string(), "0.0.0.0:443");
    assert_eq!(settings.tls.min_version, TlsVersion::Tls13);
}

#[test]
fn bad_address_names_its_origin() {
    let error = load_with("listen: localhost\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("/etc/tlsgate/tlsgate.yaml:1:9: listen"),
        "{error}"
    );
}

#[test]
fn effective_config_reads_back_unchanged() {
    let yaml = "listen: 0.0.0.0:443\nhttp:\n  listen: 0.0.0.0:80\n  redirect_port: 443\ntls:\n  min_version: '1.3'\n  session_tickets: false\n  certificates:\n    - cert_file: /a/fullchain.pem\n      key_file: /a/privkey.pem\n      names: [a.example]\n      default: true\n    - pem_file: /b.pem\nheaders:\n  hsts: off\n  custom:\n    Permissions-Policy: camera=()\nlimits:\n  idle_timeout: 90s\n  max_header_size: 32KiB\n";
    let first = load_with(yaml, &[]).unwrap();
    let printed = to_yaml(&first);
    let second = load_with(&printed, &[]).unwrap();
    assert_eq!(printed, to_yaml(&second), "printed:\n{printed}");
    assert_eq!(first.limits, second.limits);
    assert_eq!(first.headers, second.headers);
    assert_eq!(
        first.tls.certificates[0].source,
        second.tls.certificates[0].source
    );

    // With ACME: the certificate's names are printed once, under `acme.names`.
    let yaml = "acme:\n  directory: https://ca.test/dir\n  email: ops@example.com\n  agree_tos: true\n  request_timeout: 5s\ntls:\n  certificates:\n    - acme:\n        names: [example.com, www.example.com]\n";
    let first = load_with(yaml, &[]).unwrap();
    let printed = to_yaml(&first);
    assert_eq!(printed.matches("www.example.com").count(), 1, "{printed}");
    let second = load_with(&printed, &[]).unwrap();
    assert_eq!(printed, to_yaml(&second), "printed:\n{printed}");
    let (a, b) = (&first.tls.certificates[0], &second.tls.certificates[0]);
    assert_eq!((&a.source, &a.names), (&b.source, &b.names));
    assert_eq!(first.acme, second.acme);
}

#[test]
fn readme_documents_every_environment_variable() {
    let readme = include_str!("../../README.md");
    for var in super::env::VARIABLES {
        assert!(readme.contains(var), "README does not document {var}");
    }
}

#[test]
fn absurd_limits_are_refused_not_panicked_on() {
    for yaml in [
        "limits:\n  max_connections: 18446744073709551615\n",
        "limits:\n  header_read_timeout: 10000000000000000000\n",
        "limits:\n  idle_timeout: 400d\n",
        "headers:\n  hsts:\n    max_age: 10000d\n",
    ] {
        let error = load_with(yaml, &[]).unwrap_err().to_string();
        assert!(
            error.contains("at most") || error.contains("between"),
            "{yaml}: {error}"
        );
    }
    assert!(units::parse_duration(&"18446744073709551615s".repeat(3)).is_err());
}

#[test]
fn a_stray_lower_family_variable_does_not_block_a_complete_higher_one() {
    let settings = load_with(
        "",
        &[
            ("SSL_ENABLED", "true"),
            ("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
            ("SSL_CERTFILE", "/stray.crt"),
            ("TLSGATE_CERT_FILE", "/tls/site.crt"),
            ("TLSGATE_KEY_FILE", "/tls/site.key"),
        ],
    )
    .unwrap();
    assert_eq!(
        settings.tls.certificates[0].source.cert_path(),
        Path::new("/tls/site.crt")
    );
    assert_eq!(
        settings.tls.certificates[0].origin.to_string(),
        "environment variable TLSGATE_CERT_FILE"
    );
    let error = load_with("", &[("SSL_ENABLED", "true"), ("SSL_KEY_FILE", "/k.key")]).unwrap_err();
    assert!(
        matches!(
            &error,
            ConfigError::EnvCertificateIncomplete {
                set: "SSL_KEY_FILE",
                missing: "SSL_CERT_FILE",
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn acme_certificates_need_distinct_folders_and_ip_names_no_dns_01() {
    let base = "acme:\n  agree_tos: true\n  challenge: dns-01\n  dns_hook: /bin/true\ntls:\n  certificates:\n";
    let yaml = format!("{base}    - acme:\n        names: [a.com, b.com]\n    - acme:\n        names: [a.com, c.com]\n");
    let error = refused(&yaml);
    assert!(
        matches!(&error, ConfigError::AcmeFolderShared { origin, lineage, first }
            if line(origin) == 9 && lineage == "a.com" && line(first) == 7),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("shares its folder live/a.com/"),
        "{error}"
    );
    let yaml = format!("{base}    - acme:\n        names: [192.0.2.1]\n");
    let error = refused(&yaml);
    assert!(
        matches!(&error, ConfigError::AcmeIpNameWithDns01 { origin, name }
            if line(origin) == 7 && name == "192.0.2.1"),
        "{error:?}"
    );
    let error = refused("tls:\n  certificates:\n    - acme:\n        names: [a.com]\n");
    assert!(
        matches!(&error, ConfigError::AcmeCertificateWithoutAcmeSection { origin }
            if line(origin) == 3),
        "{error:?}"
    );
    let error = load_with("acme:\n  email: a@b.c\n", &[])
        .unwrap_err()
        .to_string();
    assert!(error.contains("agree_tos: true"), "{error}");
}

#[test]
fn workers_come_from_the_file_or_the_environment_and_are_bounded() {
    assert_eq!(load_with("", &[]).unwrap().limits.workers, 0);
    assert_eq!(
        load_with("limits:\n  workers: 1\n", &[])
            .unwrap()
            .limits
            .workers,
        1
    );
    let settings = load_with("limits:\n  workers: 1\n", &[("TLSGATE_WORKERS", "4")]).unwrap();
    assert_eq!(settings.limits.workers, 4);
    let error = load_with("limits:\n  workers: 5000\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("limits.workers") && error.contains("between"),
        "{error}"
    );
    let error = load_with("", &[("TLSGATE_WORKERS", "many")])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("TLSGATE_WORKERS") && error.contains("`many`"),
        "{error}"
    );
}

#[test]
fn acme_certificate_entries_have_no_files_and_wildcards_need_dns_01() {
    let yaml = "tls:\n  certificates:\n    - acme:\n        names: [a.com]\n      pem_file: a.pem\n      names: [a.com]\n";
    let error = refused(yaml);
    assert!(
        matches!(&error, ConfigError::AcmeCertificateWithFiles { origin, found }
            if line(origin) == 3 && found == &["pem_file", "names"]),
        "{error:?}"
    );
    assert!(
        error.to_string().ends_with("(found: pem_file, names)"),
        "{error}"
    );
    let yaml = "acme:\n  agree_tos: true\n  challenge: tls-alpn-01\ntls:\n  certificates:\n    - acme:\n        names: [a.com, '*.a.com']\n";
    let error = refused(yaml);
    assert!(
        matches!(&error, ConfigError::AcmeWildcardWithoutDns01 {
            origin, name, challenge: AcmeChallenge::TlsAlpn01
        } if line(origin) == 6 && name == "*.a.com"),
        "{error:?}"
    );
}

#[test]
fn dns_01_needs_a_hook_and_eab_needs_both_halves() {
    let error = refused("acme:\n  agree_tos: true\n  challenge: dns-01\n");
    assert!(
        matches!(&error, ConfigError::Dns01WithoutHook { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(": acme.dns_hook: "), "{error}");
    let error = refused("acme:\n  agree_tos: true\n  eab_kid: kid\n");
    assert!(
        matches!(
            &error,
            ConfigError::EabIncomplete {
                missing: "eab_hmac_key",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(": acme.eab_hmac_key: "),
        "{error}"
    );
    let error = refused("acme:\n  agree_tos: true\n  eab_hmac_key: secret\n");
    assert!(
        matches!(
            &error,
            ConfigError::EabIncomplete {
                missing: "eab_kid",
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn routes_name_defined_upstreams_and_an_upstream_has_a_primary_server() {
    let yaml = "upstreams:\n  api:\n    servers: [http://10.0.0.1:8000]\nroutes:\n  - path: /x\n    upstream: apj\n";
    let error = refused(yaml);
    assert!(
        matches!(&error, ConfigError::UnknownUpstream { origin, field: "routes.upstream", target, defined }
            if line(origin) == 6 && target == "apj" && defined == &["api"]),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "/etc/tlsgate/tlsgate.yaml:6:15: routes.upstream: `apj` is neither a URL nor a defined upstream (defined: api)"
    );
    let error = refused("default_route: nowhere\n");
    assert!(
        matches!(&error, ConfigError::UnknownUpstream { field: "default_route", defined, .. }
            if defined.is_empty()),
        "{error:?}"
    );
    assert!(error.to_string().ends_with("(defined: none)"), "{error}");
    let yaml = "upstreams:\n  api:\n    servers:\n      - url: http://10.0.0.1:8000\n        backup: true\n";
    let error = refused(yaml);
    assert!(
        matches!(&error, ConfigError::AllServersBackup { upstream, .. } if upstream == "api"),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains(": upstreams.api.servers: every server is a backup"),
        "{error}"
    );
}

#[test]
fn duplicate_key_is_named_without_parser_option_names() {
    let error = refused("data_dir: /tmp/a\nlisten: 127.0.0.1:1\nlisten: 127.0.0.1:2\n");
    let ConfigError::Syntax { line, message, .. } = &error else {
        panic!("not a syntax error: {error:?}");
    };
    assert_eq!(*line, 3);
    let first = message.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        "duplicate key `listen`: a key may appear only once in a mapping"
    );
    assert!(!message.contains("DuplicateKeyPolicy"), "{message}");
}

#[test]
fn alias_bomb_is_described_without_rust_debug_output() {
    // 300 upstreams each expanding the same 1000-entry list: 300,000 nodes from 2 KiB.
    let mut yaml = format!(
        "trusted_proxies: &a [{}]\nupstreams:\n",
        vec!["10.0.0.1"; 1000].join(",")
    );
    for i in 0..300 {
        yaml.push_str(&format!("  u{i}:\n    servers: *a\n"));
    }
    let error = refused(&yaml);
    let ConfigError::Syntax { message, .. } = &error else {
        panic!("not a syntax error: {error:?}");
    };
    let first = message.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        "the YAML has too many nodes (over 250,000), e.g. an alias bomb: a configuration file needs far fewer"
    );
    assert!(!message.contains("Nodes {"), "{message}");
}

#[test]
fn oversized_config_file_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    let line = "# padding padding padding padding padding padding padding padding\n";
    let text = line.repeat((MAX_CONFIG_BYTES as usize) / line.len() + 1);
    std::fs::write(&path, text).unwrap();
    let error = load(Some(&path), &Overrides::default(), &|_| None).unwrap_err();
    assert!(
        matches!(&error, ConfigError::TooLarge { path: p } if *p == path),
        "{error:?}"
    );
    assert!(error.to_string().contains("larger than 4 MiB"), "{error}");
    // Exactly at the cap is still read.
    std::fs::write(&path, "#".repeat(MAX_CONFIG_BYTES as usize)).unwrap();
    assert!(load(Some(&path), &Overrides::default(), &|_| None).is_ok());
}

#[test]
fn endless_special_file_fails_fast() {
    let started = std::time::Instant::now();
    let error = load(Some(Path::new("/dev/zero")), &Overrides::default(), &|_| {
        None
    })
    .unwrap_err();
    assert!(matches!(error, ConfigError::TooLarge { .. }), "{error:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn an_admin_listener_off_loopback_is_warned_about() {
    assert!(load_with("", &[]).unwrap().warnings().is_empty());
    assert!(load_with("admin:\n  listen: '[::1]:9090'\n", &[])
        .unwrap()
        .warnings()
        .is_empty());
    let settings = load_with("admin:\n  listen: 0.0.0.0:9090\n", &[]).unwrap();
    assert_eq!(
        settings.warnings(),
        ["admin listener on 0.0.0.0:9090 is not loopback: its endpoints have no authentication, so anyone who can reach it can read /metrics and /certificates and POST /reload; keep it on 127.0.0.1 (the default) or firewall the port"]
    );
}
