//! SIP on a byte stream (TCP, TLS): where one message ends and the next
//! begins. Sans-IO: bytes in, messages out.
//!
//! A message is its header block up to the empty line, then exactly
//! Content-Length bytes of body (RFC 3261 §18.3: on a stream the header
//! is mandatory). Between messages a double CRLF is a keep-alive ping
//! (answered with one CRLF, RFC 5626 §4.4.1) and a lone CRLF is skipped
//! (RFC 3261 §7.5; also what a pong looks like). Anything that cannot be
//! framed (no Content-Length, a bad one, a message over the limit) is an
//! error: a stream cannot be resynchronised, so the connection is closed.
//!
//! Why by hand: this is the per-message hot path of every stream, and it
//! must refuse a too-large message from its header, before the body is
//! buffered; a general HTTP-style codec would read more than we allow.

use memchr::memmem;

/// What the buffered bytes hold next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// A whole message: the first `len` bytes of [`Framer::buffered`]
    /// (call [`Framer::consume`] after use).
    Message {
        /// Its length in bytes.
        len: usize,
    },
    /// A double-CRLF ping (already consumed): answer `\r\n`.
    Ping,
}

/// Why a stream cannot be read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The header block or the whole message is over the limit.
    TooLarge,
    /// No Content-Length, or one that is not a number.
    BadLength,
}

impl FrameError {
    /// Label for `handover_edge_connections_closed_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            FrameError::TooLarge => "too_large",
            FrameError::BadLength => "bad_content_length",
        }
    }
}

/// The read side of one connection.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    max: usize,
}

impl Framer {
    /// A framer refusing messages over `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The bytes not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// True while part of a message is buffered (its deadline runs).
    pub fn partial(&self) -> bool {
        self.buf.iter().any(|&b| !matches!(b, b'\r' | b'\n'))
    }

    /// Drops the first `n` bytes (a message that was handled).
    pub fn consume(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
        if self.buf.is_empty() && self.buf.capacity() > 64 << 10 {
            // One large message must not pin its buffer for the
            // connection's life.
            self.buf = Vec::new();
        }
    }

    /// The next item, `Ok(None)` when more bytes are needed.
    pub fn next_item(&mut self) -> Result<Option<Item>, FrameError> {
        loop {
            match self.buf.as_slice() {
                [] => return Ok(None),
                [b'\r', b'\n', b'\r', b'\n', ..] => {
                    self.buf.drain(..4);
                    return Ok(Some(Item::Ping));
                }
                // Could still become a ping.
                [b'\r'] | [b'\r', b'\n'] | [b'\r', b'\n', b'\r'] => return Ok(None),
                [b'\r', b'\n', ..] => {
                    self.buf.drain(..2);
                }
                [b'\n', ..] => {
                    self.buf.drain(..1);
                }
                _ => break,
            }
        }
        let limit = self.buf.len().min(self.max);
        let Some(head_end) = header_end(&self.buf[..limit]) else {
            return if self.buf.len() >= self.max {
                Err(FrameError::TooLarge)
            } else {
                Ok(None)
            };
        };
        let body = content_length(&self.buf[..head_end])?;
        let len = head_end
            .checked_add(body)
            .filter(|&n| n <= self.max)
            .ok_or(FrameError::TooLarge)?;
        if self.buf.len() < len {
            return Ok(None);
        }
        Ok(Some(Item::Message { len }))
    }
}

/// The end of the header block, just past its empty line (CRLF, or the
/// bare LF the scanner accepts too).
fn header_end(b: &[u8]) -> Option<usize> {
    let crlf = memmem::find(b, b"\r\n\r\n").map(|i| i + 4);
    let lf = memmem::find(b, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(c), Some(l)) => Some(c.min(l)),
        (c, l) => c.or(l),
    }
}

/// The Content-Length of a header block (long or compact form, any case,
/// a folded line never holds it). Two that differ are refused.
fn content_length(head: &[u8]) -> Result<usize, FrameError> {
    let mut found: Option<usize> = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = trim(&line[..colon]);
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let v = trim(&line[colon + 1..]);
        if v.is_empty() || v.len() > 12 || !v.iter().all(u8::is_ascii_digit) {
            return Err(FrameError::BadLength);
        }
        let n = v
            .iter()
            .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(FrameError::BadLength);
        }
        found = Some(n);
    }
    found.ok_or(FrameError::BadLength)
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/TCP a;branch=z9hG4bK1\r\n\
l: 5\r\n\r\nhello";

    fn all(f: &mut Framer) -> Vec<Result<Item, FrameError>> {
        let mut v = Vec::new();
        loop {
            match f.next_item() {
                Ok(None) => return v,
                Ok(Some(Item::Message { len })) => {
                    v.push(Ok(Item::Message { len }));
                    f.consume(len);
                }
                Ok(Some(i)) => v.push(Ok(i)),
                Err(e) => {
                    v.push(Err(e));
                    return v;
                }
            }
        }
    }

    #[test]
    fn rfc3261_18_3_messages_end_where_content_length_says_whatever_the_reads() {
        let mut stream = Vec::new();
        stream.extend_from_slice(MSG);
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(MSG);
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(&MSG.replace_crlf());
        for chunk in [1, 2, 3, 7, 64, stream.len()] {
            let mut f = Framer::new(1024);
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                f.push(c);
                got.extend(all(&mut f));
            }
            let lf_len = MSG.replace_crlf().len();
            assert_eq!(
                got,
                vec![
                    Ok(Item::Message { len: MSG.len() }),
                    Ok(Item::Ping),
                    Ok(Item::Message { len: MSG.len() }),
                    Ok(Item::Message { len: lf_len }),
                ],
                "read {chunk} bytes at a time"
            );
            assert!(!f.partial());
        }
    }

    #[test]
    fn what_cannot_be_framed_closes_the_stream() {
        let mut f = Framer::new(1024);
        f.push(b"OPTIONS sip:x@y SIP/2.0\r\nVia: x\r\n\r\n");
        assert_eq!(
            f.next_item(),
            Err(FrameError::BadLength),
            "no Content-Length"
        );
        for bad in [
            "Content-Length: -1",
            "Content-Length: 1x",
            "l: 99999999999999999999",
        ] {
            let mut f = Framer::new(1024);
            f.push(format!("OPTIONS sip:x@y SIP/2.0\r\n{bad}\r\n\r\n").as_bytes());
            assert_eq!(f.next_item(), Err(FrameError::BadLength), "{bad}");
        }
        let mut f = Framer::new(1024);
        f.push(b"OPTIONS sip:x@y SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(f.next_item(), Err(FrameError::BadLength), "two that differ");
        // 10 MB announced: refused from the header, before any body.
        let mut f = Framer::new(65_535);
        f.push(b"INVITE sip:x@y SIP/2.0\r\nContent-Length: 10000000\r\n\r\n");
        assert_eq!(f.next_item(), Err(FrameError::TooLarge));
        // A header block that never ends.
        let mut f = Framer::new(1024);
        f.push(&[b'a'; 1024]);
        assert_eq!(f.next_item(), Err(FrameError::TooLarge));
        // Half a message waits, and counts as partial.
        let mut f = Framer::new(1024);
        f.push(&MSG[..30]);
        assert_eq!(f.next_item(), Ok(None));
        assert!(f.partial());
    }

    trait LfOnly {
        fn replace_crlf(&self) -> Vec<u8>;
    }
    impl LfOnly for [u8] {
        fn replace_crlf(&self) -> Vec<u8> {
            String::from_utf8_lossy(self)
                .replace("\r\n", "\n")
                .into_bytes()
        }
    }
}
