//! tlsgate: one binary that gives any backend HTTPS and secure WebSockets.
//!
//! The binary (`main.rs`) only calls [`cli::run`]; everything else lives here so tests can
//! start real servers in-process.

pub mod acme;
pub mod admin;
pub mod certs;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
#[cfg(test)]
mod fuzzing;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod tls;
