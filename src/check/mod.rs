//! The client-side deployment checker behind `tlsgate check`. It never depends on `server`:
//! it grades any HTTPS/WSS deployment, not only tlsgate.

pub mod certificate;
pub mod findings;
pub mod modern;
pub mod probe;
