//! name-addr / addr-spec values: To, From, Contact, Route, Record-Route,
//! Refer-To, Referred-By (RFC 3261 §20, §25.1).

use crate::lex::{Params, Span, find_unquoted, trim};
use crate::uri::{Uri, UriError};

/// One parsed `[display-name] <uri> ;params` or `uri ;params` value.
#[derive(Debug, Clone, Copy)]
pub struct NameAddr<'a> {
    buf: &'a [u8],
    span: Span,
    display: Option<Span>,
    uri: Uri<'a>,
    angle: bool,
    params: Span,
}

impl<'a> NameAddr<'a> {
    /// Parses one value (not a comma list).
    pub fn parse(buf: &'a [u8], span: Span) -> Result<Self, UriError> {
        let span = trim(buf, span);
        match find_unquoted(buf, span.start, span.end, b'<') {
            Some(lt) => {
                let close = memchr::memchr(b'>', &buf[lt..span.end]).ok_or(UriError::BadByte)? + lt;
                let display = trim(buf, Span::new(span.start, lt));
                let uri = Uri::parse(buf, Span::new(lt + 1, close))?;
                let after = close + 1;
                if after < span.end && buf[after] != b';' && !crate::lex::is_lws(buf[after]) {
                    return Err(UriError::BadByte);
                }
                Ok(Self {
                    buf,
                    span,
                    display: (!display.is_empty()).then_some(display),
                    uri,
                    angle: true,
                    params: Span::new(after, span.end),
                })
            }
            None => {
                // addr-spec form: parameters after the URI belong to the header
                // (RFC 3261 §20.10), so the URI stops at the first ';'.
                let semi = memchr::memchr(b';', span.of(buf)).map_or(span.end, |i| span.start + i);
                let uri = Uri::parse(buf, trim(buf, Span::new(span.start, semi)))?;
                Ok(Self {
                    buf,
                    span,
                    display: None,
                    uri,
                    angle: false,
                    params: Span::new(semi, span.end),
                })
            }
        }
    }

    /// The whole value.
    pub fn span(&self) -> Span {
        self.span
    }

    /// The display name, quotes kept.
    pub fn display(&self) -> Option<&'a [u8]> {
        self.display.map(|s| s.of(self.buf))
    }

    /// The URI.
    pub fn uri(&self) -> &Uri<'a> {
        &self.uri
    }

    /// True when the URI was written in `<…>`.
    pub fn has_angle_brackets(&self) -> bool {
        self.angle
    }

    /// Header parameters (after the URI).
    pub fn params(&self) -> Params<'a> {
        Params::new(self.buf, self.params)
    }

    /// Span of the header parameters.
    pub fn params_span(&self) -> Span {
        self.params
    }

    /// A header parameter's value (`Some(b"")` for a flag).
    pub fn param(&self, name: &[u8]) -> Option<&'a [u8]> {
        let p = self.params().get(name)?;
        Some(p.value.map_or(&b""[..], |v| v.of(self.buf)))
    }

    /// The `tag` parameter (RFC 3261 §19.3).
    pub fn tag(&self) -> Option<&'a [u8]> {
        self.param(b"tag").filter(|t| !t.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Result<NameAddr<'_>, UriError> {
        NameAddr::parse(s.as_bytes(), Span::new(0, s.len()))
    }

    #[test]
    fn forms() {
        let a = n(r#""Bob \"the <b>\"" <sip:bob@b.example;transport=udp>;tag=abc ; x"#).unwrap();
        assert_eq!(a.display(), Some(&br#""Bob \"the <b>\"""#[..]));
        assert_eq!(a.uri().host(), b"b.example");
        assert_eq!(a.uri().param(b"transport"), Some(&b"udp"[..]));
        assert_eq!(a.tag(), Some(&b"abc"[..]));
        assert_eq!(a.param(b"x"), Some(&b""[..]));

        let b = n("sip:carol@c.example;tag=99").unwrap();
        assert!(!b.has_angle_brackets());
        assert_eq!(b.uri().as_bytes(), b"sip:carol@c.example");
        assert_eq!(b.tag(), Some(&b"99"[..]));

        let c = n("<sip:x@y>").unwrap();
        assert_eq!(c.tag(), None);
    }

    #[test]
    fn rejects() {
        assert!(n("<sip:x@y").is_err());
        assert!(n("Bob").is_err());
        assert!(n("<sip:x@y>junk").is_err());
        assert!(n("<sip:x y@z>").is_err());
    }
}
