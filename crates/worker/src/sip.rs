//! The worker's SIP loop: a thin shell around [`handover_call::B2bua`]:
//! one UDP socket, one timer, the admin port, and channels to the replica
//! ([`crate::replica`]). Requests it originates go to the edge; responses
//! go to their top Via.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use handover_call::{B2bua, Config, Routes, TransferMode};
use handover_sip::ids::{Hashing, SHARDS, shard_of};
use handover_txn::{Instant, TimerConfig};
use tokio::net::UdpSocket;

mod names;
mod settings;

use names::*;
pub use settings::{Auth, ReplicaEnded, Settings};
use settings::{modified, read_users};

/// How long a worker stopped by SIGTERM waits, once drained, for the calls
/// it was still setting up (their callees ringing) before it exits.
const DRAIN_SETUP: Duration = Duration::from_secs(20);

/// Replaces look-ups in flight at most (see the SIP loop).
const MAX_LOOKUPS: usize = 256;

/// `SO_RCVBUF` and `SO_SNDBUF` asked for the SIP socket, as the edge's
/// default (the kernel caps them at net.core.rmem_max: with 4 MiB there,
/// about 3,600 datagrams of a kilobyte wait while the worker is busy,
/// against 200 with the kernel's default).
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// When the SIP loop must next run the B2BUA's timers: its next deadline,
/// or an hour from now when it has none. (An hour from the worker's start
/// was a deadline in the past once the worker had run an hour, so an idle
/// worker spun.)
fn next_wake(
    start: tokio::time::Instant,
    now: tokio::time::Instant,
    deadline: Option<Instant>,
) -> tokio::time::Instant {
    let idle = now + Duration::from_secs(3600);
    // A deadline a peer pushed far out (a huge Session-Expires) would
    // overflow `Instant + Duration`: the hour's wake covers it.
    deadline
        .and_then(|t| start.checked_add(t.since_epoch()))
        .map_or(idle, |t| t.min(idle))
}

pub fn run(args: Settings) -> anyhow::Result<()> {
    let mut routes = Routes::default();
    for r in &args.routes {
        routes.add(r).map_err(|e| anyhow::anyhow!("--route: {e}"))?;
    }
    if routes.is_empty() {
        tracing::info!(
            "no route configured: calls reach registered phones only (give --route USER=IP:PORT for trunks and PBXs)"
        );
    }
    let users = match &args.auth {
        Some(a) => Some(read_users(&a.users)?),
        None => None,
    };
    let handle = crate::admin::install_recorder("worker")?;
    let mut replica = match args.replication.clone() {
        Some(mut rep) => {
            rep.records = args.records.clone();
            rep.reload = args.reload.clone();
            let id = rep.id;
            let r = crate::replica::start(rep)?;
            println!(
                "replication: raft id {id}, gRPC on {}, log in {}",
                r.grpc,
                r.data.display()
            );
            Some(r)
        }
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        let listener = crate::admin::bind(args.admin).await?;
        let admin_local = listener.local_addr()?;
        // The edge's bundles and the phones' datagrams wait here while the
        // worker is busy (a Raft write, a burst): a small buffer drops them
        // and only the phones' retransmissions recover the calls.
        let sock = handover_io::bind_udp(args.listen, SOCKET_BUFFER_BYTES, SOCKET_BUFFER_BYTES)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    anyhow::anyhow!(
                        "{} is already in use: pick another address with --listen",
                        args.listen
                    )
                } else {
                    anyhow::anyhow!("cannot open UDP socket on {}: {e}", args.listen)
                }
            })?;
        tracing::info!(
            recv_buffer = sock.recv_buffer_size().unwrap_or(0),
            send_buffer = sock.send_buffer_size().unwrap_or(0),
            "socket buffers (the kernel caps them at net.core.rmem_max/wmem_max)"
        );
        let sock = UdpSocket::from_std(std::net::UdpSocket::from(sock))
            .context("cannot register the UDP socket")?;
        println!("handover worker listening on udp {}", sock.local_addr()?);
        println!("metrics: http://{admin_local}/metrics");
        let ready_rx = replica.as_ref().map(|r| r.ready.clone());
        // Ready when replication is off, or once the replica has a map and
        // has applied what it knows is committed.
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let draining_r = Arc::clone(&draining);
        let ready = move || {
            !draining_r.load(std::sync::atomic::Ordering::Relaxed)
                && ready_rx.as_ref().is_none_or(|r| *r.borrow())
        };
        tokio::spawn(crate::admin::serve(listener, handle, Arc::new(ready)));
        let timers = TimerConfig {
            t1: Duration::from_millis(args.t1_ms),
            t2: Duration::from_secs(4).max(Duration::from_millis(args.t1_ms)),
            ..TimerConfig::default()
        };
        timers
            .validate()
            .map_err(|e| anyhow::anyhow!("--t1-ms: {e}"))?;
        let cfg = Config {
            advertised: args.advertise.unwrap_or(args.edge).to_string(),
            timers,
            hashing: args.hashing,
            routes,
            max_call_age: Duration::from_secs(args.max_call_age_s),
            ring_timeout: Duration::from_secs(args.ring_timeout_s),
            transfer_mode: args.transfer_mode,
            trusted: args.trusted,
            identity_headers: args.identity_headers,
            assert_identity: args.assert_identity,
            max_calls: args.max_calls,
            max_calls_per_source: args.max_calls_per_source,
            limits: args.limits,
        };
        // Branches, tags and Call-IDs from a ChaCha12 stream seeded by the OS
        // once: unpredictable, without a getrandom system call per id.
        let rng = <rand_chacha::ChaCha12Rng as rand_core::SeedableRng>::try_from_os_rng()
            .context("cannot seed the random number generator")?;
        let b2b_limits = cfg.limits;
        let mut b2b = B2bua::new(cfg, rng);
        // Which shards this worker serves: all without replication; with
        // it, those the cluster's map and lease give it (see cluster.rs).
        let mut served = vec![replica.is_none(); SHARDS];
        if replica.is_some() {
            b2b.set_replication(true);
        }
        b2b.set_records(args.records.is_some());
        // One DEBUG line per ended call, when the filter lets it through.
        let call_log = crate::record::call_log_on();
        b2b.set_call_log(call_log);
        // Without replication this worker writes its records itself (with
        // it, the replica writes those of the shards it serves).
        let own_records = match (&args.records, &replica) {
            (Some(s), None) => Some(
                crate::records::Writer::start(s.clone(), 0, None).with_context(|| {
                    format!("cannot open the call records' file {}", s.path.display())
                })?,
            ),
            _ => None,
        };
        // The other workers' SIP addresses, for answers that reach this
        // worker while another one holds their call (see
        // `B2bua::sent_elsewhere`).
        let members = match (&args.replication, &replica) {
            (Some(r), Some(h)) => {
                b2b.set_member(r.id);
                crate::peers::member_addresses(r.id, h.members.clone())
            }
            _ => tokio::sync::watch::channel(HashMap::new()).1,
        };
        // Registrations expire in wall-clock time, the same on every
        // replica: this clock's epoch in Unix milliseconds.
        let mut reg_cfg = args.registrar.clone();
        reg_cfg.timers = timers;
        reg_cfg.wall_epoch_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(0);
        // One copy of the bindings per worker: the replicated table's,
        // read by the registrar (without replication, the registrar's own).
        let locations = replica
            .as_ref()
            .map_or_else(handover_call::registrar::Locations::shared, |r| {
                std::sync::Arc::clone(&r.locations)
            });
        b2b.set_registrar(handover_call::registrar::Registrar::new(
            reg_cfg,
            replica.is_some(),
            locations,
        ));
        b2b.set_upstreams(args.upstreams.clone());
        let mut users_seen = args.auth.as_ref().and_then(|a| modified(&a.users));
        if let (Some(a), Some(users)) = (&args.auth, users) {
            use handover_call::registrar::digest::{Digest, Guard};
            println!("digest authentication: realm {}, {} users", a.realm, users.len());
            b2b.set_auth(Some((
                Digest::new(
                    a.realm.clone(),
                    a.algorithms.clone(),
                    args.hashing.secret(),
                    a.nonce_ttl_s,
                    users,
                ),
                Guard::new(a.max_failures, 60, a.ban_s),
            )));
        }
        let reg_metrics = RegMetrics::new();
        let mut last_reg = handover_call::registrar::Stats::default();
        let mut last_auth = handover_call::AuthStats::default();
        let mut sweep_at = tokio::time::Instant::now();
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let adopted = metrics::counter!(ADOPTED);
        let resumed = metrics::counter!(RESUMED);
        let oks_resent = metrics::counter!(OKS_RESENT);
        let ended_elsewhere = metrics::counter!(ENDED_ELSEWHERE);
        let refused_records = metrics::counter!(CALLS_ENDED, "cause" => "refused_record");
        let not_served = metrics::counter!(NOT_SERVED);
        let passed_on = metrics::counter!(PASSED_ON);
        // The drain is applied: no shard, no lease; the calls this worker
        // was setting up are finished here (their answers passed on by the
        // new owners), and nothing else.
        let mut drained = false;
        let unreplicated = metrics::counter!(UNREPLICATED);
        let refused_in_call = metrics::counter!(REFUSED_IN_CALL);
        let refused_full = metrics::counter!(REFUSED_FULL, "cause" => "max_calls");
        let refused_per_source = metrics::counter!(REFUSED_FULL, "cause" => "max_calls_per_source");
        let refused_storage = metrics::counter!(REFUSED_FULL, "cause" => "storage_full");
        // The log's disk: (guard, full now).
        let mut disk = (
            crate::replica::DiskGuard::new(
                args.replication.as_ref().map_or(0, |r| r.min_free_bytes),
            ),
            false,
        );
        let handed_over = metrics::counter!(HANDED_OVER);
        let rx_drops = metrics::counter!(RX_QUEUE_DROPS);
        // By request: a REFER's Refer-To (the transfer's two calls are on
        // two workers), or the INVITE of the transferee's new call.
        let replaces_elsewhere = [
            metrics::counter!(REPLACES_ELSEWHERE, "request" => "refer"),
            metrics::counter!(REPLACES_ELSEWHERE, "request" => "invite"),
        ];
        // Datagrams whose Replaces names another worker's call, back with
        // that call's committed record (see `B2bua::named_elsewhere`).
        let (resolved_tx, mut resolved_rx) =
            tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, Option<handover_call::CallRecord>)>();
        let mut lookups = 0usize;
        // The last state of calls handed over whose latest record was not
        // seen committed: sent with the next release (`B2bua::hand_over`).
        let mut handing: Vec<handover_cluster::pb::CallUpsert> = Vec::new();
        let start = tokio::time::Instant::now();
        let now = move || Instant::from_epoch(start.elapsed());
        let mut buf = vec![0u8; 65_536];
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // Once, before the loop: a `ctrl_c()` made anew in each turn of
        // the loop misses a SIGINT that lands between two turns (a busy
        // worker then never stopped).
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        crate::reload::init();
        // Reloads applied by this worker alone (without replication the
        // generations are its own).
        let mut generation = 0u64;
        let started = metrics::counter!(CALLS_STARTED);
        let answered = metrics::counter!(CALLS_ANSWERED);
        let hung_up = metrics::counter!(CALLS_ENDED, "cause" => "hangup");
        let failed = metrics::counter!(CALLS_ENDED, "cause" => "failed");
        let torn_down = metrics::counter!(CALLS_ENDED, "cause" => "torn_down");
        let by_operator = metrics::counter!(CALLS_ENDED, "cause" => "operator");
        let active = metrics::gauge!(CALLS_ACTIVE);
        // Set when it changes, not after every datagram (see `names::add`).
        let mut last_active = usize::MAX;
        let txns = metrics::gauge!(TXNS_ACTIVE);
        let retrans = metrics::counter!(RETRANSMISSIONS);
        let failovers = metrics::counter!(FAILOVERS);
        let forks = metrics::counter!(FORKS);
        let unanswered = metrics::counter!(UNANSWERED);
        let unacknowledged = metrics::counter!(UNACKNOWLEDGED);
        let first_response = metrics::histogram!(FIRST_RESPONSE);
        let answer = metrics::histogram!(ANSWER);
        let mut txns_at = start;
        // A drain under way (its reply, its start), and when to exit after.
        let mut drain: Option<(tokio::sync::oneshot::Receiver<bool>, tokio::time::Instant)> = None;
        let mut drain_exit: Option<tokio::time::Instant> = None;
        let mut drain_done: Option<tokio::time::Instant> = None;
        let mut last = handover_call::Stats::default();
        let mut bundler = handover_sip::Bundler::new(args.bundle_bytes);
        loop {
            let wake = next_wake(start, tokio::time::Instant::now(), b2b.poll_timeout());
            let note = async {
                match replica.as_mut() {
                    Some(r) => r.notes.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = sock.recv_from(&mut buf) => match r {
                    Ok((n, _)) => {
                        let bytes = &buf[..n];
                        let lease_live = replica.as_ref().is_none_or(|r| r.lease.live());
                        // Scanned once: the shard check, the Replaces
                        // look-up and the B2BUA all read this `Message`.
                        let scanned = handover_sip::scan_with(bytes, &b2b_limits);
                        let elsewhere = scanned.as_ref().ok().and_then(|m| b2b.sent_elsewhere(m));
                        match scanned {
                            // An answer for a call another worker is still
                            // setting up: its shard moved meanwhile (a join,
                            // a drain), and the edge routes by shard. Passed
                            // on unchanged, whatever this worker serves.
                            Ok(_) if elsewhere.is_some() => {
                                let to = elsewhere.and_then(|id| members.borrow().get(&id).copied());
                                match to {
                                    Some(to) => {
                                        passed_on.increment(1);
                                        if let Err(e) = sock.send_to(bytes, to).await {
                                            tracing::debug!(%to, error = %e, "send failed");
                                        }
                                    }
                                    None => not_served.increment(1),
                                }
                            }
                            Ok(m) if may_act(lease_live, drained, &m, &b2b) && served_or_known(&m, &b2b, &served) => {
                                // The call a Replaces names is another
                                // worker's: read its record from the
                                // replica, then handle the datagram
                                // (below). At most MAX_LOOKUPS at once:
                                // past that (a flood of Replaces naming
                                // nothing) the datagram goes on without.
                                let elsewhere = replica
                                    .as_ref()
                                    .filter(|_| lookups < MAX_LOOKUPS)
                                    .and_then(|r| b2b.named_elsewhere(&m).map(|c| (r, c)));
                                match elsewhere {
                                    Some((r, call_id)) => {
                                        lookups += 1;
                                        lookup_then(&r.lookup, call_id, bytes.to_vec(), &resolved_tx);
                                    }
                                    None => b2b.handle_message(now(), &m),
                                }
                            }
                            // Bad input: the B2BUA answers it (400) where
                            // it can.
                            Err(_) if lease_live => b2b.handle_datagram(now(), bytes),
                            // Not ours (yet): the sender retransmits, and
                            // by then the edge routes to the owner, or we
                            // are it. A 481 here would end the call.
                            _ => not_served.increment(1),
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "receive failed"),
                },
                Some((bytes, record)) = resolved_rx.recv() => {
                    lookups -= 1;
                    let lease_live = replica.as_ref().is_none_or(|r| r.lease.live());
                    match handover_sip::scan_with(&bytes, &b2b_limits) {
                        Ok(m) if lease_live && served_or_known(&m, &b2b, &served) => {
                            if let Some(r) = record {
                                replaces_elsewhere[usize::from(!bytes.starts_with(b"REFER "))]
                                    .increment(1);
                                b2b.learn_remote(r);
                            }
                            b2b.handle_message(now(), &m);
                            b2b.forget_remote();
                        }
                        _ => not_served.increment(1),
                    }
                }
                n = note => match n {
                    // The replica's thread ended (a panic, a log it cannot
                    // write) and dropped its side: stop with it.
                    None => return Err(ReplicaEnded.into()),
                    Some(crate::replica::Note::Serving { shard, calls }) => {
                        served[shard] = true;
                        let t = now();
                        for c in &calls {
                            match crate::record::decode(c) {
                                Some(rec) => {
                                    if b2b.adopt(t, rec) {
                                        adopted.increment(1);
                                    }
                                    // A hang-up applied before this worker
                                    // held the call: carried out now.
                                    let ended = match c.hang_up.as_deref() {
                                        Some([]) => b2b.hang_up(t, &c.call_id),
                                        Some(spare) => b2b.replaced(t, &c.call_id, spare),
                                        None => false,
                                    };
                                    if ended {
                                        tracing::info!(call_id = %String::from_utf8_lossy(&c.call_id), "a call taken over was hung up before (an operator, another worker's transfer): ended now");
                                    }
                                }
                                None => tracing::warn!("a replicated call record does not decode; skipped"),
                            }
                        }
                        if !calls.is_empty() {
                            tracing::info!(shard, calls = calls.len(), "serving a shard taken over");
                        }
                    }
                    Some(crate::replica::Note::Stopped { shard }) => {
                        served[shard] = false;
                        let (n, last) = b2b.hand_over(|k| shard_of(k, SHARDS) == shard);
                        handed_over.increment(n as u64);
                        handing.extend(last.iter().map(crate::record::upsert));
                    }
                    Some(crate::replica::Note::Bound { key, next_expiry }) => {
                        b2b.registrar().schedule(key, next_expiry);
                    }
                    Some(crate::replica::Note::BindDone { aor, version, stored }) => {
                        b2b.registrar().committed(&aor, version, stored);
                    }
                    Some(crate::replica::Note::Registrations) => {
                        b2b.registrar().rescan();
                    }
                    Some(crate::replica::Note::Refused { call_id }) => {
                        tracing::warn!(call_id = %String::from_utf8_lossy(&call_id), "a new call's record was refused (no worker owned its shard): 500 to the caller, BYE to the callee");
                        b2b.refused(now(), &call_id);
                    }
                    Some(crate::replica::Note::Ended { call_id }) => {
                        if b2b.ended_elsewhere(now(), &call_id) {
                            tracing::info!(call_id = %String::from_utf8_lossy(&call_id), "forgot a call its previous owner hung up while cut off");
                        }
                    }
                    // Every shard lost up to `epoch` is handed over (its
                    // Stopped came first): the new owners need not wait
                    // out this worker's lease.
                    Some(crate::replica::Note::Release { epoch }) => {
                        if let Some(r) = &replica {
                            r.cmd.send(crate::replica::Cmd::Released(epoch, std::mem::take(&mut handing)));
                        }
                    }
                    Some(crate::replica::Note::EndCommitted { call_id }) => {
                        b2b.end_committed(now(), &call_id);
                    }
                    Some(crate::replica::Note::HangUp { call_id, spare }) if !spare.is_empty() => {
                        if b2b.replaced(now(), &call_id, &spare) {
                            tracing::debug!(call_id = %String::from_utf8_lossy(&call_id), "a call replaced by another worker's transfer ended");
                        }
                    }
                    Some(crate::replica::Note::HangUp { call_id, .. }) => {
                        if b2b.hang_up(now(), &call_id) {
                            tracing::info!(call_id = %String::from_utf8_lossy(&call_id), "hung up by an operator");
                        }
                    }
                    Some(crate::replica::Note::Settings(s)) => {
                        if crate::reload::apply(&mut b2b, &s).is_ok() {
                            // The users file is read again too.
                            users_seen = None;
                        }
                    }
                    Some(crate::replica::Note::Leave) => {
                        // The cluster applied this worker's leave: drain
                        // and stop as on SIGTERM.
                        if let Some(r) = &replica && drain.is_none() && drain_exit.is_none() {
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            r.cmd.send(crate::replica::Cmd::Drain(tx));
                            draining.store(true, std::sync::atomic::Ordering::Relaxed);
                            tracing::info!("leaving the cluster: draining (handing this worker's shards and calls to the others)");
                            drain = Some((rx, tokio::time::Instant::now()));
                        }
                    }
                    Some(crate::replica::Note::Drained) => {
                        drained = true;
                        tracing::info!(calls_in_setup = b2b.calls_active(), "drained: finishing only the calls still being set up here");
                    }
                    Some(crate::replica::Note::Committed { call_id, version }) => {
                        b2b.stored(&call_id, version);
                        b2b.committed(now(), &call_id);
                        // Confirmed here after its shard moved: the new
                        // owner has it from the replica.
                        if let Some(k) = b2b.key_of(&call_id)
                            && !served[shard_of(k, SHARDS)]
                        {
                            let (n, last) = b2b.hand_over(|x| x == k);
                            handed_over.increment(n as u64);
                            handing.extend(last.iter().map(crate::record::upsert));
                        }
                    }
                },
                () = tokio::time::sleep_until(wake) => b2b.handle_timeout(now()),
                // Housekeeping (below) runs at least once a second.
                _ = housekeeping.tick() => {}
                _ = int.recv() => break,
                _ = hup.recv() => {
                    let id = args.replication.as_ref().map_or(0, |r| r.id);
                    if let Some(mut s) = crate::reload::read(args.reload.as_ref(), id) {
                        match &replica {
                            // Every worker applies it from the log.
                            Some(r) => {
                                tracing::info!(routes = s.routes.len(), "SIGHUP: configuration read; proposed to the cluster");
                                r.cmd.send(crate::replica::Cmd::Settings(Box::new(s)));
                            }
                            None => {
                                generation += 1;
                                s.generation = generation;
                                if crate::reload::apply(&mut b2b, &s).is_ok() {
                                    users_seen = None;
                                }
                            }
                        }
                    }
                }
                _ = term.recv() => match &replica {
                    // SIGTERM (Kubernetes' stop): hand the shards over first.
                    Some(r) if drain.is_none() && drain_exit.is_none() => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        r.cmd.send(crate::replica::Cmd::Drain(tx));
                        draining.store(true, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!("SIGTERM: draining (handing this worker's shards and calls to the others)");
                        drain = Some((rx, tokio::time::Instant::now()));
                    }
                    _ => break,
                },
                done = async {
                    match drain.as_mut() {
                        Some((rx, t0)) => {
                            let deadline = *t0 + Duration::from_secs(10);
                            matches!(tokio::time::timeout_at(deadline, rx).await, Ok(Ok(true)))
                        }
                        None => std::future::pending().await,
                    }
                } => {
                    let took = drain.take().map(|(_, t)| t.elapsed()).unwrap_or_default();
                    if done {
                        tracing::info!(seconds = took.as_secs_f64(), calls_left = b2b.calls_active(), "drained: every shard handed over");
                    } else {
                        tracing::warn!("drain did not complete within 10 s (no quorum?); stopping anyway");
                    }
                    // Let what is in flight (2xx resends, BYEs) finish, and
                    // the calls still ringing here get their answers.
                    drain_exit = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    drain_done = Some(tokio::time::Instant::now());
                }
                () = async {
                    match drain_exit {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {
                    // Calls set up here before the drain (ringing) finish
                    // here: wait for them, at most DRAIN_SETUP (within
                    // Kubernetes' 30 s grace period).
                    let waited = drain_done.map(|t| t.elapsed()).unwrap_or_default();
                    if b2b.calls_active() == 0 || waited >= DRAIN_SETUP {
                        if b2b.calls_active() > 0 {
                            tracing::warn!(calls = b2b.calls_active(), "stopping with calls still being set up");
                        }
                        break;
                    }
                    drain_exit = Some(tokio::time::Instant::now() + Duration::from_millis(200));
                }
            }
            // Housekeeping once a second: expired bindings of the AORs
            // this worker serves written out; the users file re-read when
            // it changed.
            if sweep_at.elapsed() >= Duration::from_secs(1) {
                sweep_at = tokio::time::Instant::now();
                {
                    use std::os::fd::AsFd as _;
                    if let Ok(n) = handover_io::receive_drops(sock.as_fd()) {
                        rx_drops.absolute(u64::from(n));
                    }
                }
                if let Some(r) = &replica {
                    match handover_io::free_bytes(&r.data) {
                        Ok(free) => {
                            let was = disk.1;
                            disk.1 = disk.0.update(free);
                            if disk.1 != was {
                                if disk.1 {
                                    tracing::error!(free, "the Raft log's disk is nearly full: new calls and registrations get 503 until there is room");
                                } else {
                                    tracing::info!(free, "room on the Raft log's disk again: new calls and registrations served");
                                }
                                b2b.set_storage_full(disk.1);
                            }
                            metrics::gauge!(FREE_BYTES).set(free as f64);
                            metrics::gauge!(STORAGE_FULL).set(if disk.1 { 1.0 } else { 0.0 });
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot read the free space of the Raft log's disk"),
                    }
                }
                b2b.sweep_registrations(now(), |k| served[shard_of(k, SHARDS)]);
                if let Some(a) = &args.auth {
                    let m = modified(&a.users);
                    if m != users_seen {
                        users_seen = m;
                        match read_users(&a.users) {
                            Ok(u) => {
                                tracing::info!(users = u.len(), "users file changed: reloaded");
                                b2b.set_users(u);
                            }
                            Err(e) => tracing::warn!(error = %e, "users file changed but does not read; the previous users stay"),
                        }
                    }
                }
                reg_metrics.gauges(b2b.registrar());
            }
            if let Some(r) = &replica {
                let mut cmds = Vec::new();
                while let Some(rec) = b2b.registrar().poll_write() {
                    cmds.push(crate::replica::Cmd::Bind(crate::record::registration_pb(&rec)));
                }
                while let Some(rep) = b2b.poll_replication() {
                    cmds.push(match rep {
                        handover_call::Replication::Upsert(rec) => {
                            crate::replica::Cmd::Upsert(Box::new(crate::record::upsert(&rec)))
                        }
                        handover_call::Replication::Acked { id } => {
                            crate::replica::Cmd::Acked { call_id: id }
                        }
                        handover_call::Replication::Remove { id, key, version } => {
                            crate::replica::Cmd::Remove { call_id: id, key, version }
                        }
                        handover_call::Replication::Replaced { id, spare } => {
                            crate::replica::Cmd::Replaced { call_id: id, spare }
                        }
                    });
                }
                while let Some(rec) = b2b.poll_record() {
                    if call_log {
                        crate::record::log_ended(&rec);
                    }
                    if args.records.is_some() {
                        cmds.push(crate::replica::Cmd::Ended(Box::new(
                            crate::record::call_detail_pb(&rec),
                        )));
                    }
                }
                if !cmds.is_empty() {
                    r.cmd.send_all(cmds);
                }
            } else {
                while let Some(rec) = b2b.poll_record() {
                    if call_log {
                        crate::record::log_ended(&rec);
                    }
                    if let Some(w) = &own_records {
                        w.write(crate::record::call_detail_pb(&rec), false);
                    }
                }
            }
            // What this round made for the edge shares datagrams
            // (`handover_sip::Bundler`): one send where there were two.
            while let Some((to, bytes)) = b2b.poll_transmit() {
                let to = to.unwrap_or(args.edge);
                let d = if to == args.edge && args.bundle_bytes > 0 {
                    match bundler.push(&bytes) {
                        Some(d) => d,
                        None => continue,
                    }
                } else {
                    &bytes
                };
                if let Err(e) = sock.send_to(d, to).await {
                    tracing::debug!(%to, error = %e, "send failed");
                }
            }
            if let Some(d) = bundler.finish()
                && let Err(e) = sock.send_to(d, args.edge).await
            {
                tracing::debug!(to = %args.edge, error = %e, "send failed");
            }
            let s = b2b.stats();
            add(&started, s.started, last.started);
            add(&answered, s.answered, last.answered);
            add(&hung_up, s.hung_up, last.hung_up);
            add(&failed, s.failed, last.failed);
            add(&torn_down, s.torn_down, last.torn_down);
            add(&by_operator, s.operator_hangups, last.operator_hangups);
            add(&retrans, s.retransmissions, last.retransmissions);
            add(&failovers, s.failovers, last.failovers);
            add(&forks, s.forks, last.forks);
            add(&unanswered, s.unanswered, last.unanswered);
            add(&unacknowledged, s.unacknowledged, last.unacknowledged);
            add(&unreplicated, s.unreplicated, last.unreplicated);
            add(&resumed, s.resumed, last.resumed);
            add(&oks_resent, s.oks_resent, last.oks_resent);
            add(&ended_elsewhere, s.ended_elsewhere, last.ended_elsewhere);
            add(&refused_records, s.refused_records, last.refused_records);
            add(&refused_in_call, s.refused_in_call, last.refused_in_call);
            add(&refused_full, s.refused_full, last.refused_full);
            add(&refused_per_source, s.refused_per_source, last.refused_per_source);
            add(&refused_storage, s.refused_storage, last.refused_storage);
            let rs = b2b.registrar().stats();
            reg_metrics.count(&last_reg, &rs, &last_auth, &s.auth);
            last_reg = rs;
            last_auth = s.auth;
            while let Some(t) = b2b.poll_transfer() {
                use handover_call::TransferResult as R;
                let kind = if t.attended { "attended" } else { "blind" };
                let result = match t.result {
                    R::Accepted => "accepted",
                    R::Rejected => "rejected",
                    R::Succeeded => "succeeded",
                    R::Failed => "failed",
                };
                // Once per transfer, not per datagram: a name lookup is fine.
                let mode = if t.local { "local" } else { "passthrough" };
                metrics::counter!(TRANSFERS, "kind" => kind, "mode" => mode, "result" => result)
                    .increment(1);
                if matches!(t.result, R::Succeeded | R::Failed) {
                    metrics::histogram!(TRANSFER_TIME, "kind" => kind, "mode" => mode)
                        .record(t.elapsed.as_secs_f64());
                }
            }
            while let Some((kind, d)) = b2b.poll_latency() {
                match kind {
                    handover_call::Latency::FirstResponse => first_response.record(d.as_secs_f64()),
                    handover_call::Latency::Answer => answer.record(d.as_secs_f64()),
                }
            }
            // Walks every call: once a second, not per datagram.
            if txns_at.elapsed() >= Duration::from_secs(1) {
                txns.set(b2b.transactions_active() as f64);
                txns_at = tokio::time::Instant::now();
            }
            if b2b.calls_active() != last_active {
                last_active = b2b.calls_active();
                active.set(last_active as f64);
            }
            last = s;
        }
        tracing::info!("stopping");
        Ok(())
    })
}

/// Asks the replica for the committed record of the call `call_id` names
/// and sends `bytes` back with it (or without) on `done`, without blocking
/// the SIP loop meanwhile. A call committed on its owner reaches this
/// replica a round later (the leader's next append carries the commit
/// index), and a transferor sends its REFER as soon as its other call is
/// answered: so a miss is asked again, four times over 300 ms, before the
/// datagram goes on without the record.
fn lookup_then(
    lookup: &tokio::sync::mpsc::UnboundedSender<crate::replica::Lookup>,
    call_id: Vec<u8>,
    bytes: Vec<u8>,
    done: &tokio::sync::mpsc::UnboundedSender<(Vec<u8>, Option<handover_call::CallRecord>)>,
) {
    let lookup = lookup.clone();
    let done = done.clone();
    tokio::spawn(async move {
        let mut record = None;
        for wait in [0, 30, 60, 90, 120] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let ask = crate::replica::Lookup {
                call_id: call_id.clone(),
                reply: tx,
            };
            if lookup.send(ask).is_err() {
                break;
            }
            record = tokio::time::timeout(Duration::from_millis(200), rx)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .and_then(|u| crate::record::decode(&u));
            if record.is_some() {
                break;
            }
        }
        let _ = done.send((bytes, record));
    });
}

/// Whether this worker may act on `m`: with a live lease; once drained
/// (no lease, no shard), only for the calls it still holds.
fn may_act<R: rand_core::RngCore>(
    lease_live: bool,
    drained: bool,
    m: &handover_sip::Message<'_>,
    b2b: &B2bua<R>,
) -> bool {
    lease_live || (drained && b2b.knows(m.call_id()))
}

/// Whether a message is for a shard this worker serves, or for a call it
/// holds. Every message from the edge carries the call's key in its top
/// Via (`k=`); one without (a probe) is handled as usual.
fn served_or_known<R: rand_core::RngCore>(
    m: &handover_sip::Message<'_>,
    b2b: &B2bua<R>,
    served: &[bool],
) -> bool {
    let key = m
        .top_via()
        .param(b"k")
        .and_then(|p| p.value)
        .and_then(|v| handover_sip::ids::key_of_token(v.of(m.buf())));
    match key {
        None => true,
        Some(k) => served[shard_of(k, served.len())] || b2b.knows(m.call_id()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_worker_sleeps_however_long_it_has_run() {
        let start = tokio::time::Instant::now();
        for up in [0, 3_599, 3_600, 7_200, 86_400 * 30] {
            let now = start + Duration::from_secs(up);
            assert!(
                next_wake(start, now, None) > now + Duration::from_secs(3_000),
                "idle after {up} s: the next wake is an hour away, not in the past"
            );
        }
        let t = Instant::from_epoch(Duration::from_millis(7_200_500));
        assert_eq!(
            next_wake(start, start + Duration::from_secs(7_200), Some(t)),
            start + Duration::from_millis(7_200_500)
        );
    }
}
