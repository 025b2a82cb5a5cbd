//! Limits and bans in the configuration: `rate_limits:` (named nginx-style `limit_req` zones),
//! `limits.per_ip` (per-client caps at accept and at the upgrade), `bans:` (fail2ban built in),
//! `listener_access:` (CIDR lists refused at accept) and the routes' `rate_limit`, `allow` and
//! `deny` — file schema, typed settings and their validation.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize, Serializer};
use serde_saphyr::Spanned;

use super::units::{self, ConfigDuration};
use super::{ConfigError, Origin};

// ---------- file schema ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneFile {
    pub rate: Spanned<String>,
    pub burst: Option<u64>,
    pub nodelay: Option<bool>,
    pub delay: Option<u64>,
    pub key: Option<Spanned<String>>,
    pub status: Option<u16>,
    pub dry_run: Option<bool>,
    pub max_keys: Option<usize>,
    pub ipv6_prefix: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerIpFile {
    pub connections: Option<u32>,
    pub websockets: Option<u32>,
    pub handshakes_per_minute: Option<u32>,
    pub upgrades_per_minute: Option<u32>,
    pub ipv6_prefix: Option<u8>,
    pub max_keys: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BansFile {
    pub after: Option<u32>,
    pub within: Option<ConfigDuration>,
    pub ban_time: Option<ConfigDuration>,
    pub count: Option<Vec<Spanned<String>>>,
    pub ipv6_prefix: Option<u8>,
    pub max_entries: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFile {
    pub allow: Option<Vec<Spanned<String>>>,
    pub deny: Option<Vec<Spanned<String>>>,
}

// ---------- settings ----------

/// What a zone keys its buckets by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ZoneKey {
    /// The client address after trusted proxies (`$binary_remote_addr`), IPv6 by prefix.
    Ip,
    /// A request header's value (lower-case name); a request without it is not counted.
    Header(String),
    /// A verified token's claim; without claims (no token), the client address.
    Claim(String),
    /// One bucket for the whole route.
    Route,
}

impl ZoneKey {
    pub fn is_claim(&self) -> bool {
        matches!(self, ZoneKey::Claim(_))
    }
}

impl Serialize for ZoneKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ZoneKey::Ip => s.serialize_str("ip"),
            ZoneKey::Header(name) => s.serialize_str(&format!("header:{name}")),
            ZoneKey::Claim(name) => s.serialize_str(&format!("claim:{name}")),
            ZoneKey::Route => s.serialize_str("route"),
        }
    }
}

/// A rate as nginx writes it: requests per second or per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub requests: u64,
    pub per_minute: bool,
}

impl Rate {
    /// nginx's `ctx->rate`: milli-requests per second, rounded down as nginx does (`5r/m` is
    /// 83, not 83.33).
    pub fn milli_per_second(self) -> u64 {
        if self.per_minute {
            self.requests * 1000 / 60
        } else {
            self.requests * 1000
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let unit = if self.per_minute { "m" } else { "s" };
        s.serialize_str(&format!("{}r/{unit}", self.requests))
    }
}

/// One named zone (`limit_req_zone` + `limit_req`), as validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ZoneSettings {
    pub rate: Rate,
    pub burst: u64,
    /// `nodelay`: every request within the burst passes at once.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub nodelay: bool,
    /// `delay: N`: the first N excess requests pass at once, the rest of the burst is delayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<u64>,
    pub key: ZoneKey,
    /// The refusal's status: `429` (with `Retry-After`) or nginx's `503`.
    pub status: u16,
    pub dry_run: bool,
    pub max_keys: usize,
    pub ipv6_prefix: u8,
}

impl ZoneSettings {
    /// Excess (in requests) up to which a request is not delayed: nginx's `limit->delay`.
    pub fn delay_threshold(&self) -> u64 {
        if self.nodelay {
            u64::MAX / 1_000_000
        } else {
            self.delay.unwrap_or(0)
        }
    }
}

/// `limits.per_ip`: caps per client address (IPv6 by prefix); 0 is no cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PerIpSettings {
    pub connections: u32,
    pub websockets: u32,
    pub handshakes_per_minute: u32,
    pub upgrades_per_minute: u32,
    pub ipv6_prefix: u8,
    pub max_keys: usize,
}

impl Default for PerIpSettings {
    fn default() -> Self {
        Self {
            connections: 0,
            websockets: 0,
            handshakes_per_minute: 0,
            upgrades_per_minute: 0,
            ipv6_prefix: 64,
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

/// What a ban counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BanReason {
    /// A request a rate-limit zone or a per-IP cap refused.
    RateLimit,
    /// A `401` or `403` answer on a route.
    Auth,
}

impl BanReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::RateLimit => "rate_limit",
            BanReason::Auth => "auth",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BanSettings {
    /// Violations (fail2ban's `maxretry`) …
    pub after: u32,
    /// … within this window (`findtime`) …
    #[serde(serialize_with = "units::serialize_duration")]
    pub within: Duration,
    /// … ban the address (prefix) for this long (`bantime`).
    #[serde(serialize_with = "units::serialize_duration")]
    pub ban_time: Duration,
    pub count: Vec<BanReason>,
    pub ipv6_prefix: u8,
    pub max_entries: usize,
}

/// CIDR allow and deny lists: a client in `deny` is refused; with `allow` set, only clients in
/// it pass. Deny wins over allow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IpLists {
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "serialize_nets"
    )]
    pub allow: Vec<IpNet>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "serialize_nets"
    )]
    pub deny: Vec<IpNet>,
}

impl IpLists {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

fn serialize_nets<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(|n| n.to_string()))
}

/// A route's limits: its zones (all must pass) and its IP lists.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouteLimits {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limit: Vec<String>,
    #[serde(flatten)]
    pub access: IpLists,
    /// Where each `rate_limit` name was written, for an unknown zone's error.
    #[serde(skip)]
    pub rate_limit_at: Vec<Origin>,
}

/// The top-level limits sections.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EdgeLimitSettings {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_limits: BTreeMap<String, ZoneSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bans: Option<BanSettings>,
    /// Applied at accept on the main and plain-HTTP listeners.
    #[serde(skip_serializing_if = "IpLists::is_empty")]
    pub listener_access: IpLists,
}

impl EdgeLimitSettings {
    /// Zones no route names.
    pub fn warnings<'a>(
        &self,
        routes: impl Iterator<Item = &'a RouteLimits> + Clone,
    ) -> Vec<String> {
        self.rate_limits
            .keys()
            .filter(|zone| !routes.clone().any(|r| r.rate_limit.contains(zone)))
            .map(|zone| format!("rate_limits.{zone}: no route uses this zone (add `rate_limit: [{zone}]` to a route)"))
            .collect()
    }
}

// ---------- validation ----------

pub const DEFAULT_MAX_KEYS: usize = 100_000;
const MAX_KEYS: usize = 10_000_000;

/// `10r/s`, `5r/m` (nginx's syntax: a whole number of requests).
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let trimmed = text.trim();
    let (number, per_minute) = if let Some(n) = trimmed.strip_suffix("r/s") {
        (n, false)
    } else if let Some(n) = trimmed.strip_suffix("r/m") {
        (n, true)
    } else {
        return Err(format!(
            "`{text}` is not a rate: use N r/s or N r/m, e.g. 10r/s or 5r/m"
        ));
    };
    match number.trim().parse::<u64>() {
        Ok(requests) if (1..=1_000_000).contains(&requests) => Ok(Rate {
            requests,
            per_minute,
        }),
        _ => Err(format!(
            "`{text}`: the number of requests must be a whole number from 1 to 1000000"
        )),
    }
}

fn parse_key(text: &str) -> Result<ZoneKey, String> {
    let text = text.trim();
    match text {
        "ip" => Ok(ZoneKey::Ip),
        "route" => Ok(ZoneKey::Route),
        _ => {
            if let Some(name) = text.strip_prefix("header:") {
                let name = name.trim().to_ascii_lowercase();
                if name.is_empty() {
                    return Err(format!("`{text}` names no header"));
                }
                http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("`{name}` is not a header name"))?;
                Ok(ZoneKey::Header(name))
            } else if let Some(name) = text.strip_prefix("claim:") {
                match name.trim() {
                    "" => Err(format!("`{text}` names no claim")),
                    name => Ok(ZoneKey::Claim(name.to_owned())),
                }
            } else {
                Err(format!(
                    "`{text}` is not a key: use ip, header:NAME, claim:NAME or route"
                ))
            }
        }
    }
}

fn prefix(value: Option<u8>, at: &Origin, field: &str) -> Result<u8, ConfigError> {
    let prefix = value.unwrap_or(64);
    if !(1..=128).contains(&prefix) {
        return Err(ConfigError::invalid(
            at.clone(),
            field,
            "must be between 1 and 128",
        ));
    }
    Ok(prefix)
}

fn keys(value: Option<usize>, at: &Origin, field: &str) -> Result<usize, ConfigError> {
    let keys = value.unwrap_or(DEFAULT_MAX_KEYS);
    if !(1..=MAX_KEYS).contains(&keys) {
        return Err(ConfigError::invalid(
            at.clone(),
            field,
            format!("must be between 1 and {MAX_KEYS}"),
        ));
    }
    Ok(keys)
}

/// A CIDR block or a bare address.
fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .map(|net| net.trunc())
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .ok()
}

fn nets(
    items: Option<Vec<Spanned<String>>>,
    origin: &dyn Fn(u64, u64) -> Origin,
    field: &str,
) -> Result<Vec<IpNet>, ConfigError> {
    let mut out = Vec::new();
    for item in items.into_iter().flatten() {
        let net = parse_net(&item.value).ok_or_else(|| {
            ConfigError::invalid(
                super::origin_of(origin, &item),
                field,
                format!("`{}` is not an IP address or CIDR block", item.value),
            )
        })?;
        out.push(net);
    }
    Ok(out)
}

/// A route's `rate_limit`, `allow` and `deny` (zone names are checked against `rate_limits:`
/// once every section is read, by [`validate`]).
pub fn route_limits(
    rate_limit: Option<Vec<Spanned<String>>>,
    allow: Option<Vec<Spanned<String>>>,
    deny: Option<Vec<Spanned<String>>>,
    origin: &dyn Fn(u64, u64) -> Origin,
) -> Result<RouteLimits, ConfigError> {
    let mut limits = RouteLimits {
        access: IpLists {
            allow: nets(allow, origin, "routes.allow")?,
            deny: nets(deny, origin, "routes.deny")?,
        },
        ..RouteLimits::default()
    };
    for name in rate_limit.into_iter().flatten() {
        if !limits.rate_limit.contains(&name.value) {
            limits.rate_limit.push(name.value.clone());
            limits.rate_limit_at.push(super::origin_of(origin, &name));
        }
    }
    Ok(limits)
}

pub struct LimitsInput<'a> {
    pub rate_limits: Option<BTreeMap<String, Spanned<ZoneFile>>>,
    pub bans: Option<Spanned<BansFile>>,
    pub listener_access: Option<Spanned<AccessFile>>,
    pub per_ip: Option<Spanned<PerIpFile>>,
    /// Each route's limits, in route order.
    pub routes: Vec<&'a RouteLimits>,
    pub origin: &'a dyn Fn(u64, u64) -> Origin,
}

fn at<T>(input: &LimitsInput<'_>, spanned: &Spanned<T>) -> Origin {
    super::origin_of(input.origin, spanned)
}

pub fn validate(input: LimitsInput<'_>) -> Result<(EdgeLimitSettings, PerIpSettings), ConfigError> {
    let mut rate_limits = BTreeMap::new();
    for (name, spanned) in input.rate_limits.iter().flatten() {
        let origin = at(&input, spanned);
        rate_limits.insert(name.clone(), zone(&input, name, spanned, &origin)?);
    }
    for route in &input.routes {
        for (name, origin) in route.rate_limit.iter().zip(&route.rate_limit_at) {
            if !rate_limits.contains_key(name) {
                return Err(ConfigError::invalid(
                    origin.clone(),
                    "routes.rate_limit",
                    format!(
                        "`{name}` is not a zone in rate_limits (defined: {})",
                        super::defined_list(rate_limits.keys())
                    ),
                ));
            }
        }
    }
    let bans = match &input.bans {
        None => None,
        Some(spanned) => Some(bans(&input, spanned)?),
    };
    let listener_access = match input.listener_access.as_ref() {
        None => IpLists::default(),
        Some(access) => IpLists {
            allow: nets(
                access.value.allow.clone(),
                input.origin,
                "listener_access.allow",
            )?,
            deny: nets(
                access.value.deny.clone(),
                input.origin,
                "listener_access.deny",
            )?,
        },
    };
    let per_ip = match &input.per_ip {
        None => PerIpSettings::default(),
        Some(spanned) => {
            let origin = at(&input, spanned);
            let file = &spanned.value;
            PerIpSettings {
                connections: file.connections.unwrap_or(0),
                websockets: file.websockets.unwrap_or(0),
                handshakes_per_minute: file.handshakes_per_minute.unwrap_or(0),
                upgrades_per_minute: file.upgrades_per_minute.unwrap_or(0),
                ipv6_prefix: prefix(file.ipv6_prefix, &origin, "limits.per_ip.ipv6_prefix")?,
                max_keys: keys(file.max_keys, &origin, "limits.per_ip.max_keys")?,
            }
        }
    };
    Ok((
        EdgeLimitSettings {
            rate_limits,
            bans,
            listener_access,
        },
        per_ip,
    ))
}

fn zone(
    input: &LimitsInput<'_>,
    name: &str,
    spanned: &Spanned<ZoneFile>,
    origin: &Origin,
) -> Result<ZoneSettings, ConfigError> {
    let file = &spanned.value;
    let field = |f: &str| format!("rate_limits.{name}.{f}");
    if !super::names::valid_name(name) {
        return Err(ConfigError::invalid(
            origin.clone(),
            "rate_limits",
            format!("`{name}` is not a valid zone name (letters, digits, - _ .)"),
        ));
    }
    let rate = parse_rate(&file.rate.value)
        .map_err(|reason| ConfigError::invalid(at(input, &file.rate), field("rate"), reason))?;
    let burst = file.burst.unwrap_or(0);
    if burst > 1_000_000 {
        return Err(ConfigError::invalid(
            origin.clone(),
            field("burst"),
            "must be at most 1000000",
        ));
    }
    let nodelay = file.nodelay.unwrap_or(false);
    if nodelay && file.delay.is_some() {
        return Err(ConfigError::invalid(
            origin.clone(),
            field("delay"),
            "give nodelay or delay, not both (nodelay is delay: burst)",
        ));
    }
    if file.delay.is_some_and(|d| d > 1_000_000) {
        return Err(ConfigError::invalid(
            origin.clone(),
            field("delay"),
            "must be at most 1000000",
        ));
    }
    let key = match &file.key {
        None => ZoneKey::Ip,
        Some(key) => parse_key(&key.value)
            .map_err(|reason| ConfigError::invalid(at(input, key), field("key"), reason))?,
    };
    let status = file.status.unwrap_or(429);
    if !(400..=599).contains(&status) {
        return Err(ConfigError::invalid(
            origin.clone(),
            field("status"),
            "must be between 400 and 599 (429, or nginx's 503)",
        ));
    }
    Ok(ZoneSettings {
        rate,
        burst,
        nodelay,
        delay: file.delay,
        key,
        status,
        dry_run: file.dry_run.unwrap_or(false),
        max_keys: keys(file.max_keys, origin, &field("max_keys"))?,
        ipv6_prefix: prefix(file.ipv6_prefix, origin, &field("ipv6_prefix"))?,
    })
}

fn bans(input: &LimitsInput<'_>, spanned: &Spanned<BansFile>) -> Result<BanSettings, ConfigError> {
    let origin = at(input, spanned);
    let file = &spanned.value;
    let window = |value: Option<ConfigDuration>, default: u64, field: &str| {
        let duration = value.map_or(Duration::from_secs(default), |d| d.0);
        if duration.is_zero() || duration > Duration::from_secs(365 * 86_400) {
            return Err(ConfigError::invalid(
                origin.clone(),
                field,
                "must be greater than zero and at most 365d",
            ));
        }
        Ok(duration)
    };
    let after = file.after.unwrap_or(10);
    if !(1..=1_000_000).contains(&after) {
        return Err(ConfigError::invalid(
            origin.clone(),
            "bans.after",
            "must be between 1 and 1000000",
        ));
    }
    let mut count = Vec::new();
    for reason in file.count.iter().flatten() {
        let parsed = match reason.value.as_str() {
            "rate_limit" => BanReason::RateLimit,
            "auth" => BanReason::Auth,
            other => {
                return Err(ConfigError::invalid(
                    at(input, reason),
                    "bans.count",
                    format!("`{other}` is not counted: use rate_limit or auth"),
                ))
            }
        };
        if !count.contains(&parsed) {
            count.push(parsed);
        }
    }
    if file.count.is_none() {
        count = vec![BanReason::RateLimit, BanReason::Auth];
    }
    Ok(BanSettings {
        after,
        within: window(file.within, 600, "bans.within")?,
        ban_time: window(file.ban_time, 7200, "bans.ban_time")?,
        count,
        ipv6_prefix: prefix(file.ipv6_prefix, &origin, "bans.ipv6_prefix")?,
        max_entries: keys(file.max_entries, &origin, "bans.max_entries")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_as_nginx_reads_them() {
        assert_eq!(parse_rate("5r/m").unwrap().milli_per_second(), 83);
        assert_eq!(parse_rate("20r/s").unwrap().milli_per_second(), 20_000);
        assert_eq!(parse_rate(" 10r/s ").unwrap().requests, 10);
        assert!(parse_rate("10/s").is_err());
        assert!(parse_rate("0r/s").is_err());
        assert!(parse_rate("1.5r/s").is_err());
    }

    fn load(yaml: &str) -> Result<crate::config::Settings, ConfigError> {
        let overrides = crate::config::Overrides {
            data_dir: Some(std::env::temp_dir().join("tlsgate-limits-config-test")),
            ..Default::default()
        };
        let yaml = format!("upstreams:\n  app:\n    servers: [http://127.0.0.1:9]\n{yaml}");
        crate::config::load_str(
            &yaml,
            Some(std::path::Path::new("t.yaml")),
            &overrides,
            &|_| None,
        )
    }

    #[test]
    fn a_route_naming_a_missing_zone_is_an_error_with_its_line_and_an_unused_zone_a_warning() {
        let error = load("rate_limits:\n  login: {rate: 5r/m}\nroutes:\n  - path: /\n    upstream: app\n    rate_limit: [login, api]\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("t.yaml:9:"), "{error}");
        assert!(
            error.contains("`api` is not a zone in rate_limits (defined: login)"),
            "{error}"
        );
        let settings = load("rate_limits:\n  login: {rate: 5r/m}\n  spare: {rate: 1r/s}\nroutes:\n  - path: /\n    upstream: app\n    rate_limit: [login]\n").unwrap();
        let warnings = settings.warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("rate_limits.spare: no route uses")),
            "{warnings:?}"
        );
        assert!(!warnings.iter().any(|w| w.contains("rate_limits.login")));
        let zone = &settings.edge_limits.rate_limits["login"];
        assert_eq!(
            (zone.burst, zone.status, zone.key.clone()),
            (0, 429, ZoneKey::Ip)
        );
    }

    #[test]
    fn conflicting_or_malformed_values_are_refused() {
        for (yaml, expected) in [
            (
                "rate_limits:\n  z: {rate: 1r/s, nodelay: true, delay: 2}\n",
                "not both",
            ),
            ("rate_limits:\n  z: {rate: 1r/h}\n", "not a rate"),
            (
                "rate_limits:\n  z: {rate: 1r/s, status: 200}\n",
                "between 400 and 599",
            ),
            (
                "rate_limits:\n  z: {rate: 1r/s, key: cookie}\n",
                "not a key",
            ),
            (
                "rate_limits:\n  z: {rate: 1r/s, ipv6_prefix: 0}\n",
                "between 1 and 128",
            ),
            ("bans: {count: [everything]}\n", "not counted"),
            (
                "listener_access: {deny: [10.0.0.0/33]}\n",
                "not an IP address or CIDR",
            ),
            (
                "routes:\n  - {path: /, upstream: app, allow: [nowhere]}\n",
                "not an IP address or CIDR",
            ),
            ("limits:\n  per_ip: {connection: 10}\n", "unknown field"),
        ] {
            let error = load(yaml).unwrap_err().to_string();
            assert!(error.contains(expected), "{yaml}: {error}");
        }
        let settings = load("bans: {}\nlimits:\n  per_ip: {connections: 10}\n").unwrap();
        let bans = settings.edge_limits.bans.unwrap();
        assert_eq!(
            (bans.after, bans.within.as_secs(), bans.ban_time.as_secs()),
            (10, 600, 7200)
        );
        assert_eq!(settings.limits.per_ip.connections, 10);
    }

    #[test]
    fn keys_as_written() {
        assert_eq!(parse_key("ip"), Ok(ZoneKey::Ip));
        assert_eq!(
            parse_key("header:X-Api-Key"),
            Ok(ZoneKey::Header("x-api-key".into()))
        );
        assert_eq!(parse_key("claim:sub"), Ok(ZoneKey::Claim("sub".into())));
        assert!(parse_key("claim:").is_err());
        assert!(parse_key("cookie:x").is_err());
    }
}
