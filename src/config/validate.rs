//! Raw file config + environment + flags → [`Settings`]. Every rule about what a value may be
//! lives here, once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Spanned;

use super::env::{parse_switch, EnvOverlay};
use super::file::{CertificateFile, FileConfig, HeaderText, HstsFile, Switch};
use super::suites::{self, refusal_reason, KxGroup, Tls12Suite, Tls13Suite};
use super::{
    normalize_dns_name, CertSource, CertificateSettings, ConfigError, HeaderSettings, Hsts,
    HttpMode, HttpSettings, Limits, Origin, Overrides, Settings, TlsSettings, TlsVersion,
    DEFAULT_DATA_DIR, DEFAULT_HTTP_LISTEN, DEFAULT_LISTEN,
};

const ONE_YEAR: Duration = Duration::from_secs(365 * 86_400);
/// Timeouts beyond a year are typos, and would overflow timer arithmetic near `u64::MAX`.
const MAX_LIMIT_DURATION: Duration = ONE_YEAR;
const MAX_CONNECTIONS: usize = 1_000_000;
const MAX_WORKERS: usize = 1024;

/// Turns locations in the file into [`Origin`]s and relative paths into absolute ones.
struct Context<'a> {
    path: Option<&'a Path>,
}

impl Context<'_> {
    fn origin<T>(&self, spanned: &Spanned<T>) -> Origin {
        self.origin_at(spanned.referenced.line(), spanned.referenced.column())
    }

    fn origin_at(&self, line: u64, column: u64) -> Origin {
        let path = self
            .path
            .map_or_else(|| PathBuf::from("<config>"), Path::to_path_buf);
        Origin::File { path, line, column }
    }

    /// `tls.client_auth` or a certificate entry's (`field`).
    fn client_auth(
        &self,
        raw: Option<Spanned<super::client_auth::ClientAuthFile>>,
        field: &str,
    ) -> Result<Option<super::client_auth::ClientAuthSettings>, ConfigError> {
        raw.map(|raw| {
            super::client_auth::client_auth_settings(
                raw,
                field,
                &|line, column| self.origin_at(line, column),
                &|text| self.file_path(text),
            )
        })
        .transpose()
    }

    /// Paths in the file are relative to the file's folder, as in nginx's `include`.
    fn file_path(&self, text: &str) -> PathBuf {
        let path = PathBuf::from(text);
        match self.path.and_then(Path::parent) {
            Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => dir.join(path),
            _ => path,
        }
    }
}

pub fn validate(
    raw: &mut FileConfig,
    path: Option<&Path>,
    env: &EnvOverlay,
    flags: &Overrides,
) -> Result<Settings, ConfigError> {
    let cx = Context { path };

    let data_dir = if let Some(dir) = &flags.data_dir {
        dir.clone()
    } else if let Some((dir, _)) = &env.data_dir {
        PathBuf::from(dir)
    } else if let Some(dir) = &raw.data_dir {
        cx.file_path(&dir.value)
    } else {
        PathBuf::from(DEFAULT_DATA_DIR)
    };
    // Absolute, so the effective configuration means the same wherever it is read from.
    let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);

    let listen = pick_addr(
        flags
            .listen
            .as_deref()
            .map(|v| (v, Origin::Flag("--listen"))),
        env.listen.as_ref(),
        raw.listen
            .as_ref()
            .map(|s| (s.value.as_str(), cx.origin(s))),
        DEFAULT_LISTEN,
        "listen",
    )?;

    let (http_at, http) = split(&cx, raw.http.take());
    let http = http_settings(&cx, &http_at, http, env, flags)?;
    let (tls_at, tls) = split(&cx, raw.tls.take());
    let tls = tls_settings(&cx, &tls_at, tls, env, &data_dir)?;
    let (headers_at, headers) = split(&cx, raw.headers.take());
    let headers = header_settings(&headers_at, headers)?;
    let (limits_at, mut limits) = split(&cx, raw.limits.take());
    let per_ip = limits.as_mut().and_then(|l| l.per_ip.take());
    let mut limits = limit_settings(&limits_at, limits)?;
    if let Some((value, origin)) = &env.workers {
        limits.workers = value
            .parse()
            .ok()
            .filter(|w| *w <= MAX_WORKERS)
            .ok_or_else(|| {
                ConfigError::invalid(
                    origin.clone(),
                    "TLSGATE_WORKERS",
                    format!("`{value}` is not a number of threads between 0 (one per CPU) and {MAX_WORKERS}"),
                )
            })?;
    }
    let default_route = if let Some(url) = &flags.upstream {
        Some((url.clone(), Origin::Flag("--upstream")))
    } else if let Some((url, origin)) = &env.upstream {
        Some((url.clone(), origin.clone()))
    } else {
        raw.default_route
            .take()
            .map(|route| (route.value.clone(), cx.origin(&route)))
    };
    let file_origin = |line: u64, column: u64| match cx.path {
        Some(path) => Origin::File {
            path: path.to_path_buf(),
            line,
            column,
        },
        None => Origin::File {
            path: PathBuf::from("<config>"),
            line,
            column,
        },
    };
    // Hub endpoints are validated as routes (after the plain ones, in `proxy.routes`).
    let super::hub::Parsed {
        routes: mut hub_routes,
        settings: mut hub,
    } = super::hub::validate(raw.hub.take(), &file_origin)?;
    // Taken out before the routes are validated, resolved against the routes after.
    let route_cors: Vec<_> = raw
        .routes
        .iter_mut()
        .flatten()
        .chain(hub_routes.iter_mut())
        .map(|r| r.value.cors.take())
        .collect();
    let route_websocket: Vec<_> = raw
        .routes
        .iter_mut()
        .flatten()
        .chain(hub_routes.iter_mut())
        .map(|r| r.value.websocket.take())
        .collect();
    let mut proxy = super::proxy::validate(super::proxy::ProxyInput {
        upstreams: raw.upstreams.take(),
        routes: raw.routes.take(),
        hub_routes,
        default_route,
        trusted_proxies: raw.trusted_proxies.take(),
        origin: &file_origin,
    })?;
    let auth = super::jwt::validate(
        super::jwt::AuthInput {
            jwt: raw.jwt.take(),
            forward_auth: raw.forward_auth.take(),
            config: path,
            secrets: &env.jwt_secrets,
            origin: &file_origin,
        },
        proxy
            .routes
            .iter()
            .map(|r| (r.auth.as_ref(), r.forward_auth.as_ref())),
    )?;
    let cors = super::cors::resolve(
        raw.cors.take(),
        route_cors,
        proxy.routes.iter_mut().map(|r| &mut r.cors),
        &file_origin,
    )?;
    super::websocket::resolve(
        route_websocket,
        proxy.routes.iter_mut().map(|r| &mut r.websocket),
        &file_origin,
    )?;

    let (edge_limits, per_ip) = super::limits::validate(super::limits::LimitsInput {
        rate_limits: raw.rate_limits.take(),
        bans: raw.bans.take(),
        listener_access: raw.listener_access.take(),
        per_ip,
        routes: proxy.routes.iter().map(|r| &r.limits).collect(),
        origin: &file_origin,
    })?;
    limits.per_ip = per_ip;
    super::hub::attach_routes(&mut hub, &proxy.routes);

    if tls.enabled && http.mode != HttpMode::Off && http.listen == listen && listen.port() != 0 {
        return Err(ConfigError::HttpListenIsMainListen {
            origin: http_at,
            addr: listen,
        });
    }

    let acme = acme_settings(&cx, raw.acme.take(), &tls)?;
    let (admin_at, admin_raw) = split(&cx, raw.admin.take());
    let mut admin_file_addr = None;
    let mut admin_on = true;
    match admin_raw {
        None => {}
        Some(Switch::Bool(on)) => admin_on = on,
        Some(Switch::Word(word)) => {
            admin_on = parse_switch(&word).ok_or_else(|| {
                ConfigError::invalid(
                    admin_at.clone(),
                    "admin",
                    format!("`{word}` is not on/off or a mapping (listen)"),
                )
            })?
        }
        Some(Switch::Map(map)) => admin_file_addr = map.listen,
    }
    let admin = if let Some(flag) = &flags.admin_listen {
        Some(parse_addr(
            flag,
            Origin::Flag("--admin-listen"),
            "admin.listen",
        )?)
    } else if let Some((addr, origin)) = &env.admin_listen {
        Some(parse_addr(addr, origin.clone(), "admin.listen")?)
    } else if !admin_on {
        None
    } else {
        Some(match &admin_file_addr {
            Some(addr) => parse_addr(&addr.value, cx.origin(addr), "admin.listen")?,
            None => parse_addr(super::DEFAULT_ADMIN_LISTEN, Origin::Default, "admin.listen")?,
        })
    };
    if let Some(acme) = &acme {
        if acme.challenge == super::AcmeChallenge::Http01
            && (http.mode == HttpMode::Off || !tls.enabled)
        {
            // Point at what to change: with TLS off there is no plain-HTTP listener whatever
            // `http:` says. The environment overrides the file, so it is named first.
            let (from_env, section) = if tls.enabled {
                (env.http_mode.as_ref().map(|(_, at)| at), http_at)
            } else {
                (env.tls_enabled.as_ref().map(|(_, at)| at), tls_at)
            };
            return Err(ConfigError::Http01WithoutHttpListener {
                origin: from_env.cloned().unwrap_or(section),
                http_mode: http.mode,
                tls_enabled: tls.enabled,
            });
        }
    }

    Ok(Settings {
        source: path.map(Path::to_path_buf),
        data_dir,
        listen,
        http,
        tls,
        headers,
        limits,
        proxy,
        auth,
        cors,
        acme,
        admin,
        access_log: raw.access_log.unwrap_or(true),
        edge_limits,
        hub,
    })
}

/// A section's value and where it starts (its origin when a field has no location of its own).
fn split<T>(cx: &Context<'_>, section: Option<Spanned<T>>) -> (Origin, Option<T>) {
    match section {
        Some(spanned) => (cx.origin(&spanned), Some(spanned.value)),
        None => (Origin::Default, None),
    }
}

fn parse_addr(text: &str, origin: Origin, field: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        ConfigError::invalid(
            origin,
            field,
            format!("`{text}` is not an address: use IP:PORT, e.g. 127.0.0.1:8443, 0.0.0.0:443 or [::]:443"),
        )
    })
}

fn pick_addr(
    flag: Option<(&str, Origin)>,
    env: Option<&(String, Origin)>,
    file: Option<(&str, Origin)>,
    default: &str,
    field: &str,
) -> Result<SocketAddr, ConfigError> {
    let (text, origin) = flag
        .or_else(|| env.map(|(v, o)| (v.as_str(), o.clone())))
        .or(file)
        .unwrap_or((default, Origin::Default));
    parse_addr(text, origin, field)
}

fn parse_http_mode(word: &str, origin: Origin, field: &str) -> Result<HttpMode, ConfigError> {
    match word.trim().to_ascii_lowercase().as_str() {
        "redirect" | "on" | "true" => Ok(HttpMode::Redirect),
        "reject" => Ok(HttpMode::Reject),
        "off" | "false" | "disabled" => Ok(HttpMode::Off),
        other => Err(ConfigError::invalid(
            origin,
            field,
            format!("`{other}` is not a mode: use redirect, reject or off"),
        )),
    }
}

fn http_settings(
    cx: &Context<'_>,
    section: &Origin,
    raw: Option<Switch<super::file::HttpFile>>,
    env: &EnvOverlay,
    flags: &Overrides,
) -> Result<HttpSettings, ConfigError> {
    let mut mode = HttpMode::Redirect;
    let mut listen_file = None;
    let mut redirect_port = None;
    match raw {
        None => {}
        Some(Switch::Bool(on)) => {
            mode = if on {
                HttpMode::Redirect
            } else {
                HttpMode::Off
            }
        }
        Some(Switch::Word(word)) => mode = parse_http_mode(&word, section.clone(), "http")?,
        Some(Switch::Map(map)) => {
            if let Some(word) = &map.mode {
                mode = parse_http_mode(&word.value, cx.origin(word), "http.mode")?;
            }
            listen_file = map.listen;
            redirect_port = map.redirect_port;
        }
    }
    if let Some((word, origin)) = &env.http_mode {
        mode = parse_http_mode(word, origin.clone(), "TLSGATE_HTTP")?;
    }
    let listen = pick_addr(
        flags
            .http_listen
            .as_deref()
            .map(|v| (v, Origin::Flag("--http-listen"))),
        env.http_listen.as_ref(),
        listen_file
            .as_ref()
            .map(|s| (s.value.as_str(), cx.origin(s))),
        DEFAULT_HTTP_LISTEN,
        "http.listen",
    )?;
    if redirect_port == Some(0) {
        return Err(ConfigError::invalid(
            section.clone(),
            "http.redirect_port",
            "port 0 cannot appear in a redirect",
        ));
    }
    Ok(HttpSettings {
        mode,
        listen,
        redirect_port,
    })
}

fn parse_version(text: &str, origin: Origin, field: &str) -> Result<TlsVersion, ConfigError> {
    let normalized = text
        .trim()
        .to_ascii_lowercase()
        .trim_start_matches("tlsv")
        .trim_start_matches("tls")
        .trim()
        .to_owned();
    match normalized.as_str() {
        "1.2" | "12" => Ok(TlsVersion::Tls12),
        "1.3" | "13" => Ok(TlsVersion::Tls13),
        "1.0" | "1" | "1.1" | "10" | "11" => Err(ConfigError::invalid(
            origin,
            field,
            format!("TLS {normalized} is not supported: TLS 1.0 and 1.1 are deprecated (RFC 8996); use \"1.2\" or \"1.3\""),
        )),
        _ => Err(ConfigError::invalid(
            origin,
            field,
            format!("`{text}` is not a TLS version: use \"1.2\" or \"1.3\""),
        )),
    }
}

fn parse_list<T: Copy + PartialEq>(
    cx: &Context<'_>,
    section: &Origin,
    items: Option<Vec<Spanned<String>>>,
    field: &str,
    lookup: fn(&str) -> Option<T>,
    valid: fn() -> String,
    default: Vec<T>,
) -> Result<Vec<T>, ConfigError> {
    let Some(items) = items else {
        return Ok(default);
    };
    let mut out = Vec::new();
    for item in &items {
        match lookup(&item.value) {
            Some(value) if !out.contains(&value) => out.push(value),
            Some(_) => {}
            None => {
                let reason = match refusal_reason(&item.value) {
                    Some(why) => format!("`{}` is refused: {why}", item.value),
                    None => format!("`{}` is unknown; valid: {}", item.value, valid()),
                };
                return Err(ConfigError::invalid(cx.origin(item), field, reason));
            }
        }
    }
    if out.is_empty() {
        return Err(ConfigError::invalid(
            section.clone(),
            field,
            format!("the list is empty; valid: {}", valid()),
        ));
    }
    Ok(out)
}

fn tls_settings(
    cx: &Context<'_>,
    section: &Origin,
    raw: Option<Switch<super::file::TlsFile>>,
    env: &EnvOverlay,
    data_dir: &Path,
) -> Result<TlsSettings, ConfigError> {
    let mut enabled = true;
    let mut map = super::file::TlsFile::default();
    match raw {
        None => {}
        Some(Switch::Bool(on)) => enabled = on,
        Some(Switch::Word(word)) => {
            enabled = parse_switch(&word).ok_or_else(|| {
                ConfigError::invalid(
                    section.clone(),
                    "tls",
                    format!("`{word}` is not on/off or a mapping of TLS settings"),
                )
            })?
        }
        Some(Switch::Map(file)) => {
            enabled = file.enabled.unwrap_or(true);
            map = file;
        }
    }
    if let Some((on, _)) = &env.tls_enabled {
        enabled = *on;
    }

    let mut min_version = TlsVersion::Tls12;
    if let Some(version) = &map.min_version {
        min_version = parse_version(&version.value.0, cx.origin(version), "tls.min_version")?;
    }
    if let Some((text, origin)) = &env.min_version {
        min_version = parse_version(text, origin.clone(), "TLSGATE_MIN_TLS_VERSION")?;
    }

    let tls13_cipher_suites = parse_list(
        cx,
        section,
        map.tls13_cipher_suites.take(),
        "tls.tls13_cipher_suites",
        Tls13Suite::from_name,
        Tls13Suite::valid_names,
        suites::default_tls13(),
    )?;
    let tls12_cipher_suites = parse_list(
        cx,
        section,
        map.tls12_cipher_suites.take(),
        "tls.tls12_cipher_suites",
        Tls12Suite::from_name,
        Tls12Suite::valid_names,
        suites::default_tls12(),
    )?;
    let key_exchange_groups = parse_list(
        cx,
        section,
        map.key_exchange_groups.take(),
        "tls.key_exchange_groups",
        KxGroup::from_name,
        KxGroup::valid_names,
        suites::default_groups(),
    )?;

    let certificates = match &env.certificate {
        Some(from_env) => vec![CertificateSettings {
            source: CertSource::Files {
                cert_file: from_env.cert_file.clone(),
                key_file: from_env.key_file.clone(),
            },
            names: Vec::new(),
            default: true,
            client_auth: None,
            origin: from_env.origin.clone(),
        }],
        None => map
            .certificates
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|entry| certificate_settings(cx, entry, data_dir))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let defaults: Vec<_> = certificates.iter().filter(|c| c.default).collect();
    if let [first, second, ..] = defaults.as_slice() {
        return Err(ConfigError::TwoDefaultCertificates {
            origin: second.origin.clone(),
            first: first.origin.clone(),
        });
    }

    Ok(TlsSettings {
        enabled,
        min_version,
        tls13_cipher_suites,
        tls12_cipher_suites,
        key_exchange_groups,
        session_tickets: map.session_tickets.unwrap_or(true),
        certificates,
        client_auth: cx
            .client_auth(map.client_auth.take(), "tls.client_auth")?
            .unwrap_or_default(),
    })
}

fn certificate_settings(
    cx: &Context<'_>,
    entry: Spanned<CertificateFile>,
    data_dir: &Path,
) -> Result<CertificateSettings, ConfigError> {
    let origin = cx.origin(&entry);
    let mut file = entry.value;
    let client_auth = cx.client_auth(file.client_auth.take(), "tls.certificates.client_auth")?;
    let mut settings = match &file.acme {
        Some(acme) => acme_certificate(cx, origin, &file, acme, data_dir)?,
        None => file_certificate(cx, origin, file)?,
    };
    if client_auth.is_some() && settings.names.is_empty() {
        return Err(ConfigError::invalid(
            settings.origin,
            "tls.certificates.client_auth",
            "list the entry's `names`: its client_auth applies to those server names",
        ));
    }
    settings.client_auth = client_auth;
    Ok(settings)
}

fn file_certificate(
    cx: &Context<'_>,
    origin: Origin,
    file: CertificateFile,
) -> Result<CertificateSettings, ConfigError> {
    let source = match (&file.cert_file, &file.key_file, &file.pem_file) {
        (Some(cert), Some(key), None) => CertSource::Files {
            cert_file: cx.file_path(&cert.value),
            key_file: cx.file_path(&key.value),
        },
        (None, None, Some(pem)) => CertSource::Combined {
            pem_file: cx.file_path(&pem.value),
        },
        (Some(cert), None, None) => {
            return Err(ConfigError::CertFileWithoutKeyFile {
                origin,
                cert_file: cx.file_path(&cert.value),
            })
        }
        (None, Some(key), None) => {
            return Err(ConfigError::KeyFileWithoutCertFile {
                origin,
                key_file: cx.file_path(&key.value),
            })
        }
        (None, None, None) => return Err(ConfigError::CertificateWithoutFiles { origin }),
        (_, _, Some(pem)) => {
            return Err(ConfigError::PemFileWithCertOrKeyFile {
                origin,
                pem_file: cx.file_path(&pem.value),
            })
        }
    };
    let mut names = Vec::new();
    for name in file.names.unwrap_or_default() {
        let normalized = normalize_dns_name(&name.value).map_err(|error| {
            ConfigError::invalid(
                cx.origin(&name),
                "tls.certificates.names",
                error.to_string(),
            )
        })?;
        if !names.contains(&normalized) {
            names.push(normalized);
        }
    }
    Ok(CertificateSettings {
        source,
        names,
        default: file.default.unwrap_or(false),
        client_auth: None,
        origin,
    })
}

fn header_value(
    section: &Origin,
    raw: Option<HeaderText>,
    field: &str,
    default: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    match raw {
        None => Ok(default.map(str::to_owned)),
        Some(HeaderText::Off) => Ok(None),
        Some(HeaderText::Value(value)) => {
            http::HeaderValue::from_str(&value).map_err(|_| {
                ConfigError::invalid(
                    section.clone(),
                    field,
                    format!("`{value}` is not a valid header value (control characters?)"),
                )
            })?;
            Ok(Some(value))
        }
    }
}

fn header_settings(
    section: &Origin,
    raw: Option<super::file::HeadersFile>,
) -> Result<HeaderSettings, ConfigError> {
    let raw = raw.unwrap_or_default();
    let default_hsts = Hsts {
        max_age: ONE_YEAR,
        include_subdomains: true,
        preload: false,
    };
    let hsts = match raw.hsts {
        None | Some(Switch::Bool(true)) => Some(default_hsts),
        Some(Switch::Bool(false)) => None,
        Some(Switch::Word(word)) => match parse_switch(&word) {
            Some(true) => Some(default_hsts),
            Some(false) => None,
            None => {
                return Err(ConfigError::invalid(
                    section.clone(),
                    "headers.hsts",
                    format!(
                    "`{word}` is not on/off or a mapping (max_age, include_subdomains, preload)"
                ),
                ))
            }
        },
        Some(Switch::Map(HstsFile {
            enabled,
            max_age,
            include_subdomains,
            preload,
        })) => {
            if enabled == Some(false) {
                None
            } else {
                let max_age = max_age.map(|d| d.0).unwrap_or(ONE_YEAR);
                if max_age > 2 * ONE_YEAR {
                    return Err(ConfigError::invalid(
                        section.clone(),
                        "headers.hsts.max_age",
                        "at most 730d (browsers cap it; a longer value is a typo)",
                    ));
                }
                let hsts = Hsts {
                    max_age,
                    include_subdomains: include_subdomains.unwrap_or(true),
                    preload: preload.unwrap_or(false),
                };
                if hsts.preload && hsts.max_age < ONE_YEAR {
                    return Err(ConfigError::HstsPreloadShortMaxAge {
                        origin: section.clone(),
                        max_age: hsts.max_age,
                    });
                }
                if hsts.preload && !hsts.include_subdomains {
                    return Err(ConfigError::HstsPreloadWithoutSubdomains {
                        origin: section.clone(),
                    });
                }
                Some(hsts)
            }
        }
    };
    let mut custom = BTreeMap::new();
    for (name, value) in raw.custom.unwrap_or_default() {
        let valid = http::HeaderName::from_bytes(name.as_bytes()).is_ok()
            && http::HeaderValue::from_str(&value).is_ok();
        if !valid {
            return Err(ConfigError::invalid(
                section.clone(),
                "headers.custom",
                format!("`{name}: {value}` is not a valid header"),
            ));
        }
        custom.insert(name, value);
    }
    Ok(HeaderSettings {
        hsts,
        x_content_type_options: header_value(
            section,
            raw.x_content_type_options,
            "headers.x_content_type_options",
            Some("nosniff"),
        )?,
        x_frame_options: header_value(
            section,
            raw.x_frame_options,
            "headers.x_frame_options",
            Some("DENY"),
        )?,
        referrer_policy: header_value(
            section,
            raw.referrer_policy,
            "headers.referrer_policy",
            Some("strict-origin-when-cross-origin"),
        )?,
        content_security_policy: header_value(
            section,
            raw.content_security_policy,
            "headers.content_security_policy",
            None,
        )?,
        custom,
    })
}

fn limit_settings(
    section: &Origin,
    raw: Option<super::file::LimitsFile>,
) -> Result<Limits, ConfigError> {
    let raw = raw.unwrap_or_default();
    let positive = |value: Option<super::units::ConfigDuration>, default: u64, field: &str| {
        let duration = value.map(|d| d.0).unwrap_or(Duration::from_secs(default));
        if duration.is_zero() || duration > MAX_LIMIT_DURATION {
            return Err(ConfigError::invalid(
                section.clone(),
                field,
                "must be greater than zero and at most 365d",
            ));
        }
        Ok(duration)
    };
    let max_header_size = raw.max_header_size.map(|s| s.0).unwrap_or(16 * 1024);
    if !(8 * 1024..=1024 * 1024).contains(&max_header_size) {
        return Err(ConfigError::invalid(
            section.clone(),
            "limits.max_header_size",
            "must be between 8KiB and 1MiB",
        ));
    }
    let max_connections = raw.max_connections.unwrap_or(10_000);
    if !(1..=MAX_CONNECTIONS).contains(&max_connections) {
        return Err(ConfigError::invalid(
            section.clone(),
            "limits.max_connections",
            format!("must be between 1 and {MAX_CONNECTIONS}"),
        ));
    }
    let workers = raw.workers.unwrap_or(0);
    if workers > MAX_WORKERS {
        return Err(ConfigError::invalid(
            section.clone(),
            "limits.workers",
            format!("must be between 0 (one per CPU) and {MAX_WORKERS}"),
        ));
    }
    Ok(Limits {
        workers,
        handshake_timeout: positive(raw.handshake_timeout, 10, "limits.handshake_timeout")?,
        header_read_timeout: positive(raw.header_read_timeout, 10, "limits.header_read_timeout")?,
        max_header_size,
        idle_timeout: positive(raw.idle_timeout, 60, "limits.idle_timeout")?,
        send_timeout: positive(raw.send_timeout, 60, "limits.send_timeout")?,
        websocket_idle_timeout: positive(
            raw.websocket_idle_timeout,
            3600,
            "limits.websocket_idle_timeout",
        )?,
        max_connections,
        shutdown_timeout: positive(raw.shutdown_timeout, 30, "limits.shutdown_timeout")?,
        max_body_size: raw.max_body_size.map(|s| s.0).unwrap_or(10 * 1024 * 1024),
        reload_grace: positive(raw.reload_grace, 10, "limits.reload_grace")?,
        per_ip: Default::default(),
    })
}

fn acme_certificate(
    cx: &Context<'_>,
    origin: Origin,
    file: &CertificateFile,
    acme: &super::file::AcmeCertificateFile,
    data_dir: &Path,
) -> Result<CertificateSettings, ConfigError> {
    let found: Vec<&'static str> = [
        ("cert_file", file.cert_file.is_some()),
        ("key_file", file.key_file.is_some()),
        ("pem_file", file.pem_file.is_some()),
        ("names", file.names.is_some()),
    ]
    .into_iter()
    .filter_map(|(field, given)| given.then_some(field))
    .collect();
    if !found.is_empty() {
        return Err(ConfigError::AcmeCertificateWithFiles { origin, found });
    }
    let mut names = Vec::new();
    for name in &acme.names {
        let normalized = normalize_dns_name(&name.value).map_err(|error| {
            ConfigError::invalid(
                cx.origin(name),
                "tls.certificates.acme.names",
                error.to_string(),
            )
        })?;
        if !names.contains(&normalized) {
            names.push(normalized);
        }
    }
    if names.is_empty() {
        return Err(ConfigError::invalid(
            origin,
            "tls.certificates.acme.names",
            "list at least one name",
        ));
    }
    let lineage = super::acme_lineage(&names);
    super::validate_path_component(&lineage).map_err(|e| {
        ConfigError::invalid(origin.clone(), "tls.certificates.acme.names", e.to_string())
    })?;
    let live = data_dir.join("live").join(&lineage);
    Ok(CertificateSettings {
        source: CertSource::Acme {
            acme: super::AcmeCertificate {
                names: names.clone(),
            },
            fullchain: live.join("fullchain.pem"),
            privkey: live.join("privkey.pem"),
        },
        names,
        default: file.default.unwrap_or(false),
        client_auth: None,
        origin,
    })
}

fn acme_settings(
    cx: &Context<'_>,
    raw: Option<Spanned<super::file::AcmeFile>>,
    tls: &TlsSettings,
) -> Result<Option<super::AcmeSettings>, ConfigError> {
    let acme_certs: Vec<&CertificateSettings> = tls
        .certificates
        .iter()
        .filter(|c| matches!(c.source, CertSource::Acme { .. }))
        .collect();
    let Some(raw) = raw else {
        if let Some(first) = acme_certs.first() {
            return Err(ConfigError::AcmeCertificateWithoutAcmeSection {
                origin: first.origin.clone(),
            });
        }
        return Ok(None);
    };
    let origin = cx.origin(&raw);
    let file = raw.value;
    let directory = match file.directory.as_ref().map(|d| d.value.as_str()) {
        None | Some("letsencrypt") => super::LETSENCRYPT.to_owned(),
        Some("letsencrypt-staging") => super::LETSENCRYPT_STAGING.to_owned(),
        Some(url) if url.starts_with("https://") => url.to_owned(),
        Some(other) => {
            return Err(ConfigError::invalid(
                file.directory
                    .as_ref()
                    .map(|d| cx.origin(d))
                    .unwrap_or(origin),
                "acme.directory",
                format!(
                    "`{other}`: use letsencrypt, letsencrypt-staging or an https:// directory URL"
                ),
            ))
        }
    };
    if file.agree_tos != Some(true) {
        return Err(ConfigError::invalid(
            origin,
            "acme.agree_tos",
            format!("set `agree_tos: true` to accept the terms of service of {directory}"),
        ));
    }
    let challenge = match file.challenge.as_ref().map(|c| c.value.as_str()) {
        None | Some("http-01") => super::AcmeChallenge::Http01,
        Some("tls-alpn-01") => super::AcmeChallenge::TlsAlpn01,
        Some("dns-01") => super::AcmeChallenge::Dns01,
        Some(other) => {
            return Err(ConfigError::invalid(
                file.challenge
                    .as_ref()
                    .map(|c| cx.origin(c))
                    .unwrap_or(origin),
                "acme.challenge",
                format!("`{other}`: use http-01, tls-alpn-01 or dns-01"),
            ))
        }
    };
    let key_type = match file.key_type.as_ref().map(|k| k.value.as_str()) {
        None => "ecdsa-p256".to_owned(),
        Some(kind @ ("ecdsa-p256" | "ecdsa-p384" | "rsa-2048" | "rsa-3072" | "rsa-4096")) => {
            kind.to_owned()
        }
        Some(other) => {
            return Err(ConfigError::invalid(
                file.key_type
                    .as_ref()
                    .map(|k| cx.origin(k))
                    .unwrap_or(origin),
                "acme.key_type",
                format!("`{other}`: use ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096"),
            ))
        }
    };
    let dns_hook = file.dns_hook.as_ref().map(|h| cx.file_path(&h.value));
    if challenge == super::AcmeChallenge::Dns01 && dns_hook.is_none() {
        return Err(ConfigError::Dns01WithoutHook { origin });
    }
    let mut lineages: Vec<(String, &Origin)> = Vec::new();
    for cert in &acme_certs {
        let lineage = super::acme_lineage(&cert.names);
        if let Some((_, first)) = lineages.iter().find(|(l, _)| *l == lineage) {
            return Err(ConfigError::AcmeFolderShared {
                origin: cert.origin.clone(),
                lineage,
                first: (*first).clone(),
            });
        }
        lineages.push((lineage, &cert.origin));
        if challenge == super::AcmeChallenge::Dns01 {
            let ip = cert
                .names
                .iter()
                .find(|n| n.parse::<std::net::IpAddr>().is_ok());
            if let Some(name) = ip {
                return Err(ConfigError::AcmeIpNameWithDns01 {
                    origin: cert.origin.clone(),
                    name: name.clone(),
                });
            }
        } else if let Some(name) = cert.names.iter().find(|n| n.starts_with("*.")) {
            return Err(ConfigError::AcmeWildcardWithoutDns01 {
                origin: cert.origin.clone(),
                name: name.clone(),
                challenge,
            });
        }
    }
    match (&file.eab_kid, &file.eab_hmac_key) {
        (Some(_), None) => {
            return Err(ConfigError::EabIncomplete {
                origin,
                missing: "eab_hmac_key",
            })
        }
        (None, Some(_)) => {
            return Err(ConfigError::EabIncomplete {
                origin,
                missing: "eab_kid",
            })
        }
        _ => {}
    }
    let check_interval = file
        .check_interval
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(12 * 3600));
    if check_interval < Duration::from_secs(1) || check_interval > Duration::from_secs(86_400) {
        return Err(ConfigError::invalid(
            origin,
            "acme.check_interval",
            "must be between 1s and 1d",
        ));
    }
    let request_timeout = file
        .request_timeout
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(30));
    if request_timeout < Duration::from_millis(100) || request_timeout > Duration::from_secs(600) {
        return Err(ConfigError::invalid(
            origin,
            "acme.request_timeout",
            "must be between 100ms and 10m",
        ));
    }
    Ok(Some(super::AcmeSettings {
        directory,
        email: file.email,
        agree_tos: true,
        eab_kid: file.eab_kid,
        eab_hmac_key: file.eab_hmac_key,
        ca_root: file.ca_root.as_ref().map(|r| cx.file_path(&r.value)),
        challenge,
        key_type,
        dns_hook,
        deploy_hook: file.deploy_hook,
        check_interval,
        request_timeout,
    }))
}
