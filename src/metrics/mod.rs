//! Prometheus metrics: a leaf that other modules record into. An explicit registry per
//! server, so tests can scrape their own. Label values come only from configuration and fixed
//! sets (route names, upstream servers, TLS versions and suites, failure reasons), never from
//! clients, so cardinality stays bounded.

use std::sync::atomic::AtomicU64;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub version: String,
    pub cipher: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabels {
    pub issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpgradeLabels {
    pub route: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteReasonLabels {
    pub route: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub upstream: String,
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    pub certificate: String,
    pub serial: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabels {
    pub zone: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

/// The WSS hub's families. Endpoint labels are configured paths; namespace labels are
/// configured namespaces, the namespaces of endpoints' subscription templates, or `other`.
pub struct HubMetrics {
    pub connections: Family<EndpointLabels, Gauge>,
    pub subscriptions: Family<NamespaceLabels, Gauge>,
    pub publications: Family<NamespaceLabels, Counter>,
    pub deliveries: Family<NamespaceLabels, Counter>,
    /// Messages not delivered, by reason: `slow_consumer` (a queue over its bound).
    pub drops: Family<ReasonLabels, Counter>,
    /// Sessions ended by the hub or the client, by reason.
    pub disconnects: Family<ReasonLabels, Counter>,
    pub delivery_latency: Histogram,
    /// Re-subscriptions with `since`: `recovered`, `lost` (the window was gone).
    pub recoveries: Family<ResultLabels, Counter>,
    /// JSON-RPC calls: ok, error (the backend's JSON-RPC error), refused (allowlist),
    /// limited, failed (backend unreachable or not JSON-RPC).
    pub rpc_calls: Family<ResultLabels, Counter>,
}

pub struct Metrics {
    registry: Registry,
    pub hub: HubMetrics,
    /// What `upstream_server_up` reports, read at scrape time.
    upstreams: Arc<UpstreamCollector>,
    /// What `certificate_expiry_timestamp_seconds` reports, swapped whole on reload.
    certificates: Arc<CertificateCollector>,
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub handshake_failures: Family<ReasonLabels, Counter>,
    /// Refused client certificates (mTLS) by reason: no_certificate, unknown_ca, expired,
    /// revoked, bad_signature, wrong_usage, crl_expired, other.
    pub client_cert_failures: Family<ReasonLabels, Counter>,
    /// When each CRL in force expires, per issuing CA (from the configured `ca_files`).
    pub crl_next_update: Family<IssuerLabels, Gauge>,
    pub handshake_duration: Histogram,
    pub open_connections: Gauge,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram>,
    pub open_websockets: Family<RouteLabels, Gauge>,
    pub websocket_upgrades: Family<UpgradeLabels, Counter>,
    /// Authentication (JWT, forward auth) by route and result: ok, missing, invalid,
    /// expired, forbidden, denied, error.
    pub auth_results: Family<UpgradeLabels, Counter>,
    /// Proxied WebSockets closed for a message limit (`message_too_big`, `message_rate`).
    pub websocket_limit_closes: Family<RouteReasonLabels, Counter>,
    /// CORS preflights answered at the edge: `ok`, or refused for `origin`, `method`, `header`.
    pub cors_preflights: Family<UpgradeLabels, Counter>,
    pub acme_orders: Family<ResultLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub last_reload: Gauge<f64, AtomicU64>,
    /// Rate-limit zone outcomes: passed, delayed, rejected, dry_run.
    pub rate_limits: Family<ZoneLabels, Counter>,
    /// Per-IP cap and listener-list refusals by kind (never by address).
    pub per_ip_refusals: Family<KindLabels, Counter>,
    pub bans: Family<ReasonLabels, Counter>,
    pub banned_ips: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn duration_histogram() -> Histogram {
    // 0.1 ms … ~100 s.
    Histogram::new(exponential_buckets(0.0001, 2.5, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tlsgate");
        let metrics = Self {
            handshakes: Family::default(),
            handshake_failures: Family::default(),
            client_cert_failures: Family::default(),
            crl_next_update: Family::default(),
            handshake_duration: duration_histogram(),
            open_connections: Gauge::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            open_websockets: Family::default(),
            websocket_upgrades: Family::default(),
            auth_results: Family::default(),
            websocket_limit_closes: Family::default(),
            cors_preflights: Family::default(),
            acme_orders: Family::default(),
            reloads: Family::default(),
            last_reload: Gauge::default(),
            rate_limits: Family::default(),
            per_ip_refusals: Family::default(),
            bans: Family::default(),
            banned_ips: Gauge::default(),
            registry: Registry::default(),
            hub: HubMetrics {
                connections: Family::default(),
                subscriptions: Family::default(),
                publications: Family::default(),
                deliveries: Family::default(),
                drops: Family::default(),
                disconnects: Family::default(),
                // 50 µs … ~1.6 s: a fan-out is judged in milliseconds.
                delivery_latency: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
                recoveries: Family::default(),
                rpc_calls: Family::default(),
            },
            upstreams: Arc::new(UpstreamCollector::default()),
            certificates: Arc::new(CertificateCollector::default()),
        };
        registry.register_collector(Box::new(metrics.upstreams.clone()));
        registry.register_collector(Box::new(metrics.certificates.clone()));
        registry.register(
            "tls_handshakes",
            "Completed TLS handshakes by version and cipher suite",
            metrics.handshakes.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Failed TLS handshakes by reason",
            metrics.handshake_failures.clone(),
        );
        registry.register(
            "tls_client_cert_failures",
            "Client certificates (mTLS) refused in the handshake, by reason",
            metrics.client_cert_failures.clone(),
        );
        registry.register(
            "crl_next_update_timestamp_seconds",
            "nextUpdate of each client-certificate CRL in force, by issuing CA (Unix time)",
            metrics.crl_next_update.clone(),
        );
        registry.register(
            "tls_handshake_duration_seconds",
            "Time from the first byte to a completed TLS handshake",
            metrics.handshake_duration.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections currently open",
            metrics.open_connections.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route and status class",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to the response headers, by route",
            metrics.request_duration.clone(),
        );
        registry.register(
            "open_websockets",
            "WebSockets currently open, by route",
            metrics.open_websockets.clone(),
        );
        registry.register(
            "websocket_upgrades",
            "WebSocket upgrades by route and result",
            metrics.websocket_upgrades.clone(),
        );
        registry.register(
            "auth_results",
            "Authentication results (JWT, forward auth) by route and result",
            metrics.auth_results.clone(),
        );
        registry.register(
            "websocket_limit_closes",
            "Proxied WebSockets closed for a message limit, by route and reason",
            metrics.websocket_limit_closes.clone(),
        );
        registry.register(
            "cors_preflights",
            "CORS preflights answered at the edge, by route and result",
            metrics.cors_preflights.clone(),
        );
        registry.register(
            "acme_orders",
            "ACME orders by result",
            metrics.acme_orders.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration and certificate reloads by result",
            metrics.reloads.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the last reload succeeded (Unix time)",
            metrics.last_reload.clone(),
        );
        registry.register(
            "rate_limit_requests",
            "Requests seen by each rate-limit zone, by result (passed, delayed, rejected, dry_run)",
            metrics.rate_limits.clone(),
        );
        registry.register(
            "per_ip_refusals",
            "Connections and upgrades refused by a per-IP cap, a listener list or a ban, by kind",
            metrics.per_ip_refusals.clone(),
        );
        registry.register(
            "bans",
            "Addresses (prefixes) banned, by reason",
            metrics.bans.clone(),
        );
        registry.register(
            "banned_ips",
            "Addresses (prefixes) banned now",
            metrics.banned_ips.clone(),
        );
        let hub = &metrics.hub;
        registry.register(
            "hub_connections",
            "Open hub sessions by endpoint",
            hub.connections.clone(),
        );
        registry.register(
            "hub_subscriptions",
            "Channel subscriptions held by this node's sessions, by namespace",
            hub.subscriptions.clone(),
        );
        registry.register(
            "hub_publications",
            "Publications accepted, by namespace",
            hub.publications.clone(),
        );
        registry.register(
            "hub_deliveries",
            "Publications queued to subscribers, by namespace",
            hub.deliveries.clone(),
        );
        registry.register(
            "hub_dropped_messages",
            "Messages not delivered, by reason",
            hub.drops.clone(),
        );
        registry.register(
            "hub_disconnects",
            "Hub sessions ended, by reason",
            hub.disconnects.clone(),
        );
        registry.register(
            "hub_delivery_latency_seconds",
            "From a publication's acceptance to its write to a subscriber's socket",
            hub.delivery_latency.clone(),
        );
        registry.register(
            "hub_recoveries",
            "Re-subscriptions asking to recover missed publications, by result",
            hub.recoveries.clone(),
        );
        registry.register(
            "hub_rpc_calls",
            "JSON-RPC requests from hub sessions, by result",
            hub.rpc_calls.clone(),
        );
        // Results with a fixed set of values start at zero, so alert expressions such as
        // `increase(...{result="failure"}[…])` see a series before the first event.
        for result in ["success", "failure"] {
            let labels = ResultLabels {
                result: result.into(),
            };
            let _ = metrics.acme_orders.get_or_create(&labels);
            let _ = metrics.reloads.get_or_create(&labels);
        }
        Self {
            registry,
            ..metrics
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn handshake_ok(&self, version: &str, cipher: &str, seconds: f64) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                version: version.into(),
                cipher: cipher.into(),
            })
            .inc();
        self.handshake_duration.observe(seconds);
    }

    pub fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// Replaces the CRL expiry series (at start and after each reload).
    pub fn set_crl_next_updates(&self, crls: Vec<(String, i64)>) {
        self.crl_next_update.clear();
        for (issuer, at) in crls {
            self.crl_next_update
                .get_or_create(&IssuerLabels { issuer })
                .set(at);
        }
    }

    pub fn client_cert_failed(&self, reason: &'static str) {
        self.client_cert_failures
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.into(),
                status: status_class(status).into(),
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabels {
                route: route.into(),
            })
            .observe(seconds);
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        if ok {
            self.last_reload.set(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |since| since.as_secs_f64()),
            );
        }
    }

    /// Makes `upstream_server_up` report `source`'s servers from the next scrape on (a reload
    /// hands over its new set; `None` when no upstream is configured).
    pub fn set_upstreams(&self, source: Option<Arc<dyn UpstreamStates>>) {
        self.upstreams.source.store(Arc::new(source));
    }

    /// Makes `certificate_expiry_timestamp_seconds` report these certificates from the next
    /// scrape on (the ones now served).
    pub fn set_certificates(&self, certificates: Vec<CertificateExpiry>) {
        self.certificates.served.store(Arc::new(certificates));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

const STATUS_CLASSES: [&str; 9] = [
    "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx",
];

/// `2xx` for 200 and so on (hyper's status codes run from 100 to 999).
fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_index(status)]
}

fn status_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 9) - 1
}

/// One route's request series, looked up once per route and kept, rather than found by
/// label (hashing, a lock, three strings) on every request.
#[derive(Debug)]
pub struct RouteStats {
    pub name: String,
    metrics: Arc<Metrics>,
    /// Per status class, made on first use, so a class never seen exports no series.
    requests: [std::sync::OnceLock<Counter>; 9],
    duration: std::sync::OnceLock<Histogram>,
}

impl RouteStats {
    pub fn new(metrics: Arc<Metrics>, name: String) -> Self {
        Self {
            name,
            metrics,
            requests: Default::default(),
            duration: std::sync::OnceLock::new(),
        }
    }

    pub fn record(&self, status: u16, seconds: f64) {
        let index = status_index(status);
        self.requests[index]
            .get_or_init(|| {
                self.metrics.requests.get_or_create_owned(&RequestLabels {
                    route: self.name.clone(),
                    status: STATUS_CLASSES[index].into(),
                })
            })
            .inc();
        self.duration
            .get_or_init(|| {
                self.metrics
                    .request_duration
                    .get_or_create_owned(&RouteLabels {
                        route: self.name.clone(),
                    })
            })
            .observe(seconds);
    }
}

/// Counts something in a gauge for as long as this value lives (an open connection, an open
/// WebSocket).
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(gauge: Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Something that knows upstream servers and whether each is in rotation (the proxy's pools).
pub trait UpstreamStates: Send + Sync {
    /// Calls `report(upstream, server, up)` once per server.
    fn each_server(&self, report: &mut dyn FnMut(&str, &str, bool));
}

/// `upstream_server_up`, built afresh from the current upstreams on each scrape: servers a
/// reload removed disappear, and two scrapes at once never see a half-filled family.
#[derive(Default)]
struct UpstreamCollector {
    source: ArcSwap<Option<Arc<dyn UpstreamStates>>>,
}

impl std::fmt::Debug for UpstreamCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCollector").finish_non_exhaustive()
    }
}

impl Collector for UpstreamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let family = Family::<ServerLabels, Gauge>::default();
        if let Some(source) = self.source.load().as_ref() {
            source.each_server(&mut |upstream, server, up| {
                family
                    .get_or_create(&ServerLabels {
                        upstream: upstream.to_owned(),
                        server: server.to_owned(),
                    })
                    .set(i64::from(up));
            });
        }
        let metric = encoder.encode_descriptor(
            "upstream_server_up",
            "Whether an upstream server is in rotation (1) or not (0).",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

/// One served certificate, as `certificate_expiry_timestamp_seconds` labels it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateExpiry {
    /// Its first name (or its file, when it names nothing).
    pub certificate: String,
    pub serial: String,
    /// Unix time.
    pub not_after: i64,
}

/// `certificate_expiry_timestamp_seconds`, from the certificates served now: a reload swaps
/// the list whole, so a scrape never sees it half replaced.
#[derive(Debug, Default)]
struct CertificateCollector {
    served: ArcSwap<Vec<CertificateExpiry>>,
}

impl Collector for CertificateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let family = Family::<CertificateLabels, Gauge>::default();
        for certificate in self.served.load().iter() {
            family
                .get_or_create(&CertificateLabels {
                    certificate: certificate.certificate.clone(),
                    serial: certificate.serial.clone(),
                })
                .set(certificate.not_after);
        }
        let metric = encoder.encode_descriptor(
            "certificate_expiry_timestamp_seconds",
            "When each served certificate expires (Unix time).",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Servers(Vec<(&'static str, &'static str, bool)>);

    impl UpstreamStates for Servers {
        fn each_server(&self, report: &mut dyn FnMut(&str, &str, bool)) {
            for (upstream, server, up) in &self.0 {
                report(upstream, server, *up);
            }
        }
    }

    #[test]
    fn collected_families_follow_what_is_served_now() {
        let metrics = Metrics::new();
        metrics.set_upstreams(Some(Arc::new(Servers(vec![
            ("api", "http://10.0.0.1:80", true),
            ("api", "http://10.0.0.2:80", false),
        ]))));
        metrics.set_certificates(vec![CertificateExpiry {
            certificate: "example.com".into(),
            serial: "0a".into(),
            not_after: 1_900_000_000,
        }]);
        let text = metrics.encode();
        assert!(text.contains(
            r#"tlsgate_upstream_server_up{upstream="api",server="http://10.0.0.1:80"} 1"#
        ));
        assert!(text.contains(
            r#"tlsgate_upstream_server_up{upstream="api",server="http://10.0.0.2:80"} 0"#
        ));
        assert!(text.contains(
            r#"tlsgate_certificate_expiry_timestamp_seconds{certificate="example.com",serial="0a"} 1900000000"#
        ));
        // A reload's new set replaces the old whole: removed servers disappear.
        metrics.set_upstreams(Some(Arc::new(Servers(vec![(
            "web",
            "http://10.0.0.3:80",
            true,
        )]))));
        let text = metrics.encode();
        assert!(!text.contains("10.0.0.1"), "{text}");
        assert!(text.contains(r#"upstream="web""#));
        metrics.set_upstreams(None);
        assert!(!metrics.encode().contains("upstream=\""));
    }
}
