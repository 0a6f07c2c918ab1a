//! The worker's replication shell: a [`handover_cluster::Node`] on its own
//! thread, its log under `--data` (`raft-ID/`), raft messages over gRPC (tonic
//! client streams, one per peer, batched), and the `Admin` service
//! (`handover status`, the edges' map watch, drain).
//!
//! The SIP loop talks to it through channels only: it sends call records
//! ([`Cmd`]) and hears which shards it serves, with the replicated calls of
//! each shard it takes over ([`Note`]). Nothing on the SIP path waits for
//! Raft.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use handover_cluster::{Config, Disk, Event, Message, Node, Window, pb as cpb, shard_of};
use handover_sip::ids::SHARDS;
use tokio::sync::{mpsc, oneshot, watch};

use crate::fault::Faults;
use crate::peers::{Peer, resolve_now};
use crate::rpc::pb;
use crate::services::{Services, serving_map, unix_ms};
use crate::tls::{REFUSED, REFUSED_REASONS, TlsDir, tls_incoming};

/// One Raft tick.
const TICK: Duration = Duration::from_millis(100);

const RAFT_TERM: &str = "handover_raft_term";
const RAFT_LEADER: &str = "handover_raft_leader";
const RAFT_VOTERS: &str = "handover_raft_voters";
const RAFT_LEARNERS: &str = "handover_raft_learners";
const RAFT_IS_LEADER: &str = "handover_raft_is_leader";
const RAFT_COMMIT: &str = "handover_raft_commit_index";
const RAFT_APPLY_LAG: &str = "handover_raft_apply_lag";
const RAFT_LOG_ENTRIES: &str = "handover_raft_log_entries";
const RAFT_LOG_BYTES: &str = "handover_raft_log_bytes";
const RAFT_SNAPSHOT_BYTES: &str = "handover_raft_snapshot_bytes";
const RAFT_COMMIT_TIME: &str = "handover_raft_commit_seconds";
const RAFT_PROPOSALS: &str = "handover_raft_proposals_total";
const RAFT_REFUSED: &str = "handover_raft_messages_refused_total";
const RAFT_COALESCED: &str = "handover_raft_records_coalesced_total";
const MAP_EPOCH: &str = "handover_shard_map_epoch";
const SHARDS_SERVED: &str = "handover_shards_served";
const REPLICATED_CALLS: &str = "handover_replicated_calls";
const MAP_CHANGES: &str = "handover_shard_map_changes_total";
const MEMBERS_DOWN: &str = "handover_cluster_members_down_total";
const RAFT_BATCH: &str = "handover_raft_batch_commands";

pub use api::*;
use transport::{send_out, sender};

mod api;
mod membership;
mod settings;
mod status;
mod transport;

/// Opens the log, binds the gRPC port and starts the replica's thread.
pub fn start(settings: Settings) -> anyhow::Result<Handle> {
    let Settings {
        id,
        peers,
        data,
        grpc_listen,
        commit_window: window,
        tls,
        min_free_bytes: _,
        log_bytes,
        records,
        reload,
        join,
        remove_down_after,
    } = settings;
    if let Some(t) = &tls {
        t.check()?;
    }
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
    // A joiner (`--join`, its `--peer`s name only itself) starts its log
    // with no voters: the leader's snapshot brings them (see
    // handover_cluster's membership). With more `--peer`s it is one of
    // the cluster's first voters, which `--join` only brings back after
    // a removal (every pod of a StatefulSet has the same flags).
    let voters: Vec<u64> = if join.is_some() && peers.len() == 1 {
        Vec::new()
    } else {
        peers.iter().map(|p| p.id).collect()
    };
    // A directory (`raft-{id}.redb`, a file, is an earlier version's log:
    // read once and rewritten).
    let path = data.join(format!("raft-{id}"));
    let (disk, store) = Disk::open(&path, &voters)
        .with_context(|| format!("cannot open the Raft log {}", path.display()))?;
    // After the log's lock: no live worker with this id uses the socket.
    let admin_path = crate::local::socket_path(&data, id);
    let admin_socket = crate::local::bind(&admin_path)?;
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
    cfg.compact_after_bytes = log_bytes;
    cfg.remove_down_after_ticks =
        remove_down_after.map(|d| (d.as_millis() / TICK.as_millis()).max(1) as u64);
    let locations = std::sync::Arc::clone(&cfg.locations);
    let node = Node::with_disk(cfg, disk, store, seed).context("cannot start the Raft replica")?;
    let cmd_tx = std::sync::Arc::new(Cmds::default());
    let cmd_rx = std::sync::Arc::clone(&cmd_tx);
    let writer = match records {
        Some(s) => Some(
            crate::records::Writer::start(s.clone(), id, Some(std::sync::Arc::clone(&cmd_tx)))
                .with_context(|| {
                    format!("cannot open the call records' file {}", s.path.display())
                })?,
        ),
        None => None,
    };
    let (note_tx, note_rx) = mpsc::unbounded_channel();
    let (lookup_tx, lookup_rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = watch::channel(false);
    let (members_tx, members_rx) = watch::channel(peers.clone());
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
                    let faults = Faults::new();
                    let (drain_tx, drain_rx) = mpsc::unbounded_channel();
                    if let Err(e) =
                        crate::local::serve(admin_socket, admin_path, drain_tx, faults.clone())
                    {
                        tracing::error!(error = %e, "cannot serve the admin socket");
                        return;
                    }
                    let mut replica =
                        Replica::new(node, peers, cmd_rx, note_tx, ready_tx, (lease2, epoch));
                    replica.window = window;
                    replica.tls = tls;
                    replica.writer = writer;
                    replica.reload = reload;
                    replica.join = join;
                    replica.members = members_tx;
                    replica.run(listener, faults, drain_rx, lookup_rx).await;
                });
            });
            // The replica only stops by failing. A worker must not go on
            // without it: it would serve calls it cannot replicate while
            // its health checks said all is well. Its end drops the notes'
            // sender, and the SIP loop stops with `sip::ReplicaEnded`, so
            // the others take its shards over and the orchestrator
            // restarts it (a panic's own message is printed above by the
            // panic hook).
            let how = if std::panic::catch_unwind(run).is_ok() {
                "stopped"
            } else {
                "panicked"
            };
            tracing::error!(how, "the Raft replica thread ended; the worker stops");
        })
        .context("cannot start the Raft thread")?;
    Ok(Handle {
        locations,
        lease: Lease { at: lease, epoch },
        lookup: lookup_tx,
        cmd: cmd_tx,
        notes: note_rx,
        grpc,
        data,
        ready: ready_rx,
        members: members_rx,
    })
}

/// What the gRPC services read, refreshed by the replica's loop.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shared {
    pub(crate) status: pb::ClusterStatus,
    pub(crate) map: pb::MapView,
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
    /// A drain was asked (SIGTERM or `handover drain`): not ready since.
    draining: bool,
    /// [`Note::Drained`] was sent.
    told_drained: bool,
    /// Group commit window (`--commit-window-ms`).
    window: Duration,
    /// Mutual TLS on the cluster port.
    tls: Option<TlsDir>,
    /// The call detail records' sink (none: records are off here).
    writer: Option<crate::records::Writer>,
    /// Reads the configuration file again (`handover reload`).
    reload: Option<Reloader>,
    /// Reloads asked over gRPC and proposed: token, who waits for the
    /// generation it becomes.
    reloads: Vec<(Vec<u8>, oneshot::Sender<u64>)>,
    /// The generation of the settings last told the SIP loop.
    generation: u64,
    /// This worker's file was compared with the log's settings (once,
    /// when first caught up: see `check_file`).
    file_checked: bool,
    /// `--join`: the member to ask.
    join: Option<String>,
    /// Members learnt from a join's answer (the `--peer`s are `peers`).
    learnt: BTreeMap<u64, Peer>,
    /// The members told the SIP loop and the edges.
    members: watch::Sender<Vec<Peer>>,
    /// `Admin.Leave` callers waiting for the removal: id, reply.
    leaves: Vec<(u64, oneshot::Sender<Vec<u64>>)>,
    /// This worker's own leave was applied and the SIP loop told.
    leaving: bool,
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
            draining: false,
            told_drained: false,
            window: Duration::ZERO,
            tls: None,
            writer: None,
            reload: None,
            reloads: Vec::new(),
            generation: 0,
            file_checked: false,
            join: None,
            learnt: BTreeMap::new(),
            members: watch::channel(Vec::new()).0,
            leaves: Vec::new(),
            leaving: false,
        }
    }

    async fn run(
        mut self,
        listener: tokio::net::TcpListener,
        faults: Faults,
        mut drain_rx: mpsc::UnboundedReceiver<oneshot::Sender<bool>>,
        mut lookups: mpsc::UnboundedReceiver<Lookup>,
    ) {
        // The AORs of the table as loaded (a snapshot on disk); the log's
        // replay brings the rest as `Bound` events.
        let _ = self.notes.send(Note::Registrations);
        let (inbox_tx, mut inbox) = mpsc::unbounded_channel::<Message>();
        let (shared_tx, shared_rx) = watch::channel(Shared::default());
        let (ask_tx, mut asks) = mpsc::channel::<Ask>(16);
        let services = Services {
            ask: ask_tx,
            inbox: inbox_tx,
            shared: shared_rx,
            faults: faults.clone(),
            tls: self.tls.is_some(),
            reload: self.reload.clone(),
            id: self.node.id(),
        };
        for r in REFUSED_REASONS {
            metrics::counter!(REFUSED, "reason" => r).increment(0);
        }
        let isolated = {
            let f = faults.clone();
            move || f.isolated()
        };
        // Large HTTP/2 windows, so flow control rarely sends a
        // WINDOW_UPDATE for appends of 6-10 KiB (no change measurable at
        // 500 calls/s); Raft's own flow control bounds what is in flight.
        let router = tonic::transport::Server::builder()
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .tcp_nodelay(true)
            .add_service(
                pb::raft_server::RaftServer::new(services.clone())
                    .max_decoding_message_size(64 << 20),
            )
            .add_service(pb::admin_server::AdminServer::new(services));
        match self.tls.clone() {
            None => {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                tokio::spawn(async move {
                    if let Err(e) = router.serve_with_incoming(incoming).await {
                        tracing::error!(error = %e, "gRPC server stopped");
                    }
                });
            }
            Some(dir) => {
                let incoming = tls_incoming(listener, dir);
                tokio::spawn(async move {
                    if let Err(e) = router.serve_with_incoming(incoming).await {
                        tracing::error!(error = %e, "gRPC server stopped");
                    }
                });
            }
        }
        let mut outs: BTreeMap<u64, mpsc::UnboundedSender<Vec<Message>>> = BTreeMap::new();
        self.sync_members(&mut outs);
        // `--join`: ask until this worker is in Raft's configuration (and
        // again if it is removed), until it leaves.
        let (learn_tx, mut learn_rx) = mpsc::unbounded_channel::<Vec<pb::Member>>();
        let leaving_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some(via) = self.join.clone() {
            let me = self
                .peers
                .iter()
                .find(|p| p.id == self.node.id())
                .cloned()
                .expect("validated: this worker is among its peers");
            tokio::spawn(membership::join(
                via,
                me,
                self.tls.clone(),
                learn_tx,
                std::sync::Arc::clone(&leaving_flag),
            ));
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
            faults.panic_if_asked();
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
                        let at = tokio::time::Instant::now() + window.leader_close(wall_clock());
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
                        flush_at.get_or_insert_with(|| tokio::time::Instant::now() + window.close(wall_clock(), self.node.is_leader()));
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
                Some(a) = asks.recv() => {
                    match a {
                        Ask::Calls { req, reply } => {
                            let _ = reply.send(self.calls(&req));
                        }
                        Ask::Hangup { call_id, reply } => {
                            let owner = self
                                .node
                                .table()
                                .call_by_leg(&call_id)
                                .map(|c| self.node.table().owner_of_key(c.key));
                            if owner.is_some() {
                                tracing::info!(call_id = %String::from_utf8_lossy(&call_id), "an operator hangs up a call");
                                self.node.hang_up(call_id);
                            }
                            let _ = reply.send(owner);
                        }
                        Ask::Reload { settings, reply } => {
                            // At most 16 waiting (a cluster without quorum
                            // commits none): the oldest hears nothing.
                            if self.reloads.len() >= 16 {
                                self.reloads.remove(0);
                            }
                            self.reloads.push((settings.token.clone(), reply));
                            self.node.propose_settings(*settings);
                        }
                        Ask::Join { .. } | Ask::Leave { .. } => self.ask_membership(a),
                    }
                    Ok(())
                }
                Some(members) = learn_rx.recv() => {
                    for m in members {
                        if m.id != self.node.id() && crate::peers::host_port(&m.grpc).is_some() {
                            self.learnt.insert(m.id, Peer { id: m.id, grpc: m.grpc, sip: m.sip });
                        }
                    }
                    self.sync_members(&mut outs);
                    Ok(())
                }
                Some(l) = lookups.recv() => {
                    // A read of what this replica applied: committed state.
                    let _ = l.reply.send(self.node.table().call_by_leg(&l.call_id).map(|c| c.to_pb()));
                    Ok(())
                }
            };
            if let Err(e) = r {
                // The log cannot be written: this replica must not go on
                // acknowledging anything. Stop (the worker stops with it);
                // the others carry on.
                tracing::error!(error = %e, "Raft replica failed");
                return;
            }
            send_out(&mut self.node, &outs, isolated());
            let awaiting = self.pending.len();
            let mut map_changed = false;
            // Shards this round's events started serving: their calls go
            // to the SIP loop after the events, from the table as applied.
            let mut gained = Vec::new();
            // A shard stopped or lost: a release follows the notes.
            let mut stopped = false;
            while let Some(e) = self.node.poll_event() {
                match e {
                    Event::Serving { shard } => {
                        self.served[shard] = true;
                        self.served_since = std::time::SystemTime::now();
                        gained.push(shard);
                        map_changed = true;
                    }
                    Event::Stopped { shard } => {
                        self.served[shard] = false;
                        self.served_since = std::time::SystemTime::now();
                        gained.retain(|&s| s != shard);
                        let _ = self.notes.send(Note::Stopped { shard });
                        stopped = true;
                        map_changed = true;
                    }
                    Event::Committed { call_id, version } => {
                        if let Some(t) = self.pending.remove(&call_id) {
                            metrics::histogram!(RAFT_COMMIT_TIME).record(t.elapsed().as_secs_f64());
                        }
                        if !faults.withholding() {
                            let _ = self.notes.send(Note::Committed { call_id, version });
                        }
                    }
                    Event::Refused { call_id } => {
                        tracing::debug!(call_id = %String::from_utf8_lossy(&call_id), "call record refused: this worker no longer owns its shard");
                        // A new call's first record (its 2xx held): the
                        // call fails cleanly; a later one's changes nothing
                        // (the shard's new owner carries the call).
                        let note = if self.pending.remove(&call_id).is_some() {
                            Note::Refused { call_id }
                        } else {
                            Note::Committed {
                                call_id,
                                version: 0,
                            }
                        };
                        let _ = self.notes.send(note);
                    }
                    Event::Removed { call_id } => {
                        self.pending.remove(&call_id);
                        let _ = self.notes.send(Note::EndCommitted { call_id });
                    }
                    Event::Recorded { call_id } => {
                        let _ = self.notes.send(Note::EndCommitted { call_id });
                    }
                    Event::HangUp { call_id, spare } => {
                        let _ = self.notes.send(Note::HangUp { call_id, spare });
                    }
                    Event::WriteRecord { record, retry } => match &self.writer {
                        Some(w) => w.write(*record, retry),
                        // Another worker keeps records and this one does
                        // not: the record waits for a worker that does
                        // to serve its shard.
                        None => tracing::warn!(
                            "a call record to write, but this worker keeps none (give it --records)"
                        ),
                    },
                    Event::Ended { call_id } => {
                        let _ = self.notes.send(Note::Ended { call_id });
                    }
                    Event::HandedOver { call_id } => {
                        if let Some(c) = self.node.table().call(&call_id) {
                            let shard = shard_of(c.key, SHARDS);
                            // Not served yet, or just gained: taken over
                            // with the shard.
                            if self.served[shard] && !gained.contains(&shard) {
                                let _ = self.notes.send(Note::Serving {
                                    shard,
                                    calls: vec![c.to_pb()],
                                });
                            }
                        }
                    }
                    Event::Map { lost, .. } => {
                        // Lost shards this worker never served (still in
                        // their wait) need a release too: their Stopped
                        // never comes.
                        stopped |= !lost.is_empty();
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
                    Event::Conf { voters, learners } => {
                        tracing::info!(?voters, ?learners, "Raft members changed");
                        map_changed = true;
                    }
                    Event::Bound { key, next_expiry } => {
                        let _ = self.notes.send(Note::Bound { key, next_expiry });
                    }
                    Event::BindDone {
                        aor,
                        version,
                        stored,
                    } => {
                        let _ = self.notes.send(Note::BindDone {
                            aor,
                            version,
                            stored,
                        });
                    }
                    Event::Restored => {
                        let _ = self.notes.send(Note::Registrations);
                    }
                }
            }
            // `handover status` shows the new generation at once.
            map_changed |= self.tell_settings();
            if ticked || map_changed {
                self.sync_members(&mut outs);
                self.membership_news(&leaving_flag);
            }
            if stopped {
                let epoch = self.node.table().epoch();
                let _ = self.notes.send(Note::Release { epoch });
            }
            if !gained.is_empty() {
                let mut calls: BTreeMap<usize, Vec<cpb::CallUpsert>> =
                    gained.iter().map(|&s| (s, Vec::new())).collect();
                for c in self.node.table().calls() {
                    if let Some(v) = calls.get_mut(&shard_of(c.key, SHARDS)) {
                        v.push(c.to_pb());
                    }
                }
                for (shard, calls) in calls {
                    let _ = self.notes.send(Note::Serving { shard, calls });
                }
            }
            // The batch in flight committed: what queued behind it goes.
            if self.window.is_zero()
                && awaiting > 0
                && self.pending.len() < awaiting
                && self.node.queued() > 0
            {
                if let Err(e) = self.node.propose_queued() {
                    tracing::error!(error = %e, "Raft replica failed");
                    return;
                }
                send_out(&mut self.node, &outs, isolated());
            }
            // Renewals and membership changes queued by a tick go with
            // the window too.
            if window.on() && flush_at.is_none() && self.node.queued() > 0 {
                flush_at = Some(
                    tokio::time::Instant::now() + window.close(wall_clock(), self.node.is_leader()),
                );
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
                if !self.file_checked && *self.ready.borrow() {
                    self.file_checked = true;
                    self.check_file();
                }
            }
            if self.node.drained() {
                if !self.told_drained {
                    self.told_drained = true;
                    let _ = self.notes.send(Note::Drained);
                }
                for d in self.drains.drain(..) {
                    let _ = d.send(true);
                }
            }
        }
    }

    /// Queues a command; true when a caller waits on its commit.
    fn command(&mut self, c: Cmd, at: tokio::time::Instant, proposals: &metrics::Counter) -> bool {
        proposals.increment(1);
        // Awaited: a new call's record (its 2xx is held), a registration
        // (its 200 is).
        // A release: the new owners wait for it.
        let urgent = match &c {
            Cmd::Upsert(u) => u.version == 1,
            Cmd::Bind(_) | Cmd::Released(..) | Cmd::Settings(_) => true,
            _ => false,
        };
        match c {
            Cmd::Upsert(mut u) => {
                // Awaited: a new call's record (its 2xx is held).
                if urgent && self.pending.len() < 1_000_000 {
                    self.pending.insert(u.call_id.clone(), at);
                }
                // Stamped at the first version; the table keeps it.
                if u.version == 1 {
                    u.answered_unix_ms = unix_ms(std::time::SystemTime::now());
                }
                self.node.upsert_call(*u);
            }
            Cmd::Acked { call_id } => self.node.acked(call_id),
            Cmd::Remove {
                call_id,
                key,
                version,
            } => self.node.remove(call_id, key, version),
            Cmd::Bind(r) => self.node.bind(r),
            Cmd::Released(epoch, calls) => self.node.released(epoch, calls),
            Cmd::Replaced { call_id, spare } => self.node.replaced(call_id, spare),
            Cmd::Ended(record) => self.node.record_ended(*record),
            Cmd::Written(ids) => self.node.records_written(ids),
            Cmd::Settings(s) => self.node.propose_settings(*s),
            Cmd::Drain(reply) => {
                self.node.drain();
                self.draining = true;
                self.drains.push(reply);
                return true;
            }
        }
        urgent
    }
}

/// Time since the Unix epoch (the group-commit windows are aligned on
/// it, see [`Window`]).
fn wall_clock() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Sleeps until `t`, or forever without one.
async fn sleep_until_some(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_guard_is_full_below_its_line_and_clear_at_twice_it() {
        let mut g = DiskGuard::new(100);
        assert!(!g.update(1_000));
        assert!(g.update(99), "below the line");
        assert!(g.update(150), "still full under twice the line");
        assert!(!g.update(200), "room again at twice it");
        assert!(!g.update(100));
        let mut never = DiskGuard::new(0);
        assert!(!never.update(0), "0: never full");
    }
}
