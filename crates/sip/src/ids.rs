//! Branches, tags, Call-IDs, the stateless branch of RFC 3261 §16.11, and
//! the affinity key that routes every message of a call to one worker.
//!
//! Random values come from a caller-owned [`rand_core::RngCore`] (seeded in
//! tests, the OS in production), so cores stay deterministic. Hashes are
//! SipHash-1-3 with a key: a fixed, documented default key makes every edge
//! and worker compute the same affinity key, and a cluster secret can replace
//! it so outsiders cannot aim calls at one shard.

use core::hash::Hasher as _;

use rand_core::RngCore;
use siphasher::sip::SipHasher13;

use crate::scan::Message;
use crate::via::MAGIC_COOKIE;

/// A short generated identifier, held inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token {
    buf: [u8; 48],
    len: u8,
}

impl Token {
    fn new(parts: &[&[u8]]) -> Self {
        let mut t = Self {
            buf: [0; 48],
            len: 0,
        };
        for p in parts {
            let at = usize::from(t.len);
            t.buf[at..at + p.len()].copy_from_slice(p);
            t.len += p.len() as u8;
        }
        t
    }

    /// A token of ours read back (from a replica); `None` if longer than
    /// any we make.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        (b.len() <= 48).then(|| Self::new(&[b]))
    }

    /// The identifier's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// The identifier as text (always ASCII).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl core::fmt::Debug for Token {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::fmt::Display for Token {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `n` as 16 lowercase hex digits.
pub fn hex_u64(n: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// Parses 1 to 16 hex digits (either case).
pub fn parse_hex_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        let d = (b as char).to_digit(16)?;
        Some(acc << 4 | u64::from(d))
    })
}

/// Generates random branches, tags and Call-IDs.
#[derive(Debug)]
pub struct IdGen<R> {
    rng: R,
}

impl<R: RngCore> IdGen<R> {
    /// Uses `rng` for every identifier.
    pub fn new(rng: R) -> Self {
        Self { rng }
    }

    /// A client branch: magic cookie plus 96 random bits (RFC 3261 §8.1.1.7).
    pub fn branch(&mut self) -> Token {
        let (a, b) = (self.rng.next_u64(), self.rng.next_u32());
        Token::new(&[MAGIC_COOKIE, &hex_u64(a), &hex_u64(u64::from(b))[8..]])
    }

    /// A tag with 64 random bits (§19.3 asks for at least 32).
    pub fn tag(&mut self) -> Token {
        Token::new(&[&hex_u64(self.tag_bits())])
    }

    /// A tag's 64 random bits, for one kept by the thousand (8 bytes where
    /// a `Token` is 49): `hex_u64` of them is the tag as `tag` writes it.
    pub fn tag_bits(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// A Call-ID with 128 random bits and no host part, so it names no
    /// internal address (topology hiding).
    pub fn call_id(&mut self) -> Token {
        let (a, b) = (self.rng.next_u64(), self.rng.next_u64());
        Token::new(&[&hex_u64(a), &hex_u64(b)])
    }
}

/// Keyed hashes shared by every node of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hashing {
    k0: u64,
    k1: u64,
    /// The key of [`Hashing::key_token`]'s tags, derived from the secret
    /// (so a tag says nothing about the affinity hash's key).
    t0: u64,
    t1: u64,
}

impl Default for Hashing {
    /// The published default key. Deployments set a cluster secret with
    /// [`Hashing::with_key`].
    fn default() -> Self {
        Self::with_key(
            0x6861_6e64_6f76_6572, // "handover"
            0x7369_7032_2e30_6b79, // "sip2.0ky"
        )
    }
}

/// What a key token's tag is bound to (see [`Hashing::key_token`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A Call-ID: tokens in a Record-Route or a Contact, which come back
    /// in the Route or Request-URI of the dialog's requests (or, for an
    /// INVITE with `Replaces`, with the replaced dialog's Call-ID there).
    CallId,
    /// A Via branch: tokens in our own Via, which come back in answers.
    Branch,
}

/// Length of a key token: the key's 16 hex digits, then its tag's 16.
pub const KEY_TOKEN_LEN: usize = 32;

/// The key of a key token whose tag is not checked: the first 16 hex
/// digits of `s`, or all of it when shorter (the edge's own Via towards a
/// worker carries the bare key; only the cluster reads it).
pub fn key_of_token(s: &[u8]) -> Option<u64> {
    parse_hex_u64(s.get(..16).unwrap_or(s))
}

/// An address-of-record as the registrar keys it: `user@host` of `uri`,
/// the host in lower case, without scheme, port or parameters (RFC 3261
/// §10.3 step 5, simplified: users compare byte for byte, hosts without
/// case). One phone's REGISTER To and the Request-URI calling it give the
/// same bytes.
pub fn aor(uri: &crate::Uri<'_>) -> Vec<u8> {
    let user = uri.user().unwrap_or_default();
    let mut v = Vec::with_capacity(user.len() + 1 + uri.host().len());
    v.extend_from_slice(user);
    v.push(b'@');
    v.extend(uri.host().iter().map(u8::to_ascii_lowercase));
    v
}

/// Number of shards of the affinity key space: a call belongs to shard
/// `shard_of(key, SHARDS)`, and the edge, the workers and the replicated
/// table all route by it. Fixed for the life of a cluster
/// (docs/architecture.md, "The edge").
pub const SHARDS: usize = 4096;

/// The shard of an affinity key among `shards` (the product's count is
/// [`SHARDS`]; the cluster's simulation runs with fewer).
#[inline]
pub fn shard_of(key: u64, shards: usize) -> usize {
    (key % shards.max(1) as u64) as usize
}

impl Hashing {
    /// Hashing with a cluster secret.
    pub fn with_key(k0: u64, k1: u64) -> Self {
        let derive = |label: &[u8]| {
            let mut h = SipHasher13::new_with_keys(k0, k1);
            h.write(b"handover key token\0");
            h.write(label);
            h.finish()
        };
        Self {
            k0,
            k1,
            t0: derive(b"0"),
            t1: derive(b"1"),
        }
    }

    fn tag(&self, key: u64, bound: Bound, to: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.t0, self.t1);
        h.write_u8(bound as u8);
        h.write_u64(key);
        h.write(to);
        h.finish()
    }

    /// The shard key `key` as it leaves the cluster (the `k` parameter of
    /// our Record-Route, Contact and Via): its 16 hex digits and a 64-bit
    /// keyed tag of it and `to` (a Call-ID or a branch, see [`Bound`]).
    /// Without the tag anyone could write a `k` that aims requests at the
    /// worker of their choice; with it a key is good only with the Call-ID
    /// (or branch) it was given for, which routes to the same place anyway.
    pub fn key_token(&self, key: u64, bound: Bound, to: &[u8]) -> [u8; KEY_TOKEN_LEN] {
        let mut out = [0u8; KEY_TOKEN_LEN];
        out[..16].copy_from_slice(&hex_u64(key));
        out[16..].copy_from_slice(&hex_u64(self.tag(key, bound, to)));
        out
    }

    /// The key of `token` if its tag is the one [`Hashing::key_token`]
    /// gives with `bound` and `to`; `None` for anything else (a forged, a
    /// truncated or an old-style token).
    pub fn open_key_token(&self, token: &[u8], bound: Bound, to: &[u8]) -> Option<u64> {
        if token.len() != KEY_TOKEN_LEN {
            return None;
        }
        let key = parse_hex_u64(&token[..16])?;
        let tag = parse_hex_u64(&token[16..])?;
        // One comparison of two words: no early exit a timing could show.
        (tag == self.tag(key, bound, to)).then_some(key)
    }

    /// The tag of an `fe` parameter (`fe=IP:PORT~TAG`): the edge at
    /// `IP:PORT` (its address inside the cluster) holds `flow`. Edges that
    /// share one advertised address write it beside every `flow=` of
    /// theirs, and the worker sends what goes on that flow to that edge.
    /// The tag (keyed like [`Hashing::key_token`]'s, bound to the flow)
    /// keeps a phone that echoes our Record-Route from aiming the worker
    /// at an address of its choice.
    pub fn edge_tag(&self, flow: &[u8], edge: &[u8]) -> [u8; 16] {
        let mut h = SipHasher13::new_with_keys(self.t0, self.t1);
        h.write_u8(2);
        h.write(flow);
        h.write_u8(0);
        h.write(edge);
        hex_u64(h.finish())
    }

    /// The edge an `fe` value (`IP:PORT~TAG`) names beside `flow`, if its
    /// tag is [`Hashing::edge_tag`]'s; `None` for anything else.
    pub fn open_edge(&self, flow: &[u8], fe: &[u8]) -> Option<std::net::SocketAddr> {
        let at = fe.iter().rposition(|&b| b == b'~')?;
        let (edge, tag) = (&fe[..at], &fe[at + 1..]);
        // One comparison of two words: no early exit a timing could show.
        let ok = parse_hex_u64(tag)? == parse_hex_u64(&self.edge_tag(flow, edge))?;
        if !ok || tag.len() != 16 {
            return None;
        }
        core::str::from_utf8(edge).ok()?.parse().ok()
    }

    /// The cluster secret's 16 bytes, for keyed MACs made elsewhere (the
    /// registrar's digest nonces).
    pub fn secret(&self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&self.k0.to_le_bytes());
        k[8..].copy_from_slice(&self.k1.to_le_bytes());
        k
    }

    /// The affinity key of an address-of-record (a REGISTER's To URI, a
    /// call's Request-URI): the hash of [`aor`]'s bytes, computed without
    /// allocating (the edge keys every REGISTER by it), so one shard holds
    /// one AOR's bindings.
    pub fn aor_key(&self, uri: &crate::Uri<'_>) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        if let Some(user) = uri.user() {
            h.write(user);
        }
        h.write(b"@");
        let mut lower = [0u8; 64];
        for chunk in uri.host().chunks(lower.len()) {
            let n = chunk.len();
            lower[..n].copy_from_slice(chunk);
            lower[..n].make_ascii_lowercase();
            h.write(&lower[..n]);
        }
        h.finish()
    }

    /// The affinity key of a new call: a hash of its Call-ID (see "The
    /// edge" in docs/architecture.md). Call-IDs compare byte for byte, so
    /// the raw bytes are hashed.
    pub fn affinity_key(&self, call_id: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(call_id);
        h.finish()
    }

    /// The branch a stateless proxy puts in its own Via (RFC 3261 §16.11):
    /// `z9hG4bK-hx` + 16 hex digits of [`Hashing::transaction_hash`] + `.` +
    /// 8 hex digits of [`Hashing::loop_hash`]. A retransmission, the CANCEL
    /// of an INVITE and the ACK of a non-2xx final response get the same
    /// branch as the original request.
    pub fn stateless_branch(&self, msg: &Message<'_>) -> Token {
        let t = hex_u64(self.transaction_hash(msg.top_via(), msg));
        let l = hex_u64(u64::from(self.loop_hash(msg)));
        Token::new(&[MAGIC_COOKIE, b"-hx", &t, b".", &l[8..]])
    }

    /// Hash naming the transaction of `msg` as seen from the Via `via`
    /// (the sender's): its sent-by and branch, From tag, Call-ID and CSeq
    /// number. Every input is also in the responses, where `via` is the Via
    /// below ours, so [`Hashing::verify_response`] can check that a
    /// response answers a request this proxy forwarded.
    //= https://www.rfc-editor.org/rfc/rfc3261#section-16.11
    //# If it begins with the magic cookie, the first component of the
    //# branch ID of the outgoing request is computed as a hash of the
    //# received branch ID.  Otherwise, the branch ID is computed as a hash
    //# of the received Via, the tag in the To header field, the tag in the
    //# From header field, the Call-ID header field, the CSeq number (but
    //# not method), and the Request-URI from the received request.
    // Deviation, on purpose: To tag and Request-URI are left out for
    // pre-3261 clients, since responses do not carry them unchanged; sent-by,
    // From tag, Call-ID and CSeq number still tell transactions apart, and
    // the CANCEL and non-2xx ACK still match their INVITE.
    pub fn transaction_hash(&self, via: &crate::Via<'_>, msg: &Message<'_>) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(via.host());
        h.write(&via.port().unwrap_or(0).to_be_bytes());
        h.write(via.branch().unwrap_or_default());
        h.write(&[0]);
        h.write(msg.from_tag().unwrap_or_default());
        h.write(&[0]);
        h.write(msg.call_id());
        h.write(&msg.cseq().seq.to_be_bytes());
        h.finish()
    }

    /// True when `resp`'s top Via branch is the stateless branch this proxy
    /// (with this key) made for the request it answers. A forged or stray
    /// response fails, so it cannot be reflected to the address in the Via
    /// below.
    pub fn verify_response(&self, resp: &Message<'_>) -> bool {
        let Some(ours) = resp.top_via().branch() else {
            return false;
        };
        let Some(next) = resp.vias().nth(1) else {
            return false;
        };
        let t = hex_u64(self.transaction_hash(&next, resp));
        ours.len() == 7 + 3 + 16 + 1 + 8 && ours[10..26] == t
    }

    /// Rendezvous weight of `member` for `shard` (highest wins).
    pub fn rendezvous(&self, shard: u32, member: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0 ^ 0x5a5a, self.k1);
        h.write(&shard.to_be_bytes());
        h.write(member);
        h.finish()
    }

    /// A hash of what stays the same when a request loops back to this
    /// proxy unchanged: Request-URI, Call-ID, CSeq number and From tag (not
    /// the To tag, so the ACK of a non-2xx keeps the INVITE's branch).
    pub fn loop_hash(&self, msg: &Message<'_>) -> u32 {
        let mut h = SipHasher13::new_with_keys(self.k1, self.k0);
        h.write(msg.request_uri().map_or(&b""[..], |u| u.as_bytes()));
        h.write(&[0]);
        h.write(msg.call_id());
        h.write(&msg.cseq().seq.to_be_bytes());
        h.write(msg.from_tag().unwrap_or_default());
        h.finish() as u32
    }

    /// RFC 3261 §16.3 step 4: true when `msg` carries a Via placed by this
    /// proxy (`is_ours` says which sent-by is ours) whose branch has the loop
    /// hash `msg` has now: the request came back unchanged, a loop. A
    /// request that changed on the way (a spiral) passes.
    pub fn is_loop(&self, msg: &Message<'_>, is_ours: impl Fn(&crate::Via<'_>) -> bool) -> bool {
        let l = hex_u64(u64::from(self.loop_hash(msg)));
        let tail = &l[8..];
        msg.vias().any(|v| {
            is_ours(&v)
                && v.branch().is_some_and(|b| {
                    b.len() > 9 && b[b.len() - 9] == b'.' && &b[b.len() - 8..] == tail
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan;

    struct Counter(u64);
    impl RngCore for Counter {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            rand_core::impls::fill_bytes_via_next(self, dst)
        }
    }

    #[test]
    fn rfc3261_8_1_1_7_branch_has_cookie_and_is_unique() {
        let mut g = IdGen::new(Counter(1));
        let a = g.branch();
        let b = g.branch();
        assert!(a.as_bytes().starts_with(MAGIC_COOKIE));
        assert_eq!(a.as_bytes().len(), 7 + 24);
        assert_ne!(a, b);
        assert_eq!(g.tag().as_bytes().len(), 16);
        assert_eq!(g.call_id().as_bytes().len(), 32);
    }

    #[test]
    fn an_edge_tag_opens_only_with_its_flow_and_the_cluster_key() {
        let h = Hashing::with_key(1, 2);
        let flow = b"tcp:198.51.100.7:40000";
        let mut fe = b"10.1.2.3:5060~".to_vec();
        fe.extend_from_slice(&h.edge_tag(flow, b"10.1.2.3:5060"));
        assert_eq!(
            h.open_edge(flow, &fe),
            Some("10.1.2.3:5060".parse().unwrap())
        );
        // Another flow, another key, another address, a cut tag: refused.
        assert_eq!(h.open_edge(b"tcp:198.51.100.7:40001", &fe), None);
        assert_eq!(Hashing::with_key(1, 3).open_edge(flow, &fe), None);
        let mut moved = b"10.1.2.4:5060".to_vec();
        moved.extend_from_slice(&fe[13..]);
        assert_eq!(h.open_edge(flow, &moved), None);
        assert_eq!(h.open_edge(flow, &fe[..fe.len() - 1]), None);
        assert_eq!(h.open_edge(flow, b"10.1.2.3:5060"), None);
        let mut v6 = b"[fd00::1]:5060~".to_vec();
        v6.extend_from_slice(&h.edge_tag(flow, b"[fd00::1]:5060"));
        assert_eq!(
            h.open_edge(flow, &v6),
            Some("[fd00::1]:5060".parse().unwrap())
        );
    }

    #[test]
    fn hex_round_trip() {
        for n in [0, 1, 0xdead_beef, u64::MAX] {
            assert_eq!(parse_hex_u64(&hex_u64(n)), Some(n));
        }
        assert_eq!(parse_hex_u64(b"FF"), Some(255));
        assert_eq!(parse_hex_u64(b"xyz"), None);
        assert_eq!(parse_hex_u64(b"00000000000000000"), None);
    }

    fn req(branch: &str, method: &str) -> Vec<u8> {
        format!(
            "{method} sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP a:5060;branch={branch}\r\n\
From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn rfc3261_16_11_stateless_branch_is_stable() {
        let h = Hashing::default();
        let inv = req("z9hG4bK1", "INVITE");
        let cancel = req("z9hG4bK1", "CANCEL");
        let other = req("z9hG4bK2", "INVITE");
        let b1 = h.stateless_branch(&scan(&inv).unwrap());
        assert_eq!(
            b1,
            h.stateless_branch(&scan(&inv).unwrap()),
            "retransmission"
        );
        assert_eq!(
            b1,
            h.stateless_branch(&scan(&cancel).unwrap()),
            "CANCEL matches INVITE"
        );
        assert_ne!(b1, h.stateless_branch(&scan(&other).unwrap()));
        assert!(b1.as_bytes().starts_with(MAGIC_COOKIE));
        // RFC 2543 clients (no cookie): sent-by, From tag, Call-ID, CSeq number.
        let old1 = req("1", "INVITE");
        let old2 = req("1", "CANCEL");
        assert_eq!(
            h.stateless_branch(&scan(&old1).unwrap()),
            h.stateless_branch(&scan(&old2).unwrap())
        );
        assert_ne!(
            Hashing::with_key(1, 2).stateless_branch(&scan(&inv).unwrap()),
            b1
        );
        assert_eq!(b1.as_bytes().len(), 7 + 3 + 16 + 1 + 8);
    }

    #[test]
    fn responses_are_verified_against_the_branch() {
        let h = Hashing::default();
        let inv = req("z9hG4bK1", "INVITE");
        let b = h.stateless_branch(&scan(&inv).unwrap());
        let resp = |branch: &str, sender_branch: &str| {
            format!(
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP edge;branch={branch}\r\n\
Via: SIP/2.0/UDP a:5060;branch={sender_branch};received=192.0.2.1\r\n\
From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n"
            )
        };
        assert!(h.verify_response(&scan(resp(b.as_str(), "z9hG4bK1").as_bytes()).unwrap()));
        // Forged: the attacker put another address (and branch) below ours.
        assert!(!h.verify_response(&scan(resp(b.as_str(), "z9hG4bKevil").as_bytes()).unwrap()));
        assert!(!h.verify_response(
            &scan(resp("z9hG4bK-hx0000000000000000.00000000", "z9hG4bK1").as_bytes()).unwrap()
        ));
        let other_key = Hashing::with_key(9, 9).stateless_branch(&scan(&inv).unwrap());
        assert!(
            !h.verify_response(&scan(resp(other_key.as_str(), "z9hG4bK1").as_bytes()).unwrap())
        );
    }

    #[test]
    fn rfc3261_16_3_loop_detected_spiral_passes() {
        let h = Hashing::default();
        let first = req("z9hG4bK1", "INVITE");
        let m = scan(&first).unwrap();
        let ours = h.stateless_branch(&m);
        // The same request comes back with our Via under another hop's Via.
        let back = String::from_utf8(first.clone()).unwrap().replacen(
            "Via: ",
            &format!("Via: SIP/2.0/UDP other:5060;branch=z9hG4bKo\r\nVia: SIP/2.0/UDP edge:5060;branch={ours}\r\nVia: "),
            1,
        );
        let is_edge = |v: &crate::Via<'_>| v.host() == b"edge";
        assert!(h.is_loop(&scan(back.as_bytes()).unwrap(), is_edge));
        // Spiral: the Request-URI changed on the way.
        let spiral = back.replacen("INVITE sip:b@x", "INVITE sip:c@x", 1);
        assert!(!h.is_loop(&scan(spiral.as_bytes()).unwrap(), is_edge));
        assert!(!h.is_loop(&m, is_edge));
    }

    #[test]
    fn affinity_key_is_stable_across_processes() {
        // Recorded value: edges and workers of every version must agree.
        assert_eq!(
            Hashing::default().affinity_key(b"a84b4c76e66710@pc33.atlanta.com"),
            AFFINITY_REF
        );
    }

    #[test]
    fn an_aors_key_is_the_hash_of_its_bytes_whatever_the_hosts_case_or_port() {
        let h = Hashing::with_key(1, 2);
        let a = "sip:alice@Example.COM:5070;transport=udp";
        let b = "sips:alice@example.com";
        let ua = crate::Uri::parse(a.as_bytes(), crate::Span::new(0, a.len())).unwrap();
        let ub = crate::Uri::parse(b.as_bytes(), crate::Span::new(0, b.len())).unwrap();
        assert_eq!(aor(&ua), b"alice@example.com");
        assert_eq!(h.aor_key(&ua), h.affinity_key(b"alice@example.com"));
        assert_eq!(h.aor_key(&ua), h.aor_key(&ub));
        let long = format!("sip:bob@{}.example", "X".repeat(150));
        let ul = crate::Uri::parse(long.as_bytes(), crate::Span::new(0, long.len())).unwrap();
        assert_eq!(h.aor_key(&ul), h.affinity_key(&aor(&ul)));
    }

    const AFFINITY_REF: u64 = 6_975_771_465_790_492_611;

    #[test]
    fn a_key_token_opens_only_with_its_key_its_binding_and_the_secret() {
        let h = Hashing::with_key(1, 2);
        let t = h.key_token(0xfeed, Bound::CallId, b"c@x");
        assert_eq!(&t[..16], b"000000000000feed");
        assert_eq!(h.open_key_token(&t, Bound::CallId, b"c@x"), Some(0xfeed));
        // Another Call-ID, the other binding, another secret: refused.
        assert_eq!(h.open_key_token(&t, Bound::CallId, b"c@y"), None);
        assert_eq!(h.open_key_token(&t, Bound::Branch, b"c@x"), None);
        let other = Hashing::with_key(1, 3);
        assert_eq!(other.open_key_token(&t, Bound::CallId, b"c@x"), None);
        // The key changed under its tag, a bare key, a cut token, junk.
        let mut forged = t;
        forged[15] = b'c';
        assert_eq!(h.open_key_token(&forged, Bound::CallId, b"c@x"), None);
        for bad in [&t[..16], &t[..31], b"zz000000000000000000000000000000", b""] {
            assert_eq!(h.open_key_token(bad, Bound::CallId, b"c@x"), None);
        }
        // Upper-case hex is the same token.
        let upper = t.to_ascii_uppercase();
        assert_eq!(
            h.open_key_token(&upper, Bound::CallId, b"c@x"),
            Some(0xfeed)
        );
        // Inside the cluster the key is read without its tag.
        assert_eq!(key_of_token(&t), Some(0xfeed));
        assert_eq!(key_of_token(b"1"), Some(1));
        assert_eq!(key_of_token(b""), None);
    }
}
