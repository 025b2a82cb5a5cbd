//! A route's `websocket:` limits inside proxied WebSockets (client → backend messages): size
//! of a message (summed over its fragments) and messages per second with a burst — file
//! schema, typed settings and their validation.

use serde::{Deserialize, Serialize, Serializer};
use serde_saphyr::Spanned;

use super::units::{self, ConfigSize};
use super::{ConfigError, Origin};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketFile {
    pub max_message_size: Option<ConfigSize>,
    pub messages_per_second: Option<u32>,
    pub burst: Option<u32>,
}

/// What the tunnel holds a client's messages to. `None` in a field: no such limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MessageLimits {
    /// The most one message may carry, its fragments summed (on the wire: compressed when
    /// permessage-deflate is on); more: close 1009.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_size"
    )]
    pub max_message_size: Option<u64>,
    /// Messages per second, sustained; more: close 1008.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_per_second: Option<u32>,
    /// Messages that may arrive at once (the bucket's size); `messages_per_second` when
    /// not given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

fn serialize_opt_size<S: Serializer>(b: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match b {
        Some(b) => units::serialize_size(b, s),
        None => s.serialize_none(),
    }
}

const MAX_RATE: u32 = 1_000_000;

/// Sets each route's `websocket` limits in `targets` (`routes[i]` is the `websocket:`
/// written for `targets[i]`, each route's own field).
pub fn resolve<'a>(
    routes: Vec<Option<Spanned<WebSocketFile>>>,
    targets: impl Iterator<Item = &'a mut Option<MessageLimits>>,
    origin: &dyn Fn(u64, u64) -> Origin,
) -> Result<(), ConfigError> {
    for (target, file) in targets.zip(routes) {
        let Some(file) = file else { continue };
        let here = super::origin_of(origin, &file);
        let file = file.value;
        if file.max_message_size.is_some_and(|s| s.0 == 0) {
            return Err(ConfigError::invalid(
                here,
                "routes.websocket.max_message_size",
                "must be greater than zero",
            ));
        }
        if let Some(rate) = file.messages_per_second {
            if !(1..=MAX_RATE).contains(&rate) {
                return Err(ConfigError::invalid(
                    here,
                    "routes.websocket.messages_per_second",
                    format!("must be between 1 and {MAX_RATE}"),
                ));
            }
        }
        match (file.burst, file.messages_per_second) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    here,
                    "routes.websocket.burst",
                    "a burst needs messages_per_second",
                ))
            }
            (Some(burst), Some(_)) if !(1..=MAX_RATE).contains(&burst) => {
                return Err(ConfigError::invalid(
                    here,
                    "routes.websocket.burst",
                    format!("must be between 1 and {MAX_RATE}"),
                ))
            }
            _ => {}
        }
        let limits = MessageLimits {
            max_message_size: file.max_message_size.map(|s| s.0),
            messages_per_second: file.messages_per_second,
            burst: file
                .messages_per_second
                .map(|rate| file.burst.unwrap_or(rate)),
        };
        if limits.max_message_size.is_some() || limits.messages_per_second.is_some() {
            *target = Some(limits);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{load_str, to_yaml, Overrides, Settings};

    fn load(routes: &str) -> Result<Settings, crate::config::ConfigError> {
        let yaml = format!("upstreams:\n  app:\n    servers: [http://127.0.0.1:9]\nroutes:\n  - path: /ws\n    upstream: app\n{routes}");
        load_str(&yaml, None, &Overrides::default(), &|_| None)
    }

    #[test]
    fn limits_default_the_burst_to_the_rate_print_back_and_refuse_nonsense() {
        let settings =
            load("    websocket: {max_message_size: 1MiB, messages_per_second: 50}\n").unwrap();
        let limits = settings.proxy.routes[0].websocket.unwrap();
        assert_eq!(limits.max_message_size, Some(1 << 20));
        assert_eq!(limits.burst, Some(50));
        let printed = to_yaml(&settings);
        assert!(printed.contains("max_message_size: 1MiB"), "{printed}");
        let again = load_str(&printed, None, &Overrides::default(), &|_| None).unwrap();
        assert_eq!(to_yaml(&again), printed);
        for bad in [
            "    websocket: {burst: 5}\n",
            "    websocket: {messages_per_second: 0}\n",
            "    websocket: {max_message_size: 0}\n",
            "    websocket: {messages_per_second: 5, burst: 0}\n",
            "    websocket: {max_size: 5}\n",
        ] {
            let error = load(bad).unwrap_err().to_string();
            assert!(error.contains(":7:"), "{bad}: {error}");
        }
    }
}
