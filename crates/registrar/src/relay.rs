//! Relay mode (RFC 3327): where a PBX is the registrar, a REGISTER for
//! its domain goes to it, with a `Path` naming the edge and the flow the
//! phone's REGISTER came from, so the PBX's later requests to the phone
//! come back through the edge and reach the phone on that flow.
//!
//! The worker plays the proxy's part as a B2BUA does: the REGISTER to the
//! PBX carries only the worker's Via (the edge's address with the AOR's
//! key, so the answer comes back to the AOR's owner), the phone's other
//! headers as they were (From, To, Call-ID, CSeq, Contact, Expires, and
//! the credentials the PBX asked for), a Route to the PBX, and our Path
//! on top of the phone's; the PBX's answer goes back to the phone with its
//! status, bindings and challenges. A flow in our Path carries a token
//! (an HMAC under the cluster secret), so nobody can make the cluster send
//! requests to an address it did not see a REGISTER from.

use std::net::SocketAddr;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::*;

/// The PBXs that are the registrars of some domains: `[DOMAIN=]IP:PORT[,IP:PORT…]`
/// (no domain: any). An AOR goes to one PBX of its domain's pool, picked
/// by its key, so a phone stays on one PBX.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstreams(Vec<(Option<String>, Vec<SocketAddr>)>);

impl Upstreams {
    /// Adds one `[DOMAIN=]IP:PORT[,IP:PORT…]`.
    pub fn add(&mut self, spec: &str) -> Result<(), String> {
        let (domain, pool) = match spec.split_once('=') {
            Some((d, p)) => (Some(d.trim().to_ascii_lowercase()), p),
            None => (None, spec),
        };
        let pool: Result<Vec<SocketAddr>, String> = pool
            .split(',')
            .map(|a| {
                a.trim()
                    .parse()
                    .map_err(|_| format!("registrar upstream `{spec}`: `{a}` is not an IP:PORT"))
            })
            .collect();
        let pool = pool?;
        if pool.is_empty() || domain.as_deref() == Some("") {
            return Err(format!(
                "registrar upstream `{spec}` is not [DOMAIN=]IP:PORT[,IP:PORT…]"
            ));
        }
        self.0.push((domain, pool));
        Ok(())
    }

    /// None configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The PBX of an AOR of domain `host` with key `key`, if its domain is
    /// relayed (the first matching entry; a domain entry before the
    /// catch-all).
    pub fn pick(&self, host: &[u8], key: u64) -> Option<SocketAddr> {
        let entry = self
            .0
            .iter()
            .find(|(d, _)| {
                d.as_ref()
                    .is_some_and(|d| d.as_bytes().eq_ignore_ascii_case(host))
            })
            .or_else(|| self.0.iter().find(|(d, _)| d.is_none()))?;
        let pool = &entry.1;
        Some(pool[(key % pool.len() as u64) as usize])
    }
}

fn token_bytes(secret: &[u8; 16], flow: &str) -> [u8; 8] {
    let mut m = <Hmac<Sha256>>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"handover flow\0");
    m.update(flow.as_bytes());
    let full = m.finalize().into_bytes();
    let mut out = [0u8; 8];
    out.copy_from_slice(&full[..8]);
    out
}

/// The token of `flow` (`IP:PORT`) under the cluster secret: 16 hex digits.
pub fn flow_token(secret: &[u8; 16], flow: &str) -> String {
    token_bytes(secret, flow)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `token` is `flow`'s (in constant time).
pub fn flow_token_ok(secret: &[u8; 16], flow: &str, token: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    let want = flow_token(secret, flow);
    bool::from(want.as_bytes().ct_eq(token))
}

/// A REGISTER relayed to a PBX: our client transaction, and the phone's
/// request (its answer is built from it) with its transaction's id.
#[derive(Debug)]
pub(crate) struct Relayed {
    pub(crate) cli: ClientNonInvite,
    phone: Vec<u8>,
    id: Vec<u8>,
}

/// Relayed REGISTERs in flight at most (past it: 503).
pub(crate) const MAX_RELAYS: usize = 65_536;

/// Headers of a PBX's answer to a relayed REGISTER that the phone gets.
const RELAYED_BACK: [&[u8]; 12] = [
    b"contact",
    b"m",
    b"www-authenticate",
    b"min-expires",
    b"date",
    b"expires",
    b"service-route",
    b"path",
    b"supported",
    b"require",
    b"retry-after",
    b"warning",
];

impl Registrar {
    /// Relays the phone's REGISTER `m` as `request` (built by the B2BUA:
    /// see `relay.rs`); the phone's answer is the PBX's.
    pub fn relay(&mut self, now: Instant, m: &Message<'_>, request: Vec<u8>, tag: &[u8]) {
        if self.relays.len() >= MAX_RELAYS {
            return self.refuse(
                now,
                m,
                tag,
                (503, "Too Many Registrations In Flight"),
                &[("Retry-After", b"5")],
            );
        }
        let Ok(branch) =
            handover_sip::scan(&request).map(|r| r.top_via().branch().unwrap_or_default().to_vec())
        else {
            return self.refuse(now, m, tag, (500, "Cannot Relay"), &[]);
        };
        let id = self.remember(now, m, None);
        self.stats.relayed += 1;
        self.relays.insert(
            branch.clone(),
            Relayed {
                cli: ClientNonInvite::new(now, self.cfg.timers, request),
                phone: m.as_bytes().to_vec(),
                id,
            },
        );
        self.drain_relay(&branch);
    }

    /// A response to a relayed REGISTER (true), or not ours (false).
    pub fn relay_response(&mut self, now: Instant, m: &Message<'_>) -> bool {
        let branch = m.top_via().branch().unwrap_or_default();
        if let Some(p) = self.pings.get_mut(branch) {
            p.cli.handle_response(now, m);
            let branch = branch.to_vec();
            self.drain_ping(now, &branch);
            return true;
        }
        let Some(r) = self.relays.get_mut(branch) else {
            return false;
        };
        r.cli.handle_response(now, m);
        let branch = branch.to_vec();
        self.drain_relay(&branch);
        true
    }

    pub(crate) fn drain_relay(&mut self, branch: &[u8]) {
        let Some(r) = self.relays.get_mut(branch) else {
            return;
        };
        while let Some(b) = r.cli.poll_transmit() {
            self.out.push_back((None, b));
        }
        let mut over = false;
        let mut answer = None;
        while let Some(e) = r.cli.poll_event() {
            if e == handover_txn::Event::Terminated {
                over = true;
            } else if let Some((status, msg)) = e.into_response()
                && status >= 200
            {
                answer = Some((status, msg));
            }
        }
        if let Some((status, msg)) = answer
            && let Ok(phone) = handover_sip::scan(&r.phone)
        {
            let up = handover_sip::scan(&msg).ok();
            let reason = up.as_ref().map(|u| {
                let line = u.start_line_span().of(u.buf());
                // "SIP/2.0 200 OK": the phrase after the code.
                String::from_utf8_lossy(line.splitn(3, |&b| b == b' ').nth(2).unwrap_or_default())
                    .into_owned()
            });
            let tag = up
                .as_ref()
                .and_then(|u| u.to_tag())
                .map(<[u8]>::to_vec)
                .unwrap_or_else(|| b"relayed".to_vec());
            let extra: Vec<(String, Vec<u8>)> = up
                .as_ref()
                .map(|u| {
                    u.headers()
                        .filter(|h| {
                            let n = h.name_span.of(u.buf()).to_ascii_lowercase();
                            RELAYED_BACK.contains(&n.as_slice())
                        })
                        .map(|h| {
                            (
                                String::from_utf8_lossy(h.name_span.of(u.buf())).into_owned(),
                                h.value.of(u.buf()).to_vec(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let extra: Vec<(&str, &[u8])> = extra
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()))
                .collect();
            // A 408 of our own (the PBX never answered) has no phrase.
            let reason = reason.filter(|r| !r.is_empty());
            let b = Self::build(&phone, status, reason.as_deref(), &tag, &extra);
            let to = phone.top_via().edge_target();
            if let Some(a) = self.answers.get_mut(&r.id) {
                a.bytes = Some(b.clone());
            }
            self.out.push_back((to, b));
        }
        if over {
            self.relays.remove(branch);
        } else {
            self.arm(branch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aor_of_a_relayed_domain_goes_to_one_pbx_of_its_pool() {
        let mut u = Upstreams::default();
        u.add("pbx.example=192.0.2.10:5060,192.0.2.11:5060")
            .unwrap();
        u.add("192.0.2.20:5060").unwrap();
        assert_eq!(u.pick(b"PBX.example", 4), "192.0.2.10:5060".parse().ok());
        assert_eq!(u.pick(b"pbx.example", 5), "192.0.2.11:5060".parse().ok());
        assert_eq!(u.pick(b"other.example", 5), "192.0.2.20:5060".parse().ok());
        assert!(u.add("pbx=nowhere").is_err());
        let mut only = Upstreams::default();
        only.add("pbx.example=192.0.2.10:5060").unwrap();
        assert_eq!(only.pick(b"other.example", 1), None);
    }

    #[test]
    fn a_flow_token_proves_the_flow_and_nothing_else() {
        let k = [3u8; 16];
        let t = flow_token(&k, "203.0.113.7:40000");
        assert_eq!(t.len(), 16);
        assert!(flow_token_ok(&k, "203.0.113.7:40000", t.as_bytes()));
        assert!(!flow_token_ok(&k, "203.0.113.8:40000", t.as_bytes()));
        assert!(!flow_token_ok(
            &[4u8; 16],
            "203.0.113.7:40000",
            t.as_bytes()
        ));
    }
}
