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

/// One dialog, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    /// Identifiers.
    pub id: DialogId,
    /// Early or confirmed.
    pub state: DialogState,
    /// Our last CSeq (the next request uses one more).
    pub local_seq: u32,
    /// The peer's last CSeq, once it sent a request in the dialog.
    pub remote_seq: Option<u32>,
    /// Our URI (From of our requests), without tag, as written.
    pub local_uri: Vec<u8>,
    /// The peer's URI, without tag.
    pub remote_uri: Vec<u8>,
    /// Where in-dialog requests go: the peer's Contact URI.
    pub remote_target: Vec<u8>,
    /// Route set, in the order our requests carry it.
    pub route_set: Vec<Vec<u8>>,
}

/// The value of a From/To header without its header parameters (the tag,
/// and any other, which our requests do not repeat): the name-addr up to
/// `>`, or the addr-spec.
fn without_tag(v: &NameAddr<'_>, buf: &[u8]) -> Vec<u8> {
    let s = v.span();
    let p = v.params_span();
    let end = if p.is_empty() { s.end } else { p.start };
    buf[s.start..end].to_vec()
}

/// The Contact's URI, when it is one we can send requests to: a SIP,
/// SIPS or tel URI (anything else would put a Request-URI in our requests
/// that no SIP element accepts, 416).
fn contact_uri(m: &Message<'_>) -> Result<Vec<u8>, DialogError> {
    match m.contact() {
        Some(Ok(c)) if c.uri().scheme() != Scheme::Other => Ok(c.uri().as_bytes().to_vec()),
        _ => Err(DialogError::NoContact),
    }
}

fn record_route(m: &Message<'_>) -> Result<Vec<Vec<u8>>, DialogError> {
    let buf = m.buf();
    m.values(HeaderName::RecordRoute)
        .map(|v| {
            NameAddr::parse(buf, v)
                .map(|_| v.of(buf).to_vec())
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
        Ok(Self {
            id: DialogId {
                call_id: request.call_id().to_vec(),
                local_tag: local_tag.to_vec(),
                remote_tag: request
                    .from_tag()
                    .ok_or(DialogError::MissingTag("From"))?
                    .to_vec(),
            },
            state,
            local_seq: 0,
            remote_seq: Some(request.cseq().seq),
            local_uri: without_tag(&to, buf),
            remote_uri: without_tag(&from, buf),
            remote_target: contact_uri(request)?,
            route_set: record_route(request)?,
        })
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
        Self::uac_with(request, response, state, contact_uri(response)?, route_set)
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
            .as_bytes()
            .to_vec();
        Self::uac_with(
            request,
            response,
            DialogState::Confirmed,
            target,
            Vec::new(),
        )
    }

    /// The UAC side's identifiers, URIs and CSeq from `request` and
    /// `response`, with the target and route set given.
    fn uac_with(
        request: &Message<'_>,
        response: &Message<'_>,
        state: DialogState,
        remote_target: Vec<u8>,
        route_set: Vec<Vec<u8>>,
    ) -> Result<Self, DialogError> {
        let from = request.from().map_err(|_| DialogError::Malformed("From"))?;
        let to = response.to().map_err(|_| DialogError::Malformed("To"))?;
        Ok(Self {
            id: DialogId {
                call_id: request.call_id().to_vec(),
                local_tag: request
                    .from_tag()
                    .ok_or(DialogError::MissingTag("From"))?
                    .to_vec(),
                remote_tag: response
                    .to_tag()
                    .ok_or(DialogError::MissingTag("To"))?
                    .to_vec(),
            },
            state,
            local_seq: request.cseq().seq,
            remote_seq: None,
            local_uri: without_tag(&from, request.buf()),
            remote_uri: without_tag(&to, response.buf()),
            remote_target,
            route_set,
        })
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
        {
            self.remote_target = t;
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
            {
                self.remote_target = t;
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
        let first_is_strict = self.route_set.first().is_some_and(|r| {
            let b = r.as_slice();
            handover_sip::NameAddr::parse(b, handover_sip::Span::new(0, b.len()))
                .map(|n| n.uri().param(b"lr").is_none())
                .unwrap_or(false)
        });
        let (uri, routes): (Vec<u8>, Vec<Vec<u8>>) = if first_is_strict {
            let first = &self.route_set[0];
            let n = handover_sip::NameAddr::parse(first, handover_sip::Span::new(0, first.len()))
                .expect("checked above");
            let mut rest: Vec<Vec<u8>> = self.route_set[1..].to_vec();
            let mut target = b"<".to_vec();
            target.extend_from_slice(&self.remote_target);
            target.push(b'>');
            rest.push(target);
            (n.uri().as_bytes().to_vec(), rest)
        } else {
            (self.remote_target.clone(), self.route_set.clone())
        };
        let route: Vec<&[u8]> = routes.iter().map(Vec::as_slice).collect();
        Request {
            method,
            uri: &uri,
            via: &[via],
            from: &self.local_uri,
            from_tag: &self.id.local_tag,
            to: &self.remote_uri,
            to_tag: Some(&self.id.remote_tag),
            call_id: &self.id.call_id,
            cseq: seq,
            route: &route,
            contact,
            headers,
            body,
            ..Request::default()
        }
        .to_vec()
    }
}
