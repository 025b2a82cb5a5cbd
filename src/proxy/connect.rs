//! The one way tlsgate opens a connection to an upstream server, for HTTP/1 exchanges, h2c,
//! WebSocket upgrades and health checks alike: the host's addresses are tried in turn, each
//! with a share of `connect_timeout`, and every error names the address.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The least time each address gets, however long the list (a SYN retransmission needs ~1 s).
const MIN_CONNECT_SHARE: Duration = Duration::from_secs(2);

/// Connects to the first of `host`'s addresses that answers, within `timeout` in all. Each
/// address gets an equal share of the time still left, but at least `MIN_CONNECT_SHARE` of
/// it (as Go's dialer does), so one that drops SYNs (an unreachable IPv6 address, a full
/// accept queue) cannot use up `timeout` alone.
pub async fn connect(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let deadline = tokio::time::Instant::now() + timeout;
    let addresses: Vec<SocketAddr> =
        match tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(addresses)) => addresses.collect(),
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{host} not resolved within {timeout:?}"),
                ))
            }
        };
    connect_to_any(&addresses, deadline).await
}

pub(super) async fn connect_to_any(
    addresses: &[SocketAddr],
    deadline: tokio::time::Instant,
) -> io::Result<TcpStream> {
    if addresses.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the host has no address",
        ));
    }
    let mut refused = None;
    let mut timed_out = None;
    for (index, address) in addresses.iter().enumerate() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let share = (left / (addresses.len() - index) as u32).max(left.min(MIN_CONNECT_SHARE));
        match tokio::time::timeout(share, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Ok(Err(error)) => {
                refused = Some(io::Error::new(error.kind(), format!("{address}: {error}")));
            }
            Err(_) => {
                timed_out = Some(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{address}: no connection within {share:.1?}"),
                ));
            }
        }
    }
    // A timeout anywhere makes the whole a timeout (a 504, not a 502), as does running out of
    // time before any address was tried.
    Err(timed_out
        .or(refused)
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no time left to connect")))
}

/// [`connect`] as the connector of hyper's client (h2c pools and health checks) and of
/// WebSocket upgrades: the URI's host and port (80 when absent), within `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Connector {
    pub timeout: Duration,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let timeout = self.timeout;
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
            })?;
            let port = uri.port_u16().unwrap_or(80);
            connect(host, port, timeout).await.map(TokioIo::new)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_service::Service;

    /// A listener whose accept queue is full: the kernel drops further SYNs, so a connect to
    /// it hangs as it would to an unreachable address. Returns it with the connections filling it.
    async fn black_hole(ip: &str) -> (SocketAddr, Vec<TcpStream>, tokio::net::TcpListener) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut filling = Vec::new();
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => filling.push(stream),
                _ => return (addr, filling, listener),
            }
        }
        panic!("the accept queue of {addr} never filled");
    }

    #[tokio::test]
    async fn an_address_that_drops_connections_leaves_time_for_the_next() {
        let (dead, _filling, _listener) = black_hole("127.0.0.2").await;
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let started = tokio::time::Instant::now();
        let stream = connect_to_any(&[dead, live_addr], started + Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), live_addr);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(2400) && took < Duration::from_millis(4500),
            "the dead address gets half of the 5 s, the live one the rest: {took:?}"
        );
        // Only dead addresses: the error names the last one tried and comes at the deadline,
        // a timeout even when a refusal came first.
        let refusing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refusing_addr = refusing.local_addr().unwrap();
        drop(refusing);
        let started = tokio::time::Instant::now();
        let error = connect_to_any(&[refusing_addr, dead], started + Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(error.to_string().starts_with(&dead.to_string()), "{error}");
        assert!(started.elapsed() < Duration::from_millis(1000));
        // No address at all.
        let error = connect_to_any(&[], started + Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn the_connector_names_the_refusing_address() {
        // A port nothing listens on: bind one, learn it, close it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut connector = Connector {
            timeout: Duration::from_secs(2),
        };
        let error = connector
            .call(format!("http://{addr}/").parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }
}
