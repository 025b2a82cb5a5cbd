//! The command tree and what each command prints. This is the binary's edge: errors become
//! messages and exit codes here, and nowhere else.

mod acme;
mod banner;
mod cert;
mod check;
mod hub;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Overrides, Settings};
use crate::server::Server;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure while running (e.g. the runtime could not start)
  2  configuration or start-up error: invalid config, unreadable or mismatched certificate or
     key, address in use; the message names the file, line and field";

#[derive(Debug, Parser)]
#[command(name = "tlsgate", version, about = "HTTPS and secure WebSockets for any backend", after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway. With no config: a local CA and a localhost certificate are created in
    /// the data folder, and HTTPS/WSS answer on 127.0.0.1:8443.
    #[command(after_help = EXIT_CODES)]
    Serve(ServeArgs),
    /// Work with the configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Generate, inspect, verify and watch certificates (no openssl needed).
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Obtain, renew and list ACME certificates (the server does this by itself too).
    #[command(subcommand)]
    Acme(acme::AcmeCommand),
    /// Grade a live HTTPS/WSS deployment (any server): certificate, protocols, ciphers,
    /// HTTP headers and redirect, WebSocket upgrade, echo, ping and idle survival.
    #[command(after_long_help = check::long_help(), after_help = check::AFTER_HELP, args_override_self = true)]
    Check(check::CheckArgs),
    /// Ask the running server to reload (through its admin listener); prints the outcome.
    #[command(
        after_help = "Example:\n  tlsgate reload -c /etc/tlsgate/tlsgate.yaml\n\nExit codes: 0 reloaded, 1 the server refused the reload (the message says why; nothing changed), 2 no server reachable or bad input"
    )]
    Reload(CommonArgs),
    /// Publish to the running server's hub and read its state (through the admin listener).
    #[command(subcommand)]
    Hub(hub::HubCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the configuration (and the certificates it names) and print the effective
    /// configuration, every default filled in.
    #[command(after_help = EXIT_CODES)]
    Check(CommonArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CommonArgs {
    /// YAML configuration file.
    #[arg(
        short = 'c',
        long = "config",
        env = "TLSGATE_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    /// Data folder for the local CA and certificates [default: ./tlsgate-data; env: TLSGATE_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Main listener address, e.g. 0.0.0.0:443 [default: 127.0.0.1:8443; env: TLSGATE_LISTEN].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Plain-HTTP listener address [default: 127.0.0.1:8080; env: TLSGATE_HTTP_LISTEN].
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<String>,
    /// Proxy every request no route matches to this plain-HTTP backend, e.g.
    /// http://127.0.0.1:8000 [env: TLSGATE_UPSTREAM].
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Admin listener (/metrics, /health, /ready, /certificates, POST /reload)
    /// [default: 127.0.0.1:9090; env: TLSGATE_ADMIN_LISTEN].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "TLSGATE_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl CommonArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            data_dir: self.data_dir.clone(),
            listen: self.listen.clone(),
            http_listen: self.http_listen.clone(),
            upstream: self.upstream.clone(),
            admin_listen: self.admin_listen.clone(),
        }
    }

    fn load(&self) -> Result<Settings, config::ConfigError> {
        config::load(
            self.config.as_deref(),
            &self.overrides(),
            &config::process_env,
        )
    }
}

/// Runs the command line; the binary's whole `main`.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Config(ConfigCommand::Check(args)) => config_check(args),
        Command::Cert(command) => cert::run(command),
        Command::Acme(command) => acme::run(command),
        Command::Reload(args) => reload(args),
        Command::Check(args) => check::run(args),
        Command::Hub(command) => hub::run(command),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TLSGATE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn fail(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(2)
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging(args.log_format);
    let overrides = args.common.overrides();
    let settings = match args.common.load() {
        Ok(settings) => settings,
        Err(error) => return fail(error),
    };
    // One worker: a single-threaded runtime, with no work-stealing between threads.
    let built = match settings.limits.workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        workers => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if workers > 1 {
                builder.worker_threads(workers);
            }
            builder.enable_all().build()
        }
    };
    let runtime = match built {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let server = match Server::bind(settings, overrides, shutdown.clone()).await {
            Ok(server) => server,
            Err(error) => return fail(format!("cannot start: {error}")),
        };
        for warning in server.warnings() {
            tracing::warn!("{warning}");
        }
        if !server.is_tls() {
            tracing::warn!("TLS is off: serving plain HTTP and WS, unencrypted");
        }
        print!("{}", banner::render(&server));
        let pid_file = server.settings().data_dir.join(PID_FILE);
        // 0600 whatever the umask (only this user's `tlsgate acme` reads it), and written
        // as a new file renamed into place, so a planted symlink is replaced, not followed.
        let wrote_pid = crate::certs::store::ensure_private_dir(&server.settings().data_dir)
            .and_then(|()| {
                crate::certs::store::write_atomic(
                    &pid_file,
                    format!("{}\n", std::process::id()).as_bytes(),
                    crate::certs::store::SECRET_MODE,
                )
            })
            .is_ok();
        tokio::spawn(wait_for_signal(shutdown, server.reload_handle()));
        server.run().await;
        if wrote_pid {
            let _ = std::fs::remove_file(&pid_file);
        }
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// The running server's pid, in the data folder, so `tlsgate acme` can tell it to reload.
pub const PID_FILE: &str = "tlsgate.pid";

async fn wait_for_signal(shutdown: CancellationToken, reload: crate::control::ReloadHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: finishing in-flight requests"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: finishing in-flight requests"); break; }
            _ = hup.recv() => { tracing::info!("SIGHUP: reloading the configuration and certificates"); reload.trigger(); }
        }
    }
    shutdown.cancel();
}

fn config_check(args: CommonArgs) -> ExitCode {
    let settings = match args.load() {
        Ok(settings) => settings,
        Err(error) => return fail(error),
    };
    let source = settings
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "no config file (defaults and environment)".into());
    for warning in settings.warnings() {
        eprintln!("warning: {warning}");
    }
    if settings.tls.enabled {
        // Load the certificates and build the rustls configs as `serve` does, so whatever it
        // would refuse at start-up is refused here with the same message. Except: the local
        // CA is not created (config check writes nothing); an empty table stands in for it.
        let table = if settings.tls.certificates.is_empty() {
            // `load_certificates` checks this below; the local CA's folder is checked here.
            match crate::tls::check_data_dir(&settings.tls, &settings.data_dir) {
                Ok(warning) => warning.iter().for_each(|w| eprintln!("warning: {w}")),
                Err(error) => return fail(error),
            }
            eprintln!(
                "certificates: none configured; `serve` uses the local development CA in {}",
                settings.data_dir.display()
            );
            crate::tls::CertTable::default()
        } else {
            let loaded = match crate::tls::load_certificates(&settings.tls, &settings.data_dir) {
                Ok(loaded) => loaded,
                Err(error) => return fail(error),
            };
            for summary in &loaded.summaries {
                eprintln!(
                    "certificate {}: {} (expires {}){}",
                    summary.cert_path.display(),
                    if summary.names.is_empty() {
                        "no DNS names".to_owned()
                    } else {
                        summary.names.join(", ")
                    },
                    crate::certs::inspect::format_time(summary.info.not_after),
                    if summary.is_default { ", default" } else { "" }
                );
            }
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            loaded.table
        };
        let challenges = settings
            .acme
            .is_some()
            .then(|| std::sync::Arc::new(crate::acme::ChallengeStore::shared(&settings.data_dir)));
        match crate::tls::TlsEdge::build(&settings.tls, table, challenges.as_ref()) {
            Ok(edge) => {
                for (issuer, at) in edge.configs.load().crl_next_updates() {
                    eprintln!(
                        "client CRL of {issuer}: next update {}",
                        crate::certs::inspect::format_time(at)
                    );
                }
            }
            Err(error) => return fail(error),
        }
    } else {
        eprintln!("warning: TLS is off: the main listener serves plain HTTP and WS");
    }
    print!("{}", config::to_yaml(&settings));
    eprintln!("configuration OK: {source}");
    ExitCode::SUCCESS
}

/// One request to the running server's admin listener: its status and body.
pub(crate) async fn admin_request(
    admin: std::net::SocketAddr,
    method: http::Method,
    path: &str,
    body: bytes::Bytes,
    deadline: std::time::Duration,
) -> Result<(http::StatusCode, String), String> {
    let connect = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(admin),
    );
    let stream = connect
        .await
        .map_err(|_| format!("no answer from {admin}"))?
        .map_err(|e| format!("no tlsgate admin listener on {admin}: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, admin.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(deadline, sender.send_request(request))
        .await
        .map_err(|_| format!("the server did not answer within {}s", deadline.as_secs()))?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Asks the running server (the admin listener of `args`' configuration) one question: its
/// status and body, or the exit code of why it could not be asked (the message printed).
/// `when_off` says what to do instead when the configuration turns the admin listener off.
pub(crate) fn ask_admin(
    args: &CommonArgs,
    when_off: &str,
    method: http::Method,
    path: &str,
    body: bytes::Bytes,
    deadline: std::time::Duration,
) -> Result<(http::StatusCode, String), ExitCode> {
    let settings = args.load().map_err(fail)?;
    let Some(admin) = settings.admin else {
        return Err(fail(format!(
            "the admin listener is off (`admin: off`): {when_off}"
        )));
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| fail(format!("cannot start the async runtime: {error}")))?;
    runtime
        .block_on(admin_request(admin, method, path, body, deadline))
        .map_err(fail)
}

fn reload(args: CommonArgs) -> ExitCode {
    let outcome = ask_admin(
        &args,
        "send SIGHUP to the server instead",
        http::Method::POST,
        "/reload",
        bytes::Bytes::new(),
        std::time::Duration::from_secs(60),
    );
    match outcome {
        Err(code) => code,
        Ok((status, body)) => {
            let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if status.is_success() {
                println!("reloaded: {}", value["message"].as_str().unwrap_or(&body));
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "error: reload refused: {}",
                    value["error"].as_str().unwrap_or(&body)
                );
                ExitCode::from(1)
            }
        }
    }
}
