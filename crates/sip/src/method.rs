//! Request methods and the CSeq header (RFC 3261 §7.1, §20.16).

use crate::lex::{Span, is_lws, is_token, parse_u64, trim};

/// A request method. Methods are case-sensitive (RFC 3261 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// OPTIONS
    Options,
    /// REGISTER
    Register,
    /// PRACK (RFC 3262)
    Prack,
    /// SUBSCRIBE (RFC 6665)
    Subscribe,
    /// NOTIFY (RFC 6665)
    Notify,
    /// PUBLISH (RFC 3903)
    Publish,
    /// INFO (RFC 6086)
    Info,
    /// REFER (RFC 3515)
    Refer,
    /// MESSAGE (RFC 3428)
    Message,
    /// UPDATE (RFC 3311)
    Update,
    /// An extension method; compare the raw bytes.
    Other,
}

impl Method {
    /// Classifies a method token.
    pub fn from_bytes(b: &[u8]) -> Self {
        match b {
            b"INVITE" => Self::Invite,
            b"ACK" => Self::Ack,
            b"BYE" => Self::Bye,
            b"CANCEL" => Self::Cancel,
            b"OPTIONS" => Self::Options,
            b"REGISTER" => Self::Register,
            b"PRACK" => Self::Prack,
            b"SUBSCRIBE" => Self::Subscribe,
            b"NOTIFY" => Self::Notify,
            b"PUBLISH" => Self::Publish,
            b"INFO" => Self::Info,
            b"REFER" => Self::Refer,
            b"MESSAGE" => Self::Message,
            b"UPDATE" => Self::Update,
            _ => Self::Other,
        }
    }

    /// The method token; empty for `Other`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Invite => "INVITE",
            Self::Ack => "ACK",
            Self::Bye => "BYE",
            Self::Cancel => "CANCEL",
            Self::Options => "OPTIONS",
            Self::Register => "REGISTER",
            Self::Prack => "PRACK",
            Self::Subscribe => "SUBSCRIBE",
            Self::Notify => "NOTIFY",
            Self::Publish => "PUBLISH",
            Self::Info => "INFO",
            Self::Refer => "REFER",
            Self::Message => "MESSAGE",
            Self::Update => "UPDATE",
            Self::Other => "",
        }
    }
}

/// A parsed CSeq value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number (< 2**31, RFC 3261 §8.1.1.5).
    pub seq: u32,
    /// The method.
    pub method: Method,
    /// Span of the method token.
    pub method_span: Span,
}

impl CSeq {
    /// Parses `1*DIGIT LWS Method`; folded values are fine.
    pub fn parse(buf: &[u8], span: Span) -> Option<Self> {
        let span = trim(buf, span);
        let s = span.of(buf);
        let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
        let seq = parse_u64(&s[..digits], (1 << 31) - 1)? as u32;
        let mut p = span.start + digits;
        let ws = p;
        while p < span.end && is_lws(buf[p]) {
            p += 1;
        }
        if p == ws || p == span.end {
            return None;
        }
        let m = Span::new(p, span.end);
        if !m.of(buf).iter().all(|&b| is_token(b)) {
            return None;
        }
        Some(Self {
            seq,
            method: Method::from_bytes(m.of(buf)),
            method_span: m,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cseq() {
        let b = b"4711\r\n INVITE";
        let c = CSeq::parse(b, Span::new(0, b.len())).unwrap();
        assert_eq!((c.seq, c.method), (4711, Method::Invite));
        for bad in [
            &b"INVITE"[..],
            b"1INVITE",
            b"-1 INVITE",
            b"2147483648 INVITE",
            b"1 ",
            b"1 IN VITE",
        ] {
            assert!(CSeq::parse(bad, Span::new(0, bad.len())).is_none());
        }
        let b = b"2147483647 FOO";
        let c = CSeq::parse(b, Span::new(0, b.len())).unwrap();
        assert_eq!(c.method, Method::Other);
    }
}
