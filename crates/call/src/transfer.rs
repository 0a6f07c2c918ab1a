//! What the B2BUA reads and rewrites in a transfer (RFC 3515 REFER, RFC
//! 3891 Replaces): the Refer-To target, checked, and rewritten so that it
//! names only what the receiving party can reach.
//!
//! - A REFER needs exactly one Refer-To (RFC 3515 §2.4.1) whose URI is
//!   `sip:`, `sips:` or `tel:` (what a new call through the cluster can
//!   carry); anything else is answered 400 and not relayed.
//! - An IP address in the Refer-To host is one only the transferor could
//!   reach (a phone or server behind the cluster): it becomes the edge's
//!   advertised address, so the transferee's INVITE comes back through
//!   the cluster. A domain name is kept (it is a name, not topology, and
//!   domain routes need it).
//! - A `Replaces` in the Refer-To's headers names a dialog between the
//!   transferor and the cluster; the B2BUA translates it to the dialog the
//!   cluster has with the party on the other side of that call (its
//!   Call-ID and tags as that party knows them), so the transferee's
//!   INVITE with Replaces matches a dialog at the target.
//!
//! Written by hand (no crate parses RFC 3891 from a URI header): it is the
//! product's core, and small.

use handover_sip::{Message, NameAddr, Scheme, Span};

/// Why a REFER's Refer-To cannot be used (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferToError {
    /// No Refer-To header.
    Missing,
    /// More than one Refer-To value.
    Several,
    /// The value does not parse.
    Malformed,
    /// A URI scheme a call cannot be placed to (not sip, sips or tel).
    Unsupported,
}

impl ReferToError {
    /// The reason phrase of the 400 that answers it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "Missing Refer-To",
            Self::Several => "More Than One Refer-To",
            Self::Malformed => "Malformed Refer-To",
            Self::Unsupported => "Unsupported Refer-To URI",
        }
    }
}

/// A `Replaces` value: `call-id;to-tag=…;from-tag=…[;early-only]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaces {
    /// The dialog's Call-ID.
    pub call_id: Vec<u8>,
    /// Matched against the local tag of whoever receives it.
    pub to_tag: Vec<u8>,
    /// Matched against the remote tag of whoever receives it.
    pub from_tag: Vec<u8>,
    /// `early-only` was present.
    pub early_only: bool,
}

impl Replaces {
    /// Parses a header value (already unescaped).
    pub fn parse(v: &[u8]) -> Option<Self> {
        let mut parts = v.split(|&b| b == b';');
        let call_id = trim(parts.next()?);
        if call_id.is_empty() {
            return None;
        }
        let (mut to_tag, mut from_tag, mut early_only) = (None, None, false);
        for p in parts {
            let p = trim(p);
            let (name, value) = match p.iter().position(|&b| b == b'=') {
                Some(i) => (trim(&p[..i]), Some(trim(&p[i + 1..]))),
                None => (p, None),
            };
            if name.eq_ignore_ascii_case(b"to-tag") {
                to_tag = value;
            } else if name.eq_ignore_ascii_case(b"from-tag") {
                from_tag = value;
            } else if name.eq_ignore_ascii_case(b"early-only") {
                early_only = true;
            }
        }
        Some(Self {
            call_id: call_id.to_vec(),
            to_tag: to_tag.filter(|t| !t.is_empty())?.to_vec(),
            from_tag: from_tag.filter(|t| !t.is_empty())?.to_vec(),
            early_only,
        })
    }

    /// The header value.
    pub fn to_value(&self) -> Vec<u8> {
        let mut v = self.call_id.clone();
        v.extend_from_slice(b";to-tag=");
        v.extend_from_slice(&self.to_tag);
        v.extend_from_slice(b";from-tag=");
        v.extend_from_slice(&self.from_tag);
        if self.early_only {
            v.extend_from_slice(b";early-only");
        }
        v
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    &b[s..e]
}

/// `%XX` unescaped (invalid escapes kept as they are).
pub fn unescape(b: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Escapes a URI header value: everything but RFC 3261's `unreserved`
/// and the `hnv-unreserved` that need no escape (`[ ] / ? : + $`) becomes
/// `%XX`, so `;`, `=`, `@`, `&` and `%` inside a Call-ID are safe.
pub fn escape(b: &[u8], out: &mut Vec<u8>) {
    for &c in b {
        if c.is_ascii_alphanumeric() || b"-_.!~*'()[]/?:+$".contains(&c) {
            out.push(c);
        } else {
            out.extend_from_slice(format!("%{c:02X}").as_bytes());
        }
    }
}

/// A REFER's target.
#[derive(Debug, Clone)]
pub struct ReferTo<'a> {
    buf: &'a [u8],
    na: NameAddr<'a>,
    /// The `Replaces` in the URI's headers, unescaped and parsed (attended
    /// transfer).
    pub replaces: Option<Replaces>,
}

/// Reads and checks the Refer-To of REFER `m`.
pub fn refer_to<'a>(m: &Message<'a>) -> Result<ReferTo<'a>, ReferToError> {
    let buf = m.buf();
    let mut values = m.values(handover_sip::HeaderName::ReferTo);
    let v = values.next().ok_or(ReferToError::Missing)?;
    if values.next().is_some() {
        return Err(ReferToError::Several);
    }
    let na = NameAddr::parse(buf, v).map_err(|_| ReferToError::Malformed)?;
    if !matches!(na.uri().scheme(), Scheme::Sip | Scheme::Sips | Scheme::Tel) {
        return Err(ReferToError::Unsupported);
    }
    let replaces = na.uri().headers().and_then(|h| {
        h.split(|&b| b == b'&').find_map(|kv| {
            let i = kv.iter().position(|&b| b == b'=')?;
            kv[..i]
                .eq_ignore_ascii_case(b"replaces")
                .then(|| Replaces::parse(&unescape(&kv[i + 1..])))
                .flatten()
        })
    });
    Ok(ReferTo { buf, na, replaces })
}

/// True for an IPv4 or bracketed IPv6 host.
fn is_ip(host: &[u8]) -> bool {
    host.starts_with(b"[")
        || core::str::from_utf8(host).is_ok_and(|h| h.parse::<std::net::Ipv4Addr>().is_ok())
}

impl<'a> ReferTo<'a> {
    /// The target URI.
    pub fn uri(&self) -> &handover_sip::Uri<'a> {
        self.na.uri()
    }

    /// Whether the transfer is attended (a `Replaces` in the target).
    pub fn attended(&self) -> bool {
        self.replaces.is_some()
    }

    /// The Refer-To value to relay: an IP host becomes `advertised`, a
    /// `Replaces` becomes `replaces` (when the B2BUA knows the dialog it
    /// names; otherwise it is kept), everything else as it was.
    pub fn rewritten(&self, advertised: &str, replaces: Option<&Replaces>) -> Vec<u8> {
        rewrite(self.buf, &self.na, advertised, replaces, None)
    }

    /// [`Self::rewritten`] with the URI's `k` parameter (our Contact's
    /// shard key token), if it has one, set to `k`: a token bound to the
    /// replaced dialog's Call-ID must follow its translated `Replaces`.
    pub fn rewritten_with_key(
        &self,
        advertised: &str,
        replaces: Option<&Replaces>,
        k: &[u8],
    ) -> Vec<u8> {
        rewrite(self.buf, &self.na, advertised, replaces, Some(k))
    }
}

/// A name-addr (Refer-To, Referred-By) with an IP host replaced by
/// `advertised` and, if given, the `Replaces` URI header by `replaces`;
/// the display name, user, URI parameters, other URI headers and header
/// parameters as they were. Always written in `<…>`.
pub fn rewrite_name_addr(
    buf: &[u8],
    na: &NameAddr<'_>,
    advertised: &str,
    replaces: Option<&Replaces>,
) -> Vec<u8> {
    rewrite(buf, na, advertised, replaces, None)
}

fn rewrite(
    buf: &[u8],
    na: &NameAddr<'_>,
    advertised: &str,
    replaces: Option<&Replaces>,
    k: Option<&[u8]>,
) -> Vec<u8> {
    let u = na.uri();
    let us = u.span();
    let mut out = Vec::new();
    if let Some(d) = na.display() {
        out.extend_from_slice(d);
        out.push(b' ');
    }
    out.push(b'<');
    if u.scheme() == Scheme::Tel {
        out.extend_from_slice(u.as_bytes());
    } else {
        let hs = u.host_span();
        // Scheme and user, then the host and port, then the parameters.
        out.extend_from_slice(&buf[us.start..hs.start]);
        let ps = u.params_span();
        if is_ip(u.host()) {
            out.extend_from_slice(advertised.as_bytes());
        } else {
            out.extend_from_slice(&buf[hs.start..ps.start]);
        }
        match k {
            None => out.extend_from_slice(ps.of(buf)),
            Some(k) => {
                for p in ps.of(buf).split(|&b| b == b';').filter(|p| !p.is_empty()) {
                    out.push(b';');
                    if p.len() >= 2 && p[..2].eq_ignore_ascii_case(b"k=") {
                        out.extend_from_slice(b"k=");
                        out.extend_from_slice(k);
                    } else {
                        out.extend_from_slice(p);
                    }
                }
            }
        }
        if let Some(h) = u.headers() {
            for (i, kv) in h.split(|&b| b == b'&').enumerate() {
                out.push(if i == 0 { b'?' } else { b'&' });
                let is_replaces = kv.len() > 9 && kv[..9].eq_ignore_ascii_case(b"replaces=");
                match (is_replaces, replaces) {
                    (true, Some(r)) => {
                        out.extend_from_slice(b"Replaces=");
                        escape(&r.to_value(), &mut out);
                    }
                    _ => out.extend_from_slice(kv),
                }
            }
        }
    }
    out.push(b'>');
    let p: Span = na.params_span();
    out.extend_from_slice(p.of(buf));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refer(refer_to: &[&str]) -> Vec<u8> {
        let mut s = String::from(
            "REFER sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\n\
From: <sip:b@x>;tag=1\r\nTo: <sip:a@y>;tag=2\r\nCall-ID: c\r\nCSeq: 1 REFER\r\nMax-Forwards: 70\r\n",
        );
        for r in refer_to {
            s += &format!("Refer-To: {r}\r\n");
        }
        s += "Content-Length: 0\r\n\r\n";
        s.into_bytes()
    }

    fn check(refer_to: &[&str]) -> Result<(bool, String), ReferToError> {
        let b = refer(refer_to);
        let m = handover_sip::scan(&b).unwrap();
        let r = refer_to_of(&m)?;
        Ok((
            r.attended(),
            String::from_utf8(r.rewritten("192.0.2.1:5060", None)).unwrap(),
        ))
    }

    fn refer_to_of<'a>(m: &Message<'a>) -> Result<ReferTo<'a>, ReferToError> {
        refer_to(m)
    }

    #[test]
    fn bad_refer_to_is_named() {
        assert_eq!(check(&[]).unwrap_err(), ReferToError::Missing);
        assert_eq!(
            check(&["<sip:c@10.0.0.5>", "<sip:d@10.0.0.5>"]).unwrap_err(),
            ReferToError::Several
        );
        assert_eq!(
            check(&["<http://example.com/>"]).unwrap_err(),
            ReferToError::Unsupported
        );
        assert_eq!(check(&["<sip:c@>"]).unwrap_err(), ReferToError::Malformed);
    }

    #[test]
    fn ip_hosts_become_the_advertised_address_names_stay() {
        assert_eq!(
            check(&["\"Carol\" <sip:c@10.0.0.5:5072;transport=udp>;x=1"]).unwrap(),
            (
                false,
                "\"Carol\" <sip:c@192.0.2.1:5060;transport=udp>;x=1".into()
            )
        );
        assert_eq!(
            check(&["sip:c@pbx.example.com"]).unwrap(),
            (false, "<sip:c@pbx.example.com>".into())
        );
        assert_eq!(
            check(&["<tel:+442071234567>"]).unwrap(),
            (false, "<tel:+442071234567>".into())
        );
    }

    #[test]
    fn replaces_is_read_escaped_and_translated() {
        let b = refer(&[
            "<sip:c@10.0.0.5?Replaces=abc%40host%3Bto-tag%3D77%3Bfrom-tag%3D88&Priority=urgent>",
        ]);
        let m = handover_sip::scan(&b).unwrap();
        let r = refer_to(&m).unwrap();
        assert_eq!(
            r.replaces,
            Some(Replaces {
                call_id: b"abc@host".to_vec(),
                to_tag: b"77".to_vec(),
                from_tag: b"88".to_vec(),
                early_only: false
            })
        );
        let t = Replaces {
            call_id: b"x%y@z".to_vec(),
            to_tag: b"c1".to_vec(),
            from_tag: b"h1".to_vec(),
            early_only: false,
        };
        let out = String::from_utf8(r.rewritten("192.0.2.1:5060", Some(&t))).unwrap();
        assert_eq!(
            out,
            "<sip:c@192.0.2.1:5060?Replaces=x%25y%40z%3Bto-tag%3Dc1%3Bfrom-tag%3Dh1&Priority=urgent>"
        );
        // What goes out reads back as what was meant.
        let again = refer(&[&out]);
        let m = handover_sip::scan(&again).unwrap();
        assert_eq!(refer_to(&m).unwrap().replaces, Some(t));
        assert_eq!(Replaces::parse(b"abc;to-tag=1"), None, "both tags needed");
    }

    #[test]
    fn a_key_token_is_replaced_with_the_replaces_and_nothing_else_moves() {
        let b = refer(&[
            "<sip:b2bua@10.0.0.5;K=old;lr?Replaces=abc%40host%3Bto-tag%3D77%3Bfrom-tag%3D88>",
        ]);
        let m = handover_sip::scan(&b).unwrap();
        let r = refer_to(&m).unwrap();
        let t = Replaces {
            call_id: b"c-leg".to_vec(),
            to_tag: b"c1".to_vec(),
            from_tag: b"h1".to_vec(),
            early_only: false,
        };
        assert_eq!(
            String::from_utf8(r.rewritten_with_key("192.0.2.1:5060", Some(&t), b"new")).unwrap(),
            "<sip:b2bua@192.0.2.1:5060;k=new;lr?Replaces=c-leg%3Bto-tag%3Dc1%3Bfrom-tag%3Dh1>"
        );
    }
}
