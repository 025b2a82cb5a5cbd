//! Reloads when a configured certificate or key file, or a client-certificate CA or CRL file,
//! changes on disk.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::control::ReloadHandle;

/// The configured certificate and key files (ACME's are tlsgate's own), as folders to watch
/// and the file names that matter in them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct CertificateFiles {
    pub(super) folders: Vec<std::path::PathBuf>,
    names: std::collections::BTreeSet<std::ffi::OsString>,
}

impl CertificateFiles {
    pub(super) fn of(settings: &Settings) -> Self {
        if !settings.tls.enabled {
            return Self::default();
        }
        let mut files = Self::default();
        let paths = settings
            .tls
            .certificates
            .iter()
            .filter(|c| !matches!(c.source, crate::config::CertSource::Acme { .. }))
            .flat_map(|c| [c.source.cert_path(), c.source.key_path()]);
        // Client-certificate CAs and CRLs reload the same way (a new CRL is put in force
        // without dropping connections).
        let client_auth = std::iter::once(&settings.tls.client_auth)
            .chain(
                settings
                    .tls
                    .certificates
                    .iter()
                    .flat_map(|c| &c.client_auth),
            )
            .flat_map(|auth| auth.files())
            .map(std::path::PathBuf::as_path);
        let paths = paths.chain(client_auth);
        for path in paths {
            let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            if let (Some(folder), Some(name)) = (absolute.parent(), absolute.file_name()) {
                files.folders.push(folder.to_path_buf());
                files.names.insert(name.to_owned());
            }
        }
        files.folders.sort();
        files.folders.dedup();
        files
    }

    /// Whether a change to `path` may change a configured file: the file itself (written,
    /// or replaced by rename, as certbot's `live/` symlinks are), or Kubernetes' `..data`
    /// swap. Logs and other files sharing the folder are not.
    fn concerns(&self, path: &std::path::Path) -> bool {
        path.file_name().is_some_and(|name| {
            self.names.contains(name) || name.as_encoded_bytes().starts_with(b"..")
        })
    }
}

/// Reloads when a configured certificate or key file changes on disk. The folders are watched,
/// not the files, so replacing a file by rename and Kubernetes' swap of its `..data` symlink
/// are both seen. Bursts of events are debounced into one reload.
pub(super) fn watch_certificate_files(
    files: CertificateFiles,
    reload: ReloadHandle,
    shutdown: CancellationToken,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    use notify::Watcher;
    if files.folders.is_empty() {
        return None;
    }
    let folders = files.folders.clone();
    let (events, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = match notify::recommended_watcher(
        move |event: notify::Result<notify::Event>| {
            let relevant = event.is_ok_and(|e| {
                !matches!(e.kind, notify::EventKind::Access(_))
                    && e.paths.iter().any(|path| files.concerns(path))
            });
            if relevant {
                let _ = events.send(());
            }
        },
    ) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "cannot watch certificate files; reload with SIGHUP or POST /reload");
            return None;
        }
    };
    for folder in &folders {
        if let Err(error) = watcher.watch(folder, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(folder = %folder.display(), %error, "cannot watch this folder for certificate changes");
        }
    }
    Some(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                change = changes.recv() => if change.is_none() { return },
                () = shutdown.cancelled() => return,
            }
            // Debounce: a certificate and its key are usually written one after the other.
            loop {
                tokio::select! {
                    more = changes.recv() => if more.is_none() { return },
                    () = tokio::time::sleep(Duration::from_millis(300)) => break,
                    () = shutdown.cancelled() => return,
                }
            }
            tracing::info!("certificate files changed on disk: reloading");
            let _ = reload.reload().await;
        }
    })
}
