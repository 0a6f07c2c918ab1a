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
        // Candidates by length first, so most names cost one comparison.
        let candidates: &[Self] = match name.len() {
            2 => &[Self::To],
            3 => &[Self::Via],
            4 => &[Self::CSeq, Self::From],
            5 => &[Self::Route, Self::Allow, Self::Event],
            6 => &[Self::MinSe],
            7 => &[
                Self::CallId,
                Self::Contact,
                Self::Subject,
                Self::Require,
                Self::Expires,
            ],
            8 => &[Self::Replaces, Self::ReferTo],
            9 => &[Self::Supported, Self::Timestamp],
            11 => &[Self::Unsupported, Self::ReferredBy],
            12 => &[
                Self::MaxForwards,
                Self::RecordRoute,
                Self::ContentType,
                Self::AllowEvents,
            ],
            13 => &[Self::ProxyRequire],
            14 => &[Self::ContentLength],
            15 => &[Self::SessionExpires],
            16 => &[Self::ContentEncoding],
            18 => &[Self::SubscriptionState],
            _ => &[],
        };
        for &c in candidates {
            if c.as_str().as_bytes().eq_ignore_ascii_case(name) {
                return c;
            }
        }
        Self::Other
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
