//! The data folder on disk: private directories (0700), secret files (0600) written
//! atomically, and certbot's `live/NAME/` + `archive/NAME/` layout.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::CertError;
use crate::config::validate_path_component;

pub const SECRET_MODE: u32 = 0o600;
pub const PUBLIC_MODE: u32 = 0o644;
pub const PRIVATE_DIR_MODE: u32 = 0o700;

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and parents) mode 0700 if missing. An existing folder is left as it is:
/// it may be the operator's (`--data-dir .`); what tlsgate keeps secret lives in folders it
/// owns (see [`tighten_dir`]).
pub fn ensure_private_dir(dir: &Path) -> Result<(), CertError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR_MODE)
            .create(dir)
            .map_err(write_error(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
            .map_err(write_error(dir))?;
    }
    Ok(())
}

/// Whether a folder that holds keys is safe to use. Its own mode matters, not only its
/// subfolders': whoever may write to it can rename `ca/` or `live/NAME/` away and put their
/// own keys in their place, whatever those folders' modes. Writable by others is refused
/// (OpenSSH's StrictModes refuses the same); writable by the group is a warning, since a
/// shared deploy group may be deliberate. A missing folder is fine: tlsgate creates it 0700.
pub fn check_key_folder(dir: &Path) -> Result<Option<String>, CertError> {
    let Ok(metadata) = fs::metadata(dir) else {
        return Ok(None);
    };
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(CertError::WritableByOthers {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok((mode & 0o020 != 0).then(|| {
        format!(
            "data folder {} is writable by its group (mode {mode:04o}): members could replace the keys kept there; run: chmod 700 {}",
            dir.display(),
            dir.display()
        )
    }))
}

/// Makes sure a folder tlsgate owns (`ca/`, `live/NAME/`) is 0700, creating it if needed.
pub fn tighten_dir(dir: &Path) -> Result<(), CertError> {
    ensure_private_dir(dir)?;
    let mode = fs::metadata(dir)
        .map_err(write_error(dir))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
            .map_err(write_error(dir))?;
    }
    Ok(())
}

/// Writes `contents` to `path` with `mode`, atomically: a temporary file in the same folder,
/// flushed to disk, then renamed over the target. A crash leaves the old file or the new one.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        // The umask may have narrowed the mode; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(write_error(path))
}

/// Writes a file the operator asked for: never replaces an existing one unless `force`.
pub fn write_new(path: &Path, contents: &[u8], mode: u32, force: bool) -> Result<(), CertError> {
    write_files(&[(path.to_path_buf(), contents, mode)], force)
}

/// Writes several files as one unit: every temporary file first, then each is moved into
/// place. Without `force` a file is linked in only if its name is free (no check-then-write
/// race), and a refusal removes what this call already placed, so a key never ends up next
/// to a certificate it does not belong to.
pub fn write_files(files: &[(PathBuf, &[u8], u32)], force: bool) -> Result<(), CertError> {
    let mut staged = Vec::new();
    for (index, (path, contents, mode)) in files.iter().enumerate() {
        let temp = path.with_file_name(format!(
            ".{}.new-{}-{index}",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        if let Err(error) = write_atomic(&temp, contents, *mode) {
            remove_all(staged.iter().map(|(t, _): &(PathBuf, &PathBuf)| t));
            return Err(error);
        }
        staged.push((temp, path));
    }
    let mut placed: Vec<&PathBuf> = Vec::new();
    for (temp, path) in &staged {
        let result = if force {
            fs::rename(temp, path)
        } else {
            fs::hard_link(temp, path).and_then(|()| fs::remove_file(temp))
        };
        if let Err(error) = result {
            remove_all(staged.iter().map(|(t, _)| t));
            remove_all(placed.iter().copied());
            return Err(if error.kind() == std::io::ErrorKind::AlreadyExists {
                CertError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                CertError::Write {
                    path: path.to_path_buf(),
                    source: error,
                }
            });
        }
        placed.push(path);
    }
    Ok(())
}

fn remove_all<'a>(paths: impl Iterator<Item = &'a PathBuf>) {
    for path in paths {
        let _ = fs::remove_file(path);
    }
}

/// Paths of one certificate in certbot's layout under the data folder.
#[derive(Debug, Clone, PartialEq)]
pub struct LivePaths {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub chain: PathBuf,
    pub fullchain: PathBuf,
    pub privkey: PathBuf,
}

impl LivePaths {
    /// `data_dir/live/NAME/`; NAME is checked before it becomes a path.
    pub fn new(data_dir: &Path, name: &str) -> Result<Self, CertError> {
        let name = validate_path_component(name).map_err(|error| CertError::Write {
            path: data_dir.join("live"),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, error),
        })?;
        let dir = data_dir.join("live").join(name);
        Ok(Self {
            cert: dir.join("cert.pem"),
            chain: dir.join("chain.pem"),
            fullchain: dir.join("fullchain.pem"),
            privkey: dir.join("privkey.pem"),
            dir,
        })
    }

    pub fn exists(&self) -> bool {
        self.fullchain.exists() && self.privkey.exists()
    }

    /// Replaces the live files; the previous ones move to `archive/NAME/SERIAL/`.
    /// Replaces the live files as one unit: the new set is written to a staging folder and
    /// swapped with `live/NAME/` in one atomic exchange, so a crash leaves the old set or the
    /// new one, never a key beside a certificate it does not belong to. The previous set moves
    /// to `archive/NAME/SERIAL/`.
    pub fn store(
        &self,
        data_dir: &Path,
        cert_pem: &str,
        chain_pem: &str,
        key_pem: &str,
        previous_serial: Option<&str>,
    ) -> Result<(), CertError> {
        let live_root = data_dir.join("live");
        ensure_private_dir(&live_root)?;
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = live_root.join(format!(".{name}.staging-{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        tighten_dir(&staging)?;
        let fullchain = format!("{cert_pem}{chain_pem}");
        for (file, contents, mode) in [
            (&self.privkey, key_pem, SECRET_MODE),
            (&self.cert, cert_pem, PUBLIC_MODE),
            (&self.chain, chain_pem, PUBLIC_MODE),
            (&self.fullchain, fullchain.as_str(), PUBLIC_MODE),
        ] {
            let file_name = file.file_name().unwrap_or_default();
            write_atomic(&staging.join(file_name), contents.as_bytes(), mode)?;
        }
        if !self.dir.exists() {
            fs::rename(&staging, &self.dir).map_err(write_error(&self.dir))?;
            return Ok(());
        }
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &staging,
            rustix::fs::CWD,
            &self.dir,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(|e| CertError::Write {
            path: self.dir.clone(),
            source: e.into(),
        })?;
        // `staging` now holds the previous set.
        let serial = previous_serial
            .and_then(|s| validate_path_component(s).ok())
            .unwrap_or("unknown");
        let archive = data_dir.join("archive");
        ensure_private_dir(&archive)?;
        ensure_private_dir(&archive.join(&name))?;
        let target = archive.join(&name).join(serial);
        let _ = fs::remove_dir_all(&target);
        if fs::rename(&staging, &target).is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_0600_and_dirs_0700() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("a/b");
        ensure_private_dir(&private).unwrap();
        let mode = fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let key = private.join("k.pem");
        write_atomic(&key, b"secret", SECRET_MODE).unwrap();
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_atomic(&key, b"replaced", SECRET_MODE).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"replaced");
        let leftovers: Vec<_> = fs::read_dir(&private).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }

    #[test]
    fn a_key_folder_others_may_write_is_refused_and_a_group_writable_one_warned() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert!(
            check_key_folder(&data).unwrap().is_none(),
            "missing: made 0700"
        );
        fs::create_dir(&data).unwrap();
        for mode in [0o700, 0o750, 0o755] {
            fs::set_permissions(&data, fs::Permissions::from_mode(mode)).unwrap();
            assert!(check_key_folder(&data).unwrap().is_none(), "{mode:o}");
        }
        fs::set_permissions(&data, fs::Permissions::from_mode(0o770)).unwrap();
        let warning = check_key_folder(&data).unwrap().unwrap();
        assert_eq!(
            warning,
            format!(
                "data folder {} is writable by its group (mode 0770): members could replace the keys kept there; run: chmod 700 {}",
                data.display(),
                data.display()
            )
        );
        for mode in [0o777, 0o1777, 0o702] {
            fs::set_permissions(&data, fs::Permissions::from_mode(mode)).unwrap();
            let error = check_key_folder(&data).unwrap_err();
            assert!(
                matches!(&error, CertError::WritableByOthers { path, mode: m } if *path == data && *m == mode),
                "{error:?}"
            );
        }
        assert!(check_key_folder(&data)
            .unwrap_err()
            .to_string()
            .ends_with(&format!("(mode 0702): anyone on this machine could replace the keys kept there; run: chmod 700 {}", data.display())));
    }

    #[test]
    fn existing_operator_folders_are_not_chmodded() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(dir.path()).unwrap();
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        let owned = dir.path().join("ca");
        fs::create_dir(&owned).unwrap();
        fs::set_permissions(&owned, fs::Permissions::from_mode(0o755)).unwrap();
        tighten_dir(&owned).unwrap();
        assert_eq!(
            fs::metadata(&owned).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn a_refused_file_rolls_back_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("a.key");
        let crt = dir.path().join("a.crt");
        fs::write(&crt, "old certificate").unwrap();
        let result = write_files(
            &[
                (key.clone(), b"new key", SECRET_MODE),
                (crt.clone(), b"new cert", PUBLIC_MODE),
            ],
            false,
        );
        assert!(matches!(result, Err(CertError::Exists { .. })));
        assert!(
            !key.exists(),
            "the new key was not left next to the old certificate"
        );
        assert_eq!(fs::read(&crt).unwrap(), b"old certificate");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary files left"
        );
        write_files(
            &[
                (key.clone(), b"new key", SECRET_MODE),
                (crt.clone(), b"new cert", PUBLIC_MODE),
            ],
            true,
        )
        .unwrap();
        assert_eq!(fs::read(&crt).unwrap(), b"new cert");
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn live_paths_refuse_traversal() {
        let dir = tempfile::tempdir().unwrap();
        assert!(LivePaths::new(dir.path(), "../../etc").is_err());
        assert!(LivePaths::new(dir.path(), "a/b").is_err());
        let live = LivePaths::new(dir.path(), "example.com").unwrap();
        assert_eq!(
            live.fullchain,
            dir.path().join("live/example.com/fullchain.pem")
        );
    }

    #[test]
    fn replacing_live_files_archives_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let live = LivePaths::new(dir.path(), "localhost").unwrap();
        live.store(dir.path(), "C1\n", "CH\n", "K1\n", None)
            .unwrap();
        live.store(dir.path(), "C2\n", "CH\n", "K2\n", Some("0abc"))
            .unwrap();
        assert_eq!(fs::read_to_string(&live.fullchain).unwrap(), "C2\nCH\n");
        let archived = dir.path().join("archive/localhost/0abc");
        assert_eq!(
            fs::read_to_string(archived.join("privkey.pem")).unwrap(),
            "K1\n"
        );
        let mode = fs::metadata(archived.join("privkey.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
