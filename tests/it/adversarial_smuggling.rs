//! HTTP/1.1 request smuggling through the proxy: requests whose framing two parsers could read
//! differently, sent over TLS to a server in front of a raw backend that parses and records
//! every request it gets. Each is refused (`400`, or the connection closed), or read in the
//! one way the RFC allows and re-framed; nothing ambiguous, and no request hidden in a body,
//! ever reaches the backend.

use crate::common;

use std::time::{Duration, Instant};

use common::hostile::*;

/// A request the attacker hides after (or inside) the first one.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// What the proxy may do with a case.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// `400`, then the connection is closed.
    Refused,
    /// `400` or `421`: an absolute-form target naming another host.
    Misdirected,
    /// Either refused, or read as RFC 9112 allows (OWS around a value, a bare LF line end,
    /// Transfer-Encoding overriding Content-Length) and passed on re-framed.
    RefusedOrNormalised,
    /// Anything but a success: the body cannot be read.
    NotServed,
}

fn cases() -> Vec<(&'static str, String, Expect)> {
    use Expect::*;
    let te_cl_body = format!("5c\r\n{}\r\n0\r\n\r\n", "x".repeat(0x5c));
    vec![
        (
            "CL then TE (CL.TE)",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            RefusedOrNormalised,
        ),
        (
            "TE then CL (TE.CL)",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{te_cl_body}{SMUGGLED}"),
            RefusedOrNormalised,
        ),
        (
            "TE `chunked ` (trailing space)",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked \r\n\r\n0\r\n\r\n{SMUGGLED}"),
            RefusedOrNormalised,
        ),
        (
            "TE xchunked",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        (
            "TE `chunked, identity`",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        (
            "TE with a tab",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            RefusedOrNormalised,
        ),
        (
            "two TE headers, chunked first",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        (
            "two Content-Lengths",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        (
            "Content-Length: +5",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: +5\r\n\r\nhello{SMUGGLED}"),
            Refused,
        ),
        (
            "Content-Length: -1",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        (
            "Content-Length: 0x5",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0x5\r\n\r\nhello{SMUGGLED}"),
            Refused,
        ),
        (
            "chunk size overflow",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx\r\n0\r\n\r\n{SMUGGLED}"),
            NotServed,
        ),
        (
            "bare LF line ends",
            "POST /a HTTP/1.1\nHost: localhost\nContent-Length: 5\n\nhello".to_owned(),
            RefusedOrNormalised,
        ),
        (
            "a bare LF hiding a Content-Length",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nX-Lf: a\nContent-Length: {}\r\n\r\n{SMUGGLED}", SMUGGLED.len()),
            RefusedOrNormalised,
        ),
        (
            "obs-fold",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello{SMUGGLED}"),
            Refused,
        ),
        (
            "space before the colon",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello{SMUGGLED}"),
            Refused,
        ),
        (
            "NUL in a value",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nX-Nul: a\0b\r\nContent-Length: 5\r\n\r\nhello{SMUGGLED}"),
            Refused,
        ),
        (
            "bare CR in a value",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nX-Cr: a\rTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello{SMUGGLED}"),
            Refused,
        ),
        (
            "absolute-form naming another host",
            "GET https://evil.example/a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_owned(),
            Misdirected,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_and_nothing_ambiguous_reaches_the_backend() {
    let backend = Backend::recording().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = proxy_to(dir.path(), &backend.url(), "").await;
    let started = Instant::now();
    let outcomes =
        futures_util::future::join_all(cases().into_iter().map(|(name, request, expect)| {
            let (server, ca) = (&server, &ca);
            async move {
                let (status, text, closed) =
                    raw_exchange(server, ca, request.as_bytes(), Duration::from_millis(1500)).await;
                (name, expect, status, text, closed)
            }
        }))
        .await;
    let mut failures = Vec::new();
    for (name, expect, status, text, closed) in &outcomes {
        let responses = text.matches("HTTP/1.1 ").count();
        let fine = match expect {
            Expect::Refused => *status == 400 && *closed && responses == 1,
            Expect::Misdirected => matches!(status, 400 | 421) && responses == 1,
            Expect::RefusedOrNormalised => {
                (*status == 400 && *closed) || (*status == 200 && !text.contains("ok /smuggled"))
            }
            Expect::NotServed => *status != 200 && !text.contains("ok /smuggled"),
        };
        eprintln!("{name}: {status} closed={closed} responses={responses}");
        if !fine {
            failures.push(format!(
                "{name} ({expect:?}): status {status}, closed {closed}: {text:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // What the backend got: the normalised cases only, each framed one way, none hidden.
    let requests = backend.requests();
    for request in &requests {
        assert_ne!(
            request.path, "/smuggled",
            "a smuggled request reached the backend: {request:?}"
        );
        let te = request.header("transfer-encoding");
        let cl = request.header("content-length");
        assert!(
            te.is_empty() || cl.is_empty(),
            "Transfer-Encoding and Content-Length together: {}",
            request.head
        );
        assert!(te.iter().all(|v| v == "chunked"), "{}", request.head);
        assert!(cl.len() <= 1, "{}", request.head);
        assert!(!request.head.contains("evil.example"), "{}", request.head);
        assert!(
            !request
                .head
                .replace("\r\n", "")
                .contains(['\n', '\r', '\0']),
            "bare line ends or NUL passed on: {:?}",
            request.head
        );
        // A body the proxy could not read (the chunk-size overflow) is cut short, never
        // completed with bytes of its own.
        assert!(request.complete || request.body.is_empty(), "{request:?}");
        assert!(
            !request.head.contains("X-Nul") && !request.head.contains("X-Cr"),
            "{}",
            request.head
        );
    }
    let served = outcomes
        .iter()
        .filter(|(_, _, status, _, _)| *status == 200)
        .count();
    let complete = requests.iter().filter(|r| r.complete).count();
    assert_eq!(complete, served, "{requests:#?}");
    eprintln!(
        "{} cases in {:?}; {} normalised and passed on, the rest refused",
        outcomes.len(),
        started.elapsed(),
        served
    );
    normal_client_is_served(&server, &ca).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_looks_like_a_request_stays_a_body_on_a_reused_backend_connection() {
    let backend = Backend::recording().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = proxy_to(dir.path(), &backend.url(), "").await;
    // A chunked body that is a whole request, then a normal request on the same connection:
    // the backend must see two requests, the first with the smuggled text as its body.
    let body = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let request = format!(
        "POST /first HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n{body}GET /second HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let (status, text, _) =
        raw_exchange(&server, &ca, request.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("ok /first") && text.contains("ok /second"),
        "{text}"
    );
    assert!(!text.contains("ok /smuggled"), "{text}");
    let requests = backend.requests();
    let paths: Vec<_> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/first", "/second"], "{requests:#?}");
    assert_eq!(requests[0].body, SMUGGLED.as_bytes());
    normal_client_is_served(&server, &ca).await;
    server.stop().await;
}
