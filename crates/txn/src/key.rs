//! Matching messages to transactions (RFC 3261 §17.1.3, §17.2.3).

use handover_sip::{Message, Method};

/// What identifies a transaction: the top Via's branch and sent-by, and the
/// method (CSeq's for responses; an ACK matches its INVITE; a CANCEL is a
/// transaction of its own).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    branch: Vec<u8>,
    sent_by: Vec<u8>,
    method: Vec<u8>,
}

impl Key {
    fn new(msg: &Message<'_>, method: &[u8]) -> Self {
        let v = msg.top_via();
        let mut sent_by = v.host().to_ascii_lowercase();
        sent_by.extend_from_slice(&v.port().unwrap_or(5060).to_be_bytes());
        let branch = if v.is_rfc3261_branch() {
            v.branch().unwrap_or_default().to_vec()
        } else {
            //= https://www.rfc-editor.org/rfc/rfc3261#section-17.2.3
            //# The INVITE request matches a transaction if the Request-URI, To
            //# tag, From tag, Call-ID, CSeq, and top Via header field match
            //# those of the INVITE request which created the transaction.
            // A pre-3261 peer: the same fields, joined (To tag left out so
            // the ACK of a non-2xx, which has it, still matches).
            let mut b = b"2543:".to_vec();
            for part in [
                msg.request_uri().map_or(&b""[..], |u| u.as_bytes()),
                msg.from_tag().unwrap_or_default(),
                msg.call_id(),
                &msg.cseq().seq.to_be_bytes(),
                v.span().of(msg.buf()),
            ] {
                b.extend_from_slice(part);
                b.push(0);
            }
            b
        };
        Self {
            branch,
            sent_by,
            method: method.to_vec(),
        }
    }

    /// The server transaction a request belongs to (an ACK to its INVITE).
    pub fn server(req: &Message<'_>) -> Self {
        let m = match req.method() {
            Some(Method::Ack) => &b"INVITE"[..],
            _ => req.method_bytes(),
        };
        Self::new(req, m)
    }

    /// The INVITE server transaction a CANCEL targets (RFC 3261 §9.2).
    pub fn cancel_target(cancel: &Message<'_>) -> Self {
        Self::new(cancel, b"INVITE")
    }

    /// The client transaction a response belongs to.
    pub fn client(resp: &Message<'_>) -> Self {
        Self::new(resp, resp.cseq().method_span.of(resp.buf()))
    }
}
