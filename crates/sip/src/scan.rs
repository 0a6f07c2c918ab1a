//! The zero-copy scanner: one pass over a datagram that finds the start line,
//! walks the headers in order and records where the few headers routing needs
//! are. Nothing is copied and nothing is allocated; typed views are spans
//! into the datagram.
//!
//! Leniencies, on purpose: bare LF line ends are accepted as CRLF; leading
//! CRLFs before the start line are skipped (RFC 3261 §7.5); bytes past
//! `Content-Length` are discarded (§18.3).

use crate::addr::NameAddr;
use crate::error::{Reason, ReplyParts, ScanError};
use crate::header::HeaderName;
use crate::lex::{CommaValues, Span, is_lws, is_token, parse_u64, trim};
use crate::method::{CSeq, Method};
use crate::uri::{Scheme, Uri};
use crate::via::Via;

mod view;

/// Limits applied while scanning. Defaults suit UDP: the whole datagram may
/// be 64 KiB (RFC 3261 §18.1.1's switch to TCP is future work).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted; larger requests get 413.
    pub max_message_bytes: usize,
    /// Longest Request-URI accepted; longer ones get 414.
    pub max_uri_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 65_535,
            max_uri_bytes: 8_192,
        }
    }
}

impl Limits {
    /// Checks the limits are usable; the error names the broken rule.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.max_message_bytes < 512 || self.max_message_bytes > 65_535 {
            return Err("max_message_bytes must be between 512 and 65535");
        }
        if self.max_uri_bytes < 64 || self.max_uri_bytes > self.max_message_bytes {
            return Err("max_uri_bytes must be at least 64 and at most max_message_bytes");
        }
        Ok(())
    }
}

/// Request line or status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine {
    /// `Method SP Request-URI SP SIP-Version`
    Request {
        /// The method.
        method: Method,
        /// The method token.
        method_span: Span,
        /// The Request-URI.
        uri: Span,
    },
    /// `SIP-Version SP Status-Code SP Reason-Phrase`
    Response {
        /// The status code, 100..=699.
        status: u16,
        /// The reason phrase.
        reason: Span,
    },
}

/// One header as it appears on the wire (folded lines joined by span).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The header, classified.
    pub name: HeaderName,
    /// The name as written.
    pub name_span: Span,
    /// The value, trimmed; folded values keep their inner CRLF.
    pub value: Span,
    /// The whole line(s), from the name to just past the last line end.
    pub line: Span,
}

/// A header the scanner remembered: its line and trimmed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// From the name to just past the line end (folding included).
    pub line: Span,
    /// The value, trimmed.
    pub value: Span,
}

/// Reads one line from `pos`: (end of content, start of next line, saw a line end).
#[inline]
fn read_line(buf: &[u8], pos: usize) -> (usize, usize, bool) {
    match memchr::memchr(b'\n', &buf[pos..]) {
        Some(i) => {
            let lf = pos + i;
            let ce = if lf > pos && buf[lf - 1] == b'\r' {
                lf - 1
            } else {
                lf
            };
            (ce, lf + 1, true)
        }
        None => (buf.len(), buf.len(), false),
    }
}

/// `name: ` at the start of a header line ending at `end`: a token, optional
/// SP/HT, then `:`. Returns the name and the position of the colon.
#[inline]
fn header_name(buf: &[u8], pos: usize, end: usize) -> Option<(Span, usize)> {
    let mut i = pos;
    while i < end && is_token(buf[i]) {
        i += 1;
    }
    let name = Span::new(pos, i);
    while i < end && matches!(buf[i], b' ' | b'\t') {
        i += 1;
    }
    (!name.is_empty() && i < end && buf[i] == b':').then_some((name, i))
}

/// Reads one header at `pos` (which is not an empty line), joining folded
/// continuation lines. `Err(next)` for a line that is not `name: value`
/// (the caller may skip to `next`).
#[inline]
fn read_header(buf: &[u8], pos: usize) -> (Result<Header, usize>, bool) {
    let (mut ce, mut next, mut term) = read_line(buf, pos);
    while term && next < buf.len() && matches!(buf[next], b' ' | b'\t') {
        let (c2, n2, t2) = read_line(buf, next);
        ce = c2;
        next = n2;
        term = t2;
    }
    let Some((name_span, colon)) = header_name(buf, pos, ce) else {
        return (Err(next), term);
    };
    let value = trim(buf, Span::new(colon + 1, ce));
    (
        Ok(Header {
            name: HeaderName::from_bytes(name_span.of(buf)),
            name_span,
            value,
            line: Span::new(pos, next),
        }),
        term,
    )
}

/// Iterates the headers of a scanned message in order. Malformed lines are
/// skipped (a message that scanned cleanly has none).
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl Iterator for Headers<'_> {
    type Item = Header;

    fn next(&mut self) -> Option<Header> {
        while self.pos < self.end {
            let (h, _) = read_header(&self.buf[..self.end], self.pos);
            match h {
                Ok(h) => {
                    self.pos = h.line.end;
                    return Some(h);
                }
                Err(next) => self.pos = next,
            }
        }
        None
    }
}

/// Iterates every value of a list header across all its lines.
#[derive(Debug, Clone)]
pub struct Values<'a> {
    headers: Headers<'a>,
    name: HeaderName,
    current: Option<CommaValues<'a>>,
}

impl Iterator for Values<'_> {
    type Item = Span;

    fn next(&mut self) -> Option<Span> {
        loop {
            if let Some(v) = self.current.as_mut().and_then(Iterator::next) {
                return Some(v);
            }
            let h = self.headers.by_ref().find(|h| h.name == self.name)?;
            self.current = Some(CommaValues::new(self.headers.buf, h.value));
        }
    }
}

/// A scanned SIP message. Borrowed from the datagram; all accessors are
/// spans or views into it. A `Message` exists only for datagrams that passed
/// every check in [`scan`]: the mandatory headers are present and valid.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    buf: &'a [u8],
    start: StartLine,
    start_span: Span,
    headers: Span,
    body: Span,
    via: Field,
    top_via: Via<'a>,
    call_id: Field,
    cseq: (Field, CSeq),
    from: Field,
    to: Field,
    max_forwards: Option<(Field, u32)>,
    content_length: Option<Field>,
    content_type: Option<Field>,
    route: Option<Field>,
    record_route: Option<Field>,
    contact: Option<Field>,
    timestamp: Option<Field>,
    request_uri: Option<Uri<'a>>,
}

/// Scans with default [`Limits`].
#[expect(
    clippy::result_large_err,
    reason = "boxing would allocate for every refused datagram; junk floods must not allocate, and Ok is larger anyway"
)]
pub fn scan(buf: &[u8]) -> Result<Message<'_>, ScanError<'_>> {
    scan_with(buf, &Limits::default())
}

/// What the header pass collected, before validation.
#[derive(Default)]
struct Found {
    via: Option<Field>,
    call_id: Option<Field>,
    cseq: Option<Field>,
    from: Option<Field>,
    to: Option<Field>,
    max_forwards: Option<Field>,
    content_length: Option<Field>,
    content_type: Option<Field>,
    route: Option<Field>,
    record_route: Option<Field>,
    contact: Option<Field>,
    timestamp: Option<Field>,
    first_error: Option<Reason>,
}

impl Found {
    fn error(&mut self, r: Reason) {
        self.first_error.get_or_insert(r);
    }

    fn once(slot: &mut Option<Field>, f: Field, name: HeaderName, err: &mut Option<Reason>) {
        if slot.is_some() {
            err.get_or_insert(Reason::DuplicateHeader(name));
        } else {
            *slot = Some(f);
        }
    }
}

/// Scans one datagram.
///
/// On success every mandatory header (Via, From, To, Call-ID, CSeq) is
/// present and parses, CSeq's method matches a request's method, and
/// Content-Length (if present) fits the datagram. On failure the error says
/// why and, for a request other than ACK whose top Via parses, keeps what is
/// needed to answer it.
#[expect(
    clippy::result_large_err,
    reason = "boxing would allocate for every refused datagram; junk floods must not allocate, and Ok is larger anyway"
)]
pub fn scan_with<'a>(buf: &'a [u8], limits: &Limits) -> Result<Message<'a>, ScanError<'a>> {
    let drop = |reason| ScanError {
        reason,
        reply: None,
    };
    // RFC 3261 §7.5: ignore CRLFs before the start line.
    let mut pos = 0;
    while pos < buf.len() && matches!(buf[pos], b'\r' | b'\n') {
        pos += 1;
    }
    let (ce, next, term) = read_line(buf, pos);
    if !term {
        return Err(drop(Reason::NotSip));
    }
    let start_span = Span::new(pos, ce);
    let line = start_span.of(buf);
    let mut found = Found::default();
    if memchr::memchr(0, line).is_some() {
        return Err(drop(Reason::NotSip));
    }
    let start = if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        parse_status_line(buf, start_span).ok_or(drop(Reason::MalformedStartLine))?
    } else {
        // Method SP Request-URI SP SIP-Version; anything not ending in a SIP
        // version is not SIP at all.
        let last_sp = memchr::memrchr(b' ', line).ok_or(drop(Reason::NotSip))?;
        let version = &line[last_sp + 1..];
        if version.len() < 4 || !version[..4].eq_ignore_ascii_case(b"SIP/") {
            return Err(drop(Reason::NotSip));
        }
        if !version.eq_ignore_ascii_case(b"SIP/2.0") {
            found.error(Reason::BadVersion);
        }
        let first_sp = memchr::memchr(b' ', line).unwrap_or(last_sp);
        let method_span = Span::new(pos, pos + first_sp);
        let uri = Span::new(pos + first_sp + 1, pos + last_sp);
        let method_ok = !method_span.is_empty() && method_span.of(buf).iter().all(|&b| is_token(b));
        if !method_ok || uri.is_empty() || first_sp == last_sp {
            found.error(Reason::MalformedStartLine);
        }
        StartLine::Request {
            method: Method::from_bytes(method_span.of(buf)),
            method_span,
            uri,
        }
    };

    // Headers: one SIMD pass finds every line end; folded lines (next line
    // starts with SP/HT) join the header above.
    let headers_start = next;
    let mut pos = next;
    let mut body_start = None;
    let mut lfs = memchr::memchr_iter(b'\n', &buf[headers_start..]).map(|i| i + headers_start);
    loop {
        let Some(mut lf) = lfs.next() else {
            // No line end left: the datagram was cut inside the headers.
            if pos < buf.len() {
                found.error(Reason::Truncated);
            }
            pos = buf.len();
            break;
        };
        let ce = if lf > pos && buf[lf - 1] == b'\r' {
            lf - 1
        } else {
            lf
        };
        if ce == pos {
            body_start = Some(lf + 1);
            break;
        }
        let mut vend = ce;
        while lf + 1 < buf.len() && matches!(buf[lf + 1], b' ' | b'\t') {
            match lfs.next() {
                Some(next_lf) => {
                    lf = next_lf;
                    vend = if buf[lf - 1] == b'\r' { lf - 1 } else { lf };
                }
                None => {
                    lf = buf.len() - 1;
                    vend = buf.len();
                    found.error(Reason::Truncated);
                }
            }
        }
        let line_end = lf + 1;
        let Some((name_span, colon)) = header_name(buf, pos, vend) else {
            found.error(Reason::MalformedHeaderLine);
            pos = line_end;
            continue;
        };
        let f = Field {
            line: Span::new(pos, line_end),
            value: trim(buf, Span::new(colon + 1, vend)),
        };
        let name = HeaderName::from_bytes(name_span.of(buf));
        let err = &mut found.first_error;
        match name {
            HeaderName::Via => {
                found.via.get_or_insert(f);
            }
            HeaderName::CallId => Found::once(&mut found.call_id, f, name, err),
            HeaderName::CSeq => Found::once(&mut found.cseq, f, name, err),
            HeaderName::From => Found::once(&mut found.from, f, name, err),
            HeaderName::To => Found::once(&mut found.to, f, name, err),
            HeaderName::MaxForwards => Found::once(&mut found.max_forwards, f, name, err),
            HeaderName::ContentLength => Found::once(&mut found.content_length, f, name, err),
            HeaderName::ContentType => Found::once(&mut found.content_type, f, name, err),
            HeaderName::Route => {
                found.route.get_or_insert(f);
            }
            HeaderName::RecordRoute => {
                found.record_route.get_or_insert(f);
            }
            HeaderName::Contact => {
                found.contact.get_or_insert(f);
            }
            HeaderName::Timestamp => {
                found.timestamp.get_or_insert(f);
            }
            _ => {}
        }
        pos = line_end;
    }
    let headers_end = match body_start {
        Some(b) => b,
        None => {
            found.error(Reason::Truncated);
            buf.len()
        }
    };
    // The blank line's own bytes are not part of the header block.
    let header_block = Span::new(headers_start, pos.min(headers_end));
    if memchr::memchr(0, header_block.of(buf)).is_some() {
        found.error(Reason::NulByte);
    }

    // Can this be answered? Only requests other than ACK, and only with a
    // top Via to send the answer along (RFC 3261 §8.2.6, §18.2.2).
    let top_via = found
        .via
        .and_then(|f| Via::parse(buf, first_value(buf, f.value)));
    let answerable = matches!(start, StartLine::Request { method, .. } if method != Method::Ack)
        && top_via.is_some();
    let reject = |reason: Reason| ScanError {
        reason,
        reply: answerable.then_some(ReplyParts {
            buf,
            headers: header_block,
            from: found.from.map(|f| f.value),
            to: found.to.map(|f| f.value),
            call_id: found.call_id.map(|f| f.value),
            cseq: found.cseq.map(|f| f.value),
            timestamp: found.timestamp.map(|f| f.value),
        }),
    };

    if let Some(r) = found.first_error {
        return Err(reject(r));
    }
    let via = found
        .via
        .ok_or_else(|| reject(Reason::MissingHeader(HeaderName::Via)))?;
    let top_via = top_via.ok_or_else(|| reject(Reason::MalformedHeader(HeaderName::Via)))?;
    let from = found
        .from
        .ok_or_else(|| reject(Reason::MissingHeader(HeaderName::From)))?;
    let to = found
        .to
        .ok_or_else(|| reject(Reason::MissingHeader(HeaderName::To)))?;
    let call_id = found
        .call_id
        .ok_or_else(|| reject(Reason::MissingHeader(HeaderName::CallId)))?;
    let cseq_f = found
        .cseq
        .ok_or_else(|| reject(Reason::MissingHeader(HeaderName::CSeq)))?;

    // §18.3: a body shorter than Content-Length is an error; extra bytes are
    // discarded. Without Content-Length (UDP only) the body runs to the end.
    let body_start = body_start.unwrap_or(buf.len());
    let available = buf.len() - body_start;
    let body = match found.content_length {
        Some(f) => {
            let n = parse_u64(f.value.of(buf), u64::MAX)
                .ok_or_else(|| reject(Reason::MalformedHeader(HeaderName::ContentLength)))?;
            if n > available as u64 {
                return Err(reject(Reason::BodyTooShort));
            }
            Span::new(body_start, body_start + n as usize)
        }
        None => Span::new(body_start, buf.len()),
    };

    let cseq = CSeq::parse(buf, cseq_f.value)
        .ok_or_else(|| reject(Reason::MalformedHeader(HeaderName::CSeq)))?;
    if let StartLine::Request { method_span, .. } = start
        && cseq.method_span.of(buf) != method_span.of(buf)
    {
        return Err(reject(Reason::CSeqMethodMismatch));
    }
    let cid = call_id.value.of(buf);
    if cid.is_empty() || cid.iter().any(|&b| is_lws(b) || b < 0x21 || b == 0x7f) {
        return Err(reject(Reason::MalformedHeader(HeaderName::CallId)));
    }
    if from.value.is_empty() {
        return Err(reject(Reason::MalformedHeader(HeaderName::From)));
    }
    if to.value.is_empty() {
        return Err(reject(Reason::MalformedHeader(HeaderName::To)));
    }
    let max_forwards = match found.max_forwards {
        Some(f) => {
            let n = parse_u64(f.value.of(buf), u64::from(u32::MAX))
                .ok_or_else(|| reject(Reason::MalformedHeader(HeaderName::MaxForwards)))?;
            Some((f, n as u32))
        }
        None => None,
    };
    let mut request_uri = None;
    if let StartLine::Request { uri, .. } = start {
        if uri.len() > limits.max_uri_bytes {
            return Err(reject(Reason::UriTooLong));
        }
        let u = Uri::parse(buf, uri).map_err(|_| reject(Reason::MalformedRequestUri))?;
        if u.scheme() == Scheme::Other {
            return Err(reject(Reason::UnsupportedUriScheme));
        }
        request_uri = Some(u);
    }
    if body.end > limits.max_message_bytes {
        return Err(reject(Reason::MessageTooLarge));
    }
    Ok(Message {
        buf,
        start,
        start_span,
        headers: header_block,
        body,
        via,
        top_via,
        call_id,
        cseq: (cseq_f, cseq),
        from,
        to,
        max_forwards,
        content_length: found.content_length,
        content_type: found.content_type,
        route: found.route,
        record_route: found.record_route,
        contact: found.contact,
        timestamp: found.timestamp,
        request_uri,
    })
}

/// The first value of a comma list, fast when there are no quotes before
/// the first comma (the common case).
#[inline]
fn first_value(buf: &[u8], v: Span) -> Span {
    match memchr::memchr2(b',', b'"', v.of(buf)) {
        None => v,
        Some(i) if buf[v.start + i] == b',' => trim(buf, Span::new(v.start, v.start + i)),
        Some(_) => CommaValues::new(buf, v).next().unwrap_or(v),
    }
}

/// The `tag` parameter of a From or To value, without parsing the URI: the
/// header parameters start after `>` (name-addr) or at the first `;`
/// (addr-spec, RFC 3261 §20.10).
fn tag_of(buf: &[u8], v: Span) -> Option<&[u8]> {
    let s = v.of(buf);
    let params_at = match crate::lex::find_unquoted(buf, v.start, v.end, b'<') {
        Some(lt) => memchr::memchr(b'>', &buf[lt..v.end])? + lt + 1,
        None => v.start + memchr::memchr(b';', s)?,
    };
    let p = crate::lex::Params::new(buf, Span::new(params_at, v.end)).get(b"tag")?;
    p.value.map(|t| t.of(buf)).filter(|t| !t.is_empty())
}

fn parse_status_line(buf: &[u8], span: Span) -> Option<StartLine> {
    let line = span.of(buf);
    // "SIP/2.0 200 OK": version, exactly three digits, optional phrase.
    if line.len() < 11 || !line[..8].eq_ignore_ascii_case(b"SIP/2.0 ") {
        return None;
    }
    let code = &line[8..11];
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = parse_u64(code, 699)? as u16;
    if status < 100 {
        return None;
    }
    let reason = match line.get(11) {
        None => Span::new(span.end, span.end),
        Some(b' ') => Span::new(span.start + 12, span.end),
        Some(_) => return None,
    };
    Some(StartLine::Response { status, reason })
}

impl<'a> ReplyParts<'a> {
    /// Every Via header line's value in order, as written.
    pub(crate) fn via_values(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let buf = self.buf;
        Headers {
            buf,
            pos: self.headers.start,
            end: self.headers.end,
        }
        .filter(|h| h.name == HeaderName::Via)
        .map(move |h| h.value.of(buf))
    }

    pub(crate) fn get(&self, s: Option<Span>) -> Option<&'a [u8]> {
        s.map(|s| s.of(self.buf))
    }
}
