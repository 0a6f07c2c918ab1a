//! The worker's replication shell: a [`handover_cluster::Node`] on its own
//! thread, its log in redb under `--data`, raft messages over gRPC (tonic
//! client streams, one per peer, batched), and the `Admin` service
//! (`handover status`, the edges' map watch, drain).
//!
//! The SIP loop talks to it through channels only: it sends call records
//! ([`Cmd`]) and hears which shards it serves, with the replicated calls of
//! each shard it takes over ([`Note`]). Nothing on the SIP path waits for
//! Raft.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use handover_cluster::{Config, Disk, Event, Message, Node, pb as cpb, shard_of};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt as _;

use crate::rpc::pb;

/// Shards of the cluster map (fixed for the life of a cluster; the edge's
/// table has as many).
pub(crate) const SHARDS: usize = handover_edge::routing::SHARDS as usize;

/// One Raft tick.
const TICK: Duration = Duration::from_millis(100);

const RAFT_TERM: &str = "handover_raft_term";
const RAFT_LEADER: &str = "handover_raft_leader";
const RAFT_IS_LEADER: &str = "handover_raft_is_leader";
const RAFT_COMMIT: &str = "handover_raft_commit_index";
const RAFT_APPLY_LAG: &str = "handover_raft_apply_lag";
const RAFT_COMMIT_TIME: &str = "handover_raft_commit_seconds";
const RAFT_PROPOSALS: &str = "handover_raft_proposals_total";
const RAFT_REFUSED: &str = "handover_raft_messages_refused_total";
const MAP_EPOCH: &str = "handover_shard_map_epoch";
const SHARDS_SERVED: &str = "handover_shards_served";
const REPLICATED_CALLS: &str = "handover_replicated_calls";
const MAP_CHANGES: &str = "handover_shard_map_changes_total";
const MEMBERS_DOWN: &str = "handover_cluster_members_down_total";
const RAFT_BATCH: &str = "handover_raft_batch_commands";

/// Replication flags of `handover worker`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ClusterArgs {
    /// This worker's id in the cluster (1, 2, …). With --peer, turns
    /// replication on.
    #[arg(long, conflicts_with = "id_from_hostname")]
    pub(crate) id: Option<u64>,
    /// Take the id from the host name's trailing `-N` plus one (a
    /// Kubernetes StatefulSet's pod `handover-worker-0` is id 1).
    #[arg(long)]
    pub(crate) id_from_hostname: bool,
    /// Every worker of the cluster, this one included, the same list on
    /// each: `ID=GRPC_ADDR,SIP_ADDR` (repeat). Addresses are `IP:PORT` or
    /// `HOST:PORT`; host names are looked up at each connection (gRPC) and
    /// by the edges at each map and every few seconds (SIP), so a pod that
    /// comes back with a new IP is found again.
    #[arg(long = "peer", value_name = "ID=GRPC,SIP")]
    pub(crate) peers: Vec<String>,
    /// Address to bind gRPC on [default: this worker's --peer gRPC
    /// address]; `0.0.0.0:PORT` where that address is a name.
    #[arg(long)]
    pub(crate) grpc_listen: Option<SocketAddr>,
    /// Group commit: call records are proposed in windows of this length,
    /// aligned on the wall clock (multiples of it since the Unix epoch), so
    /// every worker's batch of a window goes in one Raft round; each round
    /// costs every replica a disk sync and wakes three processes. A new
    /// call's 2xx waits for its window (half of it on average) plus the
    /// round. 0 proposes a new call's record at once when no round is in
    /// flight (lowest latency, more CPU: docs/benchmarks.md).
    #[arg(long, default_value_t = 40)]
    pub(crate) commit_window_ms: u64,
    /// Tests only: let `Admin.Isolate` (`handover fault isolate`) cut this
    /// worker's Raft traffic, to partition it from the others.
    #[arg(long)]
    pub(crate) fault_injection: bool,
    /// Directory for this worker's Raft log [default: ./handover-data].
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
}

/// A member of the cluster. Addresses are kept as given (`HOST:PORT` or
/// `IP:PORT`) and looked up where they are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) id: u64,
    pub(crate) grpc: String,
    pub(crate) sip: String,
}

/// Checks `HOST:PORT` or `IP:PORT` (IPv6 in brackets) without looking the
/// host up: a name may not resolve yet when a pod starts.
pub(crate) fn host_port(s: &str) -> Option<String> {
    let s = s.trim();
    if s.parse::<SocketAddr>().is_ok() {
        return Some(s.to_owned());
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok().filter(|&p| p != 0)?;
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    name_ok.then(|| s.to_owned())
}

/// The first address `HOST:PORT` resolves to (blocking; IPv4 first).
pub(crate) fn resolve_now(s: &str) -> std::io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let all: Vec<SocketAddr> = s.to_socket_addrs()?.collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

/// Like [`resolve_now`], retried for up to `wait` (a Kubernetes Service's
/// or pod's DNS record can lag its start).
pub(crate) fn resolve_waiting(s: &str, wait: Duration) -> anyhow::Result<SocketAddr> {
    let step = Duration::from_millis(500);
    let tries = (wait.as_millis() / step.as_millis()).max(1);
    let mut tried = 0;
    loop {
        tried += 1;
        match resolve_now(s) {
            Ok(a) => return Ok(a),
            Err(e) if tried >= tries => {
                anyhow::bail!("cannot resolve {s} (waited {} s): {e}", wait.as_secs())
            }
            Err(_) => std::thread::sleep(step),
        }
    }
}

/// The id of a StatefulSet pod: `NAME-N` is `N + 1` (raft ids start at 1).
pub(crate) fn id_from_hostname(host: &str) -> anyhow::Result<u64> {
    let n = host
        .trim()
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--id-from-hostname: host name {host:?} does not end in -N (a StatefulSet pod's does)"
            )
        })?;
    Ok(n + 1)
}

fn hostname() -> anyhow::Result<String> {
    if let Ok(h) = std::env::var("HOSTNAME")
        && !h.is_empty()
    {
        return Ok(h);
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .context("--id-from-hostname: cannot read the host name")
}

/// Parses `ID=GRPC_ADDR,SIP_ADDR`.
pub(crate) fn parse_peer(s: &str) -> anyhow::Result<Peer> {
    let bad = || {
        anyhow::anyhow!(
            "--peer {s:?}: expected ID=GRPC_ADDR,SIP_ADDR (IP:PORT or HOST:PORT), e.g. 1=127.0.0.1:7001,127.0.0.1:5081"
        )
    };
    let (id, rest) = s.split_once('=').ok_or_else(bad)?;
    let (grpc, sip) = rest.split_once(',').ok_or_else(bad)?;
    let id: u64 = id.trim().parse().map_err(|_| bad())?;
    if id == 0 {
        anyhow::bail!("--peer {s:?}: ids start at 1");
    }
    Ok(Peer {
        id,
        grpc: host_port(grpc).ok_or_else(bad)?,
        sip: host_port(sip).ok_or_else(bad)?,
    })
}

/// What the SIP loop asks of the replica.
#[derive(Debug)]
pub(crate) enum Cmd {
    Upsert {
        call_id: Vec<u8>,
        /// The other leg's (see `CallUpsert.other_call_id`).
        other_call_id: Vec<u8>,
        key: u64,
        version: u64,
        record: Vec<u8>,
    },
    Remove {
        call_id: Vec<u8>,
        key: u64,
        version: u64,
    },
    Drain(oneshot::Sender<bool>),
}

/// What the replica tells the SIP loop.
#[derive(Debug)]
pub(crate) enum Note {
    /// A call record this worker proposed is committed (or was refused:
    /// either way the call's held 2xx may go).
    Committed { call_id: Vec<u8> },
    /// This worker now serves `shard`; `calls` are its replicated calls.
    Serving {
        shard: usize,
        calls: Vec<cpb::CallUpsert>,
    },
    /// This worker no longer serves `shard`.
    Stopped { shard: usize },
}

/// Commands from the SIP loop to the replica's thread: a queue under a
/// lock that wakes the replica only when it stops being empty. With group
/// commit the replica leaves the queue alone until its window closes, so
/// a window's commands cost its thread one wake-up, not one per call
/// (an unbounded channel woke it for each).
#[derive(Debug, Default)]
pub(crate) struct Cmds {
    /// Each command with when it was queued (commit latency counts from
    /// there).
    queue: parking_lot::Mutex<Vec<(Cmd, tokio::time::Instant)>>,
    wake: tokio::sync::Notify,
}

impl Cmds {
    /// Queues `cmds`, waking the replica if the queue was empty.
    pub(crate) fn send_all(&self, cmds: impl IntoIterator<Item = Cmd>) {
        let now = tokio::time::Instant::now();
        let was_empty = {
            let mut q = self.queue.lock();
            let was_empty = q.is_empty();
            q.extend(cmds.into_iter().map(|c| (c, now)));
            was_empty && !q.is_empty()
        };
        if was_empty {
            self.wake.notify_one();
        }
    }

    pub(crate) fn send(&self, cmd: Cmd) {
        self.send_all(std::iter::once(cmd));
    }

    fn take(&self) -> Vec<(Cmd, tokio::time::Instant)> {
        std::mem::take(&mut *self.queue.lock())
    }
}

/// The SIP loop's side of the replica.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) cmd: std::sync::Arc<Cmds>,
    pub(crate) notes: mpsc::UnboundedReceiver<Note>,
    /// The gRPC address actually bound.
    pub(crate) grpc: SocketAddr,
    pub(crate) data: PathBuf,
    /// True once this worker has a map and has applied what it knows is
    /// committed.
    pub(crate) ready: watch::Receiver<bool>,
    /// Until when this worker's lease lets it serve.
    pub(crate) lease: Lease,
    /// Look-ups of calls in the replicated table (any worker's), by
    /// either leg's Call-ID: what a Replaces names may live elsewhere.
    pub(crate) lookup: mpsc::UnboundedSender<Lookup>,
}

/// A question to the replica's thread: the committed record of the call
/// one of whose legs has `call_id`.
#[derive(Debug)]
pub(crate) struct Lookup {
    pub(crate) call_id: Vec<u8>,
    pub(crate) reply: oneshot::Sender<Option<cpb::CallUpsert>>,
}

/// The replica's lease as a wall-clock deadline, shared with the SIP loop.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    at: std::sync::Arc<std::sync::atomic::AtomicU64>,
    epoch: tokio::time::Instant,
}

impl Lease {
    /// Whether the lease is live now.
    pub(crate) fn live(&self) -> bool {
        nanos_since(self.epoch, tokio::time::Instant::now())
            < self.at.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn nanos_since(epoch: tokio::time::Instant, t: tokio::time::Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// Validates the flags: `None` when replication is off.
pub(crate) fn configured(a: &ClusterArgs) -> anyhow::Result<Option<(u64, Vec<Peer>)>> {
    let id = if a.id_from_hostname {
        Some(id_from_hostname(&hostname()?)?)
    } else {
        a.id
    };
    match (id, a.peers.is_empty()) {
        (None, true) => Ok(None),
        (None, false) => anyhow::bail!("--peer needs --id: which of the peers is this worker?"),
        (Some(_), true) => anyhow::bail!(
            "--id needs the cluster's members: give --peer ID=GRPC,SIP for each, this one included"
        ),
        (Some(id), false) => {
            let peers = a
                .peers
                .iter()
                .map(|p| parse_peer(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut ids: Vec<u64> = peers.iter().map(|p| p.id).collect();
            ids.sort_unstable();
            if ids.windows(2).any(|w| w[0] == w[1]) {
                anyhow::bail!("--peer: an id is given twice");
            }
            if !ids.contains(&id) {
                anyhow::bail!("--id {id} is not among the --peer ids {ids:?}");
            }
            Ok(Some((id, peers)))
        }
    }
}

/// Opens the log, binds the gRPC port and starts the replica's thread.
pub(crate) fn start(
    id: u64,
    peers: Vec<Peer>,
    data: PathBuf,
    grpc_listen: Option<SocketAddr>,
    fault_injection: bool,
    window: Duration,
) -> anyhow::Result<Handle> {
    let me = peers
        .iter()
        .find(|p| p.id == id)
        .expect("validated")
        .clone();
    let bind = match grpc_listen {
        Some(a) => a,
        None => resolve_now(&me.grpc).map_err(|e| {
            anyhow::anyhow!(
                "cannot resolve this worker's gRPC address {} ({e}): give --grpc-listen 0.0.0.0:PORT",
                me.grpc
            )
        })?,
    };
    std::fs::create_dir_all(&data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    let voters: Vec<u64> = peers.iter().map(|p| p.id).collect();
    let path = data.join(format!("raft-{id}.redb"));
    let (disk, store) = Disk::open(&path, &voters)
        .with_context(|| format!("cannot open the Raft log {}", path.display()))?;
    let listener = std::net::TcpListener::bind(bind).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!("{bind} (gRPC of --peer {id}) is already in use: pick another port")
        } else {
            anyhow::anyhow!("cannot listen for gRPC on {bind}: {e}")
        }
    })?;
    listener.set_nonblocking(true)?;
    let grpc = listener.local_addr()?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut cfg = Config::new(id, voters, SHARDS);
    cfg.group_commit = !window.is_zero();
    let node = Node::with_disk(cfg, disk, store, seed).context("cannot start the Raft replica")?;
    let cmd_tx = std::sync::Arc::new(Cmds::default());
    let cmd_rx = std::sync::Arc::clone(&cmd_tx);
    let (note_tx, note_rx) = mpsc::unbounded_channel();
    let (lookup_tx, lookup_rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = watch::channel(false);
    let lease = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let lease2 = std::sync::Arc::clone(&lease);
    let epoch = tokio::time::Instant::now();
    std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            let run = std::panic::AssertUnwindSafe(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the Raft runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot use the gRPC listener");
                            return;
                        }
                    };
                    let isolation = fault_injection.then(Isolation::default);
                    let mut replica =
                        Replica::new(node, peers, cmd_rx, note_tx, ready_tx, (lease2, epoch));
                    replica.window = window;
                    replica.run(listener, isolation, lookup_rx).await;
                });
            });
            // The replica only stops by failing. A worker must not go on
            // without it: it would serve calls it cannot replicate while
            // its health checks said all is well. Exit, so the others take
            // its shards over and the orchestrator restarts it (the panic's
            // own message is printed above by the panic hook).
            let how = if std::panic::catch_unwind(run).is_ok() {
                "stopped"
            } else {
                "panicked"
            };
            tracing::error!(how, "the Raft replica thread ended; exiting");
            std::process::exit(70);
        })
        .context("cannot start the Raft thread")?;
    Ok(Handle {
        lease: Lease { at: lease, epoch },
        lookup: lookup_tx,
        cmd: cmd_tx,
        notes: note_rx,
        grpc,
        data,
        ready: ready_rx,
    })
}

/// Fault injection (`--fault-injection`): until when this worker's Raft
/// messages are dropped both ways, and whether its replica thread is to
/// panic (tests of what a dead replica does to its worker).
#[derive(Debug, Clone)]
struct Isolation {
    /// Nanoseconds after `epoch`; 0: not isolated.
    until: std::sync::Arc<std::sync::atomic::AtomicU64>,
    epoch: tokio::time::Instant,
    panic: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Default for Isolation {
    fn default() -> Self {
        Self {
            until: Default::default(),
            epoch: tokio::time::Instant::now(),
            panic: Default::default(),
        }
    }
}

impl Isolation {
    fn now(&self) -> bool {
        nanos_since(self.epoch, tokio::time::Instant::now())
            < self.until.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn until(&self, t: tokio::time::Instant) {
        self.until.store(
            nanos_since(self.epoch, t),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// What the gRPC services read, refreshed by the replica's loop.
#[derive(Debug, Clone, Default)]
struct Shared {
    status: pb::ClusterStatus,
    map: pb::MapView,
}

struct Replica {
    node: Node,
    peers: Vec<Peer>,
    cmds: std::sync::Arc<Cmds>,
    notes: mpsc::UnboundedSender<Note>,
    ready: watch::Sender<bool>,
    served: Vec<bool>,
    /// When `served` last changed (wall clock, for `handover status`).
    served_since: std::time::SystemTime,
    /// The lease's end, in nanoseconds after `epoch` (see `Handle::lease`).
    lease: std::sync::Arc<std::sync::atomic::AtomicU64>,
    epoch: tokio::time::Instant,
    /// Call-ID -> when its upsert was handed to Raft (commit latency).
    pending: HashMap<Vec<u8>, tokio::time::Instant>,
    drains: Vec<oneshot::Sender<bool>>,
    /// Group commit window (`--commit-window-ms`).
    window: Duration,
}

impl Replica {
    fn new(
        node: Node,
        peers: Vec<Peer>,
        cmds: std::sync::Arc<Cmds>,
        notes: mpsc::UnboundedSender<Note>,
        ready: watch::Sender<bool>,
        (lease, epoch): (
            std::sync::Arc<std::sync::atomic::AtomicU64>,
            tokio::time::Instant,
        ),
    ) -> Self {
        Self {
            node,
            peers,
            cmds,
            notes,
            ready,
            served: vec![false; SHARDS],
            served_since: std::time::SystemTime::now(),
            lease,
            epoch,
            pending: HashMap::new(),
            drains: Vec::new(),
            window: Duration::ZERO,
        }
    }

    async fn run(
        mut self,
        listener: tokio::net::TcpListener,
        isolation: Option<Isolation>,
        mut lookups: mpsc::UnboundedReceiver<Lookup>,
    ) {
        let (inbox_tx, mut inbox) = mpsc::unbounded_channel::<Message>();
        let (shared_tx, shared_rx) = watch::channel(Shared::default());
        let (drain_tx, mut drain_rx) = mpsc::unbounded_channel::<oneshot::Sender<bool>>();
        let services = Services {
            inbox: inbox_tx,
            shared: shared_rx,
            drain: drain_tx,
            isolation: isolation.clone(),
        };
        let panic_asked = isolation.as_ref().map(|i| std::sync::Arc::clone(&i.panic));
        let isolated = move || isolation.as_ref().is_some_and(Isolation::now);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(async move {
            // Large HTTP/2 windows, so flow control rarely sends a
            // WINDOW_UPDATE for appends of 6-10 KiB (no change measurable
            // at 500 calls/s); Raft's own flow control bounds what is in
            // flight.
            let r = tonic::transport::Server::builder()
                .initial_stream_window_size(Some(8 << 20))
                .initial_connection_window_size(Some(16 << 20))
                .tcp_nodelay(true)
                .add_service(
                    pb::raft_server::RaftServer::new(services.clone())
                        .max_decoding_message_size(64 << 20),
                )
                .add_service(pb::admin_server::AdminServer::new(services))
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "gRPC server stopped");
            }
        });
        let mut outs: BTreeMap<u64, mpsc::UnboundedSender<Vec<Message>>> = BTreeMap::new();
        for p in self.peers.iter().filter(|p| p.id != self.node.id()) {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(sender(p.grpc.clone(), rx));
            outs.insert(p.id, tx);
        }
        let mut tick = tokio::time::interval(TICK);
        // After a stall (a paused process, a starved thread) the missed
        // ticks all run at once, so the replica's clock keeps up with the
        // wall clock and its lease ends when it should.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut last_tick = tokio::time::Instant::now();
        let proposals = metrics::counter!(RAFT_PROPOSALS);
        let batch_hist = metrics::histogram!(RAFT_BATCH);
        // Exported from the start, so a dashboard sees 0, not "no data".
        for cause in ["dead", "drained"] {
            metrics::counter!(MEMBERS_DOWN, "cause" => cause).increment(0);
        }
        metrics::counter!(MAP_CHANGES).increment(0);
        // When the open group-commit window closes (`--commit-window-ms`).
        let mut flush_at: Option<tokio::time::Instant> = None;
        let window = Window::new(self.window);
        loop {
            if panic_asked
                .as_ref()
                .is_some_and(|p| p.load(std::sync::atomic::Ordering::Relaxed))
            {
                panic!("fault injection: the Raft replica thread panics");
            }
            let mut ticked = false;
            let r = tokio::select! {
                () = sleep_until_some(flush_at) => {
                    flush_at = None;
                    for (c, at) in self.cmds.take() {
                        self.command(c, at, &proposals);
                    }
                    self.node.propose_queued()
                }
                t = tick.tick() => { ticked = true; last_tick = t; self.node.tick() }
                Some(m) = inbox.recv() => {
                    // Whatever else arrived in the same breath goes
                    // through the same Ready (one disk write).
                    let mut msgs = vec![m];
                    while let Ok(m) = inbox.try_recv() {
                        msgs.push(m);
                    }
                    let r = self.node.step_all(msgs);
                    // A leader holding followers' proposals writes and
                    // sends them when its window closes.
                    if r.is_ok() && self.node.deferred() {
                        let at = window.leader_close(tokio::time::Instant::now());
                        flush_at = Some(flush_at.map_or(at, |f| f.min(at)));
                    }
                    r
                }
                () = self.cmds.wake.notified() => {
                    // Group commit (see `Window`): whatever is queued goes
                    // when the current window closes, taken from the queue
                    // only then. With no window a new call's record (its
                    // 2xx waits for the commit) is proposed at once when
                    // nothing else awaits a commit, else with the batch
                    // that goes when that commit lands; updates and
                    // removes wait for the next tick or the next batch.
                    if window.on() {
                        flush_at.get_or_insert_with(|| window.close(tokio::time::Instant::now(), self.node.is_leader()));
                        Ok(())
                    } else {
                        let idle = self.pending.is_empty();
                        let mut urgent = false;
                        for (c, at) in self.cmds.take() {
                            urgent |= self.command(c, at, &proposals);
                        }
                        if urgent && idle {
                            self.node.propose_queued()
                        } else {
                            Ok(())
                        }
                    }
                }
                Some(d) = drain_rx.recv() => {
                    self.command(Cmd::Drain(d), tokio::time::Instant::now(), &proposals);
                    Ok(())
                }
                Some(l) = lookups.recv() => {
                    // A read of what this replica applied: committed state.
                    let _ = l.reply.send(self.node.table().call_by_leg(&l.call_id).cloned());
                    Ok(())
                }
            };
            if let Err(e) = r {
                // The log cannot be written: this replica must not go on
                // acknowledging anything. Exit; the others carry on.
                tracing::error!(error = %e, "Raft replica failed; exiting");
                std::process::exit(70);
            }
            send_out(&mut self.node, &outs, isolated());
            let awaiting = self.pending.len();
            let mut map_changed = false;
            while let Some(e) = self.node.poll_event() {
                match e {
                    Event::Committed { call_id, .. } => {
                        if let Some(t) = self.pending.remove(&call_id) {
                            metrics::histogram!(RAFT_COMMIT_TIME).record(t.elapsed().as_secs_f64());
                        }
                        let _ = self.notes.send(Note::Committed { call_id });
                    }
                    Event::Refused { call_id } => {
                        tracing::debug!(call_id = %String::from_utf8_lossy(&call_id), "call record refused: this worker no longer owns its shard");
                        self.pending.remove(&call_id);
                        let _ = self.notes.send(Note::Committed { call_id });
                    }
                    Event::Removed { call_id } => {
                        self.pending.remove(&call_id);
                    }
                    Event::HandedOver { call_id } => {
                        if let Some(c) = self.node.table().call(&call_id) {
                            let shard = shard_of(c.key, SHARDS);
                            // Not served yet: taken over with the shard.
                            if self.served[shard] {
                                let _ = self.notes.send(Note::Serving {
                                    shard,
                                    calls: vec![c.clone()],
                                });
                            }
                        }
                    }
                    Event::Map { .. } => {
                        map_changed = true;
                        metrics::counter!(MAP_CHANGES).increment(1);
                    }
                    Event::MemberDown { node, drained } => {
                        let cause = if drained { "drained" } else { "dead" };
                        tracing::warn!(
                            worker = node,
                            cause,
                            "worker left the shard map; its shards move to the others"
                        );
                        metrics::counter!(MEMBERS_DOWN, "cause" => cause).increment(1);
                    }
                    Event::Leader { id, term } => {
                        tracing::info!(leader = id, term, "Raft leader");
                    }
                }
            }
            // The batch in flight committed: what queued behind it goes.
            if self.window.is_zero()
                && awaiting > 0
                && self.pending.len() < awaiting
                && self.node.queued() > 0
            {
                if let Err(e) = self.node.propose_queued() {
                    tracing::error!(error = %e, "Raft replica failed; exiting");
                    std::process::exit(70);
                }
                send_out(&mut self.node, &outs, isolated());
            }
            // Renewals and membership changes queued by a tick go with
            // the window too.
            if window.on() && flush_at.is_none() && self.node.queued() > 0 {
                flush_at = Some(window.close(tokio::time::Instant::now(), self.node.is_leader()));
            }
            for n in self.node.take_batch_sizes() {
                batch_hist.record(n as f64);
            }
            // The lease as a wall-clock deadline for the SIP loop, which
            // checks it per datagram: a worker that was paused past its
            // lease serves nothing before this thread catches up.
            let left = TICK * u32::try_from(self.node.lease_ticks_left()).unwrap_or(u32::MAX);
            self.lease.store(
                nanos_since(self.epoch, last_tick + left),
                std::sync::atomic::Ordering::Relaxed,
            );
            if ticked || map_changed {
                self.refresh(&shared_tx);
            }
            if self.node.drained() {
                for d in self.drains.drain(..) {
                    let _ = d.send(true);
                }
            }
        }
    }

    /// Queues a command; true when a caller waits on its commit.
    fn command(&mut self, c: Cmd, at: tokio::time::Instant, proposals: &metrics::Counter) -> bool {
        proposals.increment(1);
        let urgent = matches!(c, Cmd::Upsert { version: 1, .. });
        match c {
            Cmd::Upsert {
                call_id,
                other_call_id,
                key,
                version,
                record,
            } => {
                // Awaited: a new call's record (its 2xx is held).
                if urgent && self.pending.len() < 1_000_000 {
                    self.pending.insert(call_id.clone(), at);
                }
                self.node
                    .upsert_legs(call_id, other_call_id, key, version, record);
            }
            Cmd::Remove {
                call_id,
                key,
                version,
            } => self.node.remove(call_id, key, version),
            Cmd::Drain(reply) => {
                self.node.drain();
                self.drains.push(reply);
                return true;
            }
        }
        urgent
    }

    /// Serving changes, the status and map the services show, gauges.
    fn refresh(&mut self, shared: &watch::Sender<Shared>) {
        let mut gained = Vec::new();
        let wall = std::time::SystemTime::now();
        for shard in 0..SHARDS {
            let now = self.node.serves(shard);
            if now != self.served[shard] {
                self.served[shard] = now;
                self.served_since = wall;
                if now {
                    gained.push(shard);
                } else {
                    let _ = self.notes.send(Note::Stopped { shard });
                }
            }
        }
        if !gained.is_empty() {
            let mut calls: BTreeMap<usize, Vec<cpb::CallUpsert>> =
                gained.iter().map(|&s| (s, Vec::new())).collect();
            for c in self.node.table().calls() {
                if let Some(v) = calls.get_mut(&shard_of(c.key, SHARDS)) {
                    v.push(c.clone());
                }
            }
            for (shard, calls) in calls {
                let _ = self.notes.send(Note::Serving { shard, calls });
            }
        }
        let s = self.node.status();
        let t = self.node.table();
        let mut per: HashMap<u64, u64> = HashMap::new();
        for c in t.calls() {
            *per.entry(t.owner_of_key(c.key)).or_default() += 1;
        }
        let status = pb::ClusterStatus {
            id: s.id,
            leader: s.leader,
            term: s.term,
            commit: s.commit,
            applied: s.applied,
            epoch: s.epoch,
            calls: s.calls as u64,
            owned_shards: s.owned_shards as u64,
            serving_shards: s.serving_shards as u64,
            members_up: t.members_up().collect(),
            calls_per_worker: per,
            serving_map: serving_map(&self.served),
            serving_since_unix_ms: unix_ms(self.served_since),
            at_unix_ms: unix_ms(wall),
            lease_until_unix_ms: {
                // The SIP loop's deadline (stored just before this), as
                // wall-clock time.
                let at = self.epoch
                    + Duration::from_nanos(self.lease.load(std::sync::atomic::Ordering::Relaxed));
                unix_ms(wall + at.saturating_duration_since(tokio::time::Instant::now()))
            },
        };
        metrics::gauge!(RAFT_TERM).set(s.term as f64);
        metrics::gauge!(RAFT_LEADER).set(s.leader as f64);
        metrics::gauge!(RAFT_IS_LEADER).set(f64::from(u8::from(s.leader == s.id)));
        metrics::gauge!(RAFT_COMMIT).set(s.commit as f64);
        metrics::gauge!(RAFT_APPLY_LAG).set(s.commit.saturating_sub(s.applied) as f64);
        metrics::gauge!(MAP_EPOCH).set(s.epoch as f64);
        metrics::gauge!(SHARDS_SERVED).set(s.serving_shards as f64);
        metrics::gauge!(REPLICATED_CALLS).set(s.calls as f64);
        metrics::counter!(RAFT_REFUSED).absolute(self.node.refused());
        let ready = s.epoch > 0 && s.leader != 0 && self.node.caught_up();
        self.ready
            .send_if_modified(|r| std::mem::replace(r, ready) != ready);
        // Status readers take the latest when they ask; map watchers
        // (edges) are woken only by a new epoch, not by every tick.
        shared.send_if_modified(|sh| {
            sh.status = status;
            if sh.map.map.as_ref().map(|m| m.epoch) == Some(t.epoch()) {
                return false;
            }
            sh.map = pb::MapView {
                map: Some(cpb::ShardMap {
                    epoch: t.epoch(),
                    owners: t.owners().to_vec(),
                }),
                sip: self.peers.iter().map(|p| (p.id, p.sip.clone())).collect(),
            };
            true
        });
    }
}

/// Group commit windows (`--commit-window-ms`), aligned on the wall clock
/// so that the workers' windows close together without talking: a
/// follower proposes what it queued at the window's end, and the leader
/// takes the followers' forwarded proposals and its own a little later
/// (`lag`) into one Ready: one disk write per replica and one append per
/// follower for the whole cluster's window, where unaligned windows cost a
/// round per worker. Clocks that disagree by more than the lag cost rounds
/// and latency, never safety: a proposal the leader gets late goes at once.
#[derive(Debug, Clone, Copy)]
struct Window {
    len: Duration,
    /// How long after the window's end the leader proposes (loopback or a
    /// LAN carries a follower's proposal well within it).
    lag: Duration,
}

impl Window {
    fn new(len: Duration) -> Self {
        Self {
            len,
            lag: (len / 4).min(Duration::from_millis(3)),
        }
    }

    fn on(&self) -> bool {
        !self.len.is_zero()
    }

    /// Time since the start of the current window, from the wall clock.
    fn elapsed_in_window(&self) -> Duration {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let len = self.len.as_nanos().max(1);
        Duration::from_nanos((since.as_nanos() % len) as u64)
    }

    /// When what is queued now goes: the end of the current window for a
    /// follower; for the leader, `lag` after the end of the window whose
    /// followers' proposals it still waits for.
    fn close(&self, now: tokio::time::Instant, leader: bool) -> tokio::time::Instant {
        let into = self.elapsed_in_window();
        if !leader {
            return now + (self.len - into);
        }
        if into < self.lag {
            now + (self.lag - into)
        } else {
            now + (self.len - into) + self.lag
        }
    }

    /// As leader, when forwarded proposals that arrived now go: with the
    /// current window's, or at once if they came after it closed.
    fn leader_close(&self, now: tokio::time::Instant) -> tokio::time::Instant {
        let into = self.elapsed_in_window();
        if into < self.lag {
            now + (self.lag - into)
        } else {
            now
        }
    }
}

/// Hands the node's messages to the peers' senders, one batch per peer
/// (nothing while isolated by fault injection).
fn send_out(
    node: &mut Node,
    outs: &BTreeMap<u64, mpsc::UnboundedSender<Vec<Message>>>,
    isolated: bool,
) {
    let mut per: BTreeMap<u64, Vec<Message>> = BTreeMap::new();
    for m in node.take_messages() {
        per.entry(m.to).or_default().push(m);
    }
    if isolated {
        return;
    }
    for (to, msgs) in per {
        if let Some(tx) = outs.get(&to) {
            let _ = tx.send(msgs);
        }
    }
}

/// Sleeps until `t`, or forever without one.
async fn sleep_until_some(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Sends raft messages to one peer over a client stream, reconnecting
/// whenever it breaks. Messages that find no connection are dropped: raft
/// resends what matters.
async fn sender(to: String, mut rx: mpsc::UnboundedReceiver<Vec<Message>>) {
    let url = format!("http://{to}");
    loop {
        let client = match pb::raft_client::RaftClient::connect(url.clone()).await {
            Ok(c) => c.max_encoding_message_size(64 << 20),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                // Drop what queued while the peer was away.
                while rx.try_recv().is_ok() {}
                continue;
            }
        };
        let (tx, srx) = mpsc::channel::<pb::RaftBatch>(1024);
        let mut client = client;
        let mut call = Box::pin(async move {
            client
                .send(tokio_stream::wrappers::ReceiverStream::new(srx))
                .await
        });
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(msgs) = batch else { return };
                    let batch = pb::RaftBatch {
                        group: 1,
                        messages: msgs.iter().map(handover_cluster::encode_message).collect(),
                    };
                    if tx.send(batch).await.is_err() {
                        break;
                    }
                }
                _ = &mut call => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Clone)]
struct Services {
    inbox: mpsc::UnboundedSender<Message>,
    shared: watch::Receiver<Shared>,
    drain: mpsc::UnboundedSender<oneshot::Sender<bool>>,
    isolation: Option<Isolation>,
}

#[tonic::async_trait]
impl pb::raft_server::Raft for Services {
    async fn send(
        &self,
        request: tonic::Request<tonic::Streaming<pb::RaftBatch>>,
    ) -> Result<tonic::Response<pb::Ack>, tonic::Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if batch.group != 1 {
                return Err(tonic::Status::invalid_argument(format!(
                    "unknown Raft group {}",
                    batch.group
                )));
            }
            if self.isolation.as_ref().is_some_and(Isolation::now) {
                continue;
            }
            for bytes in &batch.messages {
                match handover_cluster::decode_message(bytes) {
                    Some(m) => {
                        if self.inbox.send(m).is_err() {
                            return Err(tonic::Status::unavailable("replica stopped"));
                        }
                    }
                    None => {
                        return Err(tonic::Status::invalid_argument("undecodable raft message"));
                    }
                }
            }
        }
        Ok(tonic::Response::new(pb::Ack {}))
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Services {
    async fn status(
        &self,
        _: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::ClusterStatus>, tonic::Status> {
        Ok(tonic::Response::new(self.shared.borrow().status.clone()))
    }

    type WatchMapStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::MapView, tonic::Status>> + Send>,
    >;

    async fn watch_map(
        &self,
        _: tonic::Request<pb::WatchRequest>,
    ) -> Result<tonic::Response<Self::WatchMapStream>, tonic::Status> {
        let mut rx = self.shared.clone();
        let stream = async_stream(move |tx| async move {
            let mut last = None;
            loop {
                let view = rx.borrow_and_update().map.clone();
                let epoch = view.map.as_ref().map(|m| m.epoch);
                if epoch != last && epoch.is_some_and(|e| e > 0) {
                    last = epoch;
                    if tx.send(Ok(view)).await.is_err() {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(stream))
    }

    async fn drain(
        &self,
        _: tonic::Request<pb::DrainRequest>,
    ) -> Result<tonic::Response<pb::DrainReply>, tonic::Status> {
        let (tx, rx) = oneshot::channel();
        self.drain
            .send(tx)
            .map_err(|_| tonic::Status::unavailable("replica stopped"))?;
        let drained = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        Ok(tonic::Response::new(pb::DrainReply { drained }))
    }

    async fn isolate(
        &self,
        req: tonic::Request<pb::IsolateRequest>,
    ) -> Result<tonic::Response<pb::IsolateReply>, tonic::Status> {
        let Some(iso) = &self.isolation else {
            return Err(tonic::Status::failed_precondition(
                "fault injection is off: start the worker with --fault-injection",
            ));
        };
        let req = req.into_inner();
        if req.panic_replica {
            tracing::warn!("fault injection: the replica thread will panic");
            iso.panic.store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(tonic::Response::new(pb::IsolateReply {}));
        }
        let ms = req.millis.min(600_000);
        iso.until(tokio::time::Instant::now() + Duration::from_millis(ms));
        tracing::warn!(ms, "fault injection: Raft traffic cut both ways");
        Ok(tonic::Response::new(pb::IsolateReply {}))
    }
}

/// A stream fed by a task through a channel (what `async-stream` would
/// do, with what tokio already gives).
fn async_stream<T, F, Fut>(f: F) -> std::pin::Pin<Box<dyn tokio_stream::Stream<Item = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// `served` as a bitmap: bit s of byte s/8, least significant first.
fn serving_map(served: &[bool]) -> Vec<u8> {
    let mut m = vec![0u8; served.len().div_ceil(8)];
    for (s, _) in served.iter().enumerate().filter(|(_, on)| **on) {
        m[s / 8] |= 1 << (s % 8);
    }
    m
}

/// Milliseconds since the Unix epoch (0 for a time before it).
fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_map_has_one_bit_per_shard_least_significant_first() {
        let mut served = vec![false; 16];
        served[0] = true;
        served[9] = true;
        served[15] = true;
        assert_eq!(serving_map(&served), [0b0000_0001, 0b1000_0010]);
        assert_eq!(serving_map(&[false; 4096]).len(), 512);
    }

    #[test]
    fn addresses_are_ip_port_or_host_port() {
        for ok in [
            "127.0.0.1:7001",
            "[::1]:7001",
            "localhost:7001",
            "handover-worker-0.handover-worker:7001",
            "handover-worker-0.handover-worker.voice.svc.cluster.local:5080",
        ] {
            assert_eq!(host_port(ok).as_deref(), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "7001",
            "localhost",
            "localhost:0",
            "localhost:70000",
            ":7001",
            "-bad.example:7001",
            "a..b:7001",
            "under_score:7001",
            "::1:7001",
        ] {
            assert_eq!(host_port(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn statefulset_ordinals_are_ids_from_one() {
        assert_eq!(id_from_hostname("handover-worker-0").unwrap(), 1);
        assert_eq!(id_from_hostname("handover-worker-12\n").unwrap(), 13);
        let e = id_from_hostname("worker").unwrap_err().to_string();
        assert!(e.contains("does not end in -N"), "{e}");
        assert!(id_from_hostname("handover-worker-x").is_err());
    }

    #[test]
    fn peers_take_names_and_say_what_is_wrong() {
        let p = parse_peer(
            "2=handover-worker-1.handover-worker:7001,handover-worker-1.handover-worker:5080",
        )
        .unwrap();
        assert_eq!(p.id, 2);
        assert_eq!(p.grpc, "handover-worker-1.handover-worker:7001");
        assert_eq!(p.sip, "handover-worker-1.handover-worker:5080");
        let e = parse_peer("1=localhost:7001").unwrap_err().to_string();
        assert!(e.contains("expected ID=GRPC_ADDR,SIP_ADDR"), "{e}");
        let e = parse_peer("0=localhost:7001,localhost:5080")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ids start at 1"), "{e}");
        assert!(parse_peer("1=localhost:7001,local host:5080").is_err());
    }

    #[test]
    fn names_resolve_ipv4_first() {
        let a = resolve_now("localhost:5080").unwrap();
        assert_eq!(a, "127.0.0.1:5080".parse::<SocketAddr>().unwrap());
        let e = resolve_waiting("no-such-host.invalid:5080", Duration::from_millis(600))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot resolve no-such-host.invalid:5080"),
            "{e}"
        );
    }
}
