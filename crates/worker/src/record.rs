//! `handover_call::CallRecord` <-> the prost `CallState` of
//! `proto/cluster.proto` (the bytes a `CallUpsert` carries).

use handover_call::{CallRecord, Dialog, DialogId, DialogState};
use handover_cluster::pb;
use prost::Message as _;

fn dialog_pb(d: &Dialog) -> pb::Dialog {
    pb::Dialog {
        call_id: d.id.call_id.clone(),
        local_tag: d.id.local_tag.clone(),
        remote_tag: d.id.remote_tag.clone(),
        confirmed: d.state == DialogState::Confirmed,
        local_seq: d.local_seq,
        remote_seq: d.remote_seq,
        local_uri: d.local_uri.clone(),
        remote_uri: d.remote_uri.clone(),
        remote_target: d.remote_target.clone(),
        route_set: d.route_set.clone(),
    }
}

fn dialog(d: pb::Dialog) -> Dialog {
    Dialog {
        id: DialogId {
            call_id: d.call_id,
            local_tag: d.local_tag,
            remote_tag: d.remote_tag,
        },
        state: if d.confirmed {
            DialogState::Confirmed
        } else {
            DialogState::Early
        },
        local_seq: d.local_seq,
        remote_seq: d.remote_seq,
        local_uri: d.local_uri,
        remote_uri: d.remote_uri,
        remote_target: d.remote_target,
        route_set: d.route_set,
    }
}

/// The bytes a `CallUpsert` carries for `r`.
pub fn encode(r: &CallRecord) -> Vec<u8> {
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
    }
    .encode_to_vec()
}

/// The record of a replicated call; `None` when its bytes do not decode.
pub fn decode(u: &pb::CallUpsert) -> Option<CallRecord> {
    let s = pb::CallState::decode(&u.record[..]).ok()?;
    Some(CallRecord {
        key: u.key,
        version: u.version,
        a_call_id: s.a_call_id,
        a_invite: s.a_invite,
        a_target: s.a_target.parse().ok(),
        a_tag: s.a_tag,
        a_dialog: dialog(s.a_dialog?),
        b_call_id: s.b_call_id,
        b_invite: s.b_invite,
        b_dialog: dialog(s.b_dialog?),
        local_mode: s.local_mode,
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
