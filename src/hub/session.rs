//! One hub session: the task that owns a subscriber's WebSocket from its `101` to its close.
//!
//! An idle session waits on three things only: its handle's wake, the client's next frame,
//! and one timer. The wake carries, in order of precedence: shutdown (queued messages are
//! flushed, then `1001`), a kick (`4429` for a queue past its bound, or the publish API's
//! disconnect), the endpoint's removal by a reload (`1001` after a random part of
//! `reload_grace`), and its outbox. The timer is whichever comes first of the next ping, the
//! pong deadline, the token's expiry (`4003`) and the first-message authentication deadline
//! (`4001`). Everything else (requests, flushing, closing) runs boxed, so the future an idle
//! session holds is a few hundred bytes beyond the session itself.
//!
//! Publications are written from the shared [`Publication`](super::Publication) bytes; a
//! recovered subscription skips live copies of what the recovery already sent.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::claims::{claim_text, expiry, fill, glob, satisfied};
use super::endpoint::{Endpoint, Start, MAX_SUBSCRIPTIONS};
use super::protocol::{self, into_map, Command, Refusal};
use super::registry::{Kick, Outgoing, SessionHandle, Signal};
use super::wire::{Message, Wire, WireError};
use super::Recovery;
use crate::config::hub::{namespace_of, valid_channel};
use crate::metrics::{ReasonLabels, ResultLabels};
use crate::policy::jwt::Claims;
use crate::tls::established::EstablishedTls;
use crate::tls::TlsConnectionIo;

/// How long a closing session waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Any stream a session can run on but the usual one.
trait OtherIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> OtherIo for T {}

/// Starts the session on the upgraded connection, as a task of its own that holds the
/// connection's `slot` until the session ends, and nothing of the upgrade. A TLS 1.3
/// connection (the usual case) is taken over by [`EstablishedTls`], which keeps its keys
/// unexpanded while the session waits; TLS 1.2 stays on rustls' stream, boxed with any other.
pub async fn run(
    endpoint: Arc<Endpoint>,
    start: Start,
    upgraded: Upgraded,
    slot: Option<crate::http::context::ConnectionSlot>,
) {
    let max_message = endpoint.settings.max_message_size;
    let tasks = endpoint.hub.tasks.clone();
    let (io, early): (Box<dyn OtherIo>, Vec<u8>) = match upgraded.downcast::<TlsConnectionIo>() {
        Ok(parts) => {
            // Copied out and dropped now: hyper's read buffer behind these bytes would
            // otherwise stay allocated for the session's whole life.
            let early = parts.read_buf.to_vec();
            drop(parts.read_buf);
            let stream = parts.io.into_inner().into_inner();
            match stream.into_established() {
                Ok(Ok(established)) => {
                    let wire = Wire::new(established, early, max_message);
                    let session = Session::<EstablishedTls>::new(endpoint, wire);
                    tasks.spawn(session.serve(Box::new(start), slot));
                    return;
                }
                Ok(Err(error)) => {
                    // Not expected once the checks of `into_established` passed.
                    tracing::warn!(%error, "hub session dropped: rustls refused the TLS hand-off");
                    return;
                }
                Err(stream) => (stream, early),
            }
        }
        Err(upgraded) => (Box::new(TokioIo::new(upgraded)), Vec::new()),
    };
    let session = Session::new(endpoint, Wire::new(io, early, max_message));
    tasks.spawn(session.serve(Box::new(start), slot));
}

/// What woke an idle session.
enum Event {
    /// Its handle: something queued, a kick, a signal.
    Woken,
    Message(Option<Result<Message, WireError>>),
    Timer,
}

/// How a session ends.
#[derive(Debug)]
enum Ending {
    /// Send this close frame.
    Close(u16, Cow<'static, str>, &'static str),
    /// The client closed, or the socket is gone: nothing more to send.
    Gone(&'static str),
}

impl Ending {
    fn close(code: u16, reason: &'static str, metric: &'static str) -> Self {
        Ending::Close(code, Cow::Borrowed(reason), metric)
    }

    fn metric(&self) -> &'static str {
        match self {
            Ending::Close(_, _, metric) | Ending::Gone(metric) => metric,
        }
    }
}

struct Subscription {
    channel: Arc<str>,
    /// Live copies at or below this offset were sent by the recovery.
    recovered_up_to: u64,
    /// The namespace's `hub_subscriptions` gauge.
    gauge: Gauge,
}

/// A session's channels, sorted by name: most sessions hold one or a few, for which a
/// sorted list costs a fraction of a hash table.
#[derive(Default)]
struct Subscriptions(Vec<Subscription>);

impl Subscriptions {
    fn find(&self, channel: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|s| (*s.channel).cmp(channel))
    }

    fn get(&self, channel: &str) -> Option<&Subscription> {
        self.find(channel).ok().map(|i| &self.0[i])
    }

    fn get_mut(&mut self, channel: &str) -> Option<&mut Subscription> {
        self.find(channel).ok().map(|i| &mut self.0[i])
    }

    fn contains_key(&self, channel: &str) -> bool {
        self.find(channel).is_ok()
    }

    fn insert(&mut self, subscription: Subscription) {
        if self.0.is_empty() {
            // Room for one: most sessions never hold more (Vec's first growth is four).
            self.0.reserve_exact(1);
        }
        if let Err(at) = self.find(&subscription.channel) {
            self.0.insert(at, subscription);
        }
    }

    fn remove(&mut self, channel: &str) -> Option<Subscription> {
        self.find(channel).ok().map(|i| self.0.remove(i))
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn channels(&self) -> Vec<Arc<str>> {
        self.0.iter().map(|s| s.channel.clone()).collect()
    }
}

pub(super) struct Session<S> {
    socket: Wire<S>,
    /// Its endpoint, and through it the hub.
    endpoint: Arc<Endpoint>,
    handle: Arc<SessionHandle>,
    claims: Option<Claims>,
    parameters: Vec<(String, String)>,
    subscriptions: Subscriptions,
    expires: Option<Instant>,
    auth_deadline: Option<Instant>,
    next_ping: Instant,
    pong_due: Option<Instant>,
    /// Boxed: most endpoints forward no JSON-RPC.
    rpc: Option<Box<super::rpc::Budgets>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) fn new(endpoint: Arc<Endpoint>, socket: Wire<S>) -> Self {
        let config = endpoint.hub.config();
        let handle = Arc::new(SessionHandle::new(
            endpoint.hub.next_session_id(),
            endpoint.settings.envelope,
            config.settings.queue,
            endpoint.closer.clone(),
        ));
        let rpc = endpoint.rpc.as_ref().map(|rpc| Box::new(rpc.budgets()));
        Self {
            socket,
            next_ping: Instant::now() + config.settings.ping_interval,
            endpoint,
            handle,
            claims: None,
            parameters: Vec::new(),
            subscriptions: Subscriptions::default(),
            expires: None,
            auth_deadline: None,
            pong_due: None,
            rpc,
        }
    }

    /// The session's task, holding `slot` (the connection's place under the caps) until
    /// the end. A plain function around an `async move` block: an `async fn` would store
    /// its by-value arguments twice (the arguments, and the locals they move into), which
    /// for the session itself is a few hundred bytes more in every idle task (944 → 664 B
    /// on the size test's stream).
    #[allow(clippy::manual_async_fn)]
    pub(super) fn serve(
        mut self,
        start: Box<Start>,
        slot: Option<crate::http::context::ConnectionSlot>,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let gauge = self
                .endpoint
                .hub
                .metrics
                .hub
                .connections
                .get_or_create(&self.endpoint.label)
                .clone();
            gauge.inc();
            self.endpoint.hub.registry.register(&self.handle);
            // Registered before these looks: a signal sent meanwhile was sent to this session.
            if self.endpoint.hub.shutdown.is_cancelled() {
                self.handle.signal(Signal::Shutdown);
            }
            if self.endpoint.closer.is_cancelled() {
                self.handle.signal(Signal::Removed);
            }
            let client = start.client;
            // The rare paths (start, client requests, the close) are boxed: an idle session's
            // future then holds only the wait itself.
            let ending = match Box::pin(self.begin(start)).await {
                Ok(()) => self.run().await,
                Err(ending) => ending,
            };
            tracing::debug!(endpoint = %self.endpoint.settings.route.path, %client, session = self.handle.id, reason = ending.metric(), "hub session ended");
            Box::pin(self.finish(ending)).await;
            gauge.dec();
            drop(slot);
        }
    }

    /// The endpoint's requirement, its server-side subscriptions and the `?channels=` ones.
    async fn begin(&mut self, start: Box<Start>) -> Result<(), Ending> {
        let start = *start;
        self.parameters = start.parameters;
        match start.claims {
            Some(claims) => self.authenticated(claims).await?,
            None if self.endpoint.auth_required => {
                self.auth_deadline =
                    Some(Instant::now() + self.endpoint.hub.config().settings.auth_timeout);
            }
            None => self.server_subscriptions().await?,
        }
        for channel in start.channels {
            let since = start.since.get(&channel).cloned();
            let announce = since.is_some();
            self.subscribe(&channel, since, None, true, announce)
                .await?;
        }
        Ok(())
    }

    /// Takes verified claims: the endpoint's requirement (else `4003`), the expiry timer,
    /// the user, the server-side subscriptions.
    async fn authenticated(&mut self, claims: Claims) -> Result<(), Ending> {
        let requirements = &self.endpoint.settings.require;
        if !requirements
            .iter()
            .all(|rule| satisfied(rule, Some(&claims), &self.parameters))
        {
            return Err(Ending::close(4003, "forbidden", "forbidden"));
        }
        self.expires = expiry(&claims);
        if let Some(sub) = claims.get("sub").and_then(claim_text) {
            self.handle.set_user(Arc::from(sub));
        }
        self.claims = Some(claims);
        self.auth_deadline = None;
        self.server_subscriptions().await
    }

    async fn server_subscriptions(&mut self) -> Result<(), Ending> {
        let templates = self.endpoint.settings.subscribe.clone();
        for template in &templates {
            let Some(channel) = fill(template, self.claims.as_deref(), &self.parameters) else {
                continue;
            };
            self.subscribe(&channel, None, None, false, false).await?;
        }
        Ok(())
    }

    async fn run(&mut self) -> Ending {
        // One timer, moved rather than made again, and one small wait on the wake, the
        // socket and the timer: this is what an idle session's future holds.
        let handle = self.handle.clone();
        let timer = tokio::time::sleep_until(self.deadline(None));
        tokio::pin!(timer);
        let mut removal: Option<Instant> = None;
        loop {
            let deadline = self.deadline(removal);
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            let event = std::future::poll_fn(|cx| {
                if handle.poll_woken(cx).is_ready() {
                    return Poll::Ready(Event::Woken);
                }
                // The timer before the socket: a client that keeps its socket readable must
                // not hold off its deadlines (auth, expiry, pong, removal).
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Timer);
                }
                if let Poll::Ready(message) = self.socket.poll_next(cx) {
                    return Poll::Ready(Event::Message(message));
                }
                Poll::Pending
            })
            .await;
            let outcome = match event {
                Event::Woken if handle.signalled(Signal::Shutdown) => {
                    // What was published before the shutdown still goes out.
                    let _ = Box::pin(tokio::time::timeout(CLOSE_WAIT, self.flush_outbox())).await;
                    return Ending::close(1001, "server shutting down", "shutdown");
                }
                Event::Woken => {
                    if let Some(kick) = handle.kicked() {
                        return kick_ending(kick);
                    }
                    if handle.signalled(Signal::Removed) && removal.is_none() {
                        removal = Some(Instant::now() + random_part(self.endpoint.grace));
                    }
                    // Boxed like the rare paths: its timer and loop would otherwise sit in
                    // every idle session's future.
                    Box::pin(self.flush_bounded()).await
                }
                Event::Message(None) => Err(Ending::Gone("client_closed")),
                Event::Message(Some(Ok(message))) => Box::pin(self.on_message(message)).await,
                Event::Message(Some(Err(error))) => Err(read_error(error)),
                Event::Timer => Box::pin(self.on_timer(removal)).await,
            };
            if let Err(ending) = outcome {
                return ending;
            }
        }
    }

    fn deadline(&self, removal: Option<Instant>) -> Instant {
        [
            Some(self.next_ping),
            self.pong_due,
            self.expires,
            self.auth_deadline,
            removal,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.next_ping)
    }

    async fn on_timer(&mut self, removal: Option<Instant>) -> Result<(), Ending> {
        let now = Instant::now();
        if removal.is_some_and(|at| at <= now) {
            return Err(Ending::close(1001, "endpoint removed", "endpoint_removed"));
        }
        if self.auth_deadline.is_some_and(|at| at <= now) {
            return Err(Ending::close(4001, "no token", "auth_timeout"));
        }
        if self.expires.is_some_and(|at| at <= now) {
            return Err(Ending::close(4003, "token expired", "token_expired"));
        }
        if self.pong_due.is_some_and(|at| at <= now) {
            return Err(Ending::close(1001, "no pong", "ping_timeout"));
        }
        if self.next_ping <= now {
            let config = self.endpoint.hub.config();
            self.next_ping = now + config.settings.ping_interval;
            if self.pong_due.is_none() {
                self.pong_due = Some(now + config.settings.pong_timeout);
            }
            drop(config);
            self.socket.queue_ping();
            self.written().await?;
        }
        Ok(())
    }

    /// Writes the outbox within `send_timeout`, unless a kick comes first.
    async fn flush_bounded(&mut self) -> Result<(), Ending> {
        let limit = self.endpoint.hub.config().send_timeout;
        let handle = self.handle.clone();
        bounded(&handle, limit, self.flush_outbox()).await
    }

    async fn flush_outbox(&mut self) -> std::io::Result<()> {
        let items = self.handle.take();
        if items.is_empty() {
            return Ok(());
        }
        let hub = self.endpoint.hub.clone();
        let latency = &hub.metrics.hub.delivery_latency;
        for item in items {
            match item {
                Outgoing::Publication(publication) => {
                    let Some(subscription) = self.subscriptions.get(&publication.channel) else {
                        continue;
                    };
                    if publication.offset <= subscription.recovered_up_to {
                        continue;
                    }
                    let frame = publication.frame(self.handle.envelope);
                    self.socket.queue_text(frame.as_str());
                    latency.observe(publication.accepted.elapsed().as_secs_f64());
                }
                Outgoing::Text(text) => self.socket.queue_text(text.as_str()),
                Outgoing::Unsubscribed(channel) => {
                    if self.drop_subscription(&channel) {
                        let text = json!({"type": "unsubscribed", "channel": &*channel});
                        self.socket.queue_text(&text.to_string());
                    }
                }
            }
        }
        self.socket.flush().await
    }

    async fn send(&mut self, text: String) -> Result<(), Ending> {
        self.socket.queue_text(&text);
        self.written().await
    }

    /// Writes what is queued (a reply, a pong, a ping) as the outbox is written: within
    /// `send_timeout`, unless a kick comes first.
    async fn written(&mut self) -> Result<(), Ending> {
        let limit = self.endpoint.hub.config().send_timeout;
        let handle = self.handle.clone();
        bounded(&handle, limit, self.socket.flush()).await
    }

    async fn on_message(&mut self, message: Message) -> Result<(), Ending> {
        match message {
            Message::Text(text) if self.endpoint.settings.echo => {
                self.socket.queue_text(text.as_str());
                self.written().await
            }
            Message::Binary(data) if self.endpoint.settings.echo => {
                self.socket.queue_binary(&data);
                self.written().await
            }
            Message::Text(text) => self.on_text(text).await,
            Message::Binary(_) => Err(Ending::close(
                1008,
                "binary messages are not accepted",
                "protocol",
            )),
            Message::Pong => {
                self.pong_due = None;
                Ok(())
            }
            // The wire queued the pong.
            Message::Ping => self.written().await,
            // The wire queued the close reply; `finish` sends it and closes the stream.
            Message::Close => Err(Ending::Gone("client_closed")),
        }
    }

    async fn on_text(&mut self, text: Utf8Bytes) -> Result<(), Ending> {
        let request = match protocol::parse(text.as_str()) {
            Ok(request) => request,
            Err(refusal) => return self.send(refusal.to_text()).await,
        };
        let id = request.id;
        let unauthenticated = self.endpoint.auth_required && self.claims.is_none();
        match request.command {
            Command::Ping => {
                let reply = protocol::reply(id.as_ref(), into_map(json!({"type": "pong"})));
                self.send(reply).await
            }
            Command::Auth { token } => self.on_auth(token, id).await,
            Command::Rpc(call) => self.on_rpc(call, text, id).await,
            _ if unauthenticated => {
                let refusal = Refusal::new(
                    id,
                    "unauthenticated",
                    "send {\"action\":\"auth\",\"token\":…} first",
                );
                self.send(refusal.to_text()).await
            }
            Command::Subscribe { channels, since } => {
                for channel in channels {
                    self.subscribe(&channel, since.clone(), id.as_ref(), true, true)
                        .await?;
                }
                Ok(())
            }
            Command::Unsubscribe { channels } => {
                for channel in channels {
                    self.drop_subscription(&channel);
                    let reply = protocol::reply(
                        id.as_ref(),
                        into_map(json!({"type": "unsubscribed", "channel": channel})),
                    );
                    self.send(reply).await?;
                }
                Ok(())
            }
            Command::Refresh { token } => self.on_refresh(token, id).await,
            Command::Presence { channel } => self.on_presence(channel, id).await,
            Command::Publish { channel, data } => self.on_publish(channel, data, id).await,
        }
    }

    /// Subscribes to `channel`. `client`: asked by the client (the namespace's policy
    /// applies; server-side subscriptions from the endpoint need none). `announce`: reply
    /// with `subscribed` (a subscribe action, or a query subscription asking to recover).
    async fn subscribe(
        &mut self,
        channel: &str,
        since: Option<(String, u64)>,
        id: Option<&Value>,
        client: bool,
        announce: bool,
    ) -> Result<(), Ending> {
        if let Err(refusal) = self.may_subscribe(channel, client, id) {
            return self.send(refusal.to_text()).await;
        }
        let config = self.endpoint.hub.config();
        let label = config.label(channel);
        let (namespace, _) = config.namespace(channel);
        let join_leave = namespace.join_leave;
        drop(config);
        let name = match self.subscriptions.get(channel) {
            Some(existing) => existing.channel.clone(),
            None => {
                let (name, _) = self.endpoint.hub.registry.subscribe(channel, &self.handle);
                let gauge = self
                    .endpoint
                    .hub
                    .metrics
                    .hub
                    .subscriptions
                    .get_or_create(&label)
                    .clone();
                gauge.inc();
                self.subscriptions.insert(Subscription {
                    channel: name.clone(),
                    recovered_up_to: 0,
                    gauge,
                });
                if join_leave {
                    self.presence_event("join", channel);
                }
                name
            }
        };
        let history = self.endpoint.hub.history().clone();
        let mut reply = into_map(json!({"type": "subscribed", "channel": channel}));
        let mut recovered = Vec::new();
        match since {
            Some((epoch, offset)) => {
                let outcome = history.since(channel, &epoch, offset).await;
                let (result, position) = match outcome {
                    Recovery::Recovered(entries, position) => {
                        recovered = entries;
                        ("recovered", position)
                    }
                    Recovery::Lost(position) => ("lost", position),
                };
                self.endpoint
                    .hub
                    .metrics
                    .hub
                    .recoveries
                    .get_or_create(&ResultLabels {
                        result: result.into(),
                    })
                    .inc();
                if let Some(subscription) = self.subscriptions.get_mut(channel) {
                    subscription.recovered_up_to = position.offset;
                }
                reply.insert("recovered".into(), Value::Bool(result == "recovered"));
                reply.insert("epoch".into(), Value::from(&*position.epoch));
                reply.insert("offset".into(), Value::from(position.offset));
                if !announce {
                    return self.send_recovered(&name, &position.epoch, recovered).await;
                }
                self.send(protocol::reply(id, reply)).await?;
                let epoch = position.epoch.clone();
                self.send_recovered(&name, &epoch, recovered).await
            }
            None if announce => {
                let position = history.top(channel).await;
                reply.insert("epoch".into(), Value::from(&*position.epoch));
                reply.insert("offset".into(), Value::from(position.offset));
                self.send(protocol::reply(id, reply)).await
            }
            None => Ok(()),
        }
    }

    async fn send_recovered(
        &mut self,
        channel: &Arc<str>,
        epoch: &Arc<str>,
        entries: Vec<super::history::Entry>,
    ) -> Result<(), Ending> {
        for entry in entries {
            let position = super::Position {
                epoch: epoch.clone(),
                offset: entry.offset,
            };
            let publication = super::Publication::new(channel.clone(), &position, entry.data);
            let frame = publication.frame(self.handle.envelope);
            self.socket.queue_text(frame.as_str());
        }
        self.written().await
    }

    /// Whether this session may subscribe to `channel`.
    fn may_subscribe(
        &self,
        channel: &str,
        client: bool,
        id: Option<&Value>,
    ) -> Result<(), Refusal> {
        let id = || id.cloned();
        if !valid_channel(channel) {
            return Err(Refusal::new(
                id(),
                "bad_channel",
                "channel names are 1-255 letters, digits and - _ . : @ / = ~ !",
            ));
        }
        if !self.subscriptions.contains_key(channel)
            && self.subscriptions.len() >= MAX_SUBSCRIPTIONS
        {
            return Err(Refusal::new(
                id(),
                "too_many_channels",
                format!("at most {MAX_SUBSCRIPTIONS} channels per connection"),
            ));
        }
        if !client {
            return Ok(());
        }
        self.client_may(channel, |ns| ns.client_subscribe, "subscribe to", id())
    }

    /// The namespace's policy for a client's subscription or publication.
    fn client_may(
        &self,
        channel: &str,
        allowed: impl Fn(&crate::config::hub::NamespaceSettings) -> bool,
        what: &str,
        id: Option<Value>,
    ) -> Result<(), Refusal> {
        let config = self.endpoint.hub.config();
        let (namespace, known) = config.namespace(channel);
        let ns_name = namespace_of(channel);
        if !known {
            return Err(Refusal::new(
                id,
                "unknown_namespace",
                format!("no namespace `{ns_name}` is configured"),
            ));
        }
        if !allowed(namespace) {
            return Err(Refusal::new(
                id,
                "forbidden",
                format!("clients may not {what} namespace `{ns_name}`"),
            ));
        }
        let rest = channel.split_once(':').map_or("", |(_, rest)| rest);
        let mut parameters = self.parameters.clone();
        parameters.push(("channel".into(), rest.to_owned()));
        let claims = self.claims.as_deref();
        if !namespace
            .require
            .iter()
            .all(|rule| satisfied(rule, claims, &parameters))
        {
            return Err(Refusal::new(
                id,
                "forbidden",
                "the token's claims do not allow this channel",
            ));
        }
        if let Some(claim) = &namespace.channels_claim {
            let listed = claims
                .and_then(|c| c.get(claim))
                .and_then(Value::as_array)
                .is_some_and(|patterns| {
                    patterns
                        .iter()
                        .filter_map(Value::as_str)
                        .any(|pattern| glob(pattern, channel))
                });
            if !listed {
                return Err(Refusal::new(
                    id,
                    "forbidden",
                    format!("the token's `{claim}` claim does not list this channel"),
                ));
            }
        }
        Ok(())
    }

    /// Leaves `channel`; false when not subscribed.
    fn drop_subscription(&mut self, channel: &str) -> bool {
        let Some(subscription) = self.subscriptions.remove(channel) else {
            return false;
        };
        self.endpoint
            .hub
            .registry
            .unsubscribe(channel, self.handle.id);
        subscription.gauge.dec();
        if self.endpoint.hub.config().namespace(channel).0.join_leave {
            self.presence_event("leave", channel);
        }
        true
    }

    fn presence_event(&self, kind: &str, channel: &str) {
        let user = self.handle.user().map(|u| u.to_string());
        let text = json!({"type": kind, "channel": channel, "user": user}).to_string();
        self.endpoint
            .hub
            .registry
            .deliver_text(channel, &Utf8Bytes::from(text), self.handle.id);
    }

    async fn on_auth(&mut self, token: String, id: Option<Value>) -> Result<(), Ending> {
        if self.claims.is_some() {
            let refusal = Refusal::new(
                id,
                "already_authenticated",
                "use {\"action\":\"refresh\"} to replace the token",
            );
            return self.send(refusal.to_text()).await;
        }
        let Some(verifier) = self.endpoint.verifier.clone() else {
            let refusal = Refusal::new(id, "bad_request", "this endpoint takes no token");
            return self.send(refusal.to_text()).await;
        };
        match verifier.verify(&token).await {
            Ok(claims) => {
                self.authenticated(claims.clone()).await?;
                let reply = into_map(json!({
                    "type": "authenticated",
                    "user": claims.get("sub"),
                    "expires": claims.get("exp"),
                }));
                self.send(protocol::reply(id.as_ref(), reply)).await
            }
            Err(error) => {
                // Never the token: only why it was refused.
                tracing::info!(endpoint = %self.endpoint.settings.route.path, result = error.result(), "hub authentication refused");
                Err(Ending::close(4003, "invalid token", "auth_refused"))
            }
        }
    }

    async fn on_refresh(&mut self, token: String, id: Option<Value>) -> Result<(), Ending> {
        let Some(verifier) = self.endpoint.verifier.clone() else {
            let refusal = Refusal::new(id, "bad_request", "this endpoint takes no token");
            return self.send(refusal.to_text()).await;
        };
        let refusal = match verifier.verify(&token).await {
            Ok(claims) => {
                let sub = claims.get("sub").and_then(claim_text);
                let same = self.handle.user().map(|u| u.to_string()) == sub;
                // The new token must pass what the first one passed (`tenants` for `{id}`).
                let allowed = self
                    .endpoint
                    .settings
                    .require
                    .iter()
                    .all(|rule| satisfied(rule, Some(&claims), &self.parameters));
                if same && !allowed {
                    let refusal = Refusal::new(
                        id,
                        "forbidden",
                        "the new token's claims do not meet the endpoint's requirement",
                    );
                    return self.send(refusal.to_text()).await;
                }
                if same {
                    self.expires = expiry(&claims);
                    let reply =
                        into_map(json!({"type": "refreshed", "expires": claims.get("exp")}));
                    self.claims = Some(claims);
                    return self.send(protocol::reply(id.as_ref(), reply)).await;
                }
                Refusal::new(id, "forbidden", "the new token is for another user")
            }
            Err(error) => Refusal::new(id, "invalid_token", error.to_string()),
        };
        self.send(refusal.to_text()).await
    }

    async fn on_presence(&mut self, channel: String, id: Option<Value>) -> Result<(), Ending> {
        let config = self.endpoint.hub.config();
        let on = config.namespace(&channel).0.presence;
        drop(config);
        let permitted = self.subscriptions.contains_key(channel.as_str())
            || self
                .client_may(&channel, |ns| ns.client_subscribe, "subscribe to", None)
                .is_ok();
        if !on || !permitted {
            let refusal = Refusal::new(id, "forbidden", "presence is off for this channel");
            return self.send(refusal.to_text()).await;
        }
        let presence = self.endpoint.hub.registry.presence(&channel);
        let reply = into_map(json!({
            "type": "presence",
            "channel": channel,
            "connections": presence.connections,
            "users": presence.users,
        }));
        self.send(protocol::reply(id.as_ref(), reply)).await
    }

    async fn on_publish(
        &mut self,
        channel: String,
        data: super::JsonText,
        id: Option<Value>,
    ) -> Result<(), Ending> {
        if let Err(refusal) =
            self.client_may(&channel, |ns| ns.client_publish, "publish to", id.clone())
        {
            return self.send(refusal.to_text()).await;
        }
        match self.endpoint.hub.publish(&channel, data, None).await {
            Ok(published) => {
                let reply = into_map(json!({
                    "type": "published",
                    "channel": channel,
                    "epoch": published.epoch,
                    "offset": published.offset,
                }));
                self.send(protocol::reply(id.as_ref(), reply)).await
            }
            Err(error) => {
                let refusal = Refusal::new(id, error.code(), error.to_string());
                self.send(refusal.to_text()).await
            }
        }
    }

    async fn on_rpc(
        &mut self,
        call: Map<String, Value>,
        text: Utf8Bytes,
        id: Option<Value>,
    ) -> Result<(), Ending> {
        let endpoint = self.endpoint.clone();
        let Some(forwarder) = endpoint.rpc.as_ref() else {
            let text = super::rpc::error_response(
                id.as_ref(),
                -32601,
                "this endpoint forwards no JSON-RPC",
            );
            return self.send(text).await;
        };
        // `params.auth_token` (seed 003) authenticates the connection when nothing else did.
        if self.claims.is_none() {
            let token = call
                .get("params")
                .and_then(|p| p.get("auth_token"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            match (token, self.endpoint.verifier.clone()) {
                (Some(token), Some(verifier)) => match verifier.verify(&token).await {
                    Ok(claims) => self.authenticated(claims).await?,
                    Err(error) => {
                        let text = super::rpc::error_response(
                            id.as_ref(),
                            -32001,
                            &format!("unauthorized: {error}"),
                        );
                        return self.send(text).await;
                    }
                },
                _ if self.endpoint.auth_required => {
                    let text =
                        super::rpc::error_response(id.as_ref(), -32001, "unauthorized: no token");
                    return self.send(text).await;
                }
                _ => {}
            }
        }
        let Some(budgets) = self.rpc.as_deref_mut() else {
            return Ok(());
        };
        match forwarder.call(
            &call,
            text,
            self.claims.clone(),
            budgets,
            &self.handle,
            &self.endpoint.hub,
        ) {
            Ok(()) => Ok(()),
            Err(text) => self.send(text).await,
        }
    }

    async fn finish(mut self, ending: Ending) {
        let channels = self.subscriptions.channels();
        for channel in channels {
            self.drop_subscription(&channel);
        }
        self.endpoint.hub.registry.deregister(self.handle.id);
        self.endpoint
            .hub
            .metrics
            .hub
            .disconnects
            .get_or_create(&ReasonLabels {
                reason: ending.metric().into(),
            })
            .inc();
        let polite = async {
            if let Ending::Close(code, reason, _) = &ending {
                self.socket.queue_close(*code, reason);
                if self.socket.flush().await.is_err() {
                    return;
                }
                // The client's close, then our end of the connection (RFC 6455 §7.1.1).
                self.socket.until_close().await;
            }
            if self.socket.shutdown().await.is_ok() {
                self.socket.linger().await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, polite).await;
    }
}

/// Runs `write` within `limit`, unless a kick comes first: a client that stops reading holds
/// its session no longer than `limits.send_timeout`, and never past a kick.
async fn bounded(
    handle: &SessionHandle,
    limit: Duration,
    write: impl Future<Output = std::io::Result<()>>,
) -> Result<(), Ending> {
    // A wake that is not a kick (an item queued, a signal) is given back afterwards.
    let mut woken_meanwhile = false;
    let outcome = {
        let write = tokio::time::timeout(limit, write);
        tokio::pin!(write);
        loop {
            tokio::select! {
                outcome = &mut write => break Ok(outcome),
                () = handle.woken() => {
                    if let Some(kick) = handle.kicked() {
                        break Err(kick);
                    }
                    woken_meanwhile = true;
                }
            }
        }
    };
    if woken_meanwhile {
        handle.wake();
    }
    match outcome {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(_))) => Err(Ending::Gone("write_failed")),
        Ok(Err(_)) => Err(Ending::Gone("send_timeout")),
        Err(kick) => Err(kick_ending(kick)),
    }
}

/// How a kicked session ends.
fn kick_ending(kick: Kick) -> Ending {
    match kick {
        Kick::SlowConsumer => Ending::close(4429, "too slow: outbound queue full", "slow_consumer"),
        Kick::Disconnect { code, reason } => {
            Ending::Close(code, Cow::Owned(reason), "disconnected")
        }
    }
}

fn read_error(error: WireError) -> Ending {
    match error {
        WireError::TooBig => Ending::close(1009, "message too big", "message_too_big"),
        WireError::Utf8 => Ending::close(1007, "invalid UTF-8", "protocol"),
        WireError::Protocol(why) => Ending::close(1002, why, "protocol"),
        WireError::Io(error) => {
            // A TLS record that fails to decrypt, a reset: worth a line when debugging.
            tracing::debug!(%error, "hub session read failed");
            Ending::Gone("read_failed")
        }
    }
}

/// A random part of `grace` (removal closes spread so clients do not reconnect at once).
fn random_part(grace: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    let millis = grace.as_millis() as u64;
    if millis == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(u64::from_le_bytes(bytes) % millis)
}

#[cfg(test)]
mod size_tests {
    use std::collections::HashMap;
    use std::net::IpAddr;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::hub::{EndpointSettings, HubSettings};
    use crate::config::proxy::RouteSettings;

    #[tokio::test]
    async fn an_idle_session_future_stays_small() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let hub = crate::hub::Hub::new(
            super::super::HubConfig::new(&HubSettings::default(), Duration::from_secs(5)),
            &metrics,
            &CancellationToken::new(),
            &tokio_util::task::TaskTracker::new(),
        );
        let settings = EndpointSettings {
            route: RouteSettings::placeholder("/ws"),
            subscribe: Vec::new(),
            require: Vec::new(),
            channels_param: "channels".into(),
            envelope: false,
            echo: false,
            max_message_size: 65536,
            rpc: None,
        };
        let endpoint = Arc::new(Endpoint::new(
            settings,
            hub,
            None,
            CancellationToken::new(),
            Duration::from_secs(1),
        ));
        let (server, _client) = tokio::io::duplex(64);
        let socket = Wire::new(server, Vec::new(), 65536);
        let start = Start {
            parameters: Vec::new(),
            channels: Vec::new(),
            since: HashMap::new(),
            claims: None,
            client: IpAddr::from([127, 0, 0, 1]),
        };
        let session = Session::new(endpoint, socket);
        let session_size = std::mem::size_of_val(&session);
        let future = session.serve(Box::new(start), None);
        let size = std::mem::size_of_val(&future);
        println!("session {session_size} B, its future {size} B");
        // 664 B on a debug build of stable 1.95 (the session itself is 264 B of it, on this
        // test's stream): room for the compiler, none for a second copy of the session.
        assert!(
            size < 2 * session_size + 256,
            "an idle session's future is {size} bytes"
        );
    }
}
