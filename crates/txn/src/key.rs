//! Matching messages to transactions (RFC 3261 §17.1.3, §17.2.3).

use handover_sip::{Message, Method};

/// What identifies a transaction: the top Via's branch and sent-by, and the
/// method (CSeq's for responses; an ACK matches its INVITE; a CANCEL is a
/// transaction of its own).
///
/// The three are kept in one buffer, each behind its length, so a key costs
/// one allocation (a call makes about eight keys; three vectors each were a
/// fifth of the worker's allocations per call).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    parts: Vec<u8>,
}

impl Key {
    fn new(msg: &Message<'_>, method: &[u8]) -> Self {
        let v = msg.top_via();
        let host = v.host();
        let port = v.port().unwrap_or(5060).to_be_bytes();
        let branch = v.branch().filter(|_| v.is_rfc3261_branch());
        // Sized for the usual case (a branch), so it is not reallocated.
        let size = 12 + method.len() + host.len() + port.len();
        let mut b = Vec::with_capacity(size + branch.map_or(64, <[u8]>::len));
        push_part(&mut b, method);
        // sent-by: the host case-folded, then the port.
        push_len(&mut b, host.len() + port.len());
        b.extend(host.iter().map(u8::to_ascii_lowercase));
        b.extend_from_slice(&port);
        if let Some(branch) = branch {
            push_part(&mut b, branch);
        } else {
            //= https://www.rfc-editor.org/rfc/rfc3261#section-17.2.3
            //# The INVITE request matches a transaction if the Request-URI, To
            //# tag, From tag, Call-ID, CSeq, and top Via header field match
            //# those of the INVITE request which created the transaction.
            // A pre-3261 peer: the same fields, each behind its length (To
            // tag left out so the ACK of a non-2xx, which has it, still
            // matches).
            b.extend_from_slice(b"2543:");
            for part in [
                msg.request_uri().map_or(&b""[..], |u| u.as_bytes()),
                msg.from_tag().unwrap_or_default(),
                msg.call_id(),
                &msg.cseq().seq.to_be_bytes(),
                v.span().of(msg.buf()),
            ] {
                push_part(&mut b, part);
            }
        }
        Self { parts: b }
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

/// A length (a message's parts are far below 4 GiB; saturated past it).
fn push_len(b: &mut Vec<u8>, n: usize) {
    b.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn push_part(b: &mut Vec<u8>, part: &[u8]) {
    push_len(b, part.len());
    b.extend_from_slice(part);
}
