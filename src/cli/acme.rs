//! `tlsgate acme issue|renew|list`: the same ordering and scheduling the server runs, from
//! the command line, with or without a running server.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::{fail, CommonArgs};
use crate::acme::challenges::{AlpnChallengeResolver, ACME_TLS_ALPN};
use crate::acme::manager::{AskCa, OnChange};
use crate::acme::{AcmeManager, ChallengeStore};
use crate::config::{normalize_dns_name, AcmeChallenge, Settings};

#[derive(Debug, Subcommand)]
pub enum AcmeCommand {
    /// Order a certificate now (HTTP-01 is answered by a running server, or by a temporary
    /// listener on the configured HTTP address).
    #[command(
        after_help = "Example:\n  tlsgate acme issue example.com www.example.com -c tlsgate.yaml\n\nExit codes: 0 issued, 1 the order failed, 2 bad input or configuration"
    )]
    Issue(IssueArgs),
    /// Renew the configured certificates that are due (or all, with --force).
    #[command(
        after_help = "Example:\n  tlsgate acme renew -c tlsgate.yaml\n  tlsgate acme renew --force example.com -c tlsgate.yaml\n\nExit codes: 0 nothing failed, 1 a renewal failed, 2 bad input or configuration"
    )]
    Renew(RenewArgs),
    /// Each managed certificate: issuer, expiry, next renewal and why.
    #[command(
        after_help = "Example:\n  tlsgate acme list -c tlsgate.yaml --json\n\nExit codes: 0 listed, 2 bad input or configuration"
    )]
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
    /// Order from the staging CA (for Let's Encrypt) into a scratch folder; nothing is kept.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// Only these certificates (by any of their names).
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    /// Renew even if not due.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(command: AcmeCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(format!("cannot start the async runtime: {error}")),
    };
    runtime.block_on(async move {
        match command {
            AcmeCommand::Issue(args) => issue(args).await,
            AcmeCommand::Renew(args) => renew(args).await,
            AcmeCommand::List(args) => list(args).await,
        }
    })
}

fn load(common: &CommonArgs) -> Result<Settings, String> {
    let settings = common.load().map_err(|e| e.to_string())?;
    if settings.acme.is_none() {
        return Err(
            "the configuration has no `acme:` section (directory, email, agree_tos)".into(),
        );
    }
    Ok(settings)
}

/// Tells a running server (pid file in the data folder) to re-read its certificates.
fn notify_server(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join(super::PID_FILE)).ok()?;
    let raw: i32 = text.trim().parse().ok()?;
    // A stale pid file must not make us signal (and, by default, kill) some other program.
    let name = std::fs::read_to_string(format!("/proc/{raw}/comm")).ok()?;
    if name.trim() != "tlsgate" {
        return None;
    }
    let pid = rustix::process::Pid::from_raw(raw)?;
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).ok()?;
    Some(pid.as_raw_nonzero().get())
}

/// Answers challenges while a command runs, unless a server on the same address already does
/// (it reads HTTP-01 answers from the data folder).
async fn temporary_responder(
    settings: &Settings,
    store: Arc<ChallengeStore>,
) -> Option<tokio::task::JoinHandle<()>> {
    let acme = settings.acme.as_ref()?;
    match acme.challenge {
        AcmeChallenge::Dns01 => None,
        AcmeChallenge::Http01 => {
            let listener = match tokio::net::TcpListener::bind(settings.http.listen).await {
                Ok(listener) => listener,
                Err(_) => {
                    eprintln!(
                        "{} is in use: the running server answers the HTTP-01 challenge",
                        settings.http.listen
                    );
                    return None;
                }
            };
            Some(tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(
                            move |request: hyper::Request<hyper::body::Incoming>| {
                                let response = store.http_response(&request).unwrap_or_else(|| {
                                    crate::http::error::HttpError::NotFound.into_response()
                                });
                                std::future::ready(Ok::<_, std::convert::Infallible>(response))
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                            .await;
                    });
                }
            }))
        }
        AcmeChallenge::TlsAlpn01 => {
            let listener = match tokio::net::TcpListener::bind(settings.listen).await {
                Ok(listener) => listener,
                Err(_) => {
                    eprintln!(
                        "{} is in use: a running server renews its own certificates; use http-01 or dns-01 to order from the command line while it runs",
                        settings.listen
                    );
                    return None;
                }
            };
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .ok()?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(AlpnChallengeResolver(store)));
            config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            Some(tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let _ = acceptor.accept(tcp).await;
                    });
                }
            }))
        }
    }
}

fn manager(
    settings: &Settings,
    certificates: Vec<Vec<String>>,
    store: Arc<ChallengeStore>,
) -> Option<AcmeManager> {
    let data_dir = settings.data_dir.clone();
    let on_change: OnChange = Arc::new(move || {
        if let Some(pid) = notify_server(&data_dir) {
            println!("told the running server (pid {pid}) to load the new certificate");
        }
    });
    let mut manager = AcmeManager::new(settings, store, on_change)?;
    manager.certificates = certificates;
    Some(manager)
}

async fn issue(args: IssueArgs) -> ExitCode {
    let mut settings = match load(&args.common) {
        Ok(settings) => settings,
        Err(error) => return fail(error),
    };
    let mut names = Vec::new();
    for name in &args.names {
        match normalize_dns_name(name) {
            Ok(name) => names.push(name),
            Err(error) => return fail(error),
        }
    }
    let scratch = if args.dry_run {
        let Ok(dir) = tempfile_dir() else {
            return fail("cannot make a scratch folder for --dry-run");
        };
        if let Some(acme) = settings.acme.as_mut() {
            if acme.directory == crate::config::LETSENCRYPT {
                acme.directory = crate::config::LETSENCRYPT_STAGING.into();
            }
            acme.deploy_hook = None;
        }
        let real_data_dir = std::mem::replace(&mut settings.data_dir, dir.clone());
        Some((dir, real_data_dir))
    } else {
        None
    };
    // HTTP-01 answers go to the real data folder, where a running server looks for them.
    let answers_dir = scratch
        .as_ref()
        .map(|(_, real)| real.clone())
        .unwrap_or_else(|| settings.data_dir.clone());
    let store = Arc::new(ChallengeStore::shared(&answers_dir));
    let responder = temporary_responder(&settings, store.clone()).await;
    let Some(manager) = manager(&settings, vec![names.clone()], store) else {
        return fail("no acme settings");
    };
    let started = std::time::Instant::now();
    let result = manager.issue(&names).await;
    if let Some(responder) = responder {
        responder.abort();
    }
    let code = match result {
        Ok(live) => {
            let verb = if args.dry_run {
                "Dry run: issued (not kept)"
            } else {
                "Issued"
            };
            println!(
                "{verb} {} in {:.1}s",
                names.join(", "),
                started.elapsed().as_secs_f64()
            );
            if !args.dry_run {
                println!("  certificate  {}", live.fullchain.display());
                println!("  private key  {} (0600)", live.privkey.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    };
    if let Some((dir, _)) = scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    code
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("tlsgate-dry-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn configured(settings: &Settings, filter: &[String]) -> Vec<Vec<String>> {
    settings
        .tls
        .certificates
        .iter()
        .filter_map(|c| match &c.source {
            crate::config::CertSource::Acme { acme, .. } => Some(acme.names.clone()),
            _ => None,
        })
        .filter(|names| filter.is_empty() || filter.iter().any(|f| names.contains(f)))
        .collect()
}

async fn renew(args: RenewArgs) -> ExitCode {
    let settings = match load(&args.common) {
        Ok(settings) => settings,
        Err(error) => return fail(error),
    };
    let certificates = configured(&settings, &args.names);
    if certificates.is_empty() {
        return fail("no matching `acme:` certificate in the configuration");
    }
    let store = Arc::new(ChallengeStore::shared(&settings.data_dir));
    let Some(manager) = manager(&settings, certificates.clone(), store.clone()) else {
        return fail("no acme settings");
    };
    let mut responder = None;
    let mut failed = false;
    for names in &certificates {
        let plan = manager.plan(names, AskCa::Register).await;
        if !args.force && plan.due > crate::certs::inspect::unix_now() {
            println!(
                "{}: not due (next renewal {}; {})",
                names.join(", "),
                plan.next_renewal,
                plan.reason
            );
            continue;
        }
        if responder.is_none() {
            responder = temporary_responder(&settings, store.clone()).await;
        }
        match manager.issue_if(names, args.force).await {
            Ok((live, true)) => println!(
                "{}: renewed → {}",
                names.join(", "),
                live.fullchain.display()
            ),
            Ok((_, false)) => println!("{}: already renewed by another process", names.join(", ")),
            Err(error) => {
                eprintln!("{}: renewal failed: {error}", names.join(", "));
                failed = true;
            }
        }
    }
    if let Some(responder) = responder {
        responder.abort();
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

async fn list(args: ListArgs) -> ExitCode {
    let settings = match load(&args.common) {
        Ok(settings) => settings,
        Err(error) => return fail(error),
    };
    let certificates = configured(&settings, &[]);
    let store = Arc::new(ChallengeStore::default());
    let Some(manager) = manager(&settings, certificates.clone(), store) else {
        return fail("no acme settings");
    };
    let mut statuses = Vec::new();
    for names in &certificates {
        // The CA is asked for renewal information, but a CA that is down must not hang `list`.
        let plan = match tokio::time::timeout(
            std::time::Duration::from_secs(10),
            manager.plan(names, AskCa::IfRegistered),
        )
        .await
        {
            Ok(plan) => plan,
            Err(_) => manager.plan(names, AskCa::No).await,
        };
        statuses.push(plan);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&statuses).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    for status in &statuses {
        println!("{}", status.names.join(", "));
        println!(
            "  folder        {}",
            settings
                .data_dir
                .join("live")
                .join(&status.lineage)
                .display()
        );
        println!(
            "  issuer        {}",
            status.issuer.as_deref().unwrap_or("(not issued yet)")
        );
        if let Some(not_after) = &status.not_after {
            println!("  expires       {not_after}");
        }
        println!("  next renewal  {}", status.next_renewal);
        println!("  because       {}", status.reason);
    }
    ExitCode::SUCCESS
}
