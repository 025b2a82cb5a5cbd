//! `tlsgate check`: grade a live HTTPS/WSS deployment and print the findings.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::check::findings::Status;
use crate::check::grade::{Grade, RULES};
use crate::check::websocket::{Expect, WsOptions};
use crate::check::{CheckOptions, Report};
use crate::config::units::parse_duration;

pub const AFTER_HELP: &str = "\
Examples:
  tlsgate check https://example.com
  tlsgate check https://localhost:8443/health --ws /ws --cacert tlsgate-data/ca/root.crt
  tlsgate check https://api.internal/health --resolve api.internal:10.0.0.5 --ws /ws/notifications \\
      --token \"$JWT\" --ws-text '{\"type\":\"ping\"}' --ws-expect contains:pong --ws-binary skip --ws-idle 75s

Each finding is one line: ✅ good, ⚠️ worth fixing, ❌ a real problem.

Exit codes:
  0  the grade is at least --min-grade and nothing is ❌
  1  a lower grade, or at least one ❌
  2  bad arguments, or the server could not be reached at all";

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The deployment: https://HOST[:PORT][/path]; the path is the health path that must answer.
    #[arg(value_name = "URL")]
    url: String,
    /// Also check the WebSocket endpoint at this path (wss://), e.g. /ws.
    #[arg(long, value_name = "PATH")]
    ws: Option<String>,
    /// Bearer token: sent as `Authorization: Bearer T`, and on the WebSocket URL as ?token=T.
    #[arg(long, value_name = "T")]
    token: Option<String>,
    /// Query parameter the WebSocket token travels in ("" for the header only).
    #[arg(long, value_name = "NAME", default_value = "token")]
    token_param: String,
    /// Extra request header, repeatable: --header 'Origin: https://app.example.com'.
    #[arg(long = "header", short = 'H', value_name = "K:V")]
    headers: Vec<String>,
    /// Trust this CA file instead of the system roots (a private or local CA).
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Report certificate trust problems as warnings and grade as if trusted.
    #[arg(long)]
    insecure: bool,
    /// Connect to this address instead of the DNS answer: HOST:IP or HOST:PORT:IP.
    #[arg(long, value_name = "HOST:IP")]
    resolve: Option<String>,
    /// The plain-HTTP port whose redirect is checked [default: 80, or 8080 when HTTPS is on 8443].
    #[arg(long, value_name = "PORT")]
    http_port: Option<u16>,
    /// How long the WebSocket stays silent before it must still answer (75s catches proxies
    /// with 60 s read timeouts).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    ws_idle: Duration,
    /// The text message sent on the WebSocket.
    #[arg(long, value_name = "TEXT", default_value = "tlsgate check")]
    ws_text: String,
    /// What must come back for the text message: echo, any, contains:TEXT, or skip.
    #[arg(long, value_name = "EXPECT", default_value = "echo")]
    ws_expect: Expect,
    /// What must come back for a binary message: echo, any, or skip.
    #[arg(long, value_name = "EXPECT", default_value = "echo")]
    ws_binary: Expect,
    /// Lowest passing grade: A+, A, A-, B, C, D, E or F.
    #[arg(long, value_name = "GRADE", default_value = "B")]
    min_grade: Grade,
    /// Time allowed for each network step.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print the whole result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn long_help() -> String {
    format!("{AFTER_HELP}\n\n{RULES}")
}

fn options(args: &CheckArgs) -> Result<CheckOptions, String> {
    let headers = args
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("--header `{h}`: expected NAME: VALUE"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let url = if args.url.contains("://") {
        args.url.clone()
    } else {
        format!("https://{}", args.url)
    };
    let websocket = args.ws.as_ref().map(|path| WsOptions {
        path: if path.starts_with('/') {
            path.clone()
        } else {
            format!("/{path}")
        },
        token: args.token.clone(),
        token_param: Some(args.token_param.clone()).filter(|p| !p.is_empty()),
        headers: headers.clone(),
        text: args.ws_text.clone(),
        expect_text: args.ws_expect.clone(),
        expect_binary: args.ws_binary.clone(),
        idle: args.ws_idle,
        timeout: args.timeout,
    });
    if matches!(args.ws_binary, Expect::Contains(_)) {
        return Err("--ws-binary: expected echo, any or skip".into());
    }
    Ok(CheckOptions {
        url,
        resolve: args.resolve.clone(),
        cacert: args.cacert.clone(),
        insecure: args.insecure,
        headers,
        token: args.token.clone(),
        http_port: args.http_port,
        websocket,
        timeout: args.timeout,
    })
}

pub fn run(args: CheckArgs) -> ExitCode {
    let options = match options(&args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let show_progress = !args.json && std::io::stderr().is_terminal();
    let progress = move |step: &str| {
        if show_progress {
            eprint!("\r\x1b[2K  checking {step}…");
        }
    };
    let result = runtime.block_on(crate::check::run(&options, &progress));
    if show_progress {
        eprint!("\r\x1b[2K");
    }
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let passed = report.grade.grade >= args.min_grade && report.failures() == 0;
    if args.json {
        #[derive(serde::Serialize)]
        struct Verdict<'a> {
            passed: bool,
            min_grade: Grade,
            #[serde(flatten)]
            report: &'a Report,
        }
        let verdict = Verdict {
            passed,
            min_grade: args.min_grade,
            report: &report,
        };
        match serde_json::to_string_pretty(&verdict) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", render(&report, args.min_grade));
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn section_title(section: &str) -> &'static str {
    match section {
        "certificate" => "Certificate",
        "protocols" => "Protocols",
        "ciphers" => "Cipher suites",
        "key exchange" => "Key exchange",
        "http" => "HTTP",
        "websocket" => "WebSocket",
        _ => "Other",
    }
}

/// The human report: sections of findings, then the grade and every reason behind it.
pub fn render(report: &Report, min_grade: Grade) -> String {
    let mut out = format!("tlsgate check {} ({})\n", report.url, report.address);
    let mut section = "";
    let width = report
        .findings
        .iter()
        .map(|f| f.check.chars().count())
        .max()
        .unwrap_or(0);
    for finding in &report.findings {
        if finding.section != section {
            section = finding.section;
            out.push_str(&format!("\n{}\n", section_title(section)));
        }
        // ⚠️ is two code points wide in most terminals but counts as one glyph; pad to align.
        let symbol = match finding.status {
            Status::Warn => "⚠️ ",
            other => other.symbol(),
        };
        out.push_str(&format!(
            "  {symbol} {:<width$}  {}\n",
            finding.check, finding.reason
        ));
    }
    let grade = &report.grade;
    out.push_str(&format!(
        "\nGrade: {}  (score {}/100",
        grade.grade, grade.score
    ));
    if let Some(trusted) = grade.ignoring_trust {
        out.push_str(&format!("; {trusted} if the certificate were trusted"));
    }
    out.push_str(")\n");
    for reason in &grade.reasons {
        out.push_str(&format!("  - {reason}\n"));
    }
    let failures = report.failures();
    let verdict = if grade.grade < min_grade {
        format!(
            "FAIL: grade {} is below --min-grade {min_grade}",
            grade.grade
        )
    } else if failures > 0 {
        format!("FAIL: {failures} finding(s) marked ❌")
    } else {
        format!(
            "PASS (grade {} ≥ {min_grade}, nothing marked ❌)",
            grade.grade
        )
    };
    out.push_str(&format!(
        "\n{verdict}; checked in {:.2} s\n",
        report.elapsed_ms as f64 / 1000.0
    ));
    out
}
