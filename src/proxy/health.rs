//! Active health checks: `GET path` on every server each `interval`; `fall` failures in a row
//! take a server out, `rise` successes bring it back.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio_util::sync::CancellationToken;

use super::pool::Pool;

pub async fn run(pool: Arc<Pool>, shutdown: CancellationToken) {
    let Some(check) = pool.settings.health_check.clone() else {
        return;
    };
    let mut streaks = vec![(0u32, 0u32); pool.servers.len()]; // (successes, failures)
    let mut ticker = tokio::time::interval(check.interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        for (index, server) in pool.servers.iter().enumerate() {
            let uri = format!("{}{}", server.url, check.path);
            let request = http::Request::get(&uri)
                .header(http::header::USER_AGENT, "tlsgate-health-check")
                .body(
                    Empty::<Bytes>::new()
                        .map_err(|never| match never {})
                        .boxed(),
                );
            let Ok(request) = request else { continue };
            let outcome = tokio::time::timeout(check.timeout, pool.client.request(request)).await;
            let ok = match outcome {
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    // Drain the body so the connection can be reused.
                    let _ =
                        tokio::time::timeout(check.timeout, response.into_body().collect()).await;
                    status == check.expect
                }
                _ => false,
            };
            let (successes, failures) = &mut streaks[index];
            if ok {
                *successes += 1;
                *failures = 0;
                if !server.healthy.load(Ordering::Relaxed) && *successes >= check.rise {
                    server.healthy.store(true, Ordering::Relaxed);
                    tracing::info!(upstream = %pool.name, server = %server.url, "health check passing: back in rotation");
                }
            } else {
                *failures += 1;
                *successes = 0;
                if server.healthy.load(Ordering::Relaxed) && *failures >= check.fall {
                    server.healthy.store(false, Ordering::Relaxed);
                    tracing::warn!(upstream = %pool.name, server = %server.url, path = %check.path, "health check failing: out of rotation");
                }
            }
        }
    }
}
