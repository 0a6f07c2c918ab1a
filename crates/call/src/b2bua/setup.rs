//! A call's setup and its B leg: the INVITE to the routed target,
//! failover to the next target, CANCEL, the callee's answers relayed to A,
//! the held 2xx (replication), and tearing a call down.

use super::*;

impl<R: RngCore> B2bua<R> {
    /// Where an INVITE with `Replaces` (RFC 3891) goes when it names a
    /// dialog of ours as the party there knows it (`to-tag` theirs,
    /// `from-tag` ours): to that party's current target, whatever the
    /// routes say, so the new call reaches the dialog it replaces.
    ///
    /// A callee's target was reached through the routes; a caller's is its
    /// own Contact, which nothing checked. So a caller's dialog is aimed at
    /// only when its Contact is the address its INVITE came from; else
    /// anyone could name their own call and have the worker call an address
    /// of their choosing (an open relay), and the INVITE is routed as any
    /// other.
    pub(super) fn replaced_target(&self, m: &Message<'_>) -> Option<SocketAddr> {
        let v = m.header(HeaderName::Replaces)?.value.of(m.buf());
        let r = Replaces::parse(v)?;
        let (_, a, b) = self.dialogs_of(&r.call_id)?;
        let d = [a, b].into_iter().find(|d| {
            d.call_id() == r.call_id && d.remote_tag() == r.to_tag && d.local_tag() == r.from_tag
        })?;
        let t = d.remote_target();
        let u = handover_sip::Uri::parse(t, handover_sip::Span::new(0, t.len())).ok()?;
        let ip: IpAddr = core::str::from_utf8(u.host()).ok()?.parse().ok()?;
        let target = SocketAddr::new(ip, u.port().unwrap_or(5060));
        if std::ptr::eq(d, a) {
            let invite = scan(self.a_invite_of(&r.call_id)?).ok()?;
            let came_from = invite.vias().nth(1).and_then(|v| v.target());
            if came_from != Some(target) {
                return None;
            }
        }
        Some(target)
    }

    pub(super) fn new_call(
        &mut self,
        now: Instant,
        m: &Message<'_>,
        caller: register::Caller,
    ) -> Option<u64> {
        let asserted = caller.asserted;
        if let Err(r) = m.ua_check() {
            let t = self.ep.ids.tag();
            let mut b = Vec::new();
            response(
                &m.reply_parts(),
                r.status(),
                Some(&r),
                Some(t.as_bytes()),
                &[],
                &mut b,
            );
            self.ep.out.push_back((via_target(m), b));
            return None;
        }
        //= https://www.rfc-editor.org/rfc/rfc3261#section-21.5.4
        //# The server is temporarily unable to process the request due to a
        //# temporary overloading or maintenance of the server.  The server MAY
        //# indicate when the client should retry the request in a Retry-After
        //# header field.
        let source = sender_ip(m);
        let from_source = source.map_or(0, |ip| self.ep.per_source.get(&ip).copied().unwrap_or(0));
        let full = self.calls.len() >= self.ep.cfg.max_calls;
        if full
            || self.ep.storage_full
            || (self.ep.cfg.max_calls_per_source > 0
                && from_source >= self.ep.cfg.max_calls_per_source)
        {
            if self.ep.storage_full {
                self.ep.stats.refused_storage += 1;
            } else if full {
                self.ep.stats.refused_full += 1;
            } else {
                self.ep.stats.refused_per_source += 1;
            }
            let t = self.ep.ids.tag();
            self.ep.refuse_overloaded(m, Some(t.as_bytes()));
            return None;
        }
        let key = self.ep.cfg.hashing.affinity_key(m.call_id());
        let (targets, mode) = match self.replaced_target(m) {
            Some(t) => (vec![Target::from(t)], None),
            None => match self.flow_target(m) {
                // A PBX calling a phone through our Path (relay mode).
                Some(t) => (vec![t], None),
                None => self.locate(now, m.request_uri(), key),
            },
        };
        let local_mode = mode.unwrap_or(self.ep.cfg.transfer_mode) == TransferMode::Local;
        // A registered user's bindings ring together; a route's targets
        // are tried one after another.
        let fork = targets.len() > 1 && targets.iter().all(|t| t.binding);
        let Some(target) = targets.first().cloned() else {
            let t = self.ep.ids.tag();
            self.ep.respond(m, 404, Some(t.as_bytes()));
            return None;
        };
        self.ep.stats.started += 1;
        let a_tag = self.ep.ids.tag_bits();
        let a_srv = ServerInvite::new(now, self.ep.cfg.timers, m);
        let (b_call_id, b_invite) = self.ep.leg_b_invite(m, key, &target, asserted.as_deref());
        let b_cli = ClientInvite::new(now, self.ep.cfg.timers, b_invite.clone());
        let b_uri = scan(&b_invite)
            .ok()
            .and_then(|b| b.request_uri().map(|u| u.as_bytes().to_vec()))
            .unwrap_or_default();
        let detail = self.new_detail(now, &b_uri, caller.user);
        let cref = self.next_ref;
        self.next_ref += 1;
        let (a_call_id, b_call_id): (Arc<[u8]>, Arc<[u8]>) = (m.call_id().into(), b_call_id.into());
        self.ep.by_call_id.insert(a_call_id.clone(), cref);
        self.ep.by_call_id.insert(b_call_id.clone(), cref);
        self.ep.count_source(source);
        self.calls.insert(
            cref,
            Box::new(Call {
                key,
                own_id: Box::default(),
                legs: Legs {
                    a: Leg {
                        call_id: a_call_id,
                        invite: m.as_bytes().to_vec(),
                        dialog: None,
                    },
                    b: Leg {
                        call_id: b_call_id,
                        invite: b_invite,
                        dialog: None,
                    },
                },
                a_target: via_target(m),
                a_tag,
                a_srv,
                a_ok: None,
                a_bye_after_ack: false,
                after_ack: Few::default(),
                b_cli,
                b_ack: None,
                cancelled: false,
                answered: false,
                answered_at: None,
                session_expires: None,
                started_at: now,
                setup: Some(Box::new(Setup {
                    tried: if fork { targets.len() } else { 1 },
                    targets: targets.clone(),
                    best: None,
                    forks_done: false,
                    heard: false,
                    ring_deadline: Some(now + self.ep.cfg.ring_timeout),
                    no_answer: false,
                    asserted,
                })),
                transfer: None,
                local_mode,
                local: None,
                old_ids: Few::default(),
                forks: Few::default(),
                over: false,
                nits: Few::default(),
                relays: Few::default(),
                replicated: None,
                committed: 0,
                held_ok: None,
                held_end: None,
                linger: None,
                scheduled: None,
                source,
                detail,
            }),
        );
        if fork {
            self.with_call(cref, |c, ep| c.start_forks(ep, now, cref, m, &targets[1..]));
        }
        self.drain(now, cref);
        Some(cref)
    }

    /// Cancels the B leg's INVITE if it has no final response yet (RFC 3261
    /// §9.1; also sent before a provisional, where the callee has been
    /// silent for the whole ring timeout).
    pub(super) fn cancel_b(call: &mut Call, now: Instant, timers: TimerConfig) {
        let main = matches!(
            call.b_cli.state(),
            InviteState::Calling | InviteState::Proceeding
        )
        .then_some(&call.legs.b.invite);
        // Every leg still ringing (forks too: `fork.rs`).
        let forks = call.forks.iter().filter(|f| f.ringing()).map(|f| &f.invite);
        let cancels: Vec<Vec<u8>> = main
            .into_iter()
            .chain(forks)
            .filter_map(|inv| scan(inv).ok().map(|i| cancel_for(&i)))
            .collect();
        for cancel in cancels {
            if let Ok(ck) = scan(&cancel).map(|c| Key::server(&c)) {
                call.nits
                    .push(Nit::Client(ck, ClientNonInvite::new(now, timers, cancel)));
            }
        }
    }

    pub(super) fn in_call_response(&mut self, now: Instant, cref: u64, m: &Message<'_>) {
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        let key = Key::client(m);
        for n in &mut call.nits {
            if let Nit::Client(k, t) = n
                && *k == key
            {
                t.handle_response(now, m);
                self.drain(now, cref);
                return;
            }
        }
        for r in &mut call.relays {
            if r.cli_key == key {
                match &mut r.cli {
                    Cli::Invite(c) => c.handle_response(now, m),
                    Cli::Other(c) => c.handle_response(now, m),
                }
                self.drain(now, cref);
                return;
            }
        }
        if self.with_call(cref, |c, _| c.local_response(now, m)) {
            self.drain(now, cref);
            return;
        }
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        if *m.call_id() == *call.legs.b.call_id && m.cseq().method == Method::Invite {
            call.b_cli.handle_response(now, m);
        } else {
            self.with_call(cref, |c, _| c.fork_response(now, m));
        }
        self.drain(now, cref);
    }

    /// Moves every transaction's output of call `cref` out, and acts on
    /// their events.
    pub(super) fn drain(&mut self, now: Instant, cref: u64) {
        self.with_call(cref, |c, ep| c.drain_outputs(ep));
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        while let Some(e) = call.a_srv.poll_event() {
            if let Event::Ack(_) = e {
                call.a_ok = None;
            }
        }
        let mut events = Vec::new();
        while let Some(e) = call.b_cli.poll_event() {
            events.push(e);
        }
        for e in events {
            self.with_call(cref, |c, ep| c.on_b_event(ep, now, cref, e));
        }
        // B's 2xx comes again only while our INVITE's transaction runs
        // (Accepted, 64·T1); past it the ACK kept for the resends of an
        // unusable 2xx goes.
        if let Some(call) = self.calls.get_mut(&cref)
            && call.b_cli.state() == InviteState::Terminated
        {
            call.b_ack = None;
        }
        self.with_call(cref, |c, ep| c.drain_forks(ep, now, cref));
        self.drain_relays(now, cref);
        self.drain_local(now, cref);
        // Last: what the steps above queued (BYEs, NOTIFYs, answers) goes
        // out in the order it was queued.
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        for n in &mut call.nits {
            match n {
                Nit::Client(_, t) => {
                    while let Some(b) = t.poll_transmit() {
                        self.ep.out.push_back((None, b));
                    }
                    while t.poll_event().is_some() {}
                }
                Nit::Server(_, t, to) => {
                    while let Some(b) = t.poll_transmit() {
                        self.ep.out.push_back((*to, b));
                    }
                    while t.poll_event().is_some() {}
                }
            }
        }
        // Ended transactions go (their retransmissions absorbed, their
        // events drained above): a long call, or a flood of INFOs inside
        // one, keeps only those still running, so neither its memory nor
        // the time to find its next deadline grows with its requests.
        call.nits.retain(|n| !n.ended());
        call.relays.retain(|r| !r.ended());
    }

    /// How long a 2xx waits for its call's commit before it goes to A
    /// anyway (the call then lives unreplicated until its next change).
    pub(super) const HOLD_OK_LIMIT: Duration = Duration::from_secs(4);

    /// Sends the 2xx that confirms the call to A and resends it until A's
    /// ACK (§13.3.1.4). `wall_ms` is now in Unix ms: the call's answer as
    /// its record says it (when A hears it, after the commit it waited
    /// for, not when B answered).
    pub(super) fn send_ok(
        call: &mut Call,
        now: Instant,
        status: u16,
        r: Vec<u8>,
        timers: TimerConfig,
        wall_ms: u64,
    ) {
        if call.detail.answered_ms == 0 {
            call.detail.answered_ms = wall_ms;
        }
        call.a_srv.send_response(now, status, r.clone());
        let t1 = timers.t1;
        call.a_ok = Some(Box::new((r, now + t1, t1, now + timers.t1x64())));
    }

    /// A call's record is committed (the shell heard it from the replica):
    /// the 2xx held for it goes to A.
    pub fn committed(&mut self, now: Instant, a_call_id: &[u8]) {
        let Some(&cref) = self.ep.by_call_id.get(a_call_id) else {
            return;
        };
        // A removal refused (the shard moved): nothing to wait for.
        if self.calls.get(&cref).is_some_and(|c| c.over) {
            self.release_end(now, cref);
        }
        let timers = self.ep.cfg.timers;
        let wall = self.ep.unix_ms(now);
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        if let Some((status, r, _)) = call.held_ok.take().map(|b| *b) {
            Self::send_ok(call, now, status, r, timers, wall);
            self.with_call(cref, |c, ep| c.drain_outputs(ep));
            self.schedule(cref);
        }
    }

    /// A call's first record was refused by the cluster (at apply time no
    /// worker owned its shard, so nobody could carry it): rather than a
    /// call that lives on one worker and that A's next request cannot
    /// reach, A gets 500 with Retry-After in place of the held 2xx (its
    /// phone tries again) and B, which answered, a BYE. Without a held 2xx
    /// this is [`Self::committed`].
    pub fn refused(&mut self, now: Instant, a_call_id: &[u8]) {
        let Some(&cref) = self.ep.by_call_id.get(a_call_id) else {
            return;
        };
        if self
            .calls
            .get(&cref)
            .is_none_or(|c| c.held_ok.is_none() || c.over)
        {
            self.committed(now, a_call_id);
            return;
        }
        let Some(call) = self.calls.get(&cref) else {
            return;
        };
        let via = self.ep.via(call.key);
        let timers = self.ep.cfg.timers;
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        call.held_ok = None;
        call.over = true;
        call.replicated = None;
        if let Ok(a) = scan(&call.legs.a.invite) {
            let mut r = Vec::new();
            response(
                &a.reply_parts(),
                500,
                None,
                Some(&hex_u64(call.a_tag)),
                &[("Retry-After", b"5")],
                &mut r,
            );
            call.a_srv.send_response(now, 500, r);
        }
        if let Some(d) = call.legs.b.dialog.as_mut() {
            let reason: &[u8] = b"SIP;cause=500;text=\"the cluster could not keep the call\"";
            push_bye(&mut call.nits, d, now, timers, &via, &[("Reason", reason)]);
        }
        self.ep.stats.refused_records += 1;
        self.with_call(cref, |c, ep| c.record_end(ep, now, EndCause::Refused, 500));
        self.drain(now, cref);
        self.schedule(cref);
    }

    /// Hangs up both legs of an answered call (BYE in each dialog).
    pub(super) fn tear_down(&mut self, now: Instant, cref: u64) {
        let reason = b"SIP;cause=408;text=\"handover ended the call\"";
        if self.bye_both(now, cref, reason, EndCause::TornDown) {
            self.ep.stats.torn_down += 1;
        }
    }

    /// An operator ends the call one of whose legs is `call_id`
    /// (`handover hangup`, through the replicated log): BYE on both legs.
    /// False when no such answered call is held here, or it is over.
    pub fn hang_up(&mut self, now: Instant, call_id: &[u8]) -> bool {
        let Some(&cref) = self.ep.by_call_id.get(call_id) else {
            return false;
        };
        if !self.calls.get(&cref).is_some_and(|c| c.answered) {
            return false;
        }
        let reason = b"SIP;cause=200;text=\"ended by the operator\"";
        let ended = self.bye_both(now, cref, reason, EndCause::Operator);
        if ended {
            self.ep.stats.operator_hangups += 1;
        }
        ended
    }

    /// BYE with `reason` in both dialogs of call `cref`; false when it was
    /// over already.
    fn bye_both(&mut self, now: Instant, cref: u64, reason: &[u8], cause: EndCause) -> bool {
        let Some(call) = self.calls.get(&cref) else {
            return false;
        };
        if call.over {
            return false;
        }
        let key = call.key;
        let vias = [self.ep.via(key), self.ep.via(key)];
        let timers = self.ep.cfg.timers;
        let Some(call) = self.calls.get_mut(&cref) else {
            return false;
        };
        call.over = true;
        call.a_ok = None;
        let Legs { a, b } = &mut call.legs;
        for (d, via) in [a.dialog.as_mut(), b.dialog.as_mut()]
            .into_iter()
            .zip(&vias)
        {
            if let Some(d) = d {
                push_bye(&mut call.nits, d, now, timers, via, &[("Reason", reason)]);
            }
        }
        self.drain(now, cref);
        self.with_call(cref, |c, ep| c.record_end(ep, now, cause, 200));
        true
    }
}

//= https://www.rfc-editor.org/rfc/rfc3261#section-12.1.1
//# When a UAS responds to a request with a response that establishes a
//# dialog (such as a 2xx to INVITE), the UAS MUST copy all Record-Route
//# header field values from the request into the response (including the
//# URIs, URI parameters, and any Record-Route header field parameters,
//# whether they are known or unknown to the UAS) and MUST maintain the
//# order of those values.
/// A's Record-Route values, in order, as header lines for our answers to
/// A: the edge's names the transport and connection A came on, so A's
/// in-dialog requests come back the same way.
fn record_routes<'b>(a: &Message<'b>) -> Vec<(&'static str, &'b [u8])> {
    let buf = a.buf();
    a.values(HeaderName::RecordRoute)
        .map(|v| ("Record-Route", v.of(buf)))
        .collect()
}

impl Call {
    /// After 408, 503 or no answer from the current target, starts a new B
    /// leg to the route's next target. False when there is none left.
    pub(super) fn fail_over<R: RngCore>(
        &mut self,
        ep: &mut Endpoint<R>,
        now: Instant,
        cref: u64,
    ) -> bool {
        let call = &mut *self;
        if call.cancelled || call.answered {
            return false;
        }
        let Some(s) = call.setup.as_deref_mut() else {
            return false;
        };
        let Some(target) = s.targets.get(s.tried).cloned() else {
            return false;
        };
        s.tried += 1;
        let asserted = s.asserted.clone();
        let (a_bytes, key, old) = (
            call.legs.a.invite.clone(),
            call.key,
            call.legs.b.call_id.clone(),
        );
        let Ok(a) = scan(&a_bytes) else { return false };
        let (cid, invite) = ep.leg_b_invite(&a, key, &target, asserted.as_deref());
        let timers = ep.cfg.timers;
        let call = &mut *self;
        let cid: Arc<[u8]> = cid.into();
        call.legs.b.call_id = cid.clone();
        call.legs.b.invite = invite.clone();
        call.b_cli = ClientInvite::new(now, timers, invite);
        if let Some(s) = call.setup.as_deref_mut() {
            s.heard = false;
            s.no_answer = false;
            s.ring_deadline = Some(now + ep.cfg.ring_timeout);
        }
        ep.by_call_id.remove(&*old);
        ep.by_call_id.insert(cid, cref);
        ep.stats.failovers += 1;
        self.drain_outputs(ep);
        true
    }

    pub(super) fn on_b_event<R: RngCore>(
        &mut self,
        ep: &mut Endpoint<R>,
        now: Instant,
        cref: u64,
        e: Event,
    ) {
        let Some((status, msg)) = e.into_response() else {
            return;
        };
        if status == 100 {
            // Nothing to relay (RFC 3261 §16.7: a 100 is hop by hop).
            self.drain_outputs(ep);
            return;
        }
        let wall_now = ep.unix_ms(now);
        let call = &mut *self;
        let a_bytes = call.legs.a.invite.clone();
        let Ok(a) = scan(&a_bytes) else { return };
        if status >= 200
            && let Some(s) = call.setup.as_deref_mut()
        {
            s.ring_deadline = None;
        }
        // The 487 of our own CANCEL after the ring timeout: no answer.
        let status = if call.no_answer() && status == 487 {
            408
        } else {
            status
        };
        let resp = scan(&msg).ok();
        let body_ref = resp
            .as_ref()
            .and_then(|r| r.content_type().map(|ct| (ct, r.body())));
        let tag = hex_u64(call.a_tag);
        // The Contact of our answers to A.
        let contact = |call: &Call, ep: &Endpoint<R>| ep.contact(call.key, &call.legs.a.call_id);
        if (180..200).contains(&status) && call.detail.ringing_ms == 0 {
            call.detail.ringing_ms = wall_now;
        }
        if status > 100
            && !call.cancelled
            && let Some(s) = call.setup.as_deref_mut()
            && !s.heard
        {
            s.heard = true;
            ep.latencies
                .push_back((Latency::FirstResponse, now - call.started_at));
        }
        if (200..300).contains(&status) && !call.answered && !call.cancelled && !call.over {
            ep.latencies
                .push_back((Latency::Answer, now - call.started_at));
        }
        match status {
            101..=199 if !call.cancelled => {
                let from_trusted = ep.cfg.trusted.contains(addressee_ip(&call.legs.b.invite));
                let mut extra = resp
                    .as_ref()
                    .map(|p| end_to_end_headers(p, from_trusted, &ep.cfg.identity_headers))
                    .unwrap_or_default();
                let contact = contact(call, ep);
                extra.push(("Contact", &contact));
                extra.extend(record_routes(&a));
                let mut r = Vec::new();
                response_with_body(
                    &a.reply_parts(),
                    status,
                    None,
                    Some(&tag),
                    &extra,
                    body_ref,
                    &mut r,
                );
                call.a_srv.send_response(now, status, r);
            }
            200..=299 => {
                let Some(resp) = resp else { return };
                // The ACK is built for each 2xx (RFC 3261 §13.2.2.4), the
                // first and every resend, from our INVITE (its head once
                // answered) and that 2xx: kept, it cost every call 330
                // bytes while B could resend (`tests/memory.rs`).
                let ack_via = ep.via(call.key);
                let mut answered_cancelled = false;
                match register::callee_dialog(&call.legs.b.invite, &resp) {
                    Some(mut d) => {
                        let ack = d.request("ACK", Some(1), &ack_via, None, &[], None);
                        ep.out.push_back((None, ack));
                        let known = call
                            .legs
                            .b
                            .dialog
                            .as_ref()
                            .map(|b| b.remote_tag() == d.remote_tag());
                        //= https://www.rfc-editor.org/rfc/rfc3261#section-13.2.2.4
                        //# If the UAC does not want to continue
                        //# with that dialog, it MUST terminate the dialog by
                        //# sending a BYE request as described in Section 15.
                        // Not continued: B answered after A's CANCEL (§9.1:
                        // a CANCEL does not undo a final answer), or a
                        // second dialog (a fork on B's side) after the
                        // first. The first kind is kept as B's dialog, so
                        // its resent 2xx is only ACKed again; a second
                        // kind's resent 2xx (our ACK lost) gets another BYE.
                        let unwanted = known.map_or(call.cancelled || call.over, |same| !same);
                        if unwanted {
                            let bye_via = ep.via(call.key);
                            push_bye(&mut call.nits, &mut d, now, ep.cfg.timers, &bye_via, &[]);
                        }
                        if known.is_none() {
                            call.legs.b.dialog = Some(d);
                            answered_cancelled = call.cancelled;
                        }
                    }
                    None if call.b_ack.is_none() && call.legs.b.dialog.is_none() => {
                        self.unusable_answer(ep, now, cref, &resp, &ack_via);
                        return;
                    }
                    // A 2xx with no usable dialog, again: the same ACK.
                    None => {
                        if let Some(ack) = &call.b_ack {
                            ep.out.push_back((None, ack.to_vec()));
                        }
                    }
                }
                let call = &mut *self;
                if answered_cancelled && !call.over {
                    // No 487 is coming from B to end it: A heard 487 when
                    // it cancelled, and the call ends as cancelled here.
                    call.over = true;
                    ep.stats.failed += 1;
                    self.record_end(ep, now, EndCause::Cancelled, 487);
                    return;
                }
                let call = &mut *self;
                if call.cancelled || call.answered || call.over {
                    return;
                }
                call.answered = true;
                call.answered_at = Some(now + ep.cfg.max_call_age);
                call.session_expires = session_interval(&resp).map(|i| now + i);
                ep.stats.answered += 1;
                let from_trusted = ep.cfg.trusted.contains(addressee_ip(&call.legs.b.invite));
                let mut extra = end_to_end_headers(&resp, from_trusted, &ep.cfg.identity_headers);
                let contact = contact(call, ep);
                extra.push(("Contact", &contact));
                extra.extend(record_routes(&a));
                let mut r = Vec::new();
                response_with_body(
                    &a.reply_parts(),
                    status,
                    None,
                    Some(&tag),
                    &extra,
                    body_ref,
                    &mut r,
                );
                call.legs.a.dialog = Dialog::uas(&a, &tag, DialogState::Confirmed).ok();
                // Answered: no other target is tried (what only the set-up
                // read goes, `Setup`), and neither INVITE is sent or
                // answered again as a whole (A's 2xx is kept as sent, B's
                // ACK as built): the call keeps their heads
                // (`replica::invite_head`), as an adopted call does.
                call.setup = None;
                for leg in [&mut call.legs.a, &mut call.legs.b] {
                    leg.invite = replica::invite_head(&leg.invite);
                }
                if ep.replicate && call.legs.a.dialog.is_some() && call.legs.b.dialog.is_some() {
                    // Replicated calls: the 2xx that confirms the call to A
                    // waits until the call is committed (`committed`), so a
                    // call A believes up is never lost with this worker.
                    call.held_ok = Some(Box::new((status, r, now + B2bua::<R>::HOLD_OK_LIMIT)));
                } else {
                    B2bua::<R>::send_ok(call, now, status, r, ep.cfg.timers, wall_now);
                }
            }
            _ if status >= 300 || status == 408 => {
                if matches!(status, 408 | 503) && self.fail_over(ep, now, cref) {
                    return;
                }
                let status = self.leg_failed(ep, now, None, status);
                // Another leg of a forked call still rings: it goes on.
                let status = match self.next_fork(ep, now, status) {
                    Ok(()) => return,
                    Err(best) => best,
                };
                let call = &mut *self;
                if !call.cancelled && !call.answered {
                    let mut r = Vec::new();
                    response(&a.reply_parts(), status, None, Some(&tag), &[], &mut r);
                    // With records kept in the cluster, the caller hears
                    // the end once its record is committed (`HeldEnd`).
                    if ep.records_on && ep.replicate && !call.over {
                        call.held_end = Some(Box::new(HeldEnd {
                            what: HeldWhat::Final {
                                status,
                                response: r,
                            },
                            until: now + B2bua::<R>::HOLD_OK_LIMIT,
                        }));
                    } else {
                        call.a_srv.send_response(now, status, r);
                    }
                }
                if !call.over {
                    call.over = true;
                    ep.stats.failed += 1;
                    let cause = if call.cancelled {
                        EndCause::Cancelled
                    } else {
                        EndCause::Rejected
                    };
                    let status = if call.cancelled { 487 } else { status };
                    self.record_end(ep, now, cause, status);
                }
            }
            _ => {}
        }
        self.drain_outputs(ep);
    }
}

impl<R: RngCore> Endpoint<R> {
    /// The INVITE of a new B leg to `target` for A's INVITE `m`: its own
    /// Call-ID, tag and CSeq; A's From and SDP; Via and Contact naming the
    /// edge with the call's key; the caller's `asserted` identity when the
    /// target is a trusted peer (RFC 3325 §9.1: sent only within the trust
    /// domain).
    pub(super) fn leg_b_invite(
        &mut self,
        m: &Message<'_>,
        key: u64,
        target: &Target,
        asserted: Option<&[u8]>,
    ) -> (Vec<u8>, Vec<u8>) {
        let user = m.request_uri().and_then(|u| u.user()).unwrap_or_default();
        let b_call_id = self.ids.call_id().as_bytes().to_vec();
        let b_tag = self.ids.tag();
        let via = self.via(key);
        let contact = self.contact(key, &b_call_id);
        let routed = format!("sip:{}@{}", String::from_utf8_lossy(user), target.addr);
        // A registered phone: its Contact is the Request-URI, and To names
        // the AOR that was called.
        let (uri, to) = match &target.uri {
            Some(c) => (
                String::from_utf8_lossy(c).into_owned(),
                format!(
                    "<{}>",
                    m.request_uri()
                        .map_or(routed.clone(), |u| String::from_utf8_lossy(u.as_bytes())
                            .into_owned())
                ),
            ),
            None => (routed.clone(), format!("<{routed}>")),
        };
        let route: Vec<&[u8]> = target.route.iter().map(Vec::as_slice).collect();
        let from = m.from().map(|f| {
            let s = f.span();
            let p = f.params_span();
            m.buf()[s.start..if p.is_empty() { s.end } else { p.start }].to_vec()
        });
        let from = from.unwrap_or_else(|_| b"<sip:anonymous@anonymous.invalid>".to_vec());
        let body = m.content_type().map(|ct| (ct, m.body()));
        let mf = m.max_forwards().unwrap_or(70).saturating_sub(1).min(255) as u8;
        let mut headers = end_to_end_headers(
            m,
            self.cfg.trusted.contains(sender_ip(m)),
            &self.cfg.identity_headers,
        );
        if let Some(v) = asserted
            && self.cfg.trusted.contains(Some(target.addr.ip()))
        {
            // Ours replaces any the caller sent (a trusted caller is not
            // challenged, so has no identity of ours to assert).
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case("P-Asserted-Identity"));
            headers.push(("P-Asserted-Identity", v));
        }
        let build = |uri: &str| {
            handover_sip::build::Request {
                method: "INVITE",
                uri: uri.as_bytes(),
                via: &[&via],
                from: &from,
                from_tag: b_tag.as_bytes(),
                to: to.as_bytes(),
                call_id: &b_call_id,
                cseq: 1,
                max_forwards: mf,
                route: &route,
                contact: Some(&contact),
                headers: &headers,
                body,
                ..Default::default()
            }
            .to_vec()
        };
        let mut invite = build(&uri);
        // RFC 3261 §18.1.1: a request above the path MTU (1,300 bytes when
        // it is unknown) goes over TCP, to a target that takes TCP too
        // (its route says so: `;tcp_above`). The Request-URI says so, so
        // the edge opens the connection, and the INVITE's CANCEL and ACK
        // (built from it) and the dialog (Record-Routed with the flow)
        // follow it.
        if let Some(limit) = target.tcp_above
            && target.uri.is_none()
            && invite.len() > usize::from(limit)
        {
            invite = build(&format!("{uri};transport=tcp"));
        }
        (b_call_id, invite)
    }
}
