//! Edge policy: the decisions the pipeline's policy stage asks for (tokens, forward-auth
//! answers cached, rate-limit zones, per-IP caps, bans, CORS, IP lists). Pure decisions over
//! shared state: nothing here does I/O on the request path beyond what is cached, and
//! nothing here knows routes or targets (`pipeline::policy` composes them per route).

pub mod client;
pub mod client_cert;
pub mod cors;
pub mod forward_auth;
pub mod jwt;
pub mod limits;
