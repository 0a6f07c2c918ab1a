//! The stateless-proxy rewrite (RFC 3261 §16.6, §16.11; RFC 3581), as a
//! splice: edits are recorded as (span → replacement) and applied while
//! copying the datagram into a send buffer. Untouched bytes are copied as
//! they are, never re-serialised; nothing is allocated (replacements live in
//! a fixed scratch area inside the `Rewrite`).

use core::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::error::Reason;
use crate::lex::{CommaValues, Span};
use crate::scan::{Field, Message};
use crate::uri::Uri;
use crate::via::Rport;

/// At most this many edits per message; the proxy path needs five.
const MAX_EDITS: usize = 12;
/// Bytes of replacement text per message.
const SCRATCH: usize = 1024;

/// Why a rewrite could not be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// More edits than a `Rewrite` holds.
    #[error("too many edits")]
    TooManyEdits,
    /// Replacement text larger than the scratch area.
    #[error("replacement text too large")]
    ScratchFull,
    /// Two edits touch the same bytes.
    #[error("overlapping edits")]
    Overlap,
    /// The output buffer is too small.
    #[error("output buffer too small")]
    OutputTooSmall,
    /// There is nothing to edit (no such header).
    #[error("no such header")]
    Missing,
}

#[derive(Debug, Clone, Copy, Default)]
struct Edit {
    start: usize,
    end: usize,
    /// Range of the replacement in `scratch`.
    with: (u16, u16),
}

/// A set of edits over one scanned message. Record edits, then
/// [`Rewrite::write_to`] a send buffer.
///
/// ```
/// let dgram = b"INVITE sip:b@example.com SIP/2.0\r\n\
/// Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;rport\r\n\
/// From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\n\
/// Call-ID: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
/// let msg = handover_sip::scan(dgram).unwrap();
/// let mut rw = handover_sip::Rewrite::new(&msg);
/// rw.set_received("192.0.2.9:4000".parse().unwrap()).unwrap();
/// rw.decrement_max_forwards().unwrap().unwrap();
/// rw.prepend_via(&[b"SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKedge"]).unwrap();
/// let mut out = [0u8; 2048];
/// let n = rw.write_to(&mut out).unwrap();
/// let fwd = handover_sip::scan(&out[..n]).unwrap();
/// assert_eq!(fwd.top_via().host(), b"198.51.100.1");
/// assert_eq!(fwd.max_forwards(), Some(69));
/// ```
#[derive(Debug)]
pub struct Rewrite<'m, 'a> {
    msg: &'m Message<'a>,
    edits: [Edit; MAX_EDITS],
    n: usize,
    scratch: [u8; SCRATCH],
    used: usize,
}

/// `fmt::Write` into the free part of the scratch area.
struct Scratch<'s> {
    buf: &'s mut [u8],
    len: usize,
}

impl core::fmt::Write for Scratch<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let b = s.as_bytes();
        let dst = self
            .buf
            .get_mut(self.len..self.len + b.len())
            .ok_or(core::fmt::Error)?;
        dst.copy_from_slice(b);
        self.len += b.len();
        Ok(())
    }
}

impl<'m, 'a> Rewrite<'m, 'a> {
    /// Starts an empty rewrite of `msg`.
    pub fn new(msg: &'m Message<'a>) -> Self {
        Self {
            msg,
            edits: [Edit::default(); MAX_EDITS],
            n: 0,
            scratch: [0; SCRATCH],
            used: 0,
        }
    }

    /// Records an edit whose replacement is produced by `f` into scratch.
    fn edit_fmt(
        &mut self,
        span: Span,
        f: impl FnOnce(&mut Scratch<'_>) -> core::fmt::Result,
    ) -> Result<(), RewriteError> {
        if self.n == MAX_EDITS {
            return Err(RewriteError::TooManyEdits);
        }
        let start = self.used;
        let mut w = Scratch {
            buf: &mut self.scratch[start..],
            len: 0,
        };
        f(&mut w).map_err(|_| RewriteError::ScratchFull)?;
        let end = start + w.len;
        self.used = end;
        self.edits[self.n] = Edit {
            start: span.start,
            end: span.end,
            with: (start as u16, end as u16),
        };
        self.n += 1;
        Ok(())
    }

    /// Replaces `span` of the datagram with the concatenation of `parts`.
    pub fn replace(&mut self, span: Span, parts: &[&[u8]]) -> Result<(), RewriteError> {
        let (lo, hi) = (self.msg.start_line_span().start, self.msg.body_span().end);
        if span.start > span.end || span.start < lo || span.end > hi {
            return Err(RewriteError::Overlap);
        }
        if self.n == MAX_EDITS {
            return Err(RewriteError::TooManyEdits);
        }
        let start = self.used;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if start + total > SCRATCH {
            return Err(RewriteError::ScratchFull);
        }
        let mut at = start;
        for p in parts {
            self.scratch[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        self.used = at;
        self.edits[self.n] = Edit {
            start: span.start,
            end: span.end,
            with: (start as u16, at as u16),
        };
        self.n += 1;
        Ok(())
    }

    /// Inserts the concatenation of `parts` at byte `pos`.
    pub fn insert(&mut self, pos: usize, parts: &[&[u8]]) -> Result<(), RewriteError> {
        self.replace(Span::new(pos, pos), parts)
    }

    /// Inserts a new top Via header line, `Via: <parts…>\r\n`, above the
    /// first Via line (RFC 3261 §16.6 step 8).
    pub fn prepend_via(&mut self, value: &[&[u8]]) -> Result<(), RewriteError> {
        let at = self.msg.via_field().line.start;
        let mut parts: [&[u8]; 10] = [b""; 10];
        if value.len() > 8 {
            return Err(RewriteError::ScratchFull);
        }
        parts[0] = b"Via: ";
        parts[1..=value.len()].copy_from_slice(value);
        parts[value.len() + 1] = b"\r\n";
        self.insert(at, &parts[..value.len() + 2])
    }

    /// Sets `received` and fills `rport` on the top Via for a request that
    /// arrived from `src` (RFC 3261 §18.2.1, RFC 3581 §4). Does nothing when
    /// the sent-by already names `src`'s address and no rport was asked for.
    pub fn set_received(&mut self, src: SocketAddr) -> Result<(), RewriteError> {
        self.received(src, false)
    }

    /// [`Rewrite::set_received`] for a request that came on a stream
    /// (TCP, TLS, WebSocket): `rport` is always written with the source
    /// port, asked for or not, because the answer must go back on the very
    /// connection the request came on (RFC 3261 §18.2.2), and the source
    /// port is what names it; the sent-by port of a stream is a listening
    /// port, not the connection's.
    pub fn set_received_stream(&mut self, src: SocketAddr) -> Result<(), RewriteError> {
        self.received(src, true)
    }

    fn received(&mut self, src: SocketAddr, always_rport: bool) -> Result<(), RewriteError> {
        let via = *self.msg.top_via();
        let buf = self.msg.buf();
        let host = via.host();
        let host = host
            .strip_prefix(b"[")
            .and_then(|h| h.strip_suffix(b"]"))
            .unwrap_or(host);
        let same_ip = core::str::from_utf8(host)
            .ok()
            .and_then(|h| h.parse::<IpAddr>().ok())
            .is_some_and(|ip| ip == src.ip());
        let rport = via.rport();
        if same_ip && rport == Rport::Absent && !always_rport {
            return Ok(());
        }
        let port = src.port();
        let mut append_rport = false;
        if rport != Rport::Absent
            && let Some(p) = via.param(b"rport")
        {
            self.edit_fmt(p.whole, |w| write!(w, "rport={port}"))?;
        } else if always_rport {
            append_rport = true;
        }
        let ip = src.ip();
        let end = via.span().end;
        debug_assert!(end <= buf.len());
        match via.param(b"received") {
            Some(p) => match p.value {
                Some(v) => self.edit_fmt(v, |w| write!(w, "{ip}"))?,
                None => self.edit_fmt(p.whole, |w| write!(w, "received={ip}"))?,
            },
            // One insertion at the end of the Via for both parameters.
            None if append_rport => self.edit_fmt(Span::new(end, end), |w| {
                write!(w, ";received={ip};rport={port}")
            })?,
            None => self.edit_fmt(Span::new(end, end), |w| write!(w, ";received={ip}"))?,
        }
        if append_rport && via.param(b"received").is_some() {
            self.edit_fmt(Span::new(end, end), |w| write!(w, ";rport={port}"))?;
        }
        Ok(())
    }

    /// Decrements Max-Forwards, or adds `Max-Forwards: 70` when absent
    /// (RFC 3261 §16.6 step 3). `Ok(Err(TooManyHops))` when it is already
    /// zero: the caller answers 483 (§16.3 step 3).
    pub fn decrement_max_forwards(&mut self) -> Result<Result<(), Reason>, RewriteError> {
        match (self.msg.max_forwards_field(), self.msg.max_forwards()) {
            (Some(_), Some(0)) => Ok(Err(Reason::TooManyHops)),
            (Some(f), Some(n)) => {
                let n = n - 1;
                self.edit_fmt(f.value, |w| write!(w, "{n}"))?;
                Ok(Ok(()))
            }
            _ => {
                let end = self.msg.header_block().end;
                self.insert(end, &[b"Max-Forwards: 70\r\n"])?;
                Ok(Ok(()))
            }
        }
    }

    /// Removes the first value of a list header line: the whole line when it
    /// holds one value, else the value and its comma.
    fn remove_first_value(&mut self, f: Field) -> Result<(), RewriteError> {
        let buf = self.msg.buf();
        let mut vals = CommaValues::new(buf, f.value);
        let first = vals.next().ok_or(RewriteError::Missing)?;
        match vals.next() {
            None => self.replace(f.line, &[]),
            Some(second) => self.replace(Span::new(first.start, second.start), &[]),
        }
    }

    /// Removes the top Route value (RFC 3261 §16.4: a Route naming this
    /// proxy). The caller checks that it names us.
    pub fn remove_top_route(&mut self) -> Result<(), RewriteError> {
        let f = self.msg.route_field().ok_or(RewriteError::Missing)?;
        self.remove_first_value(f)
    }

    /// Removes the top Via value (a response passing back through a proxy,
    /// RFC 3261 §16.7 step 3).
    pub fn remove_top_via(&mut self) -> Result<(), RewriteError> {
        self.remove_first_value(self.msg.via_field())
    }

    /// Adds `;name=value` (or `;name` for `None`) to `uri`, or replaces the
    /// value of an existing parameter of that name. `uri` must come from the
    /// same message. Parameters added to an addr-spec written without `<…>`
    /// would read as header parameters: use this on the Request-URI or on
    /// bracketed URIs.
    pub fn set_uri_param(
        &mut self,
        uri: &Uri<'_>,
        name: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), RewriteError> {
        match (uri.params().get(name), value) {
            (Some(p), Some(v)) => match p.value {
                Some(old) => self.replace(old, &[v]),
                None => self.replace(p.whole, &[name, b"=", v]),
            },
            (Some(p), None) => self.replace(p.whole, &[name]),
            (None, Some(v)) => self.insert(uri.params_span().end, &[b";", name, b"=", v]),
            (None, None) => self.insert(uri.params_span().end, &[b";", name]),
        }
    }

    /// Number of bytes [`Rewrite::write_to`] will write.
    pub fn output_len(&self) -> usize {
        let m = self.msg;
        let base = m.body_span().end - m.start_line_span().start;
        self.edits[..self.n].iter().fold(base, |acc, e| {
            acc + usize::from(e.with.1 - e.with.0) - (e.end - e.start)
        })
    }

    /// Writes the rewritten message into `out`; returns its length.
    pub fn write_to(&self, out: &mut [u8]) -> Result<usize, RewriteError> {
        // Order edits by position; insertions at a point keep their
        // recording order and come before a replacement starting there.
        let mut order = [0u8; MAX_EDITS];
        for (i, o) in order.iter_mut().enumerate().take(self.n) {
            *o = i as u8;
        }
        let order = &mut order[..self.n];
        order.sort_by_key(|&i| {
            let e = &self.edits[usize::from(i)];
            (e.start, e.end, i)
        });
        let buf = self.msg.buf();
        let mut src = self.msg.start_line_span().start;
        let end = self.msg.body_span().end;
        let mut w = 0;
        let mut put = |bytes: &[u8], w: &mut usize| -> Result<(), RewriteError> {
            let dst = out
                .get_mut(*w..*w + bytes.len())
                .ok_or(RewriteError::OutputTooSmall)?;
            dst.copy_from_slice(bytes);
            *w += bytes.len();
            Ok(())
        };
        for &i in order.iter() {
            let e = self.edits[usize::from(i)];
            if e.start < src {
                return Err(RewriteError::Overlap);
            }
            put(&buf[src..e.start], &mut w)?;
            put(
                &self.scratch[usize::from(e.with.0)..usize::from(e.with.1)],
                &mut w,
            )?;
            src = e.end;
        }
        put(&buf[src..end], &mut w)?;
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan;

    const REQ: &[u8] = b"INVITE sip:bob@b.example;transport=udp SIP/2.0\r\n\
Route: <sip:edge.example;lr>, <sip:next.example;lr>\r\n\
v: SIP/2.0/UDP pc33.a.example;branch=z9hG4bK776;rport, SIP/2.0/UDP 10.0.0.1\r\n\
Max-Forwards: 1\r\n\
To: <sip:bob@b.example>\r\n\
From: <sip:alice@a.example>;tag=1928\r\n\
Call-ID: a84b4c76e66710\r\n\
CSeq: 314159 INVITE\r\n\
Content-Length: 4\r\n\r\nbodyEXTRA";

    fn apply(rw: &Rewrite<'_, '_>) -> Vec<u8> {
        let mut out = vec![0u8; rw.output_len()];
        let n = rw.write_to(&mut out).unwrap();
        assert_eq!(n, out.len());
        out
    }

    #[test]
    fn rfc3261_16_11_full_forward_rewrite() {
        let m = scan(REQ).unwrap();
        let mut rw = Rewrite::new(&m);
        rw.prepend_via(&[b"SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKx;k=00000000000000ff"])
            .unwrap();
        rw.set_received("198.51.100.7:33333".parse().unwrap())
            .unwrap();
        assert_eq!(rw.decrement_max_forwards().unwrap(), Ok(()));
        rw.remove_top_route().unwrap();
        rw.set_uri_param(m.request_uri().unwrap(), b"k", Some(b"00000000000000ff"))
            .unwrap();
        let out = apply(&rw);
        let f = scan(&out).unwrap();
        let vias: Vec<_> = f.vias().collect();
        assert_eq!(vias.len(), 3);
        assert_eq!(vias[0].host(), b"192.0.2.10");
        assert_eq!(vias[1].received(), Some(&b"198.51.100.7"[..]));
        assert_eq!(vias[1].rport(), Rport::Value(33333));
        assert_eq!(vias[1].branch(), Some(&b"z9hG4bK776"[..]));
        assert_eq!(f.max_forwards(), Some(0));
        assert_eq!(
            f.top_route().unwrap().unwrap().uri().host(),
            b"next.example"
        );
        assert_eq!(
            f.request_uri().unwrap().param(b"k"),
            Some(&b"00000000000000ff"[..])
        );
        assert_eq!(
            f.request_uri().unwrap().param(b"transport"),
            Some(&b"udp"[..])
        );
        assert_eq!(f.body(), b"body");
        assert!(
            out.ends_with(b"\r\n\r\nbody"),
            "extra bytes past Content-Length are dropped"
        );
    }

    #[test]
    fn rfc3261_16_3_max_forwards_zero_is_483() {
        let req = std::str::from_utf8(REQ)
            .unwrap()
            .replace("Max-Forwards: 1", "Max-Forwards: 0");
        let m = scan(req.as_bytes()).unwrap();
        let mut rw = Rewrite::new(&m);
        assert_eq!(
            rw.decrement_max_forwards().unwrap(),
            Err(Reason::TooManyHops)
        );
        assert_eq!(Reason::TooManyHops.status(), 483);
    }

    #[test]
    fn rfc3261_16_6_missing_max_forwards_gets_70() {
        let req = std::str::from_utf8(REQ)
            .unwrap()
            .replace("Max-Forwards: 1\r\n", "");
        let m = scan(req.as_bytes()).unwrap();
        let mut rw = Rewrite::new(&m);
        rw.decrement_max_forwards().unwrap().unwrap();
        let out = apply(&rw);
        assert_eq!(scan(&out).unwrap().max_forwards(), Some(70));
    }

    #[test]
    fn rfc3581_received_only_when_needed() {
        let req = b"OPTIONS sip:x@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKq\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: q\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let m = scan(req).unwrap();
        let mut rw = Rewrite::new(&m);
        rw.set_received("192.0.2.5:5060".parse().unwrap()).unwrap();
        assert_eq!(
            apply(&rw),
            req.to_vec(),
            "same address, no rport: untouched"
        );
        let mut rw = Rewrite::new(&m);
        rw.set_received("[2001:db8::7]:6000".parse().unwrap())
            .unwrap();
        let out = apply(&rw);
        let f = scan(&out).unwrap();
        assert_eq!(f.top_via().received(), Some(&b"2001:db8::7"[..]));
        assert_eq!(f.top_via().rport(), Rport::Absent);
    }

    #[test]
    fn a_stream_source_always_gets_rport_so_the_answer_finds_its_connection() {
        let via = |v: &str| {
            format!(
                "OPTIONS sip:x@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/TCP {v}\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: q\r\nCSeq: 1 OPTIONS\r\n\r\n"
            )
        };
        for v in [
            "192.0.2.5:5060;branch=z9hG4bKq",
            "192.0.2.5:5060;rport;branch=z9hG4bKq",
            "192.0.2.5;received=10.0.0.1;branch=z9hG4bKq",
            "phone.invalid;branch=z9hG4bKq",
        ] {
            let req = via(v);
            let m = scan(req.as_bytes()).unwrap();
            let mut rw = Rewrite::new(&m);
            rw.set_received_stream("192.0.2.5:40001".parse().unwrap())
                .unwrap();
            let out = apply(&rw);
            let f = scan(&out).unwrap();
            assert_eq!(f.top_via().rport(), Rport::Value(40001), "{v}");
            assert_eq!(
                f.top_via().flow().unwrap().to_string(),
                "tcp:192.0.2.5:40001",
                "{v}"
            );
        }
    }

    #[test]
    fn response_pops_top_via_of_one_line_and_of_a_list() {
        let resp = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP edge;branch=z9hG4bKe\r\nVia: SIP/2.0/UDP ua;branch=z9hG4bKu\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:x@y>;tag=2\r\nCall-ID: q\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let m = scan(resp).unwrap();
        let mut rw = Rewrite::new(&m);
        rw.remove_top_via().unwrap();
        let out = apply(&rw);
        let f = scan(&out).unwrap();
        assert_eq!(f.top_via().host(), b"ua");
        assert_eq!(f.vias().count(), 1);

        let resp = b"SIP/2.0 180 Ringing\r\nv: SIP/2.0/UDP edge;branch=z9hG4bKe , SIP/2.0/UDP ua;branch=z9hG4bKu\r\n\
f: <sip:a@b>;tag=1\r\nt: <sip:x@y>;tag=2\r\ni: q\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n";
        let m = scan(resp).unwrap();
        let mut rw = Rewrite::new(&m);
        rw.remove_top_via().unwrap();
        let f_out = apply(&rw);
        let f = scan(&f_out).unwrap();
        assert_eq!(f.top_via().host(), b"ua");
        assert_eq!(f.vias().count(), 1);
    }

    #[test]
    fn overlapping_edits_are_refused() {
        let m = scan(REQ).unwrap();
        let mut rw = Rewrite::new(&m);
        let f = m.route_field().unwrap();
        rw.replace(f.line, &[]).unwrap();
        rw.remove_top_route().unwrap();
        let mut out = [0u8; 1024];
        assert_eq!(rw.write_to(&mut out), Err(RewriteError::Overlap));
        let mut small = [0u8; 10];
        let rw = Rewrite::new(&m);
        assert_eq!(rw.write_to(&mut small), Err(RewriteError::OutputTooSmall));
    }
}
