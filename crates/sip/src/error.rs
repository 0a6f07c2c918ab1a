//! Why a datagram was refused, and what the server answers.

use crate::header::HeaderName;
use crate::lex::Span;

/// Why a datagram is not a usable SIP message. Each reason knows the status
/// a server answers with ([`Reason::status`]); whether an answer can be
/// formed at all is decided by [`crate::ScanError::verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    /// The first line is neither a request line nor a status line.
    #[error("Not a SIP message")]
    NotSip,
    /// The datagram ends before the empty line that ends the headers.
    #[error("Truncated message")]
    Truncated,
    /// Request line with a SIP version other than 2.0.
    #[error("Version Not Supported")]
    BadVersion,
    /// Request line or status line with the wrong shape.
    #[error("Malformed start line")]
    MalformedStartLine,
    /// A header line without `name:`.
    #[error("Malformed header line")]
    MalformedHeaderLine,
    /// A NUL byte in the start line or headers.
    #[error("NUL byte in message")]
    NulByte,
    /// A mandatory header (RFC 3261 §8.1.1) is missing.
    #[error("Missing {} header", .0.as_str())]
    MissingHeader(HeaderName),
    /// A header that may appear once appears twice.
    #[error("Duplicate {} header", .0.as_str())]
    DuplicateHeader(HeaderName),
    /// A header value does not parse.
    #[error("Malformed {} header", .0.as_str())]
    MalformedHeader(HeaderName),
    /// Request-URI does not parse.
    #[error("Malformed Request-URI")]
    MalformedRequestUri,
    /// CSeq method differs from the request method (RFC 3261 §8.1.1.5).
    #[error("CSeq method does not match request method")]
    CSeqMethodMismatch,
    /// Content-Length claims more bytes than the datagram holds (§18.3).
    #[error("Content-Length larger than body")]
    BodyTooShort,
    /// Request-URI longer than the configured limit.
    #[error("Request-URI Too Long")]
    UriTooLong,
    /// Request-URI scheme handover does not serve.
    #[error("Unsupported URI Scheme")]
    UnsupportedUriScheme,
    /// Datagram larger than the configured limit.
    #[error("Message Too Large")]
    MessageTooLarge,
    /// Max-Forwards reached zero (RFC 3261 §16.3 step 3).
    #[error("Too Many Hops")]
    TooManyHops,
    /// The request already went through this proxy (§16.3 step 4).
    #[error("Loop Detected")]
    LoopDetected,
    /// Proxy-Require names an extension handover does not support (§16.3 step 5).
    #[error("Bad Extension")]
    BadExtension,
    /// No backend or worker is up to take the request.
    #[error("Service Unavailable")]
    NoBackend,
    /// The source started more dialogs this second than its budget.
    #[error("Service Unavailable")]
    SourceOverBudget,
    /// A worker's request aimed at a destination network the edge does
    /// not send to (`deny_destinations`).
    #[error("Forbidden")]
    DestinationDenied,
}

impl Reason {
    /// The status code a server answers with (RFC 3261 §21).
    pub const fn status(self) -> u16 {
        match self {
            Self::BadVersion => 505,
            Self::UriTooLong => 414,
            Self::UnsupportedUriScheme => 416,
            Self::MessageTooLarge => 413,
            Self::TooManyHops => 483,
            Self::LoopDetected => 482,
            Self::BadExtension => 420,
            Self::NoBackend | Self::SourceOverBudget => 503,
            Self::DestinationDenied => 403,
            _ => 400,
        }
    }

    /// A short, stable, snake-case name for counters and logs.
    pub const fn label(self) -> &'static str {
        match self {
            Self::NotSip => "not_sip",
            Self::Truncated => "truncated",
            Self::BadVersion => "bad_version",
            Self::MalformedStartLine => "malformed_start_line",
            Self::MalformedHeaderLine => "malformed_header_line",
            Self::NulByte => "nul_byte",
            Self::MissingHeader(_) => "missing_header",
            Self::DuplicateHeader(_) => "duplicate_header",
            Self::MalformedHeader(_) => "malformed_header",
            Self::MalformedRequestUri => "malformed_request_uri",
            Self::CSeqMethodMismatch => "cseq_method_mismatch",
            Self::BodyTooShort => "body_too_short",
            Self::UriTooLong => "uri_too_long",
            Self::UnsupportedUriScheme => "unsupported_uri_scheme",
            Self::MessageTooLarge => "message_too_large",
            Self::TooManyHops => "too_many_hops",
            Self::LoopDetected => "loop_detected",
            Self::BadExtension => "bad_extension",
            Self::NoBackend => "no_backend",
            Self::SourceOverBudget => "source_over_budget",
            Self::DestinationDenied => "destination_denied",
        }
    }
}

/// What a server does with a refused datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answer with this status; the reason phrase is the [`Reason`]'s text.
    Reply(u16),
    /// Drop silently (and count): a response, an ACK, or too little to answer.
    Drop,
}

/// The parts of a request a server copies into its response (RFC 3261
/// §8.2.6.2), kept even when the request was refused so it can be answered.
#[derive(Debug, Clone, Copy)]
pub struct ReplyParts<'a> {
    pub(crate) buf: &'a [u8],
    /// The header block; Via lines are copied from it in order.
    pub(crate) headers: Span,
    pub(crate) from: Option<Span>,
    pub(crate) to: Option<Span>,
    pub(crate) call_id: Option<Span>,
    pub(crate) cseq: Option<Span>,
    pub(crate) timestamp: Option<Span>,
}

/// A refused datagram: the reason, and what is needed to answer it when an
/// answer can be formed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{reason}")]
pub struct ScanError<'a> {
    /// Why it was refused.
    pub reason: Reason,
    pub(crate) reply: Option<ReplyParts<'a>>,
}

impl<'a> ScanError<'a> {
    /// Reply with the reason's status, or drop.
    pub fn verdict(&self) -> Verdict {
        match self.reply {
            Some(_) => Verdict::Reply(self.reason.status()),
            None => Verdict::Drop,
        }
    }

    /// What an answer copies from the request, when one can be formed.
    pub fn reply_parts(&self) -> Option<&ReplyParts<'a>> {
        self.reply.as_ref()
    }
}
