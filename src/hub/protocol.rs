//! The client protocol: the seeds' JSON actions, read from a text message, and the hub's
//! replies. Every reply to a request that carried an `id` echoes it.
//!
//! | client sends | hub answers |
//! |---|---|
//! | `{"action":"subscribe","channel":C}` (or `"channels":[…]`, `"since":{"epoch":E,"offset":N}`) | `{"type":"subscribed","channel":C,"epoch":…,"offset":…}` (`"recovered":bool` with `since`) |
//! | `{"action":"unsubscribe","channel":C}` | `{"type":"unsubscribed","channel":C}` |
//! | `{"action":"ping"}` | `{"type":"pong"}` |
//! | `{"action":"auth","token":T}` | `{"type":"authenticated","user":…,"expires":…}` |
//! | `{"action":"refresh","token":T}` | `{"type":"refreshed","expires":…}` |
//! | `{"action":"presence","channel":C}` | `{"type":"presence","channel":C,"connections":N,"users":[…]}` |
//! | `{"action":"publish","channel":C,"data":…}` | `{"type":"published","channel":C,"offset":N}` |
//! | a JSON-RPC 2.0 request (`"jsonrpc":"2.0"`) | the backend's JSON-RPC response |
//!
//! Errors: `{"type":"error","code":…,"message":…}`.

use serde_json::{json, Map, Value};

/// One parsed client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Subscribe {
        channels: Vec<String>,
        since: Option<(String, u64)>,
    },
    Unsubscribe {
        channels: Vec<String>,
    },
    Ping,
    Auth {
        token: String,
    },
    Refresh {
        token: String,
    },
    Presence {
        channel: String,
    },
    Publish {
        channel: String,
        /// The JSON as the client wrote it.
        data: super::JsonText,
    },
    /// A JSON-RPC 2.0 request or notification, as sent.
    Rpc(Map<String, Value>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub command: Command,
}

/// A request the hub cannot act on: answered with an error message.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub id: Option<Value>,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(id: Option<Value>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            id,
            code,
            message: message.into(),
        }
    }

    pub fn to_text(&self) -> String {
        error(self.id.as_ref(), self.code, &self.message)
    }
}

fn string_field(object: &Map<String, Value>, name: &str) -> Option<String> {
    object.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn channels(object: &Map<String, Value>, id: &Option<Value>) -> Result<Vec<String>, Refusal> {
    if let Some(channel) = string_field(object, "channel") {
        return Ok(vec![channel]);
    }
    match object.get("channels") {
        Some(Value::Array(list)) if !list.is_empty() && list.len() <= 100 => list
            .iter()
            .map(|c| {
                c.as_str().map(str::to_owned).ok_or_else(|| {
                    Refusal::new(id.clone(), "bad_request", "`channels` must list strings")
                })
            })
            .collect(),
        Some(_) => Err(Refusal::new(
            id.clone(),
            "bad_request",
            "`channels` must list 1 to 100 channel names",
        )),
        None => Err(Refusal::new(
            id.clone(),
            "bad_request",
            "`channel` (a string) is required",
        )),
    }
}

/// Reads one text message.
pub fn parse(text: &str) -> Result<Request, Refusal> {
    let value: Value = serde_json::from_str(text)
        .map_err(|_| Refusal::new(None, "bad_request", "messages must be JSON objects"))?;
    let Value::Object(object) = value else {
        return Err(Refusal::new(
            None,
            "bad_request",
            "messages must be JSON objects",
        ));
    };
    let id = object.get("id").cloned();
    if object.get("jsonrpc").and_then(Value::as_str) == Some("2.0") {
        return Ok(Request {
            id,
            command: Command::Rpc(object),
        });
    }
    let Some(action) = object.get("action").and_then(Value::as_str) else {
        return Err(Refusal::new(
            id,
            "bad_request",
            "`action` (subscribe, unsubscribe, ping, auth, refresh, presence, publish) is required",
        ));
    };
    let channel = |object: &Map<String, Value>| {
        string_field(object, "channel").ok_or_else(|| {
            Refusal::new(
                id.clone(),
                "bad_request",
                "`channel` (a string) is required",
            )
        })
    };
    let token = |object: &Map<String, Value>| {
        string_field(object, "token")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Refusal::new(id.clone(), "bad_request", "`token` is required"))
    };
    let command = match action {
        "subscribe" => {
            let since = match object.get("since") {
                None | Some(Value::Null) => None,
                Some(Value::Object(since)) => {
                    match (
                        since.get("epoch").and_then(Value::as_str),
                        since.get("offset").and_then(Value::as_u64),
                    ) {
                        (Some(epoch), Some(offset)) => Some((epoch.to_owned(), offset)),
                        _ => {
                            return Err(Refusal::new(
                                id,
                                "bad_request",
                                "`since` is {\"epoch\": string, \"offset\": number}",
                            ))
                        }
                    }
                }
                Some(_) => {
                    return Err(Refusal::new(
                        id,
                        "bad_request",
                        "`since` is {\"epoch\": string, \"offset\": number}",
                    ))
                }
            };
            Command::Subscribe {
                channels: channels(&object, &id)?,
                since,
            }
        }
        "unsubscribe" => Command::Unsubscribe {
            channels: channels(&object, &id)?,
        },
        "ping" => Command::Ping,
        "auth" => Command::Auth {
            token: token(&object)?,
        },
        "refresh" => Command::Refresh {
            token: token(&object)?,
        },
        "presence" => Command::Presence {
            channel: channel(&object)?,
        },
        "publish" => Command::Publish {
            channel: channel(&object)?,
            data: raw_data(text)
                .ok_or_else(|| Refusal::new(id.clone(), "bad_request", "`data` is required"))?,
        },
        other => {
            return Err(Refusal::new(
                id,
                "unknown_action",
                format!(
                    "unknown action `{}`",
                    other.chars().take(40).collect::<String>()
                ),
            ))
        }
    };
    Ok(Request { id, command })
}

/// The `data` member exactly as written.
fn raw_data(text: &str) -> Option<super::JsonText> {
    #[derive(serde::Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    let raw: Raw<'_> = serde_json::from_str(text).ok()?;
    raw.data.map(super::JsonText::from_raw)
}

/// A reply object with the request's `id` when it had one.
pub fn reply(id: Option<&Value>, mut body: Map<String, Value>) -> String {
    if let Some(id) = id {
        body.insert("id".into(), id.clone());
    }
    Value::Object(body).to_string()
}

pub fn error(id: Option<&Value>, code: &str, message: &str) -> String {
    let body = json!({"type": "error", "code": code, "message": message});
    reply(id, into_map(body))
}

pub fn into_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_actions_parse_and_errors_echo_the_id() {
        let request =
            parse(r#"{"action":"subscribe","channel":"prices","coins":["bitcoin"]}"#).unwrap();
        assert_eq!(
            request.command,
            Command::Subscribe {
                channels: vec!["prices".into()],
                since: None
            }
        );
        let request =
            parse(r#"{"action":"subscribe","channels":["a","b"],"since":{"epoch":"e","offset":4},"id":7}"#)
                .unwrap();
        assert_eq!(request.id, Some(json!(7)));
        assert_eq!(
            request.command,
            Command::Subscribe {
                channels: vec!["a".into(), "b".into()],
                since: Some(("e".into(), 4))
            }
        );
        assert_eq!(
            parse(r#"{"action":"ping"}"#).unwrap().command,
            Command::Ping
        );
        let refused = parse(r#"{"action":"dance","id":"x"}"#).unwrap_err();
        assert_eq!(refused.code, "unknown_action");
        assert_eq!(
            serde_json::from_str::<Value>(&refused.to_text()).unwrap(),
            json!({"type":"error","code":"unknown_action","message":"unknown action `dance`","id":"x"})
        );
        assert_eq!(parse("not json").unwrap_err().code, "bad_request");
        assert_eq!(parse("[1]").unwrap_err().code, "bad_request");
        assert_eq!(
            parse(r#"{"action":"auth"}"#).unwrap_err().code,
            "bad_request"
        );
        assert!(matches!(
            parse(r#"{"jsonrpc":"2.0","method":"get_camera_list","id":1}"#)
                .unwrap()
                .command,
            Command::Rpc(_)
        ));
    }
}
