//! `handover up`: a whole local cluster in one command, in the foreground:
//! an edge and a worker, each a child process running this binary, wired to
//! each other. Ctrl-C (or SIGTERM) stops both.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Where phones and trunks send SIP (the edge).
    #[arg(long, default_value = "127.0.0.1:5060")]
    listen: SocketAddr,
    /// Where calls for a user go: USER=IP:PORT, `*` for any user (repeat);
    /// `;transfer=local` makes the B2BUA carry out its calls' transfers.
    #[arg(long = "route", value_name = "USER=IP:PORT")]
    routes: Vec<String>,
    /// The worker's SIP address (between edge and worker).
    #[arg(long, default_value = "127.0.0.1:5080")]
    worker_listen: SocketAddr,
    /// The edge's admin address.
    #[arg(long, default_value = "127.0.0.1:9100")]
    admin: SocketAddr,
    /// The worker's admin address.
    #[arg(long, default_value = "127.0.0.1:9101")]
    worker_admin: SocketAddr,
    /// Seconds after its answer at which a call is hung up on both legs.
    #[arg(long, default_value_t = 14_400)]
    max_call_age_s: u64,
    /// Seconds a callee may ring unanswered (then the next target, or 408).
    #[arg(long, default_value_t = 120)]
    ring_timeout_s: u64,
    /// Who carries out transfers on routes that do not say (a route says
    /// with `;transfer=MODE`): `passthrough` (the phones) or `local` (the
    /// B2BUA).
    #[arg(long, default_value = "passthrough", value_parser = ["passthrough", "local"])]
    transfer_mode: String,
}

struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGTERM first so each stops cleanly, then reap.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

pub(crate) fn run(a: UpArgs) -> anyhow::Result<()> {
    crate::init_tracing();
    if a.routes.is_empty() {
        anyhow::bail!(
            "no route configured: give at least one --route USER=IP:PORT, e.g. --route b=127.0.0.1:5071"
        );
    }
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let mut worker = Command::new(&exe);
    worker
        .arg("worker")
        .args(["--listen", &a.worker_listen.to_string()]);
    worker.args([
        "--edge",
        &a.listen.to_string(),
        "--admin",
        &a.worker_admin.to_string(),
    ]);
    for r in &a.routes {
        worker.args(["--route", r]);
    }
    worker.args(["--max-call-age-s", &a.max_call_age_s.to_string()]);
    worker.args(["--ring-timeout-s", &a.ring_timeout_s.to_string()]);
    worker.args(["--transfer-mode", &a.transfer_mode]);
    let mut edge = Command::new(&exe);
    edge.arg("edge").args([
        "--listen",
        &a.listen.to_string(),
        "--admin",
        &a.admin.to_string(),
    ]);
    edge.args(["--backend", &a.worker_listen.to_string(), "--threads", "1"]);
    let mut kids = Kids(Vec::new());
    kids.0.push(
        worker
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the worker")?,
    );
    kids.0.push(
        edge.stdout(Stdio::null())
            .spawn()
            .context("cannot start the edge")?,
    );
    println!("handover up: SIP on udp {}", a.listen);
    println!("edge metrics: http://{}/metrics", a.admin);
    println!("worker metrics: http://{}/metrics", a.worker_admin);
    println!("Ctrl-C stops the cluster.");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tick.tick() => {
                    for c in &mut kids.0 {
                        if let Some(s) = c.try_wait()? {
                            anyhow::bail!("a cluster process exited ({s}); see its error above");
                        }
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    drop(kids);
    Ok(())
}
