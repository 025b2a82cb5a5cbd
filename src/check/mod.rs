//! The client-side deployment checker behind `tlsgate check`. It never depends on `server`:
//! it grades any HTTPS/WSS deployment, not only tlsgate.

pub mod modern;
pub mod probe;
