//! `handover`: clustered SIP load balancer and back-to-back user agent.
//!
//! One binary, one subcommand per role. Subcommands appear here as their
//! roles are built; see `docs/architecture.md`.
#![forbid(unsafe_code)]

mod edge;
mod passwd;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use handover_ctl::{calls, status};

/// Clustered SIP load balancer and B2BUA: edges route every datagram of a
/// call to the worker that owns it; workers bridge calls and transfers and
/// replicate them with Raft.
#[derive(Debug, Parser)]
#[command(name = "handover", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text (coloured only on a terminal) or as JSON objects,
    /// one a line, for log collectors such as Kubernetes'.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

impl LogFormat {
    /// Its name on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// The `--log-format` this process was started with (set once in `main`;
/// `up` passes it on to its children).
pub(crate) static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a TOML configuration file and print the effective settings.
    ///
    /// Exits 0 when the file is valid, 1 (naming the file, line, column and
    /// key) when it is not.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Run a stateless edge: route every datagram of a call to one backend.
    ///
    /// Requests from outside go to the backend that owns the call's shard
    /// (consistent hashing of the Call-ID, or the `k` key in our own Route or
    /// Request-URI); responses follow their Via. Flags override the
    /// `[edge]` section of --config.
    Edge(handover_config::cli::edge::EdgeArgs),
    /// Run a B2BUA worker behind an edge.
    Worker(handover_config::cli::worker::WorkerArgs),
    /// Run a whole local cluster (an edge and workers) in the foreground.
    Up(handover_up::UpArgs),
    /// Generate SIP load: play callers, callees and transfer targets
    /// against a SIP system and report rates, latency and failures.
    ///
    /// Exits 0 when every call succeeded, 1 otherwise.
    Load(handover_load::cli::LoadArgs),
    /// Show a replicated cluster: members, leader, term, commit index,
    /// shard-map epoch and calls per worker, from any worker's gRPC port.
    Status(status::StatusArgs),
    /// List the cluster's confirmed calls (any worker's replica): Call-IDs,
    /// owner, age, caller, callee and target; filter by user, age, worker.
    Calls(calls::CallsArgs),
    /// End a call on both legs (a BYE to each phone), whichever worker
    /// owns it, through the replicated log.
    ///
    /// Exits 1 when no confirmed call has that Call-ID.
    Hangup(calls::HangupArgs),
    /// Reload routes, trusted peers and identity headers from a worker's
    /// configuration file (its `--config`), checked first, and apply them
    /// on every worker through the replicated log; calls in progress keep
    /// their targets. SIGHUP to a worker does the same.
    ///
    /// Exits 1 when the file does not check (its line is printed; nothing
    /// changes) or the cluster did not commit it.
    Reload(calls::ReloadArgs),
    /// Remove a worker from a running cluster for good: it drains (its
    /// shards and calls go to the others) and stops, and the cluster's
    /// leader removes it from Raft (a dead worker is removed once declared
    /// dead). Add workers with `handover worker --join`.
    ///
    /// Exits 1 when the removal was not applied within 30 s.
    Leave(calls::LeaveArgs),
    /// Adds workers to a running `handover up`, or removes some: new ones
    /// join the cluster and take their share of the shards; removed ones
    /// (the highest ids) drain, stop and leave Raft. No call is lost.
    Scale(handover_up::scale::ScaleArgs),
    /// Add or change a user in a users file of digest authentication
    /// (`worker --users`): reads the password from standard input, writes
    /// `USER REALM HA1-MD5 HA1-SHA-256` (no password is stored).
    Passwd(passwd::PasswdArgs),
    /// Drain a replicated worker on this machine: it hands its shards and
    /// calls to the others and serves none until restarted (SIGTERM does
    /// the same, then exits). Over the worker's local admin socket
    /// (`admin-ID.sock` in its data directory; same user or root only).
    ///
    /// Exits 0 once drained, 1 when not drained within 10 s.
    Drain(status::DrainArgs),
    /// Fault injection for tests, over the worker's admin socket (builds
    /// with the cargo feature `fault-injection` only).
    #[cfg(feature = "fault-injection")]
    #[command(hide = true)]
    Fault(status::FaultArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = LOG_FORMAT.set(cli.log_format);
    match cli.command {
        Command::CheckConfig { file } => match handover_config::Config::load(&file) {
            Ok(c) => {
                println!("# {}: valid; effective configuration:", file.display());
                print!("{}", c.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Worker(args) => match worker::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.is::<handover_worker::sip::ReplicaEnded>() => {
                eprintln!("error: {e:#}");
                ExitCode::from(handover_worker::sip::ReplicaEnded::EXIT_CODE)
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Load(args) => match handover_load::cli::run(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Status(args) => match status::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("handover status: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Calls(args) => match calls::calls(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("handover calls: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Hangup(args) => match calls::hangup(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("handover hangup: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Reload(args) => match calls::reload(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("handover reload: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Leave(args) => match calls::leave(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("handover leave: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Scale(args) => match handover_up::scale::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("handover scale: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Passwd(args) => match passwd::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("handover passwd: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Drain(args) => match status::drain(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("handover drain: {e:#}");
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "fault-injection")]
        Command::Fault(args) => match status::fault(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("handover fault: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Up(args) => match up(args, cli.log_format) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Edge(args) => match edge::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `handover up`, logging as it was asked to, and its children too.
fn up(args: handover_up::UpArgs, log_format: LogFormat) -> anyhow::Result<()> {
    init_tracing();
    handover_up::run(args, log_format.name())
}

/// Logs to stderr; `RUST_LOG` overrides the default level (info). Colour
/// codes only when stderr is a terminal: in a file or a collector they
/// are noise.
fn init_tracing() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match LOG_FORMAT.get().copied().unwrap_or(LogFormat::Text) {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
}
