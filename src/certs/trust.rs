//! `cert trust` / `untrust`: put a CA into (or take it out of) the system trust store and the
//! NSS databases Chromium and Firefox read, like `mkcert -install`. Every change is reported.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::store::{write_atomic, PUBLIC_MODE};
use super::CertInfo;

/// A system trust store: the folder of extra anchors and the command that rebuilds the bundle.
#[derive(Debug, Clone)]
pub struct SystemStore {
    pub dir: PathBuf,
    pub update_command: Option<Vec<String>>,
}

impl SystemStore {
    /// The distribution's store, if one is recognised (Debian/Ubuntu, then Fedora/RHEL).
    pub fn detect() -> Option<Self> {
        let known = [
            (
                "/usr/local/share/ca-certificates",
                vec!["update-ca-certificates"],
            ),
            (
                "/etc/pki/ca-trust/source/anchors",
                vec!["update-ca-trust", "extract"],
            ),
        ];
        known
            .into_iter()
            .find(|(dir, _)| Path::new(dir).is_dir())
            .map(|(dir, cmd)| Self {
                dir: PathBuf::from(dir),
                update_command: Some(cmd.into_iter().map(String::from).collect()),
            })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub target: String,
    pub ok: bool,
    pub detail: String,
}

/// The NSS databases of this user's browsers: Chromium's shared one and Firefox profiles.
pub fn discover_nss_databases(home: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in [".pki/nssdb", "snap/chromium/current/.pki/nssdb"] {
        let path = home.join(dir);
        if path.join("cert9.db").exists() {
            found.push(path);
        }
    }
    for profiles in [".mozilla/firefox", "snap/firefox/common/.mozilla/firefox"] {
        if let Ok(entries) = std::fs::read_dir(home.join(profiles)) {
            for entry in entries.flatten() {
                if entry.path().join("cert9.db").exists() {
                    found.push(entry.path());
                }
            }
        }
    }
    found.sort();
    found
}

/// The name the CA gets in stores: unique per CA, recognisable as ours.
pub fn nickname(info: &CertInfo) -> String {
    let short: String = info
        .sha256_fingerprint
        .replace(':', "")
        .chars()
        .take(12)
        .collect();
    format!("tlsgate-{}", short.to_ascii_lowercase())
}

fn run(command: &[String]) -> Result<String, String> {
    let (program, args) = command.split_first().ok_or("empty command")?;
    match Command::new(program).args(args).output() {
        Ok(output) if output.status.success() => {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        }
        Ok(output) => Err(format!(
            "{} failed: {}",
            command.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{program} not found{}",
            if program == "certutil" {
                " (install libnss3-tools)"
            } else {
                ""
            }
        )),
        Err(error) => Err(format!("{program}: {error}")),
    }
}

fn certutil(db: &Path, args: &[&str]) -> Result<String, String> {
    let mut command = vec![
        "certutil".to_owned(),
        "-d".to_owned(),
        format!("sql:{}", db.display()),
    ];
    command.extend(args.iter().map(|a| a.to_string()));
    run(&command)
}

fn change(target: String, result: Result<String, String>) -> Change {
    match result {
        Ok(detail) => Change {
            target,
            ok: true,
            detail,
        },
        Err(detail) => Change {
            target,
            ok: false,
            detail,
        },
    }
}

/// Adds the CA (exactly one certificate, as PEM) to the given stores.
pub fn install(
    ca_pem: &str,
    info: &CertInfo,
    system: Option<&SystemStore>,
    nss: &[PathBuf],
) -> Vec<Change> {
    let name = nickname(info);
    let mut changes = Vec::new();
    if let Some(store) = system {
        let target = store.dir.join(format!("{name}.crt"));
        let result = write_atomic(&target, ca_pem.as_bytes(), PUBLIC_MODE)
            .map_err(|e| e.to_string())
            .and_then(|()| match &store.update_command {
                Some(command) => {
                    run(command).map(|_| format!("added, then ran {}", command.join(" ")))
                }
                None => Ok("added (no update command run for a custom folder)".into()),
            });
        changes.push(change(target.display().to_string(), result));
    }
    if nss.is_empty() {
        return changes;
    }
    // certutil reads the certificate from a file.
    let ca_file = std::env::temp_dir().join(format!("{name}-{}.pem", std::process::id()));
    if let Err(error) = write_atomic(&ca_file, ca_pem.as_bytes(), PUBLIC_MODE) {
        changes.push(change(
            ca_file.display().to_string(),
            Err(error.to_string()),
        ));
        return changes;
    }
    for db in nss {
        let ca = ca_file.display().to_string();
        let result = certutil(db, &["-A", "-t", "C,,", "-n", &name, "-i", &ca])
            .map(|_| format!("added as \"{name}\" (trusted for TLS servers)"));
        changes.push(change(format!("NSS database {}", db.display()), result));
    }
    let _ = std::fs::remove_file(&ca_file);
    changes
}

/// Removes what [`install`] added.
pub fn uninstall(info: &CertInfo, system: Option<&SystemStore>, nss: &[PathBuf]) -> Vec<Change> {
    let name = nickname(info);
    let mut changes = Vec::new();
    if let Some(store) = system {
        let target = store.dir.join(format!("{name}.crt"));
        let result = if target.exists() {
            std::fs::remove_file(&target)
                .map_err(|e| e.to_string())
                .and_then(|()| match &store.update_command {
                    Some(command) => {
                        run(command).map(|_| format!("removed, then ran {}", command.join(" ")))
                    }
                    None => Ok("removed".into()),
                })
        } else {
            Ok("not present".into())
        };
        changes.push(change(target.display().to_string(), result));
    }
    for db in nss {
        let result = match certutil(db, &["-L", "-n", &name]) {
            Ok(_) => certutil(db, &["-D", "-n", &name]).map(|_| format!("removed \"{name}\"")),
            // certutil says "Could not find cert" for an absent name; anything else is a failure.
            Err(error) if error.contains("Could not find cert") => Ok("not present".into()),
            Err(error) => Err(error),
        };
        changes.push(change(format!("NSS database {}", db.display()), result));
    }
    changes
}
