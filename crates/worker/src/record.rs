//! `handover_call::CallRecord` <-> the prost `CallState` of
//! `proto/cluster.proto` (the bytes a `CallUpsert` carries).

use handover_call::{
    CallDetail, CallRecord, Detail, Dialog, DialogState, Parts, TransferDetail, TransferResult,
};
use handover_cluster::pb;
use prost::Message as _;

fn dialog_pb(d: &Dialog) -> pb::Dialog {
    pb::Dialog {
        call_id: d.call_id().to_vec(),
        local_tag: d.local_tag().to_vec(),
        remote_tag: d.remote_tag().to_vec(),
        confirmed: d.state == DialogState::Confirmed,
        local_seq: d.local_seq,
        remote_seq: d.remote_seq,
        local_uri: d.local_uri().to_vec(),
        remote_uri: d.remote_uri().to_vec(),
        remote_target: d.remote_target().to_vec(),
        route_set: d.route_set().map(<[u8]>::to_vec).collect(),
    }
}

fn dialog(d: pb::Dialog) -> Dialog {
    let routes: Vec<&[u8]> = d.route_set.iter().map(Vec::as_slice).collect();
    let mut out = Dialog::new(Parts {
        call_id: &d.call_id,
        local_tag: &d.local_tag,
        remote_tag: &d.remote_tag,
        local_uri: &d.local_uri,
        remote_uri: &d.remote_uri,
        remote_target: &d.remote_target,
        route_set: &routes,
    });
    out.state = if d.confirmed {
        DialogState::Confirmed
    } else {
        DialogState::Early
    };
    out.local_seq = d.local_seq;
    out.remote_seq = d.remote_seq;
    out
}

/// What `handover calls` shows of a committed call owned by `owner`:
/// the caller's From and To URIs (leg A's dialog) and where the call went
/// (leg B's Request-URI). A record that does not decode shows its ids.
pub fn summary(u: &handover_cluster::StoredCall, owner: u64) -> crate::rpc::pb::CallSummary {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    // A name-addr's URI: what is between < and >, else all of it.
    let uri = |b: &[u8]| {
        let inner = b
            .iter()
            .position(|&c| c == b'<')
            .and_then(|i| {
                let rest = &b[i + 1..];
                rest.iter().position(|&c| c == b'>').map(|j| &rest[..j])
            })
            .unwrap_or(b);
        text(inner)
    };
    let mut s = crate::rpc::pb::CallSummary {
        call_id: u.call_id().to_vec(),
        b_call_id: u.other_call_id().to_vec(),
        owner,
        version: u.version,
        answered_unix_ms: u.answered_unix_ms,
        ..Default::default()
    };
    if let Some(c) = state_of(u.record(), u.record_lz4()) {
        if let Some(a) = &c.a_dialog {
            s.from = uri(&a.remote_uri);
            s.to = uri(&a.local_uri);
        }
        if let Ok(b) = handover_sip::scan(&c.b_invite)
            && let Some(uri) = b.request_uri()
        {
            s.target = text(uri.as_bytes());
        }
    }
    s
}

/// `r` as the table keeps it (its owner and answer time filled in by the
/// replica).
pub fn upsert(r: &CallRecord) -> pb::CallUpsert {
    pb::CallUpsert {
        call_id: r.id.clone(),
        leg_call_id: leg_call_id(r),
        key: r.key,
        version: r.version,
        owner: 0,
        record: encode(r),
        other_call_id: r.b_call_id.clone(),
        a_ok: r.a_ok.clone().unwrap_or_default(),
        answered_unix_ms: 0,
        hang_up: None,
        record_lz4: true,
    }
}

/// Leg A's Call-ID when it is no longer the call's id (see
/// `CallUpsert.leg_call_id`).
pub fn leg_call_id(r: &CallRecord) -> Vec<u8> {
    if r.a_call_id == r.id {
        Vec::new()
    } else {
        r.a_call_id.clone()
    }
}

/// A record's `CallState` longer than this does not decode (it is two
/// heads and two dialogs, a few kB; the length is read off the bytes).
const MAX_STATE: usize = 1 << 20;

/// The bytes a `CallUpsert` carries for `r` (`record_lz4`): its
/// `CallState`, LZ4-compressed. The heads and dialogs repeat each other's
/// URIs, tags and Call-IDs, and every replica keeps every call's record.
pub fn encode(r: &CallRecord) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(&state(r).encode_to_vec())
}

/// The `CallState` in a `CallUpsert`'s `record`, plain or compressed.
fn state_of(record: &[u8], lz4: bool) -> Option<pb::CallState> {
    if !lz4 {
        return pb::CallState::decode(record).ok();
    }
    let (len, body) = record.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    if len > MAX_STATE {
        return None;
    }
    let plain = lz4_flex::block::decompress(body, len).ok()?;
    pb::CallState::decode(&plain[..]).ok()
}

fn state(r: &CallRecord) -> pb::CallState {
    pb::CallState {
        a_call_id: r.a_call_id.clone(),
        a_invite: r.a_invite.clone(),
        a_target: r.a_target.map(|a| a.to_string()).unwrap_or_default(),
        a_tag: r.a_tag.clone(),
        a_dialog: Some(dialog_pb(&r.a_dialog)),
        b_call_id: r.b_call_id.clone(),
        b_invite: r.b_invite.clone(),
        b_dialog: Some(dialog_pb(&r.b_dialog)),
        local_mode: r.local_mode,
        pending: r.pending.as_ref().map(|p| pb::PendingRequest {
            from_a: p.from_a,
            request: p.request.clone(),
            back: p.back.map(|a| a.to_string()).unwrap_or_default(),
            relayed: p.relayed.clone(),
        }),
        detail: r.detail.kept().then(|| detail_pb(&r.detail)),
        refer: r.refer.as_ref().map(|t| pb::Refer {
            attended: t.attended,
            from_a: t.from_a,
            cseq_in: t.cseq_in,
            cseq_out: t.cseq_out,
            at_ms: t.at_ms,
            until_ms: t.until_ms,
        }),
        local: r.local.as_ref().map(|l| pb::LocalTransfer {
            attended: l.attended,
            transferor_a: l.transferor_a,
            refer_seq: l.refer_seq,
            at_ms: l.at_ms,
            t_out: l.t_out.clone(),
            t_call_id: l.t_call_id.clone(),
            t_dialog: l.t_dialog.as_ref().map(dialog_pb),
            ring_until_ms: l.ring_until_ms,
            r_out: l.r_out.clone(),
            replaced: l.replaced.clone(),
        }),
    }
}

fn detail_pb(d: &Detail) -> pb::Detail {
    pb::Detail {
        id: d.id_text().to_vec(),
        target: d.target.clone(),
        user: d.user.clone(),
        started_ms: d.started_ms,
        ringing_ms: d.ringing_ms,
        answered_ms: d.answered_ms,
        transfers: d
            .transfers
            .iter()
            .map(|t| pb::TransferDetail {
                attended: t.attended,
                local: t.local,
                result: result_name(t.result).to_owned(),
                at_ms: t.at_ms,
            })
            .collect(),
        workers: d.workers.clone(),
    }
}

fn detail(d: pb::Detail) -> Detail {
    Detail {
        // Ours, so 32 hex digits; anything else reads as no record.
        id: Detail::parse_id(&d.id).unwrap_or_default(),
        target: d.target,
        user: d.user,
        started_ms: d.started_ms,
        ringing_ms: d.ringing_ms,
        answered_ms: d.answered_ms,
        transfers: d
            .transfers
            .into_iter()
            .map(|t| TransferDetail {
                attended: t.attended,
                local: t.local,
                result: match t.result.as_str() {
                    "rejected" => TransferResult::Rejected,
                    "succeeded" => TransferResult::Succeeded,
                    "failed" => TransferResult::Failed,
                    _ => TransferResult::Accepted,
                },
                at_ms: t.at_ms,
            })
            .collect(),
        workers: d.workers,
    }
}

/// A transfer result as records name it.
pub fn result_name(r: TransferResult) -> &'static str {
    match r {
        TransferResult::Accepted => "accepted",
        TransferResult::Rejected => "rejected",
        TransferResult::Succeeded => "succeeded",
        TransferResult::Failed => "failed",
    }
}

/// A call detail record as the log carries it (`CallEnded`).
pub fn call_detail_pb(c: &CallDetail) -> pb::CallDetail {
    pb::CallDetail {
        detail: Some(detail_pb(&c.detail)),
        key: c.key,
        a_call_id: c.a_call_id.clone(),
        b_call_id: c.b_call_id.clone(),
        from: c.from.clone(),
        to: c.to.clone(),
        source: c.source.map(|s| s.to_string()).unwrap_or_default(),
        transport: c.transport.clone(),
        ended_ms: c.ended_ms,
        cause: c.cause.as_str().to_owned(),
        status: u32::from(c.status),
    }
}

/// The record of a replicated call; `None` when its bytes do not decode.
pub fn decode(u: &pb::CallUpsert) -> Option<CallRecord> {
    let s = state_of(&u.record, u.record_lz4)?;
    Some(CallRecord {
        key: u.key,
        version: u.version,
        id: u.call_id.clone(),
        a_call_id: s.a_call_id,
        a_invite: s.a_invite,
        a_target: s.a_target.parse().ok(),
        a_tag: s.a_tag,
        a_dialog: dialog(s.a_dialog?),
        b_call_id: s.b_call_id,
        b_invite: s.b_invite,
        b_dialog: dialog(s.b_dialog?),
        // Beside the record, dropped by the caller's ACK.
        a_ok: (!u.a_ok.is_empty()).then(|| u.a_ok.clone()),
        local_mode: s.local_mode,
        pending: s.pending.map(|p| handover_call::PendingRequest {
            from_a: p.from_a,
            request: p.request,
            back: p.back.parse().ok(),
            relayed: p.relayed,
        }),
        detail: s
            .detail
            .map(|d| {
                let mut d = detail(d);
                // The first record is written before A has its 2xx; the
                // table stamps when it was committed.
                if d.answered_ms == 0 {
                    d.answered_ms = u.answered_unix_ms;
                }
                d
            })
            .unwrap_or_default(),
        refer: s.refer.map(|t| handover_call::ReferRecord {
            attended: t.attended,
            from_a: t.from_a,
            cseq_in: t.cseq_in,
            cseq_out: t.cseq_out,
            at_ms: t.at_ms,
            until_ms: t.until_ms,
        }),
        local: s.local.map(|l| handover_call::LocalRecord {
            attended: l.attended,
            transferor_a: l.transferor_a,
            refer_seq: l.refer_seq,
            at_ms: l.at_ms,
            t_out: l.t_out,
            t_call_id: l.t_call_id,
            t_dialog: l.t_dialog.map(dialog),
            ring_until_ms: l.ring_until_ms,
            r_out: l.r_out,
            replaced: l.replaced,
        }),
    })
}

/// A registrar record as the table's `Registration`.
pub fn registration_pb(r: &handover_call::registrar::Record) -> pb::Registration {
    pb::Registration {
        aor: r.aor.clone(),
        key: r.key,
        version: r.version,
        owner: 0,
        bindings: r
            .bindings
            .iter()
            .map(handover_cluster::binding_pb)
            .collect(),
    }
}

/// The target of the call log: one line per ended call, at DEBUG
/// (`RUST_LOG=info,handover_worker::call=debug`), each with the call's
/// Call-IDs as fields (`--log-format json` makes them JSON fields).
pub const CALL_LOG: &str = "handover_worker::call";

/// Whether the call log is on (read once at start, from the filter).
pub fn call_log_on() -> bool {
    tracing::enabled!(target: CALL_LOG, tracing::Level::DEBUG)
}

/// Logs an ended call (the call log): what its record says, on one line.
pub fn log_ended(c: &CallDetail) {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    tracing::debug!(
        target: CALL_LOG,
        call_id = %text(&c.a_call_id),
        b_call_id = %text(&c.b_call_id),
        from = %text(&c.from),
        to = %text(&c.to),
        target_uri = %text(&c.detail.target),
        user = %c.detail.user.as_deref().map(text).unwrap_or_default(),
        source = %c.source.map(|s| s.to_string()).unwrap_or_default(),
        cause = c.cause.as_str(),
        status = c.status,
        duration_ms = c.duration_ms(),
        transfers = c.detail.transfers.len(),
        "call ended"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(call_id: &[u8]) -> Dialog {
        let mut d = Dialog::new(Parts {
            call_id,
            local_tag: b"ours",
            remote_tag: b"theirs",
            local_uri: b"sip:b2bua@192.0.2.1",
            remote_uri: b"sip:alice@192.0.2.9",
            remote_target: b"sip:alice@192.0.2.9:5062",
            route_set: &[b"<sip:192.0.2.1;lr>", b"<sip:192.0.2.2;lr>"],
        });
        d.state = DialogState::Confirmed;
        d.local_seq = 7;
        d.remote_seq = Some(3);
        d
    }

    /// What a new owner adopts is what the old one wrote, the re-INVITE
    /// in flight, A's unacknowledged 2xx (kept beside the record) and the
    /// transfers in progress included.
    #[test]
    fn a_call_record_with_a_reinvite_in_flight_reads_back_whole() {
        let mut r = CallRecord {
            key: 42,
            version: 3,
            // A transfer carried out for A gave leg A another Call-ID.
            id: b"first".to_vec(),
            a_call_id: b"a".to_vec(),
            a_invite: b"INVITE sip:b@x SIP/2.0\r\n\r\n".to_vec(),
            a_target: Some("192.0.2.1:5060".parse().unwrap()),
            a_tag: b"t1".to_vec(),
            a_dialog: leg(b"a"),
            b_call_id: b"b".to_vec(),
            b_invite: b"INVITE sip:c@y SIP/2.0\r\n\r\n".to_vec(),
            b_dialog: leg(b"b"),
            local_mode: true,
            pending: Some(handover_call::PendingRequest {
                from_a: false,
                request: b"INVITE sip:b2bua@x SIP/2.0\r\n\r\n".to_vec(),
                back: Some("192.0.2.1:5060".parse().unwrap()),
                relayed: b"INVITE sip:alice@y SIP/2.0\r\n\r\n".to_vec(),
            }),
            a_ok: Some(b"SIP/2.0 200 OK\r\n\r\n".to_vec()),
            detail: Detail {
                id: Detail::parse_id(b"0123456789abcdef0123456789ABCDEF").unwrap(),
                target: b"sip:c@y".to_vec(),
                user: Some(b"alice".to_vec()),
                started_ms: 1_000,
                ringing_ms: 1_100,
                answered_ms: 1_500,
                transfers: vec![TransferDetail {
                    attended: true,
                    local: false,
                    result: TransferResult::Succeeded,
                    at_ms: 2_000,
                }],
                workers: vec![1, 3],
            },
            refer: Some(handover_call::ReferRecord {
                attended: true,
                from_a: false,
                cseq_in: 4,
                cseq_out: 7,
                at_ms: 1_900,
                until_ms: 61_900,
            }),
            local: Some(handover_call::LocalRecord {
                attended: false,
                transferor_a: true,
                refer_seq: 5,
                at_ms: 1_950,
                t_out: b"INVITE sip:carol@z SIP/2.0\r\n\r\n".to_vec(),
                t_call_id: b"t".to_vec(),
                t_dialog: Some(leg(b"t")),
                ring_until_ms: Some(31_950),
                r_out: Some(b"INVITE sip:alice@y SIP/2.0\r\n\r\n".to_vec()),
                replaced: Some(b"other".to_vec()),
            }),
        };
        let read = |r: &CallRecord| decode(&upsert(r));
        let u = upsert(&r);
        assert!(u.record_lz4);
        assert!(
            u.record.len() < state(&r).encoded_len(),
            "compressed: {} of {} bytes",
            u.record.len(),
            state(&r).encoded_len()
        );
        assert_eq!(
            (&u.call_id[..], &u.leg_call_id[..]),
            (&b"first"[..], &b"a"[..])
        );
        assert_eq!(read(&r).as_ref(), Some(&r));
        r.pending = None;
        r.a_ok = None;
        r.refer = None;
        r.local = None;
        assert_eq!(read(&r).as_ref(), Some(&r));
    }

    /// Records written before they were compressed read as they did;
    /// compressed bytes that lie about their length, or are cut, read as
    /// no record (the table shows their ids), never a panic or a
    /// gigabyte allocated.
    #[test]
    fn a_plain_record_reads_and_a_broken_one_is_refused() {
        let r = CallRecord {
            key: 1,
            version: 1,
            id: b"a".to_vec(),
            a_call_id: b"a".to_vec(),
            a_invite: b"INVITE sip:b@x SIP/2.0\r\n\r\n".repeat(4),
            a_target: None,
            a_tag: b"t1".to_vec(),
            a_dialog: leg(b"a"),
            b_call_id: b"b".to_vec(),
            b_invite: b"INVITE sip:c@y SIP/2.0\r\n\r\n".to_vec(),
            b_dialog: leg(b"b"),
            local_mode: false,
            pending: None,
            a_ok: None,
            detail: Detail::default(),
            refer: None,
            local: None,
        };
        let mut u = upsert(&r);
        let plain = pb::CallUpsert {
            record: state(&r).encode_to_vec(),
            record_lz4: false,
            ..u.clone()
        };
        assert_eq!(decode(&plain).as_ref(), Some(&r));
        assert_eq!(decode(&u).as_ref(), Some(&r));
        let whole = u.record.clone();
        u.record[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&u), None, "a length past the bound");
        u.record[..4].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(decode(&u), None, "a length too short");
        u.record = whole[..whole.len() / 2].to_vec();
        assert_eq!(decode(&u), None, "cut");
        u.record = whole[..3].to_vec();
        assert_eq!(decode(&u), None, "no length");
    }
}
