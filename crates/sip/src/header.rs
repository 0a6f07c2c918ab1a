//! Header names: long and compact forms (RFC 3261 §7.3.3 and the RFCs that
//! registered later compact forms), matched ASCII case-insensitively.

/// The headers handover looks at by name. Anything else is `Other` and is
/// passed through untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderName {
    /// `Via` / `v`
    Via,
    /// `Call-ID` / `i`
    CallId,
    /// `CSeq`
    CSeq,
    /// `Max-Forwards`
    MaxForwards,
    /// `Route`
    Route,
    /// `Record-Route`
    RecordRoute,
    /// `Content-Length` / `l`
    ContentLength,
    /// `Content-Type` / `c`
    ContentType,
    /// `To` / `t`
    To,
    /// `From` / `f`
    From,
    /// `Contact` / `m`
    Contact,
    /// `Supported` / `k`
    Supported,
    /// `Subject` / `s`
    Subject,
    /// `Content-Encoding` / `e`
    ContentEncoding,
    /// `Event` / `o` (RFC 6665)
    Event,
    /// `Refer-To` / `r` (RFC 3515)
    ReferTo,
    /// `Allow-Events` / `u` (RFC 6665)
    AllowEvents,
    /// `Session-Expires` / `x` (RFC 4028)
    SessionExpires,
    /// `Referred-By` / `b` (RFC 3892)
    ReferredBy,
    /// `Require`
    Require,
    /// `Proxy-Require`
    ProxyRequire,
    /// `Unsupported`
    Unsupported,
    /// `Allow`
    Allow,
    /// `Replaces` (RFC 3891)
    Replaces,
    /// `Timestamp`
    Timestamp,
    /// `Subscription-State` (RFC 6665)
    SubscriptionState,
    /// `Min-SE` (RFC 4028)
    MinSe,
    /// `Expires`
    Expires,
    /// Any other header.
    Other,
}

impl HeaderName {
    /// Classifies a header name as it appears on the wire.
    #[inline]
    pub fn from_bytes(name: &[u8]) -> Self {
        if name.len() == 1 {
            return match name[0].to_ascii_lowercase() {
                b'v' => Self::Via,
                b'i' => Self::CallId,
                b'm' => Self::Contact,
                b'f' => Self::From,
                b't' => Self::To,
                b'l' => Self::ContentLength,
                b'c' => Self::ContentType,
                b'k' => Self::Supported,
                b's' => Self::Subject,
                b'e' => Self::ContentEncoding,
                b'o' => Self::Event,
                b'r' => Self::ReferTo,
                b'u' => Self::AllowEvents,
                b'x' => Self::SessionExpires,
                b'b' => Self::ReferredBy,
                _ => Self::Other,
            };
        }
        // (length, first, last) picks the one candidate; one comparison
        // confirms it.
        let first = name[0] | 0x20;
        let last = name[name.len() - 1] | 0x20;
        let candidate = match (name.len(), first, last) {
            (2, b't', b'o') => Self::To,
            (3, b'v', b'a') => Self::Via,
            (4, b'c', b'q') => Self::CSeq,
            (4, b'f', b'm') => Self::From,
            (5, b'r', b'e') => Self::Route,
            (5, b'a', b'w') => Self::Allow,
            (5, b'e', b't') => Self::Event,
            (6, b'm', b'e') => Self::MinSe,
            (7, b'c', b'd') => Self::CallId,
            (7, b'c', b't') => Self::Contact,
            (7, b's', b't') => Self::Subject,
            (7, b'r', b'e') => Self::Require,
            (7, b'e', b's') => Self::Expires,
            (8, b'r', b's') => Self::Replaces,
            (8, b'r', b'o') => Self::ReferTo,
            (9, b's', b'd') => Self::Supported,
            (9, b't', b'p') => Self::Timestamp,
            (11, b'u', b'd') => Self::Unsupported,
            (11, b'r', b'y') => Self::ReferredBy,
            (12, b'm', b's') => Self::MaxForwards,
            (12, b'r', b'e') => Self::RecordRoute,
            (12, b'c', b'e') => Self::ContentType,
            (12, b'a', b's') => Self::AllowEvents,
            (13, b'p', b'e') => Self::ProxyRequire,
            (14, b'c', b'h') => Self::ContentLength,
            (15, b's', b's') => Self::SessionExpires,
            (16, b'c', b'g') => Self::ContentEncoding,
            (18, b's', b'e') => Self::SubscriptionState,
            _ => return Self::Other,
        };
        if eq_folded(name, candidate.lower()) {
            candidate
        } else {
            Self::Other
        }
    }

    /// The long form in lower case.
    const fn lower(self) -> &'static [u8] {
        match self {
            Self::Via => b"via",
            Self::CallId => b"call-id",
            Self::CSeq => b"cseq",
            Self::MaxForwards => b"max-forwards",
            Self::Route => b"route",
            Self::RecordRoute => b"record-route",
            Self::ContentLength => b"content-length",
            Self::ContentType => b"content-type",
            Self::To => b"to",
            Self::From => b"from",
            Self::Contact => b"contact",
            Self::Supported => b"supported",
            Self::Subject => b"subject",
            Self::ContentEncoding => b"content-encoding",
            Self::Event => b"event",
            Self::ReferTo => b"refer-to",
            Self::AllowEvents => b"allow-events",
            Self::SessionExpires => b"session-expires",
            Self::ReferredBy => b"referred-by",
            Self::Require => b"require",
            Self::ProxyRequire => b"proxy-require",
            Self::Unsupported => b"unsupported",
            Self::Allow => b"allow",
            Self::Replaces => b"replaces",
            Self::Timestamp => b"timestamp",
            Self::SubscriptionState => b"subscription-state",
            Self::MinSe => b"min-se",
            Self::Expires => b"expires",
            Self::Other => b"",
        }
    }

    /// Canonical long form, as handover writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Via => "Via",
            Self::CallId => "Call-ID",
            Self::CSeq => "CSeq",
            Self::MaxForwards => "Max-Forwards",
            Self::Route => "Route",
            Self::RecordRoute => "Record-Route",
            Self::ContentLength => "Content-Length",
            Self::ContentType => "Content-Type",
            Self::To => "To",
            Self::From => "From",
            Self::Contact => "Contact",
            Self::Supported => "Supported",
            Self::Subject => "Subject",
            Self::ContentEncoding => "Content-Encoding",
            Self::Event => "Event",
            Self::ReferTo => "Refer-To",
            Self::AllowEvents => "Allow-Events",
            Self::SessionExpires => "Session-Expires",
            Self::ReferredBy => "Referred-By",
            Self::Require => "Require",
            Self::ProxyRequire => "Proxy-Require",
            Self::Unsupported => "Unsupported",
            Self::Allow => "Allow",
            Self::Replaces => "Replaces",
            Self::Timestamp => "Timestamp",
            Self::SubscriptionState => "Subscription-State",
            Self::MinSe => "Min-SE",
            Self::Expires => "Expires",
            Self::Other => "",
        }
    }

    /// Headers whose value is a comma-separated list (RFC 3261 §7.3.1), so
    /// one header line may hold several values.
    pub const fn is_list(self) -> bool {
        matches!(
            self,
            Self::Via
                | Self::Route
                | Self::RecordRoute
                | Self::Contact
                | Self::Supported
                | Self::Require
                | Self::ProxyRequire
                | Self::Unsupported
                | Self::Allow
                | Self::AllowEvents
        )
    }
}

/// `name` equals `lower` ignoring ASCII case. Header names are letters
/// and `-`, which already has the 0x20 bit, so OR-ing 0x20 folds case;
/// eight bytes at a time. A byte that differs only in the 0x20 bit from a
/// non-letter (`\r` vs `-`…) cannot reach here: the name is a token.
#[inline]
fn eq_folded(name: &[u8], lower: &[u8]) -> bool {
    if name.len() != lower.len() {
        return false;
    }
    let mut a = name.chunks_exact(8);
    let mut b = lower.chunks_exact(8);
    for (x, y) in (&mut a).zip(&mut b) {
        let x = u64::from_le_bytes(x.try_into().expect("8 bytes"));
        let y = u64::from_le_bytes(y.try_into().expect("8 bytes"));
        if x | 0x2020_2020_2020_2020 != y {
            return false;
        }
    }
    a.remainder()
        .iter()
        .zip(b.remainder())
        .all(|(x, y)| x | 0x20 == *y)
}

#[cfg(test)]
mod tests {
    use super::HeaderName as H;

    #[test]
    fn compact_and_long_forms_case_insensitive() {
        for (wire, want) in [
            (&b"v"[..], H::Via),
            (b"VIA", H::Via),
            (b"i", H::CallId),
            (b"call-id", H::CallId),
            (b"CSEQ", H::CSeq),
            (b"m", H::Contact),
            (b"f", H::From),
            (b"t", H::To),
            (b"L", H::ContentLength),
            (b"content-length", H::ContentLength),
            (b"c", H::ContentType),
            (b"k", H::Supported),
            (b"s", H::Subject),
            (b"e", H::ContentEncoding),
            (b"o", H::Event),
            (b"r", H::ReferTo),
            (b"u", H::AllowEvents),
            (b"x", H::SessionExpires),
            (b"b", H::ReferredBy),
            (b"max-forwards", H::MaxForwards),
            (b"Record-Route", H::RecordRoute),
            (b"X-Custom", H::Other),
            (b"z", H::Other),
            (b"Route", H::Route),
            (b"Subscription-State", H::SubscriptionState),
            (b"Min-SE", H::MinSe),
            (b"Call-IX", H::Other),
            (b"Vie", H::Other),
        ] {
            assert_eq!(
                H::from_bytes(wire),
                want,
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
    }
}
