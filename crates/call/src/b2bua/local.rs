//! Transfer in local mode: the B2BUA carries out the REFER itself, so the
//! transferee never sees a REFER (phones and trunks without REFER work).
//!
//! 1. The REFER is answered 202 and the transferor gets NOTIFY
//!    `SIP/2.0 100 Trying` (`Subscription-State: active`).
//! 2. Blind: an offerless INVITE to the Refer-To target, routed like a new
//!    call (ring timeout included). Attended (a `Replaces` naming one of
//!    our dialogs): an offerless re-INVITE to the party on the other side
//!    of that call, in the dialog it already has.
//! 3. The target's 2xx carries an offer; the transferee is re-INVITEd with
//!    it; the transferee's answer goes to the target in our ACK (RFC 3725
//!    flow I: the target's offer, the transferee's answer).
//! 4. The transferor gets NOTIFY `SIP/2.0 200 OK` with the subscription
//!    terminated, then BYE; the target takes the transferor's place in the
//!    call. Attended: the replaced call's other leg (the transferor again)
//!    gets BYE too.
//!
//! Failure (target busy, no answer within the ring timeout, unreachable,
//! or the transferee refusing the new media): the transferor gets NOTIFY
//! with that status and the subscription terminated; the call stays as it
//! was, and can be resumed with a re-INVITE. While a transfer runs, the
//! target's requests other than BYE get 491.

use super::*;

/// Where a local transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Waiting for the target's 2xx (its offer).
    Target,
    /// Waiting for the transferee's 2xx to our re-INVITE (its answer).
    Transferee,
    /// Succeeded or failed; transactions may still absorb retransmissions.
    Done,
}

/// A transfer the B2BUA carries out itself.
#[derive(Debug)]
pub(super) struct Local {
    pub(super) at: Instant,
    pub(super) attended: bool,
    /// The transferor's leg.
    pub(super) transferor: Side,
    /// The REFER's CSeq as the transferor sent it (`Event: refer;id=`).
    pub(super) refer_seq: u32,
    pub(super) stage: Stage,
    /// Our INVITE (or re-INVITE) to the target, its key and transaction.
    pub(super) t_out: Vec<u8>,
    pub(super) t_key: Key,
    pub(super) t_cli: ClientInvite,
    pub(super) t_call_id: Vec<u8>,
    /// The target's dialog: from its 2xx (blind), or the replaced call's.
    pub(super) t_dialog: Option<Dialog>,
    /// Our ACK to the target's 2xx, with the transferee's answer.
    pub(super) t_ack: Option<Vec<u8>>,
    pub(super) ring_deadline: Option<Instant>,
    pub(super) no_answer: bool,
    /// Our re-INVITE to the transferee: request, key, transaction.
    pub(super) r: Option<(Vec<u8>, Key, ClientInvite)>,
    pub(super) r_ack: Option<Vec<u8>>,
    /// Attended: the call whose dialog with the target is taken over.
    pub(super) replaced: Option<u64>,
    /// That call's leg A Call-ID (its name in the replicated table).
    pub(super) replaced_id: Option<Vec<u8>>,
}

impl Local {
    pub(super) fn timeouts(&self) -> impl Iterator<Item = Instant> + use<> {
        let ring = self.ring_deadline.filter(|_| self.stage == Stage::Target);
        [
            self.t_cli.poll_timeout(),
            self.r.as_ref().and_then(|r| r.2.poll_timeout()),
            ring,
        ]
        .into_iter()
        .flatten()
    }

    pub(super) fn pending(&self) -> bool {
        self.stage != Stage::Done
    }
}

/// A status line for a sipfrag body.
fn sipfrag(status: u16) -> Vec<u8> {
    let reason = handover_sip::build::reason_phrase(status);
    format!("SIP/2.0 {status} {reason}\r\n").into_bytes()
}

impl<R: RngCore> B2bua<R> {
    /// A REFER on a call of a local-mode route (already checked: Refer-To
    /// usable, no transfer running, CSeq in order).
    pub(super) fn local_refer(&mut self, now: Instant, cref: u64, m: &Message<'_>, from: Side) {
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        let key = Key::server(m);
        let mut ok = Vec::new();
        response(&m.reply_parts(), 202, None, None, &[], &mut ok);
        let mut t = ServerNonInvite::new(now, self.ep.cfg.timers);
        t.send_response(now, 202, ok);
        call.nits.push(Nit::Server(key, t, via_target(m)));
        let Ok(rt) = transfer::refer_to(m) else {
            return;
        };
        let attended = rt.attended();
        detail::note_transfer(
            &mut self.ep.transfers,
            &mut call.detail,
            self.ep.details_on,
            self.ep.registrar.wall_ms(now),
            TransferEvent {
                attended,
                local: true,
                result: TransferResult::Accepted,
                elapsed: Duration::ZERO,
            },
        );
        let referred_by = m
            .header(HeaderName::ReferredBy)
            .and_then(|h| NameAddr::parse(m.buf(), h.value).ok())
            .map(|na| transfer::rewrite_name_addr(m.buf(), &na, &self.ep.cfg.advertised, None));
        let key = call.key;
        let via = self.ep.via(key);
        let timers = self.ep.cfg.timers;
        // The target: the replaced call's other party in the dialog this
        // worker has with it; or a new leg, to that party with a Replaces
        // (the replaced call is another worker's, see `remote.rs`) or to a
        // routed target (blind).
        let local_replaced = rt
            .replaces
            .as_ref()
            .map(|r| self.replaced_dialog(cref, r).ok_or(r));
        let (out, t_call_id, t_dialog, replaced, ring_deadline) = if let Some(Ok((cref2, mut d))) =
            local_replaced
        {
            // The party re-INVITEd in its dialog is told who it is now
            // connected to (its dialog still names the transferor).
            // Only a trusted peer is sent an asserted identity (RFC 3325).
            let trusted = self.ep.cfg.trusted.contains(uri_ip(d.remote_target()));
            let pai = self.calls.get(&cref).and_then(|c| {
                c.legs[from.other()]
                    .dialog
                    .as_ref()
                    .map(|t| t.remote_uri().to_vec())
            });
            let pai = pai.filter(|_| trusted);
            let headers: Vec<(&str, &[u8])> = pai
                .as_deref()
                .map(|v| ("P-Asserted-Identity", v))
                .into_iter()
                .collect();
            let contact = self.ep.contact(key, d.call_id());
            let out = d.request("INVITE", None, &via, Some(&contact), &headers, None);
            (out, d.call_id().to_vec(), Some(d), Some(cref2), None)
        } else {
            // (Request-URI, To, Replaces) of the new leg, and its
            // Route (a registered target's flow).
            let mut t_route: Vec<Vec<u8>> = Vec::new();
            let (uri, to, replaces) = match local_replaced {
                Some(Err(r)) => {
                    let elsewhere = self
                        .dialogs_of(&r.call_id)
                        .is_some_and(|(c, ..)| c.is_none());
                    let found = elsewhere
                        .then(|| self.translate_replaces(r))
                        .flatten()
                        .and_then(|t| {
                            let (_, a, b) = self.dialogs_of(&r.call_id)?;
                            let d = [a, b].into_iter().find(|d| d.call_id() == t.call_id)?;
                            Some((d.remote_target().to_vec(), d.remote_uri().to_vec(), t))
                        });
                    let Some((uri, to, t)) = found else {
                        self.with_call(cref, |c, ep| {
                            c.local_start_failed(ep, now, from, m.cseq().seq, attended, 481)
                        });
                        return;
                    };
                    (uri, to, Some(t.to_value()))
                }
                _ => {
                    let u = rt.uri();
                    let user = u.user().unwrap_or_default().to_vec();
                    let key = self.ep.cfg.hashing.affinity_key(m.call_id());
                    let (targets, _) = self.locate(now, Some(u), key);
                    let Some(target) = targets.into_iter().next() else {
                        self.with_call(cref, |c, ep| {
                            c.local_start_failed(ep, now, from, m.cseq().seq, attended, 404)
                        });
                        return;
                    };
                    let routed = format!("sip:{}@{}", String::from_utf8_lossy(&user), target.addr);
                    let to = format!(
                        "<{}>",
                        match &target.uri {
                            Some(_) => String::from_utf8_lossy(u.as_bytes()).into_owned(),
                            None => routed.clone(),
                        }
                    )
                    .into_bytes();
                    t_route = target.route;
                    (target.uri.unwrap_or_else(|| routed.into_bytes()), to, None)
                }
            };
            let Some(call) = self.calls.get(&cref) else {
                return;
            };
            // The new leg is the transferee calling the target.
            let transferee = &call.legs[from.other()].dialog;
            let from_uri = transferee
                .as_ref()
                .map(|d| d.remote_uri().to_vec())
                .unwrap_or_else(|| b"<sip:anonymous@anonymous.invalid>".to_vec());
            let t_call_id = self.ep.ids.call_id().as_bytes().to_vec();
            let contact = self.ep.contact(key, &t_call_id);
            let tag = self.ep.ids.tag();
            let mut headers: Vec<(&str, &[u8])> = referred_by
                .as_deref()
                .map(|v| ("Referred-By", v))
                .into_iter()
                .collect();
            if let Some(v) = &replaces {
                headers.push(("Replaces", v));
            }
            let out = handover_sip::build::Request {
                method: "INVITE",
                uri: &uri,
                via: &[&via],
                from: &from_uri,
                from_tag: tag.as_bytes(),
                to: &to,
                call_id: &t_call_id,
                cseq: 1,
                max_forwards: 70,
                route: &t_route.iter().map(Vec::as_slice).collect::<Vec<_>>(),
                contact: Some(&contact),
                headers: &headers,
                ..Default::default()
            }
            .to_vec();
            (
                out,
                t_call_id,
                None,
                None,
                Some(now + self.ep.cfg.ring_timeout),
            )
        };
        let Ok(t_key) = scan(&out).map(|o| Key::server(&o)) else {
            return;
        };
        self.ep.by_call_id.insert(t_call_id.as_slice().into(), cref);
        let replaced_id = replaced
            .and_then(|r| self.calls.get(&r))
            .map(|c| c.id().to_vec());
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        call.local = Some(Box::new(Local {
            at: now,
            attended,
            transferor: from,
            refer_seq: m.cseq().seq,
            stage: Stage::Target,
            t_cli: ClientInvite::new(now, timers, out.clone()),
            t_out: out,
            t_key,
            t_call_id,
            t_dialog,
            t_ack: None,
            ring_deadline,
            no_answer: false,
            r: None,
            r_ack: None,
            replaced,
            replaced_id,
        }));
        self.with_call(cref, |c, ep| c.local_notify(ep, now, 100, false));
    }

    /// The dialog with the party on the other side of the call that a
    /// transferor's `Replaces` names (its call, and a copy of the dialog).
    fn replaced_dialog(&self, cref: u64, r: &Replaces) -> Option<(u64, Dialog)> {
        let cref2 = *self.ep.by_call_id.get(r.call_id.as_slice())?;
        let t = self.translate_replaces(r)?;
        if cref2 == cref {
            return None; // a call cannot replace itself
        }
        let call = self.calls.get(&cref2)?;
        [call.legs.a.dialog.as_ref(), call.legs.b.dialog.as_ref()]
            .into_iter()
            .flatten()
            .find(|d| d.call_id() == t.call_id)
            .map(|d| (cref2, d.clone()))
    }

    /// A request on call `cref` from a leg the local transfer has to do
    /// with: the target's during the transfer, the replaced transferor's
    /// after it. True when handled here.
    pub(super) fn local_request(&mut self, now: Instant, cref: u64, m: &Message<'_>) -> bool {
        let Some(call) = self.calls.get(&cref) else {
            return false;
        };
        let from_target = call
            .local
            .as_ref()
            .is_some_and(|l| l.pending() && m.call_id() == l.t_call_id.as_slice());
        let from_old = call.old_ids.iter().any(|c| **c == *m.call_id());
        if !from_target && !from_old {
            return false;
        }
        match m.method() {
            Some(Method::Ack) => {}
            Some(Method::Bye) => {
                self.with_call(cref, |c, ep| c.answer_nit(ep, now, m, 200));
                if from_target {
                    // The target hung up before the transfer completed.
                    self.local_fail(now, cref, 487);
                }
            }
            _ if from_target => self.with_call(cref, |c, ep| c.answer_nit(ep, now, m, 491)),
            _ => self.with_call(cref, |c, ep| c.answer_nit(ep, now, m, 481)),
        }
        true
    }

    /// The transfer failed with `status`: the target's leg is let go, the
    /// transferor hears it, the call stays as it was.
    fn local_fail(&mut self, now: Instant, cref: u64, status: u16) {
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        let Some(l) = call.local.as_mut().filter(|l| l.pending()) else {
            return;
        };
        l.stage = Stage::Done;
        let (attended, at) = (l.attended, l.at);
        let (t_call_id, replaced) = (l.t_call_id.clone(), l.replaced);
        // Requests of the target's leg go back to the call they belong to.
        match replaced {
            Some(cref2) if self.calls.contains_key(&cref2) => {
                self.ep
                    .by_call_id
                    .insert(t_call_id.as_slice().into(), cref2);
            }
            _ => {
                if let Some(call) = self.calls.get_mut(&cref) {
                    call.old_ids.push(t_call_id.into());
                }
            }
        }
        self.with_call(cref, |c, ep| c.local_notify(ep, now, status, true));
        self.report_transfer(
            now,
            cref,
            TransferEvent {
                attended,
                local: true,
                result: TransferResult::Failed,
                elapsed: now - at,
            },
        );
    }

    /// Moves the local transfer's output out and acts on its events.
    pub(super) fn drain_local(&mut self, now: Instant, cref: u64) {
        let Some(l) = self.calls.get_mut(&cref).and_then(|c| c.local.as_mut()) else {
            return;
        };
        let mut t_events = Vec::new();
        while let Some(b) = l.t_cli.poll_transmit() {
            self.ep.out.push_back((None, b));
        }
        while let Some(e) = l.t_cli.poll_event() {
            t_events.push(e);
        }
        let mut r_events = Vec::new();
        if let Some(r) = l.r.as_mut() {
            while let Some(b) = r.2.poll_transmit() {
                self.ep.out.push_back((None, b));
            }
            while let Some(e) = r.2.poll_event() {
                r_events.push(e);
            }
        }
        for e in t_events {
            self.on_target_event(now, cref, e);
        }
        for e in r_events {
            self.on_transferee_event(now, cref, e);
        }
    }

    fn on_target_event(&mut self, now: Instant, cref: u64, e: Event) {
        let Some((status, msg)) = e.into_response() else {
            return;
        };
        let Some(call) = self.calls.get(&cref) else {
            return;
        };
        let key = call.key;
        let via = self.ep.via(key);
        let timers = self.ep.cfg.timers;
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        let Some(l) = call.local.as_mut() else { return };
        match status {
            100..=199 => {}
            200..=299 => {
                if let Some(a) = &l.t_ack {
                    // A retransmitted 2xx: our ACK again.
                    self.ep.out.push_back((None, a.clone()));
                    return;
                }
                if l.stage != Stage::Target {
                    return;
                }
                let Ok(resp) = scan(&msg) else { return };
                match l.t_dialog.as_mut() {
                    Some(d) => d.handle_response(&resp),
                    None => {
                        l.t_dialog = scan(&l.t_out)
                            .ok()
                            .and_then(|o| Dialog::uac(&o, &resp).ok());
                    }
                }
                let offer = resp
                    .content_type()
                    .filter(|_| !resp.body().is_empty())
                    .map(|ct| (ct.to_vec(), resp.body().to_vec()));
                let Some((ct, sdp)) = offer else {
                    // An answer to an offerless INVITE must offer (RFC 3264
                    // §5); without one there is nothing to give the
                    // transferee: ACK, hang up, and report 488.
                    let seq = scan(&l.t_out).map(|o| o.cseq().seq).unwrap_or(1);
                    if let Some(d) = l.t_dialog.as_mut() {
                        let ack = d.request("ACK", Some(seq), &via, None, &[], None);
                        self.ep.out.push_back((None, ack.clone()));
                        l.t_ack = Some(ack);
                        let mut d = d.clone();
                        self.with_call(cref, |c, ep| c.bye_in(ep, now, &mut d));
                    }
                    self.local_fail(now, cref, 488);
                    return;
                };
                l.stage = Stage::Transferee;
                let Some(y) = call.legs[l.transferor.other()].dialog.as_mut() else {
                    return;
                };
                let contact = self.ep.cfg.contact(key, y.call_id());
                // The transferee learns who it now talks to: the target
                // (a trusted peer only, RFC 3325).
                let pai = l
                    .t_dialog
                    .as_ref()
                    .map(|d| d.remote_uri().to_vec())
                    .filter(|_| self.ep.cfg.trusted.contains(uri_ip(y.remote_target())));
                let headers: Vec<(&str, &[u8])> = pai
                    .as_deref()
                    .map(|v| ("P-Asserted-Identity", v))
                    .into_iter()
                    .collect();
                let re = y.request(
                    "INVITE",
                    None,
                    &via,
                    Some(&contact),
                    &headers,
                    Some((&ct, &sdp)),
                );
                if let Ok(k) = scan(&re).map(|o| Key::server(&o)) {
                    l.r = Some((re.clone(), k, ClientInvite::new(now, timers, re)));
                }
                self.drain_local(now, cref);
            }
            _ => {
                if l.stage != Stage::Target {
                    return;
                }
                let status = if l.no_answer && status == 487 {
                    408
                } else {
                    status
                };
                self.local_fail(now, cref, status);
            }
        }
    }

    fn on_transferee_event(&mut self, now: Instant, cref: u64, e: Event) {
        let Some((status, msg)) = e.into_response() else {
            return;
        };
        let Some(call) = self.calls.get(&cref) else {
            return;
        };
        let key = call.key;
        let via = self.ep.via(key);
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        let Call { local, legs, .. } = &mut **call;
        let Some(l) = local.as_mut() else { return };
        let transferee = legs[l.transferor.other()].dialog.as_mut();
        match status {
            100..=199 => {}
            200..=299 => {
                let Ok(resp) = scan(&msg) else { return };
                if let Some(y) = transferee {
                    y.handle_response(&resp);
                    if l.r_ack.is_none() {
                        l.r_ack = l.r.as_ref().and_then(|r| Self::ack_of(y, &r.0));
                    }
                }
                if let Some(a) = &l.r_ack {
                    self.ep.out.push_back((None, a.clone()));
                }
                if l.stage != Stage::Transferee {
                    return;
                }
                // The transferee's answer goes to the target in our ACK.
                let seq = scan(&l.t_out).map(|o| o.cseq().seq).unwrap_or(1);
                let answer = resp
                    .content_type()
                    .map(|ct| (ct.to_vec(), resp.body().to_vec()));
                if let Some(d) = l.t_dialog.as_mut() {
                    let body = answer.as_ref().map(|(c, b)| (c.as_slice(), b.as_slice()));
                    let ack = d.request("ACK", Some(seq), &via, None, &[], body);
                    self.ep.out.push_back((None, ack.clone()));
                    l.t_ack = Some(ack);
                }
                self.local_complete(now, cref);
            }
            _ => {
                if l.stage != Stage::Transferee {
                    return;
                }
                // The transferee refused the target's media: the target
                // has answered, so it is ACKed (without an answer) and
                // hung up.
                let seq = scan(&l.t_out).map(|o| o.cseq().seq).unwrap_or(1);
                if let Some(d) = l.t_dialog.as_mut() {
                    let ack = d.request("ACK", Some(seq), &via, None, &[], None);
                    self.ep.out.push_back((None, ack.clone()));
                    l.t_ack = Some(ack);
                    let mut d = d.clone();
                    self.with_call(cref, |c, ep| c.bye_in(ep, now, &mut d));
                }
                self.local_fail(now, cref, status);
            }
        }
    }

    /// The transfer succeeded: the transferor hears 200 and is hung up;
    /// the target takes its place in the call.
    fn local_complete(&mut self, now: Instant, cref: u64) {
        self.with_call(cref, |c, ep| c.local_notify(ep, now, 200, true));
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        let Some(l) = call.local.as_mut() else { return };
        l.stage = Stage::Done;
        let (attended, at, transferor, replaced) = (l.attended, l.at, l.transferor, l.replaced);
        let replaced_id = l.replaced_id.clone();
        let (t_dialog, t_call_id) = (l.t_dialog.take(), l.t_call_id.clone());
        if transferor == Side::A && call.own_id.is_empty() {
            // The call keeps its id; leg A's Call-ID changes.
            call.own_id = (*call.legs.a.call_id).into();
        }
        let leg = &mut call.legs[transferor];
        let old = core::mem::replace(&mut leg.dialog, t_dialog);
        let old_id = core::mem::replace(&mut leg.call_id, t_call_id.into());
        call.old_ids.push(old_id);
        if let Some(mut old) = old {
            self.with_call(cref, |c, ep| c.bye_in(ep, now, &mut old));
        }
        // Attended: the replaced call ends; its leg to the target now
        // belongs to this call, so only the transferor's leg gets BYE.
        if replaced_id.is_some() {
            let target_cid = self
                .calls
                .get(&cref)
                .and_then(|c| c.legs[transferor].dialog.as_ref())
                .map(|d| d.call_id().to_vec())
                .unwrap_or_default();
            let held = replaced.filter(|r| {
                self.calls
                    .get(r)
                    .is_some_and(|c2| Some(c2.id()) == replaced_id.as_deref())
            });
            match (held, replaced_id) {
                (Some(cref2), _) => self.end_replaced(now, cref2, &target_cid),
                // Its shard moved meanwhile (or this call's did, and the
                // transfer went on here): its owner ends it.
                (None, Some(id)) if self.ep.replicate => {
                    self.ep.replication.push_back(Replication::Replaced {
                        id,
                        spare: target_cid,
                    });
                }
                _ => {}
            }
        }
        self.report_transfer(
            now,
            cref,
            TransferEvent {
                attended,
                local: true,
                result: TransferResult::Succeeded,
                elapsed: now - at,
            },
        );
    }
}

impl Call {
    /// Answers a non-INVITE request through a server transaction of
    /// the call (so retransmissions get the same answer).
    fn answer_nit<R: RngCore>(
        &mut self,
        ep: &mut Endpoint<R>,
        now: Instant,
        m: &Message<'_>,
        status: u16,
    ) {
        let call = &mut *self;
        let mut r = Vec::new();
        response(&m.reply_parts(), status, None, None, &[], &mut r);
        let mut t = ServerNonInvite::new(now, ep.cfg.timers);
        t.send_response(now, status, r);
        call.nits
            .push(Nit::Server(Key::server(m), t, via_target(m)));
    }

    /// Sends a BYE in dialog `d` through a client transaction of the call.
    pub(super) fn bye_in<R: RngCore>(
        &mut self,
        ep: &mut Endpoint<R>,
        now: Instant,
        d: &mut Dialog,
    ) {
        let call = &*self;
        let key = call.key;
        let via = ep.via(key);
        let timers = ep.cfg.timers;
        push_bye(&mut self.nits, d, now, timers, &via, &[]);
    }

    /// NOTIFY to the transferor of the call's transfer: `status` as a
    /// sipfrag, the subscription `terminated` or active.
    fn local_notify<R: RngCore>(
        &mut self,
        ep: &mut Endpoint<R>,
        now: Instant,
        status: u16,
        terminated: bool,
    ) {
        let Some(l) = self.local.as_ref() else {
            return;
        };
        let (transferor, seq) = (l.transferor, l.refer_seq);
        self.local_notify_raw(ep, now, transferor, seq, status, terminated);
    }

    fn local_notify_raw<R: RngCore>(
        &mut self,
        ep: &mut Endpoint<R>,
        now: Instant,
        transferor: Side,
        refer_seq: u32,
        status: u16,
        terminated: bool,
    ) {
        let call = &*self;
        let key = call.key;
        let via = ep.via(key);
        let timers = ep.cfg.timers;
        let call = &mut *self;
        let Some(d) = call.legs[transferor].dialog.as_mut() else {
            return;
        };
        let contact = ep.cfg.contact(key, d.call_id());
        let event = format!("refer;id={refer_seq}");
        let state: &[u8] = if terminated {
            b"terminated;reason=noresource"
        } else {
            b"active;expires=60"
        };
        let body = sipfrag(status);
        let n = d.request(
            "NOTIFY",
            None,
            &via,
            Some(&contact),
            &[("Event", event.as_bytes()), ("Subscription-State", state)],
            Some((b"message/sipfrag;version=2.0", &body)),
        );
        if let Ok(k) = scan(&n).map(|x| Key::server(&x)) {
            call.nits
                .push(Nit::Client(k, ClientNonInvite::new(now, timers, n)));
        }
    }

    /// A response on the call to one of the local transfer's INVITEs;
    /// false when it is not theirs.
    pub(super) fn local_response(&mut self, now: Instant, m: &Message<'_>) -> bool {
        let Some(l) = self.local.as_mut() else {
            return false;
        };
        let key = Key::client(m);
        if key == l.t_key {
            l.t_cli.handle_response(now, m);
        } else if let Some(r) = l.r.as_mut().filter(|r| r.1 == key) {
            r.2.handle_response(now, m);
        } else {
            return false;
        }
        true
    }

    /// A local transfer that could not even start: NOTIFY the failure.
    fn local_start_failed<R: RngCore>(
        &mut self,
        ep: &mut Endpoint<R>,
        now: Instant,
        transferor: Side,
        refer_seq: u32,
        attended: bool,
        status: u16,
    ) {
        self.local_notify_raw(ep, now, transferor, refer_seq, status, true);
        self.report_transfer(
            ep,
            now,
            TransferEvent {
                attended,
                local: true,
                result: TransferResult::Failed,
                elapsed: Duration::ZERO,
            },
        );
    }

    /// Runs the local transfer's timers, the ring timeout included.
    pub(super) fn local_timers<R: RngCore>(&mut self, ep: &mut Endpoint<R>, now: Instant) {
        let call = &mut *self;
        let Some(l) = call.local.as_mut() else { return };
        l.t_cli.handle_timeout(now);
        if let Some(r) = l.r.as_mut() {
            r.2.handle_timeout(now);
        }
        if l.stage == Stage::Target && l.ring_deadline.is_some_and(|t| t <= now) {
            l.ring_deadline = None;
            l.no_answer = true;
            ep.stats.unanswered += 1;
            if matches!(
                l.t_cli.state(),
                InviteState::Calling | InviteState::Proceeding
            ) {
                let cancel = scan(&l.t_out).map(|i| cancel_for(&i)).unwrap_or_default();
                if let Ok(ck) = scan(&cancel).map(|c| Key::server(&c)) {
                    call.nits.push(Nit::Client(
                        ck,
                        ClientNonInvite::new(now, ep.cfg.timers, cancel),
                    ));
                }
            }
        }
    }
}
