//! The integration tests, as one binary: each module was a test binary of its own, and each of
//! those linked the whole crate again (nine links, most of a clean build's disk and time).
//! They start real servers on `127.0.0.1:0` and talk to them over real sockets.

mod common;

mod acme;
mod adversarial;
mod adversarial_backends;
mod adversarial_faults;
mod adversarial_h2;
mod adversarial_process;
mod adversarial_slow;
mod adversarial_smuggling;
mod cert_cli;
mod check;
mod check_grades;
mod cli;
mod hub;
mod hub_autobahn;
mod metrics;
mod policy_cors;
mod policy_jwt;
mod policy_limits;
mod policy_mtls;
mod proxy;
mod reload;
mod tls_edge;
