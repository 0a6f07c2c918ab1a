//! A REGISTER (RFC 3261 §10.3) against the AOR's bindings, the write and
//! its commit, the sweep of expired bindings, and the parsing the rules
//! need.

use super::*;

impl Registrar {
    /// Handles a REGISTER (not a retransmission: see [`Self::absorb`]),
    /// authenticated as `user` when authentication is on. `key` is its
    /// AOR's affinity key, `tag` a fresh To tag.
    pub fn register(
        &mut self,
        now: Instant,
        m: &Message<'_>,
        user: Option<&[u8]>,
        key: u64,
        tag: &[u8],
    ) {
        let now_ms = self.wall_ms(now);
        let to = match m.to() {
            Ok(to) => to,
            Err(_) => return self.refuse(now, m, tag, (400, "Bad To"), &[]),
        };
        let aor = handover_sip::ids::aor(to.uri());
        if to.uri().user().is_none() {
            return self.refuse(now, m, tag, (404, "No User In To"), &[]);
        }
        if !self.cfg.domains.is_empty()
            && !self
                .cfg
                .domains
                .iter()
                .any(|d| d.as_bytes().eq_ignore_ascii_case(to.uri().host()))
        {
            //= https://www.rfc-editor.org/rfc/rfc3261#section-10.3
            //# If the address-of-record is not valid for the domain in the
            //# Request-URI, the registrar MUST send a 404 (Not Found)
            //# response and skip the remaining steps.
            return self.refuse(now, m, tag, (404, "Domain Not Served"), &[]);
        }
        if let Some(u) = user
            && to.uri().user() != Some(u)
        {
            //= https://www.rfc-editor.org/rfc/rfc3261#section-10.3
            //# If the authenticated user is not authorized to modify
            //# bindings, the registrar MUST return a 403 (Forbidden) and skip
            //# the remaining steps.
            return self.refuse(now, m, tag, (403, "Not Your AOR"), &[]);
        }
        let base = match self.pending.get(&aor) {
            Some((r, _, _)) => r.clone(),
            None => self
                .locations
                .read()
                .get(key, &aor)
                .map(|s| Record::from_stored(key, s))
                .unwrap_or_else(|| Record {
                    aor: aor.clone(),
                    key,
                    ..Record::default()
                }),
        };
        let mut next = base.clone();
        next.key = key;
        let outcome = match self.apply_contacts(m, &mut next, now_ms) {
            Ok(o) => o,
            Err((r, extra)) => {
                let extra: Vec<(&str, &[u8])> =
                    extra.iter().map(|(n, v)| (*n, v.as_slice())).collect();
                return self.refuse(now, m, tag, r, &extra);
            }
        };
        if self.cfg.max_bindings_per_source > 0 {
            let sources_before = flows_by_source(&base, now_ms);
            let sources_after = flows_by_source(&next, now_ms);
            for (ip, n) in &sources_after {
                let held = self.locations.read().from_source(*ip);
                let had = sources_before.get(ip).copied().unwrap_or(0);
                if *n > had && held - had.min(held) + n > self.cfg.max_bindings_per_source {
                    return self.refuse(
                        now,
                        m,
                        tag,
                        (403, "Too Many Bindings From This Address"),
                        &[],
                    );
                }
            }
        }
        if base.bindings.is_empty()
            && !next.bindings.is_empty()
            && self.locations.read().aors() >= self.cfg.max_aors
        {
            return self.refuse(
                now,
                m,
                tag,
                (503, "Registrar Full"),
                &[("Retry-After", b"60")],
            );
        }
        let ok = self.ok(m, &next, now_ms, tag);
        if next == base {
            // A query (no Contact), or nothing to change.
            return self.send(now, m, ok);
        }
        self.stats.created += outcome.created;
        self.stats.refreshed += outcome.refreshed;
        self.stats.removed += outcome.removed;
        next.version = base.next_version(now_ms);
        let id = self.remember(now, m, None);
        if let Some(a) = self.answers.get_mut(&id) {
            a.held = Some(ok);
        }
        self.write(now, next, Some(id));
    }

    /// Proposes `next` (or applies it at once without replication), with
    /// the transaction whose answer waits for it.
    pub(crate) fn write(&mut self, now: Instant, next: Record, txn: Option<Vec<u8>>) {
        let aor = next.aor.clone();
        let version = next.version;
        let mut txns = match self.pending.remove(&aor) {
            Some((_, _, t)) => t,
            None => Vec::new(),
        };
        txns.extend(txn);
        self.writes.push_back(next.clone());
        self.pending.insert(aor.clone(), (next, now, txns));
        if !self.replicated {
            let rec = self.writes.pop_back().expect("just pushed");
            self.apply(rec);
            self.committed(&aor, version, true);
        }
    }

    /// The cluster committed (`stored`) or refused this worker's write of
    /// `aor` at `version`: its held answers go, or are forgotten.
    pub fn committed(&mut self, aor: &[u8], version: u64, stored: bool) {
        let Some((rec, _, _)) = self.pending.get(aor) else {
            return;
        };
        if rec.version != version {
            // An older write of ours; the newest one's commit releases all.
            if stored {
                return;
            }
        }
        let Some((_, _, txns)) = self.pending.remove(aor) else {
            return;
        };
        if !stored {
            self.stats.lost_writes += 1;
        }
        for t in txns {
            if !stored {
                self.answers.remove(&t);
            } else if let Some(a) = self.answers.get_mut(&t)
                && let Some(b) = a.held.take()
            {
                a.bytes = Some(b.clone());
                self.out.push_back((a.to, b));
            }
        }
    }

    /// Applies a record to the locations (without replication; with it
    /// the replicated table does) and schedules its expiry.
    pub fn apply(&mut self, rec: Record) {
        let next = rec.next_expiry();
        self.locations
            .write()
            .put(rec.key, &rec.aor, rec.version, rec.bindings);
        self.schedule(rec.key, next);
    }

    /// The AORs of `key` expire at `at` at the earliest (the replicated
    /// table applied a write of one of them): the sweep looks then.
    pub fn schedule(&mut self, key: u64, at: Option<u64>) {
        if let Some(t) = at {
            self.expiries.push(std::cmp::Reverse((t, key)));
            if self.cfg.ping_interval_s > 0 && self.ping_keys.insert(key) {
                let first = self
                    .last_ms
                    .saturating_add(u64::from(self.cfg.ping_interval_s) * 1000);
                self.ping_due.push(std::cmp::Reverse((first, key)));
            }
        }
    }

    /// Schedules every AOR's expiry afresh (at start, and after the table
    /// was replaced by a snapshot).
    pub fn rescan(&mut self) {
        self.expiries.clear();
        let all: Vec<(u64, Option<u64>)> = self
            .locations
            .read()
            .iter()
            .map(|(k, s)| (k, s.next_expiry()))
            .collect();
        for (k, t) in all {
            self.schedule(k, t);
        }
    }

    /// Writes out the expired bindings of the AORs this worker owns
    /// (`owned(key)`); call it about once a second.
    pub fn sweep(&mut self, now: Instant, owned: impl Fn(u64) -> bool) {
        self.expire_answers(now);
        let now_ms = self.wall_ms(now);
        let mut later = Vec::new();
        while let Some(std::cmp::Reverse((t, _))) = self.expiries.peek() {
            if *t > now_ms {
                break;
            }
            let Some(std::cmp::Reverse((_, key))) = self.expiries.pop() else {
                break;
            };
            if !owned(key) {
                // Its owner sweeps it (and the write replaces the record);
                // looked at again in a while in case this worker becomes
                // the owner.
                let expired = self
                    .locations
                    .read()
                    .of_key(key)
                    .any(|s| s.next_expiry().is_some_and(|t| t <= now_ms));
                if expired {
                    later.push((now_ms.saturating_add(5_000), key));
                }
                continue;
            }
            // The latest of each AOR of the key: this worker's pending
            // write, or the table's.
            let current: Vec<Record> = self
                .locations
                .read()
                .of_key(key)
                .map(|s| match self.pending.get(&*s.aor) {
                    Some((r, _, _)) => r.clone(),
                    None => Record::from_stored(key, s),
                })
                .collect();
            for cur in current {
                if cur.next_expiry().is_none_or(|t| t > now_ms) {
                    continue;
                }
                let mut next = cur.clone();
                next.bindings.retain(|b| b.live(now_ms));
                self.stats.expired += (cur.bindings.len() - next.bindings.len()) as u64;
                next.version = cur.next_version(now_ms);
                self.write(now, next, None);
            }
        }
        for e in later {
            self.expiries.push(std::cmp::Reverse(e));
        }
    }

    /// The 200 of a REGISTER: the AOR's live bindings with their time left
    /// (RFC 3261 §10.3 step 8), and its Path when the phone supports it
    /// (RFC 3327 §5.3).
    fn ok(&self, m: &Message<'_>, rec: &Record, now_ms: u64, tag: &[u8]) -> Vec<u8> {
        let contacts: Vec<Vec<u8>> = rec
            .live(now_ms)
            .map(|b| {
                let left = (b.expires_ms - now_ms).div_ceil(1000);
                let mut v = Vec::with_capacity(b.contact.len() + 24);
                v.push(b'<');
                v.extend_from_slice(&b.contact);
                v.extend_from_slice(format!(">;expires={left}").as_bytes());
                if b.q != 1000 {
                    v.extend_from_slice(format!(";q={}.{:03}", b.q / 1000, b.q % 1000).as_bytes());
                }
                v
            })
            .collect();
        let supports_path = m
            .values(HeaderName::Supported)
            .any(|v| v.of(m.buf()).eq_ignore_ascii_case(b"path"));
        let path: Vec<&[u8]> = if supports_path {
            raw_values(m, b"path").collect()
        } else {
            Vec::new()
        };
        let mut extra: Vec<(&str, &[u8])> =
            contacts.iter().map(|c| ("Contact", c.as_slice())).collect();
        extra.extend(path.iter().map(|p| ("Path", *p)));
        Self::build(m, 200, None, tag, &extra)
    }

    /// RFC 3261 §10.3 steps 6 and 7 on `rec`: the Contacts of `m` added,
    /// refreshed or removed.
    fn apply_contacts(
        &self,
        m: &Message<'_>,
        rec: &mut Record,
        now_ms: u64,
    ) -> Result<Counts, Refused> {
        let buf = m.buf();
        let bad = |r: &'static str| Err(((400, r), Vec::new()));
        let expires_hdr = match m.values(HeaderName::Expires).next() {
            Some(v) => match seconds(v.of(buf)) {
                Some(s) => Some(s),
                None => return bad("Bad Expires"),
            },
            None => None,
        };
        let call_id = call_id_hash(m.call_id());
        let cseq = m.cseq().seq;
        let flow = m.vias().nth(1).and_then(|v| v.flow());
        let edge = m.top_via().internal_edge();
        let path: Box<[Box<[u8]>]> = raw_values(m, b"path").map(Into::into).collect();
        let values: Vec<handover_sip::Span> = m.values(HeaderName::Contact).collect();
        let mut counts = Counts::default();
        if values.iter().any(|v| v.of(buf).trim_ascii() == b"*") {
            //= https://www.rfc-editor.org/rfc/rfc3261#section-10.3
            //# If the request has additional Contact fields or an expiration
            //# time other than zero, the request is invalid, and the server
            //# MUST return a 400 (Invalid Request) and skip the remaining
            //# steps.
            if values.len() != 1 || expires_hdr != Some(0) {
                return bad("Invalid Wildcard");
            }
            let mut kept = Vec::new();
            for b in std::mem::take(&mut rec.bindings) {
                if b.call_id_hash == call_id && b.cseq >= cseq {
                    kept.push(b);
                } else {
                    counts.removed += 1;
                }
            }
            rec.bindings = kept;
            return Ok(counts);
        }
        for v in values {
            let Ok(c) = NameAddr::parse(buf, v) else {
                return bad("Bad Contact");
            };
            // A binding we could never send a request to (its scheme
            // neither SIP, SIPS nor tel) is refused, not stored.
            if c.uri().scheme() == handover_sip::Scheme::Other {
                return bad("Bad Contact");
            }
            let uri = c.uri().as_bytes();
            let secs = match c.param(b"expires") {
                Some(e) => match seconds(e) {
                    Some(s) => s,
                    None => return bad("Bad Contact expires"),
                },
                None => expires_hdr.unwrap_or(u64::from(self.cfg.default_expires)),
            };
            //= https://www.rfc-editor.org/rfc/rfc3261#section-10.3
            //# If and only if the requested expiration interval is greater
            //# than zero AND smaller than one hour AND less than a registrar-
            //# configured minimum, the registrar MAY reject the registration
            //# with a response of 423 (Interval Too Brief).
            if secs > 0 && secs < u64::from(self.cfg.min_expires) {
                let min = self.cfg.min_expires.to_string().into_bytes();
                return Err(((423, "Interval Too Brief"), vec![("Min-Expires", min)]));
            }
            let secs = secs.min(u64::from(self.cfg.max_expires));
            let q = match c.param(b"q") {
                Some(q) => match qvalue(q) {
                    Some(q) => q,
                    None => return bad("Bad Contact q"),
                },
                None => 1000,
            };
            let existing = rec.bindings.iter().position(|b| &*b.contact == uri);
            if let Some(i) = existing {
                let b = &rec.bindings[i];
                //= https://www.rfc-editor.org/rfc/rfc3261#section-10.3
                //# If the value is the same, the registrar compares the CSeq
                //# value.  If the value is higher than that of the existing
                //# binding, it MUST update or remove the binding as above.
                //# If not, the update MUST be aborted and the request fails.
                if b.call_id_hash == call_id && b.cseq >= cseq {
                    return Err(((500, "Out Of Order"), Vec::new()));
                }
                if secs == 0 {
                    rec.bindings.remove(i);
                    counts.removed += 1;
                    continue;
                }
                counts.refreshed += 1;
            } else if secs == 0 {
                continue;
            } else {
                counts.created += 1;
            }
            let nb = Binding {
                contact: uri.into(),
                flow,
                expires_ms: now_ms.saturating_add(secs.saturating_mul(1000)),
                q,
                call_id_hash: call_id,
                cseq,
                path: path.clone(),
                edge,
            };
            match existing {
                Some(i) => rec.bindings[i] = nb,
                None => rec.bindings.push(nb),
            }
        }
        // Expired bindings go with any write of the AOR.
        let before = rec.bindings.len();
        rec.bindings.retain(|b| b.live(now_ms));
        counts.expired = (before - rec.bindings.len()) as u64;
        if rec.bindings.len() > self.cfg.max_contacts {
            return Err(((403, "Too Many Contacts"), Vec::new()));
        }
        Ok(counts)
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    created: u64,
    refreshed: u64,
    removed: u64,
    expired: u64,
}

/// Live bindings of `rec` by the IP address of their flow.
fn flows_by_source(rec: &Record, now_ms: u64) -> HashMap<IpAddr, usize> {
    let mut m = HashMap::new();
    for b in rec.live(now_ms) {
        if let Some(f) = b.flow {
            *m.entry(f.addr.ip()).or_default() += 1;
        }
    }
    m
}

/// Delta-seconds (RFC 3261 §25.1): digits; more than a u64 holds is
/// clamped (never an overflow), anything else refused.
pub(crate) fn seconds(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        v.iter()
            .try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .unwrap_or(u64::MAX),
    )
}

/// A qvalue (`0`, `0.5`, `1.000`; RFC 3261 §25.1) × 1000.
pub(crate) fn qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut f = 0u16;
    for i in 0..3 {
        f = f * 10 + frac.get(i).map_or(0, |d| u16::from(d - b'0'));
    }
    match int {
        b"0" => Some(f),
        b"1" if f == 0 => Some(1000),
        _ => None,
    }
}

/// The values of header `name` (lower case) that `HeaderName` does not
/// classify, comma lists split.
fn raw_values<'a>(m: &Message<'a>, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let buf = m.buf();
    m.headers()
        .filter(move |h| h.name_span.of(buf).eq_ignore_ascii_case(name))
        .flat_map(move |h| handover_sip::CommaValues::new(buf, h.value).map(move |v| v.of(buf)))
}
