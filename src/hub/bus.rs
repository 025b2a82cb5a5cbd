//! How a publication reaches the subscribers of every node: a trait, with the in-process
//! bus (this node only) now; a Redis pub/sub bus takes its place when nodes share channels.

use std::sync::Arc;

use super::history::BoxFuture;
use super::{Publication, Registry};

pub trait Bus: Send + Sync {
    /// Sends `publication` to every node's subscribers; the count queued on this node.
    fn publish(&self, publication: Arc<Publication>) -> BoxFuture<'_, Result<usize, String>>;
}

/// Delivers straight to this process's registry.
pub struct LocalBus {
    registry: Arc<Registry>,
}

impl LocalBus {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }
}

impl Bus for LocalBus {
    fn publish(&self, publication: Arc<Publication>) -> BoxFuture<'_, Result<usize, String>> {
        let delivered = self.registry.deliver(&publication);
        Box::pin(std::future::ready(Ok(delivered)))
    }
}
