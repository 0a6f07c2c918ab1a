//! What a transaction reports: responses, timeouts, transport errors.

use super::*;

impl<R: RngCore> Engine<R> {
    pub(super) fn on_invite_event(&mut self, now: Instant, leg: usize, e: Event) {
        let Some((status, msg)) = e.into_response() else {
            return;
        };
        if status < 200 {
            return;
        }
        let via = self.via();
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let (rec, kind) = (l.rec, l.kind);
        let Some((req, _, _, purpose)) = l.cli.as_ref() else {
            return;
        };
        let purpose = *purpose;
        if status >= 300 {
            let line = scan(&msg)
                .ok()
                .and_then(|r| {
                    let b = r.buf();
                    let end = b.iter().position(|&c| c == b'\r').unwrap_or(b.len());
                    Some(String::from_utf8_lossy(b.get(8..end)?).into_owned())
                })
                .unwrap_or_else(|| "timeout".into());
            let what = if status == 408 && msg.is_empty() {
                "timeout (INVITE)".to_string()
            } else {
                line
            };
            match kind {
                Kind::A2 => {
                    if let Some(a) = l.replaces {
                        self.notify(now, a, &what, true);
                        self.drain_leg(now, a);
                    }
                    self.finish(rec, Err(format!("transfer target: {what}")));
                }
                _ => self.finish(rec, Err(what)),
            }
            return;
        }
        // 2xx: ACK it (again, for a retransmission).
        let Ok(resp) = scan(&msg) else { return };
        if let Some(a) = &l.ack {
            self.out.push(a.clone());
            return;
        }
        let seq = scan(req).map(|r| r.cseq().seq).unwrap_or(1);
        match l.dialog.as_mut() {
            Some(d) => d.handle_response(&resp),
            None => l.dialog = scan(req).ok().and_then(|r| Dialog::uac(&r, &resp).ok()),
        }
        let Some(d) = l.dialog.as_mut() else { return };
        let ack = d.request("ACK", Some(seq), &via, None, &[], None);
        self.out.push(ack.clone());
        l.ack = Some(ack);
        let hold = self.cfg.hold;
        let r = &mut self.recs[rec];
        match (kind, purpose) {
            (Kind::A, Wake::Bye) => {
                if !r.established {
                    r.established = true;
                    self.counts.established += 1;
                    if r.outcome.is_none() {
                        self.setting_up -= 1;
                    }
                    let us = (now - r.started).as_micros().min(u128::from(u32::MAX)) as u32;
                    self.setup.push(us);
                }
                let next = if r.scenario == Scenario::Hold {
                    (hold / 3, Wake::Hold)
                } else {
                    (hold, Wake::Bye)
                };
                l.wake = Some((now + next.0, next.1));
            }
            (Kind::A, Wake::Hold) => {
                if !resp.body().windows(10).any(|w| w == b"a=recvonly") {
                    self.finish(rec, Err("hold answered without a=recvonly".into()));
                    return;
                }
                l.wake = Some((now + hold / 3, Wake::Resume));
            }
            (Kind::A, Wake::Resume) => l.wake = Some((now + hold / 3, Wake::Bye)),
            (Kind::A2, _) => {
                l.wake = Some((now + hold, Wake::Bye));
                if let Some(a) = l.replaces {
                    self.notify(now, a, "200 OK", true);
                    self.drain_leg(now, a);
                }
            }
            (Kind::B2, _) => {
                // B's call to C is up: B refers A to C, replacing it.
                if let Some(b) = r.b_leg {
                    if let Some(x) = self.legs.get_mut(&b) {
                        x.wake = Some((now, Wake::Refer));
                    }
                    self.schedule(b);
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_nit_event(&mut self, leg: usize, what: &'static str, e: Event) {
        let Some(l) = self.legs.get(&leg) else { return };
        let (rec, kind) = (l.rec, l.kind);
        let status = match e {
            Event::Response { status, .. } => status,
            Event::Timeout => {
                self.finish(rec, Err(format!("timeout ({what})")));
                return;
            }
            _ => return,
        };
        if status < 200 {
            return;
        }
        match what {
            "BYE" if status >= 300 => {
                let last = self.recs[rec].last_leg == leg && matches!(kind, Kind::A | Kind::A2);
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.bye_refused = Some(status);
                }
                // The last leg's refusal fails the call at once; another
                // leg's may yet be ended by the peer's own crossing BYE.
                if last && !self.legs.get(&leg).is_some_and(|l| l.ended_ok) {
                    self.finish(rec, Err(format!("BYE answered {status}")));
                }
            }
            "BYE" => {
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.ended_ok = true;
                }
                self.foreign_open.remove(&leg);
                self.check_complete(rec);
            }
            "REFER" if status >= 300 => self.finish(rec, Err(format!("REFER answered {status}"))),
            // A transfer's verdict may wait for its NOTIFY (`check_complete`).
            "NOTIFY" => self.check_complete(rec),
            _ => {}
        }
    }
}
