//! SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), as spans into the
//! datagram. Only what routing and rewriting need is split out; the rest is
//! kept verbatim.

use crate::lex::{Params, Span, parse_u64, valid_host};

/// Bytes never allowed unescaped in a URI: controls, space, DEL, and the
/// delimiters `<`, `>` and `"`.
static BAD_URI_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] =
            b < 0x21 || b == 0x7f || b == b'<' as usize || b == b'>' as usize || b == b'"' as usize;
        b += 1;
    }
    t
};

/// URI scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `sip:`
    Sip,
    /// `sips:`
    Sips,
    /// `tel:`
    Tel,
    /// Anything else (kept verbatim, never routed by handover).
    Other,
}

/// Why a URI did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// No `scheme:`.
    #[error("URI has no scheme")]
    NoScheme,
    /// White space, a control byte or a delimiter (`<>"`) inside the URI.
    #[error("URI contains white space, a control byte or a delimiter")]
    BadByte,
    /// Empty or invalid host.
    #[error("URI host is invalid")]
    BadHost,
    /// Port not a number in 0..=65535.
    #[error("URI port is invalid")]
    BadPort,
}

/// A parsed URI. Every part is a span into the datagram.
#[derive(Debug, Clone, Copy)]
pub struct Uri<'a> {
    buf: &'a [u8],
    span: Span,
    scheme: Scheme,
    user: Option<Span>,
    host: Span,
    port: Option<u16>,
    params: Span,
    headers: Option<Span>,
}

impl<'a> Uri<'a> {
    /// Parses the URI that `span` of `buf` covers exactly.
    pub fn parse(buf: &'a [u8], span: Span) -> Result<Self, UriError> {
        let s = span.of(buf);
        // `<`, `>` and `"` delimit name-addr values and are never legal
        // unescaped in a URI (RFC 3261 §25.1); letting them through would
        // let a parameter hide the ones after it.
        if s.iter().any(|&b| BAD_URI_BYTE[usize::from(b)]) {
            return Err(UriError::BadByte);
        }
        let colon = memchr::memchr(b':', s).ok_or(UriError::NoScheme)?;
        let scheme_bytes = &s[..colon];
        if scheme_bytes.is_empty() || !scheme_bytes[0].is_ascii_alphabetic() {
            return Err(UriError::NoScheme);
        }
        let scheme = if scheme_bytes.eq_ignore_ascii_case(b"sip") {
            Scheme::Sip
        } else if scheme_bytes.eq_ignore_ascii_case(b"sips") {
            Scheme::Sips
        } else if scheme_bytes.eq_ignore_ascii_case(b"tel") {
            Scheme::Tel
        } else {
            Scheme::Other
        };
        let rest = span.start + colon + 1;
        let mut uri = Uri {
            buf,
            span,
            scheme,
            user: None,
            host: Span::new(rest, rest),
            port: None,
            params: Span::new(span.end, span.end),
            headers: None,
        };
        match scheme {
            Scheme::Other => Ok(uri),
            Scheme::Tel => {
                // tel:number;params — the number is the "user".
                let semi =
                    memchr::memchr(b';', &buf[rest..span.end]).map_or(span.end, |i| rest + i);
                if semi == rest {
                    return Err(UriError::BadHost);
                }
                uri.user = Some(Span::new(rest, semi));
                uri.params = Span::new(semi, span.end);
                Ok(uri)
            }
            Scheme::Sip | Scheme::Sips => {
                // '@' never appears unescaped after the userinfo (§25.1), but
                // the user part may hold '?' and ';', so split at '@' first.
                let host_start = match memchr::memchr(b'@', &buf[rest..span.end]) {
                    Some(at) => {
                        let userinfo = Span::new(rest, rest + at);
                        let user_end = memchr::memchr(b':', userinfo.of(buf))
                            .map_or(userinfo.end, |i| rest + i);
                        uri.user = Some(Span::new(rest, user_end));
                        rest + at + 1
                    }
                    None => rest,
                };
                // Headers start at the first '?' after the userinfo.
                let qmark =
                    memchr::memchr(b'?', &buf[host_start..span.end]).map(|i| host_start + i);
                let end = qmark.unwrap_or(span.end);
                if let Some(q) = qmark {
                    uri.headers = Some(Span::new(q + 1, span.end));
                }
                let (host_end, after_host) = if buf.get(host_start) == Some(&b'[') {
                    let close =
                        memchr::memchr(b']', &buf[host_start..end]).ok_or(UriError::BadHost)?;
                    (host_start + close + 1, host_start + close + 1)
                } else {
                    let stop = buf[host_start..end]
                        .iter()
                        .position(|&b| b == b':' || b == b';')
                        .map_or(end, |i| host_start + i);
                    (stop, stop)
                };
                uri.host = Span::new(host_start, host_end);
                if !valid_host(uri.host.of(buf)) {
                    return Err(UriError::BadHost);
                }
                let mut p = after_host;
                if buf.get(p) == Some(&b':') && p < end {
                    let pstart = p + 1;
                    let pend = memchr::memchr(b';', &buf[pstart..end]).map_or(end, |i| pstart + i);
                    let port = parse_u64(&buf[pstart..pend], 65535).ok_or(UriError::BadPort)?;
                    uri.port = Some(port as u16);
                    p = pend;
                }
                if p < end && buf[p] != b';' {
                    return Err(UriError::BadHost);
                }
                uri.params = Span::new(p, end);
                Ok(uri)
            }
        }
    }

    /// The whole URI.
    pub fn span(&self) -> Span {
        self.span
    }

    /// The whole URI as bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.span.of(self.buf)
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The user part (for tel URIs, the number), escapes kept.
    pub fn user(&self) -> Option<&'a [u8]> {
        self.user.map(|s| s.of(self.buf))
    }

    /// The host, IPv6 references with their brackets; empty for tel and
    /// unknown schemes.
    pub fn host(&self) -> &'a [u8] {
        self.host.of(self.buf)
    }

    /// Span of the host.
    pub fn host_span(&self) -> Span {
        self.host
    }

    /// The explicit port.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Span of the parameters, from the first `;` up to `?` or the end
    /// (empty and positioned where a parameter would be appended when there
    /// are none).
    pub fn params_span(&self) -> Span {
        self.params
    }

    /// The URI parameters.
    pub fn params(&self) -> Params<'a> {
        Params::new(self.buf, self.params)
    }

    /// The value of parameter `name`: `Some(b"")` for a flag parameter.
    pub fn param(&self, name: &[u8]) -> Option<&'a [u8]> {
        let p = self.params().get(name)?;
        Some(p.value.map_or(&b""[..], |v| v.of(self.buf)))
    }

    /// The headers part after `?`, if any.
    pub fn headers(&self) -> Option<&'a [u8]> {
        self.headers.map(|s| s.of(self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Uri<'_>, UriError> {
        Uri::parse(s.as_bytes(), Span::new(0, s.len()))
    }

    #[test]
    fn sip_uri_parts() {
        let u = p("sip:alice:secret@Example.COM:5070;transport=udp;lr?subject=x").unwrap();
        assert_eq!(u.scheme(), Scheme::Sip);
        assert_eq!(u.user(), Some(&b"alice"[..]));
        assert_eq!(u.host(), b"Example.COM");
        assert_eq!(u.port(), Some(5070));
        assert_eq!(u.param(b"transport"), Some(&b"udp"[..]));
        assert_eq!(u.param(b"LR"), Some(&b""[..]));
        assert_eq!(u.headers(), Some(&b"subject=x"[..]));
    }

    #[test]
    fn ipv6_and_escaped_user() {
        let u = p("sip:?a/b,c@h?x=y").unwrap();
        assert_eq!(u.user(), Some(&b"?a/b,c"[..]));
        assert_eq!(u.host(), b"h");
        assert_eq!(u.headers(), Some(&b"x=y"[..]));
        let u = p("sips:%61lice;par=u%40x@[2001:db8::10]:5061").unwrap();
        assert_eq!(u.scheme(), Scheme::Sips);
        assert_eq!(u.user(), Some(&b"%61lice;par=u%40x"[..]));
        assert_eq!(u.host(), b"[2001:db8::10]");
        assert_eq!(u.port(), Some(5061));
    }

    #[test]
    fn tel_and_other() {
        let u = p("tel:+1-201-555-0123;phone-context=x").unwrap();
        assert_eq!(u.user(), Some(&b"+1-201-555-0123"[..]));
        assert_eq!(u.param(b"phone-context"), Some(&b"x"[..]));
        assert_eq!(p("urn:service:sos").unwrap().scheme(), Scheme::Other);
    }

    #[test]
    fn rejects() {
        assert_eq!(p("sip:a b@x").unwrap_err(), UriError::BadByte);
        assert_eq!(p("nocolon").unwrap_err(), UriError::NoScheme);
        assert_eq!(p("sip:x:99999").unwrap_err(), UriError::BadPort);
        assert_eq!(p("sip:x:").unwrap_err(), UriError::BadPort);
        assert_eq!(p("sip:@").unwrap_err(), UriError::BadHost);
        assert_eq!(p("sip:[::1").unwrap_err(), UriError::BadHost);
        assert_eq!(p("sip:ho<st").unwrap_err(), UriError::BadByte);
        assert_eq!(
            p("tel:+1;phone-context=e<x;k=1").unwrap_err(),
            UriError::BadByte
        );
    }
}
