//! A call as every replica's table keeps it, and the index of its legs.
//!
//! Every worker keeps every call's record, so a call's bytes here count
//! once per replica: its ids and record live in one block (a `CallUpsert`
//! has four), found by its id through `Borrow<[u8]>`, and the index of
//! its other legs is one block per leg holding both Call-IDs.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use crate::pb;

/// Bytes before the ids in [`StoredCall::bytes`]: the lengths of the
/// call's id, its other leg's and leg A's Call-IDs (u32, little-endian),
/// then flags.
const HEAD: usize = 13;
/// Flag: the record is LZ4-compressed (`CallUpsert.record_lz4`).
const LZ4: u8 = 1;

/// What the latest stored `CallUpsert` of a call carried. Ordered, equal
/// and hashed by its id alone, so a set of them is a map by id; compare
/// whole ones with [`StoredCall::same`].
#[derive(Debug, Clone)]
pub struct StoredCall {
    pub key: u64,
    pub version: u64,
    pub owner: u64,
    pub answered_unix_ms: u64,
    /// [`HEAD`], then `call_id`, `other_call_id`, `leg_call_id` and
    /// `record` back to back.
    bytes: Box<[u8]>,
    /// Our 2xx to A until A's ACK, and a hang-up not carried out yet:
    /// most calls have neither for most of their life.
    extra: Option<Box<Extra>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Extra {
    a_ok: Vec<u8>,
    hang_up: Option<Vec<u8>>,
}

impl StoredCall {
    /// `u` as stored; `None` when an id is longer than a u32 counts (no
    /// Call-ID is; refused as a malformed upsert).
    pub fn new(u: pb::CallUpsert) -> Option<Self> {
        let lens = [&u.call_id, &u.other_call_id, &u.leg_call_id].map(|b| u32::try_from(b.len()));
        let [Ok(a), Ok(b), Ok(c)] = lens else {
            return None;
        };
        let total = [&u.call_id, &u.other_call_id, &u.leg_call_id, &u.record]
            .iter()
            .try_fold(HEAD, |n, b| n.checked_add(b.len()))?;
        let mut bytes = Vec::with_capacity(total);
        for l in [a, b, c] {
            bytes.extend_from_slice(&l.to_le_bytes());
        }
        bytes.push(if u.record_lz4 { LZ4 } else { 0 });
        for b in [&u.call_id, &u.other_call_id, &u.leg_call_id, &u.record] {
            bytes.extend_from_slice(b);
        }
        let mut s = Self {
            key: u.key,
            version: u.version,
            owner: u.owner,
            answered_unix_ms: u.answered_unix_ms,
            bytes: bytes.into_boxed_slice(),
            extra: None,
        };
        s.set_extra(u.a_ok, u.hang_up);
        Some(s)
    }

    fn set_extra(&mut self, a_ok: Vec<u8>, hang_up: Option<Vec<u8>>) {
        self.extra =
            (!a_ok.is_empty() || hang_up.is_some()).then(|| Box::new(Extra { a_ok, hang_up }));
    }

    /// The length of id `i` (0: the call's, 1: the other leg's, 2: leg A's).
    fn len(&self, i: usize) -> usize {
        let at = i * 4;
        // Written by `new` from lengths that fit in a u32.
        let b = [
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ];
        u32::from_le_bytes(b) as usize
    }

    /// Part `i` of the block: 0 to 2 the ids (as in [`Self::len`]), 3 the
    /// record.
    fn part(&self, i: usize) -> &[u8] {
        let start = HEAD + (0..i).map(|j| self.len(j)).sum::<usize>();
        match i {
            3 => &self.bytes[start..],
            _ => &self.bytes[start..start + self.len(i)],
        }
    }

    /// Leg A's Call-ID when the call was set up: the call's id.
    pub fn call_id(&self) -> &[u8] {
        self.part(0)
    }

    /// The B2BUA's leg's Call-ID (see `CallUpsert.other_call_id`).
    pub fn other_call_id(&self) -> &[u8] {
        self.part(1)
    }

    /// Leg A's Call-ID when no longer the id (see `CallUpsert.leg_call_id`;
    /// empty otherwise).
    pub fn leg_call_id(&self) -> &[u8] {
        self.part(2)
    }

    /// The record, as the B2BUA encoded it.
    pub fn record(&self) -> &[u8] {
        self.part(3)
    }

    /// Whether [`Self::record`] is LZ4-compressed.
    pub fn record_lz4(&self) -> bool {
        self.bytes[12] & LZ4 != 0
    }

    /// Our 2xx to A while its ACK is not committed (empty: none).
    pub fn a_ok(&self) -> &[u8] {
        self.extra.as_ref().map_or(&[], |e| &e.a_ok)
    }

    /// A hang-up applied and not carried out yet (see `CallUpsert.hang_up`).
    pub fn hang_up(&self) -> Option<&[u8]> {
        self.extra.as_ref()?.hang_up.as_deref()
    }

    /// A's ACK was committed: the 2xx is no longer kept.
    pub(super) fn acked(&mut self) {
        if let Some(e) = self.extra.take() {
            self.set_extra(Vec::new(), e.hang_up);
        }
    }

    pub(super) fn set_hang_up(&mut self, spare: Vec<u8>) {
        let a_ok = self.extra.take().map(|e| e.a_ok).unwrap_or_default();
        self.set_extra(a_ok, Some(spare));
    }

    /// Bytes of its ids and record.
    pub(super) fn stored_len(&self) -> usize {
        self.bytes.len() + self.a_ok().len()
    }

    /// The upsert that stores this call.
    pub fn to_pb(&self) -> pb::CallUpsert {
        pb::CallUpsert {
            call_id: self.call_id().to_vec(),
            key: self.key,
            version: self.version,
            owner: self.owner,
            record: self.record().to_vec(),
            other_call_id: self.other_call_id().to_vec(),
            a_ok: self.a_ok().to_vec(),
            answered_unix_ms: self.answered_unix_ms,
            leg_call_id: self.leg_call_id().to_vec(),
            hang_up: self.hang_up().map(<[u8]>::to_vec),
            record_lz4: self.record_lz4(),
        }
    }

    /// Equal in everything, not only the id.
    pub fn same(&self, o: &Self) -> bool {
        (self.key, self.version, self.owner, self.answered_unix_ms)
            == (o.key, o.version, o.owner, o.answered_unix_ms)
            && self.bytes == o.bytes
            && self.extra == o.extra
    }
}

impl Borrow<[u8]> for StoredCall {
    fn borrow(&self) -> &[u8] {
        self.call_id()
    }
}

impl PartialEq for StoredCall {
    fn eq(&self, o: &Self) -> bool {
        self.call_id() == o.call_id()
    }
}

impl Eq for StoredCall {}

impl PartialOrd for StoredCall {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for StoredCall {
    fn cmp(&self, o: &Self) -> Ordering {
        self.call_id().cmp(o.call_id())
    }
}

/// One entry of the leg index: a leg's Call-ID and the id of the call
/// that has it, in one block (its length, u32 little-endian, then both).
/// Equal and hashed by the leg alone, so a set of them is a map by leg.
#[derive(Debug, Clone)]
pub(super) struct Leg(Box<[u8]>);

impl Leg {
    /// `None` when `leg` is longer than a u32 counts.
    pub(super) fn new(leg: &[u8], call_id: &[u8]) -> Option<Self> {
        let n = u32::try_from(leg.len()).ok()?;
        let mut b = Vec::with_capacity(4 + leg.len() + call_id.len());
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(leg);
        b.extend_from_slice(call_id);
        Some(Self(b.into_boxed_slice()))
    }

    fn split(&self) -> (&[u8], &[u8]) {
        // Written by `new`.
        let n = u32::from_le_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]) as usize;
        self.0[4..].split_at(n)
    }

    pub(super) fn leg(&self) -> &[u8] {
        self.split().0
    }

    pub(super) fn call_id(&self) -> &[u8] {
        self.split().1
    }
}

impl Borrow<[u8]> for Leg {
    fn borrow(&self) -> &[u8] {
        self.leg()
    }
}

impl PartialEq for Leg {
    fn eq(&self, o: &Self) -> bool {
        self.leg() == o.leg()
    }
}

impl Eq for Leg {}

impl Hash for Leg {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.leg().hash(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_call_gives_back_the_upsert_it_was_made_of() {
        let u = pb::CallUpsert {
            call_id: b"a@x".to_vec(),
            key: 7,
            version: 3,
            owner: 2,
            record: b"record".to_vec(),
            other_call_id: b"b".to_vec(),
            a_ok: b"SIP/2.0 200 OK\r\n\r\n".to_vec(),
            answered_unix_ms: 99,
            leg_call_id: b"t".to_vec(),
            hang_up: None,
            record_lz4: true,
        };
        let mut s = StoredCall::new(u.clone()).unwrap();
        assert_eq!(s.to_pb(), u);
        s.set_hang_up(b"spare".to_vec());
        s.acked();
        let back = s.to_pb();
        assert_eq!(
            (&back.a_ok[..], back.hang_up.as_deref()),
            (&b""[..], Some(&b"spare"[..]))
        );
        let empty = StoredCall::new(pb::CallUpsert::default()).unwrap();
        assert_eq!(empty.to_pb(), pb::CallUpsert::default());
        assert!(empty.extra.is_none());
        let l = Leg::new(b"leg", b"call").unwrap();
        assert_eq!((l.leg(), l.call_id()), (&b"leg"[..], &b"call"[..]));
        assert_eq!(Leg::new(b"", b"").unwrap().leg(), b"");
    }
}
