//! The WSS hub's part of the configuration: `hub.endpoints` (each a route whose target is
//! the hub, with its server-side subscriptions, claim requirement and JSON-RPC forwarding),
//! `hub.namespaces` (per-namespace channel policy) and the session timers — file schema,
//! typed settings and their validation.
//!
//! An endpoint's route keys (`path`, `host`, `auth`, `allowed_origins`, `cors`, `rate_limit`,
//! …) are validated as a route's are: the endpoint becomes a route in `proxy.routes` with
//! `hub_endpoint` set, so every edge policy applies to it unchanged.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use serde_saphyr::Spanned;

use super::proxy::{RouteFile, RouteSettings};
use super::units::{self, ConfigDuration, ConfigSize};
use super::{ConfigError, Origin};

// ---------- file schema ----------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubFile {
    pub endpoints: Option<Vec<Spanned<EndpointFile>>>,
    pub namespaces: Option<BTreeMap<String, Spanned<NamespaceFile>>>,
    pub ping_interval: Option<ConfigDuration>,
    pub pong_timeout: Option<ConfigDuration>,
    pub auth_timeout: Option<ConfigDuration>,
    pub queue: Option<Spanned<QueueFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointFile {
    // The route's keys.
    pub host: Option<Spanned<String>>,
    pub path: Spanned<String>,
    pub exact: Option<bool>,
    pub allowed_origins: Option<Vec<String>>,
    pub websocket_idle_timeout: Option<ConfigDuration>,
    pub auth: Option<Spanned<super::jwt::AuthFile>>,
    pub forward_auth: Option<Spanned<String>>,
    pub cors: Option<Spanned<super::cors::CorsRouteFile>>,
    pub rate_limit: Option<Vec<Spanned<String>>>,
    pub allow: Option<Vec<Spanned<String>>>,
    pub deny: Option<Vec<Spanned<String>>>,
    pub require_client_cert: Option<bool>,
    pub client_cert: Option<Spanned<super::client_auth::ClientCertRuleFile>>,
    // The hub's keys.
    pub subscribe: Option<Vec<Spanned<String>>>,
    pub require: Option<OneOrMany<Spanned<RequireFile>>>,
    pub channels_param: Option<Spanned<String>>,
    pub envelope: Option<bool>,
    pub echo: Option<bool>,
    pub max_message_size: Option<ConfigSize>,
    pub rpc: Option<Spanned<RpcFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequireFile {
    pub claim: String,
    pub contains: Option<String>,
    pub equals: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceFile {
    pub client_subscribe: Option<bool>,
    pub client_publish: Option<bool>,
    pub presence: Option<bool>,
    pub join_leave: Option<bool>,
    pub history_size: Option<usize>,
    pub history_ttl: Option<ConfigDuration>,
    pub max_message_size: Option<ConfigSize>,
    pub require: Option<OneOrMany<Spanned<RequireFile>>>,
    pub channels_claim: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueFile {
    pub max_messages: Option<usize>,
    pub max_bytes: Option<ConfigSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcFile {
    pub url: Spanned<String>,
    pub methods: Option<Vec<String>>,
    pub rate: Option<Spanned<String>>,
    pub burst: Option<u32>,
    pub method_rates: Option<BTreeMap<String, Spanned<String>>>,
    pub timeout: Option<ConfigDuration>,
    pub max_in_flight: Option<usize>,
    pub pass_claims: Option<BTreeMap<String, Spanned<String>>>,
}

// ---------- settings ----------

/// A piece of a channel template: text, a path parameter (`{id}`) or a claim
/// (`{claims.sub}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Text(String),
    Parameter(String),
    Claim(String),
}

/// `user:{claims.sub}`, `tenant:{id}`: filled per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<TemplatePart>,
}

impl Serialize for Template {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text: String = self
            .parts
            .iter()
            .map(|part| match part {
                TemplatePart::Text(text) => text.clone(),
                TemplatePart::Parameter(name) => format!("{{{name}}}"),
                TemplatePart::Claim(name) => format!("{{claims.{name}}}"),
            })
            .collect();
        s.serialize_str(&text)
    }
}

/// A claim rule: the claim equals the value, or (an array claim) contains it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Requirement {
    pub claim: String,
    #[serde(flatten)]
    pub test: RequirementTest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequirementTest {
    Contains(Template),
    Equals(Template),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HubSettings {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointSettings>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, NamespaceSettings>,
    #[serde(serialize_with = "units::serialize_duration")]
    pub ping_interval: Duration,
    #[serde(serialize_with = "units::serialize_duration")]
    pub pong_timeout: Duration,
    #[serde(serialize_with = "units::serialize_duration")]
    pub auth_timeout: Duration,
    pub queue: QueueSettings,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            namespaces: BTreeMap::new(),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            queue: QueueSettings::default(),
        }
    }
}

impl HubSettings {
    pub fn is_enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }
}

/// A subscriber's outbound queue: past either bound it is disconnected (`4429`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueSettings {
    pub max_messages: usize,
    #[serde(serialize_with = "units::serialize_size")]
    pub max_bytes: u64,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            max_messages: 1024,
            max_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointSettings {
    /// The endpoint's route keys, as a route prints them.
    #[serde(flatten)]
    pub route: RouteSettings,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<Template>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<Requirement>,
    /// The query parameter listing channels to subscribe to at the upgrade (`?channels=a,b`);
    /// empty: none.
    pub channels_param: String,
    /// Publications as `{"type":"message","channel":…,"offset":…,"data":…}` instead of the
    /// publisher's JSON as sent.
    pub envelope: bool,
    /// Every client message is sent back (a test endpoint for clients and for the hub's
    /// WebSocket layer: Autobahn's fuzzing client runs against it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub echo: bool,
    /// The most one client message may carry; more: close 1009.
    #[serde(serialize_with = "units::serialize_size")]
    pub max_message_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc: Option<RpcSettings>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamespaceSettings {
    pub client_subscribe: bool,
    pub client_publish: bool,
    pub presence: bool,
    pub join_leave: bool,
    pub history_size: usize,
    #[serde(serialize_with = "units::serialize_duration")]
    pub history_ttl: Duration,
    #[serde(serialize_with = "units::serialize_size")]
    pub max_message_size: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<Requirement>,
    /// A claim listing the channels (patterns with `*`) the token may subscribe to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels_claim: Option<String>,
}

impl Default for NamespaceSettings {
    /// A namespace nobody configured (server-side subscriptions such as `user:…`): no client
    /// subscription or publication, no history, no presence.
    fn default() -> Self {
        Self {
            client_subscribe: false,
            client_publish: false,
            presence: false,
            join_leave: false,
            history_size: 0,
            history_ttl: Duration::from_secs(300),
            max_message_size: DEFAULT_MAX_MESSAGE,
            require: Vec::new(),
            channels_claim: None,
        }
    }
}

/// A rate budget: tokens per second and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Budget {
    /// Milli-tokens per second (`5r/m` is 83).
    #[serde(skip)]
    pub milli_per_second: u64,
    #[serde(rename = "rate")]
    pub written: RateText,
    pub burst: u32,
}

/// A rate as written (`20r/s`), for printing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateText(pub super::limits::Rate);

impl Serialize for RateText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let unit = if self.0.per_minute { "m" } else { "s" };
        s.serialize_str(&format!("{}r/{unit}", self.0.requests))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RpcSettings {
    pub url: String,
    /// Methods a client may call; empty: any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Requests per connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Budget>,
    /// Requests per connection and method.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub method_rates: BTreeMap<String, Budget>,
    #[serde(serialize_with = "units::serialize_duration")]
    pub timeout: Duration,
    /// Calls a connection may have waiting on the backend at once.
    pub max_in_flight: usize,
    /// Claim → header on the forwarded POST (inbound copies never exist: tlsgate writes
    /// the request).
    pub pass_claims: BTreeMap<String, String>,
}

pub const DEFAULT_MAX_MESSAGE: u64 = 64 * 1024;
const MAX_HISTORY: usize = 100_000;

// ---------- validation ----------

fn at<T>(origin: &dyn Fn(u64, u64) -> Origin, spanned: &Spanned<T>) -> Origin {
    super::origin_of(origin, spanned)
}

/// The endpoints as routes (for the route validation every route passes) and the hub's
/// settings, whose endpoints get their `route` once the routes are resolved
/// ([`attach_routes`]).
pub struct Parsed {
    pub routes: Vec<Spanned<RouteFile>>,
    pub settings: HubSettings,
}

pub fn validate(
    file: Option<Spanned<HubFile>>,
    origin: &dyn Fn(u64, u64) -> Origin,
) -> Result<Parsed, ConfigError> {
    let mut settings = HubSettings::default();
    let Some(file) = file else {
        return Ok(Parsed {
            routes: Vec::new(),
            settings,
        });
    };
    let here = at(origin, &file);
    let file = file.value;
    let timer = |value: Option<ConfigDuration>, default: Duration, field: &str| {
        let value = value.map_or(default, |d| d.0);
        if value.is_zero() || value > Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                here.clone(),
                field,
                "must be greater than zero and at most 1h",
            ));
        }
        Ok(value)
    };
    settings.ping_interval = timer(
        file.ping_interval,
        settings.ping_interval,
        "hub.ping_interval",
    )?;
    settings.pong_timeout = timer(file.pong_timeout, settings.pong_timeout, "hub.pong_timeout")?;
    settings.auth_timeout = timer(file.auth_timeout, settings.auth_timeout, "hub.auth_timeout")?;
    if let Some(queue) = file.queue {
        let queue_at = at(origin, &queue);
        let queue = queue.value;
        if let Some(max) = queue.max_messages {
            if !(1..=1_000_000).contains(&max) {
                return Err(ConfigError::invalid(
                    queue_at.clone(),
                    "hub.queue.max_messages",
                    "must be between 1 and 1000000",
                ));
            }
            settings.queue.max_messages = max;
        }
        if let Some(bytes) = queue.max_bytes {
            if bytes.0 < 1024 {
                return Err(ConfigError::invalid(
                    queue_at,
                    "hub.queue.max_bytes",
                    "must be at least 1KiB",
                ));
            }
            settings.queue.max_bytes = bytes.0;
        }
    }
    for (name, spanned) in file.namespaces.into_iter().flatten() {
        let ns_at = at(origin, &spanned);
        if !valid_channel(&name) || name.contains(':') {
            return Err(ConfigError::invalid(
                ns_at,
                "hub.namespaces",
                format!("`{name}` is not a namespace name (letters, digits, - _ . @ / =, no `:`)"),
            ));
        }
        let ns = spanned.value;
        let history_size = ns.history_size.unwrap_or(0);
        if history_size > MAX_HISTORY {
            return Err(ConfigError::invalid(
                ns_at,
                format!("hub.namespaces.{name}.history_size"),
                format!("at most {MAX_HISTORY}"),
            ));
        }
        let defaults = NamespaceSettings::default();
        let history_ttl = ns.history_ttl.map_or(defaults.history_ttl, |d| d.0);
        if history_ttl.is_zero() {
            return Err(ConfigError::invalid(
                ns_at,
                format!("hub.namespaces.{name}.history_ttl"),
                "must be greater than zero",
            ));
        }
        let field = format!("hub.namespaces.{name}.require");
        let require = requirements(ns.require, &[], origin, &field)?;
        settings.namespaces.insert(
            name.clone(),
            NamespaceSettings {
                client_subscribe: ns.client_subscribe.unwrap_or(false),
                client_publish: ns.client_publish.unwrap_or(false),
                presence: ns.presence.unwrap_or(false) || ns.join_leave.unwrap_or(false),
                join_leave: ns.join_leave.unwrap_or(false),
                history_size,
                history_ttl,
                max_message_size: message_size(ns.max_message_size, &ns_at, &name)?,
                require,
                channels_claim: ns.channels_claim,
            },
        );
    }
    let mut routes = Vec::new();
    for spanned in file.endpoints.into_iter().flatten() {
        let ep_at = at(origin, &spanned);
        let file = spanned.value;
        let path = file.path.value.clone();
        let parameters = super::jwt::path_parameters(&path)
            .map_err(|e| ConfigError::invalid(at(origin, &file.path), "hub.endpoints.path", e))?;
        let mut subscribe = Vec::new();
        for text in file.subscribe.into_iter().flatten() {
            let template = template(&text.value, &parameters).map_err(|reason| {
                ConfigError::invalid(at(origin, &text), "hub.endpoints.subscribe", reason)
            })?;
            subscribe.push(template);
        }
        let require = requirements(file.require, &parameters, origin, "hub.endpoints.require")?;
        let channels_param = match file.channels_param {
            None => "channels".to_owned(),
            Some(p) if p.value == "off" || p.value.is_empty() => String::new(),
            Some(p)
                if p.value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                p.value
            }
            Some(p) => {
                return Err(ConfigError::invalid(
                    at(origin, &p),
                    "hub.endpoints.channels_param",
                    format!(
                        "`{}` is not a query parameter name (letters, digits, _) or off",
                        p.value
                    ),
                ))
            }
        };
        let rpc = match file.rpc {
            Some(rpc) => Some(rpc_settings(rpc, origin)?),
            None => None,
        };
        let mut auth = file.auth;
        // Browsers cannot read the status of a refused upgrade: a hub endpoint refuses by
        // closing with 4001/4003 (as the seeds' servers do) unless told otherwise.
        if let Some(auth) = auth.as_mut() {
            if auth.value.websocket_auth_failure.is_none() {
                auth.value.websocket_auth_failure = Some(Spanned {
                    value: "close".to_owned(),
                    referenced: auth.referenced,
                    defined: auth.defined,
                });
            }
        }
        settings.endpoints.push(EndpointSettings {
            route: RouteSettings::placeholder(&path),
            subscribe,
            require,
            channels_param,
            envelope: file.envelope.unwrap_or(false),
            echo: file.echo.unwrap_or(false),
            max_message_size: message_size(file.max_message_size, &ep_at, &path)?,
            rpc,
        });
        routes.push(Spanned {
            value: RouteFile {
                host: file.host,
                path: Some(file.path),
                exact: Some(file.exact.unwrap_or(true)),
                upstream: None,
                allowed_origins: file.allowed_origins,
                websocket_idle_timeout: file.websocket_idle_timeout,
                max_body_size: None,
                auth,
                forward_auth: file.forward_auth,
                cors: file.cors,
                websocket: None,
                rate_limit: file.rate_limit,
                allow: file.allow,
                deny: file.deny,
                require_client_cert: file.require_client_cert,
                client_cert: file.client_cert,
                pass_client_cert: None,
            },
            referenced: spanned.referenced,
            defined: spanned.defined,
        });
    }
    Ok(Parsed { routes, settings })
}

/// Gives each endpoint its resolved route (the routes with `hub_endpoint` set, in order).
pub fn attach_routes(settings: &mut HubSettings, routes: &[RouteSettings]) {
    for route in routes {
        if let Some(index) = route.hub_endpoint {
            if let Some(endpoint) = settings.endpoints.get_mut(index) {
                endpoint.route = route.clone();
            }
        }
    }
}

fn message_size(size: Option<ConfigSize>, at: &Origin, name: &str) -> Result<u64, ConfigError> {
    match size {
        None => Ok(DEFAULT_MAX_MESSAGE),
        Some(size) if size.0 == 0 || size.0 > 64 << 20 => Err(ConfigError::invalid(
            at.clone(),
            format!("hub.{name}.max_message_size"),
            "must be greater than zero and at most 64MiB",
        )),
        Some(size) => Ok(size.0),
    }
}

fn requirements(
    file: Option<OneOrMany<Spanned<RequireFile>>>,
    parameters: &[String],
    origin: &dyn Fn(u64, u64) -> Origin,
    field: &str,
) -> Result<Vec<Requirement>, ConfigError> {
    let mut out = Vec::new();
    for spanned in file.map(OneOrMany::into_vec).into_iter().flatten() {
        let here = at(origin, &spanned);
        let rule = spanned.value;
        let test = match (rule.contains, rule.equals) {
            (Some(value), None) => RequirementTest::Contains(
                template(&value, parameters)
                    .map_err(|r| ConfigError::invalid(here.clone(), field, r))?,
            ),
            (None, Some(value)) => RequirementTest::Equals(
                template(&value, parameters)
                    .map_err(|r| ConfigError::invalid(here.clone(), field, r))?,
            ),
            _ => {
                return Err(ConfigError::invalid(
                    here,
                    field,
                    "give exactly one of contains or equals",
                ))
            }
        };
        if rule.claim.is_empty() {
            return Err(ConfigError::invalid(here, field, "claim must not be empty"));
        }
        out.push(Requirement {
            claim: rule.claim,
            test,
        });
    }
    Ok(out)
}

/// Parses `user:{claims.sub}`, `tenant:{id}`; `{id}` must be one of the path's parameters.
/// Namespaces' rules may also use `{channel}` (the channel's name after `namespace:`).
pub fn template(text: &str, parameters: &[String]) -> Result<Template, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(TemplatePart::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("`{text}`: a `{{` without its `}}`"))?;
        let name = &after[..close];
        if let Some(claim) = name.strip_prefix("claims.") {
            if claim.is_empty() {
                return Err(format!("`{text}`: `{{claims.}}` names no claim"));
            }
            parts.push(TemplatePart::Claim(claim.to_owned()));
        } else if name == "channel" || parameters.iter().any(|p| p == name) {
            parts.push(TemplatePart::Parameter(name.to_owned()));
        } else {
            return Err(format!(
                "`{text}`: `{{{name}}}` is neither a parameter of the endpoint's path nor `{{claims.NAME}}`"
            ));
        }
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest.to_owned()));
    }
    if parts.is_empty() {
        return Err("a template must not be empty".into());
    }
    Ok(Template { parts })
}

fn rpc_settings(
    spanned: Spanned<RpcFile>,
    origin: &dyn Fn(u64, u64) -> Origin,
) -> Result<RpcSettings, ConfigError> {
    let here = at(origin, &spanned);
    let file = spanned.value;
    let url = file.url.value.trim().to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://"))
        || url.parse::<http::Uri>().is_err()
    {
        return Err(ConfigError::invalid(
            at(origin, &file.url),
            "hub.endpoints.rpc.url",
            format!("`{url}` is not an http:// or https:// URL"),
        ));
    }
    let budget = |text: &Spanned<String>, burst: Option<u32>, field: &str| {
        let rate = super::limits::parse_rate(&text.value)
            .map_err(|reason| ConfigError::invalid(at(origin, text), field, reason))?;
        let burst = burst
            .unwrap_or(rate.requests.min(u32::MAX as u64) as u32)
            .max(1);
        Ok::<_, ConfigError>(Budget {
            milli_per_second: rate.milli_per_second().max(1),
            written: RateText(rate),
            burst,
        })
    };
    let rate = match &file.rate {
        Some(text) => Some(budget(text, file.burst, "hub.endpoints.rpc.rate")?),
        None => None,
    };
    let mut method_rates = BTreeMap::new();
    for (method, text) in file.method_rates.unwrap_or_default() {
        method_rates.insert(
            method.clone(),
            budget(
                &text,
                None,
                &format!("hub.endpoints.rpc.method_rates.{method}"),
            )?,
        );
    }
    let methods = file.methods.unwrap_or_default();
    for method in method_rates.keys() {
        if !methods.is_empty() && !methods.contains(method) {
            return Err(ConfigError::invalid(
                here,
                "hub.endpoints.rpc.method_rates",
                format!("`{method}` is not in rpc.methods"),
            ));
        }
    }
    let timeout = file.timeout.map_or(Duration::from_secs(30), |d| d.0);
    if timeout.is_zero() {
        return Err(ConfigError::invalid(
            here,
            "hub.endpoints.rpc.timeout",
            "must be greater than zero",
        ));
    }
    let max_in_flight = file.max_in_flight.unwrap_or(16);
    if !(1..=1024).contains(&max_in_flight) {
        return Err(ConfigError::invalid(
            here,
            "hub.endpoints.rpc.max_in_flight",
            "must be between 1 and 1024",
        ));
    }
    let mut pass_claims = BTreeMap::new();
    for (claim, header) in file.pass_claims.unwrap_or_else(|| {
        BTreeMap::from([(
            "sub".to_owned(),
            Spanned {
                value: "x-auth-sub".to_owned(),
                referenced: serde_saphyr::Location::UNKNOWN,
                defined: serde_saphyr::Location::UNKNOWN,
            },
        )])
    }) {
        let name = header.value.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ConfigError::invalid(
                at(origin, &header),
                format!("hub.endpoints.rpc.pass_claims.{claim}"),
                format!("`{}` is not a header name", header.value),
            ));
        }
        pass_claims.insert(claim, name);
    }
    Ok(RpcSettings {
        url,
        methods,
        rate,
        method_rates,
        timeout,
        max_in_flight,
        pass_claims,
    })
}

/// A channel name: 1 to 255 bytes of letters, digits and `- _ . : @ / = ~ !` (no `,`: lists
/// of channels are comma-separated; no `+`: a query may mean a space by it).
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@/=~!".contains(&b))
}

/// A channel's namespace: the part before the first `:`, or the whole name.
pub fn namespace_of(channel: &str) -> &str {
    channel.split_once(':').map_or(channel, |(ns, _)| ns)
}
