//! What every call of a worker shares: settings, identifiers, the
//! outgoing queue, counters and the reports for the shell, the registrar
//! and authentication. A call's code gets it as `&mut Endpoint` beside
//! its own state (as quinn's `Connection` is driven beside its
//! `Endpoint`), so one call's logic never reaches into another call.

use super::*;

/// The B2BUA's shared part (see the module's doc).
#[derive(Debug)]
pub(super) struct Endpoint<R> {
    /// Each Call-ID a call answers to (its legs', a transfer's, forks'),
    /// to the call's reference. A key is shared with the leg (or fork, or
    /// old leg) that has the Call-ID (`Arc`: one block per Call-ID, not
    /// one in the map and one on the call).
    pub(super) by_call_id: HashMap<Arc<[u8]>, u64>,
    pub(super) cfg: Config,
    pub(super) ids: IdGen<R>,
    pub(super) out: VecDeque<(Option<SocketAddr>, Vec<u8>)>,
    pub(super) latencies: VecDeque<(Latency, Duration)>,
    pub(super) transfers: VecDeque<TransferEvent>,
    pub(super) stats: Stats,
    pub(super) replicate: bool,
    /// This worker's member id in the cluster, named in our Via (`w`) so
    /// an answer the edge routes to the shard's new owner finds its way
    /// back here (see [`B2bua::set_member`]).
    pub(super) member: Option<u64>,
    pub(super) replication: VecDeque<Replication>,
    /// Each call's detail is kept and queued at its end (`detail.rs`):
    /// for the records or for the call log.
    pub(super) details_on: bool,
    /// Call detail records are written: the end's answer waits for the
    /// end's commit (`HeldEnd`).
    pub(super) records_on: bool,
    /// Ended calls are queued for the shell's call log (`set_call_log`).
    pub(super) call_log: bool,
    /// Ended calls' records, for the shell.
    pub(super) records: VecDeque<CallDetail>,

    /// Calls of other workers, learnt for one datagram (`remote.rs`).
    pub(super) remote: Vec<CallRecord>,
    /// Calls held per source address (see `Config::max_calls_per_source`).
    pub(super) per_source: HashMap<IpAddr, usize>,
    /// Bindings and REGISTERs (`register.rs`).
    pub(super) registrar: handover_registrar::Registrar,
    /// Digest authentication of phones, and the sources that keep
    /// failing it; `None`: nobody is challenged.
    pub(super) auth: Option<(
        handover_registrar::digest::Digest,
        handover_registrar::digest::Guard,
    )>,
    /// PBXs that are the registrars of some domains (relay mode).
    pub(super) upstreams: handover_registrar::Upstreams,
    /// The Raft log's disk is nearly full: new calls and registrations
    /// get 503 (see [`B2bua::set_storage_full`]).
    pub(super) storage_full: bool,
}

impl<R: RngCore> Endpoint<R> {
    pub(super) fn new(cfg: Config, rng: R) -> Self {
        Self {
            by_call_id: HashMap::new(),
            cfg,
            ids: IdGen::new(rng),
            out: VecDeque::new(),
            latencies: VecDeque::new(),
            transfers: VecDeque::new(),
            details_on: false,
            records_on: false,
            call_log: false,
            records: VecDeque::new(),
            stats: Stats::default(),
            replicate: false,
            member: None,
            replication: VecDeque::new(),
            remote: Vec::new(),
            per_source: HashMap::new(),
            storage_full: false,
            registrar: handover_registrar::Registrar::new(
                Default::default(),
                false,
                handover_registrar::Locations::shared(),
            ),
            auth: None,
            upstreams: Default::default(),
        }
    }

    /// Counts a call held for `source`.
    pub(super) fn count_source(&mut self, source: Option<IpAddr>) {
        if let Some(ip) = source {
            *self.per_source.entry(ip).or_default() += 1;
        }
    }

    /// A call of `source` is no longer held.
    pub(super) fn forget_source(&mut self, source: Option<IpAddr>) {
        if let Some(ip) = source
            && let Some(n) = self.per_source.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
    }

    /// The edge a request to the edge must reach: the one its top Route
    /// names beside the flow it goes on (`;fe=`, tagged by an edge or by
    /// us, see `Hashing::edge_tag`), which holds that flow's connection;
    /// `None` (any edge) otherwise, or when the tag is not ours.
    pub(super) fn flow_edge(&self, b: &[u8]) -> Option<SocketAddr> {
        memchr::memmem::find(b, b";fe=")?;
        let m = scan(b).ok()?;
        let route = m.top_route()?.ok()?;
        let u = route.uri();
        self.cfg
            .hashing
            .open_edge(u.param(b"flow")?, u.param(b"fe")?)
    }

    pub(super) fn respond(&mut self, m: &Message<'_>, status: u16, to_tag: Option<&[u8]>) {
        let mut b = Vec::new();
        response(&m.reply_parts(), status, None, to_tag, &[], &mut b);
        self.out.push_back((via_target(m), b));
    }

    /// 503 with `Retry-After: 5`: a limit of ours refused `m` (RFC 3261
    /// §21.5.4), try again later.
    pub(super) fn refuse_overloaded(&mut self, m: &Message<'_>, to_tag: Option<&[u8]>) {
        let mut b = Vec::new();
        response(
            &m.reply_parts(),
            503,
            None,
            to_tag,
            &[("Retry-After", b"5")],
            &mut b,
        );
        self.out.push_back((via_target(m), b));
    }

    /// Our Via for a request of the call whose affinity key is `key`: the
    /// edge's address with the key, so the answer comes back to the
    /// shard's owner (its token bound to the branch, see
    /// [`Hashing::key_token`]).
    pub(super) fn via(&mut self, key: u64) -> Vec<u8> {
        let branch = self.ids.branch();
        let k = self
            .cfg
            .hashing
            .key_token(key, Bound::Branch, branch.as_bytes());
        // Built in place at its final size (see `Config::contact`).
        let size = 12 + self.cfg.advertised.len() + 8 + branch.as_bytes().len() + 3 + k.len() + 24;
        let mut v = Vec::with_capacity(size);
        v.extend_from_slice(b"SIP/2.0/UDP ");
        v.extend_from_slice(self.cfg.advertised.as_bytes());
        v.extend_from_slice(b";branch=");
        v.extend_from_slice(branch.as_bytes());
        v.extend_from_slice(b";k=");
        v.extend_from_slice(&k);
        if let Some(w) = self.member {
            use std::io::Write as _;
            let _ = write!(v, ";w={w}");
        }
        v
    }

    /// Our Contact in the leg whose Call-ID is `call_id` of the call whose
    /// affinity key is `key` (see [`Self::via`]): its token is bound to
    /// that Call-ID, which the leg's requests (and an INVITE replacing the
    /// leg's dialog, in its `Replaces`) carry.
    pub(super) fn contact(&self, key: u64, call_id: &[u8]) -> Vec<u8> {
        self.cfg.contact(key, call_id)
    }
}
