//! `handover up`: a whole local cluster in one command, in the foreground:
//! an edge and one or more workers (`--workers N`), each a child process
//! running this binary, wired to each other. Ctrl-C (or SIGTERM) stops them
//! all. With two or more workers, calls are replicated (Raft over gRPC,
//! logs under `--data`): a worker that dies is reported, the cluster
//! declares it dead and its shards and calls move to the others. With
//! `--no-replication` the edge's probes take it out of rotation and its
//! calls are lost.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;
use clap::Args;

mod demo;
pub mod scale;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// A trusted peer (PBX, trunk) by address prefix (repeat): its
    /// identity headers (P-Asserted-Identity and kin) pass; anyone else's
    /// are removed.
    #[arg(long = "trusted", value_name = "CIDR")]
    trusted: Vec<String>,
    /// A header to treat as an identity header beside RFC 3325's, e.g.
    /// Diversion (repeat).
    #[arg(long = "identity-header", value_name = "NAME")]
    identity_headers: Vec<String>,
    /// Assert digest-authenticated callers to trusted targets
    /// (P-Asserted-Identity; needs --users).
    #[arg(long)]
    assert_identity: bool,
    /// The cluster's hashing key, 32 hex digits [default: a new random key
    /// for this run, given to the edge and every worker].
    #[arg(long, value_parser = handover_config::parse_hash_key)]
    hash_key: Option<(u64, u64)>,
    /// Where phones and trunks send SIP (the edge).
    #[arg(long, default_value = "127.0.0.1:5060")]
    listen: SocketAddr,
    /// Where calls for a user go: USER=IP:PORT, `*` for any user (repeat);
    /// `;transfer=local` makes the B2BUA carry out its calls' transfers,
    /// `;transport=tcp` reaches the targets over TCP, `;transport=tls`
    /// over TLS (`;tls_name=NAME`: the name their certificates carry),
    /// `;transport=ws` or `wss` over WebSocket (RFC 7118);
    /// `;tcp_above=1300` sends larger INVITEs over TCP (RFC 3261 §18.1.1).
    #[arg(long = "route", value_name = "USER=IP:PORT")]
    routes: Vec<String>,
    /// The worker's SIP address (between edge and worker); worker i of
    /// `--workers` listens on this port + i.
    #[arg(long, default_value = "127.0.0.1:5080")]
    worker_listen: SocketAddr,
    /// How many worker processes share the calls (by affinity key).
    #[arg(long, default_value_t = 1)]
    workers: u16,
    /// The edge's admin address.
    #[arg(long, default_value = "127.0.0.1:9100")]
    admin: SocketAddr,
    /// The worker's admin address (worker i: this port + i).
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
    /// A configuration file for every worker (its `[worker]` routes,
    /// trusted peers, identity headers, registrar; this command's flags
    /// win): `handover reload` or SIGHUP reads it again.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Write call detail records: each worker to
    /// `DATA/worker-N/records.jsonl` (docs/records.md).
    #[arg(long)]
    records: bool,
    /// Play a built-in mix of calls and transfers against the cluster with
    /// `handover load` (it answers as every callee: routes default to it),
    /// show progress and a summary, then keep the cluster up.
    #[arg(long)]
    demo: bool,
    /// The demo's load generator address.
    #[arg(long, default_value = "127.0.0.1:5070")]
    demo_listen: SocketAddr,
    /// The workers' gRPC address for replication (worker i: this port + i).
    #[arg(long, default_value = "127.0.0.1:7001")]
    worker_grpc: SocketAddr,
    /// Where the workers keep their Raft logs [default: a new directory
    /// under the system's temporary directory, printed at start and
    /// removed at the end].
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Do not replicate calls (with two or more workers they are by
    /// default: a worker's death then loses none).
    #[arg(long)]
    no_replication: bool,
    /// Workers' group-commit window in milliseconds (`worker
    /// --commit-window-ms`) [default: the worker's, 40].
    #[arg(long)]
    commit_window_ms: Option<u64>,
    /// Workers' bound on the in-memory Raft log in MiB (`worker
    /// --raft-log-mb`) [default: the worker's, 32].
    #[arg(long, value_name = "MIB")]
    raft_log_mb: Option<u64>,
    /// A users file (`handover passwd`): phones must authenticate with
    /// digest (REGISTER 401, calls from untrusted sources 407).
    #[arg(long)]
    users: Option<std::path::PathBuf>,
    /// The digest realm [default: handover].
    #[arg(long)]
    realm: Option<String>,
    /// Digest algorithms offered, in order (`MD5,SHA-256`; baresip 1.x
    /// needs `MD5` alone) [default: the worker's, MD5,SHA-256].
    #[arg(long)]
    digest_algorithms: Option<String>,
    /// Relay mode: the PBX that is the registrar of a domain,
    /// `[DOMAIN=]IP:PORT[,IP:PORT…]` (repeat).
    #[arg(long = "registrar-upstream", value_name = "[DOMAIN=]IP:PORT")]
    registrar_upstream: Vec<String>,
    /// Seconds a digest nonce lives (then `stale=true`) [default: the
    /// worker's, 300].
    #[arg(long)]
    nonce_ttl_s: Option<u64>,
    /// SIP over TCP [default: --listen's address, as SIP shares the port].
    #[arg(long, value_name = "IP:PORT")]
    listen_tcp: Option<SocketAddr>,
    /// SIP over TLS [default: --listen's port + 1, 5061 for 5060].
    #[arg(long, value_name = "IP:PORT")]
    listen_tls: Option<SocketAddr>,
    /// SIP over secure WebSocket, for browsers [default: --listen's port
    /// + 2, 5062 for 5060].
    #[arg(long, value_name = "IP:PORT")]
    listen_wss: Option<SocketAddr>,
    /// SIP over plain WebSocket [default: none].
    #[arg(long, value_name = "IP:PORT")]
    listen_ws: Option<SocketAddr>,
    /// PEM certificate chain for TLS [default: a throw-away self-signed
    /// one for `localhost` and --listen's address, made for this run].
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// PEM CA certificates that routes over TLS (`;transport=tls`) must
    /// present a certificate from [default: the system's trusted roots].
    #[arg(long)]
    tls_upstream_ca: Option<std::path::PathBuf>,
    /// UDP only: no TCP or TLS listener.
    #[arg(long)]
    udp_only: bool,
    /// Benchmarks only: the cluster port without TLS (plain HTTP/2, which
    /// the workers take on loopback only), to measure what mutual TLS
    /// costs (`benches/compare --systems up-3,up-3-plain`).
    #[arg(long, hide = true)]
    cluster_plaintext: bool,
    /// New dialogs the edge takes per source address per second (503
    /// past it, then a 10 s ban at twice it); 0: no limit, the default
    /// (`edge --new-dialogs-per-source`).
    #[arg(long, default_value_t = 0)]
    new_dialogs_per_source: u32,
}

/// A self-signed certificate and key for `localhost` and `ip`, written
/// into `dir` (`cert.pem`, `key.pem`) for `up`'s TLS listener.
fn throwaway_cert(
    dir: &std::path::Path,
    ip: std::net::IpAddr,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let mut names = vec!["localhost".to_string()];
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    let key = rcgen::KeyPair::generate().context("cannot make a TLS key")?;
    let params = rcgen::CertificateParams::new(names).context("certificate names")?;
    let cert = params
        .self_signed(&key)
        .context("cannot make a TLS certificate")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.pem()).with_context(|| format!("cannot write {}", c.display()))?;
    std::fs::write(&k, key.serialize_pem())
        .with_context(|| format!("cannot write {}", k.display()))?;
    Ok((c, k))
}

struct Kids(Vec<Child>);

/// A copy of the cluster's admin credentials where `handover status
/// --grpc` on worker gRPC port `port` finds them by itself.
fn admin_credentials(
    cluster_tls: &std::path::Path,
    port: u16,
) -> anyhow::Result<std::path::PathBuf> {
    let to = handover_ctl::status::up_credentials(port);
    let _ = std::fs::remove_dir_all(&to);
    std::fs::create_dir_all(&to).with_context(|| format!("cannot create {}", to.display()))?;
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::copy(cluster_tls.join("admin").join(f), to.join(f))
            .with_context(|| format!("cannot write {}", to.join(f).display()))?;
    }
    Ok(to)
}

/// A directory under `parent` made now, named `stem` or, when that exists,
/// `stem.1`, `stem.2`, …: never one left behind by an earlier `up` whose
/// process id this one has (seen in CI: a cluster started on the Raft logs
/// of a killed test cluster, with its members and term).
fn new_dir(parent: &std::path::Path, stem: &str) -> std::io::Result<std::path::PathBuf> {
    for n in 0..10_000u32 {
        let d = match n {
            0 => parent.join(stem),
            n => parent.join(format!("{stem}.{n}")),
        };
        match std::fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(format!(
        "{stem} and 10,000 of its successors exist under {}",
        parent.display()
    )))
}

/// Directories removed when dropped.
struct Leftovers(Vec<std::path::PathBuf>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // A worker that left (`handover scale`) is gone already.
            if matches!(c.try_wait(), Ok(Some(_))) {
                continue;
            }
            // SIGINT: each stops at once (SIGTERM would make a replicated
            // worker hand its shards to the others first, which a whole
            // cluster stopping together does not need), then reap.
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// Runs the cluster until Ctrl-C or SIGTERM; its children run this
/// process's binary (`handover`). `log_format` is passed on to them
/// (`--log-format`), so they log as this process was asked to.
pub fn run(mut a: UpArgs, log_format: &str) -> anyhow::Result<()> {
    if a.demo && a.routes.is_empty() {
        a.routes.push(format!("*={}", a.demo_listen));
    }
    if !(1..=16).contains(&a.workers) {
        anyhow::bail!("--workers {} is out of range: 1..=16", a.workers);
    }
    if let Some(c) = &mut a.config {
        // Checked before anything starts; absolute, as the workers read it
        // again on reload.
        handover_config::Config::load(c).map_err(|e| anyhow::anyhow!("--config: {e}"))?;
        *c = std::path::absolute(&*c).context("--config")?;
    }
    let exe = std::env::current_exe().context("cannot find this binary")?;
    // Worker i listens on --worker-listen's port + i, its admin on
    // --worker-admin's port + i.
    let nth = |base: SocketAddr, i: u16| -> anyhow::Result<SocketAddr> {
        let port = base
            .port()
            .checked_add(i)
            .with_context(|| format!("{base} + {i}: no such port for worker {}", i + 1))?;
        Ok(SocketAddr::new(base.ip(), port))
    };
    // Every address is checked before anything starts, so a port in use
    // is one line naming it and the flag that moves it.
    let mut wanted: Vec<(SocketAddr, bool, &str)> =
        vec![(a.listen, true, "--listen"), (a.admin, false, "--admin")];
    let replicate = a.workers >= 2 && !a.no_replication;
    for i in 0..a.workers {
        wanted.push((nth(a.worker_listen, i)?, true, "--worker-listen"));
        wanted.push((nth(a.worker_admin, i)?, false, "--worker-admin"));
        if replicate {
            wanted.push((nth(a.worker_grpc, i)?, false, "--worker-grpc"));
        }
    }
    if a.demo {
        wanted.push((a.demo_listen, true, "--demo-listen"));
    }
    let listen_tcp = (!a.udp_only).then(|| a.listen_tcp.unwrap_or(a.listen));
    let listen_tls = if a.udp_only {
        None
    } else {
        match a.listen_tls {
            Some(t) => Some(t),
            None => Some(SocketAddr::new(
                a.listen.ip(),
                a.listen
                    .port()
                    .checked_add(1)
                    .context("--listen's port + 1 (TLS) is past 65535: give --listen-tls")?,
            )),
        }
    };
    let listen_wss = if a.udp_only {
        None
    } else {
        match a.listen_wss {
            Some(t) => Some(t),
            None => Some(SocketAddr::new(
                a.listen.ip(),
                a.listen
                    .port()
                    .checked_add(2)
                    .context("--listen's port + 2 (WSS) is past 65535: give --listen-wss")?,
            )),
        }
    };
    let listen_ws = if a.udp_only { None } else { a.listen_ws };
    if let Some(t) = listen_wss {
        wanted.push((t, false, "--listen-wss"));
    }
    if let Some(t) = listen_ws {
        wanted.push((t, false, "--listen-ws"));
    }
    if let Some(t) = listen_tcp {
        wanted.push((t, false, "--listen-tcp"));
    }
    if let Some(t) = listen_tls {
        wanted.push((t, false, "--listen-tls"));
    }
    for (addr, udp, flag) in wanted {
        let taken = if udp {
            std::net::UdpSocket::bind(addr).err()
        } else {
            std::net::TcpListener::bind(addr).err()
        };
        if let Some(e) = taken {
            let proto = if udp { "udp" } else { "tcp" };
            if e.kind() == std::io::ErrorKind::AddrInUse {
                anyhow::bail!("{proto} {addr} is already in use: pick another address with {flag}");
            }
            anyhow::bail!("cannot use {proto} {addr} ({e}): pick another address with {flag}");
        }
    }
    // Directories this run made for itself (its default data directory,
    // its throw-away TLS certificate), removed when it returns: declared
    // before `kids`, so the children have stopped by then.
    let mut made = Leftovers(Vec::new());
    let mut kids = Kids(Vec::new());
    // The children log as this process was asked to.
    // A throw-away key for this run (the built-in default is public),
    // the same for the edge and every worker.
    let (k0, k1) = match a.hash_key {
        Some(k) => k,
        None => {
            use rand_core::TryRngCore as _;
            let mut os = rand_core::OsRng;
            let k0 = os
                .try_next_u64()
                .context("cannot read the OS random source")?;
            let k1 = os
                .try_next_u64()
                .context("cannot read the OS random source")?;
            (k0, k1)
        }
    };
    let hash_key = format!("{k0:016x}{k1:016x}");
    let mut edge = Command::new(&exe);
    edge.args(["--log-format", log_format]);
    edge.arg("edge").args([
        "--listen",
        &a.listen.to_string(),
        "--admin",
        &a.admin.to_string(),
        "--threads",
        "1",
        "--hash-key",
        &hash_key,
    ]);
    edge.args([
        "--new-dialogs-per-source",
        &a.new_dialogs_per_source.to_string(),
    ]);
    let data = match &a.data {
        Some(d) => d.clone(),
        None => {
            let d = new_dir(
                &std::env::temp_dir(),
                &format!("handover-up-{}", std::process::id()),
            )
            .context("cannot create a data directory under the temporary directory (--data)")?;
            // No later run uses it (each makes its own): it goes with this one.
            made.0.push(d.clone());
            d
        }
    };
    if let Some(t) = listen_tcp {
        edge.args(["--listen-tcp", &t.to_string()]);
    }
    let mut tls_note = None;
    if let Some(t) = listen_ws {
        edge.args(["--listen-ws", &t.to_string()]);
    }
    if listen_tls.is_some() || listen_wss.is_some() {
        let (cert, key) = match (&a.tls_cert, &a.tls_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => {
                let dir =
                    std::env::temp_dir().join(format!("handover-up-{}-tls", std::process::id()));
                made.0.push(dir.clone());
                let (c, k) = throwaway_cert(&dir, a.listen.ip())?;
                tls_note = Some(c.clone());
                (c, k)
            }
        };
        if let Some(t) = listen_tls {
            edge.args(["--listen-tls", &t.to_string()]);
        }
        if let Some(t) = listen_wss {
            edge.args(["--listen-wss", &t.to_string()]);
        }
        edge.arg("--tls-cert").arg(&cert).arg("--tls-key").arg(&key);
    }
    if let Some(ca) = &a.tls_upstream_ca {
        edge.arg("--tls-upstream-ca").arg(ca);
    }
    let mut peers = Vec::new();
    // Removed when `up` returns (`handover status`'s copies of the admin
    // credentials).
    let mut left = Leftovers(Vec::new());
    let cluster_tls = data.join("cluster-tls");
    if replicate {
        std::fs::create_dir_all(&data).with_context(|| {
            format!(
                "cannot create the data directory {} (--data)",
                data.display()
            )
        })?;
        // Mutual TLS on the cluster port, even on loopback: another local
        // user could otherwise act as a member.
        if !a.cluster_plaintext {
            // Four spare members' credentials, for workers that join
            // this cluster later (`handover worker --join`).
            handover_worker::tls::throwaway(&cluster_tls, u64::from(a.workers) + 4)
                .context("cannot make the cluster's throw-away certificates")?;
            edge.arg("--cluster-tls").arg(cluster_tls.join("edge"));
        }
        for i in (0..a.workers).filter(|_| !a.cluster_plaintext) {
            let port = nth(a.worker_grpc, i)?.port();
            left.0.push(admin_credentials(&cluster_tls, port)?);
        }
        for i in 0..a.workers {
            peers.push(format!(
                "{}={},{}",
                i + 1,
                nth(a.worker_grpc, i)?,
                nth(a.worker_listen, i)?
            ));
            edge.args(["--cluster", &nth(a.worker_grpc, i)?.to_string()]);
        }
    }
    // Worker `i` (id i+1) with the cluster's `peers`, joining through
    // `join` when it is added to a running cluster (`handover scale`).
    let spawn_worker =
        |i: u16, peers: &[String], join: Option<SocketAddr>| -> anyhow::Result<Child> {
            let (listen, admin) = (nth(a.worker_listen, i)?, nth(a.worker_admin, i)?);
            let mut worker = Command::new(&exe);
            worker.args(["--log-format", log_format]);
            worker.arg("worker").args([
                "--listen",
                &listen.to_string(),
                "--edge",
                &a.listen.to_string(),
                "--admin",
                &admin.to_string(),
            ]);
            if let Some(c) = &a.config {
                worker.arg("--config").arg(c);
            }
            for r in &a.routes {
                worker.args(["--route", r]);
            }
            for t in &a.trusted {
                worker.args(["--trusted", t]);
            }
            for h in &a.identity_headers {
                worker.args(["--identity-header", h]);
            }
            if a.assert_identity {
                worker.arg("--assert-identity");
            }
            worker.args(["--hash-key", &hash_key]);
            worker.args(["--max-call-age-s", &a.max_call_age_s.to_string()]);
            worker.args(["--ring-timeout-s", &a.ring_timeout_s.to_string()]);
            worker.args(["--transfer-mode", &a.transfer_mode]);
            if let Some(u) = &a.users {
                worker.arg("--users").arg(u);
            }
            if let Some(r) = &a.realm {
                worker.args(["--realm", r]);
            }
            if let Some(d) = &a.digest_algorithms {
                worker.args(["--digest-algorithms", d]);
            }
            for u in &a.registrar_upstream {
                worker.args(["--registrar-upstream", u]);
            }
            if let Some(t) = a.nonce_ttl_s {
                worker.args(["--nonce-ttl-s", &t.to_string()]);
            }
            if a.records {
                worker
                    .arg("--records")
                    .arg(data.join(format!("worker-{}", i + 1)).join("records.jsonl"));
            }
            if replicate {
                worker.args(["--id", &(i + 1).to_string()]);
                for p in peers {
                    worker.args(["--peer", p]);
                }
                if let Some(j) = join {
                    worker.args(["--join", &j.to_string()]);
                }
                worker
                    .arg("--data")
                    .arg(data.join(format!("worker-{}", i + 1)));
                if !a.cluster_plaintext {
                    worker
                        .arg("--cluster-tls")
                        .arg(cluster_tls.join(format!("member-{}", i + 1)));
                }
                if let Some(w) = a.commit_window_ms {
                    worker.args(["--commit-window-ms", &w.to_string()]);
                }
                if let Some(m) = a.raft_log_mb {
                    worker.args(["--raft-log-mb", &m.to_string()]);
                }
            }
            // SIGINT when `up` is gone: a worker stops at once.
            handover_io::stop_with_parent(&mut worker, libc::SIGINT);
            worker
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start worker {}", i + 1))
        };
    let mut worker_admins = Vec::new();
    for i in 0..a.workers {
        let (listen, admin) = (nth(a.worker_listen, i)?, nth(a.worker_admin, i)?);
        kids.0.push(spawn_worker(i, &peers, None)?);
        edge.args(["--backend", &listen.to_string()]);
        worker_admins.push(admin);
    }
    handover_io::stop_with_parent(&mut edge, libc::SIGINT);
    kids.0.push(
        edge.stdout(Stdio::null())
            .spawn()
            .context("cannot start the edge")?,
    );
    println!("handover up: SIP on udp {}", a.listen);
    if let Some(t) = listen_tcp {
        println!("handover up: SIP on tcp {t}");
    }
    if let Some(t) = listen_wss {
        println!("handover up: SIP on wss {t} (browsers: wss://{t})");
    }
    if let Some(t) = listen_ws {
        println!("handover up: SIP on ws {t}");
    }
    if let Some(t) = listen_tls {
        match &tls_note {
            Some(c) => println!(
                "handover up: SIP on tls {t} (a throw-away self-signed certificate: {})",
                c.display()
            ),
            None => println!("handover up: SIP on tls {t}"),
        }
    }
    println!("edge metrics: http://{}/metrics", a.admin);
    for (i, w) in worker_admins.iter().enumerate() {
        println!("worker {} metrics: http://{w}/metrics", i + 1);
    }
    if replicate {
        println!(
            "{} workers share the calls by shard and replicate them with Raft (gRPC on {}+, mutual TLS with throw-away certificates under {}); Raft logs under {}",
            a.workers,
            a.worker_grpc,
            cluster_tls.display(),
            data.display()
        );
        println!(
            "status: handover status --grpc {} (any worker)",
            a.worker_grpc
        );
        if a.workers == 2 {
            println!(
                "two workers cannot lose one and keep a quorum: use --workers 3 to survive a worker's death"
            );
        }
    } else if a.workers > 1 {
        println!(
            "{} workers share the calls by affinity key, not replicated (--no-replication): a worker's death loses its calls",
            a.workers
        );
    }
    println!("Ctrl-C stops the cluster.");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Which child is which: worker ids, then the edge (`None`); workers
    // `handover scale` adds come after it.
    let mut who: Vec<Option<u16>> = (1..=a.workers).map(Some).chain([None]).collect();
    let mut leaving: Vec<u16> = Vec::new();
    let mut leaves: Vec<Child> = Vec::new();
    // Ctrl-C or SIGTERM while the demo plays stops the demo and the
    // cluster (the demo's load used to take the signal for itself, and
    // `up` then waited for another one: a SIGTERM from a supervisor was
    // lost). Raised by a signal before the loop below listens, it ends
    // the loop at its first tick.
    let stop = handover_load::cli::stop_on_signal();
    if a.demo {
        demo::demo(&a, &mut kids, &stop)?;
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            println!("handover up: stopping");
            return Ok(());
        }
    }
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // Once, before the loop: a `ctrl_c()` made anew in each turn of
        // the loop misses a SIGINT that lands between two turns (a busy
        // worker then never stopped).
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
        let mut dead = vec![false; kids.0.len()];
        let control = if replicate {
            Some(scale::Control::bind(a.worker_grpc.port())?)
        } else {
            None
        };
        loop {
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                Ok((mut conn, _)) = async { control.as_ref().expect("guarded").listener.accept().await }, if control.is_some() => {
                    let running: Vec<u16> = who
                        .iter()
                        .zip(&dead)
                        .filter_map(|(w, d)| w.filter(|id| !*d && !leaving.contains(id)))
                        .collect();
                    let max = if a.cluster_plaintext { 16 } else { a.workers + 4 };
                    let asked = scale::request(&mut conn).await.and_then(|n| {
                        if running.is_empty() {
                            return Err("no worker is running".to_string());
                        }
                        scale::plan(&running, n, max)
                    });
                    let reply = match asked {
                        Err(e) => format!("error: {e}\n"),
                        Ok((add, remove)) => {
                            let mut out = String::new();
                            let via = nth(a.worker_grpc, running[0] - 1)?;
                            for id in add {
                                let i = id - 1;
                                let me = format!("{id}={},{}", nth(a.worker_grpc, i)?, nth(a.worker_listen, i)?);
                                if !a.cluster_plaintext {
                                    match admin_credentials(&cluster_tls, nth(a.worker_grpc, i)?.port()) {
                                        Ok(to) => left.0.push(to),
                                        Err(e) => out += &format!("worker {id}: {e:#}\n"),
                                    }
                                }
                                match spawn_worker(i, &[me], Some(via)) {
                                    Ok(c) => {
                                        kids.0.push(c);
                                        who.push(Some(id));
                                        dead.push(false);
                                        out += &format!("worker {id} starts and joins through {via} (metrics: http://{}/metrics)\n", nth(a.worker_admin, i)?);
                                    }
                                    Err(e) => out += &format!("worker {id}: {e:#}\n"),
                                }
                            }
                            for id in remove {
                                let stay = running.iter().find(|&&r| r != id && r < id).copied().unwrap_or(running[0]);
                                let mut leave = Command::new(&exe);
                                leave.args(["leave", &id.to_string(), "--grpc", &nth(a.worker_grpc, stay - 1)?.to_string()]);
                                if !a.cluster_plaintext {
                                    leave.arg("--cluster-tls").arg(cluster_tls.join("admin"));
                                }
                                match leave.stdout(Stdio::null()).spawn() {
                                    Ok(c) => {
                                        leaves.push(c);
                                        leaving.push(id);
                                        out += &format!("worker {id} leaves: it drains, stops and is removed from Raft\n");
                                    }
                                    Err(e) => out += &format!("worker {id}: cannot run handover leave: {e}\n"),
                                }
                            }
                            if out.is_empty() {
                                out = format!("{} workers already\n", running.len());
                            }
                            out
                        }
                    };
                    scale::answer(conn, &reply).await;
                }
                _ = tick.tick() => {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    leaves.retain_mut(|c| c.try_wait().ok().flatten().is_none());
                    for (i, c) in kids.0.iter_mut().enumerate() {
                        if dead[i] {
                            continue;
                        }
                        if let Some(s) = c.try_wait()? {
                            dead[i] = true;
                            let Some(id) = who[i] else {
                                anyhow::bail!("the edge exited ({s}); see its error above");
                            };
                            if who.iter().zip(&dead).all(|(w, d)| w.is_none() || *d) {
                                anyhow::bail!("every worker exited (the last: {s}); see the errors above");
                            }
                            if leaving.contains(&id) {
                                eprintln!("handover up: worker {id} left the cluster");
                            } else if replicate {
                                eprintln!("handover up: worker {id} exited ({s}); once the cluster declares it dead its shards and calls move to the others");
                            } else {
                                // The edge's probes take the worker out of rotation.
                                eprintln!("handover up: worker {id} exited ({s}); its calls are lost, new calls go to the others");
                            }
                        }
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    drop(leaves);
    drop(kids);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_new_data_directory_is_never_one_left_behind() {
        let parent = std::env::temp_dir().join(format!("handover-up-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        std::fs::create_dir_all(&parent).unwrap();
        // An earlier `up` of the same process id left its Raft logs.
        let old = super::new_dir(&parent, "handover-up-7").unwrap();
        std::fs::write(old.join("raft-1.redb"), b"an old cluster").unwrap();
        let new = super::new_dir(&parent, "handover-up-7").unwrap();
        assert_ne!(new, old);
        assert_eq!(new, parent.join("handover-up-7.1"));
        assert_eq!(std::fs::read_dir(&new).unwrap().count(), 0, "empty");
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
