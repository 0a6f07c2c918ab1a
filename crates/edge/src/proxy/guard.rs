//! Who may use the edge, and where the workers' requests may go: the
//! per-source budgets of bad input and new dialogs ([`BadInputLimiter`])
//! and the destination rules ([`Destinations`]).

use std::net::IpAddr;

#[cfg(doc)]
use super::Drop;
#[cfg(doc)]
use handover_sip::ids::Hashing;

/// Per-source budgets: bad input, so one source's junk cannot make the
/// edge spend its time scanning and answering it; and, optionally, new
/// dialogs (an INVITE, REGISTER, SUBSCRIBE… without a To tag), so one
/// source cannot flood the workers with valid-looking calls. Requests
/// from the backends are never charged.
#[derive(Debug)]
pub struct BadInputLimiter {
    per_sec: u32,
    slots: Box<[(u128, u32, u32)]>, // (ip, second, count)
    pub(super) new_dialogs: Option<Box<BadInputLimiter>>,
    /// Transaction hashes of recently admitted new dialogs (direct-mapped):
    /// a retransmission of one is never charged nor refused, so a call
    /// admitted once is not failed by a 503 to its own retransmission.
    admitted: Box<[u64]>,
    /// Seconds a source is banned for (see [`Drop::Banned`]); 0: never.
    ban_s: u32,
    /// Per slot: (source, banned until this second).
    bans: Box<[(u128, u32)]>,
    /// Requests whose `k` (in our Route or Request-URI) had no good tag
    /// since the caller last took this count (see
    /// [`Hashing::key_token`]); routed by their Call-ID instead.
    pub keys_refused: u64,
}

/// What the edge does with a new dialog (see [`BadInputLimiter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    Yes,
    /// 503 with Retry-After.
    Refuse,
    /// Silently: the source is banned.
    Drop,
}

impl BadInputLimiter {
    /// Allows `per_sec` refused datagrams per source address per second
    /// (0 = no limit). Sources share `2^bits` slots.
    pub fn new(per_sec: u32, bits: u32) -> Self {
        Self {
            per_sec,
            slots: vec![(0, 0, 0); 1 << bits].into_boxed_slice(),
            new_dialogs: None,
            admitted: Box::default(),
            ban_s: 0,
            bans: Box::default(),
            keys_refused: 0,
        }
    }

    /// Also allows `per_sec` new dialogs per source address per second
    /// (0 = no limit); the one over it is answered 503 with Retry-After.
    pub fn with_new_dialogs(mut self, per_sec: u32) -> Self {
        let bits = self.slots.len().trailing_zeros();
        self.new_dialogs = (per_sec > 0).then(|| Box::new(Self::new(per_sec, bits)));
        self.admitted = vec![0; if per_sec > 0 { 1 << bits } else { 0 }].into_boxed_slice();
        self
    }

    /// A source that starts twice its budget of new dialogs in one second
    /// has its new dialogs dropped unanswered for `ban_s` seconds (0: no
    /// ban). Only with [`Self::with_new_dialogs`].
    pub fn with_ban(mut self, ban_s: u32) -> Self {
        self.ban_s = ban_s;
        self.bans = vec![(0, 0); if ban_s > 0 { self.slots.len() } else { 0 }].into_boxed_slice();
        self
    }

    /// Counts a new dialog from `ip` whose transaction hashes to `txn`
    /// and says what to do with it. A retransmission of an admitted one
    /// always passes.
    pub(super) fn new_dialog(&mut self, ip: IpAddr, now_sec: u32, txn: u64) -> Admit {
        let Some(l) = &mut self.new_dialogs else {
            return Admit::Yes;
        };
        let i = (txn as usize) & (self.admitted.len() - 1);
        if self.admitted[i] == txn {
            return Admit::Yes;
        }
        let (slot, v) = l.slot(ip);
        if self.ban_s > 0 && self.bans[slot].0 == v && now_sec < self.bans[slot].1 {
            return Admit::Drop;
        }
        let over = l.limited(ip, now_sec);
        // Refused ones count too: twice the budget in a second bans.
        l.charge(ip, now_sec);
        if !over {
            self.admitted[i] = txn;
            return Admit::Yes;
        }
        if self.ban_s > 0 && l.slots[slot].2 >= l.per_sec.saturating_mul(2) {
            self.bans[slot] = (v, now_sec.saturating_add(self.ban_s));
        }
        Admit::Refuse
    }

    fn slot(&self, ip: IpAddr) -> (usize, u128) {
        let v = match ip {
            IpAddr::V4(a) => u128::from(a.to_bits()),
            IpAddr::V6(a) => a.to_bits(),
        };
        let h = (v as u64 ^ (v >> 64) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((h >> 40) as usize & (self.slots.len() - 1), v)
    }

    /// True when `ip` is over its budget this second.
    pub(super) fn limited(&self, ip: IpAddr, now_sec: u32) -> bool {
        if self.per_sec == 0 {
            return false;
        }
        let (i, v) = self.slot(ip);
        let (ip0, sec, n) = self.slots[i];
        ip0 == v && sec == now_sec && n >= self.per_sec
    }

    pub(super) fn charge(&mut self, ip: IpAddr, now_sec: u32) {
        if self.per_sec == 0 {
            return;
        }
        let (i, v) = self.slot(ip);
        let s = &mut self.slots[i];
        if s.0 != v || s.1 != now_sec {
            *s = (v, now_sec, 0);
        }
        s.2 = s.2.saturating_add(1);
    }
}

/// Where a worker's requests may go when no flow names the way (a
/// registered phone's flow always may): a destination inside `deny` and
/// not inside `allow` is answered 403 to the worker (a caller's Contact
/// or a Refer-To cannot aim the cluster at a network it should not
/// reach). Networks no SIP request belongs to are always denied unless
/// allowed ([`Destinations::NEVER`]); private ranges are denied unless
/// the site says otherwise ([`Destinations::PRIVATE`], the default of
/// `deny`: a PBX on one is named in `allow`).
#[derive(Debug, Clone)]
pub struct Destinations {
    /// Exceptions to `deny` (and to the built-in list).
    pub allow: Vec<handover_sip::Cidr>,
    /// Networks refused besides the built-in list.
    pub deny: Vec<handover_sip::Cidr>,
}

impl Default for Destinations {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            deny: Self::NEVER
                .iter()
                .map(|c| c.parse().expect("valid"))
                .collect(),
        }
    }
}

impl Destinations {
    /// Refused by default: "this network", link-local (where clouds keep
    /// their metadata service), multicast and broadcast, and their IPv6
    /// kin.
    pub const NEVER: [&str; 7] = [
        "0.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "255.255.255.255/32",
        "::/128",
        "fe80::/10",
        "ff00::/8",
    ];

    /// Private networks (RFC 1918, shared address space RFC 6598, unique
    /// local IPv6 RFC 4193): `deny` unless configured.
    pub const PRIVATE: [&str; 5] = [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "fc00::/7",
    ];

    /// [`Self::PRIVATE`] as prefixes.
    pub fn private() -> Vec<handover_sip::Cidr> {
        Self::PRIVATE
            .iter()
            .map(|c| c.parse().expect("valid"))
            .collect()
    }

    /// The built-in list plus `deny`, with `allow`'s exceptions.
    pub fn new(allow: Vec<handover_sip::Cidr>, deny: Vec<handover_sip::Cidr>) -> Self {
        let mut all: Vec<handover_sip::Cidr> = Self::NEVER
            .iter()
            .map(|c| c.parse().expect("valid"))
            .collect();
        all.extend(deny);
        Self { allow, deny: all }
    }

    /// Whether a worker's request may go to `ip`.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        !self.deny.iter().any(|c| c.contains(ip)) || self.allow.iter().any(|c| c.contains(ip))
    }
}
