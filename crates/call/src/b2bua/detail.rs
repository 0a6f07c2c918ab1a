//! Call detail records (docs/records.md): one [`CallDetail`] per call,
//! answered or not, queued when the call ends ([`B2bua::poll_record`]).
//! What the call's INVITE says (From, To, Call-ID, the caller's address
//! and transport) is read from it at the end; what happened later (when
//! it rang, was answered and ended, why it ended, transfers, which
//! workers held it) is kept in [`Detail`] on the call and carried in its
//! replicated record, so a call adopted by another worker keeps its
//! history.
//!
//! The B2BUA runs on a monotonic clock; records carry wall-clock time
//! (Unix milliseconds) through the registrar's epoch
//! (`handover_registrar::Config::wall_epoch_ms`), the one clock binding
//! expiry uses.

use super::*;

/// Why a call ended, as its record says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// The caller (leg A) hung up (BYE).
    Caller,
    /// The callee (leg B) hung up (BYE).
    Callee,
    /// The callee refused, or no target could take it (the final status
    /// A got, `CallDetail::status`).
    Rejected,
    /// The caller cancelled before an answer.
    Cancelled,
    /// The call was replaced by an attended transfer carried out here.
    Transferred,
    /// handover hung it up: the maximum call age, the session timer, a
    /// leg that answered 408/481, or a caller that never ACKed.
    TornDown,
    /// An operator hung it up (`handover hangup`).
    Operator,
    /// The cluster could not keep the answered call (A got 500).
    Refused,
}

impl EndCause {
    /// The name records use.
    pub fn as_str(self) -> &'static str {
        match self {
            EndCause::Caller => "caller",
            EndCause::Callee => "callee",
            EndCause::Rejected => "rejected",
            EndCause::Cancelled => "cancelled",
            EndCause::Transferred => "transferred",
            EndCause::TornDown => "torn_down",
            EndCause::Operator => "operator",
            EndCause::Refused => "refused",
        }
    }

    /// The cause named `s` ([`Self::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "caller" => EndCause::Caller,
            "callee" => EndCause::Callee,
            "rejected" => EndCause::Rejected,
            "cancelled" => EndCause::Cancelled,
            "transferred" => EndCause::Transferred,
            "torn_down" => EndCause::TornDown,
            "operator" => EndCause::Operator,
            "refused" => EndCause::Refused,
            _ => return None,
        })
    }
}

/// A transfer a call went through, as its record lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferDetail {
    /// Attended (`Replaces`) rather than blind.
    pub attended: bool,
    /// Carried out by the B2BUA rather than relayed between the phones.
    pub local: bool,
    /// How it ended.
    pub result: TransferResult,
    /// When its result was known (Unix ms).
    pub at_ms: u64,
}

/// What a call's record needs beyond its INVITE, kept on the call and in
/// its replicated record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detail {
    /// The record's id (128 random bits, written as 32 hex digits,
    /// [`Detail::id_text`]; zeros while records are off): a sink that sees
    /// one id twice has seen one call twice. Bytes, not their text: every
    /// call keeps one (nor a `u128`, whose alignment pads the call).
    pub id: [u8; 16],
    /// Where the call went (the B leg's Request-URI).
    pub target: Vec<u8>,
    /// The user the caller authenticated as, if it did.
    pub user: Option<Vec<u8>>,
    /// When A's INVITE arrived (Unix ms).
    pub started_ms: u64,
    /// When the callee first rang (180–199; 0: never).
    pub ringing_ms: u64,
    /// When the callee answered (0: never).
    pub answered_ms: u64,
    /// The transfers it went through, in order.
    pub transfers: Vec<TransferDetail>,
    /// The workers that held the call, in order (member ids; none without
    /// a cluster).
    pub workers: Vec<u64>,
}

impl Detail {
    /// The id as records write it: 32 lowercase hex digits.
    pub fn id_text(&self) -> [u8; 32] {
        let (hi, lo) = self.id.split_at(8);
        let word = |b: &[u8]| hex_u64(u64::from_be_bytes(b.try_into().unwrap_or_default()));
        let mut t = [0u8; 32];
        t[..16].copy_from_slice(&word(hi));
        t[16..].copy_from_slice(&word(lo));
        t
    }

    /// An id read back from its text: `None` unless 32 hex digits.
    pub fn parse_id(text: &[u8]) -> Option<[u8; 16]> {
        if text.len() != 32 {
            return None;
        }
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&parse_hex_u64(&text[..16])?.to_be_bytes());
        id[8..].copy_from_slice(&parse_hex_u64(&text[16..])?.to_be_bytes());
        Some(id)
    }

    /// A record is kept for the call (records are on).
    pub fn kept(&self) -> bool {
        self.id != [0; 16]
    }
}

/// A call's record, written once when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallDetail {
    /// What was kept while the call ran.
    pub detail: Detail,
    /// The call's affinity key (its shard picks the record's writer).
    pub key: u64,
    /// Leg A's (the caller's) Call-ID.
    pub a_call_id: Vec<u8>,
    /// Leg B's Call-ID (ours, towards the callee).
    pub b_call_id: Vec<u8>,
    /// A's From URI.
    pub from: Vec<u8>,
    /// A's To URI.
    pub to: Vec<u8>,
    /// The caller as the edge saw it (its Via's sent-by, as the edge
    /// completed it).
    pub source: Option<SocketAddr>,
    /// The caller's transport (its Via: "UDP", "TCP", "TLS", "WS", "WSS").
    pub transport: Vec<u8>,
    /// When the call ended (Unix ms).
    pub ended_ms: u64,
    /// Why it ended.
    pub cause: EndCause,
    /// The final status of A's INVITE (200 for an answered call).
    pub status: u16,
}

impl CallDetail {
    /// Milliseconds from the answer to the end (0: never answered).
    pub fn duration_ms(&self) -> u64 {
        if self.detail.answered_ms == 0 {
            return 0;
        }
        self.ended_ms.saturating_sub(self.detail.answered_ms)
    }
}

/// Reports transfer `ev` to the shell's counters (`out`) and, when
/// records are kept, to the call's detail `d`: a transfer is one entry,
/// its acceptance updated by its final result.
pub(super) fn note_transfer(
    out: &mut VecDeque<TransferEvent>,
    d: &mut Detail,
    records: bool,
    at_ms: u64,
    ev: TransferEvent,
) {
    out.push_back(ev);
    if !records {
        return;
    }
    let fin = matches!(
        ev.result,
        TransferResult::Succeeded | TransferResult::Failed
    );
    if let Some(last) = d.transfers.last_mut()
        && fin
        && last.result == TransferResult::Accepted
        && last.attended == ev.attended
        && last.local == ev.local
    {
        last.result = ev.result;
        last.at_ms = at_ms;
        return;
    }
    d.transfers.push(TransferDetail {
        attended: ev.attended,
        local: ev.local,
        result: ev.result,
        at_ms,
    });
}

impl<R: RngCore> B2bua<R> {
    /// Turns call detail records on: from now on every call that ends is
    /// queued for [`Self::poll_record`].
    pub fn set_records(&mut self, on: bool) {
        self.ep.records_on = on;
        self.ep.details_on = on || self.ep.call_log;
    }

    /// Turns the call log on: every call that ends is queued for
    /// [`Self::poll_record`] as with records, for the shell to log (the
    /// end's answer is not held for it, as it is for records).
    pub fn set_call_log(&mut self, on: bool) {
        self.ep.call_log = on;
        self.ep.details_on = on || self.ep.records_on;
    }

    /// The next ended call's record (records or call log on).
    pub fn poll_record(&mut self) -> Option<CallDetail> {
        self.ep.records.pop_front()
    }

    /// A new call's detail: its id, start and first worker.
    pub(super) fn new_detail(
        &mut self,
        now: Instant,
        target: &[u8],
        user: Option<Vec<u8>>,
    ) -> Detail {
        if !self.ep.details_on {
            return Detail::default();
        }
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.ep.ids.tag_bits().to_be_bytes());
        id[8..].copy_from_slice(&self.ep.ids.tag_bits().to_be_bytes());
        Detail {
            id,
            target: target.to_vec(),
            user,
            started_ms: self.ep.unix_ms(now),
            workers: self.ep.member.into_iter().collect(),
            ..Detail::default()
        }
    }

    /// The end of the call one of whose legs is `a_call_id` is committed
    /// (its removal, or its record): the answer held for it goes
    /// (`HeldEnd`).
    pub fn end_committed(&mut self, now: Instant, a_call_id: &[u8]) {
        if let Some(&cref) = self.ep.by_call_id.get(a_call_id) {
            self.release_end(now, cref);
        }
    }

    /// Sends call `cref`'s held end answer, if any.
    pub(super) fn release_end(&mut self, now: Instant, cref: u64) {
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        let Some(held) = call.held_end.take() else {
            return;
        };
        match held.what {
            HeldWhat::ByeOk { key, ok } => {
                for n in &mut call.nits {
                    if let Nit::Server(k, t, _) = n
                        && *k == key
                    {
                        t.send_response(now, 200, ok);
                        break;
                    }
                }
            }
            HeldWhat::Final { status, response } => {
                call.a_srv.send_response(now, status, response);
            }
        }
        self.drain(now, cref);
        self.schedule(cref);
    }
}

impl Call {
    /// The call is over (the caller of this set `over`): its record is
    /// queued, once.
    pub(super) fn record_end<R: RngCore>(
        &mut self,
        ep: &mut Endpoint<R>,
        now: Instant,
        cause: EndCause,
        status: u16,
    ) {
        if !ep.details_on {
            return;
        }
        let ended_ms = ep.unix_ms(now);
        let c = &mut *self;
        if !c.detail.kept() {
            return;
        }
        let detail = core::mem::take(&mut c.detail);
        let (key, a_call_id, b_call_id) =
            (c.key, c.legs.a.call_id.clone(), c.legs.b.call_id.clone());
        let (mut from, mut to, mut source, mut transport) =
            (Vec::new(), Vec::new(), None, Vec::new());
        if let Ok(a) = scan(&c.legs.a.invite) {
            from = a
                .from()
                .map(|f| f.uri().as_bytes().to_vec())
                .unwrap_or_default();
            to = a
                .to()
                .map(|t| t.uri().as_bytes().to_vec())
                .unwrap_or_default();
            if let Some(v) = a.vias().nth(1) {
                source = v.target();
                transport = v.transport().to_vec();
            }
        }
        ep.records.push_back(CallDetail {
            detail,
            key,
            a_call_id: a_call_id.to_vec(),
            b_call_id: b_call_id.to_vec(),
            from,
            to,
            source,
            transport,
            ended_ms,
            cause,
            status,
        });
    }

    /// Reports a transfer of the call (to the shell's counters and to
    /// the call's record).
    pub(super) fn report_transfer<R: RngCore>(
        &mut self,
        ep: &mut Endpoint<R>,
        now: Instant,
        ev: TransferEvent,
    ) {
        let at_ms = ep.unix_ms(now);
        let on = ep.details_on;
        note_transfer(&mut ep.transfers, &mut self.detail, on, at_ms, ev);
    }
}

impl<R: RngCore> B2bua<R> {
    /// Reports a transfer of the call (noted in its detail), or of a
    /// call already gone.
    pub(super) fn report_transfer(&mut self, now: Instant, cref: u64, ev: TransferEvent) {
        match self.calls.get_mut(&cref) {
            Some(c) => c.report_transfer(&mut self.ep, now, ev),
            None => self.ep.transfers.push_back(ev),
        }
    }
}

impl<R: RngCore> Endpoint<R> {
    /// `t` in Unix ms.
    pub(super) fn unix_ms(&self, t: Instant) -> u64 {
        self.registrar.wall_ms(t)
    }
}
