//! Calls held by other workers. A `Replaces` (RFC 3891) names a dialog of
//! any call of the cluster: the transferor's other call in an attended
//! transfer is owned by whichever worker its key hashes to, two times in
//! three with three workers. Every worker holds a committed copy of every
//! confirmed call in the replicated table, so the dialog is read from
//! there rather than the request handed to the owner: a read of committed
//! state, no extra hop, and the same answer on every worker.
//!
//! The core does no I/O, so the shell asks: for a datagram that mentions
//! Replaces, [`B2bua::named_elsewhere`] says which Call-ID it needs; the
//! shell reads that call's record from its replica, hands it over with
//! [`B2bua::learn_remote`], then the datagram, then
//! [`B2bua::forget_remote`]. A call set up but not yet committed is in no
//! table: the REFER that names it is refused (400, see `transfer_check`),
//! and an INVITE that names it is routed as any new call.

use super::*;

impl<R: RngCore> B2bua<R> {
    /// The Call-ID named by a `Replaces` in `m` (an INVITE's header, or a
    /// REFER's Refer-To) when no call of this worker has it: the shell then
    /// looks it up in the replicated table. A cheap test first: the bytes
    /// must contain `eplaces` or `EPLACES` (the header's name or the URI
    /// header's, in the cases phones write), so other messages are not
    /// searched header by header.
    pub fn named_elsewhere(&self, m: &Message<'_>) -> Option<Vec<u8>> {
        let bytes = m.buf();
        memchr::memmem::find(bytes, b"eplaces")
            .or_else(|| memchr::memmem::find(bytes, b"EPLACES"))?;
        let r = match m.method()? {
            Method::Invite if m.to_tag().is_none() => {
                Replaces::parse(m.header(HeaderName::Replaces)?.value.of(m.buf()))?
            }
            Method::Refer => transfer::refer_to(m).ok()?.replaces?,
            _ => return None,
        };
        (!self.ep.by_call_id.contains_key(r.call_id.as_slice())).then_some(r.call_id)
    }

    /// A call of another worker, as committed, for the next datagram.
    pub fn learn_remote(&mut self, record: CallRecord) {
        self.ep.stats.replaces_elsewhere += 1;
        self.ep.remote.push(record);
    }

    /// Forgets what [`Self::learn_remote`] gave (the record may change on
    /// its owner at any time: it is read again for the next request).
    pub fn forget_remote(&mut self) {
        self.ep.remote.clear();
    }

    /// The INVITE that started the call one of whose legs has `call_id`
    /// (A's, as the edge forwarded it).
    pub(super) fn a_invite_of(&self, call_id: &[u8]) -> Option<&[u8]> {
        if let Some(&cref) = self.ep.by_call_id.get(call_id) {
            return self.calls.get(&cref).map(|c| c.legs.a.invite.as_slice());
        }
        self.ep
            .remote
            .iter()
            .find(|r| r.a_call_id == call_id || r.b_call_id == call_id)
            .map(|r| r.a_invite.as_slice())
    }

    /// Both dialogs (A's, B's) of the call one of whose legs has
    /// `call_id`, and the call's reference when this worker holds it.
    pub(super) fn dialogs_of(&self, call_id: &[u8]) -> Option<(Option<u64>, &Dialog, &Dialog)> {
        if let Some(&cref) = self.ep.by_call_id.get(call_id) {
            let call = self.calls.get(&cref)?;
            return Some((
                Some(cref),
                call.legs.a.dialog.as_ref()?,
                call.legs.b.dialog.as_ref()?,
            ));
        }
        self.ep
            .remote
            .iter()
            .find(|r| r.a_call_id == call_id || r.b_call_id == call_id)
            .map(|r| (None, &r.a_dialog, &r.b_dialog))
    }

    /// Ends call `cref2`, replaced by a local attended transfer that took
    /// over its leg `spare` (the target's): BYE on its other leg only.
    pub(super) fn end_replaced(&mut self, now: Instant, cref2: u64, spare: &[u8]) {
        let Some(c2) = self.calls.get_mut(&cref2) else {
            return;
        };
        let taken = c2.side_of(spare);
        c2.legs[taken].dialog = None;
        let other = c2.legs[taken.other()].dialog.take();
        if !c2.over {
            c2.over = true;
            c2.a_ok = None;
            self.ep.stats.hung_up += 1;
            self.with_call(cref2, |c, ep| {
                c.record_end(ep, now, EndCause::Transferred, 200)
            });
        }
        if let Some(mut o) = other {
            self.with_call(cref2, |c, ep| c.bye_in(ep, now, &mut o));
        }
        self.drain(now, cref2);
        self.schedule(cref2);
    }

    /// Call `a_call_id` held here was replaced by another worker's local
    /// attended transfer, which took over its leg `spare`
    /// ([`Replication::Replaced`]): its other leg gets BYE. False when the
    /// call is not held here or was over.
    pub fn replaced(&mut self, now: Instant, a_call_id: &[u8], spare: &[u8]) -> bool {
        let Some(&cref2) = self.ep.by_call_id.get(a_call_id) else {
            return false;
        };
        if self.calls.get(&cref2).is_none_or(|c| c.over) {
            return false;
        }
        self.end_replaced(now, cref2, spare);
        true
    }
}
