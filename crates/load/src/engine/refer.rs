//! Transfer: REFER sent and obeyed, NOTIFY progress, Replaces.

use super::*;

impl<R: RngCore> Engine<R> {
    pub(super) fn notify(&mut self, now: Instant, leg: usize, status: &str, terminated: bool) {
        let state: &[u8] = if terminated {
            b"terminated;reason=noresource"
        } else {
            b"active;expires=60"
        };
        let frag = format!("SIP/2.0 {status}\r\n");
        self.send_nit(
            now,
            leg,
            "NOTIFY",
            &[("Event", b"refer"), ("Subscription-State", state)],
            Some((b"message/sipfrag;version=2.0", frag.as_bytes())),
        );
    }

    /// A as the transferee: 202, NOTIFY 100, a new call to the target.
    pub(super) fn obey_refer(&mut self, now: Instant, leg: usize, m: &Message<'_>) {
        self.server_nit(now, leg, m, 202);
        let Ok(rt) = transfer::refer_to(m) else {
            return;
        };
        let rec = self.legs.get(&leg).map(|l| l.rec).unwrap_or(0);
        if let Some(l) = self.legs.get_mut(&leg) {
            l.wake = None; // B will hang this leg up
        }
        self.notify(now, leg, "100 Trying", false);
        let user = String::from_utf8_lossy(rt.uri().user().unwrap_or(b"c")).into_owned();
        let referred_by = m
            .header(HeaderName::ReferredBy)
            .map(|h| h.value.of(m.buf()).to_vec());
        let replaces = rt.replaces.as_ref().map(Replaces::to_value);
        let mut headers: Vec<(&str, &[u8])> = Vec::new();
        if let Some(rb) = &referred_by {
            headers.push(("Referred-By", rb));
        }
        if let Some(r) = &replaces {
            headers.push(("Replaces", r));
        }
        let a2 = self.invite(now, rec, Kind::A2, &format!("a{rec}"), &user, &headers);
        self.recs[rec].last_leg = a2;
        // Remember which leg to NOTIFY when the new call is answered.
        if let Some(l) = self.legs.get_mut(&a2) {
            l.replaces = Some(leg);
        }
    }

    /// B hears how the transfer goes.
    pub(super) fn transfer_progress(
        &mut self,
        now: Instant,
        leg: usize,
        rec: usize,
        m: &Message<'_>,
    ) {
        let terminated = m
            .header(HeaderName::SubscriptionState)
            .is_some_and(|h| h.value.of(m.buf()).starts_with(b"terminated"));
        let status = m
            .body()
            .strip_prefix(b"SIP/2.0 ")
            .and_then(|b| core::str::from_utf8(b.get(..3)?).ok()?.parse::<u16>().ok());
        let Some(st) = status.filter(|s| *s >= 200 && terminated) else {
            return;
        };
        if st < 300 {
            self.recs[rec].transfer_ok = true;
        } else {
            let line = String::from_utf8_lossy(m.body()).trim().to_string();
            self.finish(rec, Err(format!("transfer failed: {line}")));
        }
        // The transferor hangs up its call with the transferee unless the
        // B2BUA already did. Its call with C (attended) is ended by C,
        // which replaced it (RFC 3891 §3: the UA that accepts the Replaces
        // sends the BYE), or by the B2BUA in local mode.
        if self
            .legs
            .get(&leg)
            .is_some_and(|x| !x.over && x.dialog.is_some())
        {
            self.send_nit(now, leg, "BYE", &[], None);
            self.drain_leg(now, leg);
        }
    }

    /// Our 2xx on `leg` was ACKed.
    pub(super) fn after_ack(&mut self, now: Instant, leg: usize) {
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        if core::mem::replace(&mut l.acked, true) {
            return;
        }
        let (rec, kind, replaced) = (l.rec, l.kind, l.replaces.take());
        match kind {
            Kind::Callee(Callee::XferB) if self.recs[rec].b2_leg.is_none() => {
                l.wake = Some((now + Duration::from_millis(100), Wake::Refer));
            }
            Kind::Callee(Callee::AttB) if self.recs[rec].b2_leg.is_none() => {
                l.wake = Some((now + Duration::from_millis(100), Wake::CallC));
            }
            Kind::Callee(Callee::C) => {
                if let Some(r) = replaced
                    && self.legs.get(&r).is_some_and(|x| !x.over)
                {
                    self.send_nit(now, r, "BYE", &[], None);
                    self.drain_leg(now, r);
                }
            }
            _ => {}
        }
    }

    /// B refers A: to C (blind), or to C replacing B's own call (attended).
    pub(super) fn send_refer(&mut self, now: Instant, leg: usize, rec: usize) {
        let target = self.cfg.target;
        let mut refer_to = format!("<sip:c@{target}");
        if let Some(d) = self.recs[rec]
            .b2_leg
            .and_then(|b2| self.legs.get(&b2))
            .and_then(|l| l.dialog.as_ref())
        {
            let r = Replaces {
                call_id: d.call_id().to_vec(),
                to_tag: d.remote_tag().to_vec(),
                from_tag: d.local_tag().to_vec(),
                early_only: false,
            };
            let mut esc = Vec::new();
            transfer::escape(&r.to_value(), &mut esc);
            refer_to += "?Replaces=";
            refer_to += &String::from_utf8_lossy(&esc);
        }
        refer_to.push('>');
        let by = format!("<sip:b{rec}@{}>", self.cfg.local);
        if let Some(l) = self.legs.get_mut(&leg) {
            l.referred = true;
        }
        self.send_nit(
            now,
            leg,
            "REFER",
            &[
                ("Refer-To", refer_to.as_bytes()),
                ("Referred-By", by.as_bytes()),
            ],
            None,
        );
    }
}
