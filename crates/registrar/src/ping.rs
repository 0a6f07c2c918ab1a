//! OPTIONS pings to bindings (`Config::ping_interval_s`): the owner of
//! an AOR sends each of its bindings an OPTIONS on its flow that often,
//! which keeps a NAT's mapping open; a binding whose ping goes unanswered
//! (timer F) is written out.

use super::*;

/// A binding to ping: what the shell builds the OPTIONS from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingTarget {
    /// The AOR's key (our Via carries it, so the answer comes back here).
    pub key: u64,
    /// The AOR.
    pub aor: Vec<u8>,
    /// The binding.
    pub binding: Binding,
}

/// An OPTIONS ping in flight.
#[derive(Debug)]
pub(crate) struct Ping {
    pub(crate) cli: ClientNonInvite,
    key: u64,
    aor: Vec<u8>,
    contact: Box<[u8]>,
}

impl Registrar {
    /// The bindings whose ping is due at `now`, of the AORs this worker
    /// owns (`owned(key)`): the shell sends each an OPTIONS and hands it
    /// to [`Self::ping`]. Call it about once a second.
    pub fn due_pings(&mut self, now: Instant, owned: impl Fn(u64) -> bool) -> Vec<PingTarget> {
        let now_ms = self.wall_ms(now);
        self.last_ms = now_ms;
        let every = u64::from(self.cfg.ping_interval_s) * 1000;
        let mut out = Vec::new();
        if every == 0 {
            return out;
        }
        let mut again = Vec::new();
        while let Some(std::cmp::Reverse((t, _))) = self.ping_due.peek() {
            if *t > now_ms {
                break;
            }
            let Some(std::cmp::Reverse((_, key))) = self.ping_due.pop() else {
                break;
            };
            let l = self.locations.read();
            let mut any = false;
            for s in l.of_key(key) {
                any = true;
                if !owned(key) {
                    continue;
                }
                for b in s.bindings.iter().filter(|b| b.live(now_ms)) {
                    out.push(PingTarget {
                        key,
                        aor: s.aor.to_vec(),
                        binding: b.clone(),
                    });
                }
            }
            if any {
                again.push(key);
            } else {
                self.ping_keys.remove(&key);
            }
        }
        for key in again {
            self.ping_due
                .push(std::cmp::Reverse((now_ms.saturating_add(every), key)));
        }
        out
    }

    /// Sends `request`, the OPTIONS the shell built for `target`.
    pub fn ping(&mut self, now: Instant, target: PingTarget, request: Vec<u8>) {
        let Ok(branch) =
            handover_sip::scan(&request).map(|r| r.top_via().branch().unwrap_or_default().to_vec())
        else {
            return;
        };
        if self.pings.len() >= MAX_RELAYS {
            return;
        }
        self.stats.pings += 1;
        self.pings.insert(
            branch.clone(),
            Ping {
                cli: ClientNonInvite::new(now, self.cfg.timers, request),
                key: target.key,
                aor: target.aor,
                contact: target.binding.contact,
            },
        );
        self.drain_ping(now, &branch);
    }

    /// Any answer says the phone is there; none in timer F's 32 s, or a
    /// transport error, drops the binding.
    pub(crate) fn drain_ping(&mut self, now: Instant, branch: &[u8]) {
        let Some(p) = self.pings.get_mut(branch) else {
            return;
        };
        while let Some(b) = p.cli.poll_transmit() {
            self.out.push_back((None, b));
        }
        let mut over = false;
        let mut dead = false;
        let mut flow_gone = false;
        while let Some(e) = p.cli.poll_event() {
            match e {
                handover_txn::Event::Terminated => over = true,
                // The edge no longer holds the phone's connection.
                handover_txn::Event::Response { status: 430, .. } => flow_gone = true,
                handover_txn::Event::Timeout | handover_txn::Event::TransportError => dead = true,
                _ => {}
            }
        }
        if dead || flow_gone {
            let (key, aor, contact) = (p.key, p.aor.clone(), p.contact.clone());
            self.drop_binding(now, key, &aor, &contact, flow_gone);
        }
        if over || dead {
            self.pings.remove(branch);
        } else {
            self.arm(branch);
        }
    }

    /// A request to binding `contact` of `aor` (key `key`) was answered
    /// `430 Flow Failed` (RFC 5626 §5.3): the phone's connection is gone,
    /// so the binding is written out. Only the AOR's owner's write is
    /// committed; on another worker this is refused like any stale write,
    /// and the owner's own pings or the binding's expiry remove it.
    pub fn flow_failed(&mut self, now: Instant, key: u64, aor: &[u8], contact: &[u8]) {
        self.drop_binding(now, key, aor, contact, true);
    }

    /// Writes `aor` without the binding `contact` (its pings went
    /// unanswered, or its flow failed).
    pub(crate) fn drop_binding(
        &mut self,
        now: Instant,
        key: u64,
        aor: &[u8],
        contact: &[u8],
        flow: bool,
    ) {
        let cur = match self.pending.get(aor) {
            Some((r, _, _)) => r.clone(),
            None => match self.locations.read().get(key, aor) {
                Some(s) => Record::from_stored(key, s),
                None => return,
            },
        };
        let mut next = cur.clone();
        next.bindings.retain(|b| &*b.contact != contact);
        if next.bindings.len() == cur.bindings.len() {
            return;
        }
        if flow {
            self.stats.flow_failures += 1;
        } else {
            self.stats.ping_failures += 1;
        }
        next.version = cur.next_version(self.wall_ms(now));
        self.write(now, next, None);
    }
}
