//! `tlsgate cert …`: generate, inspect, verify and watch certificates without openssl. All the
//! work is in [`crate::certs`]; this file parses arguments and prints results.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::certs::expiry::{self, Entry};
use crate::certs::generate::{self, CertificateAuthority, IssuedCertificate, KeyAlgorithm, Usage};
use crate::certs::inspect::{chain_in_order, format_time, unix_now};
use crate::certs::pem::{encode_certificates, read_certificates, read_private_key};
use crate::certs::store::{ensure_private_dir, write_files, write_new, PUBLIC_MODE, SECRET_MODE};
use crate::certs::trust::{self, SystemStore};
use crate::certs::{bundle, remote, verify, CertInfo};
use crate::config::{normalize_dns_name, validate_path_component};

const DAY: u64 = 86_400;
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create a self-signed certificate: NAME.key (0600), NAME.crt and NAME.pem (certificate +
    /// key).
    #[command(
        after_help = "Example:\n  tlsgate cert self-signed localhost 127.0.0.1 ::1 --days 365 --key rsa-2048\n\nExit codes: 0 created, 2 bad input or a file exists (use --force)"
    )]
    SelfSigned(SelfSignedArgs),
    /// A private CA: create one, and issue server or client (mTLS) certificates from it.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Create a key and a certificate signing request (CSR) for a commercial CA.
    #[command(
        after_help = "Example:\n  tlsgate cert csr example.com www.example.com --key rsa-2048\n\nExit codes: 0 created, 2 bad input or a file exists (use --force)"
    )]
    Csr(CsrArgs),
    /// Show every certificate in a file, or in the chain a server sends.
    #[command(
        after_help = "Examples:\n  tlsgate cert inspect /etc/letsencrypt/live/example.com/fullchain.pem\n  tlsgate cert inspect https://example.com\n\nExit codes: 0 shown, 2 unreadable or unreachable"
    )]
    Inspect(InspectArgs),
    /// Verify a chain against a CA bundle (default: the system roots), a host name and a key.
    #[command(
        after_help = "Example:\n  tlsgate cert verify server.crt --ca ca.crt --host api.internal --key server.key\n\nExit codes: 0 every check passed, 1 a check failed, 2 bad input"
    )]
    Verify(VerifyArgs),
    /// OK / WARNING / EXPIRED for certificates in files, folders, globs or https:// URLs.
    #[command(
        after_help = "Examples:\n  tlsgate cert expiry /etc/letsencrypt/live --warn-days 30\n  tlsgate cert expiry 'certs/*.crt' https://example.com --prometheus > /var/lib/node_exporter/tls.prom\n\nExit codes: 0 all OK, 1 any WARNING, 2 any EXPIRED or unreadable"
    )]
    Expiry(ExpiryArgs),
    /// Write certificate + chain + key as one PEM (HAProxy, seed 003's camera service).
    #[command(
        after_help = "Example:\n  tlsgate cert bundle --cert cert.pem --chain chain.pem --key privkey.pem --out combined.pem\n\nExit codes: 0 written, 2 bad input or the file exists (use --force)"
    )]
    Bundle(BundleArgs),
    /// Write a kubernetes.io/tls Secret manifest (as `kubectl create secret tls`).
    #[command(
        after_help = "Example:\n  tlsgate cert k8s-secret api-tls-secret --cert fullchain.pem --key privkey.pem --namespace analytics | kubectl apply -f -\n  tlsgate cert k8s-secret api-tls-secret --cert fullchain.pem --key privkey.pem --out secret.yaml\n\nExit codes: 0 written, 2 bad input"
    )]
    K8sSecret(K8sSecretArgs),
    /// Trust a CA (default: the local development CA) in the system store and browsers' NSS
    /// databases.
    #[command(
        after_help = "Example:\n  sudo tlsgate cert trust            # the data folder's local CA\n  tlsgate cert trust --ca ca.crt --no-system --yes\n\nExit codes: 0 every change made, 1 a change failed, 2 bad input or not confirmed"
    )]
    Trust(TrustArgs),
    /// Undo `cert trust`.
    #[command(
        after_help = "Example:\n  sudo tlsgate cert untrust\n\nExit codes: 0 every change made, 1 a change failed, 2 bad input or not confirmed"
    )]
    Untrust(TrustArgs),
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a private CA: ca.crt and ca.key (0600) in --out.
    #[command(
        after_help = "Example:\n  tlsgate cert ca init --name \"Example internal CA\" --out ./ca\n  tlsgate cert ca init --permit internal.example.com   # may only issue for that domain\n\nExit codes: 0 created, 2 bad input or the CA exists (use --force)"
    )]
    Init(CaInitArgs),
    /// Issue a server (default) or client certificate from a private CA.
    #[command(
        after_help = "Examples:\n  tlsgate cert ca issue api.internal 10.0.0.5 --ca ./ca\n  tlsgate cert ca issue alice --client --ca ./ca     # for mTLS\n\nExit codes: 0 issued, 2 bad input or a file exists (use --force)"
    )]
    Issue(CaIssueArgs),
    /// Revoke certificates and publish the CA's CRL (for `tls.client_auth.crl_files`).
    #[command(
        after_help = "Examples:\n  tlsgate cert ca crl --ca ./ca --revoke issued/alice.crt   # revoke, write ./ca/crl.pem\n  tlsgate cert ca crl --ca ./ca --days 7                     # re-publish before it expires\n\nThe CA folder keeps revoked.txt (serial, time) and crlnumber (each CRL's number is one more,\nso tlsgate's rollback check accepts it). The CRL is replaced by rename: a running tlsgate\nreloads it.\n\nExit codes: 0 written, 2 bad input"
    )]
    Crl(CaCrlArgs),
}

#[derive(Debug, Args)]
pub struct CaCrlArgs {
    /// The CA's folder: ca.crt + ca.key.
    #[arg(long, default_value = "./ca", value_name = "DIR")]
    ca: PathBuf,
    /// A certificate (PEM) issued by this CA to add to the revoked list.
    #[arg(long, value_name = "CERT")]
    revoke: Vec<PathBuf>,
    /// How long the CRL is valid (its nextUpdate): publish a new one before then.
    #[arg(long, default_value_t = 7)]
    days: u64,
    /// Where to write the CRL (default: crl.pem in the CA's folder).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct KeyArg {
    /// Key type: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096 or ed25519.
    #[arg(long = "key", default_value = "ecdsa-p256", value_parser = parse_key_algorithm)]
    algorithm: KeyAlgorithm,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Folder to write into (created mode 0700, with parents, if missing).
    #[arg(long, default_value = ".", value_name = "DIR")]
    out: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct SelfSignedArgs {
    /// DNS names, wildcards (*.example.com) or IP addresses; the first names the files.
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
    #[arg(long, default_value_t = 365)]
    days: u64,
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct CaInitArgs {
    /// The CA's common name.
    #[arg(long, default_value = "tlsgate private CA")]
    name: String,
    #[arg(long, default_value_t = 3650)]
    days: u64,
    #[command(flatten)]
    key: KeyArg,
    /// Name constraint: the CA may only issue for these DNS domains (off by default).
    #[arg(long = "permit", value_name = "DOMAIN")]
    permitted: Vec<String>,
    /// The CA's folder (created mode 0700 if missing).
    #[arg(long, default_value = "./ca", value_name = "DIR")]
    out: PathBuf,
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct CaIssueArgs {
    /// DNS names, wildcards or IP addresses (for --client: a user or service name, or an
    /// email address such as alice@example.com).
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
    /// The CA's folder: ca.crt + ca.key (or root.crt + root.key, as in the data folder's ca/).
    #[arg(long, default_value = "./ca", value_name = "DIR")]
    ca: PathBuf,
    #[arg(long, default_value_t = 397)]
    days: u64,
    /// Issue a client certificate (clientAuth) for mTLS instead of a server certificate.
    #[arg(long)]
    client: bool,
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct CsrArgs {
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A certificate file (PEM or DER) or https://HOST[:PORT].
    target: String,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Certificate file: the leaf, optionally followed by intermediates.
    cert: PathBuf,
    /// Trusted CA bundle (default: the system roots).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Host name or IP the certificate must be valid for.
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// Private key that must match the certificate.
    #[arg(long, value_name = "KEY")]
    key: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ExpiryArgs {
    /// Files, folders (searched for .pem/.crt/.cer/.der), globs, or https:// URLs.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,
    #[arg(long, default_value_t = 30)]
    warn_days: i64,
    #[arg(long, conflicts_with = "prometheus")]
    json: bool,
    /// Print Prometheus metric lines (for the node_exporter textfile collector).
    #[arg(long)]
    prometheus: bool,
}

#[derive(Debug, Args)]
pub struct BundleArgs {
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// Intermediate certificates to append after the certificate.
    #[arg(long)]
    chain: Vec<PathBuf>,
    /// The combined file to write (0600: it holds the key).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct K8sSecretArgs {
    /// The Secret's name.
    name: String,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    namespace: Option<String>,
    /// File to write (0600). Without it, or with `-`, the manifest goes to standard output
    /// (e.g. to pipe into kubectl apply), as `kubectl create secret tls … -o yaml` prints it.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct TrustArgs {
    /// The CA certificate [default: DATA_DIR/ca/root.crt].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Data folder holding the local CA [default: ./tlsgate-data; env: TLSGATE_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Use this folder as the system store (no update command is run for it).
    #[arg(long, value_name = "DIR")]
    system_store: Option<PathBuf>,
    /// Leave the system trust store alone.
    #[arg(long)]
    no_system: bool,
    /// NSS database folder to change (repeatable) instead of the discovered Chromium/Firefox ones.
    #[arg(long = "nss-db", value_name = "DIR")]
    nss_dbs: Vec<PathBuf>,
    /// Leave NSS databases alone.
    #[arg(long)]
    no_nss: bool,
    /// Do not ask before changing system files.
    #[arg(long)]
    yes: bool,
    #[arg(long)]
    json: bool,
}

fn parse_key_algorithm(text: &str) -> Result<KeyAlgorithm, String> {
    KeyAlgorithm::from_name(text).ok_or_else(|| {
        let valid: Vec<&str> = KeyAlgorithm::ALL.iter().map(|a| a.name()).collect();
        format!("unknown key type `{text}`; use one of {}", valid.join(", "))
    })
}

/// An error for people: one line, exit 2.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure(error.to_string())
    }
}

type Outcome = Result<ExitCode, Failure>;

pub fn run(command: CertCommand) -> ExitCode {
    let result = match command {
        CertCommand::SelfSigned(args) => self_signed(args),
        CertCommand::Ca(CaCommand::Init(args)) => ca_init(args),
        CertCommand::Ca(CaCommand::Issue(args)) => ca_issue(args),
        CertCommand::Ca(CaCommand::Crl(args)) => ca_crl(args),
        CertCommand::Csr(args) => csr(args),
        CertCommand::Inspect(args) => inspect(args),
        CertCommand::Verify(args) => verify_command(args),
        CertCommand::Expiry(args) => expiry_command(args),
        CertCommand::Bundle(args) => bundle_command(args),
        CertCommand::K8sSecret(args) => k8s_secret(args),
        CertCommand::Trust(args) => trust_command(args, true),
        CertCommand::Untrust(args) => trust_command(args, false),
    };
    result.unwrap_or_else(|Failure(message)| {
        eprintln!("error: {message}");
        ExitCode::from(2)
    })
}

/// Names as given on the command line: normalised DNS names, wildcards or IPs.
fn checked_names(names: &[String]) -> Result<Vec<String>, Failure> {
    names
        .iter()
        .map(|name| {
            normalize_dns_name(name).map_err(|_| {
                Failure(format!(
                    "`{name}` is not a valid DNS name, wildcard or IP address"
                ))
            })
        })
        .collect()
}

/// As [`checked_names`], and email addresses (`alice@example.com`, an rfc822Name SAN).
fn checked_client_names(names: &[String]) -> Result<Vec<String>, Failure> {
    names
        .iter()
        .map(|name| match name.rsplit_once('@') {
            Some((local, domain))
                if !local.is_empty()
                    && !local.contains(['@', ' ', '/'])
                    && !local.chars().any(char::is_control) =>
            {
                normalize_dns_name(domain)
                    .ok()
                    .filter(|d| !d.starts_with("*.") && d.parse::<std::net::IpAddr>().is_err())
                    .map(|domain| format!("{local}@{domain}"))
                    .ok_or_else(|| Failure(format!("`{name}` is not a valid email address")))
            }
            Some(_) => Err(Failure(format!("`{name}` is not a valid email address"))),
            None => checked_names(std::slice::from_ref(name)).map(|mut n| n.remove(0)),
        })
        .collect()
}

fn checked_days(days: u64) -> Result<Duration, Failure> {
    if !(1..=36_500).contains(&days) {
        return Err(Failure(format!("--days {days}: use 1 to 36500")));
    }
    Ok(Duration::from_secs(days * DAY))
}

/// The base of output file names: `*.example.com` → `_wildcard.example.com`.
fn file_stem(name: &str) -> Result<String, Failure> {
    let stem = match name.strip_prefix("*.") {
        Some(rest) => format!("_wildcard.{rest}"),
        None => name.to_owned(),
    };
    validate_path_component(&stem)?;
    Ok(stem)
}

fn existing_dir(dir: &Path) -> Result<(), Failure> {
    if !dir.is_dir() {
        return Err(Failure(format!("{}: no such folder", dir.display())));
    }
    Ok(())
}

/// The `--out` folder, created with its parents (mode 0700: keys go there) if missing. An
/// existing folder is left as it is.
fn out_dir(dir: &Path) -> Result<(), Failure> {
    ensure_private_dir(dir)?;
    existing_dir(dir)
}

/// Writes several files as one unit (see [`write_files`]).
fn write_all(files: &[(PathBuf, &str, u32)], force: bool) -> Result<(), Failure> {
    let files: Vec<(PathBuf, &[u8], u32)> = files
        .iter()
        .map(|(path, text, mode)| (path.clone(), text.as_bytes(), *mode))
        .collect();
    Ok(write_files(&files, force)?)
}

#[derive(Serialize)]
struct Written {
    certificate: CertInfo,
    files: Vec<WrittenFile>,
}

#[derive(Serialize)]
struct WrittenFile {
    path: PathBuf,
    holds: &'static str,
    mode: String,
}

fn print_written(title: &str, info: &CertInfo, files: Vec<WrittenFile>, json: bool) -> ExitCode {
    if json {
        let written = Written {
            certificate: info.clone(),
            files,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&written).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    println!("{title}");
    println!("  subject      {}", info.subject);
    println!("  names        {}", info.san_list());
    println!("  not before   {}", format_time(info.not_before));
    println!(
        "  not after    {} ({} days)",
        format_time(info.not_after),
        info.lifetime_secs() / DAY as i64
    );
    println!("  key          {}", info.key_description());
    for file in files {
        println!(
            "  {:<12} {} ({})",
            file.holds,
            file.path.display(),
            file.mode
        );
    }
    ExitCode::SUCCESS
}

fn issued_files(
    out: &Path,
    stem: &str,
    issued: &IssuedCertificate,
    chain: &str,
) -> Vec<(PathBuf, String, u32, &'static str)> {
    vec![
        (
            out.join(format!("{stem}.key")),
            issued.key_pem.clone(),
            SECRET_MODE,
            "private key",
        ),
        (
            out.join(format!("{stem}.crt")),
            format!("{}{chain}", issued.cert_pem),
            PUBLIC_MODE,
            "certificate",
        ),
        (
            out.join(format!("{stem}.pem")),
            format!("{}{chain}{}", issued.cert_pem, issued.key_pem),
            SECRET_MODE,
            "combined",
        ),
    ]
}

fn write_issued(
    files: Vec<(PathBuf, String, u32, &'static str)>,
    force: bool,
) -> Result<Vec<WrittenFile>, Failure> {
    let plan: Vec<(PathBuf, &str, u32)> = files
        .iter()
        .map(|(p, c, m, _)| (p.clone(), c.as_str(), *m))
        .collect();
    write_all(&plan, force)?;
    Ok(files
        .into_iter()
        .map(|(path, _, mode, holds)| WrittenFile {
            path,
            holds,
            mode: format!("{mode:04o}"),
        })
        .collect())
}

fn self_signed(args: SelfSignedArgs) -> Outcome {
    let names = checked_names(&args.names)?;
    let lifetime = checked_days(args.days)?;
    let stem = file_stem(&names[0])?;
    let issued = generate::self_signed(&names, lifetime, args.key.algorithm)?;
    let info = CertInfo::parse(&issued.der)?;
    out_dir(&args.output.out)?;
    let files = write_issued(
        issued_files(&args.output.out, &stem, &issued, ""),
        args.output.force,
    )?;
    Ok(print_written(
        "Created a self-signed certificate",
        &info,
        files,
        args.output.json,
    ))
}

fn ca_init(args: CaInitArgs) -> Outcome {
    let lifetime = checked_days(args.days)?;
    let permitted = checked_names(&args.permitted)?;
    if let Some(bad) = permitted
        .iter()
        .find(|d| d.starts_with("*.") || d.parse::<std::net::IpAddr>().is_ok())
    {
        return Err(Failure(format!(
            "--permit {bad}: give a DNS domain (it covers its subdomains); wildcards and IPs are not name constraints"
        )));
    }
    if args.name.trim().is_empty() {
        return Err(Failure("--name must not be empty".into()));
    }
    out_dir(&args.out)?;
    let ca = CertificateAuthority::new_constrained(
        &args.name,
        lifetime,
        args.key.algorithm,
        &permitted,
    )?;
    let info = CertInfo::parse(&ca.cert_der)?;
    let files = vec![
        (args.out.join("ca.key"), ca.key_pem(), SECRET_MODE, "CA key"),
        (
            args.out.join("ca.crt"),
            ca.cert_pem.clone(),
            PUBLIC_MODE,
            "CA cert",
        ),
    ];
    let written = write_issued(files, args.force)?;
    let code = print_written(
        "Created a private CA (CA:TRUE, pathlen 0)",
        &info,
        written,
        args.json,
    );
    if !args.json {
        if !permitted.is_empty() {
            println!("  may issue    only for {}", permitted.join(", "));
        }
        println!(
            "  next         tlsgate cert ca issue NAME --ca {}",
            args.out.display()
        );
    }
    Ok(code)
}

/// Reads a CA folder: ca.crt + ca.key, or root.crt + root.key.
fn load_ca_dir(dir: &Path) -> Result<CertificateAuthority, Failure> {
    existing_dir(dir)?;
    for (cert, key) in [("ca.crt", "ca.key"), ("root.crt", "root.key")] {
        let (cert, key) = (dir.join(cert), dir.join(key));
        if cert.exists() && key.exists() {
            let read = |p: &Path| {
                crate::certs::pem::read_capped_text(p).map_err(|e| Failure(e.to_string()))
            };
            return CertificateAuthority::from_pem(&read(&cert)?, &read(&key)?)
                .map_err(|e| Failure(format!("{}: {e}", dir.display())));
        }
    }
    Err(Failure(format!(
        "{}: no CA here (expected ca.crt and ca.key; create one with `tlsgate cert ca init --out {}`)",
        dir.display(),
        dir.display()
    )))
}

fn ca_crl(args: CaCrlArgs) -> Outcome {
    let lifetime = checked_days(args.days)?;
    let ca = load_ca_dir(&args.ca)?;
    let list_path = args.ca.join("revoked.txt");
    let number_path = args.ca.join("crlnumber");
    let read = |path: &Path| match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Failure(format!("{}: {e}", path.display()))),
    };
    // revoked.txt: one `SERIAL_HEX UNIX_SECONDS` line per revoked certificate.
    let mut revoked: Vec<(Vec<u8>, time::OffsetDateTime)> = Vec::new();
    for line in read(&list_path)?.lines().filter(|l| !l.trim().is_empty()) {
        let bad = || Failure(format!("{}: unreadable line `{line}`", list_path.display()));
        let (serial, at) = line.trim().split_once(' ').ok_or_else(bad)?;
        let serial = hex_bytes(serial).ok_or_else(bad)?;
        let at = at
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
            .ok_or_else(bad)?;
        revoked.push((serial, at));
    }
    let ca_info = CertInfo::parse(&ca.cert_der)?;
    let now = time::OffsetDateTime::now_utc();
    let mut added = Vec::new();
    for path in &args.revoke {
        let certs = crate::certs::pem::read_certificates(path)
            .map_err(|e| Failure(format!("{}: {e}", path.display())))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Failure(format!("{}: no certificate", path.display())))?;
        let info = CertInfo::parse(leaf)?;
        if info.issuer != ca_info.subject {
            return Err(Failure(format!(
                "{}: issued by `{}`, not by this CA (`{}`)",
                path.display(),
                info.issuer,
                ca_info.subject
            )));
        }
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| Failure(format!("{}: {e}", path.display())))?;
        let serial = parsed.raw_serial().to_vec();
        if !revoked.iter().any(|(s, _)| *s == serial) {
            revoked.push((serial, now));
            added.push(info.subject.clone());
        }
    }
    let number = read(&number_path)?
        .trim()
        .parse::<u64>()
        .unwrap_or(0)
        .saturating_add(1);
    let crl = ca.crl(&revoked, number, lifetime)?;
    let out = args.out.unwrap_or_else(|| args.ca.join("crl.pem"));
    let list: String = revoked
        .iter()
        .map(|(serial, at)| format!("{} {}\n", hex_string(serial), at.unix_timestamp()))
        .collect();
    replace_file(&list_path, &list)?;
    replace_file(&number_path, &format!("{number}\n"))?;
    replace_file(&out, &crl)?;
    println!("Published CRL number {number} ({} revoked)", revoked.len());
    for subject in added {
        println!("  revoked      {subject}");
    }
    println!("  next update  in {} days", args.days);
    println!("  written      {}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.is_empty() || text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes by rename, so a watching tlsgate never reads half a file.
fn replace_file(path: &Path, text: &str) -> Result<(), Failure> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Failure(format!("{}: {e}", path.display())))
}

fn ca_issue(args: CaIssueArgs) -> Outcome {
    // A client certificate names a user or service: a DNS-style name, or an email address.
    let names = if args.client {
        checked_client_names(&args.names)?
    } else {
        checked_names(&args.names)?
    };
    let lifetime = checked_days(args.days)?;
    let ca = load_ca_dir(&args.ca)?;
    let usage = if args.client {
        Usage::Client
    } else {
        Usage::Server
    };
    let issued = ca.issue(&names, lifetime, args.key.algorithm, usage)?;
    let info = CertInfo::parse(&issued.der)?;
    let stem = file_stem(&names[0])?;
    out_dir(&args.output.out)?;
    let files = write_issued(
        issued_files(&args.output.out, &stem, &issued, ""),
        args.output.force,
    )?;
    let title = if args.client {
        "Issued a client certificate (clientAuth) for mTLS"
    } else {
        "Issued a server certificate (serverAuth)"
    };
    Ok(print_written(title, &info, files, args.output.json))
}

fn csr(args: CsrArgs) -> Outcome {
    let names = checked_names(&args.names)?;
    let stem = file_stem(&names[0])?;
    let (csr_pem, key_pem) = generate::csr(&names, args.key.algorithm)?;
    out_dir(&args.output.out)?;
    let key_path = args.output.out.join(format!("{stem}.key"));
    let csr_path = args.output.out.join(format!("{stem}.csr"));
    write_all(
        &[
            (key_path.clone(), key_pem.as_str(), SECRET_MODE),
            (csr_path.clone(), csr_pem.as_str(), PUBLIC_MODE),
        ],
        args.output.force,
    )?;
    if args.output.json {
        let value = serde_json::json!({
            "names": names,
            "key_type": args.key.algorithm.name(),
            "csr": csr_path,
            "key": key_path,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        println!("Created a certificate signing request");
        println!("  names        {}", names.join(", "));
        println!("  key          {}", args.key.algorithm);
        println!(
            "  request      {} (give this to the CA)",
            csr_path.display()
        );
        println!("  private key  {} (0600, keep it here)", key_path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(format!("cannot start the async runtime: {e}")))
}

/// The chain in a file or sent by a server.
fn load_chain(target: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, Failure> {
    if target.starts_with("https://") {
        let (host, port) = remote::parse_url(target)
            .ok_or_else(|| Failure(format!("`{target}` is not an https://HOST[:PORT] URL")))?;
        return Ok(runtime()?.block_on(remote::fetch_chain(&host, port, REMOTE_TIMEOUT))?);
    }
    Ok(read_certificates(Path::new(target))?)
}

#[derive(Serialize)]
struct Inspection {
    source: String,
    chain_in_order: bool,
    certificates: Vec<InspectedCert>,
}

#[derive(Serialize)]
struct InspectedCert {
    #[serde(flatten)]
    info: CertInfo,
    days_left: i64,
    role: &'static str,
}

fn role(info: &CertInfo, index: usize) -> &'static str {
    match (info.is_ca, info.self_issued, index) {
        (true, true, _) => "root CA",
        (true, false, _) => "intermediate CA",
        (false, _, 0) => "leaf",
        (false, _, _) => "leaf (out of place)",
    }
}

fn inspect(args: InspectArgs) -> Outcome {
    let chain = load_chain(&args.target)?;
    let infos = chain
        .iter()
        .map(CertInfo::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let in_order = chain_in_order(&infos);
    let now = unix_now();
    let certificates: Vec<InspectedCert> = infos
        .into_iter()
        .enumerate()
        .map(|(index, info)| InspectedCert {
            days_left: info.remaining_secs(now).div_euclid(DAY as i64),
            role: role(&info, index),
            info,
        })
        .collect();
    if args.json {
        let report = Inspection {
            source: args.target,
            chain_in_order: in_order,
            certificates,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let count = certificates.len();
    for (index, cert) in certificates.iter().enumerate() {
        let info = &cert.info;
        println!("Certificate {} of {count}: {}", index + 1, cert.role);
        println!("  subject      {}", info.subject);
        println!("  issuer       {}", info.issuer);
        println!("  serial       {}", info.serial);
        println!("  names        {}", info.san_list());
        let validity = if cert.days_left < 0 {
            format!("EXPIRED {} days ago", -cert.days_left)
        } else {
            format!("{} days left", cert.days_left)
        };
        println!(
            "  valid        {} → {} ({validity})",
            format_time(info.not_before),
            format_time(info.not_after)
        );
        println!("  key          {}", info.key_description());
        println!("  signature    {}", info.signature_algorithm);
        println!("  SHA-256      {}", info.sha256_fingerprint);
        if !info.extended_key_usage.is_empty() {
            println!("  usage        {}", info.extended_key_usage.join(", "));
        }
        println!();
    }
    if count > 1 {
        println!(
            "Chain order: {}",
            if in_order {
                "OK (each certificate is issued by the next)"
            } else {
                "NOT IN ORDER (a certificate is not issued by the one after it)"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn verify_command(args: VerifyArgs) -> Outcome {
    let chain = read_certificates(&args.cert)?;
    let leaf = CertInfo::parse(&chain[0])?;
    let roots = crate::certs::verify::load_roots(args.ca.as_deref())?;
    let host = match &args.host {
        Some(host) => Some(
            normalize_dns_name(host)
                .map_err(|_| Failure(format!("--host `{host}` is not a valid host name or IP")))?,
        ),
        None => None,
    };
    let key = args.key.as_deref().map(read_private_key).transpose()?;
    let checks = verify::verify(
        &chain,
        &leaf,
        leaf.is_client_only(),
        roots,
        host.as_deref(),
        key,
    );
    let all_ok = checks.iter().all(|c| c.ok);
    if args.json {
        let value = serde_json::json!({ "certificate": args.cert, "ok": all_ok, "checks": checks });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        for check in &checks {
            println!(
                "{} {:<6} {}",
                if check.ok { "PASS" } else { "FAIL" },
                check.check,
                check.detail
            );
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn expiry_command(args: ExpiryArgs) -> Outcome {
    let mut entries: Vec<Entry> = Vec::new();
    let now = unix_now();
    for argument in &args.paths {
        if argument.starts_with("https://") {
            let fetched = remote::parse_url(argument)
                .ok_or_else(|| format!("`{argument}` is not an https://HOST[:PORT] URL"))
                .and_then(|(host, port)| {
                    runtime()
                        .map_err(|Failure(m)| m)?
                        .block_on(remote::fetch_chain(&host, port, REMOTE_TIMEOUT))
                        .map_err(|e| e.to_string())
                });
            match fetched {
                // The leaf is what expires in practice; intermediates are the CA's business.
                Ok(chain) => entries.extend(expiry::entries_for_chain(
                    argument,
                    &chain[..1],
                    args.warn_days,
                    now,
                )),
                Err(error) => entries.push(Entry::error(argument, error)),
            }
            continue;
        }
        let from_folder = Path::new(argument).is_dir();
        match expiry::expand(argument) {
            Ok(paths) => {
                let before = entries.len();
                for path in paths {
                    entries.extend(expiry::check_file(&path, args.warn_days, from_folder));
                }
                if entries.len() == before {
                    entries.push(Entry::error(argument, "no certificate found"));
                }
            }
            Err(error) => entries.push(Entry::error(argument, error)),
        }
    }
    if args.prometheus {
        print!("{}", expiry::prometheus(&entries));
    } else if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).unwrap_or_default()
        );
    } else {
        for entry in &entries {
            match (&entry.error, entry.days_left, &entry.not_after) {
                (Some(error), _, _) => {
                    println!("{:<8} {:>10}  {}", entry.status.label(), "", error)
                }
                (None, Some(days), Some(not_after)) => println!(
                    "{:<8} {:>5} days  {}  {}  {}",
                    entry.status.label(),
                    days,
                    &not_after[..10.min(not_after.len())],
                    entry.source,
                    entry.subject.as_deref().unwrap_or("")
                ),
                _ => println!("{:<8} {}", entry.status.label(), entry.source),
            }
        }
    }
    Ok(ExitCode::from(expiry::exit_code(&entries)))
}

fn bundle_command(args: BundleArgs) -> Outcome {
    let chain: Vec<&Path> = args.chain.iter().map(PathBuf::as_path).collect();
    let pem = bundle::combined_pem(&args.cert, &args.key, &chain)?;
    write_new(&args.out, pem.as_bytes(), SECRET_MODE, args.force)?;
    println!(
        "Wrote {} (certificate, {} chain file(s), key; mode 0600)",
        args.out.display(),
        chain.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Kubernetes object names: DNS-1123 subdomains.
fn k8s_name(kind: &str, name: &str) -> Result<(), Failure> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid {
        return Err(Failure(format!(
            "{kind} `{name}` is not a valid Kubernetes name (lower-case letters, digits, '-' and '.')"
        )));
    }
    Ok(())
}

fn k8s_secret(args: K8sSecretArgs) -> Outcome {
    k8s_name("secret name", &args.name)?;
    if let Some(namespace) = &args.namespace {
        k8s_name("namespace", namespace)?;
    }
    let manifest =
        bundle::k8s_secret(&args.name, args.namespace.as_deref(), &args.cert, &args.key)?;
    match args.out.filter(|out| out.as_os_str() != "-") {
        None => print!("{manifest}"),
        Some(out) => {
            write_new(&out, manifest.as_bytes(), SECRET_MODE, args.force)?;
            eprintln!(
                "Wrote {} (kubernetes.io/tls Secret `{}`; mode 0600)",
                out.display(),
                args.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn confirm(question: &str) -> Result<bool, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure(
            "not changing trust stores without confirmation: run in a terminal or pass --yes"
                .into(),
        ));
    }
    // The question goes to stderr so `--json` output stays clean.
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn trust_command(args: TrustArgs, install: bool) -> Outcome {
    let ca_file = match &args.ca {
        Some(file) => file.clone(),
        None => args
            .data_dir
            .clone()
            .or_else(|| std::env::var_os("TLSGATE_DATA_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_DATA_DIR))
            .join("ca/root.crt"),
    };
    let chain = read_certificates(&ca_file)?;
    let info = CertInfo::parse(&chain[0])?;
    if !info.is_ca {
        return Err(Failure(format!(
            "{}: not a CA certificate (CA:FALSE)",
            ca_file.display()
        )));
    }
    let system = if args.no_system {
        None
    } else if let Some(dir) = &args.system_store {
        existing_dir(dir)?;
        Some(SystemStore {
            dir: dir.clone(),
            update_command: None,
        })
    } else {
        SystemStore::detect()
    };
    let nss: Vec<PathBuf> = if args.no_nss {
        Vec::new()
    } else if !args.nss_dbs.is_empty() {
        args.nss_dbs.clone()
    } else {
        std::env::var_os("HOME")
            .map(|home| trust::discover_nss_databases(Path::new(&home)))
            .unwrap_or_default()
    };
    if system.is_none() && nss.is_empty() {
        return Err(Failure(
            "nothing to change: no system trust store recognised and no NSS database found (use --system-store or --nss-db)".into(),
        ));
    }
    if !args.yes {
        let mut targets: Vec<String> = system.iter().map(|s| s.dir.display().to_string()).collect();
        targets.extend(
            nss.iter()
                .map(|db| format!("NSS database {}", db.display())),
        );
        let verb = if install { "Trust" } else { "Stop trusting" };
        let question = format!(
            "{verb} CA \"{}\" ({}) in: {}?",
            info.subject,
            trust::nickname(&info),
            targets.join(", ")
        );
        if !confirm(&question)? {
            return Err(Failure("nothing changed".into()));
        }
    }
    let changes = if install {
        trust::install(
            &encode_certificates(&chain[..1]),
            &info,
            system.as_ref(),
            &nss,
        )
    } else {
        trust::uninstall(&info, system.as_ref(), &nss)
    };
    let all_ok = changes.iter().all(|c| c.ok);
    if args.json {
        let value = serde_json::json!({ "ca": ca_file, "nickname": trust::nickname(&info), "changes": changes });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        println!("CA {} ({})", info.subject, trust::nickname(&info));
        for change in &changes {
            println!(
                "  {} {}: {}",
                if change.ok { "changed" } else { "FAILED " },
                change.target,
                change.detail
            );
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
