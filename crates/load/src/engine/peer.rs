//! Requests that reach our legs: new calls, in-dialog requests and the
//! checks a strict phone makes (dialog, CSeq, Replaces, methods).

use super::*;

impl<R: RngCore> Engine<R> {
    pub(super) fn new_request(&mut self, now: Instant, m: &Message<'_>) {
        if m.method() == Some(Method::Options) && m.to_tag().is_none() {
            // A health probe (the edge's): we are up.
            self.reply(m, 200);
            return;
        }
        if m.method() != Some(Method::Invite) || m.to_tag().is_some() {
            if m.method() != Some(Method::Ack) {
                self.reply(m, 481);
            }
            return;
        }
        // An INVITE with Replaces must name a dialog of ours exactly, as
        // a phone checks it (RFC 3891 §3); the replaced dialog is hung up
        // once this call is up.
        let replaced = match m.header(HeaderName::Replaces) {
            None => None,
            Some(h) => match self.replaces_check(h.value.of(m.buf())) {
                Ok(leg) => Some(leg),
                Err(status) => {
                    self.reply(m, status);
                    return;
                }
            },
        };
        // Who answers: the party of the replaced dialog (the INVITE may be
        // addressed to that dialog's Contact, as RFC 3891 flows do), or the
        // user of the Request-URI.
        let user = m.request_uri().and_then(|u| u.user()).unwrap_or_default();
        let callee = match (
            replaced.and_then(|l| self.legs.get(&l)).map(|l| l.kind),
            user,
        ) {
            (Some(Kind::Callee(c)), _) => c,
            (_, b"b") => Callee::B,
            (_, b"xb") => Callee::XferB,
            (_, b"ab") => Callee::AttB,
            (_, b"c") => Callee::C,
            _ => {
                self.reply(m, 404);
                return;
            }
        };
        let foreign = from_user(m).filter(|(_, r)| *r < self.recs.len()).is_none();
        let rec = match from_user(m).filter(|(_, r)| *r < self.recs.len()) {
            Some((_, r)) => r,
            // A plain callee answers calls of any generator (another thread
            // of ours behind the same system): they count on the caller's
            // side, so its leg hangs off a call record that counts nothing,
            // and is judged here (`foreign_open`).
            None if callee == Callee::B => self.foreign_rec(),
            None => {
                self.reply(m, 404);
                return;
            }
        };
        let tag = self.ids.tag().as_bytes().to_vec();
        let remote = m.from_tag().map(<[u8]>::to_vec);
        let leg = self.new_leg(rec, Kind::Callee(callee), m.call_id().to_vec(), tag, remote);
        if foreign {
            self.foreign_open.insert(leg, now);
        }
        if callee != Callee::C {
            self.recs[rec].b_leg = Some(leg);
        }
        if let Some(l) = self.legs.get_mut(&leg) {
            l.replaces = replaced;
        }
        self.answer_invite(now, leg, m, true);
        self.drain_leg(now, leg);
    }

    /// The leg a `Replaces` value names, or the status that refuses it
    /// (RFC 3891 §3): 481 when no dialog of ours has that Call-ID, our tag
    /// as to-tag and the peer's as from-tag, or when it names an early
    /// dialog we did not originate (a callee leg not yet ACKed); 603 when
    /// that dialog has ended; 486 for `early-only` and a confirmed dialog.
    pub(super) fn replaces_check(&mut self, value: &[u8]) -> Result<usize, u16> {
        let r = Replaces::parse(value).ok_or(400u16)?;
        let Some(leg) = self.lookup(false, &r.call_id, &r.to_tag) else {
            // A dialog of ours that ended and was retired: terminated.
            let gone = self.retired.contains(&retired_hash(&r.call_id, &r.to_tag));
            return Err(if gone { 603 } else { 481 });
        };
        let l = self.legs.get(&leg).ok_or(481u16)?;
        let d = l.dialog.as_ref().ok_or(481u16)?;
        if d.remote_tag() != r.from_tag {
            return Err(481);
        }
        if l.over {
            return Err(603);
        }
        if matches!(l.kind, Kind::Callee(_)) && !l.acked {
            return Err(481);
        }
        if r.early_only {
            return Err(486);
        }
        Ok(leg)
    }

    /// Answers an INVITE (new or re-INVITE) on `leg`: 180 for a new call,
    /// then 200 with SDP answering its offer (or offering, if it had none).
    pub(super) fn answer_invite(&mut self, now: Instant, leg: usize, m: &Message<'_>, new: bool) {
        let local = self.cfg.local;
        let timers = self.cfg.timers;
        let contact = self.contact("uas");
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let mut srv = ServerInvite::new(now, timers, m);
        let tag = l.local_tag.clone();
        // A UAS copies Record-Route into its 1xx/2xx (RFC 3261 §12.1.1), so
        // the caller's in-dialog requests keep to the proxies' path.
        let mut extra: Vec<(&str, &[u8])> = m
            .headers()
            .filter(|h| h.name == HeaderName::RecordRoute)
            .map(|h| ("Record-Route", h.value.of(m.buf())))
            .collect();
        extra.push(("Contact", &contact));
        if new {
            l.dialog = Dialog::uas(m, &tag, DialogState::Confirmed).ok();
            let mut r = Vec::new();
            response(&m.reply_parts(), 180, None, Some(&tag), &extra, &mut r);
            srv.send_response(now, 180, r);
        } else if let Some(d) = l.dialog.as_mut()
            && let Err(e) = d.handle_request(m)
        {
            let mut r = Vec::new();
            response(&m.reply_parts(), e.status(), None, None, &[], &mut r);
            srv.send_response(now, e.status(), r);
            l.srv = Some((Key::server(m), srv));
            return;
        }
        let dir = answer_dir(m.body());
        let body = sdp("uas", local, 2, dir);
        let mut ok = Vec::new();
        response_with_body(
            &m.reply_parts(),
            200,
            None,
            Some(&tag),
            &extra,
            Some((b"application/sdp", &body)),
            &mut ok,
        );
        srv.send_response(now, 200, ok.clone());
        l.srv = Some((Key::server(m), srv));
        l.ok = Some(Resend {
            bytes: ok,
            next: now + timers.t1,
            interval: timers.t1,
            give_up: now + timers.t1x64(),
        });
    }

    pub(super) fn server_nit(&mut self, now: Instant, leg: usize, m: &Message<'_>, status: u16) {
        let mut r = Vec::new();
        response(&m.reply_parts(), status, None, None, &[], &mut r);
        let mut t = ServerNonInvite::new(now, self.cfg.timers);
        t.send_response(now, status, r);
        if let Some(l) = self.legs.get_mut(&leg) {
            l.nits.push(Nit::Server(Key::server(m), t));
        }
    }

    /// An in-dialog request from us on `leg` (NIT), with `headers`, `body`.
    pub(super) fn send_nit(
        &mut self,
        now: Instant,
        leg: usize,
        method: &'static str,
        headers: &[(&str, &[u8])],
        body: Option<(&[u8], &[u8])>,
    ) {
        let via = self.via();
        let contact = self.contact("ua");
        let timers = self.cfg.timers;
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let Some(d) = l.dialog.as_mut() else { return };
        let with_contact = matches!(method, "REFER" | "NOTIFY");
        let req = d.request(
            method,
            None,
            &via,
            with_contact.then_some(contact.as_slice()),
            headers,
            body,
        );
        if let Ok(k) = scan(&req).map(|m| Key::server(&m)) {
            l.nits.push(Nit::Client(
                k,
                ClientNonInvite::new(now, timers, req),
                method,
            ));
        }
        if method == "BYE" {
            l.over = true;
        }
    }

    pub(super) fn request(&mut self, now: Instant, leg: usize, m: &Message<'_>) {
        let key = Key::server(m);
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        // Retransmissions: the transaction answers them again.
        for n in &mut l.nits {
            if let Nit::Server(k, t) = n
                && *k == key
            {
                t.handle_request(now);
                self.drain_leg(now, leg);
                return;
            }
        }
        if let Some((k, s)) = l.srv.as_mut()
            && *k == key
            && m.method() == Some(Method::Invite)
        {
            s.handle_request(now, m);
            self.drain_leg(now, leg);
            return;
        }
        let (rec, kind) = (l.rec, l.kind);
        let method = m.method();
        // A dialog is Call-ID and both tags (RFC 3261 §12.2.2): the lookup
        // matched Call-ID and our tag; the peer's tag must match too, and
        // a request before the dialog exists matches none. ACK and CANCEL
        // belong to their INVITE's transaction.
        if !matches!(method, Some(Method::Ack | Method::Cancel)) {
            let matches = l
                .dialog
                .as_ref()
                .is_some_and(|d| Some(d.remote_tag()) == m.from_tag());
            if !matches {
                self.server_nit(now, leg, m, 481);
                self.drain_leg(now, leg);
                return;
            }
        }
        // CSeq order (§12.2.2: lower than the last is refused 500); the
        // re-INVITE's check is in `answer_invite`.
        if !matches!(method, Some(Method::Invite))
            && let Some(d) = l.dialog.as_mut()
            && let Err(e) = d.handle_request(m)
        {
            self.server_nit(now, leg, m, e.status());
            self.drain_leg(now, leg);
            return;
        }
        match method {
            Some(Method::Ack) => {
                let was_waiting = l.ok.take().is_some();
                if was_waiting {
                    self.after_ack(now, leg);
                }
            }
            Some(Method::Invite) if l.over => self.server_invite_refusal(now, leg, m, 481),
            Some(Method::Invite) => self.answer_invite(now, leg, m, false),
            Some(Method::Bye) => {
                let over = l.over;
                l.over = true;
                l.wake = None;
                self.server_nit(now, leg, m, 200);
                if !over {
                    self.peer_hung_up(leg, rec, kind);
                }
                // Whoever sent it first, the dialog is over for both.
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.ended_ok = true;
                }
                self.foreign_open.remove(&leg);
                self.check_complete(rec);
            }
            _ if l.over => self.server_nit(now, leg, m, 481),
            Some(Method::Refer) if kind == Kind::A => self.obey_refer(now, leg, m),
            // Only the transferee takes a REFER (RFC 3261 §8.2.1: 405 with
            // Allow for a method known but not allowed here).
            Some(Method::Refer) => self.refuse_method(now, leg, m, 405),
            Some(Method::Notify) => {
                // Only the refer event package, and only on the leg that
                // sent a REFER: 489 Bad Event (RFC 6665 §4.2.2), 481 for
                // no subscription.
                if event_package(m).as_deref() != Some(b"refer".as_slice()) {
                    self.server_nit(now, leg, m, 489);
                } else if !l.referred {
                    self.server_nit(now, leg, m, 481);
                } else {
                    self.server_nit(now, leg, m, 200);
                    self.transfer_progress(now, leg, rec, m);
                }
            }
            Some(Method::Cancel) => self.server_nit(now, leg, m, 200),
            Some(Method::Options) => self.server_nit(now, leg, m, 200),
            // UPDATE, INFO, MESSAGE, SUBSCRIBE, PRACK, PUBLISH, REGISTER and
            // methods we do not know: this phone implements none of them.
            _ => self.server_nit(now, leg, m, 501),
        }
        self.drain_leg(now, leg);
    }

    /// A 405 that says what this leg does take (RFC 3261 §8.2.1).
    pub(super) fn refuse_method(&mut self, now: Instant, leg: usize, m: &Message<'_>, status: u16) {
        let mut r = Vec::new();
        response(
            &m.reply_parts(),
            status,
            None,
            None,
            &[("Allow", b"INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY")],
            &mut r,
        );
        let mut t = ServerNonInvite::new(now, self.cfg.timers);
        t.send_response(now, status, r);
        if let Some(l) = self.legs.get_mut(&leg) {
            l.nits.push(Nit::Server(Key::server(m), t));
        }
    }

    /// A final non-2xx to an INVITE in a dialog that cannot take it.
    pub(super) fn server_invite_refusal(
        &mut self,
        now: Instant,
        leg: usize,
        m: &Message<'_>,
        status: u16,
    ) {
        let timers = self.cfg.timers;
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let mut srv = ServerInvite::new(now, timers, m);
        let mut r = Vec::new();
        response(&m.reply_parts(), status, None, None, &[], &mut r);
        srv.send_response(now, status, r);
        l.srv = Some((Key::server(m), srv));
    }

    /// The far end hung up `leg`: fine where the scenario expects it.
    pub(super) fn peer_hung_up(&mut self, leg: usize, rec: usize, kind: Kind) {
        let r = &self.recs[rec];
        let expected = match kind {
            // The callee of a basic call hears A's BYE; the transferor and
            // C of an attended call are hung up by the B2BUA or by C.
            Kind::Callee(_) | Kind::B2 => true,
            // A's leg with B ends by B's BYE after a passthrough transfer.
            Kind::A => r.last_leg != leg,
            Kind::A2 => false,
        };
        if !expected {
            self.finish(rec, Err(format!("BYE from the peer ({kind:?})")));
        }
    }
}
