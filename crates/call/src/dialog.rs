//! Dialogs (RFC 3261 §12): identifiers, the route set, the remote target,
//! and the two CSeq spaces, as plain data that can be copied into a
//! replicated call record. A dialog never sends anything itself: it builds
//! in-dialog requests and checks incoming ones.

use handover_sip::build::Request;
use handover_sip::{HeaderName, Message, Method, NameAddr, Scheme};

/// Why a dialog could not be made or a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// The message has no tag where a dialog needs one.
    #[error("missing {0} tag")]
    MissingTag(&'static str),
    /// No usable Contact (a dialog needs a remote target, RFC 3261 §12.1.1).
    #[error("missing or malformed Contact")]
    NoContact,
    /// From, To or Record-Route does not parse.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// An in-dialog request whose CSeq is lower than the last one (§12.2.2):
    /// the answer is 500.
    #[error("CSeq {got} is lower than the last one, {last}")]
    OutOfOrder {
        /// The request's CSeq.
        got: u32,
        /// The remote sequence number.
        last: u32,
    },
}

impl DialogError {
    /// The status a UAS answers with.
    pub fn status(&self) -> u16 {
        match self {
            DialogError::OutOfOrder { .. } => 500,
            _ => 400,
        }
    }
}

/// What identifies a dialog (§12): Call-ID, local tag, remote tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    /// Call-ID.
    pub call_id: Vec<u8>,
    /// Our tag.
    pub local_tag: Vec<u8>,
    /// The peer's tag.
    pub remote_tag: Vec<u8>,
}

impl DialogId {
    /// The dialog an incoming request names from our side: its To tag is
    /// ours, its From tag the peer's (§12.2.2). `None` without a To tag (not
    /// an in-dialog request).
    pub fn of_incoming_request(req: &Message<'_>) -> Option<Self> {
        Some(Self {
            call_id: req.call_id().to_vec(),
            local_tag: req.to_tag()?.to_vec(),
            remote_tag: req.from_tag().unwrap_or_default().to_vec(),
        })
    }

    /// The dialog a response to one of our requests belongs to: From tag
    /// ours, To tag the peer's.
    pub fn of_response(resp: &Message<'_>) -> Option<Self> {
        Some(Self {
            call_id: resp.call_id().to_vec(),
            local_tag: resp.from_tag()?.to_vec(),
            remote_tag: resp.to_tag()?.to_vec(),
        })
    }
}

/// Early (a provisional response with a To tag) or confirmed (a 2xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// Created by a 1xx with a To tag.
    Early,
    /// Created or confirmed by a 2xx.
    Confirmed,
}

/// The byte strings a dialog is made of, borrowed: what [`Dialog::new`]
/// takes (a call record's fields, a test's).
#[derive(Debug, Clone, Copy, Default)]
pub struct Parts<'a> {
    /// Call-ID.
    pub call_id: &'a [u8],
    /// Our tag.
    pub local_tag: &'a [u8],
    /// The peer's tag.
    pub remote_tag: &'a [u8],
    /// Our URI (From of our requests), without tag, as written.
    pub local_uri: &'a [u8],
    /// The peer's URI, without tag.
    pub remote_uri: &'a [u8],
    /// Where in-dialog requests go: the peer's Contact URI.
    pub remote_target: &'a [u8],
    /// Route set, in the order our requests carry it.
    pub route_set: &'a [&'a [u8]],
}

/// One dialog, as plain data.
///
/// Its byte strings (identifiers, URIs, target, route set) live back to
/// back in one buffer: a held call has two dialogs for its whole life, and
/// a `Vec` each cost it 12 heap blocks and 350 bytes more than one buffer
/// (`tests/memory.rs`). Read them with the accessors.
#[derive(Clone, PartialEq, Eq)]
pub struct Dialog {
    /// Call-ID, local tag, remote tag, local URI, remote URI, remote
    /// target, then each route of the route set after a NUL (a byte no
    /// scanned message holds).
    buf: Box<[u8]>,
    /// Where each of the first six parts ends in `buf`.
    ends: [u32; 6],
    /// Early or confirmed.
    pub state: DialogState,
    /// Our last CSeq (the next request uses one more).
    pub local_seq: u32,
    /// The peer's last CSeq, once it sent a request in the dialog.
    pub remote_seq: Option<u32>,
}

impl core::fmt::Debug for Dialog {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let t = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        f.debug_struct("Dialog")
            .field("call_id", &t(self.call_id()))
            .field("local_tag", &t(self.local_tag()))
            .field("remote_tag", &t(self.remote_tag()))
            .field("state", &self.state)
            .field("local_seq", &self.local_seq)
            .field("remote_seq", &self.remote_seq)
            .field("local_uri", &t(self.local_uri()))
            .field("remote_uri", &t(self.remote_uri()))
            .field("remote_target", &t(self.remote_target()))
            .field("route_set", &self.route_set().map(t).collect::<Vec<_>>())
            .finish()
    }
}

impl Dialog {
    /// An early dialog of `parts`, both CSeqs unset (set the public fields
    /// for others).
    pub fn new(parts: Parts<'_>) -> Self {
        let fixed = [
            parts.call_id,
            parts.local_tag,
            parts.remote_tag,
            parts.local_uri,
            parts.remote_uri,
            parts.remote_target,
        ];
        let len = fixed.iter().map(|p| p.len()).sum::<usize>()
            + parts.route_set.iter().map(|r| r.len() + 1).sum::<usize>();
        let mut buf = Vec::with_capacity(len);
        let mut ends = [0u32; 6];
        for (end, p) in ends.iter_mut().zip(fixed) {
            buf.extend_from_slice(p);
            // Saturating: a part past 4 GiB reads as empty (`part`), it
            // cannot come from a scanned message.
            *end = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        }
        for r in parts.route_set {
            buf.push(0);
            buf.extend_from_slice(r);
        }
        Self {
            buf: buf.into_boxed_slice(),
            ends,
            state: DialogState::Early,
            local_seq: 0,
            remote_seq: None,
        }
    }

    /// This dialog's strings, to change one of them (`Self::new` again).
    fn parts_with<T>(&self, f: impl FnOnce(Parts<'_>) -> T) -> T {
        let routes: Vec<&[u8]> = self.route_set().collect();
        f(Parts {
            call_id: self.call_id(),
            local_tag: self.local_tag(),
            remote_tag: self.remote_tag(),
            local_uri: self.local_uri(),
            remote_uri: self.remote_uri(),
            remote_target: self.remote_target(),
            route_set: &routes,
        })
    }

    /// Part `i` of the first six.
    fn part(&self, i: usize) -> &[u8] {
        let start = i.checked_sub(1).map_or(0, |j| self.ends[j]) as usize;
        let end = self.ends[i] as usize;
        self.buf.get(start..end).unwrap_or_default()
    }

    /// Call-ID.
    pub fn call_id(&self) -> &[u8] {
        self.part(0)
    }

    /// Our tag.
    pub fn local_tag(&self) -> &[u8] {
        self.part(1)
    }

    /// The peer's tag.
    pub fn remote_tag(&self) -> &[u8] {
        self.part(2)
    }

    /// Our URI (From of our requests), without tag, as written.
    pub fn local_uri(&self) -> &[u8] {
        self.part(3)
    }

    /// The peer's URI, without tag.
    pub fn remote_uri(&self) -> &[u8] {
        self.part(4)
    }

    /// Where in-dialog requests go: the peer's Contact URI.
    pub fn remote_target(&self) -> &[u8] {
        self.part(5)
    }

    /// The route set, in the order our requests carry it.
    pub fn route_set(&self) -> impl Iterator<Item = &[u8]> + Clone {
        let start = (self.ends[5] as usize).min(self.buf.len());
        self.buf[start..].split(|&b| b == 0).skip(1)
    }

    /// Identifiers.
    pub fn id(&self) -> DialogId {
        DialogId {
            call_id: self.call_id().to_vec(),
            local_tag: self.local_tag().to_vec(),
            remote_tag: self.remote_tag().to_vec(),
        }
    }

    /// A new remote target (a target refresh).
    pub fn set_remote_target(&mut self, target: &[u8]) {
        let d = self.parts_with(|p| {
            Self::new(Parts {
                remote_target: target,
                ..p
            })
        });
        (self.buf, self.ends) = (d.buf, d.ends);
    }

    /// A new route set.
    pub fn set_route_set(&mut self, route_set: &[&[u8]]) {
        let d = self.parts_with(|p| Self::new(Parts { route_set, ..p }));
        (self.buf, self.ends) = (d.buf, d.ends);
    }
}

/// The value of a From/To header without its header parameters (the tag,
/// and any other, which our requests do not repeat): the name-addr up to
/// `>`, or the addr-spec.
fn without_tag<'a>(v: &NameAddr<'_>, buf: &'a [u8]) -> &'a [u8] {
    let s = v.span();
    let p = v.params_span();
    let end = if p.is_empty() { s.end } else { p.start };
    buf.get(s.start..end).unwrap_or_default()
}

/// The Contact's URI, when it is one we can send requests to: a SIP,
/// SIPS or tel URI (anything else would put a Request-URI in our requests
/// that no SIP element accepts, 416).
fn contact_uri<'a>(m: &Message<'a>) -> Result<&'a [u8], DialogError> {
    match m.contact() {
        Some(Ok(c)) if c.uri().scheme() != Scheme::Other => Ok(c.uri().as_bytes()),
        _ => Err(DialogError::NoContact),
    }
}

fn record_route<'a>(m: &Message<'a>) -> Result<Vec<&'a [u8]>, DialogError> {
    let buf = m.buf();
    m.values(HeaderName::RecordRoute)
        .map(|v| {
            NameAddr::parse(buf, v)
                .map(|_| v.of(buf))
                .map_err(|_| DialogError::Malformed("Record-Route"))
        })
        .collect()
}

impl Dialog {
    /// The UAS side of a dialog created by `request` (we answer it with a
    /// 2xx or a 1xx carrying `local_tag`; RFC 3261 §12.1.1).
    pub fn uas(
        request: &Message<'_>,
        local_tag: &[u8],
        state: DialogState,
    ) -> Result<Self, DialogError> {
        let buf = request.buf();
        let from = request.from().map_err(|_| DialogError::Malformed("From"))?;
        let to = request.to().map_err(|_| DialogError::Malformed("To"))?;
        //= https://www.rfc-editor.org/rfc/rfc3261#section-12.1.1
        //# The route set MUST be set to the list of URIs in the Record-Route
        //# header field from the request, taken in order and preserving all
        //# URI parameters.
        let remote_tag = request.from_tag().ok_or(DialogError::MissingTag("From"))?;
        let (local_uri, remote_uri) = (without_tag(&to, buf), without_tag(&from, buf));
        let target = contact_uri(request)?;
        let routes = record_route(request)?;
        let mut d = Self::new(Parts {
            call_id: request.call_id(),
            local_tag,
            remote_tag,
            local_uri,
            remote_uri,
            remote_target: target,
            route_set: &routes,
        });
        d.state = state;
        d.remote_seq = Some(request.cseq().seq);
        Ok(d)
    }

    /// The UAC side of a dialog: `request` is the INVITE (or other
    /// dialog-creating request) we sent, `response` a 1xx with a To tag or a
    /// 2xx to it (§12.1.2).
    pub fn uac(request: &Message<'_>, response: &Message<'_>) -> Result<Self, DialogError> {
        //= https://www.rfc-editor.org/rfc/rfc3261#section-12.1.2
        //# The route set MUST be set to the list of URIs in the Record-Route
        //# header field from the response, taken in reverse order and
        //# preserving all URI parameters.
        let mut route_set = record_route(response)?;
        route_set.reverse();
        let state = match response.status() {
            Some(200..=299) => DialogState::Confirmed,
            _ => DialogState::Early,
        };
        Self::uac_with(request, response, state, contact_uri(response)?, &route_set)
    }

    /// A dialog for a 2xx that [`Dialog::uac`] refuses (no usable Contact,
    /// a Record-Route that does not parse) but that still has to be ACKed
    /// and hung up (RFC 3261 §13.2.2.4): its remote target is the
    /// Request-URI `request` was sent to, with no route set. Needs the To
    /// tag (without it there is no dialog to end).
    pub fn uac_unusable(
        request: &Message<'_>,
        response: &Message<'_>,
    ) -> Result<Self, DialogError> {
        let target = request
            .request_uri()
            .ok_or(DialogError::Malformed("Request-URI"))?
            .as_bytes();
        Self::uac_with(request, response, DialogState::Confirmed, target, &[])
    }

    /// The UAC side's identifiers, URIs and CSeq from `request` and
    /// `response`, with the target and route set given.
    fn uac_with(
        request: &Message<'_>,
        response: &Message<'_>,
        state: DialogState,
        remote_target: &[u8],
        route_set: &[&[u8]],
    ) -> Result<Self, DialogError> {
        let from = request.from().map_err(|_| DialogError::Malformed("From"))?;
        let to = response.to().map_err(|_| DialogError::Malformed("To"))?;
        let mut d = Self::new(Parts {
            call_id: request.call_id(),
            local_tag: request.from_tag().ok_or(DialogError::MissingTag("From"))?,
            remote_tag: response.to_tag().ok_or(DialogError::MissingTag("To"))?,
            local_uri: without_tag(&from, request.buf()),
            remote_uri: without_tag(&to, response.buf()),
            remote_target,
            route_set,
        });
        d.state = state;
        d.local_seq = request.cseq().seq;
        Ok(d)
    }

    /// Checks an in-dialog request from the peer and takes in what it
    /// changes (§12.2.2): its CSeq, and for a target refresh (re-INVITE,
    /// UPDATE) a new remote target from its Contact.
    pub fn handle_request(&mut self, req: &Message<'_>) -> Result<(), DialogError> {
        let seq = req.cseq().seq;
        let method = req.method();
        // ACK and CANCEL carry the CSeq of what they acknowledge or cancel.
        if !matches!(method, Some(Method::Ack | Method::Cancel)) {
            if let Some(last) = self.remote_seq
                && seq < last
            {
                //= https://www.rfc-editor.org/rfc/rfc3261#section-12.2.2
                //# If the remote sequence number was not empty, but the sequence
                //# number of the request is lower than the remote sequence
                //# number, the request is out of order and MUST be rejected with
                //# a 500 (Server Internal Error) response.
                return Err(DialogError::OutOfOrder { got: seq, last });
            }
            self.remote_seq = Some(seq);
        }
        // A target we cannot send to is not taken (the old one stays).
        if matches!(method, Some(Method::Invite | Method::Update))
            && let Ok(t) = contact_uri(req)
            && t != self.remote_target()
        {
            self.set_remote_target(t);
        }
        Ok(())
    }

    /// Takes in a response to one of our in-dialog requests: a 2xx to a
    /// target refresh updates the remote target (§12.2.1.2); a 2xx confirms
    /// an early dialog.
    pub fn handle_response(&mut self, resp: &Message<'_>) {
        if let Some(200..=299) = resp.status() {
            self.state = DialogState::Confirmed;
            if matches!(resp.cseq().method, Method::Invite | Method::Update)
                && let Ok(t) = contact_uri(resp)
                && t != self.remote_target()
            {
                self.set_remote_target(t);
            }
        }
    }

    /// Builds an in-dialog request (§12.2.1.1) with the next local CSeq
    /// (ACK and CANCEL take `cseq` as given). `via` and `contact` are
    /// ours; `headers` and `body` are added as they are.
    pub fn request(
        &mut self,
        method: &str,
        cseq: Option<u32>,
        via: &[u8],
        contact: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        body: Option<(&[u8], &[u8])>,
    ) -> Vec<u8> {
        let seq = match cseq {
            Some(s) => s,
            None => {
                // Saturating: an adopted dialog's CSeq came from a record.
                self.local_seq = self.local_seq.saturating_add(1);
                self.local_seq
            }
        };
        // Loose routing when the first route has `lr` (or there is none):
        // Request-URI is the remote target, Route is the route set. A strict
        // router gets the Request-URI and the target goes last (§12.2.1.1).
        let mut routes: Vec<&[u8]> = self.route_set().collect();
        let first_uri = routes.first().and_then(|r| {
            handover_sip::NameAddr::parse(r, handover_sip::Span::new(0, r.len()))
                .ok()
                .map(|n| (n.uri().param(b"lr").is_none(), n.uri().as_bytes()))
        });
        let mut target = Vec::new();
        let uri = match first_uri {
            Some((true, uri)) => {
                routes.remove(0);
                target.push(b'<');
                target.extend_from_slice(self.remote_target());
                target.push(b'>');
                routes.push(&target);
                uri
            }
            _ => self.remote_target(),
        };
        Request {
            method,
            uri,
            via: &[via],
            from: self.local_uri(),
            from_tag: self.local_tag(),
            to: self.remote_uri(),
            to_tag: Some(self.remote_tag()),
            call_id: self.call_id(),
            cseq: seq,
            route: &routes,
            contact,
            headers,
            body,
            ..Request::default()
        }
        .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dialogs_parts_read_back_as_given_and_one_changes_alone() {
        let mut d = Dialog::new(Parts {
            call_id: b"c1",
            local_tag: b"l",
            remote_tag: b"",
            local_uri: b"<sip:a@x>",
            remote_uri: b"<sip:b@y>",
            remote_target: b"sip:b@192.0.2.2",
            route_set: &[],
        });
        assert_eq!(d.route_set().count(), 0);
        assert_eq!(d.remote_tag(), b"");
        assert_eq!(d.local_uri(), b"<sip:a@x>");
        d.local_seq = 4;
        d.set_route_set(&[b"<sip:p1;lr>", b"<sip:p2;lr>"]);
        d.set_remote_target(b"sip:b@192.0.2.3:5070");
        assert_eq!(
            d.route_set().collect::<Vec<_>>(),
            [&b"<sip:p1;lr>"[..], b"<sip:p2;lr>"]
        );
        assert_eq!(d.remote_target(), b"sip:b@192.0.2.3:5070");
        assert_eq!(
            (d.call_id(), d.local_tag(), d.remote_uri()),
            (&b"c1"[..], &b"l"[..], &b"<sip:b@y>"[..])
        );
        assert_eq!(d.local_seq, 4, "the numbers stay");
        assert_eq!(d.id().call_id, b"c1");
    }
}
