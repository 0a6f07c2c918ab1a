//! Checks of a REFER the B2BUA relays (passthrough transfer): its
//! Refer-To, and the `Replaces` in it translated to the dialog the
//! transferee knows.

use super::*;

impl<R: RngCore> B2bua<R> {
    /// The dialog that a `Replaces` from the transferor names (its dialog
    /// with the cluster on another call: `to-tag` is ours, `from-tag`
    /// theirs), translated to the dialog the cluster has with the party on
    /// the other side of that call, as that party knows it. `None` when no
    /// call of this worker has it.
    //
    //
    // The other call may be held by another worker: then its committed
    // record, read from the replicated table, stands in (`remote.rs`).
    pub(super) fn translate_replaces(&self, r: &Replaces) -> Option<Replaces> {
        let (_, a, b) = self.dialogs_of(&r.call_id)?;
        let (x, y) = if a.call_id() == r.call_id {
            (a, b)
        } else {
            (b, a)
        };
        (x.call_id() == r.call_id && x.local_tag() == r.to_tag && x.remote_tag() == r.from_tag)
            .then(|| Replaces {
                call_id: y.call_id().to_vec(),
                to_tag: y.remote_tag().to_vec(),
                from_tag: y.local_tag().to_vec(),
                early_only: r.early_only,
            })
    }

    /// Checks a REFER or a NOTIFY of the refer event package before it is
    /// relayed (RFC 3515): the header values to send instead of the
    /// received ones, or the status to answer with.
    #[expect(
        clippy::type_complexity,
        reason = "the headers to rewrite or the refusal, used by one caller"
    )]
    pub(super) fn transfer_check(
        &self,
        now: Instant,
        call: &Call,
        m: &Message<'_>,
        from: Side,
    ) -> Result<Vec<(HeaderName, Vec<u8>)>, (u16, &'static str)> {
        let buf = m.buf();
        let mut put = Vec::new();
        match m.method() {
            Some(Method::Refer) => {
                //= https://www.rfc-editor.org/rfc/rfc3515#section-2.4.1
                //# A REFER request MUST contain exactly one Refer-To header field value.
                let rt = transfer::refer_to(m).map_err(|e| (400, e.reason()))?;
                // One transfer at a time per call: a second REFER while the
                // first one's subscription runs is answered 491 (the
                // transferor may retry once the first has ended).
                if call.transfer.as_ref().is_some_and(|t| t.pending(now))
                    || call.local.as_deref().is_some_and(Local::pending)
                {
                    return Err((491, "Request Pending"));
                }
                // A Replaces is translated to the dialog the other party
                // knows, or the REFER refused: relayed as it came, it
                // would hand the transferor's Call-ID and tags to the
                // other side, naming a dialog that party never had.
                let replaces = match rt.replaces.as_ref() {
                    None => None,
                    Some(r) => Some(
                        self.translate_replaces(r)
                            .ok_or((400, "Replaces names no confirmed call"))?,
                    ),
                };
                // Our Contact's `k` in that call (the Refer-To names it)
                // is bound to the transferor's Call-ID there; the INVITE
                // the other party sends will carry the translated
                // Replaces, so the token is made again for that Call-ID.
                let k = rt
                    .replaces
                    .as_ref()
                    .zip(replaces.as_ref())
                    .and_then(|(was, now)| {
                        let h = &self.ep.cfg.hashing;
                        let key =
                            h.open_key_token(rt.uri().param(b"k")?, Bound::CallId, &was.call_id)?;
                        Some(h.key_token(key, Bound::CallId, &now.call_id))
                    });
                put.push((
                    HeaderName::ReferTo,
                    match k {
                        Some(k) => {
                            rt.rewritten_with_key(&self.ep.cfg.advertised, replaces.as_ref(), &k)
                        }
                        None => rt.rewritten(&self.ep.cfg.advertised, replaces.as_ref()),
                    },
                ));
                if let Some(h) = m.header(HeaderName::ReferredBy)
                    && let Ok(na) = NameAddr::parse(buf, h.value)
                {
                    put.push((
                        HeaderName::ReferredBy,
                        transfer::rewrite_name_addr(buf, &na, &self.ep.cfg.advertised, None),
                    ));
                }
            }
            Some(Method::Notify) => {
                let Some(ev) = m.header(HeaderName::Event).map(|h| h.value.of(buf)) else {
                    return Ok(put);
                };
                let package = ev.split(|&b| b == b';').next().unwrap_or_default();
                if !package.trim_ascii().eq_ignore_ascii_case(b"refer") {
                    return Ok(put);
                }
                //= https://www.rfc-editor.org/rfc/rfc6665#section-4.1.3
                //# If the "Event" header field does not match an active
                //# subscription, the subscriber MUST return a 481
                let t = call
                    .transfer
                    .as_ref()
                    .filter(|t| t.from != from && t.pending(now))
                    .ok_or((481, "Subscription Does Not Exist"))?;
                // `id=` names the REFER's CSeq on the transferee's leg (ours):
                // the transferor knows its own.
                let id = format!(";id={}", t.cseq_out);
                if let Some(i) = ev
                    .windows(id.len())
                    .position(|w| w.eq_ignore_ascii_case(id.as_bytes()))
                {
                    let mut v = ev[..i].to_vec();
                    v.extend_from_slice(format!(";id={}", t.cseq_in).as_bytes());
                    v.extend_from_slice(&ev[i + id.len()..]);
                    put.push((HeaderName::Event, v));
                }
            }
            _ => {}
        }
        Ok(put)
    }
}
