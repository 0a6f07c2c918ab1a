//! Digest authentication of phones (RFC 3261 §22, RFC 7616; SHA-256 for
//! SIP by RFC 8760): challenges, the check of a request's credentials, and
//! the users file of HA1 hashes.
//!
//! Nonces carry their own time and a MAC keyed with the cluster secret, so
//! any worker checks any other's nonce without shared state; a nonce past
//! its lifetime with otherwise right credentials is answered
//! `stale=true`, which phones retry without asking their user. What is not
//! kept: `nc` replay counts (they would need state per nonce across the
//! cluster); a nonce's short lifetime bounds a replay instead.
//!
//! Hashing and MACs come from RustCrypto's `md-5`, `sha2` and `hmac`; only
//! the header's grammar (RFC 7616 §3.4) is parsed here, as the rest of
//! handover parses SIP.

use std::collections::HashMap;

use hmac::{Hmac, Mac as _};
use md5::Md5;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// A digest algorithm (RFC 7616 §3.2, RFC 8760).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5` (RFC 2617; what most phones still speak).
    Md5,
    /// `SHA-256` (RFC 7616, RFC 8760).
    Sha256,
}

impl Algorithm {
    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA-256",
        }
    }

    fn from_name(s: &[u8]) -> Option<Self> {
        if s.eq_ignore_ascii_case(b"MD5") {
            Some(Self::Md5)
        } else if s.eq_ignore_ascii_case(b"SHA-256") {
            Some(Self::Sha256)
        } else {
            None
        }
    }

    /// Lower-case hex of the hash of `parts` joined by `:`.
    pub fn hash(self, parts: &[&[u8]]) -> String {
        fn run<D: sha2::Digest>(mut d: D, parts: &[&[u8]]) -> String {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            hex(&d.finalize())
        }
        match self {
            Self::Md5 => run(Md5::new(), parts),
            Self::Sha256 => run(Sha256::new(), parts),
        }
    }
}

impl core::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::from_name(s.as_bytes())
            .ok_or_else(|| format!("digest algorithm `{s}` is not one of: SHA-256, MD5"))
    }
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(D[usize::from(x >> 4)] as char);
        s.push(D[usize::from(x & 15)] as char);
    }
    s
}

/// One user's HA1 hashes, one per algorithm (HA1 = H(user:realm:password)
/// depends on the algorithm).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ha1 {
    md5: String,
    sha256: String,
}

/// The users file: one line per user and realm,
/// `USER REALM HA1-MD5 HA1-SHA-256` (lower-case hex), `#` comments and
/// blank lines ignored. `handover passwd` writes it; no password is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    by_name: HashMap<(String, String), Ha1>,
}

impl Users {
    /// Parses a users file; an error names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut by_name = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            let ok_hex =
                |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
            match f.as_slice() {
                [user, realm, md5, sha] if ok_hex(md5, 32) && ok_hex(sha, 64) => {
                    by_name.insert(
                        ((*user).to_owned(), (*realm).to_owned()),
                        Ha1 {
                            md5: md5.to_ascii_lowercase(),
                            sha256: sha.to_ascii_lowercase(),
                        },
                    );
                }
                _ => {
                    return Err(format!(
                        "line {}: expected `USER REALM HA1-MD5 HA1-SHA-256` (32 and 64 hex digits)",
                        i + 1
                    ));
                }
            }
        }
        Ok(Self { by_name })
    }

    /// The line of the users file for `user` in `realm` with `password`.
    pub fn line(user: &str, realm: &str, password: &str) -> String {
        let parts: [&[u8]; 3] = [user.as_bytes(), realm.as_bytes(), password.as_bytes()];
        format!(
            "{user} {realm} {} {}",
            Algorithm::Md5.hash(&parts),
            Algorithm::Sha256.hash(&parts)
        )
    }

    /// How many users.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// No users.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    fn ha1(&self, user: &[u8], realm: &str, alg: Algorithm) -> Option<&str> {
        let user = core::str::from_utf8(user).ok()?;
        let h = self.by_name.get(&(user.to_owned(), realm.to_owned()))?;
        Some(match alg {
            Algorithm::Md5 => &h.md5,
            Algorithm::Sha256 => &h.sha256,
        })
    }
}

/// Why credentials were refused (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No such user in the realm.
    UnknownUser,
    /// The response does not match (a wrong password).
    WrongPassword,
    /// Credentials that do not parse, or name an algorithm or qop we did
    /// not offer.
    Malformed,
    /// A nonce we did not make (another cluster key, or forged).
    BadNonce,
}

impl Failure {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::UnknownUser => "unknown_user",
            Self::WrongPassword => "wrong_password",
            Self::Malformed => "malformed",
            Self::BadNonce => "bad_nonce",
        }
    }
}

/// What a request's credentials are worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Authenticated as this user.
    Ok(Vec<u8>),
    /// No credentials for our realm: challenge.
    Missing,
    /// Right credentials on a nonce past its lifetime: challenge with
    /// `stale=true`.
    Stale,
    /// Refused: challenge again (and count).
    Failed(Failure),
}

/// Digest settings and the users (see the module docs).
#[derive(Debug, Clone)]
pub struct Digest {
    realm: String,
    algorithms: Vec<Algorithm>,
    key: [u8; 16],
    nonce_ttl_s: u64,
    users: Users,
}

/// The header names of the two kinds of challenge (RFC 3261 §22.2, §22.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 401 with WWW-Authenticate; the phone answers with Authorization
    /// (a registrar, REGISTER).
    Www,
    /// 407 with Proxy-Authenticate; Proxy-Authorization (a proxy or a
    /// B2BUA, a call).
    Proxy,
}

impl Kind {
    /// The status of the challenge.
    pub fn status(self) -> u16 {
        match self {
            Self::Www => 401,
            Self::Proxy => 407,
        }
    }

    /// The challenge's header name.
    pub fn challenge_header(self) -> &'static str {
        match self {
            Self::Www => "WWW-Authenticate",
            Self::Proxy => "Proxy-Authenticate",
        }
    }

    fn credentials_header(self) -> &'static [u8] {
        match self {
            Self::Www => b"authorization",
            Self::Proxy => b"proxy-authorization",
        }
    }
}

impl Digest {
    /// `algorithms` in the order offered (some phones read only the first
    /// challenge); `key` is the cluster secret; nonces live `nonce_ttl_s`.
    pub fn new(
        realm: String,
        algorithms: Vec<Algorithm>,
        key: [u8; 16],
        nonce_ttl_s: u64,
        users: Users,
    ) -> Self {
        Self {
            realm,
            algorithms,
            key,
            nonce_ttl_s: nonce_ttl_s.max(1),
            users,
        }
    }

    /// The realm challenged.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Replaces the users (the file changed).
    pub fn set_users(&mut self, users: Users) {
        self.users = users;
    }

    fn mac(&self, ts: u64) -> [u8; 12] {
        let mut m = <Hmac<Sha256>>::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(b"handover digest nonce\0");
        m.update(&ts.to_be_bytes());
        m.update(self.realm.as_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 12];
        out.copy_from_slice(&full[..12]);
        out
    }

    /// A nonce made at `now_s` (Unix seconds): 16 hex digits of the time,
    /// 24 of its MAC.
    pub fn nonce(&self, now_s: u64) -> String {
        let mut s = format!("{now_s:016x}");
        s.push_str(&hex(&self.mac(now_s)));
        s
    }

    /// The time a nonce of ours was made, or `None` for one we did not make.
    fn nonce_time(&self, nonce: &[u8]) -> Option<u64> {
        if nonce.len() != 40 {
            return None;
        }
        let ts = u64::from_str_radix(core::str::from_utf8(&nonce[..16]).ok()?, 16).ok()?;
        let want = hex(&self.mac(ts));
        bool::from(want.as_bytes().ct_eq(&nonce[16..])).then_some(ts)
    }

    /// The challenge header values, one per algorithm in the order offered.
    pub fn challenges(&self, now_s: u64, stale: bool) -> Vec<Vec<u8>> {
        let nonce = self.nonce(now_s);
        self.algorithms
            .iter()
            .map(|a| {
                format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{}",
                    self.realm,
                    a.name(),
                    if stale { ", stale=true" } else { "" }
                )
                .into_bytes()
            })
            .collect()
    }

    /// The user named in the credentials `m` carries for our realm (empty
    /// when none): what the failure guard counts by.
    pub fn username(&self, m: &handover_sip::Message<'_>, kind: Kind) -> Vec<u8> {
        let buf = m.buf();
        m.headers()
            .filter(|h| {
                h.name_span
                    .of(buf)
                    .eq_ignore_ascii_case(kind.credentials_header())
            })
            .filter_map(|h| Params::parse(h.value.of(buf)))
            .find(|p| p.get(b"realm") == Some(self.realm.as_bytes()))
            .and_then(|p| p.get(b"username").map(<[u8]>::to_vec))
            .unwrap_or_default()
    }

    /// Checks the credentials `m` carries for our realm (`kind` says which
    /// header), at `now_s`.
    pub fn check(&self, m: &handover_sip::Message<'_>, kind: Kind, now_s: u64) -> Check {
        let buf = m.buf();
        let mut found = None;
        for h in m.headers() {
            if !h
                .name_span
                .of(buf)
                .eq_ignore_ascii_case(kind.credentials_header())
            {
                continue;
            }
            let Some(p) = Params::parse(h.value.of(buf)) else {
                return Check::Failed(Failure::Malformed);
            };
            if p.get(b"realm") == Some(self.realm.as_bytes()) {
                found = Some(p);
                break;
            }
        }
        let Some(p) = found else {
            return Check::Missing;
        };
        self.check_params(&p, m.method_bytes(), now_s)
    }

    fn check_params(&self, p: &Params<'_>, method: &[u8], now_s: u64) -> Check {
        let (Some(user), Some(nonce), Some(uri), Some(resp)) = (
            p.get(b"username"),
            p.get(b"nonce"),
            p.get(b"uri"),
            p.get(b"response"),
        ) else {
            return Check::Failed(Failure::Malformed);
        };
        let alg = match p.get(b"algorithm") {
            None => Algorithm::Md5,
            Some(a) => match Algorithm::from_name(a) {
                Some(a) if self.algorithms.contains(&a) => a,
                _ => return Check::Failed(Failure::Malformed),
            },
        };
        let Some(made) = self.nonce_time(nonce) else {
            return Check::Failed(Failure::BadNonce);
        };
        let Some(ha1) = self.users.ha1(user, &self.realm, alg) else {
            return Check::Failed(Failure::UnknownUser);
        };
        let ha2 = alg.hash(&[method, uri]);
        let want = match p.get(b"qop") {
            None => alg.hash(&[ha1.as_bytes(), nonce, ha2.as_bytes()]),
            Some(q) if q.eq_ignore_ascii_case(b"auth") => {
                let (Some(nc), Some(cnonce)) = (p.get(b"nc"), p.get(b"cnonce")) else {
                    return Check::Failed(Failure::Malformed);
                };
                alg.hash(&[ha1.as_bytes(), nonce, nc, cnonce, b"auth", ha2.as_bytes()])
            }
            Some(_) => return Check::Failed(Failure::Malformed),
        };
        if !bool::from(want.as_bytes().ct_eq(&resp.to_ascii_lowercase())) {
            return Check::Failed(Failure::WrongPassword);
        }
        // A nonce from the future (a clock behind ours elsewhere in the
        // cluster) is as good as a fresh one.
        if now_s.saturating_sub(made) > self.nonce_ttl_s {
            return Check::Stale;
        }
        Check::Ok(user.to_vec())
    }
}

/// The parameters of a `Digest` credentials value (RFC 7616 §3.4): names
/// in lower case, quoted values unquoted (a backslash escape keeps the
/// next byte; values with escapes are copied, the rest borrowed).
#[derive(Debug)]
struct Params<'a> {
    pairs: Vec<(Vec<u8>, std::borrow::Cow<'a, [u8]>)>,
}

impl<'a> Params<'a> {
    fn parse(v: &'a [u8]) -> Option<Self> {
        let v = v.trim_ascii();
        if v.len() < 6 || !v[..6].eq_ignore_ascii_case(b"digest") {
            return None;
        }
        let mut s = v[6..].trim_ascii_start();
        let mut pairs = Vec::new();
        while !s.is_empty() {
            let eq = s.iter().position(|&b| b == b'=')?;
            let name = s[..eq].trim_ascii().to_ascii_lowercase();
            s = s[eq + 1..].trim_ascii_start();
            let value;
            if s.first() == Some(&b'"') {
                let mut i = 1;
                let mut owned: Option<Vec<u8>> = None;
                loop {
                    match *s.get(i)? {
                        b'"' => break,
                        b'\\' => {
                            let o = owned.get_or_insert_with(|| s[1..i].to_vec());
                            o.push(*s.get(i + 1)?);
                            i += 2;
                        }
                        b => {
                            if let Some(o) = owned.as_mut() {
                                o.push(b);
                            }
                            i += 1;
                        }
                    }
                }
                value = match owned {
                    Some(o) => std::borrow::Cow::Owned(o),
                    None => std::borrow::Cow::Borrowed(&s[1..i]),
                };
                s = &s[i + 1..];
            } else {
                let end = s.iter().position(|&b| b == b',').unwrap_or(s.len());
                value = std::borrow::Cow::Borrowed(s[..end].trim_ascii());
                s = &s[end..];
            }
            pairs.push((name, value));
            s = s.trim_ascii_start();
            match s.first() {
                Some(b',') => s = s[1..].trim_ascii_start(),
                None => {}
                Some(_) => return None,
            }
        }
        Some(Self { pairs })
    }

    fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        let users = Users::parse(&format!(
            "# test users\n{}\n",
            Users::line("alice", "example.com", "s3cret")
        ))
        .unwrap();
        Digest::new(
            "example.com".into(),
            vec![Algorithm::Sha256, Algorithm::Md5],
            [7; 16],
            300,
            users,
        )
    }

    /// What a phone sends back for a challenge (RFC 7616 §3.4.1).
    fn answer(
        alg: Algorithm,
        user: &str,
        password: &str,
        nonce: &str,
        method: &str,
        uri: &str,
    ) -> String {
        let ha1 = alg.hash(&[user.as_bytes(), b"example.com", password.as_bytes()]);
        let ha2 = alg.hash(&[method.as_bytes(), uri.as_bytes()]);
        let resp = alg.hash(&[
            ha1.as_bytes(),
            nonce.as_bytes(),
            b"00000001",
            b"0a4f113b",
            b"auth",
            ha2.as_bytes(),
        ]);
        format!(
            "Digest username=\"{user}\", realm=\"example.com\", nonce=\"{nonce}\", uri=\"{uri}\", \
response=\"{resp}\", algorithm={}, cnonce=\"0a4f113b\", qop=auth, nc=00000001",
            alg.name()
        )
    }

    fn register(auth: &str) -> Vec<u8> {
        format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKr\r\n\
Max-Forwards: 70\r\nTo: <sip:alice@example.com>\r\nFrom: <sip:alice@example.com>;tag=1\r\n\
Call-ID: r@x\r\nCSeq: 2 REGISTER\r\nAuthorization: {auth}\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn check(d: &Digest, auth: &str, now: u64) -> Check {
        let b = register(auth);
        d.check(&handover_sip::scan(&b).unwrap(), Kind::Www, now)
    }

    #[test]
    fn rfc7616_both_algorithms_authenticate_and_wrong_ones_are_refused() {
        let d = digest();
        let ch = d.challenges(1_000, false);
        assert_eq!(ch.len(), 2);
        let first = String::from_utf8(ch[0].clone()).unwrap();
        assert!(first.contains("algorithm=SHA-256") && first.contains("qop=\"auth\""));
        assert!(
            String::from_utf8(ch[1].clone())
                .unwrap()
                .contains("algorithm=MD5")
        );
        let nonce = d.nonce(1_000);
        for alg in [Algorithm::Sha256, Algorithm::Md5] {
            let ok = answer(
                alg,
                "alice",
                "s3cret",
                &nonce,
                "REGISTER",
                "sip:example.com",
            );
            assert_eq!(check(&d, &ok, 1_010), Check::Ok(b"alice".to_vec()));
            let bad = answer(alg, "alice", "guess", &nonce, "REGISTER", "sip:example.com");
            assert_eq!(
                check(&d, &bad, 1_010),
                Check::Failed(Failure::WrongPassword)
            );
        }
        let who = answer(Algorithm::Md5, "mallory", "x", &nonce, "REGISTER", "sip:e");
        assert_eq!(check(&d, &who, 1_010), Check::Failed(Failure::UnknownUser));
        // The method is part of the hash: an INVITE's answer does not register.
        let inv = answer(Algorithm::Md5, "alice", "s3cret", &nonce, "INVITE", "sip:e");
        assert_eq!(
            check(&d, &inv, 1_010),
            Check::Failed(Failure::WrongPassword)
        );
    }

    #[test]
    fn a_nonce_is_ours_only_with_its_mac_and_stale_after_its_lifetime() {
        let d = digest();
        let nonce = d.nonce(1_000);
        let late = answer(
            Algorithm::Md5,
            "alice",
            "s3cret",
            &nonce,
            "REGISTER",
            "sip:e",
        );
        assert_eq!(check(&d, &late, 1_301), Check::Stale);
        // Another cluster's nonce (another key), or a changed time.
        let other = Digest::new(
            "example.com".into(),
            vec![Algorithm::Md5],
            [8; 16],
            300,
            Users::default(),
        );
        let theirs = answer(
            Algorithm::Md5,
            "alice",
            "s3cret",
            &other.nonce(1_000),
            "REGISTER",
            "sip:e",
        );
        assert_eq!(check(&d, &theirs, 1_010), Check::Failed(Failure::BadNonce));
        let forged = format!("{:016x}{}", 2_000u64, &nonce[16..]);
        let f = answer(
            Algorithm::Md5,
            "alice",
            "s3cret",
            &forged,
            "REGISTER",
            "sip:e",
        );
        assert_eq!(check(&d, &f, 2_010), Check::Failed(Failure::BadNonce));
    }

    #[test]
    fn credentials_for_another_realm_or_garbage_are_not_ours() {
        let d = digest();
        assert_eq!(
            check(
                &d,
                "Digest username=\"alice\", realm=\"other\", nonce=\"x\"",
                1
            ),
            Check::Missing
        );
        assert_eq!(
            check(&d, "Basic YWxpY2U6eA==", 1),
            Check::Failed(Failure::Malformed)
        );
        assert_eq!(
            check(&d, "Digest realm=\"example.com\", username=\"al\\\"ice", 1),
            Check::Failed(Failure::Malformed)
        );
        assert_eq!(
            check(&d, "Digest realm=\"example.com\", username=alice", 1),
            Check::Failed(Failure::Malformed)
        );
        assert!(Users::parse("alice example.com 123 456\n").is_err());
    }

    #[test]
    fn quoted_values_keep_escaped_bytes() {
        let p = Params::parse(br#"Digest username="a\"b", realm="r", nc=00000001"#).unwrap();
        assert_eq!(p.get(b"username"), Some(&b"a\"b"[..]));
        assert_eq!(p.get(b"nc"), Some(&b"00000001"[..]));
    }
}

/// Sources that keep failing authentication. Counted per source address
/// *and* user: after `max_failures` within `window_s` that user is answered
/// 403 once from that address and then ignored for `ban_s` (a phone with a
/// wrong password, or a guess at one account), while the other phones
/// behind the same address (an office's NAT) go on. An address that fails
/// ten times as often, over any users (a scanner), is banned whole.
/// Bounded: past `MAX_SOURCES` tracked keys the state is dropped wholesale
/// (a flood of sources gets no memory).
#[derive(Debug, Clone)]
pub struct Guard {
    max_failures: u32,
    window_s: u64,
    ban_s: u64,
    /// (source, user; empty: the whole source) -> (failures, window
    /// start in Unix s, banned until).
    keys: HashMap<(std::net::IpAddr, Vec<u8>), (u32, u64, u64)>,
}

const MAX_SOURCES: usize = 65_536;

/// What the guard says of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Go on.
    Good,
    /// Just crossed the line: answer 403.
    Forbid,
    /// Banned: drop.
    Ignore,
}

impl Guard {
    /// A guard (`max_failures` 0: never bans).
    pub fn new(max_failures: u32, window_s: u64, ban_s: u64) -> Self {
        Self {
            max_failures,
            window_s,
            ban_s,
            keys: HashMap::new(),
        }
    }

    fn banned_key(&self, key: &(std::net::IpAddr, Vec<u8>), now_s: u64) -> bool {
        self.keys
            .get(key)
            .is_some_and(|&(_, _, until)| now_s < until)
    }

    /// Whether `user` (empty: unknown) from `ip` is banned at `now_s`.
    pub fn banned(&self, ip: std::net::IpAddr, user: &[u8], now_s: u64) -> bool {
        self.banned_key(&(ip, Vec::new()), now_s)
            || (!user.is_empty() && self.banned_key(&(ip, user.to_vec()), now_s))
    }

    /// Counts one key's failure against `limit`.
    fn count(&mut self, key: (std::net::IpAddr, Vec<u8>), limit: u32, now_s: u64) -> Standing {
        if self.keys.len() >= MAX_SOURCES && !self.keys.contains_key(&key) {
            self.keys.retain(|_, &mut (_, _, until)| now_s < until);
            if self.keys.len() >= MAX_SOURCES {
                self.keys.clear();
            }
        }
        let e = self.keys.entry(key).or_insert((0, now_s, 0));
        if now_s < e.2 {
            return Standing::Ignore;
        }
        if now_s.saturating_sub(e.1) >= self.window_s {
            *e = (0, now_s, 0);
        }
        e.0 += 1;
        if e.0 >= limit {
            *e = (0, now_s, now_s.saturating_add(self.ban_s));
            return Standing::Forbid;
        }
        Standing::Good
    }

    /// Counts a failure of `user` (empty: unknown) from `ip`; says whether
    /// it crossed a line.
    pub fn fail(&mut self, ip: std::net::IpAddr, user: &[u8], now_s: u64) -> Standing {
        if self.max_failures == 0 {
            return Standing::Good;
        }
        let whole = self.count(
            (ip, Vec::new()),
            self.max_failures.saturating_mul(10),
            now_s,
        );
        let one = if user.is_empty() {
            Standing::Good
        } else {
            self.count((ip, user.to_vec()), self.max_failures, now_s)
        };
        match (whole, one) {
            (Standing::Ignore, _) | (_, Standing::Ignore) => Standing::Ignore,
            (Standing::Forbid, _) | (_, Standing::Forbid) => Standing::Forbid,
            _ => Standing::Good,
        }
    }

    /// A success of `user` from `ip` clears its failures.
    pub fn pass(&mut self, ip: std::net::IpAddr, user: &[u8]) {
        let key = (ip, user.to_vec());
        if self.keys.get(&key).is_some_and(|e| e.2 == 0) {
            self.keys.remove(&key);
        }
    }
}

#[cfg(test)]
mod guard_tests {
    use super::*;

    #[test]
    fn a_user_failing_again_and_again_is_forbidden_then_ignored_and_its_neighbours_are_not() {
        let mut g = Guard::new(3, 60, 30);
        let ip: std::net::IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(g.fail(ip, b"alice", 100), Standing::Good);
        assert_eq!(g.fail(ip, b"alice", 101), Standing::Good);
        assert_eq!(g.fail(ip, b"alice", 102), Standing::Forbid);
        assert!(g.banned(ip, b"alice", 131));
        assert!(
            !g.banned(ip, b"bob", 131),
            "another phone behind the same address"
        );
        assert!(!g.banned(ip, b"alice", 132));
        // Failures spread over more than the window never add up.
        assert_eq!(g.fail(ip, b"alice", 200), Standing::Good);
        assert_eq!(g.fail(ip, b"alice", 201), Standing::Good);
        assert_eq!(g.fail(ip, b"alice", 262), Standing::Good);
        // A scanner trying many users: the address as a whole, at ten times.
        let scanner: std::net::IpAddr = "198.51.100.1".parse().unwrap();
        let verdicts: Vec<Standing> = (0..30u32)
            .map(|i| g.fail(scanner, format!("u{i}").as_bytes(), 300))
            .collect();
        assert_eq!(
            verdicts.iter().filter(|&&v| v == Standing::Forbid).count(),
            1
        );
        assert!(g.banned(scanner, b"anyone", 301));
    }
}
