//! `tlsgate hub publish|stats|channels`: the publish API from the command line, through the
//! running server's admin listener (the address from the same configuration).

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::{ask_admin, fail, CommonArgs};

#[derive(Debug, Subcommand)]
pub(crate) enum HubCommand {
    /// Publish JSON on a channel; prints the publication's epoch and offset and how many
    /// sessions it was queued to.
    #[command(
        after_help = "Example:\n  tlsgate hub publish prices '{\"type\":\"price_update\",\"coin\":\"bitcoin\",\"price\":97000}'\n\nExit codes: 0 published, 1 refused (the message says why), 2 no server reachable or bad input"
    )]
    Publish {
        /// The channel, e.g. `prices` or `user:42`.
        channel: String,
        /// The message: any JSON, delivered to subscribers as written.
        json: String,
        /// Publishing again with the same key within five minutes publishes nothing.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Sessions, channels, subscriptions, publications and deliveries of the running hub.
    Stats {
        /// The answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Channels with subscribers on this node.
    Channels {
        #[command(flatten)]
        common: CommonArgs,
    },
}

pub(crate) fn run(command: HubCommand) -> ExitCode {
    let (common, method, path, body) = match &command {
        HubCommand::Publish {
            channel,
            json,
            idempotency_key,
            common,
        } => {
            let data: Box<serde_json::value::RawValue> = match serde_json::from_str(json) {
                Ok(data) => data,
                Err(error) => return fail(format!("the message is not JSON: {error}")),
            };
            let body = serde_json::json!({
                "channel": channel,
                "data": data,
                "idempotency_key": idempotency_key,
            });
            (common, http::Method::POST, "/hub/publish", body.to_string())
        }
        HubCommand::Stats { common, .. } => {
            (common, http::Method::GET, "/hub/stats", String::new())
        }
        HubCommand::Channels { common } => {
            (common, http::Method::GET, "/hub/channels", String::new())
        }
    };
    let (status, body) = match ask_admin(
        common,
        "the hub's API is served there",
        method,
        path,
        bytes::Bytes::from(body),
        Duration::from_secs(30),
    ) {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if !status.is_success() {
        eprintln!(
            "error: {}",
            value["error"].as_str().unwrap_or(body.as_str())
        );
        return ExitCode::from(1);
    }
    match command {
        HubCommand::Publish { .. } => {
            let repeat = if value["duplicate"] == true {
                " (a repeat: nothing published again)"
            } else {
                ""
            };
            println!(
                "published on {} at offset {} (epoch {}): queued to {} session(s) here{repeat}",
                value["channel"].as_str().unwrap_or("?"),
                value["offset"],
                value["epoch"].as_str().unwrap_or("?"),
                value["delivered"],
            );
        }
        HubCommand::Stats { json: true, .. } => println!("{body}"),
        HubCommand::Stats { .. } => {
            for key in [
                "sessions",
                "channels",
                "subscriptions",
                "publications",
                "deliveries",
                "slow_consumer_drops",
                "slow_consumer_disconnects",
            ] {
                println!("{:<26} {}", key.replace('_', " "), value[key]);
            }
        }
        HubCommand::Channels { .. } => {
            let channels = value["channels"].as_array().cloned().unwrap_or_default();
            if channels.is_empty() {
                println!("no channel has subscribers here");
            }
            for channel in channels {
                println!(
                    "{:<40} {}",
                    channel["channel"].as_str().unwrap_or("?"),
                    channel["subscribers"]
                );
            }
        }
    }
    ExitCode::SUCCESS
}
