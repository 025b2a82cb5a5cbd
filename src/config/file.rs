//! The config file exactly as written: every key optional, unknown keys rejected. Validation
//! into [`super::Settings`] happens in `validate.rs`; nothing outside `config` sees these types.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use super::units::{ConfigDuration, ConfigSize};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<Spanned<String>>,
    pub listen: Option<Spanned<String>>,
    pub http: Option<Spanned<Switch<HttpFile>>>,
    pub tls: Option<Spanned<Switch<TlsFile>>>,
    pub headers: Option<Spanned<HeadersFile>>,
    pub limits: Option<Spanned<LimitsFile>>,
    pub upstreams: Option<std::collections::BTreeMap<String, Spanned<super::proxy::UpstreamFile>>>,
    pub routes: Option<Vec<Spanned<super::proxy::RouteFile>>>,
    pub default_route: Option<Spanned<String>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub jwt: Option<BTreeMap<String, Spanned<super::jwt::JwtFile>>>,
    pub forward_auth: Option<BTreeMap<String, Spanned<super::jwt::ForwardAuthFile>>>,
    /// Named CORS policies, referred to by routes' `cors: NAME`.
    pub cors: Option<BTreeMap<String, Spanned<super::cors::CorsFile>>>,
    pub acme: Option<Spanned<AcmeFile>>,
    /// One log line per request (target `tlsgate::access`); on by default.
    pub access_log: Option<bool>,
    /// `admin: off`, or `admin: {listen: ADDR}`.
    pub admin: Option<Spanned<Switch<AdminFile>>>,
    pub rate_limits: Option<BTreeMap<String, Spanned<super::limits::ZoneFile>>>,
    pub bans: Option<Spanned<super::limits::BansFile>>,
    pub listener_access: Option<Spanned<super::limits::AccessFile>>,
    /// The WSS hub: endpoints and namespaces.
    pub hub: Option<Spanned<super::hub::HubFile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    pub mode: Option<Spanned<String>>,
    pub listen: Option<Spanned<String>>,
    pub redirect_port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub enabled: Option<bool>,
    pub min_version: Option<Spanned<VersionText>>,
    pub tls13_cipher_suites: Option<Vec<Spanned<String>>>,
    pub tls12_cipher_suites: Option<Vec<Spanned<String>>>,
    pub key_exchange_groups: Option<Vec<Spanned<String>>>,
    pub session_tickets: Option<bool>,
    pub certificates: Option<Vec<Spanned<CertificateFile>>>,
    pub client_auth: Option<Spanned<super::client_auth::ClientAuthFile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    pub pem_file: Option<Spanned<String>>,
    pub names: Option<Vec<Spanned<String>>>,
    pub default: Option<bool>,
    /// `acme: {names: [...]}`: obtained and renewed from the `acme:` CA.
    pub acme: Option<AcmeCertificateFile>,
    /// Client certificates for this entry's names (overrides `tls.client_auth`).
    pub client_auth: Option<Spanned<super::client_auth::ClientAuthFile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeCertificateFile {
    pub names: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeFile {
    pub directory: Option<Spanned<String>>,
    pub email: Option<String>,
    pub agree_tos: Option<bool>,
    pub eab_kid: Option<String>,
    pub eab_hmac_key: Option<String>,
    pub ca_root: Option<Spanned<String>>,
    pub challenge: Option<Spanned<String>>,
    pub key_type: Option<Spanned<String>>,
    pub dns_hook: Option<Spanned<String>>,
    pub deploy_hook: Option<String>,
    pub check_interval: Option<ConfigDuration>,
    pub request_timeout: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersFile {
    pub hsts: Option<Switch<HstsFile>>,
    pub x_content_type_options: Option<HeaderText>,
    pub x_frame_options: Option<HeaderText>,
    pub referrer_policy: Option<HeaderText>,
    pub content_security_policy: Option<HeaderText>,
    pub custom: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HstsFile {
    pub enabled: Option<bool>,
    pub max_age: Option<ConfigDuration>,
    pub include_subdomains: Option<bool>,
    pub preload: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub handshake_timeout: Option<ConfigDuration>,
    pub header_read_timeout: Option<ConfigDuration>,
    pub max_header_size: Option<ConfigSize>,
    pub idle_timeout: Option<ConfigDuration>,
    pub send_timeout: Option<ConfigDuration>,
    pub websocket_idle_timeout: Option<ConfigDuration>,
    pub max_connections: Option<usize>,
    pub workers: Option<usize>,
    pub shutdown_timeout: Option<ConfigDuration>,
    pub max_body_size: Option<ConfigSize>,
    pub reload_grace: Option<ConfigDuration>,
    pub per_ip: Option<Spanned<super::limits::PerIpFile>>,
}

/// A section that may be a mapping, or a shorthand word or boolean: `tls: off`,
/// `http: reject`, `hsts: false`.
#[derive(Debug)]
pub enum Switch<M> {
    Bool(bool),
    Word(String),
    Map(M),
}

impl<'de, M: Deserialize<'de>> Deserialize<'de> for Switch<M> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SwitchVisitor<M>(PhantomData<M>);
        impl<'de, M: Deserialize<'de>> Visitor<'de> for SwitchVisitor<M> {
            type Value = Switch<M>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("on, off, a keyword or a mapping")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Switch::Bool(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Switch::Word(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                M::deserialize(de::value::MapAccessDeserializer::new(map)).map(Switch::Map)
            }
        }
        deserializer.deserialize_any(SwitchVisitor(PhantomData))
    }
}

/// A header value, or `false`/`off` to remove the header.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderText {
    Off,
    Value(String),
}

impl<'de> Deserialize<'de> for HeaderText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeaderVisitor;
        impl Visitor<'_> for HeaderVisitor {
            type Value = HeaderText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a header value, or off to remove the header")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                if v {
                    Err(E::custom("give the header's value, or off to remove it"))
                } else {
                    Ok(HeaderText::Off)
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v.is_empty() || v.eq_ignore_ascii_case("off") {
                    Ok(HeaderText::Off)
                } else {
                    Ok(HeaderText::Value(v.to_owned()))
                }
            }
        }
        deserializer.deserialize_any(HeaderVisitor)
    }
}

/// A TLS version as written: `"1.3"`, `1.3` (a YAML float), `TLSv1.3`.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionText(pub String);

impl<'de> Deserialize<'de> for VersionText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VersionVisitor;
        impl Visitor<'_> for VersionVisitor {
            type Value = VersionText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a TLS version: \"1.2\" or \"1.3\"")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(VersionText(format!("{v:.1}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(VersionText(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(VersionText(v.to_owned()))
            }
        }
        deserializer.deserialize_any(VersionVisitor)
    }
}
