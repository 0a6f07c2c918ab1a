//! Scheduled actions (answers, re-INVITEs, REFERs, BYEs) and expiry.

use super::*;

impl<R: RngCore> Engine<R> {
    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((t, leg))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let before = self.out.len();
            let acted = self.run_leg(now, leg);
            self.drain_leg(now, leg);
            if !acted {
                // Only resends: timers A, E and our 2xx's (a scheduled
                // action's new request is not one).
                self.counts.retransmissions += (self.out.len() - before) as u64;
            }
        }
        self.retire_ended(now);
    }

    /// Timers of one leg; true when a scheduled action ran (not a resend).
    pub(super) fn run_leg(&mut self, now: Instant, leg: usize) -> bool {
        let Some(l) = self.legs.get_mut(&leg) else {
            return false;
        };
        if let Some(c) = l.cli.as_mut() {
            c.2.handle_timeout(now);
        }
        if let Some(s) = l.srv.as_mut() {
            s.1.handle_timeout(now);
        }
        for n in &mut l.nits {
            match n {
                Nit::Client(_, t, _) => t.handle_timeout(now),
                Nit::Server(_, t) => t.handle_timeout(now),
            }
        }
        if let Some(o) = l.ok.as_mut()
            && o.next <= now
        {
            if now >= o.give_up {
                l.ok = None;
            } else {
                self.out.push(o.bytes.clone());
                o.interval = (o.interval * 2).min(self.cfg.timers.t2);
                o.next = now + o.interval;
            }
        }
        let Some((at, wake)) = l.wake.filter(|w| w.0 <= now) else {
            return false;
        };
        let _ = at;
        l.wake = None;
        let rec = l.rec;
        if self.recs[rec].outcome.is_some() && wake != Wake::Bye {
            // A failed call is only hung up.
            return true;
        }
        // The transferee's hold is talk time, not a deadline for the
        // transfer: it hangs up once the transfer is over, as a person
        // being transferred waits for it (a transfer that never ends is
        // failed by `expire`, and then hung up).
        let r = &self.recs[rec];
        if wake == Wake::Bye
            && l.kind == Kind::A
            && matches!(r.scenario, Scenario::Blind | Scenario::Attended)
            && !r.transfer_ok
            && r.outcome.is_none()
        {
            l.wake = Some((now + Duration::from_millis(100), Wake::Bye));
            return true;
        }
        match wake {
            Wake::Bye => {
                if !self.legs.get(&leg).is_some_and(|x| x.over) {
                    self.send_nit(now, leg, "BYE", &[], None);
                }
            }
            Wake::Hold | Wake::Resume => {
                let dir = if wake == Wake::Hold {
                    "sendonly"
                } else {
                    "sendrecv"
                };
                self.reinvite(now, leg, dir, wake);
            }
            Wake::Refer => self.send_refer(now, leg, rec),
            Wake::CallC => {
                let b2 = self.invite(now, rec, Kind::B2, &format!("b{rec}"), "c", &[]);
                self.recs[rec].b2_leg = Some(b2);
            }
        }
        true
    }

    pub(super) fn reinvite(&mut self, now: Instant, leg: usize, dir: &str, purpose: Wake) {
        let via = self.via();
        let contact = self.contact("a");
        let timers = self.cfg.timers;
        let body = sdp("a", self.cfg.local, 2, dir);
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let Some(d) = l.dialog.as_mut() else { return };
        let re = d.request(
            "INVITE",
            None,
            &via,
            Some(&contact),
            &[],
            Some((b"application/sdp", &body)),
        );
        if let Ok(k) = scan(&re).map(|m| Key::server(&m)) {
            l.ack = None;
            l.cli = Some((re.clone(), k, ClientInvite::new(now, timers, re), purpose));
        }
    }

    /// Fails calls that can no longer end well: no final answer within
    /// 64*T1 of their INVITE (a proxy's timer C would have given up), or
    /// still running long after their hold time. Walks every call still
    /// running: call it once a second.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(t, h)) = self.retired_q.front()
            && t <= now
        {
            self.retired_q.pop_front();
            self.retired.remove(&h);
        }
        let t1x64 = self.cfg.timers.t1x64();
        let limit = self.cfg.hold * 3 + t1x64 * 2;
        while self
            .recs
            .get(self.first_open)
            .is_some_and(|r| r.outcome.is_some())
        {
            self.first_open += 1;
        }
        let stuck: Vec<(usize, &'static str)> = self
            .recs
            .iter()
            .enumerate()
            .skip(self.first_open)
            .filter(|(_, r)| r.outcome.is_none())
            .filter_map(|(i, r)| {
                let age = now - r.started;
                let transfer = matches!(r.scenario, Scenario::Blind | Scenario::Attended);
                if !r.established && age > t1x64 {
                    Some((i, "no final answer within 64*T1"))
                } else if age > limit && transfer && !r.transfer_ok {
                    Some((i, "transfer not completed in time"))
                } else if age > limit {
                    Some((i, "call did not end in time"))
                } else {
                    None
                }
            })
            .collect();
        for (i, why) in stuck {
            // Name the party that is not done, and how its BYE went.
            let leg = self.recs[i]
                .legs
                .iter()
                .filter_map(|l| self.legs.get(l))
                .find(|l| l.dialog.is_some() && !l.ended_ok);
            let why = match leg {
                _ if why.starts_with("transfer") => why.to_string(),
                Some(l) if self.recs[i].established => match l.bye_refused {
                    Some(st) => format!("{}: {} leg's BYE answered {st}", why, role(l.kind)),
                    None => format!("{}: {} leg never got its BYE", why, role(l.kind)),
                },
                _ => why.to_string(),
            };
            self.finish(i, Err(why));
        }
        // Callee legs of other threads' calls: the same deadline.
        let late: Vec<usize> = self
            .foreign_open
            .iter()
            .filter(|&(_, t)| now - *t > limit)
            .map(|(l, _)| *l)
            .collect();
        for leg in late {
            self.foreign_open.remove(&leg);
            self.foreign_failed(leg, "call did not end in time");
        }
        self.retire_ended(now);
    }

    /// Forgets legs of ended calls whose transactions are over (bounded
    /// memory in long runs). Walks every leg: call it once a second.
    pub fn sweep(&mut self) {
        let dead: Vec<usize> = self
            .legs
            .iter()
            .filter(|(_, l)| {
                self.recs[l.rec].outcome.is_some()
                    && l.next_timeout().is_none()
                    && (l.over || l.dialog.is_none())
            })
            .map(|(k, _)| *k)
            .collect();
        for k in dead {
            if let Some(l) = self.legs.remove(&k) {
                self.forget_keys(&l);
            }
        }
    }
}
