//! Several SIP messages in one datagram, for the hop from a worker to its
//! edge only: what one received datagram makes a worker send (A's INVITE:
//! 100 Trying to A and the INVITE to B; B's 2xx: the ACK and the 2xx to A;
//! a BYE: its 200 and the BYE on the other leg) goes to the edge as one
//! datagram, so the hop costs one kernel send and one receive where it
//! cost two (docs/benchmarks.md, "Where a call's CPU goes").
//!
//! The form: `\0HB\x01`, then for each message its length (two bytes, big
//! endian, at least 1) and its bytes. A SIP message never starts with a
//! zero byte, so an edge tells a bundle from a message by the first byte.
//! A lone message is sent as itself, never bundled. Hand-written: four
//! bytes of magic and a length per message are the whole format, on the
//! hot path of every call.

/// The first four bytes of a bundle.
pub const BUNDLE_MAGIC: &[u8; 4] = b"\0HB\x01";

/// Largest message a bundle carries (its length must fit two bytes).
pub const BUNDLE_MAX_MESSAGE: usize = u16::MAX as usize;

/// Whether `datagram` is a bundle (its messages are not checked).
pub fn is_bundle(datagram: &[u8]) -> bool {
    datagram.first() == Some(&0)
}

/// The messages of a well-formed bundle, in order, or `None` when
/// `datagram` is not one: wrong magic, a zero length, a length past the
/// end, bytes left over, or no message at all. Checked whole before any
/// message is read, so a malformed bundle is dropped entire.
pub fn bundle_messages(datagram: &[u8]) -> Option<BundleMessages<'_>> {
    let rest = datagram.strip_prefix(BUNDLE_MAGIC.as_slice())?;
    let mut at = 0usize;
    let mut n = 0usize;
    while at < rest.len() {
        let len = usize::from(u16::from_be_bytes([*rest.get(at)?, *rest.get(at + 1)?]));
        if len == 0 {
            return None;
        }
        at = at.checked_add(2)?.checked_add(len)?;
        if at > rest.len() {
            return None;
        }
        n += 1;
    }
    (n > 0).then_some(BundleMessages { rest })
}

/// Iterator over a checked bundle's messages (see [`bundle_messages`]).
#[derive(Debug, Clone)]
pub struct BundleMessages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for BundleMessages<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        let (m, rest) = rest.split_at_checked(len)?;
        self.rest = rest;
        Some(m)
    }
}

/// Collects messages for one destination into datagrams of at most `max`
/// bytes (framing included): [`Bundler::push`] returns a datagram to send
/// when the next message would not fit, [`Bundler::finish`] the last one.
/// A datagram of one message is that message, unframed.
#[derive(Debug)]
pub struct Bundler {
    max: usize,
    /// The messages taken since the last datagram went, back to back.
    buf: Vec<u8>,
    /// Where each of them starts in `buf`.
    starts: Vec<usize>,
    out: Vec<u8>,
}

impl Bundler {
    /// Datagrams of at most `max` bytes; below two short messages' worth,
    /// every message goes alone.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            buf: Vec::new(),
            starts: Vec::new(),
            out: Vec::new(),
        }
    }

    fn framed_len(&self, extra: usize) -> usize {
        BUNDLE_MAGIC.len() + 2 * (self.starts.len() + 1) + self.buf.len() + extra
    }

    /// Takes `msg`. When it does not fit beside what is held, what is held
    /// is returned as a datagram and `msg` starts the next. A message too
    /// large for any bundle ends up alone in its datagram, unframed.
    pub fn push(&mut self, msg: &[u8]) -> Option<&[u8]> {
        if self.starts.is_empty() {
            self.starts.push(0);
            self.buf.extend_from_slice(msg);
            return None;
        }
        if msg.len() > BUNDLE_MAX_MESSAGE
            || self.buf.len() > BUNDLE_MAX_MESSAGE
            || self.framed_len(msg.len()) > self.max
        {
            self.emit();
            self.starts.push(0);
            self.buf.extend_from_slice(msg);
            return Some(&self.out);
        }
        self.starts.push(self.buf.len());
        self.buf.extend_from_slice(msg);
        None
    }

    /// The datagram of whatever is held (`None`: nothing is).
    pub fn finish(&mut self) -> Option<&[u8]> {
        if self.starts.is_empty() {
            return None;
        }
        self.emit();
        Some(&self.out)
    }

    /// Moves what is held into `out` as one datagram and empties it.
    fn emit(&mut self) {
        self.out.clear();
        if self.starts.len() == 1 {
            // Alone: the message as it was taken, not copied again.
            core::mem::swap(&mut self.out, &mut self.buf);
        } else {
            self.out.extend_from_slice(BUNDLE_MAGIC);
            for (i, &s) in self.starts.iter().enumerate() {
                let end = self.starts.get(i + 1).copied().unwrap_or(self.buf.len());
                let len = u16::try_from(end - s).unwrap_or(u16::MAX);
                self.out.extend_from_slice(&len.to_be_bytes());
                self.out.extend_from_slice(&self.buf[s..end]);
            }
        }
        self.buf.clear();
        self.starts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(b: &mut Bundler, msgs: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for m in msgs {
            if let Some(d) = b.push(m) {
                out.push(d.to_vec());
            }
        }
        if let Some(d) = b.finish() {
            out.push(d.to_vec());
        }
        out
    }

    fn read(d: &[u8]) -> Vec<Vec<u8>> {
        if is_bundle(d) {
            bundle_messages(d)
                .expect("well formed")
                .map(<[u8]>::to_vec)
                .collect()
        } else {
            vec![d.to_vec()]
        }
    }

    #[test]
    fn messages_come_back_in_order_and_a_lone_one_unframed() {
        let mut b = Bundler::new(8192);
        let msgs: [&[u8]; 3] = [
            b"SIP/2.0 100 Trying\r\n\r\n",
            b"INVITE sip:b SIP/2.0\r\n\r\n",
            b"x",
        ];
        let d = all(&mut b, &msgs);
        assert_eq!(d.len(), 1);
        assert!(is_bundle(&d[0]));
        assert_eq!(read(&d[0]), msgs.map(<[u8]>::to_vec));
        let d = all(&mut b, &[b"BYE sip:a SIP/2.0\r\n\r\n"]);
        assert_eq!(
            d,
            vec![b"BYE sip:a SIP/2.0\r\n\r\n".to_vec()],
            "one message goes as itself"
        );
        assert!(all(&mut b, &[]).is_empty());
    }

    #[test]
    fn datagrams_stay_within_the_bound_and_big_messages_go_alone() {
        let mut b = Bundler::new(100);
        let small = [b'a'; 40];
        let big = vec![b'b'; 300];
        let d = all(&mut b, &[&small, &small, &small, &big, &small]);
        let back: Vec<Vec<u8>> = d.iter().flat_map(|d| read(d)).collect();
        assert_eq!(
            back,
            vec![
                small.to_vec(),
                small.to_vec(),
                small.to_vec(),
                big.clone(),
                small.to_vec()
            ]
        );
        for x in &d {
            assert!(
                x.len() <= 100 || !is_bundle(x),
                "a bundle past the bound: {}",
                x.len()
            );
        }
        // A message past two bytes of length is never framed.
        let huge = vec![b'c'; 70_000];
        let d = all(&mut b, &[&small, &huge, &small]);
        assert_eq!(d.len(), 3);
        assert_eq!(d[1], huge);
    }

    proptest::proptest! {
        #[test]
        fn any_messages_come_back_whole_under_any_bound(
            msgs in proptest::collection::vec(proptest::collection::vec(1u8.., 1..3000), 0..12),
            max in 0usize..10_000,
        ) {
            let mut b = Bundler::new(max);
            let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
            let d = all(&mut b, &refs);
            let back: Vec<Vec<u8>> = d.iter().flat_map(|d| read(d)).collect();
            proptest::prop_assert_eq!(back, msgs);
            for x in &d {
                proptest::prop_assert!(!is_bundle(x) || x.len() <= max.max(1));
            }
        }

        #[test]
        fn any_bytes_read_as_a_bundle_without_a_panic(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut d = BUNDLE_MAGIC.to_vec();
            d.extend_from_slice(&tail);
            if let Some(m) = bundle_messages(&d) {
                let total: usize = m.map(|x| x.len() + 2).sum();
                proptest::prop_assert_eq!(total, tail.len());
            }
        }
    }

    #[test]
    fn malformed_bundles_are_refused_whole() {
        let mut ok = BUNDLE_MAGIC.to_vec();
        ok.extend_from_slice(&[0, 1, b'a', 0, 2, b'b', b'c']);
        assert_eq!(bundle_messages(&ok).map(|m| m.count()), Some(2));
        for bad in [
            &b"\0HB\x02\0\x01a"[..], // another version
            b"\0HB\x01",             // no message
            b"\0HB\x01\0\0",         // a zero length
            b"\0HB\x01\0\x05abc",    // past the end
            b"\0HB\x01\0\x01ab",     // bytes left over (a lone length byte)
            b"\0HB\x01\0",           // half a length
            b"\0",
            b"INVITE sip:b SIP/2.0\r\n\r\n",
        ] {
            assert!(bundle_messages(bad).is_none(), "{bad:?}");
        }
        assert!(!is_bundle(b"SIP/2.0 200 OK\r\n\r\n"));
        assert!(!is_bundle(b""));
    }
}
