//! In-dialog requests relayed from one leg to the other (re-INVITE,
//! UPDATE, INFO, OPTIONS, MESSAGE, REFER, NOTIFY, SUBSCRIBE), their
//! answers relayed back, glare (491).

use super::*;

/// B's requests held for A's ACK, at most (past that: 491).
const MAX_AFTER_ACK: usize = 4;

impl<R: RngCore> B2bua<R> {
    pub(super) fn in_call_request(&mut self, now: Instant, cref: u64, m: &Message<'_>) {
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        let from = call.side_of(m.call_id());
        let key = Key::server(m);
        // A retransmission of a non-INVITE request we already handle.
        for n in &mut call.nits {
            if let Nit::Server(k, t, _) = n
                && *k == key
            {
                t.handle_request(now);
                self.drain(now, cref);
                return;
            }
        }
        for r in &mut call.relays {
            if r.srv_key == key {
                match &mut r.srv {
                    Srv::Invite(t) => t.handle_request(now, m),
                    Srv::Other(t) => t.handle_request(now),
                }
                self.drain(now, cref);
                return;
            }
        }
        // A new request. A call holds at most MAX_REQUESTS_IN_FLIGHT
        // in-dialog transactions (running, or absorbing retransmissions
        // for 64*T1 after): past that, anything but BYE, ACK and CANCEL is
        // refused 503 with Retry-After, so a flood inside one call costs
        // bounded memory and time, and never stops a hang-up.
        if call.nits.len() + call.relays.len() >= MAX_REQUESTS_IN_FLIGHT
            && !matches!(m.method(), Some(Method::Bye | Method::Ack | Method::Cancel))
        {
            self.ep.stats.refused_in_call += 1;
            self.ep.refuse_overloaded(m, None);
            return;
        }
        if self.local_request(now, cref, m) {
            self.drain(now, cref);
            return;
        }
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        match (m.method(), from) {
            (Some(Method::Invite), Side::A) if call.is_a_invite(&key) => {
                call.a_srv.handle_request(now, m)
            }
            (Some(Method::Ack), Side::A) => {
                if call.is_a_invite(&key) {
                    call.a_srv.handle_request(now, m); // ACK of our non-2xx
                } else if call.a_ok.take().is_some() {
                    // ACK of our 2xx (no more resends): the 2xx kept in
                    // the replica for a new owner to resend goes too.
                    if call.replicated.is_some() {
                        let id = call.id().to_vec();
                        self.ep.replication.push_back(Replication::Acked { id });
                    }
                    // B has hung up meanwhile.
                    if call.a_bye_after_ack {
                        self.bye_a(now, cref);
                    }
                }
            }
            (Some(Method::Ack), Side::B) => {}
            (Some(Method::Cancel), Side::A) => {
                let mut ok = Vec::new();
                response(
                    &m.reply_parts(),
                    200,
                    None,
                    Some(&hex_u64(call.a_tag)),
                    &[],
                    &mut ok,
                );
                let mut t = ServerNonInvite::new(now, self.ep.cfg.timers);
                t.send_response(now, 200, ok);
                // The CANCEL's 200 goes before the INVITE's 487 (RFC 3261
                // §9.2 answers the CANCEL first; phones expect that order).
                while let Some(b) = t.poll_transmit() {
                    self.ep.out.push_back((via_target(m), b));
                }
                call.nits.push(Nit::Server(key, t, via_target(m)));
                if call.is_a_invite(&Key::cancel_target(m))
                    && call.a_srv.state() == ServerInviteState::Proceeding
                {
                    call.cancelled = true;
                    let mut r = Vec::new();
                    let inv = call.legs.a.invite.clone();
                    if let Ok(a) = scan(&inv) {
                        response(
                            &a.reply_parts(),
                            487,
                            None,
                            Some(&hex_u64(call.a_tag)),
                            &[],
                            &mut r,
                        );
                        call.a_srv.send_response(now, 487, r);
                    }
                    Self::cancel_b(call, now, self.ep.cfg.timers);
                }
            }
            (Some(Method::Bye), _) => {
                let mut ok = Vec::new();
                response(&m.reply_parts(), 200, None, None, &[], &mut ok);
                let mut t = ServerNonInvite::new(now, self.ep.cfg.timers);
                // With records kept in the cluster, a replicated call's
                // end: its 200 waits for the removal's commit (`HeldEnd`).
                if self.ep.records_on
                    && self.ep.replicate
                    && call.replicated.is_some()
                    && !call.over
                {
                    call.held_end = Some(Box::new(HeldEnd {
                        what: HeldWhat::ByeOk {
                            key: key.clone(),
                            ok,
                        },
                        until: now + Self::HOLD_OK_LIMIT,
                    }));
                } else {
                    t.send_response(now, 200, ok);
                }
                call.nits.push(Nit::Server(key, t, via_target(m)));
                if let Some(d) = &mut call.legs[from].dialog {
                    let _ = d.handle_request(m);
                }
                let key = call.key;
                let via = self.ep.via(key);
                let timers = self.ep.cfg.timers;
                let Some(call) = self.calls.get_mut(&cref) else {
                    return;
                };
                // B hung up before A has our 2xx (held for the call's
                // commit, which no longer matters) or its ACK: A gets the
                // 2xx now and the BYE once it acknowledges it.
                let wait = from == Side::B
                    && !call.over
                    && (call.held_ok.is_some() || call.a_ok.is_some());
                if wait && let Some((status, r, _)) = call.held_ok.take().map(|b| *b) {
                    Self::send_ok(call, now, status, r, timers, self.ep.registrar.wall_ms(now));
                }
                call.a_bye_after_ack |= wait;
                let other = call.legs[from.other()].dialog.as_mut();
                if let Some(d) = other.filter(|_| !wait) {
                    push_bye(&mut call.nits, d, now, timers, &via, &[]);
                }
                if !call.over {
                    call.over = true;
                    if !wait {
                        call.a_ok = None;
                    }
                    self.ep.stats.hung_up += 1;
                    let cause = match from {
                        Side::A => EndCause::Caller,
                        Side::B => EndCause::Callee,
                    };
                    self.with_call(cref, |c, ep| c.record_end(ep, now, cause, 200));
                }
            }
            (
                Some(
                    Method::Invite
                    | Method::Update
                    | Method::Info
                    | Method::Options
                    | Method::Message
                    | Method::Refer
                    | Method::Notify
                    | Method::Subscribe,
                ),
                _,
            ) if m.to_tag().is_some() => {
                self.relay(now, cref, m, from);
                return;
            }
            _ => {
                let mut r = Vec::new();
                let tag = match from {
                    Side::A => hex_u64(call.a_tag).to_vec(),
                    Side::B => Vec::new(),
                };
                response(&m.reply_parts(), 501, None, Some(&tag), &[], &mut r);
                self.ep.out.push_back((via_target(m), r));
            }
        }
        self.drain(now, cref);
    }

    /// The BYE of A's dialog, after B hung up (see `Call::a_bye_after_ack`).
    pub(super) fn bye_a(&mut self, now: Instant, cref: u64) {
        let Some(call) = self.calls.get(&cref) else {
            return;
        };
        let via = self.ep.via(call.key);
        let timers = self.ep.cfg.timers;
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        call.a_bye_after_ack = false;
        if let Some(d) = call.legs.a.dialog.as_mut() {
            push_bye(&mut call.nits, d, now, timers, &via, &[]);
        }
        self.drain(now, cref);
    }

    /// B's requests held for A's ACK (`Call::after_ack`), handled once A
    /// has acknowledged our 2xx.
    pub(super) fn after_ack(&mut self, now: Instant, cref: u64) {
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        if call.after_ack.is_empty() || call.held_ok.is_some() || call.a_ok.is_some() {
            return;
        }
        for (_, r, remote) in std::mem::take(&mut call.after_ack) {
            let learned = std::mem::replace(&mut self.ep.remote, remote);
            self.handle_datagram(now, &r);
            self.ep.remote = learned;
        }
    }

    /// Relays an in-dialog request from one leg to the other (RFC 3261
    /// §12.2, §14 for re-INVITE): the request goes out in the other leg's
    /// dialog with that leg's next CSeq, and its answers come back.
    pub(super) fn relay(&mut self, now: Instant, cref: u64, m: &Message<'_>, from: Side) {
        let Some(call) = self.calls.get(&cref) else {
            return;
        };
        let key = call.key;
        let reply = |status: u16,
                     phrase: Option<&'static str>,
                     out: &mut VecDeque<(Option<SocketAddr>, Vec<u8>)>| {
            let mut r = Vec::new();
            let phrase = phrase.as_ref().map(|p| p as &dyn core::fmt::Display);
            response(&m.reply_parts(), status, phrase, None, &[], &mut r);
            out.push_back((via_target(m), r));
        };
        // After a BYE only the transfer's NOTIFYs still flow (the REFER's
        // subscription outlives the call, RFC 5057 §5.2).
        if call.over && m.method() != Some(Method::Notify) {
            reply(481, None, &mut self.ep.out);
            return;
        }
        // A does not have our 2xx yet (held for the call's commit), or has
        // not acknowledged it: B's request waits for A's ACK (see
        // `Call::after_ack`), its retransmissions not queued twice.
        if from == Side::B && (call.held_ok.is_some() || call.a_ok.is_some()) {
            let seq = m.cseq().seq;
            if call.after_ack.iter().any(|(s, ..)| *s == seq) {
                return;
            }
            if call.after_ack.len() >= MAX_AFTER_ACK {
                reply(491, None, &mut self.ep.out);
                return;
            }
            let Some(call) = self.calls.get_mut(&cref) else {
                return;
            };
            call.after_ack
                .push((seq, m.as_bytes().to_vec(), self.ep.remote.clone()));
            return;
        }
        let put = match self.transfer_check(now, call, m, from) {
            Ok(p) => p,
            Err((status, phrase)) => {
                reply(status, Some(phrase), &mut self.ep.out);
                return;
            }
        };
        let via = self.ep.via(key);
        let timers = self.ep.cfg.timers;
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        let is_invite = m.method() == Some(Method::Invite);
        if is_invite {
            let pending_to_x = call.relays.iter().any(|r| {
                r.from != from
                    && matches!(&r.cli, Cli::Invite(c) if matches!(c.state(), InviteState::Calling | InviteState::Proceeding))
            });
            //= https://www.rfc-editor.org/rfc/rfc3261#section-14.2
            //# A UAS that receives an INVITE on a dialog while an INVITE it had sent
            //# on that dialog is in progress MUST return a 491 (Request Pending)
            //# response to the received INVITE.
            if pending_to_x {
                reply(491, None, &mut self.ep.out);
                return;
            }
            let pending_from_x = call.relays.iter().any(|r| {
                r.from == from
                    && matches!(&r.srv, Srv::Invite(s) if s.state() == ServerInviteState::Proceeding)
            });
            //# A UAS that receives a second INVITE before it sends the final
            //# response to a first INVITE with a lower CSeq sequence number on the
            //# same dialog MUST return a 500 (Server Internal Error) response
            if pending_from_x {
                reply(500, None, &mut self.ep.out);
                return;
            }
        }
        let (x, y) = call.legs.pair_mut(from);
        let (Some(x), Some(y)) = (x.dialog.as_mut(), y.dialog.as_mut()) else {
            // Not answered yet: early-dialog requests are not relayed.
            reply(501, None, &mut self.ep.out);
            return;
        };
        if let Err(e) = x.handle_request(m) {
            reply(e.status(), None, &mut self.ep.out);
            return;
        }
        if m.method() == Some(Method::Refer) && call.local_mode {
            self.local_refer(now, cref, m, from);
            self.drain(now, cref);
            return;
        }
        // Our Contact in the leg the request goes on.
        let contact = self.ep.cfg.contact(key, y.call_id());
        let method = core::str::from_utf8(m.method_bytes()).unwrap_or("INFO");
        let body = m.content_type().map(|ct| (ct, m.body()));
        let refresh = matches!(m.method(), Some(Method::Invite | Method::Update));
        let mut headers = end_to_end_headers(
            m,
            self.ep.cfg.trusted.contains(sender_ip(m)),
            &self.ep.cfg.identity_headers,
        );
        for (name, value) in &put {
            for h in m.headers().filter(|h| h.name == *name) {
                let was = h.value.of(m.buf());
                if let Some(slot) = headers.iter_mut().find(|(_, v)| core::ptr::eq(*v, was)) {
                    slot.1 = value;
                }
            }
        }
        let out = y.request(
            method,
            None,
            &via,
            // Target refreshes carry our Contact, and so do REFER, NOTIFY
            // and SUBSCRIBE (a dialog usage's requests: RFC 3515 §2.1,
            // RFC 6665 §4.1.2.1 and §4.2.1): it names the edge with the
            // call's key, never the phone on the other leg.
            (refresh
                || matches!(
                    m.method(),
                    Some(Method::Refer | Method::Notify | Method::Subscribe)
                ))
            .then_some(contact.as_slice()),
            &headers,
            body,
        );
        let out_seq = y.local_seq;
        match m.method() {
            Some(Method::Refer) => {
                call.transfer = Some(Box::new(Transfer {
                    at: now,
                    attended: m
                        .header(HeaderName::ReferTo)
                        .and_then(|h| NameAddr::parse(m.buf(), h.value).ok())
                        .and_then(|na| na.uri().headers())
                        .is_some_and(|h| {
                            h.windows(9).any(|w| w.eq_ignore_ascii_case(b"replaces="))
                        }),
                    from,
                    cseq_in: m.cseq().seq,
                    cseq_out: out_seq,
                    until: now + Transfer::DEFAULT_EXPIRY,
                    done: false,
                }));
            }
            //= https://www.rfc-editor.org/rfc/rfc3515#section-2.4.5
            //# The body of a NOTIFY MUST begin with a SIP Response Status-Line
            Some(Method::Notify) => {
                let state = m
                    .header(HeaderName::SubscriptionState)
                    .map(|h| h.value.of(m.buf()));
                let terminated = state.is_some_and(|v| v.starts_with(b"terminated"));
                let status = m
                    .body()
                    .strip_prefix(b"SIP/2.0 ")
                    .and_then(|b| core::str::from_utf8(b.get(..3)?).ok()?.parse::<u16>().ok());
                if let Some(t) = call.transfer.as_mut().filter(|t| t.from != from) {
                    if let Some(e) = state.and_then(sub_expires) {
                        t.until = now + e;
                    }
                    if terminated && !t.done {
                        t.done = true;
                        if let Some(st) = status.filter(|s| *s >= 200) {
                            let result = if st < 300 {
                                TransferResult::Succeeded
                            } else {
                                TransferResult::Failed
                            };
                            detail::note_transfer(
                                &mut self.ep.transfers,
                                &mut call.detail,
                                self.ep.details_on,
                                self.ep.registrar.wall_ms(now),
                                TransferEvent {
                                    attended: t.attended,
                                    local: false,
                                    result,
                                    elapsed: now - t.at,
                                },
                            );
                        }
                    }
                }
            }
            _ => {}
        }
        let Ok(cli_key) = scan(&out).map(|o| Key::server(&o)) else {
            return;
        };
        let (srv, cli) = if is_invite {
            (
                Srv::Invite(ServerInvite::new(now, timers, m)),
                Cli::Invite(ClientInvite::new(now, timers, out.clone())),
            )
        } else {
            (
                Srv::Other(ServerNonInvite::new(now, timers)),
                Cli::Other(ClientNonInvite::new(now, timers, out.clone())),
            )
        };
        call.relays.push(Relay {
            from,
            req: m.as_bytes().to_vec(),
            back: via_target(m),
            srv_key: Key::server(m),
            srv,
            cli_key,
            cli,
            out,
            ack: None,
            relayed_final: false,
            resumed: false,
        });
        self.drain(now, cref);
    }

    /// The ACK of the 2xx to our relayed re-INVITE `out` (a new branch,
    /// derived from the INVITE's, and the INVITE's CSeq number).
    pub(super) fn ack_of(y: &mut Dialog, out: &[u8]) -> Option<Vec<u8>> {
        let o = scan(out).ok()?;
        let v = o.top_via();
        let mut via = o.buf()[v.span().start..v.params_span().start].to_vec();
        via.extend_from_slice(b";branch=");
        via.extend_from_slice(v.branch()?);
        via.extend_from_slice(b"-ack");
        if let Some(k) = v.param(b"k").and_then(|p| p.value) {
            via.extend_from_slice(b";k=");
            via.extend_from_slice(k.of(o.buf()));
        }
        Some(y.request("ACK", Some(o.cseq().seq), &via, None, &[], None))
    }

    /// Moves the relays' output out and relays their answers back.
    pub(super) fn drain_relays(&mut self, now: Instant, cref: u64) {
        // Most calls relay nothing most of the time: this runs after every
        // message of a call, so it returns before it builds anything.
        let Some(call) = self.calls.get_mut(&cref).filter(|c| !c.relays.is_empty()) else {
            return;
        };
        let call: &mut Call = call;
        let key = call.key;
        let Call {
            relays,
            legs,
            session_expires,
            transfer,
            ..
        } = call;
        let mut dead_leg = false;
        for r in relays.iter_mut() {
            let back = r.back;
            let mut events = Vec::new();
            match &mut r.cli {
                Cli::Invite(c) => {
                    while let Some(b) = c.poll_transmit() {
                        self.ep.out.push_back((None, b));
                    }
                    while let Some(e) = c.poll_event() {
                        events.push(e);
                    }
                }
                Cli::Other(c) => {
                    while let Some(b) = c.poll_transmit() {
                        self.ep.out.push_back((None, b));
                    }
                    while let Some(e) = c.poll_event() {
                        events.push(e);
                    }
                }
            }
            let is_invite = matches!(r.cli, Cli::Invite(_));
            for e in events {
                let Some((status, msg)) = e.into_response() else {
                    continue;
                };
                if status == 100 {
                    continue;
                }
                let resp = scan(&msg).ok();
                if is_invite && (200..300).contains(&status) {
                    // The 2xx of our re-INVITE: ACK it on its leg (again for
                    // a retransmitted 2xx) and take its new target.
                    let y = legs[r.from.other()].dialog.as_mut();
                    if let (Some(y), Some(p)) = (y, resp.as_ref()) {
                        y.handle_response(p);
                        if r.ack.is_none() {
                            r.ack = Self::ack_of(y, &r.out);
                        }
                    }
                    if let Some(a) = &r.ack {
                        self.ep.out.push_back((None, a.clone()));
                    }
                }
                if r.relayed_final {
                    continue;
                }
                let Ok(req) = scan(&r.req) else { continue };
                let body = resp
                    .as_ref()
                    .and_then(|p| p.content_type().map(|ct| (ct, p.body())));
                let from_trusted = self.ep.cfg.trusted.contains(addressee_ip(&r.out));
                let mut extra = resp
                    .as_ref()
                    .map(|p| end_to_end_headers(p, from_trusted, &self.ep.cfg.identity_headers))
                    .unwrap_or_default();
                // Our Contact in the leg the request came from, where its
                // answer goes.
                let contact;
                if is_invite && status < 300 {
                    let l = &legs[r.from];
                    let id = l.dialog.as_ref().map_or(&*l.call_id, |d| d.call_id());
                    contact = self.ep.contact(key, id);
                    extra.push(("Contact", &contact));
                }
                // A refresh (re-INVITE or UPDATE answered 2xx) restarts the
                // session timer with the interval it agreed on.
                if (200..300).contains(&status)
                    && matches!(req.method(), Some(Method::Invite | Method::Update))
                    && let Some(i) = resp.as_ref().and_then(session_interval)
                {
                    *session_expires = Some(now + i);
                }
                let mut out = Vec::new();
                response_with_body(
                    &req.reply_parts(),
                    status,
                    None,
                    None,
                    &extra,
                    body,
                    &mut out,
                );
                match &mut r.srv {
                    Srv::Invite(s) => s.send_response(now, status, out),
                    Srv::Other(s) => s.send_response(now, status, out),
                }
                if status >= 200 {
                    r.relayed_final = true;
                    if req.method() == Some(Method::Refer)
                        && let Some(t) = transfer.as_mut()
                    {
                        let result = if status < 300 {
                            TransferResult::Accepted
                        } else {
                            // Refused: no subscription (RFC 3515 §2.4.2).
                            t.done = true;
                            TransferResult::Rejected
                        };
                        detail::note_transfer(
                            &mut self.ep.transfers,
                            &mut call.detail,
                            self.ep.details_on,
                            self.ep.registrar.wall_ms(now),
                            TransferEvent {
                                attended: t.attended,
                                local: false,
                                result,
                                elapsed: now - t.at,
                            },
                        );
                    }
                }
                if status == 481 || (status == 408 && !r.resumed) {
                    dead_leg = true;
                }
            }
            match &mut r.srv {
                Srv::Invite(s) => {
                    while let Some(b) = s.poll_transmit() {
                        self.ep.out.push_back((back, b));
                    }
                    while s.poll_event().is_some() {}
                }
                Srv::Other(s) => {
                    while let Some(b) = s.poll_transmit() {
                        self.ep.out.push_back((back, b));
                    }
                    while s.poll_event().is_some() {}
                }
            }
        }
        //= https://www.rfc-editor.org/rfc/rfc3261#section-12.2.1.2
        //# If the response for a request within a dialog is a 481
        //# (Call/Transaction Does Not Exist) or a 408 (Request Timeout), the UAC
        //# SHOULD terminate the dialog.
        if dead_leg {
            self.tear_down(now, cref);
        }
    }
}
