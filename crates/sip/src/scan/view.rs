//! The typed views of a scanned [`Message`]: its start line, the headers
//! the scanner found (Via, From, To, Call-ID, CSeq, Contact, …) and the
//! others by name, each a span into the datagram.

use super::*;

impl<'a> Message<'a> {
    /// The datagram the message was scanned from (including any bytes past
    /// the body, which are not part of the message).
    pub fn buf(&self) -> &'a [u8] {
        self.buf
    }

    /// The message itself: start line to the end of the body.
    pub fn as_bytes(&self) -> &'a [u8] {
        &self.buf[self.start_span.start..self.body.end]
    }

    /// The start line.
    pub fn start_line(&self) -> StartLine {
        self.start
    }

    /// Span of the start line (without its line end).
    pub fn start_line_span(&self) -> Span {
        self.start_span
    }

    /// True for a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method (`None` for a response).
    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The method token as written (requests), or CSeq's (responses).
    pub fn method_bytes(&self) -> &'a [u8] {
        match self.start {
            StartLine::Request { method_span, .. } => method_span.of(self.buf),
            StartLine::Response { .. } => self.cseq.1.method_span.of(self.buf),
        }
    }

    /// The status code (`None` for a request).
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { status, .. } => Some(status),
            StartLine::Request { .. } => None,
        }
    }

    /// The Request-URI (requests only).
    pub fn request_uri(&self) -> Option<&Uri<'a>> {
        self.request_uri.as_ref()
    }

    /// The header block: first header line to just before the empty line.
    pub fn header_block(&self) -> Span {
        self.headers
    }

    /// Every header, in order.
    pub fn headers(&self) -> Headers<'a> {
        Headers {
            buf: self.buf,
            pos: self.headers.start,
            end: self.headers.end,
        }
    }

    /// Every value of header `name` across all its lines, comma lists split.
    /// Only meaningful for list headers ([`HeaderName::is_list`]).
    pub fn values(&self, name: HeaderName) -> Values<'a> {
        Values {
            headers: self.headers(),
            name,
            current: None,
        }
    }

    /// The first header line called `name`.
    pub fn header(&self, name: HeaderName) -> Option<Header> {
        self.headers().find(|h| h.name == name)
    }

    /// The first Via header line.
    pub fn via_field(&self) -> Field {
        self.via
    }

    /// The top Via value.
    pub fn top_via(&self) -> &Via<'a> {
        &self.top_via
    }

    /// Every Via value, top first.
    pub fn vias(&self) -> impl Iterator<Item = Via<'a>> + 'a {
        let buf = self.buf;
        self.values(HeaderName::Via)
            .filter_map(move |s| Via::parse(buf, s))
    }

    /// The Call-ID.
    pub fn call_id(&self) -> &'a [u8] {
        self.call_id.value.of(self.buf)
    }

    /// The Call-ID header.
    pub fn call_id_field(&self) -> Field {
        self.call_id
    }

    /// CSeq.
    pub fn cseq(&self) -> CSeq {
        self.cseq.1
    }

    /// The From value, parsed (RFC 3261 §16.3: a proxy only checks what it
    /// uses, so `scan` does not parse From; a UA calls [`Message::ua_check`]).
    pub fn from(&self) -> Result<NameAddr<'a>, crate::uri::UriError> {
        NameAddr::parse(self.buf, self.from.value)
    }

    /// The To value, parsed (see [`Message::from`]).
    pub fn to(&self) -> Result<NameAddr<'a>, crate::uri::UriError> {
        NameAddr::parse(self.buf, self.to.value)
    }

    /// The From tag, found without parsing the URI.
    pub fn from_tag(&self) -> Option<&'a [u8]> {
        tag_of(self.buf, self.from.value)
    }

    /// The To tag, found without parsing the URI.
    pub fn to_tag(&self) -> Option<&'a [u8]> {
        tag_of(self.buf, self.to.value)
    }

    /// The From header.
    pub fn from_field(&self) -> Field {
        self.from
    }

    /// The To header.
    pub fn to_field(&self) -> Field {
        self.to
    }

    /// The checks a user agent (the B2BUA) adds to [`scan`]'s proxy-grade
    /// ones: From, To and Contact must parse. The reason's status is the
    /// answer (400 naming the header).
    pub fn ua_check(&self) -> Result<(), Reason> {
        self.from()
            .map_err(|_| Reason::MalformedHeader(HeaderName::From))?;
        self.to()
            .map_err(|_| Reason::MalformedHeader(HeaderName::To))?;
        if let Some(Err(_)) = self.contact() {
            return Err(Reason::MalformedHeader(HeaderName::Contact));
        }
        Ok(())
    }

    /// Max-Forwards, when present.
    pub fn max_forwards(&self) -> Option<u32> {
        self.max_forwards.map(|(_, n)| n)
    }

    /// The Max-Forwards header, when present.
    pub fn max_forwards_field(&self) -> Option<Field> {
        self.max_forwards.map(|(f, _)| f)
    }

    /// The Content-Length header, when present.
    pub fn content_length_field(&self) -> Option<Field> {
        self.content_length
    }

    /// The Content-Type value.
    pub fn content_type(&self) -> Option<&'a [u8]> {
        self.content_type.map(|f| f.value.of(self.buf))
    }

    /// The first Route header line.
    pub fn route_field(&self) -> Option<Field> {
        self.route
    }

    /// The top Route value, parsed (`Some(Err)` when it does not parse).
    pub fn top_route(&self) -> Option<Result<NameAddr<'a>, crate::uri::UriError>> {
        let f = self.route?;
        let v = CommaValues::new(self.buf, f.value).next()?;
        Some(NameAddr::parse(self.buf, v))
    }

    /// The first Record-Route header line.
    pub fn record_route_field(&self) -> Option<Field> {
        self.record_route
    }

    /// Every Record-Route value, parsed, top first; values that do not
    /// parse are skipped.
    pub fn record_routes(&self) -> impl Iterator<Item = NameAddr<'a>> + 'a {
        let buf = self.buf;
        self.values(HeaderName::RecordRoute)
            .filter_map(move |s| NameAddr::parse(buf, s).ok())
    }

    /// The first Contact value (`None` when absent or `*`; `Some(Err)` when
    /// it does not parse).
    pub fn contact(&self) -> Option<Result<NameAddr<'a>, crate::uri::UriError>> {
        let f = self.contact?;
        let v = CommaValues::new(self.buf, f.value).next()?;
        if v.of(self.buf) == b"*" {
            return None;
        }
        Some(NameAddr::parse(self.buf, v))
    }

    /// The body (exactly Content-Length bytes when that header is present).
    pub fn body(&self) -> &'a [u8] {
        self.body.of(self.buf)
    }

    /// Span of the body.
    pub fn body_span(&self) -> Span {
        self.body
    }

    /// What a response to this request copies (RFC 3261 §8.2.6.2).
    pub fn reply_parts(&self) -> ReplyParts<'a> {
        ReplyParts {
            buf: self.buf,
            headers: self.headers,
            from: Some(self.from.value),
            to: Some(self.to.value),
            call_id: Some(self.call_id.value),
            cseq: Some(self.cseq.0.value),
            timestamp: self.timestamp.map(|f| f.value),
        }
    }
}
