use super::*;
use pb::command::Command as C;

#[test]
fn a_call_is_found_by_either_legs_call_id_through_changes_and_snapshots() {
    let mut t = Table::new(4);
    up(&mut t, 1);
    let put = |t: &mut Table, leg_a: &[u8], other: &[u8], version: u64| {
        t.apply(C::Upsert(pb::CallUpsert {
            call_id: b"a".to_vec(),
            key: 0,
            version,
            owner: 1,
            record: vec![],
            other_call_id: other.to_vec(),
            a_ok: vec![],
            answered_unix_ms: 0,
            leg_call_id: leg_a.to_vec(),
            hang_up: None,
            record_lz4: false,
        }))
    };
    put(&mut t, b"", b"b", 1);
    assert_eq!(t.call_by_leg(b"a").map(|c| c.version), Some(1));
    assert_eq!(t.call_by_leg(b"b").map(|c| c.version), Some(1));
    // A local transfer gave the call a new other leg.
    put(&mut t, b"", b"b2", 2);
    assert!(t.call_by_leg(b"b").is_none());
    assert_eq!(t.call_by_leg(b"b2").map(|c| c.version), Some(2));
    // One carried out for A gave leg A the target's Call-ID: the call
    // keeps its id, and is found by the new leg too.
    put(&mut t, b"t", b"b2", 3);
    assert_eq!(t.call_count(), 1);
    assert_eq!(t.call_by_leg(b"t").map(|c| c.version), Some(3));
    assert_eq!(t.call_by_leg(b"a").map(|c| c.version), Some(3));
    counted_per_shard(&t);
    // The calls, encoded one by one after the rest, read as a State's.
    let s = pb::State::decode(&t.encode()[..]).unwrap();
    assert_eq!(
        s.calls,
        t.calls().map(StoredCall::to_pb).collect::<Vec<_>>()
    );
    assert_eq!(s.members_up, [1]);
    let back = Table::decode(&t.encode(), 4).unwrap();
    assert_eq!(back, t, "the index is rebuilt from a snapshot");
    t.apply(C::Remove(pb::CallRemove {
        call_id: b"a".to_vec(),
        key: 0,
        version: 4,
        owner: 1,
    }));
    assert_eq!(t.call_count(), 0);
    counted_per_shard(&t);
    for leg in [&b"a"[..], b"b2", b"t"] {
        assert!(t.call_by_leg(leg).is_none(), "{leg:?} forgotten");
    }
}

/// The counts per shard kept as calls change are the walk's.
fn counted_per_shard(t: &Table) {
    let mut walk = vec![0; t.shards()];
    for c in t.calls() {
        walk[shard_of(c.key, t.shards())] += 1;
    }
    assert_eq!(t.calls_per_shard(), walk);
}

fn up(t: &mut Table, n: u64) -> Vec<Move> {
    match t.apply(C::Up(pb::MemberUp { node: n })) {
        Some(Change::Map { moves, .. }) => moves,
        other => panic!("{other:?}"),
    }
}

fn count(t: &Table, n: u64) -> usize {
    t.owners().iter().filter(|&&o| o == n).count()
}

#[test]
fn members_share_the_shards_and_a_dead_members_shards_spread_over_the_rest() {
    let mut t = Table::new(64);
    assert_eq!(up(&mut t, 1).len(), 64);
    assert_eq!(up(&mut t, 2).len(), 32);
    assert_eq!(up(&mut t, 3).len(), 21);
    assert_eq!((count(&t, 1), count(&t, 2), count(&t, 3)), (21, 22, 21));
    assert_eq!(t.epoch(), 3);
    let Some(Change::Map { epoch, moves }) = t.apply(C::Down(pb::MemberDown {
        node: 2,
        drained: false,
        lease_over: true,
    })) else {
        panic!()
    };
    assert_eq!((epoch, moves.len()), (4, 22));
    assert!(moves.iter().all(|m| m.from == 2 && m.to != 2 && m.to != 0));
    // A death the leader knows is past its lease: served at once.
    assert!(moves.iter().all(|m| m.lease_over));
    assert_eq!(count(&t, 1) + count(&t, 3), 64);
    assert!(count(&t, 1).abs_diff(count(&t, 3)) <= 1);
    // Up twice, down twice: no new epoch.
    assert_eq!(t.apply(C::Up(pb::MemberUp { node: 1 })), None);
    assert_eq!(
        t.apply(C::Down(pb::MemberDown {
            node: 2,
            drained: true,
            lease_over: true,
        })),
        None
    );
}

#[test]
fn an_operators_hangup_names_the_call_by_either_leg() {
    let mut t = Table::new(4);
    up(&mut t, 1);
    t.apply(C::Upsert(pb::CallUpsert {
        call_id: b"a".to_vec(),
        key: 7,
        version: 1,
        owner: 1,
        other_call_id: b"b".to_vec(),
        ..Default::default()
    }));
    for leg in [&b"a"[..], b"b"] {
        assert_eq!(
            t.apply(C::Hangup(pb::CallHangup {
                call_id: leg.to_vec(),
                spare: b"b".to_vec(),
            })),
            Some(Change::HangUp {
                call_id: b"a".to_vec(),
                key: 7,
                spare: b"b".to_vec(),
            })
        );
    }
    assert_eq!(
        t.apply(C::Hangup(pb::CallHangup {
            call_id: b"x".to_vec(),
            ..Default::default()
        })),
        None
    );
    assert_eq!(t.call_count(), 1, "the owner's BYEs and removal end it");
    // The hang-up stays on the call for whoever takes it over: through
    // its owner's later upserts and a snapshot.
    let pending = |t: &Table| t.call(b"a").and_then(|c| c.hang_up().map(<[u8]>::to_vec));
    assert_eq!(pending(&t), Some(b"b".to_vec()));
    t.apply(C::Upsert(pb::CallUpsert {
        call_id: b"a".to_vec(),
        key: 7,
        version: 2,
        owner: 1,
        other_call_id: b"b".to_vec(),
        ..Default::default()
    }));
    assert_eq!(t.call(b"a").map(|c| c.version), Some(2));
    assert_eq!(pending(&t), Some(b"b".to_vec()));
    let back = Table::decode(&t.encode(), 4).unwrap();
    assert_eq!(pending(&back), Some(b"b".to_vec()));
}

#[test]
fn a_record_is_kept_until_written_and_never_taken_twice() {
    let ended = |id: &[u8]| {
        C::Ended(pb::CallEnded {
            record: Some(pb::CallDetail {
                detail: Some(pb::Detail {
                    id: id.to_vec(),
                    ..Default::default()
                }),
                key: 7,
                ..Default::default()
            }),
        })
    };
    let mut t = Table::new(4);
    up(&mut t, 1);
    assert_eq!(
        t.apply(ended(b"r1")),
        Some(Change::RecordEnded {
            id: b"r1".to_vec(),
            key: 7
        })
    );
    // Its writer: the shard's owner when it was applied.
    assert_eq!(t.record(b"r1").map(|r| r.1), Some(1));
    // A re-proposed copy changes nothing.
    assert_eq!(t.apply(ended(b"r1")), None);
    // Kept across a snapshot until written.
    let back = Table::decode(&t.encode(), 4).unwrap();
    assert_eq!(back, t);
    assert_eq!(back.unwritten().count(), 1);
    t.apply(C::Written(pb::RecordsWritten {
        ids: vec![b"r1".to_vec()],
    }));
    assert_eq!(t.unwritten().count(), 0);
    // A copy proposed again after it was written is not taken.
    assert_eq!(t.apply(ended(b"r1")), None);
    let back = Table::decode(&t.encode(), 4).unwrap();
    assert_eq!(back, t);
    // A record without an id is none.
    assert_eq!(t.apply(ended(b"")), None);
}

#[test]
fn the_callers_ack_drops_the_2xx_kept_for_a_new_owner() {
    let mut t = Table::new(4);
    up(&mut t, 1);
    t.apply(C::Upsert(pb::CallUpsert {
        call_id: b"a".to_vec(),
        version: 1,
        owner: 1,
        record: vec![1],
        a_ok: b"SIP/2.0 200 OK\r\n".to_vec(),
        ..Default::default()
    }));
    let back = Table::decode(&t.encode(), 4).unwrap();
    assert_eq!(back.call(b"a").unwrap().a_ok(), b"SIP/2.0 200 OK\r\n");
    // By any worker (the call's may have lost the shard meanwhile).
    assert_eq!(
        t.apply(C::Acked(pb::CallAcked {
            call_id: b"a".to_vec()
        })),
        None
    );
    let c = t.call(b"a").unwrap();
    assert!(c.a_ok().is_empty());
    assert_eq!((c.version, c.record()), (1, &[1][..]));
    // An ACK of a call not held changes nothing.
    t.apply(C::Acked(pb::CallAcked {
        call_id: b"x".to_vec(),
    }));
    assert_eq!(t.call_count(), 1);
}

#[test]
fn only_the_shards_owner_writes_and_old_versions_never_return() {
    let mut t = Table::new(4);
    up(&mut t, 7);
    let call = |version, owner| pb::CallUpsert {
        call_id: b"c1".to_vec(),
        key: 5,
        version,
        owner,
        record: vec![version as u8],
        other_call_id: Vec::new(),
        a_ok: Vec::new(),
        answered_unix_ms: 0,
        leg_call_id: Vec::new(),
        hang_up: None,
        record_lz4: false,
    };
    assert!(matches!(
        t.apply(C::Upsert(call(2, 8))),
        Some(Change::Refused { .. })
    ));
    assert!(matches!(
        t.apply(C::Upsert(call(2, 7))),
        Some(Change::Stored { .. })
    ));
    // A previous owner's first version of a call nobody wrote is kept.
    let mut late = call(1, 8);
    late.call_id = b"c2".to_vec();
    assert!(matches!(
        t.apply(C::Upsert(late.clone())),
        Some(Change::Stored { owner: 8, .. })
    ));
    late.version = 2;
    assert!(matches!(
        t.apply(C::Upsert(late)),
        Some(Change::Refused { .. })
    ));
    t.apply(C::Remove(pb::CallRemove {
        call_id: b"c2".to_vec(),
        key: 5,
        version: 3,
        owner: 7,
    }));
    assert!(matches!(
        t.apply(C::Upsert(call(1, 7))),
        Some(Change::Refused { .. })
    ));
    t.apply(C::Remove(pb::CallRemove {
        call_id: b"c1".to_vec(),
        key: 5,
        version: 2,
        owner: 7,
    }));
    assert!(matches!(
        t.apply(C::Upsert(call(2, 7))),
        Some(Change::Refused { .. })
    ));
    assert_eq!(t.call_count(), 0);
    assert!(matches!(
        t.apply(C::Upsert(call(3, 7))),
        Some(Change::Stored { .. })
    ));
    counted_per_shard(&t);
    assert_eq!(t.calls_per_shard()[1], 1, "key 5 of 4 shards");
    let back = Table::decode(&t.encode(), 4).unwrap();
    assert_eq!(back, t);
}

#[test]
fn a_binding_keeps_its_flow_and_the_edge_holding_it_through_a_command() {
    let b = Binding {
        contact: b"sip:carol@192.168.1.20:5060".as_slice().into(),
        flow: "tcp:203.0.113.7:40000".parse().ok(),
        edge: "10.8.0.5:5060".parse().ok(),
        expires_ms: 9,
        call_id_hash: 3,
        cseq: 2,
        q: 500,
        path: Box::new([]),
    };
    assert_eq!(binding(&binding_pb(&b)), b);
    let old = Binding { edge: None, ..b };
    let pb = binding_pb(&old);
    assert!(pb.edge.is_empty(), "an edge-less binding writes no edge");
    assert_eq!(binding(&pb), old);
}

#[test]
fn only_the_aors_owner_binds_and_a_removed_aor_does_not_return_from_an_old_write() {
    let mut t = Table::new(4);
    up(&mut t, 7);
    let reg = |version, owner, n: usize| pb::Registration {
        aor: b"alice@example.com".to_vec(),
        key: 5,
        version,
        owner,
        bindings: (0..n)
            .map(|i| pb::Binding {
                contact: format!("sip:alice@10.0.0.{i}").into_bytes(),
                flow: "192.0.2.9:5060".into(),
                expires_ms: 1_000,
                q: 1000,
                call_id_hash: 1,
                cseq: 1,
                path: vec![],
                edge: String::new(),
            })
            .collect(),
    };
    let stored = |c: Option<Change>| matches!(c, Some(Change::Bound { stored: true, .. }));
    assert!(!stored(t.apply(C::Bind(reg(1, 8, 1)))), "not the owner");
    assert!(stored(t.apply(C::Bind(reg(1, 7, 2)))));
    assert_eq!(
        t.registration(5, b"alice@example.com")
            .unwrap()
            .bindings
            .len(),
        2
    );
    assert!(!stored(t.apply(C::Bind(reg(1, 7, 1)))), "an old version");
    assert!(stored(t.apply(C::Bind(reg(2, 7, 0)))), "removed");
    assert!(t.registration(5, b"alice@example.com").is_none());
    let back = Table::decode(&t.encode(), 4).unwrap();
    assert_eq!(back, t);
    let mut back = back;
    assert!(
        !stored(back.apply(C::Bind(reg(2, 7, 1)))),
        "a duplicate of an old write after a snapshot"
    );
    assert!(stored(back.apply(C::Bind(reg(3, 7, 1)))));
    assert_eq!(back.locations().read().aors(), 1);
}

#[test]
fn reloaded_settings_are_numbered_in_log_order_and_applied_once() {
    let mut t = Table::new(4);
    assert_eq!(t.settings(), None);
    let settings = |token: &[u8], route: &str| {
        C::Settings(pb::Settings {
            token: token.to_vec(),
            proposer: 2,
            routes: vec![route.to_string()],
            ..Default::default()
        })
    };
    assert_eq!(
        t.apply(settings(b"a", "*=127.0.0.1:5070")),
        Some(Change::Settings { generation: 1 })
    );
    // A re-proposed copy of the same reload is not a new generation.
    assert_eq!(t.apply(settings(b"a", "*=127.0.0.1:5070")), None);
    assert_eq!(
        t.apply(settings(b"b", "*=127.0.0.1:5071")),
        Some(Change::Settings { generation: 2 })
    );
    let s = t.settings().unwrap();
    assert_eq!(
        (s.generation, s.routes.as_slice()),
        (2, &["*=127.0.0.1:5071".to_string()][..])
    );
    // Without a token it is no reload.
    assert_eq!(t.apply(settings(b"", "*=127.0.0.1:1")), None);
    // Kept across a snapshot: a worker that starts from it routes alike.
    let back = Table::decode(&t.encode(), 4).unwrap();
    assert_eq!(back, t);
    assert_eq!(back.settings().map(|s| s.generation), Some(2));
}

/// A release carries the last state of the calls its member handed over
/// with the shards (`MemberReleased.calls`): stored, though that member no
/// longer owns the shard, when it is newer and of a shard the release
/// names; an upsert of the same member alone is refused.
#[test]
fn a_release_stores_the_last_state_of_the_calls_handed_over_with_it() {
    let mut t = Table::new(4);
    up(&mut t, 1);
    let call = |id: &[u8], key: u64, version: u64| pb::CallUpsert {
        call_id: id.to_vec(),
        key,
        version,
        owner: 1,
        ..Default::default()
    };
    let moved = up(&mut t, 2);
    let lost: Vec<u32> = moved.iter().map(|m| m.shard as u32).collect();
    let kept = (0..4u64).find(|&k| t.owner_of_key(k) == 1).unwrap();
    let gone = (0..4u64).find(|&k| t.owner_of_key(k) == 2).unwrap();
    assert!(lost.contains(&(shard_of(gone, 4) as u32)));
    for (id, key) in [(&b"a"[..], gone), (b"b", gone)] {
        t.apply(C::Upsert(pb::CallUpsert {
            owner: 2,
            ..call(id, key, 1)
        }));
    }
    // Worker 1's own upsert of a shard it lost: refused.
    assert!(matches!(
        t.apply(C::Upsert(call(b"a", gone, 2))),
        Some(Change::Refused { .. })
    ));
    let r = t.apply(C::Released(pb::MemberReleased {
        node: 1,
        epoch: t.epoch(),
        shards: lost.clone(),
        calls: vec![
            call(b"a", gone, 2),
            // Not newer than what the table holds.
            call(b"b", gone, 1),
            // Of a shard the release does not name.
            call(b"c", kept, 1),
            // Another member's.
            pb::CallUpsert {
                owner: 3,
                ..call(b"d", gone, 1)
            },
        ],
    }));
    let Some(Change::Released { node, calls, .. }) = r else {
        panic!("{r:?}")
    };
    assert_eq!((node, calls), (1, vec![(b"a".to_vec(), gone)]));
    assert_eq!(t.call(b"a").map(|c| c.version), Some(2));
    assert!(t.call(b"c").is_none() && t.call(b"d").is_none());
}

#[test]
fn a_late_leave_of_an_earlier_life_does_not_make_the_new_one_leave() {
    let mut t = Table::new(4);
    let join = |incarnation| {
        C::Join(pb::MemberJoin {
            node: 4,
            grpc: "w4:7000".into(),
            sip: "w4:5060".into(),
            incarnation,
        })
    };
    let leave = |incarnation| {
        C::Leave(pb::MemberLeave {
            node: 4,
            incarnation,
        })
    };
    t.apply(join(7));
    assert_eq!(t.incarnation(4), 7);
    assert!(t.apply(leave(7)).is_some());
    assert!(t.is_leaving(4));
    // Removed from Raft; it starts again and joins as a new life.
    t.forget(4);
    t.apply(join(8));
    assert!(!t.is_leaving(4));
    // The first leave, re-proposed while it was away, is applied late.
    assert!(t.apply(leave(7)).is_none());
    assert!(!t.is_leaving(4), "the new life stays");
    assert!(t.apply(leave(8)).is_some());
    assert!(t.is_leaving(4));
    // A member of the first configuration: incarnation 0.
    assert!(
        t.apply(C::Leave(pb::MemberLeave {
            node: 2,
            incarnation: 0
        }))
        .is_some()
    );
    assert!(t.is_leaving(2));
}
