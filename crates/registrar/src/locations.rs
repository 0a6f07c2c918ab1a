//! The location service's one copy of every AOR's bindings on a worker:
//! written by the replicated table as it applies commands (the Raft
//! thread), read by the registrar and the B2BUA (the SIP loop) under a
//! read lock. One copy, kept compact: a binding costs a few hundred bytes
//! per replica (docs/benchmarks.md), where a table copy and a registrar
//! copy of the decoded records cost 1.8 KB.
//!
//! AORs are found by their affinity key (`Hashing::aor_key`, which every
//! writer computes the same way) and compared by their bytes; two AORs of
//! one key share a short chain.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use handover_sip::ids::{SHARDS, shard_of};

/// The locations as the worker's threads share them.
pub type Shared = Arc<parking_lot::RwLock<Locations>>;

/// One contact of an AOR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI as the phone wrote it.
    pub contact: Box<[u8]>,
    /// Where its REGISTER came from (the transport and source the edge
    /// saw; on a stream, the connection): requests to the phone go there.
    pub flow: Option<handover_sip::Flow>,
    /// The edge that holds the flow, when edges name themselves (their
    /// address inside the cluster; see `Via::internal_edge`): requests to
    /// the phone go through it.
    pub edge: Option<std::net::SocketAddr>,
    /// Unix milliseconds.
    pub expires_ms: u64,
    /// A hash of the REGISTER's Call-ID (RFC 3261 §10.3 step 7 orders
    /// refreshes by Call-ID and CSeq; equality is all it needs).
    pub call_id_hash: u64,
    /// The REGISTER's CSeq number.
    pub cseq: u32,
    /// q × 1000.
    pub q: u16,
    /// The REGISTER's Path (RFC 3327): the route to the phone.
    pub path: Box<[Box<[u8]>]>,
}

impl Binding {
    /// Live at `now_ms`.
    pub fn live(&self, now_ms: u64) -> bool {
        self.expires_ms > now_ms
    }
}

/// One AOR as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// `user@host` (`handover_sip::ids::aor`).
    pub aor: Box<[u8]>,
    /// Bumped at every write.
    pub version: u64,
    /// Never empty (an AOR without bindings is removed).
    pub bindings: Box<[Binding]>,
    /// Another AOR of the same key.
    next: Option<Box<Stored>>,
}

impl Stored {
    /// The earliest expiry of its bindings.
    pub fn next_expiry(&self) -> Option<u64> {
        self.bindings.iter().map(|b| b.expires_ms).min()
    }
}

/// Every AOR's bindings; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locations {
    by_key: HashMap<u64, Stored>,
    aors: usize,
    bindings: usize,
    /// Bindings per flow source address.
    per_source: HashMap<IpAddr, usize>,
    /// Bindings per shard of their key (`SHARDS`): counts per worker
    /// without a walk of every AOR.
    per_shard: Vec<usize>,
}

impl Default for Locations {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            aors: 0,
            bindings: 0,
            per_source: HashMap::new(),
            per_shard: vec![0; SHARDS],
        }
    }
}

impl Locations {
    /// A new shared, empty set.
    pub fn shared() -> Shared {
        Arc::new(parking_lot::RwLock::new(Self::default()))
    }

    /// AORs held.
    pub fn aors(&self) -> usize {
        self.aors
    }

    /// Bindings held (expired ones not yet written out included).
    pub fn bindings(&self) -> usize {
        self.bindings
    }

    /// Bindings per shard: index [`shard_of`]`(key, SHARDS)`, kept as
    /// AORs are stored and removed.
    pub fn bindings_per_shard(&self) -> &[usize] {
        &self.per_shard
    }

    /// Bindings whose phone is behind `ip`.
    pub fn from_source(&self, ip: IpAddr) -> usize {
        self.per_source.get(&ip).copied().unwrap_or(0)
    }

    /// The AOR `aor` of key `key`.
    pub fn get(&self, key: u64, aor: &[u8]) -> Option<&Stored> {
        let mut s = self.by_key.get(&key);
        while let Some(x) = s {
            if &*x.aor == aor {
                return Some(x);
            }
            s = x.next.as_deref();
        }
        None
    }

    /// The AORs of key `key`.
    pub fn of_key(&self, key: u64) -> impl Iterator<Item = &Stored> {
        let mut s = self.by_key.get(&key);
        std::iter::from_fn(move || {
            let x = s?;
            s = x.next.as_deref();
            Some(x)
        })
    }

    /// Every AOR with its key.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Stored)> {
        self.by_key.iter().flat_map(|(&k, first)| {
            let mut s = Some(first);
            std::iter::from_fn(move || {
                let x = s?;
                s = x.next.as_deref();
                Some((k, x))
            })
        })
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    fn count(&mut self, key: u64, bindings: &[Binding], add: bool) {
        let s = &mut self.per_shard[shard_of(key, SHARDS)];
        *s = if add {
            *s + bindings.len()
        } else {
            s.saturating_sub(bindings.len())
        };
        for b in bindings {
            if let Some(f) = b.flow {
                let n = self.per_source.entry(f.addr.ip()).or_default();
                if add {
                    *n += 1;
                } else {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.per_source.remove(&f.addr.ip());
                    }
                }
            }
        }
        if add {
            self.bindings += bindings.len();
        } else {
            self.bindings = self.bindings.saturating_sub(bindings.len());
        }
    }

    /// Stores `aor`'s bindings at `version` (none: removes it).
    pub fn put(&mut self, key: u64, aor: &[u8], version: u64, bindings: Vec<Binding>) {
        let old = self.take(key, aor);
        if let Some(o) = &old {
            self.count(key, &o.bindings, false);
            self.aors -= 1;
        }
        if bindings.is_empty() {
            return;
        }
        self.count(key, &bindings, true);
        self.aors += 1;
        let new = Stored {
            aor: aor.into(),
            version,
            bindings: bindings.into_boxed_slice(),
            next: None,
        };
        match self.by_key.get_mut(&key) {
            None => {
                self.by_key.insert(key, new);
            }
            Some(first) => {
                // (A second AOR on one key: rare, chained.)
                let mut tail = first;
                while tail.next.is_some() {
                    tail = tail.next.as_deref_mut().expect("checked");
                }
                tail.next = Some(Box::new(new));
            }
        }
    }

    /// Removes `aor` from its key's chain.
    fn take(&mut self, key: u64, aor: &[u8]) -> Option<Stored> {
        let first = self.by_key.get_mut(&key)?;
        if &*first.aor == aor {
            let mut removed = match first.next.take() {
                Some(next) => std::mem::replace(first, *next),
                None => self.by_key.remove(&key)?,
            };
            removed.next = None;
            return Some(removed);
        }
        let mut cur = first;
        loop {
            let hit = cur.next.as_ref().is_some_and(|n| &*n.aor == aor);
            if hit {
                let mut removed = cur.next.take()?;
                cur.next = removed.next.take();
                return Some(*removed);
            }
            cur = cur.next.as_deref_mut()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(contact: &str, flow: &str) -> Binding {
        Binding {
            contact: contact.as_bytes().into(),
            flow: flow.parse().ok(),
            expires_ms: 10,
            call_id_hash: 1,
            cseq: 1,
            q: 1000,
            path: Box::new([]),
            edge: None,
        }
    }

    #[test]
    fn aors_of_one_key_chain_and_counts_follow_every_change() {
        let mut l = Locations::default();
        l.put(7, b"alice@x", 1, vec![b("sip:a@1", "192.0.2.1:5060")]);
        l.put(
            7,
            b"bob@x",
            1,
            vec![
                b("sip:b@1", "192.0.2.1:5062"),
                b("sip:b@2", "192.0.2.2:5060"),
            ],
        );
        l.put(8, b"carol@x", 3, vec![b("sip:c@1", "192.0.2.3:5060")]);
        assert_eq!((l.aors(), l.bindings()), (3, 4));
        assert_eq!(l.get(7, b"bob@x").map(|s| s.bindings.len()), Some(2));
        assert_eq!(l.of_key(7).count(), 2);
        assert_eq!(l.from_source("192.0.2.1".parse().unwrap()), 2);
        // Replace, then remove the head of a chain: the other stays found.
        l.put(7, b"alice@x", 2, vec![b("sip:a@9", "192.0.2.9:5060")]);
        assert_eq!(l.get(7, b"alice@x").map(|s| s.version), Some(2));
        l.put(7, b"alice@x", 3, vec![]);
        assert!(l.get(7, b"alice@x").is_none());
        assert_eq!(l.get(7, b"bob@x").map(|s| s.version), Some(1));
        assert_eq!((l.aors(), l.bindings()), (2, 3));
        assert_eq!(l.from_source("192.0.2.9".parse().unwrap()), 0);
        let per = |l: &Locations| {
            let mut walk = vec![0; SHARDS];
            for (k, s) in l.iter() {
                walk[shard_of(k, SHARDS)] += s.bindings.len();
            }
            assert_eq!(l.bindings_per_shard(), walk);
        };
        per(&l);
        assert_eq!(l.bindings_per_shard()[7], 2);
        l.put(7, b"bob@x", 2, vec![]);
        assert_eq!(l.of_key(7).count(), 0);
        assert_eq!(l.iter().count(), 1);
        per(&l);
        assert_eq!(l.bindings_per_shard()[shard_of(8, SHARDS)], 1);
    }
}
