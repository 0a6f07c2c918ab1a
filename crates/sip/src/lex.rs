//! Byte-level helpers shared by the scanner and the typed views.
//!
//! Written by hand rather than with a parser library because this is the hot
//! path of every datagram: no allocation, no backtracking, and the exact
//! leniencies we choose (LF-only line ends, folded lines inside values).

/// A byte range into the datagram being read. Views keep spans, not slices,
/// so the rewriter can splice at exact offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// A span from `start` to `end`.
    pub const fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// The bytes of `buf` this span covers.
    #[inline]
    pub fn of(self, buf: &[u8]) -> &[u8] {
        &buf[self.start..self.end]
    }

    /// Number of bytes covered.
    pub const fn len(self) -> usize {
        self.end - self.start
    }

    /// True when the span covers nothing.
    pub const fn is_empty(self) -> bool {
        self.end == self.start
    }
}

/// Linear white space inside a header value. CR and LF count because a
/// folded value (RFC 3261 §7.3.1) keeps its CRLF + SP inside the span.
#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

const fn class_table(token: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || if token {
                matches!(
                    c,
                    b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
                )
            } else {
                matches!(c, b'-' | b'.' | b'_')
            };
        b += 1;
    }
    t
}

static TOKEN: [bool; 256] = class_table(true);
static HOSTNAME: [bool; 256] = class_table(false);

/// RFC 3261 §25.1 `token` characters.
#[inline]
pub(crate) fn is_token(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

/// Characters of a hostname or IPv4 address.
#[inline]
pub(crate) fn is_host_char(b: u8) -> bool {
    HOSTNAME[usize::from(b)]
}

/// hostname / IPv4address / IPv6reference (RFC 3261 §25.1), checked
/// loosely: the right alphabet and shape, not every numeric range.
pub(crate) fn valid_host(h: &[u8]) -> bool {
    match h {
        [] => false,
        [b'[', inner @ .., b']'] => {
            !inner.is_empty()
                && inner.contains(&b':')
                && inner
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }
        _ => h.iter().all(|&b| is_host_char(b)),
    }
}

/// Shrinks `s` to drop leading and trailing LWS.
pub(crate) fn trim(buf: &[u8], mut s: Span) -> Span {
    while s.start < s.end && is_lws(buf[s.start]) {
        s.start += 1;
    }
    while s.end > s.start && is_lws(buf[s.end - 1]) {
        s.end -= 1;
    }
    s
}

/// Position of the first `needle` in `buf[from..to]` that is outside a
/// quoted string and outside `<…>`.
pub(crate) fn find_unquoted(buf: &[u8], from: usize, to: usize, needle: u8) -> Option<usize> {
    // Fast path: no quote or bracket before the needle (nearly always).
    let i = from + memchr::memchr3(needle, b'"', b'<', &buf[from..to])?;
    if buf[i] == needle {
        return Some(i);
    }
    find_unquoted_slow(buf, i, to, needle)
}

fn find_unquoted_slow(buf: &[u8], from: usize, to: usize, needle: u8) -> Option<usize> {
    let mut i = from;
    let mut quoted = false;
    let mut angle = false;
    while i < to {
        let b = buf[i];
        if quoted {
            match b {
                b'\\' => i += 1,
                b'"' => quoted = false,
                _ => {}
            }
        } else if b == needle && !angle {
            return Some(i);
        } else {
            match b {
                b'"' => quoted = true,
                b'<' => angle = true,
                b'>' => angle = false,
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Iterates the comma-separated values of one header value, each trimmed.
/// Commas inside quoted strings and `<…>` do not split.
#[derive(Debug, Clone)]
pub struct CommaValues<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> CommaValues<'a> {
    /// The values of the header value at `value` (a header's
    /// [`crate::Header::value`]).
    pub fn new(buf: &'a [u8], value: Span) -> Self {
        Self {
            buf,
            pos: value.start,
            end: value.end,
        }
    }
}

impl Iterator for CommaValues<'_> {
    type Item = Span;

    fn next(&mut self) -> Option<Span> {
        while self.pos < self.end {
            let stop = find_unquoted(self.buf, self.pos, self.end, b',').unwrap_or(self.end);
            let v = trim(self.buf, Span::new(self.pos, stop));
            self.pos = stop + 1;
            if !v.is_empty() {
                return Some(v);
            }
        }
        None
    }
}

/// One `;name[=value]` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    /// The whole parameter without its leading `;` (`name=value`).
    pub whole: Span,
    /// The name.
    pub name: Span,
    /// The value, when there is an `=`. Quotes are kept.
    pub value: Option<Span>,
}

/// Iterates `;name[=value]` parameters in a span that starts at (or before)
/// the first `;`. Used for header parameters (Via, To, From, Contact) and,
/// with `sep = b';'` and `stop = b'?'`, for URI parameters.
#[derive(Debug, Clone)]
pub struct Params<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Params<'a> {
    pub(crate) fn new(buf: &'a [u8], span: Span) -> Self {
        Self {
            buf,
            pos: span.start,
            end: span.end,
        }
    }

    /// The first parameter called `name` (ASCII case-insensitive).
    pub fn get(mut self, name: &[u8]) -> Option<Param> {
        let buf = self.buf;
        self.find(|p| p.name.of(buf).eq_ignore_ascii_case(name))
    }
}

impl Iterator for Params<'_> {
    type Item = Param;

    fn next(&mut self) -> Option<Param> {
        loop {
            // Skip to the next ';'.
            while self.pos < self.end && self.buf[self.pos] != b';' {
                self.pos += 1;
            }
            if self.pos >= self.end {
                return None;
            }
            self.pos += 1;
            let start = self.pos;
            let stop = find_unquoted(self.buf, start, self.end, b';').unwrap_or(self.end);
            self.pos = stop;
            let whole = trim(self.buf, Span::new(start, stop));
            if whole.is_empty() {
                continue;
            }
            let (name, value) = match memchr::memchr(b'=', whole.of(self.buf)) {
                Some(eq) => (
                    trim(self.buf, Span::new(whole.start, whole.start + eq)),
                    Some(trim(self.buf, Span::new(whole.start + eq + 1, whole.end))),
                ),
                None => (whole, None),
            };
            return Some(Param { whole, name, value });
        }
    }
}

/// Parses an unsigned decimal that fits `max`; no sign, no spaces.
pub(crate) fn parse_u64(s: &[u8], max: u64) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    (n <= max).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_values_respect_quotes_and_angles() {
        let b = br#""a, b" <sip:x;p=1,2>;q="x,y", <sip:y> ,,z"#;
        let v: Vec<&[u8]> = CommaValues::new(b, Span::new(0, b.len()))
            .map(|s| s.of(b))
            .collect();
        assert_eq!(
            v,
            vec![
                &br#""a, b" <sip:x;p=1,2>;q="x,y""#[..],
                &b"<sip:y>"[..],
                &b"z"[..]
            ]
        );
    }

    #[test]
    fn params_with_quotes_and_flags() {
        let b = br#"SIP/2.0/UDP h;branch=z9hG4bK1 ; rport;x="a;b";received=1.2.3.4"#;
        let p: Vec<_> = Params::new(b, Span::new(0, b.len())).collect();
        assert_eq!(p.len(), 4);
        assert_eq!(p[1].name.of(b), b"rport");
        assert_eq!(p[1].value, None);
        assert_eq!(p[2].value.unwrap().of(b), br#""a;b""#);
        let r = Params::new(b, Span::new(0, b.len()))
            .get(b"RECEIVED")
            .unwrap();
        assert_eq!(r.value.unwrap().of(b), b"1.2.3.4");
    }

    #[test]
    fn parse_u64_bounds() {
        assert_eq!(parse_u64(b"70", 255), Some(70));
        assert_eq!(parse_u64(b"256", 255), None);
        assert_eq!(parse_u64(b"-1", 255), None);
        assert_eq!(parse_u64(b"", 255), None);
        assert_eq!(parse_u64(b"99999999999999999999999", u64::MAX), None);
    }
}
