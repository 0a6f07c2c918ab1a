//! `handover load`'s command line, progress line and report, over the
//! engine of this crate.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{IoMode, Mix, Options, Progress, Report};
use clap::Args;

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The system under test (an edge, `handover up`, or any SIP server).
    #[arg(long, default_value = "127.0.0.1:5060")]
    pub target: SocketAddr,
    /// Our address: the system under test must route the users `b`, `xb`,
    /// `ab` and `c` here (e.g. `handover up --route '*=127.0.0.1:5070'`).
    #[arg(long, default_value = "127.0.0.1:5070")]
    pub listen: SocketAddr,
    /// New calls per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Calls in all.
    #[arg(long, default_value_t = 100)]
    pub calls: u64,
    /// Stop starting calls after this many seconds (even if --calls is not
    /// reached).
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// How long each call stays up, milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub hold_ms: u64,
    /// At most this many calls at once.
    #[arg(long, default_value_t = 10_000)]
    pub max_concurrent: u64,
    /// Scenario mix: NAME[=WEIGHT],… of basic, hold, blind, attended.
    #[arg(long, default_value = "basic")]
    pub mix: String,
    /// SIP timer T1, milliseconds.
    #[arg(long, default_value_t = 500)]
    pub t1_ms: u64,
    /// The user that basic and hold calls call: `b` is answered by this
    /// generator itself; another user reaches a callee of the system under
    /// test's (a PBX, a SIPp UAS).
    #[arg(long, default_value = "b")]
    pub callee: String,
    /// Threads, each on its own port (--listen's port + i) with an equal
    /// share of the calls; above 1, only basic and hold calls.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Socket loop: epoll (recvmmsg/sendmmsg), uring (io_uring; refused
    /// with a clear error where the kernel forbids it), or auto (epoll,
    /// which measured better past saturation: docs/benchmarks.md).
    #[arg(long, default_value = "auto")]
    pub io: String,
    /// Print the report as JSON (and no progress line).
    #[arg(long)]
    pub json: bool,
    /// Allow addresses outside 127.0.0.0/8 (load tests stay on loopback
    /// unless told otherwise).
    #[arg(long)]
    pub allow_remote: bool,
}

impl LoadArgs {
    /// The run's options, or a one-line reason why not.
    pub fn options(&self) -> anyhow::Result<Options> {
        for (what, a) in [("--target", self.target), ("--listen", self.listen)] {
            if !a.ip().is_loopback() && !self.allow_remote {
                anyhow::bail!(
                    "{what} {a} is not a loopback address: load tests stay on 127.0.0.0/8 unless you add --allow-remote"
                );
            }
        }
        if !(self.rate > 0.0 && self.rate <= 100_000.0) {
            anyhow::bail!(
                "--rate {} is out of range: above 0, at most 100000",
                self.rate
            );
        }
        if self.calls == 0 {
            anyhow::bail!("--calls 0: nothing to do");
        }
        if !(1..=4000).contains(&self.t1_ms) {
            anyhow::bail!("--t1-ms {} is out of range: 1..=4000", self.t1_ms);
        }
        let mix: Mix = self
            .mix
            .parse()
            .map_err(|e| anyhow::anyhow!("--mix: {e}"))?;
        if !(1..=64).contains(&self.threads) {
            anyhow::bail!("--threads {} is out of range: 1..=64", self.threads);
        }
        if self.threads > 1 && mix.has_transfers() {
            anyhow::bail!(
                "--threads {} plays only basic and hold calls (a transfer's parties share one thread): use --threads 1 with blind or attended",
                self.threads
            );
        }
        let io = match self.io.as_str() {
            "auto" => IoMode::Auto,
            "uring" => IoMode::Uring,
            "epoll" => IoMode::Epoll,
            other => anyhow::bail!("--io {other}: expected auto, uring or epoll"),
        };
        if io == IoMode::Uring && handover_io::uring_available().is_err() {
            anyhow::bail!(
                "--io uring: this kernel or its seccomp profile refuses io_uring; use --io epoll (or auto)"
            );
        }
        Ok(Options {
            io,
            listen: self.listen,
            target: self.target,
            rate: self.rate,
            calls: self.calls,
            duration: self.duration_s.map(Duration::from_secs_f64),
            hold: Duration::from_millis(self.hold_ms),
            max_concurrent: self.max_concurrent.max(1),
            mix,
            t1: Duration::from_millis(self.t1_ms),
            callee: self.callee.clone(),
            threads: self.threads,
        })
    }
}

/// A stop flag raised by Ctrl-C or SIGTERM.
pub fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        s.store(true, Ordering::Relaxed);
    });
    stop
}

/// The progress line.
pub fn progress_line(p: &Progress) -> String {
    let c = p.counts;
    format!(
        "{:6.1}s  started {:>7}  up {:>6}  ok {:>7}  failed {:>5}  {:>7.1} calls/s  retransmissions {}",
        p.elapsed_s, c.started, p.active, c.succeeded, c.failed, p.rate, c.retransmissions
    )
}

/// The summary table.
pub fn summary(r: &Report) -> String {
    let c = r.counts;
    let mut s = String::new();
    s += &format!(
        "calls: {} started, {} answered, {} succeeded, {} failed\n",
        c.started, c.established, c.succeeded, c.failed
    );
    if c.callee_legs_failed > 0 {
        s += &format!(
            "callee legs of other threads' calls that never got their BYE: {}\n",
            c.callee_legs_failed
        );
    }
    s += &format!(
        "rate: {:.1} calls/s offered, {:.1} achieved; {:.1} s in all\n",
        r.offered_rate, r.achieved_rate, r.elapsed_s
    );
    let l = r.setup_latency;
    s += &format!(
        "setup latency (INVITE to 2xx): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
        l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
    );
    s += &format!(
        "datagrams: {} sent, {} received, {} send errors ({}); retransmissions: {}\n",
        r.datagrams_sent, r.datagrams_received, r.send_errors, r.io_mode, c.retransmissions
    );
    if r.starts_skipped > 0 {
        s += &format!(
            "the generator fell behind: {} calls were not started on time (the offered rate was lowered, not burst)\n",
            r.starts_skipped
        );
    }
    s += "\n| scenario | succeeded | failed |\n| --- | ---: | ---: |\n";
    for (name, (ok, bad)) in &r.by_scenario {
        s += &format!("| {name} | {ok} | {bad} |\n");
    }
    if !r.failures.is_empty() {
        s += "\n| failure cause | calls |\n| --- | ---: |\n";
        for (cause, n) in &r.failures {
            s += &format!("| {cause} | {n} |\n");
        }
    }
    s
}

/// Runs a load and prints its report; true when every call succeeded.
/// Ctrl-C or SIGTERM ends it early.
pub fn run(args: &LoadArgs) -> anyhow::Result<bool> {
    run_until(args, &stop_on_signal())
}

/// [`run`], ended early when `stop` is raised.
pub fn run_until(args: &LoadArgs, stop: &AtomicBool) -> anyhow::Result<bool> {
    let opts = args.options()?;
    let tty = std::io::stderr().is_terminal();
    let json = args.json;
    let report = crate::run(&opts, stop, |p| {
        if json {
            return;
        }
        if tty {
            eprint!("\r{}", progress_line(p));
        } else {
            eprintln!("{}", progress_line(p));
        }
    })
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "{} is already in use: pick another address with --listen",
                opts.listen
            )
        } else {
            anyhow::anyhow!("load on {} failed: {e}", opts.listen)
        }
    })?;
    if tty && !json {
        eprintln!();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary(&report));
    }
    Ok(report.counts.all_ok())
}
