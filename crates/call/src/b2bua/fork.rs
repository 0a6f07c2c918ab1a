//! Parallel forking (RFC 3261 §16.7 as a B2BUA plays it): a call to an
//! address-of-record with several live bindings rings them all at once,
//! each on a B leg of its own (its own Call-ID, tag and CSeq). The call's
//! main B leg (`b_*`) is always one still ringing; the others are `forks`.
//! The first 2xx wins: its leg becomes the main one, the others get
//! CANCEL, and a 2xx that still arrives on another is ACKed and hung up
//! (BYE). A 6xx ends the search: every other leg is cancelled and A gets
//! the 6xx. When every leg failed, A gets the best answer (§16.7 step 6:
//! a 6xx, else the lowest class, the first of it); a 487 of our own CANCEL
//! says nothing about the callee and is not counted. Also here, the
//! other 2xx the B2BUA does not keep: one that makes no usable dialog.

use super::*;

/// A B leg ringing beside the main one.
#[derive(Debug)]
pub(super) struct Fork {
    pub(super) call_id: Arc<[u8]>,
    pub(super) invite: Vec<u8>,
    pub(super) cli: ClientInvite,
}

impl Fork {
    pub(super) fn ringing(&self) -> bool {
        matches!(
            self.cli.state(),
            InviteState::Calling | InviteState::Proceeding
        )
    }
}

/// Whether `new` is a better final answer for A than `old` (§16.7).
fn better(new: u16, old: Option<u16>) -> bool {
    match old {
        None => true,
        Some(o) if (600..700).contains(&o) => false,
        Some(_) if (600..700).contains(&new) => true,
        Some(o) => new / 100 < o / 100,
    }
}

impl Call {
    /// Acts on the forks' responses (see the module docs).
    pub(super) fn drain_forks<R: RngCore>(
        &mut self,
        ep: &mut Endpoint<R>,
        now: Instant,
        cref: u64,
    ) {
        let call = &mut *self;
        let mut events = Vec::new();
        for (i, f) in call.forks.iter_mut().enumerate() {
            while let Some(b) = f.cli.poll_transmit() {
                ep.out.push_back((None, b));
            }
            while let Some(e) = f.cli.poll_event() {
                events.push((i, e));
            }
        }
        for (i, e) in events {
            let Some((status, msg)) = e.clone().into_response() else {
                continue;
            };
            let call = &mut *self;
            match status {
                101..=199 => self.on_b_event(ep, now, cref, e),
                200..=299 if !call.answered && !call.cancelled => {
                    // This leg wins: it becomes the main one, every other
                    // leg still ringing is cancelled.
                    let f = &mut call.forks[i];
                    std::mem::swap(&mut call.legs.b.call_id, &mut f.call_id);
                    std::mem::swap(&mut call.legs.b.invite, &mut f.invite);
                    std::mem::swap(&mut call.b_cli, &mut f.cli);
                    B2bua::<R>::cancel_b(call, now, ep.cfg.timers);
                    self.on_b_event(ep, now, cref, e);
                }
                200..=299 => self.hang_up_late_fork(ep, now, &msg, i),
                487 => {}
                _ => {
                    let status = self.leg_failed(ep, now, Some(i), status);
                    let call = &mut *self;
                    // Answered: no search to end, no best answer to give.
                    let Some(s) = call.setup.as_deref_mut() else {
                        continue;
                    };
                    if better(status, s.best) {
                        s.best = Some(status);
                    }
                    if (600..700).contains(&status) {
                        // A 6xx ends the search.
                        s.forks_done = true;
                        B2bua::<R>::cancel_b(call, now, ep.cfg.timers);
                    }
                }
            }
        }
        // Requests the steps above queued (CANCEL, ACK, BYE).
        self.drain_outputs(ep);
    }

    /// A fork's response: true when `m` answers one of the call's forks.
    pub(super) fn fork_response(&mut self, now: Instant, m: &Message<'_>) -> bool {
        let call = &mut *self;
        if m.cseq().method != Method::Invite {
            return false;
        }
        match call.forks.iter_mut().find(|f| *f.call_id == *m.call_id()) {
            Some(f) => {
                f.cli.handle_response(now, m);
                true
            }
            None => false,
        }
    }

    /// A 2xx on a leg that lost (another answered first, or A cancelled):
    /// ACKed and hung up, so the phone does not ring on alone.
    fn hang_up_late_fork<R: RngCore>(
        &mut self,
        ep: &mut Endpoint<R>,
        now: Instant,
        msg: &[u8],
        i: usize,
    ) {
        let key = self.key;
        let (ack_via, bye_via) = (ep.via(key), ep.via(key));
        let timers = ep.cfg.timers;
        let call = &mut *self;
        let Some(f) = call.forks.get(i) else { return };
        let Ok(resp) = scan(msg) else { return };
        let Some(mut d) = register::callee_dialog(&f.invite, &resp) else {
            return;
        };
        let ack = d.request("ACK", Some(1), &ack_via, None, &[], None);
        ep.out.push_back((None, ack));
        push_bye(&mut call.nits, &mut d, now, timers, &bye_via, &[]);
    }

    /// The main leg failed with `status`: when another leg still rings it
    /// becomes the main one and true is returned (A waits); else the best
    /// answer of all legs for A.
    pub(super) fn next_fork<R: RngCore>(
        &mut self,
        ep: &mut Endpoint<R>,
        now: Instant,
        status: u16,
    ) -> Result<(), u16> {
        let call = &mut *self;
        if call.forks.is_empty() {
            return Err(status);
        }
        let Some(s) = call.setup.as_deref_mut() else {
            return Err(status);
        };
        if !(s.no_answer && status == 408) && status != 487 && better(status, s.best) {
            s.best = Some(status);
        }
        if call.cancelled {
            return Err(status);
        }
        if (600..700).contains(&status) {
            // A 6xx ends the search.
            s.forks_done = true;
            B2bua::<R>::cancel_b(call, now, ep.cfg.timers);
            return Err(status);
        }
        if !s.forks_done
            && let Some(f) = call.forks.iter_mut().find(|f| f.ringing())
        {
            std::mem::swap(&mut call.legs.b.call_id, &mut f.call_id);
            std::mem::swap(&mut call.legs.b.invite, &mut f.invite);
            std::mem::swap(&mut call.b_cli, &mut f.cli);
            return Ok(());
        }
        Err(s.best.unwrap_or(status))
    }

    /// Starts a fork of the call to each of `targets` (A's INVITE `m`).
    pub(super) fn start_forks<R: RngCore>(
        &mut self,
        ep: &mut Endpoint<R>,
        now: Instant,
        cref: u64,
        m: &Message<'_>,
        targets: &[Target],
    ) {
        let key = self.key;
        let asserted = self.setup.as_ref().and_then(|s| s.asserted.clone());
        for t in targets {
            ep.stats.forks += 1;
            let (call_id, invite) = ep.leg_b_invite(m, key, t, asserted.as_deref());
            let call_id: Arc<[u8]> = call_id.into();
            let cli = ClientInvite::new(now, ep.cfg.timers, invite.clone());
            ep.by_call_id.insert(call_id.clone(), cref);
            {
                let call = &mut *self;
                // Mapped to the call until it is forgotten.
                call.old_ids.push(call_id.clone());
                call.forks.push(Fork {
                    call_id,
                    invite,
                    cli,
                });
            }
        }
    }

    /// B answered with a 2xx that makes no dialog we can use (its Contact
    /// missing or not a SIP URI, a Record-Route that does not parse): it
    /// is ACKed and hung up at the address our INVITE reached (RFC 3261
    /// §13.2.2.4), and the leg fails as 502 (Bad Gateway: an invalid
    /// response from downstream, §21.5.3), so A hears an answer rather
    /// than a call with no way to reach B. Its retransmissions get the
    /// same ACK.
    pub(super) fn unusable_answer<R: RngCore>(
        &mut self,
        ep: &mut Endpoint<R>,
        now: Instant,
        cref: u64,
        resp: &Message<'_>,
        ack_via: &[u8],
    ) {
        let key = self.key;
        let bye_via = ep.via(key);
        let timers = ep.cfg.timers;
        let call = &mut *self;
        let inv = call.legs.b.invite.clone();
        let fallback = scan(&inv)
            .ok()
            .and_then(|bi| Dialog::uac_unusable(&bi, resp).ok());
        if let Some(mut d) = fallback {
            let ack = d.request("ACK", Some(1), ack_via, None, &[], None);
            ep.out.push_back((None, ack.clone()));
            call.b_ack = Some(ack.into());
            push_bye(&mut call.nits, &mut d, now, timers, &bye_via, &[]);
        }
        self.on_b_event(
            ep,
            now,
            cref,
            Event::Response {
                status: 502,
                message: Vec::new(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::better;

    #[test]
    fn rfc3261_16_7_a_6xx_beats_all_else_the_lowest_class_first_come() {
        assert!(better(486, None));
        assert!(better(603, Some(486)));
        assert!(!better(404, Some(603)));
        assert!(better(302, Some(486)));
        assert!(!better(480, Some(486)), "the first of a class stays");
        assert!(!better(503, Some(486)));
    }
}
