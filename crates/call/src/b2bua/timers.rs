//! The B2BUA's clock: each call's earliest deadline sits in one heap;
//! when it comes, the call's due timers run (transactions, the held 2xx,
//! 2xx resends, ring timeout, session timer, maximum age, transfers).

use super::*;

impl<R: RngCore> B2bua<R> {
    /// Runs timers due at `now` (only the calls whose deadline has come).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.ep.registrar.handle_timeout(now);
        while let Some(&Reverse((t, cref))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            match self.calls.get_mut(&cref) {
                Some(c) if c.scheduled == Some(t) => c.scheduled = None,
                // Gone, or a stale entry (the call's deadline moved since).
                _ => continue,
            }
            let (before, torn, unanswered) = (
                self.ep.out.len(),
                self.ep.stats.torn_down,
                self.ep.stats.unanswered,
            );
            self.run_timers(now, cref);
            if self.ep.stats.torn_down == torn && self.ep.stats.unanswered == unanswered {
                // Everything a timer sends, short of a teardown's BYEs and a
                // ring timeout's CANCEL, is a retransmission (timers A, E, G
                // and the 2xx resend).
                self.ep.stats.retransmissions += (self.ep.out.len() - before) as u64;
            }
            self.schedule(cref);
        }
        // Each new deadline of a call is a new entry (stale ones are
        // skipped when they come up), so the heap grows with calls in set-up
        // and keeps its size after: give back what a burst left.
        if self.timers.capacity() > 4096 && self.timers.len() < self.timers.capacity() / 4 {
            self.timers.shrink_to(self.timers.len() * 2);
        }
    }

    fn run_timers(&mut self, now: Instant, cref: u64) {
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        call.a_srv.handle_timeout(now);
        call.b_cli.handle_timeout(now);
        for f in &mut call.forks {
            f.cli.handle_timeout(now);
        }
        for n in &mut call.nits {
            match n {
                Nit::Client(_, t) => t.handle_timeout(now),
                Nit::Server(_, t, _) => t.handle_timeout(now),
            }
        }
        for r in &mut call.relays {
            match &mut r.cli {
                Cli::Invite(c) => c.handle_timeout(now),
                Cli::Other(c) => c.handle_timeout(now),
            }
            match &mut r.srv {
                Srv::Invite(s) => s.handle_timeout(now),
                Srv::Other(s) => s.handle_timeout(now),
            }
        }
        self.with_call(cref, |c, ep| c.local_timers(ep, now));
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        let due: Vec<CallTimer> = call
            .timers()
            .filter(|&(_, at)| at <= now)
            .map(|(t, _)| t)
            .collect();
        for timer in due {
            let Some(call) = self.calls.get_mut(&cref) else {
                return;
            };
            match timer {
                CallTimer::HeldEnd => {
                    self.release_end(now, cref);
                }
                CallTimer::Linger => {
                    call.linger = None;
                }
                CallTimer::HeldOk => {
                    if let Some((status, r, _)) = call.held_ok.take().map(|b| *b) {
                        // No commit in time (no quorum?): connect the call anyway.
                        self.ep.stats.unreplicated += 1;
                        Self::send_ok(
                            call,
                            now,
                            status,
                            r,
                            self.ep.cfg.timers,
                            self.ep.registrar.wall_ms(now),
                        );
                    }
                }
                //= https://www.rfc-editor.org/rfc/rfc4028#section-10
                //# If the session refresh request is not received before the
                //# interval passes, the session is considered terminated.
                CallTimer::MaxAge | CallTimer::SessionExpires => {
                    if !call.over {
                        self.tear_down(now, cref);
                    }
                    return;
                }
                CallTimer::Subscription => {
                    if let Some(t) = call.transfer.as_mut() {
                        t.done = true;
                    }
                }
                CallTimer::Ring => {
                    if let Some(s) = call.setup.as_deref_mut() {
                        s.ring_deadline = None;
                        s.no_answer = true;
                    }
                    self.ep.stats.unanswered += 1;
                    Self::cancel_b(call, now, self.ep.cfg.timers);
                }
                //= https://www.rfc-editor.org/rfc/rfc3261#section-13.3.1.4
                //# If the server retransmits the 2xx response for 64*T1 seconds
                //# without receiving an ACK, the dialog is confirmed, but the
                //# session SHOULD be terminated.  This is accomplished with a
                //# BYE, as described in Section 15.
                CallTimer::ResendOk => {
                    let a_target = call.a_target;
                    let Some((ok, next, interval, give_up)) = call.a_ok.as_deref_mut() else {
                        continue;
                    };
                    if now < *give_up {
                        self.ep.out.push_back((a_target, ok.clone()));
                        *interval = (*interval * 2).min(self.ep.cfg.timers.t2);
                        *next = now + *interval;
                        continue;
                    }
                    call.a_ok = None;
                    if call.a_bye_after_ack {
                        self.bye_a(now, cref);
                    } else if !call.over {
                        // B answered a caller who is not there (a spoofed
                        // source, or one gone): B's phone is hung up too.
                        self.ep.stats.unacknowledged += 1;
                        self.tear_down(now, cref);
                    }
                    return;
                }
            }
        }
        self.drain(now, cref);
    }
}
