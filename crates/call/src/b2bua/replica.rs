//! Calls as their replicas keep them (docs/architecture.md, "Replication"): what a confirmed
//! call needs to go on after its worker dies (both legs' dialogs, the
//! INVITEs they came from, where A's answers go), handed to the shell as
//! [`Replication`] whenever it changes, and restored with
//! [`B2bua::adopt`] by the worker that takes its shard over.
//!
//! What is kept of transactions in flight: a request relayed and not yet
//! answered ([`PendingRequest`]): a re-INVITE, whose sender got 100 Trying
//! and will not retransmit, or an UPDATE, REFER, INFO and the like, whose
//! sender does not retransmit over TCP, and over UDP would have its
//! retransmission relayed anew as a second request (an offer answered
//! twice). The new owner resends it unchanged (the far party's transaction
//! absorbs it and resends its answer; a re-INVITE's 2xx is retransmitted
//! until ACKed) and answers the sender with what comes back. It rides in
//! the record that the relay writes anyway (the other leg's CSeq moved),
//! so it costs bytes, not a write.
//!
//! Transfers in progress are kept too: a REFER relayed between the phones
//! whose subscription runs ([`ReferRecord`]: the NOTIFYs that follow name
//! the REFER's CSeq on our leg and are translated back), and a transfer the
//! B2BUA carries out itself ([`LocalRecord`], written at each of its
//! steps): the new owner resends the INVITE or re-INVITE in flight (same
//! branch, a retransmission to its receiver) and finishes the transfer.
//! Not kept: the session timer and the maximum call age (both restart at
//! adoption), and the non-INVITE transactions of a call (a NOTIFY or BYE
//! whose answer is lost with its worker is not sent again).

use std::hash::{DefaultHasher, Hash, Hasher};

use super::*;

/// A confirmed call's replicated state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The call's affinity key.
    pub key: u64,
    /// Bumped at every change; a replica keeps the highest.
    pub version: u64,
    /// The call's id in the table: leg A's Call-ID when the call was set
    /// up (a transfer carried out for A gives leg A another, not the call
    /// another id).
    pub id: Vec<u8>,
    /// Leg A's Call-ID now (the caller's, or a transfer target's).
    pub a_call_id: Vec<u8>,
    /// A's INVITE as received (responses to A copy from it).
    pub a_invite: Vec<u8>,
    /// Where answers to A go (A's INVITE's top Via: the edge).
    pub a_target: Option<SocketAddr>,
    /// Our tag on leg A.
    pub a_tag: Vec<u8>,
    /// Leg A's dialog (we are its UAS).
    pub a_dialog: Dialog,
    /// Leg B's Call-ID (ours).
    pub b_call_id: Vec<u8>,
    /// Our INVITE on leg B.
    pub b_invite: Vec<u8>,
    /// Leg B's dialog (we are its UAC).
    pub b_dialog: Dialog,
    /// REFERs on this call are carried out by the B2BUA.
    pub local_mode: bool,
    /// A request relayed and not finally answered yet.
    pub pending: Option<PendingRequest>,
    /// Our 2xx to A while A's ACK has not been seen: a new owner resends
    /// it until A ACKs (A may never have had it). The shell keeps it
    /// beside the record, and the replica drops it at
    /// [`Replication::Acked`], so it costs memory for a round trip only;
    /// it changes no version.
    pub a_ok: Option<Vec<u8>>,
    /// What the call's detail record needs beyond its INVITE, as of this
    /// version (empty when records are off).
    pub detail: Detail,
    /// A REFER relayed between the phones, its subscription running.
    pub refer: Option<ReferRecord>,
    /// A transfer the B2BUA carries out, not finished.
    pub local: Option<LocalRecord>,
}

/// A REFER relayed from one leg to the other whose subscription runs
/// (RFC 3515): what its NOTIFYs need (see the module's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferRecord {
    /// It names a `Replaces`.
    pub attended: bool,
    /// The REFER came from A (its NOTIFYs come from B).
    pub from_a: bool,
    /// Its CSeq as the transferor sent it.
    pub cseq_in: u32,
    /// Its CSeq as relayed.
    pub cseq_out: u32,
    /// When it was relayed (Unix ms).
    pub at_ms: u64,
    /// When its subscription ends (Unix ms).
    pub until_ms: u64,
}

/// A transfer the B2BUA carries out itself (local mode), as of one of its
/// steps: waiting for the target's 2xx, or for the transferee's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRecord {
    /// A `Replaces` named one of our dialogs.
    pub attended: bool,
    /// The transferor is the party of leg A.
    pub transferor_a: bool,
    /// The REFER's CSeq as the transferor sent it.
    pub refer_seq: u32,
    /// When the REFER came (Unix ms).
    pub at_ms: u64,
    /// Our INVITE (or re-INVITE) to the target.
    pub t_out: Vec<u8>,
    /// The target's leg's Call-ID.
    pub t_call_id: Vec<u8>,
    /// The target's dialog: from its 2xx, or the replaced call's.
    pub t_dialog: Option<Dialog>,
    /// The ring timeout (Unix ms) while the target has not answered.
    pub ring_until_ms: Option<u64>,
    /// Our re-INVITE to the transferee, once the target answered.
    pub r_out: Option<Vec<u8>>,
    /// Attended, the replaced call held by the same worker: its leg A's
    /// Call-ID.
    pub replaced: Option<Vec<u8>>,
}

/// A request relayed from one leg to the other and not finally answered
/// when its call's record was written (see the module's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRequest {
    /// It came from A (and went to B).
    pub from_a: bool,
    /// The request as received (without credentials).
    pub request: Vec<u8>,
    /// Where its answers go (its top Via: the edge).
    pub back: Option<SocketAddr>,
    /// The request as relayed on the other leg.
    pub relayed: Vec<u8>,
}

/// A relayed request of `call` not finally answered yet.
fn pending_request(call: &Call) -> Option<PendingRequest> {
    call.relays
        .iter()
        .find(|r| {
            !r.relayed_final
                && match &r.cli {
                    Cli::Invite(c) => {
                        matches!(c.state(), InviteState::Calling | InviteState::Proceeding)
                    }
                    Cli::Other(c) => {
                        matches!(
                            c.state(),
                            NonInviteState::Trying | NonInviteState::Proceeding
                        )
                    }
                }
        })
        .map(|r| PendingRequest {
            from_a: r.from.is_a(),
            request: without_credentials(&r.req),
            back: r.back,
            relayed: r.out.clone(),
        })
}

/// The running relayed transfer of `call`, times as Unix ms by `wall`.
fn refer_of(call: &Call, wall: &impl Fn(Instant) -> u64) -> Option<ReferRecord> {
    // (Its expiry ends it with the call's `Subscription` timer.)
    let t = call.transfer.as_ref().filter(|t| !t.done)?;
    Some(ReferRecord {
        attended: t.attended,
        from_a: t.from.is_a(),
        cseq_in: t.cseq_in,
        cseq_out: t.cseq_out,
        at_ms: wall(t.at),
        until_ms: wall(t.until),
    })
}

/// The unfinished local transfer of `call`.
fn local_of(call: &Call, wall: &impl Fn(Instant) -> u64) -> Option<LocalRecord> {
    let l = call.local.as_ref().filter(|l| l.pending())?;
    Some(LocalRecord {
        attended: l.attended,
        transferor_a: l.transferor.is_a(),
        refer_seq: l.refer_seq,
        at_ms: wall(l.at),
        t_out: l.t_out.clone(),
        t_call_id: l.t_call_id.clone(),
        t_dialog: l.t_dialog.clone(),
        ring_until_ms: l
            .ring_deadline
            .filter(|_| l.stage == local::Stage::Target)
            .map(wall),
        r_out: l
            .r
            .as_ref()
            .filter(|_| l.stage == local::Stage::Transferee)
            .map(|r| r.0.clone()),
        replaced: l.replaced_id.clone(),
    })
}

/// `call`'s record at `version` (none without both dialogs).
fn record_of(
    call: &Call,
    version: u64,
    pending: Option<PendingRequest>,
    refer: Option<ReferRecord>,
    local: Option<LocalRecord>,
) -> Option<CallRecord> {
    let (Some(a), Some(b)) = (&call.legs.a.dialog, &call.legs.b.dialog) else {
        return None;
    };
    Some(CallRecord {
        key: call.key,
        version,
        id: call.id().to_vec(),
        a_call_id: call.legs.a.call_id.to_vec(),
        a_invite: invite_head(&call.legs.a.invite),
        a_target: call.a_target,
        a_tag: hex_u64(call.a_tag).to_vec(),
        a_dialog: a.clone(),
        b_call_id: call.legs.b.call_id.to_vec(),
        b_invite: invite_head(&call.legs.b.invite),
        b_dialog: b.clone(),
        local_mode: call.local_mode,
        pending,
        a_ok: call
            .held_ok
            .as_ref()
            .map(|h| h.1.clone())
            .or_else(|| call.a_ok.as_ref().map(|o| o.0.clone())),
        detail: call.detail.clone(),
        refer,
        local,
    })
}

/// Unix ms `ms` as an instant of this worker's clock, whose `now` is
/// `wall_now` Unix ms.
fn instant_of(now: Instant, wall_now: u64, ms: u64) -> Instant {
    match ms.checked_sub(wall_now) {
        Some(ahead) => now + Duration::from_millis(ahead),
        None => Instant::from_epoch(
            now.since_epoch()
                .saturating_sub(Duration::from_millis(wall_now - ms)),
        ),
    }
}

/// The fingerprint of what a record holds, to tell a change (a running
/// transfer's times aside: they move with its other fields).
fn print(
    a: &Dialog,
    b: &Dialog,
    local_mode: bool,
    pending: Option<&PendingRequest>,
    refer: Option<&ReferRecord>,
    local: Option<&LocalRecord>,
) -> u64 {
    let mut h = DefaultHasher::new();
    hash_dialog(a, &mut h);
    hash_dialog(b, &mut h);
    local_mode.hash(&mut h);
    pending.map(|p| &p.relayed).hash(&mut h);
    refer
        .map(|r| (r.from_a, r.cseq_in, r.cseq_out))
        .hash(&mut h);
    if let Some(l) = local {
        (&l.t_out, l.r_out.as_ref(), l.ring_until_ms.is_some()).hash(&mut h);
        if let Some(d) = &l.t_dialog {
            hash_dialog(d, &mut h);
        }
    }
    h.finish()
}

/// What the shell replicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// A call was confirmed, or changed (re-INVITE, transfer, any in-dialog
    /// request that moved a CSeq or a target).
    Upsert(Box<CallRecord>),
    /// A ACKed the 2xx of a replicated call: the replica drops the 2xx
    /// it kept (`CallRecord::a_ok`).
    Acked {
        /// The call's id ([`CallRecord::id`]).
        id: Vec<u8>,
    },
    /// Call `id` ([`CallRecord::id`]), held by another worker, was
    /// replaced by a transfer this worker carried out (attended, local
    /// mode), which took over its leg `spare`: its owner hangs up its other
    /// leg ([`B2bua::replaced`]).
    Replaced {
        /// The replaced call's id.
        id: Vec<u8>,
        /// The Call-ID of the leg taken over.
        spare: Vec<u8>,
    },
    /// A replicated call ended.
    Remove {
        /// The call's id.
        id: Vec<u8>,
        /// The call's affinity key.
        key: u64,
        /// One more than the last upsert's.
        version: u64,
    },
}

/// `msg` without its Authorization and Proxy-Authorization headers (folded
/// lines included): a call record is written to every replica's disk, and
/// the caller's credentials have no business there (A's answers, all the
/// record's INVITE is kept for, never carry them).
fn without_credentials(msg: &[u8]) -> Vec<u8> {
    filtered(msg, is_credentials, false)
}

fn is_credentials(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"authorization") || name.eq_ignore_ascii_case(b"proxy-authorization")
}

/// An INVITE as a confirmed call keeps it (in its record, on every replica,
/// and in the call once its INVITE transactions are over): its request line
/// and the fields the call reads from it again, and `Content-Length: 0` at
/// the end. Those are the fields of an answer to it (Via, From, To, Call-ID,
/// CSeq: A's 487 or 500, a takeover's resent 2xx and A's transaction key),
/// the detail record's parties (From, To, the second Via) and where a
/// Replaces may come from (the second Via); B's Request-URI is the status
/// page's target, and B's Route (a registered phone's flow) and From go
/// into the ACK of each resent 2xx (`register::callee_dialog`). The rest of a phone's INVITE (its offer, Contact, Allow,
/// Supported, User-Agent, credentials, …) is read only while the call is
/// set up, and the dialogs hold what in-dialog requests need.
pub(super) fn invite_head(msg: &[u8]) -> Vec<u8> {
    filtered(
        msg,
        |name| {
            ![
                &b"via"[..],
                b"v",
                b"from",
                b"f",
                b"to",
                b"t",
                b"call-id",
                b"i",
                b"cseq",
                b"route",
            ]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        },
        true,
    )
}

/// `msg` without the header fields whose name `drop` picks (their folded
/// lines included); without its body too when `head_only`.
fn filtered(msg: &[u8], drop: impl Fn(&[u8]) -> bool, head_only: bool) -> Vec<u8> {
    let head_end = memchr::memmem::find(msg, b"\r\n\r\n").map_or(msg.len(), |i| i + 2);
    let (head, rest) = msg.split_at(head_end);
    let drop = &drop;
    let kept = || {
        let mut dropping = false;
        head.split_inclusive(|&b| b == b'\n')
            .enumerate()
            .filter(move |&(i, line)| {
                let folded = line.first().is_some_and(|&b| b == b' ' || b == b'\t');
                // The start line is not a header field: always kept.
                if i > 0 && !folded {
                    let name = line
                        .iter()
                        .position(|&b| b == b':')
                        .map_or(&line[..0], |i| line[..i].trim_ascii());
                    dropping = drop(name);
                }
                !dropping
            })
            .map(|(_, line)| line)
    };
    const NO_BODY: &[u8] = b"Content-Length: 0\r\n\r\n";
    let tail = if head_only { NO_BODY } else { rest };
    // Allocated at its exact size: a call keeps it for its whole life.
    let mut out = Vec::with_capacity(kept().map(<[u8]>::len).sum::<usize>() + tail.len());
    kept().for_each(|line| out.extend_from_slice(line));
    out.extend_from_slice(tail);
    out
}

fn hash_dialog(d: &Dialog, h: &mut DefaultHasher) {
    d.call_id().hash(h);
    d.local_tag().hash(h);
    d.remote_tag().hash(h);
    d.local_seq.hash(h);
    d.remote_seq.hash(h);
    d.remote_target().hash(h);
    for r in d.route_set() {
        r.hash(h);
    }
}

impl<R: RngCore> B2bua<R> {
    /// Turns replication on: from now on confirmed calls and their changes
    /// are queued for [`Self::poll_replication`].
    pub fn set_replication(&mut self, on: bool) {
        self.ep.replicate = on;
    }

    /// Names this worker (its member id) in the Via of every request it
    /// sends, as `;w=ID`. The edge routes an answer by its key's shard;
    /// when that shard moved while the request was out (a join, a drain),
    /// the new owner reads the `w` of an answer for a call it does not
    /// hold and passes it to the worker that sent the request
    /// ([`Self::sent_elsewhere`]).
    pub fn set_member(&mut self, id: u64) {
        self.ep.member = Some(id);
    }

    /// The next change to replicate.
    pub fn poll_replication(&mut self) -> Option<Replication> {
        self.ep.replication.pop_front()
    }

    /// The member that sent the request `m` answers, when that is another
    /// worker and the call is not held here: the edge routes answers by
    /// shard, so one whose shard moved while the call was being set up
    /// (a worker joined, or drained) reaches the new owner, while the
    /// call and its transaction live on the worker named in our Via's
    /// `w`. The shell passes such an answer on to it unchanged. `None`
    /// for requests, for calls held here, for answers to our own
    /// requests, and without a member id.
    pub fn sent_elsewhere(&self, m: &Message<'_>) -> Option<u64> {
        let me = self.ep.member?;
        if m.is_request() || self.knows(m.call_id()) {
            return None;
        }
        let w = m.top_via().param(b"w")?.value?.of(m.buf());
        let id = core::str::from_utf8(w).ok()?.parse::<u64>().ok()?;
        (id != me && id != 0).then_some(id)
    }

    /// Whether a call (by either leg's Call-ID) is held here.
    pub fn knows(&self, call_id: &[u8]) -> bool {
        self.ep.by_call_id.contains_key(call_id)
    }

    /// A call's committed version moved: its upsert of `version` is
    /// committed (the shell tells, from the replica).
    pub fn stored(&mut self, call_id: &[u8], version: u64) {
        if let Some(c) = self
            .ep
            .by_call_id
            .get(call_id)
            .and_then(|r| self.calls.get_mut(r))
        {
            c.committed = c.committed.max(version);
        }
    }

    /// The affinity key of a call held here (by either leg's Call-ID).
    pub fn key_of(&self, call_id: &[u8]) -> Option<u64> {
        let call = self.calls.get(self.ep.by_call_id.get(call_id)?)?;
        Some(call.key)
    }

    /// Forgets the replicated calls whose key is `gone` (their shard moved
    /// to another worker, which carries them on from the replica): nothing
    /// is sent, nothing counts as ended. Calls not replicated (in setup, or
    /// whose 2xx still waits for its commit) stay. Returns how many went.
    ///
    /// A call of such a shard that ended here but whose end is not
    /// committed (the 200 to its BYE held, `HeldEnd`) is the new owner's
    /// to end: it holds the call from the table, and the BYE's
    /// retransmission reaches it. The held 200 is dropped, so the party
    /// does not get a second one from here later.
    ///
    /// Returns how many went, and the last record of those whose latest
    /// version is not known committed: an upsert in flight when the shard
    /// moved is refused (this worker no longer owns it), so the shell
    /// sends these with its release, which the new owner waits for.
    pub fn hand_over(&mut self, gone: impl Fn(u64) -> bool) -> (usize, Vec<CallRecord>) {
        for c in self.calls.values_mut() {
            if c.over
                && gone(c.key)
                && matches!(
                    c.held_end.as_deref(),
                    Some(HeldEnd {
                        what: HeldWhat::ByeOk { .. },
                        ..
                    })
                )
            {
                c.held_end = None;
            }
        }
        let refs: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                !c.over && c.replicated.is_some() && c.held_ok.is_none() && gone(c.key)
            })
            .map(|(&r, _)| r)
            .collect();
        let mut last = Vec::new();
        for &cref in &refs {
            let registrar = &self.ep.registrar;
            let wall = |t: Instant| registrar.wall_ms(t);
            if let Some(c) = self.calls.get(&cref)
                && let Some((v, _)) = c.replicated
                && v > c.committed
                && let Some(r) = record_of(
                    c,
                    v,
                    pending_request(c),
                    refer_of(c, &wall),
                    local_of(c, &wall),
                )
            {
                last.push(r);
            }
            self.forget_call(cref);
        }
        self.ep.stats.handed_over += refs.len() as u64;
        (refs.len(), last)
    }

    /// Ends a call that its previous owner hung up while cut off from the
    /// cluster (the BYEs went out; the removal was committed once it
    /// healed): nothing is sent, its phones are gone. The call lingers
    /// for 64·T1, without its dialogs, so that a BYE retransmitted by a
    /// party whose BYE the cut-off worker never answered (its 200 waited
    /// for that commit, `HeldEnd`) gets its 200 here rather than a 481.
    /// False when the call is not held here, or is over already.
    pub fn ended_elsewhere(&mut self, now: Instant, call_id: &[u8]) -> bool {
        let Some(&cref) = self.ep.by_call_id.get(call_id) else {
            return false;
        };
        let linger = now + self.ep.cfg.timers.t1x64();
        let Some(c) = self.calls.get_mut(&cref).filter(|c| !c.over) else {
            return false;
        };
        c.over = true;
        c.replicated = None;
        c.a_ok = None;
        c.held_ok = None;
        c.legs.a.dialog = None;
        c.legs.b.dialog = None;
        c.linger = Some(linger);
        self.ep.stats.ended_elsewhere += 1;
        self.schedule(cref);
        true
    }

    /// Takes over a call from its replica (its worker died or handed its
    /// shard over). False when the call is already held here or the record
    /// is unusable (A's INVITE does not scan, or a tag is not ours).
    pub fn adopt(&mut self, now: Instant, rec: CallRecord) -> bool {
        if self.ep.by_call_id.contains_key(rec.id.as_slice())
            || self.ep.by_call_id.contains_key(rec.a_call_id.as_slice())
        {
            return false;
        }
        if scan(&rec.a_invite).is_err() {
            return false;
        }
        let Some(a_tag) = parse_hex_u64(&rec.a_tag) else {
            return false;
        };
        let timers = self.ep.cfg.timers;
        let cref = self.next_ref;
        self.next_ref += 1;
        // The call's id is leg A's Call-ID unless a transfer changed leg A.
        let (a_call_id, b_call_id): (Arc<[u8]>, Arc<[u8]>) = (
            rec.a_call_id.as_slice().into(),
            rec.b_call_id.as_slice().into(),
        );
        let first_id: Option<Arc<[u8]>> =
            (rec.id != rec.a_call_id).then(|| rec.id.as_slice().into());
        for id in [&a_call_id, &b_call_id].into_iter().chain(&first_id) {
            self.ep.by_call_id.insert(id.clone(), cref);
        }
        self.ep.stats.started += 1;
        self.ep.stats.adopted += 1;
        let print = print(
            &rec.a_dialog,
            &rec.b_dialog,
            rec.local_mode,
            rec.pending.as_ref(),
            rec.refer.as_ref(),
            rec.local.as_ref(),
        );
        let wall_now = self.ep.registrar.wall_ms(now);
        let at = |ms: u64| instant_of(now, wall_now, ms);
        let transfer = rec.refer.as_ref().map(|r| Transfer {
            at: at(r.at_ms),
            attended: r.attended,
            from: Side::a_if(r.from_a),
            cseq_in: r.cseq_in,
            cseq_out: r.cseq_out,
            until: at(r.until_ms),
            done: false,
        });
        // A local transfer: its INVITE (to the target) or re-INVITE (to the
        // transferee) in flight is sent again, the same request.
        let local = rec.local.as_ref().and_then(|l| {
            let t_key = Key::server(&scan(&l.t_out).ok()?);
            let r = match &l.r_out {
                Some(re) => {
                    let k = Key::server(&scan(re).ok()?);
                    Some((re.clone(), k, ClientInvite::new(now, timers, re.clone())))
                }
                None => None,
            };
            let (stage, t_cli) = match r {
                Some(_) => (local::Stage::Transferee, ClientInvite::ended(timers)),
                None => (
                    local::Stage::Target,
                    ClientInvite::new(now, timers, l.t_out.clone()),
                ),
            };
            Some(Local {
                at: at(l.at_ms),
                attended: l.attended,
                transferor: Side::a_if(l.transferor_a),
                refer_seq: l.refer_seq,
                stage,
                t_out: l.t_out.clone(),
                t_key,
                t_cli,
                t_call_id: l.t_call_id.clone(),
                t_dialog: l.t_dialog.clone(),
                t_ack: None,
                ring_deadline: l.ring_until_ms.map(at),
                no_answer: false,
                r,
                r_ack: None,
                replaced: l
                    .replaced
                    .as_ref()
                    .and_then(|id| self.ep.by_call_id.get(id.as_slice()).copied()),
                replaced_id: l.replaced.clone(),
            })
        });
        if let Some(l) = &local {
            // The target's leg is this call's while the transfer runs.
            self.ep
                .by_call_id
                .insert(l.t_call_id.as_slice().into(), cref);
        }
        // The request in flight: resent as it was (same branch and CSeq,
        // a retransmission to the far party), its sender answered from here.
        let pending = rec.pending.as_ref().and_then(|p| {
            let req = scan(&p.request).ok()?;
            let out = scan(&p.relayed).ok()?;
            let (srv, cli) = match (req.method()?, out.method()?) {
                (Method::Invite, Method::Invite) => {
                    // Its sender had 100 Trying from the dead worker (sent
                    // with the relay, before the record): not again,
                    // unless it asks (its retransmission gets the 100
                    // resent).
                    let mut srv = ServerInvite::new(now, timers, &req);
                    while srv.poll_transmit().is_some() {}
                    (
                        Srv::Invite(srv),
                        Cli::Invite(ClientInvite::new(now, timers, p.relayed.clone())),
                    )
                }
                (Method::Invite | Method::Ack | Method::Cancel | Method::Bye, _) => return None,
                (m, o) if m == o => (
                    Srv::Other(ServerNonInvite::new(now, timers)),
                    Cli::Other(ClientNonInvite::new(now, timers, p.relayed.clone())),
                ),
                _ => return None,
            };
            Some(Relay {
                from: Side::a_if(p.from_a),
                req: p.request.clone(),
                back: p.back,
                srv_key: Key::server(&req),
                srv,
                cli_key: Key::server(&out),
                cli,
                out: p.relayed.clone(),
                ack: None,
                relayed_final: false,
                resumed: true,
            })
        });
        let resumed = pending.is_some() || local.is_some();
        // A's 2xx, if A's ACK was never committed: sent now and resent
        // until A ACKs (a duplicate when A had it: A ACKs it again, RFC
        // 3261 §13.2.2.4), and the call torn down if A never does.
        let a_ok = rec.a_ok.map(|ok| {
            self.ep.out.push_back((rec.a_target, ok.clone()));
            self.ep.stats.oks_resent += 1;
            Box::new((ok, now + timers.t1, timers.t1, now + timers.t1x64()))
        });
        let source = scan(&rec.a_invite).ok().as_ref().and_then(sender_ip);
        self.ep.count_source(source);
        let mut detail = rec.detail;
        detail.workers.extend(self.ep.member);
        // Confirmed before its 2xx went out (the first record is written
        // then): answered no later than now (the shell fills in the time
        // the table stamped, when it has one).
        if detail.kept() && detail.answered_ms == 0 {
            detail.answered_ms = self.ep.registrar.wall_ms(now);
        }
        self.calls.insert(
            cref,
            Box::new(Call {
                key: rec.key,
                // A transfer's leg A: the call's first Call-ID is forgotten
                // with the call (`forget_call`).
                old_ids: first_id.into_iter().collect(),
                own_id: if rec.id == rec.a_call_id {
                    Box::default()
                } else {
                    rec.id.into_boxed_slice()
                },
                legs: Legs {
                    a: Leg {
                        call_id: a_call_id,
                        invite: rec.a_invite,
                        dialog: Some(rec.a_dialog),
                    },
                    b: Leg {
                        call_id: b_call_id,
                        invite: rec.b_invite,
                        dialog: Some(rec.b_dialog),
                    },
                },
                a_target: rec.a_target,
                a_tag,
                a_srv: ServerInvite::ended(timers),
                a_ok,
                a_bye_after_ack: false,
                after_ack: Few::default(),
                b_cli: ClientInvite::ended(timers),
                b_ack: None,
                cancelled: false,
                answered: true,
                answered_at: Some(now + self.ep.cfg.max_call_age),
                session_expires: None,
                started_at: now,
                // Answered: nothing of its set-up is read again (a later
                // leg of an adopted call asserts nothing).
                setup: None,
                transfer: transfer.map(Box::new),
                local_mode: rec.local_mode,
                local: local.map(Box::new),
                forks: Few::default(),
                over: false,
                nits: Few::default(),
                relays: pending.into_iter().collect(),
                replicated: self.ep.replicate.then_some((rec.version, print)),
                committed: rec.version,
                held_ok: None,
                held_end: None,
                linger: None,
                scheduled: None,
                source,
                detail,
            }),
        );
        if resumed {
            self.ep.stats.resumed += 1;
            self.drain(now, cref);
        }
        self.schedule(cref);
        true
    }
}

impl Call {
    /// Queues the call's state if it changed since it was last queued
    /// (called whenever the call was touched).
    pub(super) fn replicate_call<R: RngCore>(&mut self, ep: &mut Endpoint<R>) {
        if !ep.replicate {
            return;
        }
        let call = &mut *self;
        let key = call.key;
        if call.over {
            if let Some((version, _)) = call.replicated.take() {
                ep.replication.push_back(Replication::Remove {
                    id: call.id().to_vec(),
                    key,
                    version: version + 1,
                });
            }
            return;
        }
        let (Some(a), Some(b)) = (&call.legs.a.dialog, &call.legs.b.dialog) else {
            return;
        };
        if !call.answered {
            return;
        }
        let pending = pending_request(call);
        let registrar = &ep.registrar;
        let wall = |t: Instant| registrar.wall_ms(t);
        let refer = refer_of(call, &wall);
        let local = local_of(call, &wall);
        let print = print(
            a,
            b,
            call.local_mode,
            pending.as_ref(),
            refer.as_ref(),
            local.as_ref(),
        );
        let version = match call.replicated {
            Some((_, p)) if p == print => return,
            Some((v, _)) => v + 1,
            None => 1,
        };
        call.replicated = Some((version, print));
        if let Some(rec) = record_of(call, version, pending, refer, local) {
            ep.replication.push_back(Replication::Upsert(Box::new(rec)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invite_head_keeps_the_start_line_and_what_answers_and_records_read() {
        let sdp = "v=0\r\no=a 1 1 IN IP4 192.0.2.1\r\ns=-\r\n";
        let inv = format!(
            "INVITE sip:b@192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
Max-Forwards: 70\r\nFrom: <sip:a@192.0.2.1>;tag=1\r\nt: <sip:b@192.0.2.9>\r\nCall-ID: c1\r\n\
CSeq: 1 INVITE\r\nv: SIP/2.0/UDP 192.0.2.7\r\n  ;branch=z9hG4bK2\r\n\
c: application/sdp\r\nContent-Disposition: session\r\n  ;handling=required\r\n\
Proxy-Authorization: Digest username=\"a\"\r\nContact: <sip:a@192.0.2.1>\r\n\
Allow: INVITE, ACK\r\nRoute: <sip:192.0.2.8;lr>\r\nUser-Agent: phone\r\nl: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        assert!(scan(inv.as_bytes()).is_ok());
        let head = invite_head(inv.as_bytes());
        let text = String::from_utf8(head.clone()).unwrap();
        assert_eq!(
            text,
            "INVITE sip:b@192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
From: <sip:a@192.0.2.1>;tag=1\r\nt: <sip:b@192.0.2.9>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\
v: SIP/2.0/UDP 192.0.2.7\r\n  ;branch=z9hG4bK2\r\nRoute: <sip:192.0.2.8;lr>\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(head.capacity(), head.len(), "kept at its exact size");
        let m = scan(&head).expect("the head scans");
        assert_eq!(m.call_id(), b"c1");
        assert_eq!(
            m.vias().nth(1).and_then(|v| v.target()),
            Some("192.0.2.7:5060".parse().unwrap())
        );
        assert!(m.body().is_empty());
        assert_eq!(invite_head(&head), head, "a head is its own head");
    }
}
