//! A hub endpoint (`Target::Hub`): what a configuration's endpoint holds, what a session
//! reads from its opening request, and how the upgraded connection becomes a session task.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::config::hub::EndpointSettings;
use crate::http::context::RequestContext;
use crate::http::error::HttpError;
use crate::http::{percent_decode, query_pairs};
use crate::metrics::EndpointLabels;
use crate::policy::jwt::{Claims, Verifier};

/// Channels one session may hold.
pub const MAX_SUBSCRIPTIONS: usize = 1000;

/// A hub endpoint of one configuration (`Target::Hub`).
pub struct Endpoint {
    pub settings: EndpointSettings,
    pub hub: Arc<Hub>,
    /// The endpoint's JWT verifier: for `auth`/`refresh` messages and JSON-RPC's
    /// `params.auth_token`.
    pub verifier: Option<Arc<Verifier>>,
    /// Whether a session must be authenticated (the endpoint has `auth:`).
    pub auth_required: bool,
    pub rpc: Option<super::rpc::Forwarder>,
    /// Cancelled when a reload removes the endpoint's route.
    pub closer: CancellationToken,
    /// `limits.reload_grace`: removal closes are spread over it.
    pub grace: Duration,
    pub(super) label: EndpointLabels,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("path", &self.settings.route.path)
            .finish_non_exhaustive()
    }
}

/// What a session starts with, read from its opening request.
#[derive(Debug)]
pub struct Start {
    pub(super) parameters: Vec<(String, String)>,
    pub(super) channels: Vec<String>,
    pub(super) since: HashMap<String, (String, u64)>,
    pub(super) claims: Option<Claims>,
    pub(super) client: IpAddr,
}

impl Endpoint {
    pub fn new(
        settings: EndpointSettings,
        hub: Arc<Hub>,
        verifier: Option<Arc<Verifier>>,
        closer: CancellationToken,
        grace: Duration,
    ) -> Self {
        let rpc = settings.rpc.clone().map(super::rpc::Forwarder::new);
        Self {
            label: EndpointLabels {
                endpoint: settings.route.path.clone(),
            },
            auth_required: settings.route.auth.is_some(),
            settings,
            hub,
            verifier,
            rpc,
            closer,
            grace,
        }
    }

    /// Reads the opening request: path parameters, `?channels=`, `?since.CHANNEL=`, and the
    /// claims the policy stage verified.
    pub fn prepare<B>(
        &self,
        request: &http::Request<B>,
        ctx: &RequestContext,
    ) -> Result<Start, HttpError> {
        let route = &self.settings.route;
        // `;parameters` are not part of a segment's value (routes ignore them too).
        let path = crate::http::without_parameters(request.uri().path());
        let parameters = if route.path.contains('{') {
            crate::policy::jwt::match_template(&route.path, &path, route.exact).unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut channels = Vec::new();
        let mut since = HashMap::new();
        for (name, value) in query_pairs(request.uri().query().unwrap_or("")) {
            let value = percent_decode(value);
            if !self.settings.channels_param.is_empty() && name == self.settings.channels_param {
                for channel in value.split(',').filter(|c| !c.is_empty()) {
                    if channels.len() >= MAX_SUBSCRIPTIONS {
                        return Err(HttpError::BadRequest("too many channels"));
                    }
                    channels.push(channel.to_owned());
                }
            } else if let Some(channel) = name.strip_prefix("since.") {
                let parsed = value
                    .rsplit_once(':')
                    .and_then(|(epoch, offset)| Some((epoch.to_owned(), offset.parse().ok()?)))
                    .ok_or(HttpError::BadRequest(
                        "`since.CHANNEL` must be EPOCH:OFFSET",
                    ))?;
                since.insert(channel.to_owned(), parsed);
            }
        }
        Ok(Start {
            parameters,
            channels,
            since,
            claims: ctx.claims.clone(),
            client: ctx.client_ip,
        })
    }
}
