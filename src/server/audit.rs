//! Audit lines: which certificates are in service, issued, replaced and expired.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::admin::CertificateState;
use crate::certs::local_ca::{LeafAction, LocalCertificate};
use crate::tls::CertSummary;

/// An audit line per certificate put in service, at start-up and on every reload.
pub(super) fn audit_loaded(summaries: &[CertSummary]) {
    for summary in summaries {
        tracing::info!(
            audit = "certificate loaded",
            path = %summary.cert_path.display(),
            source = summary.source,
            serial = %summary.info.serial,
            fingerprint = %summary.info.sha256_fingerprint,
            not_after = %crate::certs::inspect::format_time(summary.info.not_after),
            "certificate in service"
        );
    }
}

/// An audit line when the local CA issued the `localhost` certificate (read from its one
/// live file, not by loading every configured certificate).
pub(super) fn audit_local_issue(local: &LocalCertificate) {
    if local.leaf == LeafAction::Reused {
        return;
    }
    let leaf = crate::certs::pem::read_certificates(&local.live.cert)
        .ok()
        .and_then(|chain| {
            chain
                .first()
                .and_then(|der| crate::certs::CertInfo::parse(der).ok())
        });
    let Some(info) = leaf else { return };
    tracing::info!(
        audit = "certificate issued",
        issuer = "local CA",
        reason = ?local.leaf,
        path = %local.live.cert.display(),
        serial = %info.serial,
        fingerprint = %info.sha256_fingerprint,
        not_after = %crate::certs::inspect::format_time(info.not_after),
        "local certificate issued"
    );
}

/// Audit lines for certificates a reload put in place of others (same file, new serial).
pub(super) fn audit_replacements(before: &[CertSummary], after: &[CertSummary]) {
    for new in after {
        if let Some(old) = before
            .iter()
            .find(|old| old.cert_path == new.cert_path && old.info.serial != new.info.serial)
        {
            tracing::info!(
                audit = "certificate replaced",
                path = %new.cert_path.display(),
                old_serial = %old.info.serial,
                serial = %new.info.serial,
                fingerprint = %new.info.sha256_fingerprint,
                not_after = %crate::certs::inspect::format_time(new.info.not_after),
                "certificate replaced"
            );
        }
    }
}

/// An audit line (once per certificate) when a served certificate expires.
pub(super) async fn audit_expiry(
    state: Arc<ArcSwap<CertificateState>>,
    shutdown: CancellationToken,
) {
    let mut reported = std::collections::HashSet::new();
    loop {
        let now = crate::certs::inspect::unix_now();
        for cert in &state.load().served {
            if cert.info.not_after <= now && reported.insert(cert.info.serial.clone()) {
                tracing::warn!(
                    audit = "certificate expired",
                    path = %cert.cert_path.display(),
                    serial = %cert.info.serial,
                    fingerprint = %cert.info.sha256_fingerprint,
                    "a served certificate has expired: clients refuse it"
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
