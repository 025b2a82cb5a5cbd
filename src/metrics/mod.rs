//! Prometheus metrics (an explicit registry per server, so tests can scrape their own) and the
//! admin endpoints that expose them. Label values come only from configuration and fixed sets
//! (route names, upstream servers, TLS versions and suites, failure reasons), never from
//! clients, so cardinality stays bounded.

pub mod admin;

use std::sync::atomic::AtomicU64;

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
pub struct ResultLabels {
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub handshake_failures: Family<ReasonLabels, Counter>,
    pub handshake_duration: Histogram,
    pub open_connections: Gauge,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram>,
    pub open_websockets: Family<RouteLabels, Gauge>,
    pub websocket_upgrades: Family<UpgradeLabels, Counter>,
    pub upstream_up: Family<ServerLabels, Gauge>,
    pub certificate_expiry: Family<CertificateLabels, Gauge>,
    pub acme_orders: Family<ResultLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub last_reload: Gauge<f64, AtomicU64>,
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
            handshake_duration: duration_histogram(),
            open_connections: Gauge::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            open_websockets: Family::default(),
            websocket_upgrades: Family::default(),
            upstream_up: Family::default(),
            certificate_expiry: Family::default(),
            acme_orders: Family::default(),
            reloads: Family::default(),
            last_reload: Gauge::default(),
            registry: Registry::default(),
        };
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
            "upstream_server_up",
            "Whether an upstream server is in rotation (1) or not (0)",
            metrics.upstream_up.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When each served certificate expires (Unix time)",
            metrics.certificate_expiry.clone(),
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
            self.last_reload
                .set(crate::certs::inspect::unix_now() as f64);
        }
    }

    /// Replaces the certificate expiry gauges with the certificates now served.
    pub fn set_certificates(&self, certificates: &[crate::tls::CertSummary]) {
        self.certificate_expiry.clear();
        for summary in certificates {
            let name = summary
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| summary.cert_path.display().to_string());
            self.certificate_expiry
                .get_or_create(&CertificateLabels {
                    certificate: name,
                    serial: summary.info.serial.clone(),
                })
                .set(summary.info.not_after);
        }
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

/// A handshake failure's reason, as a bounded label value.
pub fn failure_reason(error: &std::io::Error) -> &'static str {
    use rustls::{Error, PeerIncompatible};
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>());
    match tls {
        Some(Error::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon)) => {
            "no_shared_cipher"
        }
        Some(Error::PeerIncompatible(PeerIncompatible::NoKxGroupsInCommon)) => "no_shared_group",
        Some(Error::PeerIncompatible(PeerIncompatible::NoSignatureSchemesInCommon)) => {
            "no_shared_signature_scheme"
        }
        // A TLS 1.0/1.1 ClientHello has no signature_algorithms or supported_versions
        // extension: rustls reports the missing extension; the cause is the old version.
        Some(Error::PeerIncompatible(
            PeerIncompatible::SignatureAlgorithmsExtensionRequired
            | PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::ServerDoesNotSupportTls12Or13,
        )) => "protocol_version",
        Some(Error::PeerIncompatible(_)) => "incompatible_client",
        Some(Error::InvalidCertificate(_) | Error::NoCertificatesPresented) => {
            "bad_client_certificate"
        }
        Some(Error::AlertReceived(_)) => "alert_from_client",
        Some(Error::General(text)) if text.contains("certificate") => "no_certificate",
        Some(
            Error::InvalidMessage(_)
            | Error::PeerMisbehaved(_)
            | Error::InappropriateMessage { .. }
            | Error::InappropriateHandshakeMessage { .. },
        ) => "bad_client_hello",
        Some(_) => "other",
        None if error.to_string().contains("no server certificate") => "no_certificate",
        None if error
            .get_ref()
            .is_some_and(|inner| inner.is::<crate::server::PlainHttpOnTlsPort>()) =>
        {
            "plain_http"
        }
        None if error
            .get_ref()
            .is_some_and(|inner| inner.is::<crate::tls::stream::InappropriateFallback>()) =>
        {
            "inappropriate_fallback"
        }
        None => match error.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                "closed_by_client"
            }
            std::io::ErrorKind::InvalidData => "bad_client_hello",
            _ => "other",
        },
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
