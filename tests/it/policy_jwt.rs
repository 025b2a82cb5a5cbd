//! Tokens at the edge over real sockets: tokens minted by PyJWT with keys made by openssl, a
//! JWKS server that rotates its keys, WebSockets closed with 4001/4003 as the seeds' handlers
//! did, and a forward-auth service.

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::pyjwt::{now, python, sign};
use common::upstream::Upstream;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Claims with `exp` an hour ahead and the test issuer and audience, plus `extra`.
fn claims(extra: serde_json::Value) -> String {
    let mut claims = serde_json::json!({
        "sub": "alice", "iss": "https://issuer.test", "aud": "api", "exp": now() + 3600,
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims.to_string()
}

/// A key pair made by openssl: `NAME.key` and `NAME.pub` (SPKI PEM).
fn openssl_key(dir: &Path, name: &str, spec: &[&str]) {
    let key = dir.join(format!("{name}.key"));
    let mut args = vec!["genpkey"];
    args.extend_from_slice(spec);
    args.extend_from_slice(&["-out", key.to_str().unwrap()]);
    let (ok, out) = openssl(&args);
    assert!(ok, "{out}");
    let public = dir.join(format!("{name}.pub"));
    let (ok, out) = openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
}

const RSA: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
const P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
const ED25519: &[&str] = &["-algorithm", "ED25519"];

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SimpleResponse {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = http::Request::get(path).header("host", "app.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send_on(stream, request.body(body_of("")).unwrap()).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn upstream_header(response: &SimpleResponse, name: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(&response.body)
        .unwrap_or_else(|_| panic!("not JSON ({}): {}", response.status, response.body));
    json["headers"][name].as_str().map(str::to_owned)
}

async fn metrics(server: &TestServer) -> String {
    http_get(server.admin.unwrap(), "127.0.0.1", "/metrics")
        .await
        .body
}

const VERIFIER_TAIL: &str = "    issuer: https://issuer.test\n    audience: api\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_tokens_verify_with_openssl_keys_and_every_bad_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("hs.secret"),
        "a-long-shared-secret-for-hs256-tests\n",
    )
    .unwrap();
    openssl_key(d, "rsa", RSA);
    openssl_key(d, "ec", P256);
    openssl_key(d, "ed", ED25519);
    let backend = Upstream::start("app").await;
    let route = |path: &str, jwt: &str, extra: &str| {
        format!(
            "  - path: {path}\n    upstream: {}\n    auth:\n      jwt: {jwt}\n      pass_claims: {{sub: X-Auth-Sub}}\n{extra}",
            backend.url()
        )
    };
    let yaml = format!(
        "tls: off\njwt:\n  hs:\n    algorithms: [HS256]\n    secret_file: hs.secret\n{VERIFIER_TAIL}  rs:\n    algorithms: [RS256]\n    public_key_file: rsa.pub\n{VERIFIER_TAIL}  es:\n    algorithms: [ES256]\n    public_key_file: ec.pub\n{VERIFIER_TAIL}  ed:\n    algorithms: [EdDSA]\n    public_key_file: ed.pub\n{VERIFIER_TAIL}routes:\n{}{}{}{}{}",
        route("/hs", "hs", ""),
        route("/rs", "rs", ""),
        route("/es", "es", ""),
        route("/ed", "ed", ""),
        route("/admin", "hs", "      claims: {role: admin}\n"),
    );
    let server = TestServer::start(&yaml, d).await.unwrap();
    let addr = server.main;
    let good = claims(serde_json::json!({}));
    for (path, alg, key) in [
        ("/hs", "HS256", "hs.secret"),
        ("/rs", "RS256", "rsa.key"),
        ("/es", "ES256", "ec.key"),
        ("/ed", "EdDSA", "ed.key"),
    ] {
        let token = sign(d, alg, key, &good, "{}");
        let response = get(
            addr,
            path,
            &[
                ("authorization", &bearer(&token)),
                ("x-auth-sub", "mallory"),
                // WSGI and CGI servers read this as the same `HTTP_X_AUTH_SUB`.
                ("x_auth_sub", "mallory"),
            ],
        )
        .await;
        assert_eq!(response.status, 200, "{alg}: {}", response.body);
        assert_eq!(
            upstream_header(&response, "x-auth-sub").as_deref(),
            Some("alice"),
            "{alg}: the backend sees only the verified subject"
        );
        assert_eq!(upstream_header(&response, "x_auth_sub"), None, "{alg}");
    }
    // No token: 401 with the RFC 6750 challenge, and the forged header never passes.
    let response = get(addr, "/hs", &[("x-auth-sub", "mallory")]).await;
    assert_eq!(response.status, 401);
    assert_eq!(
        response.headers["www-authenticate"],
        "Bearer realm=\"tlsgate\""
    );
    let refused = |token: String, path: &'static str, why: &'static str| async move {
        let response = get(addr, path, &[("authorization", &bearer(&token))]).await;
        assert_eq!(response.status, 401, "{why}: {}", response.body);
        let challenge = response.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{why}: {challenge}"
        );
        challenge
    };
    let hs = |extra| sign(d, "HS256", "hs.secret", &claims(extra), "{}");
    let challenge = refused(
        hs(serde_json::json!({"exp": now() - 3600})),
        "/hs",
        "expired",
    )
    .await;
    assert!(challenge.contains("expired"), "{challenge}");
    // Within the default 60 s leeway it still passes.
    let response = get(
        addr,
        "/hs",
        &[(
            "authorization",
            &bearer(&hs(serde_json::json!({"exp": now() - 20}))),
        )],
    )
    .await;
    assert_eq!(
        response.status, 200,
        "expired 20 s ago is within the leeway"
    );
    refused(
        hs(serde_json::json!({"nbf": now() + 3600})),
        "/hs",
        "not yet valid",
    )
    .await;
    refused(hs(serde_json::json!({"aud": "other"})), "/hs", "audience").await;
    refused(
        hs(serde_json::json!({"iss": "https://evil.test"})),
        "/hs",
        "issuer",
    )
    .await;
    refused(hs(serde_json::json!({"exp": null})), "/hs", "no exp").await;
    refused(python(d, &["none", &good]), "/hs", "alg none").await;
    let confused = python(d, &["confuse", d.join("rsa.pub").to_str().unwrap(), &good]);
    refused(confused, "/rs", "HS256 keyed with the RSA public key").await;
    refused(
        sign(d, "RS256", "rsa.key", &good, "{}"),
        "/es",
        "another verifier's key",
    )
    .await;
    let mut tampered = sign(d, "HS256", "hs.secret", &good, "{}");
    // A character in the middle of the signature (the last one may carry unused bits).
    let at = tampered.len() - 10;
    let flipped = if &tampered[at..at + 1] == "A" {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(at..at + 1, flipped);
    refused(tampered, "/hs", "tampered signature").await;
    // Claim rules: a valid token without the claim is a 403.
    let user = hs(serde_json::json!({"role": "user"}));
    let response = get(addr, "/admin", &[("authorization", &bearer(&user))]).await;
    assert_eq!(response.status, 403);
    assert!(response.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    let admin = hs(serde_json::json!({"role": "admin"}));
    let response = get(addr, "/admin", &[("authorization", &bearer(&admin))]).await;
    assert_eq!(response.status, 200);
    let text = metrics(&server).await;
    for series in [
        r#"tlsgate_auth_results_total{route="*/hs",result="ok"} 2"#,
        r#"tlsgate_auth_results_total{route="*/hs",result="missing"} 1"#,
        r#"tlsgate_auth_results_total{route="*/hs",result="expired"} 1"#,
        r#"tlsgate_auth_results_total{route="*/admin",result="forbidden"} 1"#,
        r#"tlsgate_auth_results_total{route="*/rs",result="invalid"} 1"#,
    ] {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_cookie_query_and_subprotocol_are_stripped_and_never_logged() {
    use crate::cli::{tlsgate, Running};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("hs.secret"), "another-shared-secret-for-tests").unwrap();
    let backend = Upstream::start("app").await;
    let yaml = format!(
        "tls: off\njwt:\n  hs:\n    algorithms: [HS256]\n    secret_file: {}\n{VERIFIER_TAIL}routes:\n  - path: /api\n    upstream: {}\n    auth:\n      jwt: hs\n      sources: [cookie:session, query, header]\n      strip_token: true\n      pass_claims: {{sub: X-Auth-Sub, tenants: X-Auth-Tenants}}\n",
        d.join("hs.secret").display(),
        backend.url()
    );
    std::fs::write(d.join("tlsgate.yaml"), &yaml).unwrap();
    let mut command = tlsgate(d);
    command.env("TLSGATE_LOG", "trace");
    let config = d.join("tlsgate.yaml");
    let server = Running::start(&mut command, &["-c", config.to_str().unwrap()]);
    let token = sign(
        d,
        "HS256",
        "hs.secret",
        &claims(serde_json::json!({"tenants": ["acme", "globex"]})),
        "{}",
    );
    let query = format!("/api/x?a=1&token={token}&b=2");
    let response = get(server.main, &query, &[]).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let json: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(
        json["path"], "/api/x?a=1&b=2",
        "the token is stripped from the query"
    );
    assert_eq!(
        upstream_header(&response, "x-auth-tenants").as_deref(),
        Some("acme,globex")
    );
    let cookie = format!("theme=dark; session={token}");
    let response = get(server.main, "/api/y", &[("cookie", &cookie)]).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        upstream_header(&response, "cookie").as_deref(),
        Some("theme=dark")
    );
    assert_eq!(
        upstream_header(&response, "x-auth-sub").as_deref(),
        Some("alice")
    );
    let response = get(server.main, "/api/z", &[("authorization", &bearer(&token))]).await;
    assert_eq!(response.status, 200);
    assert_eq!(upstream_header(&response, "authorization"), None);
    // A refused query token is not logged either.
    let bad = format!("{token}x");
    let response = get(server.main, &format!("/api/w?token={bad}"), &[]).await;
    assert_eq!(response.status, 401);
    // Two tokens where one is read are refused: the edge would verify one, and a backend
    // (Starlette reads the last `?token=`) might read the other.
    let response = get(
        server.main,
        &format!("/api/v?token={token}&token={bad}"),
        &[],
    )
    .await;
    assert_eq!(response.status, 401, "{}", response.body);
    let response = get(
        server.main,
        "/api/v",
        &[
            ("authorization", &bearer(&token)),
            ("authorization", &bearer(&bad)),
        ],
    )
    .await;
    assert_eq!(response.status, 401, "{}", response.body);
    // The parameter's name is read decoded, as backends read it, and stripped as such.
    let response = get(server.main, &format!("/api/u?%74oken={token}&c=3"), &[]).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let json: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(json["path"], "/api/u?c=3");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, log) = server.stop();
    assert!(log.contains("TRACE"), "the log is at trace level");
    assert!(log.contains("/api/x"), "the access log has the path");
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !log.contains(signature),
        "the token is in the log:\n{}",
        log.lines()
            .filter(|l| l.contains(signature))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Opens a WebSocket on plain `ws://`; with `protocols`, offered in `Sec-WebSocket-Protocol`.
async fn ws(
    addr: SocketAddr,
    path: &str,
    protocols: Option<&str>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
        http::Response<Option<Vec<u8>>>,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("ws://app.test{path}")
        .into_client_request()
        .unwrap();
    if let Some(protocols) = protocols {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
    }
    tokio_tungstenite::client_async(request, stream).await
}

/// The close code and reason the server ends an accepted WebSocket with.
async fn closed_with(
    mut socket: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> (u16, String) {
    let next = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("closed within 5 s");
    match next {
        Some(Ok(Message::Close(Some(frame)))) => (u16::from(frame.code), frame.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_close_with_4001_and_4003_and_tenants_come_from_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("hs.secret"), "websocket-shared-secret").unwrap();
    let backend = Upstream::start("ws").await;
    let yaml = format!(
        "tls: off\njwt:\n  hs:\n    algorithms: [HS256]\n    secret_file: hs.secret\n{VERIFIER_TAIL}routes:\n  - path: /ws/tenant/{{id}}\n    upstream: {url}\n    auth:\n      jwt: hs\n      sources: [query, websocket_protocol]\n      claims: {{tenants: \"{{id}}\"}}\n      websocket_auth_failure: close\n  - path: /ws/status\n    upstream: {url}\n    auth:\n      jwt: hs\n      sources: [query]\n",
        url = backend.url()
    );
    let server = TestServer::start(&yaml, d).await.unwrap();
    let addr = server.main;
    let token = sign(
        d,
        "HS256",
        "hs.secret",
        &claims(serde_json::json!({"tenants": ["acme"]})),
        "{}",
    );
    // The seeds' handler: close(4001, "Missing token").
    let (socket, response) = ws(addr, "/ws/tenant/acme", None).await.unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(closed_with(socket).await, (4001, "Missing token".into()));
    // close(4003, "Invalid token").
    let (socket, _) = ws(addr, "/ws/tenant/acme?token=garbage", None)
        .await
        .unwrap();
    assert_eq!(closed_with(socket).await, (4003, "Invalid token".into()));
    let expired = sign(
        d,
        "HS256",
        "hs.secret",
        &claims(serde_json::json!({"tenants": ["acme"], "exp": now() - 3600})),
        "{}",
    );
    let (socket, _) = ws(addr, &format!("/ws/tenant/acme?token={expired}"), None)
        .await
        .unwrap();
    assert_eq!(closed_with(socket).await.0, 4003);
    // Another tenant than the token's: forbidden.
    let (socket, _) = ws(addr, &format!("/ws/tenant/globex?token={token}"), None)
        .await
        .unwrap();
    assert_eq!(closed_with(socket).await, (4003, "Forbidden".into()));
    // The browser's subprotocol trick: refused, and the answer selects `bearer` only.
    let (socket, response) = ws(addr, "/ws/tenant/acme", Some("bearer, not-a-token"))
        .await
        .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "bearer");
    assert_eq!(closed_with(socket).await.0, 4003);
    // The tenant's own token reaches the backend's echo.
    let (mut socket, response) = ws(addr, &format!("/ws/tenant/acme?token={token}"), None)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    socket.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("hello")
    );
    socket.close(None).await.unwrap();
    // The subprotocol trick passing: the backend selects none, the edge answers `bearer`.
    let offer = format!("bearer, {token}");
    let (mut socket, response) = ws(addr, "/ws/tenant/acme", Some(&offer)).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "bearer");
    socket.send(Message::text("sub")).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::text("sub"));
    socket.close(None).await.unwrap();
    // Status mode: the upgrade gets a 401.
    match ws(addr, "/ws/status", None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    let text = metrics(&server).await;
    assert!(
        text.contains(
            r#"tlsgate_websocket_upgrades_total{route="*/ws/tenant/{id}",result="unauthorized"} 5"#
        ),
        "{text}"
    );
    let (mut socket, _) = ws(addr, &format!("/ws/status?token={token}"), None)
        .await
        .unwrap();
    socket.send(Message::text("hi")).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::text("hi"));
    server.stop().await;
}

/// A JWKS server on 127.0.0.1:0 whose document the test swaps; counts fetches.
struct JwksServer {
    addr: SocketAddr,
    document: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: &[String]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let document = Arc::new(Mutex::new(String::new()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let server = Self {
            addr,
            document: document.clone(),
            fetches: fetches.clone(),
        };
        server.set(keys);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (document, fetches) = (document.clone(), fetches.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let body = document.lock().unwrap().clone();
                        async move {
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        server
    }

    fn set(&self, keys: &[String]) {
        *self.document.lock().unwrap() = format!("{{\"keys\": [{}]}}", keys.join(","));
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_fetches_a_new_kid_once_and_keys_stay_with_their_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["a1", "a2", "b1"] {
        openssl_key(d, name, RSA);
    }
    let jwk = |name: &str, kid: &str| {
        python(
            d,
            &["jwk", d.join(format!("{name}.pub")).to_str().unwrap(), kid],
        )
    };
    let jwks_a = JwksServer::start(&[jwk("a1", "k1")]).await;
    let jwks_b = JwksServer::start(&[jwk("b1", "k1")]).await;
    let backend = Upstream::start("app").await;
    let closed = free_port();
    let yaml = format!(
        "tls: off\njwt:\n  a:\n    algorithms: [RS256]\n    jwks_url: {}\n    issuer: https://a.test\n  b:\n    algorithms: [RS256]\n    jwks_url: {}\n    issuer: https://b.test\n  down:\n    algorithms: [RS256]\n    jwks_url: http://127.0.0.1:{closed}/jwks\nroutes:\n  - path: /a\n    upstream: {url}\n    auth: {{jwt: a}}\n  - path: /b\n    upstream: {url}\n    auth: {{jwt: b}}\n  - path: /down\n    upstream: {url}\n    auth: {{jwt: down}}\n",
        jwks_a.url(),
        jwks_b.url(),
        url = backend.url()
    );
    let server = TestServer::start(&yaml, d).await.unwrap();
    let addr = server.main;
    let token = |key: &str, kid: &str, iss: &str| {
        let claims = serde_json::json!({"sub": "s", "iss": iss, "exp": now() + 600}).to_string();
        sign(
            d,
            "RS256",
            &format!("{key}.key"),
            &claims,
            &format!("{{\"kid\": \"{kid}\"}}"),
        )
    };
    let status = |token: String, path: &'static str| async move {
        get(addr, path, &[("authorization", &bearer(&token))])
            .await
            .status
            .as_u16()
    };
    assert_eq!(status(token("a1", "k1", "https://a.test"), "/a").await, 200);
    assert_eq!(status(token("b1", "k1", "https://b.test"), "/b").await, 200);
    // Same kid, other issuer's key: never crosses over.
    assert_eq!(status(token("b1", "k1", "https://b.test"), "/a").await, 401);
    assert_eq!(status(token("a1", "k1", "https://a.test"), "/b").await, 401);
    assert_eq!(
        status(token("b1", "k1", "https://a.test"), "/a").await,
        401,
        "B's key claiming issuer A"
    );
    // Rotation: a new kid is fetched once, then served from the cache.
    let before = jwks_a.fetches.load(Ordering::SeqCst);
    jwks_a.set(&[jwk("a1", "k1"), jwk("a2", "k2")]);
    assert_eq!(status(token("a2", "k2", "https://a.test"), "/a").await, 200);
    assert_eq!(status(token("a2", "k2", "https://a.test"), "/a").await, 200);
    assert_eq!(
        jwks_a.fetches.load(Ordering::SeqCst),
        before + 1,
        "one fetch for the new kid"
    );
    // Unknown kids right after: no more fetches (at most one per 10 s).
    for _ in 0..3 {
        assert_eq!(status(token("a2", "k9", "https://a.test"), "/a").await, 401);
    }
    assert_eq!(
        jwks_a.fetches.load(Ordering::SeqCst),
        before + 1,
        "refetch is rate limited"
    );
    // A JWKS that cannot be fetched: refused, the gateway keeps serving.
    assert_eq!(
        status(token("a1", "k1", "https://a.test"), "/down").await,
        401
    );
    assert_eq!(status(token("a1", "k1", "https://a.test"), "/a").await, 200);
    server.stop().await;
}

/// An auth service: `Bearer good` passes with `X-User: alice`, a `/slow` URI answers after
/// 3 s, anything else is a 401 with its own challenge.
async fn auth_service() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let hits = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_owned()
                            };
                            if header("x-forwarded-uri").contains("slow") {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                            }
                            let ok = header("authorization") == "Bearer good"
                                && header("x-forwarded-method") == "GET"
                                && header("x-forwarded-host") == "app.test"
                                && header("x-forwarded-uri").starts_with("/fa");
                            let response = if ok {
                                hyper::Response::builder()
                                    .header("x-user", "alice")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap()
                            } else {
                                hyper::Response::builder()
                                    .status(401)
                                    .header("www-authenticate", "Basic realm=\"auth\"")
                                    .body(Full::new(Bytes::from_static(b"nope")))
                                    .unwrap()
                            };
                            Ok::<_, Infallible>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    let _ = TokioExecutor::new();
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_passes_denies_times_out_and_caches() {
    let dir = tempfile::tempdir().unwrap();
    let (auth, hits) = auth_service().await;
    let backend = Upstream::start("app").await;
    let closed = free_port();
    let yaml = format!(
        "tls: off\nforward_auth:\n  svc:\n    url: http://{auth}/verify\n    response_headers: [X-User]\n    timeout: 1s\n    cache: 30s\n  down:\n    url: http://127.0.0.1:{closed}/verify\nroutes:\n  - path: /fa\n    upstream: {url}\n    forward_auth: svc\n  - path: /gone\n    upstream: {url}\n    forward_auth: down\n",
        url = backend.url()
    );
    let server = TestServer::start(&yaml, dir.path()).await.unwrap();
    let addr = server.main;
    let good = [("authorization", "Bearer good"), ("x-user", "mallory")];
    let response = get(addr, "/fa/x", &good).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        upstream_header(&response, "x-user").as_deref(),
        Some("alice")
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Cached for this credential and request.
    let response = get(addr, "/fa/x", &good).await;
    assert_eq!(response.status, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "answered from the cache");
    // Refused: the service's answer is the client's.
    let response = get(addr, "/fa/x", &[("authorization", "Bearer bad")]).await;
    assert_eq!(response.status, 401);
    assert_eq!(response.body, "nope");
    assert_eq!(response.headers["www-authenticate"], "Basic realm=\"auth\"");
    // Too slow: 504, never a pass.
    let response = get(addr, "/fa/slow", &good).await;
    assert_eq!(response.status, 504);
    // Unreachable: 502.
    let response = get(addr, "/gone", &good).await;
    assert_eq!(response.status, 502);
    let text = metrics(&server).await;
    assert!(
        text.contains("tlsgate_auth_results_total{route=\"*/fa\",result=\"denied\"} 1"),
        "{text}"
    );
    server.stop().await;
}

/// What Python's `websockets` client (a second, independent client) sees on `url`: the close
/// code and reason, or `open` and the echo of a message.
async fn python_ws(url: &str, subprotocols: &[&str]) -> String {
    let script = r#"
import asyncio, sys, json, websockets
async def main(url, protocols):
    try:
        async with websockets.connect(url, subprotocols=protocols or None, open_timeout=5) as ws:
            await ws.send("ping-from-python")
            print("open", await asyncio.wait_for(ws.recv(), 5), ws.subprotocol)
    except websockets.ConnectionClosed as closed:
        print("closed", closed.rcvd.code, closed.rcvd.reason)
asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
"#;
    let out = tokio::process::Command::new("python3")
        .args([
            "-c",
            script,
            url,
            &serde_json::to_string(subprotocols).unwrap(),
        ])
        .output()
        .await
        .expect("python3 with websockets (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_mode_over_http2_extended_connect_and_for_a_python_client() {
    use tlsgate::certs::KeyAlgorithm;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("hs.secret"), "h2-shared-secret").unwrap();
    let backend = Upstream::start("ws").await;
    let ca = fixture_ca(d);
    fixture_cert(&ca, d, "site", &["app.test"], KeyAlgorithm::EcdsaP256);
    let route = "    auth:\n      jwt: hs\n      sources: [query, websocket_protocol]\n      websocket_auth_failure: close\n";
    let verifier = format!(
        "jwt:\n  hs:\n    algorithms: [HS256]\n    secret_file: hs.secret\n{VERIFIER_TAIL}"
    );
    let yaml = format!(
        "tls:\n  certificates:\n    - pem_file: site.pem\n{verifier}routes:\n  - path: /ws\n    upstream: {}\n{route}",
        backend.url()
    );
    let server = TestServer::start(&yaml, d).await.unwrap();
    let config = client_config(
        std::slice::from_ref(&ca.cert_der),
        rustls::ALL_VERSIONS,
        &[b"h2"],
    );
    let stream = tls_connect(server.main, "app.test", config).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, TestBody>(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("https://app.test/ws")
        .header("sec-websocket-version", "13")
        .body(body_of(""))
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200, "accepted, to be closed");
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    match tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 4001);
            assert_eq!(frame.reason.as_str(), "Missing token");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    server.stop().await;

    // The same route on plain ws:// for Python's client.
    let plain = format!(
        "tls: off\n{verifier}routes:\n  - path: /ws\n    upstream: {}\n{route}",
        backend.url()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hs.secret"), "h2-shared-secret").unwrap();
    let server = TestServer::start(&plain, dir.path()).await.unwrap();
    let base = format!("ws://{}/ws", server.main);
    assert_eq!(python_ws(&base, &[]).await, "closed 4001 Missing token");
    assert_eq!(
        python_ws(&format!("{base}?token=x.y.z"), &[]).await,
        "closed 4003 Invalid token"
    );
    let token = sign(
        d,
        "HS256",
        "hs.secret",
        &claims(serde_json::json!({})),
        "{}",
    );
    assert_eq!(
        python_ws(&base, &["bearer", &token]).await,
        "open ping-from-python bearer",
        "the browser convention, and only `bearer` selected"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_fetched_keys_of_an_unchanged_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl_key(d, "a1", RSA);
    let jwk = python(d, &["jwk", d.join("a1.pub").to_str().unwrap(), "k1"]);
    let jwks = JwksServer::start(std::slice::from_ref(&jwk)).await;
    let backend = Upstream::start("app").await;
    let verifier = format!(
        "tls: off\njwt:\n  a:\n    algorithms: [RS256]\n    jwks_url: {}\n    issuer: https://a.test\n",
        jwks.url()
    );
    let routes = |extra: &str| {
        format!(
            "routes:\n  - path: /a\n    upstream: {}\n    auth: {{jwt: a}}\n{extra}",
            backend.url()
        )
    };
    let server = TestServer::start(&format!("{verifier}{}", routes("")), d)
        .await
        .unwrap();
    let claims = serde_json::json!({"iss": "https://a.test", "exp": now() + 600}).to_string();
    let token = sign(d, "RS256", "a1.key", &claims, r#"{"kid": "k1"}"#);
    let status = || async {
        get(server.main, "/a", &[("authorization", &bearer(&token))])
            .await
            .status
            .as_u16()
    };
    assert_eq!(status().await, 200);
    // The identity provider goes away; a reload that leaves the verifier alone keeps its keys.
    jwks.set(&[]);
    *jwks.document.lock().unwrap() = "not json".into();
    let more = format!("  - path: /other\n    upstream: {}\n", backend.url());
    std::fs::write(
        d.join("tlsgate.yaml"),
        format!("{verifier}{}", routes(&more)),
    )
    .unwrap();
    assert_eq!(server.post_reload().await.status, 200);
    assert_eq!(
        status().await,
        200,
        "the verifier and its keys survived the reload"
    );
    // A changed verifier starts afresh, and without its provider refuses.
    let changed = verifier.replace(
        "issuer: https://a.test",
        "issuer: https://a.test\n    leeway: 30s",
    );
    std::fs::write(d.join("tlsgate.yaml"), format!("{changed}{}", routes(""))).unwrap();
    assert_eq!(server.post_reload().await.status, 200);
    assert_eq!(status().await, 401);
    server.stop().await;
}
