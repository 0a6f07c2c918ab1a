//! Writing SIP messages: responses to requests (RFC 3261 §8.2.6) and new
//! requests (§8.1.1). Output goes to a [`Sink`]: a `Vec<u8>`, or a
//! [`SliceSink`] over a fixed send buffer so the edge can answer without
//! allocating.

use core::fmt::{self, Write as _};

use crate::addr::NameAddr;
use crate::error::{ReplyParts, ScanError};
use crate::lex::Span;

/// Where built bytes go.
pub trait Sink {
    /// Appends bytes.
    fn put(&mut self, b: &[u8]);

    /// Room for `n` more bytes, when the sink can grow (a hint).
    fn reserve(&mut self, n: usize) {
        let _ = n;
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }

    fn reserve(&mut self, n: usize) {
        Vec::reserve(self, n);
    }
}

/// A [`Sink`] over a fixed buffer; remembers overflow instead of panicking.
#[derive(Debug)]
pub struct SliceSink<'o> {
    buf: &'o mut [u8],
    len: usize,
    overflow: bool,
}

impl<'o> SliceSink<'o> {
    /// A sink writing from the start of `buf`.
    pub fn new(buf: &'o mut [u8]) -> Self {
        Self {
            buf,
            len: 0,
            overflow: false,
        }
    }

    /// Bytes written, or `None` when the buffer was too small.
    pub fn finish(self) -> Option<usize> {
        (!self.overflow).then_some(self.len)
    }
}

impl Sink for SliceSink<'_> {
    fn put(&mut self, b: &[u8]) {
        match self.buf.get_mut(self.len..self.len + b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                self.len += b.len();
            }
            None => self.overflow = true,
        }
    }
}

struct Fmt<'s, S: Sink + ?Sized>(&'s mut S);

impl<S: Sink + ?Sized> fmt::Write for Fmt<'_, S> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.put(s.as_bytes());
        Ok(())
    }
}

/// The RFC 3261 §21 reason phrase for `status` (and the extensions handover
/// uses); "Unknown" otherwise.
pub const fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        422 => "Session Interval Too Small",
        423 => "Interval Too Brief",
        430 => "Flow Failed",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => "Unknown",
    }
}

/// Extra header lines for a built message: `(name, value)`.
pub type Extra<'x> = &'x [(&'x str, &'x [u8])];

/// Writes a response to the request whose `parts` are given (RFC 3261
/// §8.2.6.2): every Via in order, From, To (with `to_tag` added when the
/// request's To has none and the status is not 100), Call-ID, CSeq, the
/// Timestamp for a 100 (§8.2.6.1), `extra` headers, and Content-Length.
/// `reason` of `None` writes the standard phrase.
pub fn response(
    parts: &ReplyParts<'_>,
    status: u16,
    reason: Option<&dyn fmt::Display>,
    to_tag: Option<&[u8]>,
    extra: Extra<'_>,
    out: &mut (impl Sink + ?Sized),
) {
    response_with_body(parts, status, reason, to_tag, extra, None, out);
}

/// [`response`] with a body and its Content-Type (a B2BUA relaying SDP).
pub fn response_with_body(
    parts: &ReplyParts<'_>,
    status: u16,
    reason: Option<&dyn fmt::Display>,
    to_tag: Option<&[u8]>,
    extra: Extra<'_>,
    body: Option<(&[u8], &[u8])>,
    out: &mut (impl Sink + ?Sized),
) {
    // One allocation: the request's header block bounds the copied lines
    // (growing from empty took about four reallocations per answer).
    let extra_len: usize = extra.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    let body_len = body.map_or(0, |(ct, b)| ct.len() + b.len() + 16);
    out.reserve(parts.headers.len() + extra_len + body_len + 64);
    let _ = write!(Fmt(out), "SIP/2.0 {status} ");
    match reason {
        Some(r) => {
            let _ = write!(Fmt(out), "{r}");
        }
        None => out.put(reason_phrase(status).as_bytes()),
    }
    out.put(b"\r\n");
    for v in parts.via_values() {
        line(out, "Via", v);
    }
    if let Some(v) = parts.get(parts.from) {
        line(out, "From", v);
    }
    if let Some(to) = parts.to {
        let v = to.of(parts.buf);
        out.put(b"To: ");
        out.put(v);
        let has_tag = NameAddr::parse(parts.buf, to).map(|n| n.tag().is_some());
        if let (Ok(false), Some(tag), true) = (has_tag, to_tag, status != 100) {
            out.put(b";tag=");
            out.put(tag);
        }
        out.put(b"\r\n");
    }
    if let Some(v) = parts.get(parts.call_id) {
        line(out, "Call-ID", v);
    }
    if let Some(v) = parts.get(parts.cseq) {
        line(out, "CSeq", v);
    }
    if status == 100
        && let Some(v) = parts.get(parts.timestamp)
    {
        line(out, "Timestamp", v);
    }
    for (n, v) in extra {
        line(out, n, v);
    }
    match body {
        Some((ct, b)) if !b.is_empty() => {
            line(out, "Content-Type", ct);
            let _ = write!(Fmt(out), "Content-Length: {}\r\n\r\n", b.len());
            out.put(b);
        }
        _ => out.put(b"Content-Length: 0\r\n\r\n"),
    }
}

/// Writes the answer a refused request gets ([`crate::Verdict::Reply`]):
/// the reason's status with the reason's text as phrase (so a 400 names the
/// bad header). Returns false, writing nothing, when the error says drop.
pub fn error_response(
    err: &ScanError<'_>,
    to_tag: Option<&[u8]>,
    out: &mut (impl Sink + ?Sized),
) -> bool {
    match err.reply_parts() {
        Some(parts) => {
            response(
                parts,
                err.reason.status(),
                Some(&err.reason),
                to_tag,
                &[],
                out,
            );
            true
        }
        None => false,
    }
}

fn line(out: &mut (impl Sink + ?Sized), name: &str, value: &[u8]) {
    out.put(name.as_bytes());
    out.put(b": ");
    out.put(value);
    out.put(b"\r\n");
}

/// A new request (RFC 3261 §8.1.1), written by [`Request::write`].
#[derive(Debug, Clone, Copy)]
pub struct Request<'x> {
    /// Method token, also used in CSeq.
    pub method: &'x str,
    /// Request-URI.
    pub uri: &'x [u8],
    /// Via values, top first (`SIP/2.0/UDP host:port;branch=…`).
    pub via: &'x [&'x [u8]],
    /// From value without tag (`"Alice" <sip:alice@a.example>`).
    pub from: &'x [u8],
    /// From tag.
    pub from_tag: &'x [u8],
    /// To value without tag.
    pub to: &'x [u8],
    /// To tag (in-dialog requests).
    pub to_tag: Option<&'x [u8]>,
    /// Call-ID.
    pub call_id: &'x [u8],
    /// CSeq number.
    pub cseq: u32,
    /// Max-Forwards.
    pub max_forwards: u8,
    /// Route values, in order.
    pub route: &'x [&'x [u8]],
    /// Contact value.
    pub contact: Option<&'x [u8]>,
    /// Further header lines.
    pub headers: Extra<'x>,
    /// Body with its Content-Type.
    pub body: Option<(&'x [u8], &'x [u8])>,
}

impl Default for Request<'_> {
    fn default() -> Self {
        Self {
            method: "OPTIONS",
            uri: b"sip:invalid",
            via: &[],
            from: b"<sip:anonymous@anonymous.invalid>",
            from_tag: b"",
            to: b"<sip:invalid>",
            to_tag: None,
            call_id: b"",
            cseq: 1,
            max_forwards: 70,
            route: &[],
            contact: None,
            headers: &[],
            body: None,
        }
    }
}

impl Request<'_> {
    /// Writes the request.
    pub fn write(&self, out: &mut (impl Sink + ?Sized)) {
        out.put(self.method.as_bytes());
        out.put(b" ");
        out.put(self.uri);
        out.put(b" SIP/2.0\r\n");
        for v in self.via {
            line(out, "Via", v);
        }
        let _ = write!(Fmt(out), "Max-Forwards: {}\r\n", self.max_forwards);
        for r in self.route {
            line(out, "Route", r);
        }
        out.put(b"From: ");
        out.put(self.from);
        out.put(b";tag=");
        out.put(self.from_tag);
        out.put(b"\r\nTo: ");
        out.put(self.to);
        if let Some(t) = self.to_tag {
            out.put(b";tag=");
            out.put(t);
        }
        out.put(b"\r\n");
        line(out, "Call-ID", self.call_id);
        let _ = write!(Fmt(out), "CSeq: {} {}\r\n", self.cseq, self.method);
        if let Some(c) = self.contact {
            line(out, "Contact", c);
        }
        for (n, v) in self.headers {
            line(out, n, v);
        }
        match self.body {
            Some((ct, body)) => {
                line(out, "Content-Type", ct);
                let _ = write!(Fmt(out), "Content-Length: {}\r\n\r\n", body.len());
                out.put(body);
            }
            None => out.put(b"Content-Length: 0\r\n\r\n"),
        }
    }

    /// The request as a new `Vec`, of its exact size: a request built is
    /// usually kept (a call's INVITE, a transaction's copy for resending)
    /// for as long as the call, where the growth's spare half (an INVITE
    /// of 600 bytes in 1,024) would cost every held call
    /// (`crates/call/tests/memory.rs`).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(512);
        self.write(&mut v);
        v.shrink_to_fit();
        v
    }
}

/// The ACK a client INVITE transaction sends for a non-2xx final response
/// (RFC 3261 §17.1.1.3): Request-URI, Call-ID, From and the CSeq number of
/// the original request, To of the response, the request's top Via only,
/// and its Route headers.
pub fn ack_for_non_2xx(request: &crate::Message<'_>, response: &crate::Message<'_>) -> Vec<u8> {
    //= https://www.rfc-editor.org/rfc/rfc3261#section-17.1.1.3
    //# The ACK MUST contain a single Via header field, and
    //# this MUST be equal to the top Via header field of the original
    //# request.
    let buf = request.buf();
    let mut out = Vec::with_capacity(request.as_bytes().len());
    out.put(b"ACK ");
    out.put(request.request_uri().map_or(&b""[..], |u| u.as_bytes()));
    out.put(b" SIP/2.0\r\n");
    line(&mut out, "Via", request.top_via().span().of(buf));
    for h in request.headers() {
        if h.name == crate::HeaderName::Route {
            line(&mut out, "Route", h.value.of(buf));
        }
    }
    out.put(b"Max-Forwards: 70\r\n");
    line(&mut out, "From", request.from_field().value.of(buf));
    line(&mut out, "To", response.to_field().value.of(response.buf()));
    line(&mut out, "Call-ID", request.call_id());
    let _ = write!(Fmt(&mut out), "CSeq: {} ACK\r\n", request.cseq().seq);
    out.put(b"Content-Length: 0\r\n\r\n");
    out
}

/// The CANCEL of an INVITE we sent (RFC 3261 §9.1): the same Request-URI,
/// Call-ID, From, To, top Via (so the same branch) and CSeq number, with
/// the method CANCEL, and the INVITE's Route headers.
pub fn cancel_for(invite: &crate::Message<'_>) -> Vec<u8> {
    let buf = invite.buf();
    let mut out = Vec::with_capacity(invite.as_bytes().len());
    out.put(b"CANCEL ");
    out.put(invite.request_uri().map_or(&b""[..], |u| u.as_bytes()));
    out.put(b" SIP/2.0\r\n");
    line(&mut out, "Via", invite.top_via().span().of(buf));
    for h in invite.headers() {
        if h.name == crate::HeaderName::Route {
            line(&mut out, "Route", h.value.of(buf));
        }
    }
    out.put(b"Max-Forwards: 70\r\n");
    line(&mut out, "From", invite.from_field().value.of(buf));
    line(&mut out, "To", invite.to_field().value.of(buf));
    line(&mut out, "Call-ID", invite.call_id());
    let _ = write!(Fmt(&mut out), "CSeq: {} CANCEL\r\n", invite.cseq().seq);
    out.put(b"Content-Length: 0\r\n\r\n");
    out
}

/// Span helper for callers that hold a span and its buffer.
pub fn slice(buf: &[u8], s: Span) -> &[u8] {
    s.of(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HeaderName, Reason, Verdict, scan};

    const INVITE: &[u8] = b"INVITE sip:bob@b.example SIP/2.0\r\n\
Via: SIP/2.0/UDP p1.example;branch=z9hG4bKp1\r\n\
Via: SIP/2.0/UDP a.example;branch=z9hG4bKa;received=192.0.2.1\r\n\
Max-Forwards: 69\r\n\
To: Bob <sip:bob@b.example>\r\n\
From: Alice <sip:alice@a.example>;tag=1928\r\n\
Call-ID: a84b4c76e66710@a.example\r\n\
CSeq: 314159 INVITE\r\n\
Timestamp: 54\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn rfc3261_8_2_6_2_response_copies_and_tags() {
        let m = scan(INVITE).unwrap();
        let mut out = Vec::new();
        response(&m.reply_parts(), 486, None, Some(b"xyz"), &[], &mut out);
        let r = scan(&out).unwrap();
        assert_eq!(r.status(), Some(486));
        assert!(out.starts_with(b"SIP/2.0 486 Busy Here\r\n"));
        let vias: Vec<_> = r.vias().map(|v| v.host().to_vec()).collect();
        assert_eq!(vias, vec![b"p1.example".to_vec(), b"a.example".to_vec()]);
        assert_eq!(r.from_tag(), Some(&b"1928"[..]));
        assert_eq!(r.to_tag(), Some(&b"xyz"[..]));
        assert_eq!(r.call_id(), m.call_id());
        assert_eq!(
            (r.cseq().seq, r.cseq().method),
            (m.cseq().seq, m.cseq().method)
        );
        assert!(r.header(HeaderName::Timestamp).is_none());
    }

    #[test]
    fn rfc3261_8_2_6_1_trying_has_no_tag_and_keeps_timestamp() {
        let m = scan(INVITE).unwrap();
        let mut buf = [0u8; 1024];
        let mut out = SliceSink::new(&mut buf);
        response(&m.reply_parts(), 100, None, Some(b"xyz"), &[], &mut out);
        let n = out.finish().unwrap();
        let r = scan(&buf[..n]).unwrap();
        assert_eq!(r.to_tag(), None);
        assert_eq!(
            r.header(HeaderName::Timestamp)
                .map(|h| h.value.of(&buf[..n]).to_vec()),
            Some(b"54".to_vec())
        );
    }

    #[test]
    fn error_response_names_the_bad_header() {
        let bad = std::str::from_utf8(INVITE)
            .unwrap()
            .replace("CSeq: 314159 INVITE", "CSeq: x INVITE");
        let e = scan(bad.as_bytes()).unwrap_err();
        assert_eq!(e.reason, Reason::MalformedHeader(HeaderName::CSeq));
        assert_eq!(e.verdict(), Verdict::Reply(400));
        let mut out = Vec::new();
        assert!(error_response(&e, Some(b"t"), &mut out));
        assert!(
            out.starts_with(b"SIP/2.0 400 Malformed CSeq header\r\n"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        // The answer itself is a well-formed response except for the CSeq it
        // copies verbatim, so a client can match it by Via branch.
        let r = scan(&out).unwrap_err();
        assert_eq!(r.reason, Reason::MalformedHeader(HeaderName::CSeq));
        assert!(
            String::from_utf8_lossy(&out)
                .contains("Via: SIP/2.0/UDP p1.example;branch=z9hG4bKp1\r\n")
        );
    }

    #[test]
    fn rfc3261_17_1_1_3_ack_for_non_2xx() {
        let inv =
            b"INVITE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP a.example;branch=z9hG4bKa\r\n\
Via: SIP/2.0/UDP p.example;branch=z9hG4bKp\r\nRoute: <sip:p1;lr>\r\nRoute: <sip:p2;lr>\r\n\
Max-Forwards: 70\r\nTo: <sip:bob@b.example>\r\nFrom: <sip:a@a.example>;tag=1\r\nCall-ID: c\r\n\
CSeq: 9 INVITE\r\nContent-Length: 0\r\n\r\n";
        let resp = b"SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP a.example;branch=z9hG4bKa\r\n\
To: <sip:bob@b.example>;tag=xyz\r\nFrom: <sip:a@a.example>;tag=1\r\nCall-ID: c\r\nCSeq: 9 INVITE\r\n\r\n";
        let (i, r) = (scan(inv).unwrap(), scan(resp).unwrap());
        let ack = ack_for_non_2xx(&i, &r);
        let a = scan(&ack).unwrap();
        assert_eq!(a.method(), Some(crate::Method::Ack));
        assert_eq!(a.request_uri().unwrap().as_bytes(), b"sip:bob@b.example");
        assert_eq!(a.vias().count(), 1);
        assert_eq!(a.top_via().branch(), Some(&b"z9hG4bKa"[..]));
        assert_eq!(a.values(HeaderName::Route).count(), 2);
        assert_eq!(a.to_tag(), Some(&b"xyz"[..]));
        assert_eq!(a.from_tag(), Some(&b"1"[..]));
        assert_eq!((a.cseq().seq, a.cseq().method), (9, crate::Method::Ack));
    }

    #[test]
    fn slice_sink_overflow_is_reported() {
        let m = scan(INVITE).unwrap();
        let mut buf = [0u8; 16];
        let mut out = SliceSink::new(&mut buf);
        response(&m.reply_parts(), 200, None, None, &[], &mut out);
        assert_eq!(out.finish(), None);
    }

    #[test]
    fn request_builder_round_trips() {
        let req = Request {
            method: "INVITE",
            uri: b"sip:bob@b.example",
            via: &[b"SIP/2.0/UDP a.example:5060;branch=z9hG4bK1"],
            from: b"<sip:alice@a.example>",
            from_tag: b"t1",
            to: b"<sip:bob@b.example>",
            call_id: b"cid",
            cseq: 7,
            contact: Some(b"<sip:alice@192.0.2.1:5060>"),
            body: Some((b"application/sdp", b"v=0\r\n")),
            ..Request::default()
        }
        .to_vec();
        let m = scan(&req).unwrap();
        assert_eq!(m.cseq().seq, 7);
        assert_eq!(m.body(), b"v=0\r\n");
        assert_eq!(m.content_type(), Some(&b"application/sdp"[..]));
        assert_eq!(m.contact().unwrap().unwrap().uri().port(), Some(5060));
    }
}
