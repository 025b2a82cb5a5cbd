//! Keeps every `acme:` certificate current: orders missing ones, renews inside the ARI window
//! (or with a third of the lifetime left), backs off on failure, swaps results in, runs the
//! deploy hook, and never lets two processes order the same certificate at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::client::{self};
use super::{AcmeError, ChallengeStore};
use crate::certs::inspect::{format_time, unix_now};
use crate::certs::pem::read_certificates;
use crate::certs::store::{ensure_private_dir, LivePaths};
use crate::certs::CertInfo;
use crate::config::{acme_lineage, AcmeSettings, CertSource, Settings};

pub type OnChange = Arc<dyn Fn() + Send + Sync>;

/// Whether [`AcmeManager::plan`] asks the CA for renewal information.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskCa {
    No,
    /// Only with an account already registered (read-only questions: `acme list`).
    IfRegistered,
    /// Registering an account if needed (about to order anyway).
    Register,
}

pub struct AcmeManager {
    pub settings: AcmeSettings,
    pub data_dir: PathBuf,
    /// The names of each `acme:` certificate.
    pub certificates: Vec<Vec<String>>,
    pub challenges: Arc<ChallengeStore>,
    on_change: OnChange,
    /// Counts orders by result, when running inside a server.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// When a certificate is due, and why: what `acme list` prints.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateStatus {
    pub names: Vec<String>,
    pub lineage: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// Unix time the renewal is due (now or in the past: due).
    pub due: i64,
    pub next_renewal: String,
    pub reason: String,
}

/// An exclusive lock on `acme/<lineage>.lock`, held for one order.
struct OrderLock(#[allow(dead_code)] std::fs::File);

fn lock(data_dir: &Path, lineage: &str) -> Result<OrderLock, AcmeError> {
    let dir = data_dir.join("acme");
    ensure_private_dir(&dir)?;
    let path = dir.join(format!("{lineage}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| AcmeError::Other(format!("{}: {e}", path.display())))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |_| AcmeError::Locked {
            lineage: lineage.to_owned(),
            lock: path.clone(),
        },
    )?;
    Ok(OrderLock(file))
}

fn jitter(max: Duration) -> Duration {
    let mut byte = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut byte);
    let fraction = f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX);
    max.mul_f64(fraction)
}

impl AcmeManager {
    pub fn new(
        settings: &Settings,
        challenges: Arc<ChallengeStore>,
        on_change: OnChange,
    ) -> Option<Self> {
        let acme = settings.acme.clone()?;
        let certificates = settings
            .tls
            .certificates
            .iter()
            .filter_map(|c| match &c.source {
                CertSource::Acme { acme, .. } => Some(acme.names.clone()),
                _ => None,
            })
            .collect();
        Some(Self {
            settings: acme,
            data_dir: settings.data_dir.clone(),
            certificates,
            challenges,
            on_change,
            metrics: None,
        })
    }

    fn live(&self, names: &[String]) -> Result<LivePaths, AcmeError> {
        Ok(LivePaths::new(&self.data_dir, &acme_lineage(names))?)
    }

    /// When `names` is due for renewal. The CA's renewal information (RFC 9773) decides when
    /// it offers any, otherwise a third of the lifetime left. `ask` says whether to ask the CA,
    /// and whether an account may be registered to do so.
    pub async fn plan(&self, names: &[String], ask: AskCa) -> CertificateStatus {
        let lineage = acme_lineage(names);
        let now = unix_now();
        let mut status = CertificateStatus {
            names: names.to_vec(),
            lineage: lineage.clone(),
            issuer: None,
            serial: None,
            not_after: None,
            due: now,
            next_renewal: "now".into(),
            reason: "not issued yet".into(),
        };
        let Ok(live) = self.live(names) else {
            return status;
        };
        let Some(leaf) = read_certificates(&live.cert)
            .ok()
            .and_then(|c| c.into_iter().next())
        else {
            return status;
        };
        let Ok(info) = CertInfo::parse(&leaf) else {
            status.reason = "the stored certificate does not parse".into();
            return status;
        };
        status.issuer = Some(info.issuer.clone());
        status.serial = Some(info.serial.clone());
        status.not_after = Some(format_time(info.not_after));
        let missing: Vec<&String> = names.iter().filter(|n| !info.covers(n)).collect();
        if !missing.is_empty() {
            status.reason = format!("the stored certificate lacks {missing:?}");
            return status;
        }
        if ask != AskCa::No {
            if let Some((start, end)) = self.renewal_window(&leaf, ask == AskCa::Register).await {
                // RFC 9773 §4.2: pick a time uniformly within the suggested window.
                let span = Duration::from_secs((end - start).max(0) as u64);
                status.due = start + jitter(span).as_secs() as i64;
                status.reason = format!(
                    "ACME renewal information: window {} to {}",
                    format_time(start),
                    format_time(end)
                );
                status.next_renewal = format_time(status.due);
                return status;
            }
        }
        status.due = info.not_after - info.lifetime_secs() / 3;
        status.reason =
            "a third of the lifetime left (the CA offers no renewal information)".into();
        status.next_renewal = format_time(status.due);
        status
    }

    async fn renewal_window(
        &self,
        leaf: &rustls::pki_types::CertificateDer<'_>,
        may_register: bool,
    ) -> Option<(i64, i64)> {
        let account = if may_register {
            client::account(&self.settings, &self.data_dir).await.ok()?
        } else {
            client::existing_account(&self.settings, &self.data_dir).await?
        };
        let id = instant_acme::CertificateIdentifier::try_from(leaf).ok()?;
        let (info, _retry_after) = account.renewal_info(&id).await.ok()?;
        let window = info.suggested_window;
        Some((window.start.unix_timestamp(), window.end.unix_timestamp()))
    }

    /// Orders (or renews) one certificate now, under the lock; swaps it in and runs the hook.
    pub async fn issue(&self, names: &[String]) -> Result<LivePaths, AcmeError> {
        self.issue_if(names, true).await.map(|(live, _)| live)
    }

    /// As [`Self::issue`], but without `force` it orders only if, once the lock is held, the
    /// certificate is still due: another process may have renewed it meanwhile. Returns
    /// whether an order was placed.
    pub async fn issue_if(
        &self,
        names: &[String],
        force: bool,
    ) -> Result<(LivePaths, bool), AcmeError> {
        let lineage = acme_lineage(names);
        let _lock = lock(&self.data_dir, &lineage)?;
        let live = self.live(names)?;
        if !force && self.plan(names, AskCa::Register).await.due > unix_now() {
            return Ok((live, false));
        }
        let previous = read_certificates(&live.cert)
            .ok()
            .and_then(|c| c.into_iter().next());
        // Link the order to the certificate it replaces only when the CA speaks ARI.
        let replaces = match &previous {
            Some(leaf) if self.renewal_window(leaf, false).await.is_some() => Some(leaf),
            _ => None,
        };
        let started = std::time::Instant::now();
        let ordered = client::order(
            &self.settings,
            &self.data_dir,
            names,
            &self.challenges,
            replaces,
        )
        .await;
        if let Some(metrics) = &self.metrics {
            let result = if ordered.is_ok() {
                "success"
            } else {
                "failure"
            };
            metrics
                .acme_orders
                .get_or_create(&crate::metrics::ResultLabels {
                    result: result.into(),
                })
                .inc();
        }
        let live = ordered?;
        let serial = read_certificates(&live.cert)
            .ok()
            .and_then(|c| c.first().and_then(|l| CertInfo::parse(l).ok()))
            .map(|i| (i.serial, i.sha256_fingerprint, format_time(i.not_after)));
        if let Some((serial, fingerprint, not_after)) = &serial {
            tracing::info!(
                audit = "certificate issued",
                lineage = %lineage,
                names = %names.join(","),
                %serial,
                %fingerprint,
                %not_after,
                seconds = started.elapsed().as_secs_f64(),
                "ACME certificate {}", if previous.is_some() { "renewed" } else { "issued" }
            );
        }
        (self.on_change)();
        self.deploy_hook(&lineage, names, &live).await;
        Ok((live, true))
    }

    async fn deploy_hook(&self, lineage: &str, names: &[String], live: &LivePaths) {
        let Some(hook) = &self.settings.deploy_hook else {
            return;
        };
        let run = tokio::process::Command::new("sh")
            .args(["-c", hook])
            .env("RENEWED_LINEAGE", &live.dir)
            .env("RENEWED_DOMAINS", names.join(" "))
            .env("TLSGATE_LINEAGE", lineage)
            .env("TLSGATE_FULLCHAIN", &live.fullchain)
            .env("TLSGATE_PRIVKEY", &live.privkey)
            .output();
        match tokio::time::timeout(Duration::from_secs(300), run).await {
            Ok(Ok(output)) if output.status.success() => {
                tracing::info!(%lineage, "deploy_hook ran")
            }
            Ok(Ok(output)) => {
                tracing::error!(%lineage, status = %output.status, stderr = %String::from_utf8_lossy(&output.stderr).trim(), "deploy_hook failed")
            }
            Ok(Err(error)) => tracing::error!(%lineage, %error, "deploy_hook could not run"),
            Err(_) => tracing::error!(%lineage, "deploy_hook did not finish within 5 minutes"),
        }
    }

    /// Keeps every certificate current until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let interval = self.settings.check_interval;
        let first_backoff = interval.min(Duration::from_secs(60));
        let mut backoff = vec![first_backoff; self.certificates.len()];
        let mut next_check = vec![tokio::time::Instant::now(); self.certificates.len()];
        loop {
            let now = tokio::time::Instant::now();
            for (index, names) in self.certificates.iter().enumerate() {
                if next_check[index] > now {
                    continue;
                }
                let plan = self.plan(names, AskCa::Register).await;
                if plan.due > unix_now() {
                    let wait = Duration::from_secs((plan.due - unix_now()) as u64);
                    next_check[index] = now + wait.min(interval) + jitter(interval / 10);
                    continue;
                }
                tracing::info!(names = %names.join(","), reason = %plan.reason, "ordering certificate");
                let result = self.issue_if(names, false).await;
                // Orders take time (and several run in turn): count from their end, so a CA
                // outage never gets back-to-back retries.
                let now = tokio::time::Instant::now();
                match result {
                    Ok(_) => {
                        backoff[index] = first_backoff;
                        next_check[index] = now + interval + jitter(interval / 10);
                    }
                    Err(error) => {
                        let text = error.to_string();
                        let limited = text.contains("rateLimited");
                        // A nonce the CA refused more times than the client retries is a
                        // passing condition (RFC 8555 §6.5), not an outage: try again soon.
                        let transient = text.contains("badNonce");
                        let wait = if limited {
                            backoff[index].max(Duration::from_secs(3600))
                        } else if transient {
                            first_backoff
                        } else {
                            backoff[index]
                        };
                        tracing::error!(names = %names.join(","), %error, retry_in = ?wait, "ACME order failed; the current certificate stays in service");
                        next_check[index] = now + wait;
                        if !transient {
                            backoff[index] = (backoff[index] * 2).min(Duration::from_secs(86_400));
                        }
                    }
                }
            }
            let Some(wake) = next_check.iter().min().copied() else {
                return;
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}
