//! Shards and owners: `shard = key mod SHARDS`, and each shard's owner among
//! the backends that are up, by rendezvous (highest-random-weight) hashing:
//! every shard ranks every backend by a keyed hash of (shard, backend) and
//! picks the highest that is up. Taking one backend away moves only its own
//! shards (about 1/N of them); adding one takes about 1/(N+1) from each of
//! the others, and a backend that comes back gets exactly its shards back.

use std::net::SocketAddr;

use handover_sip::ids::{Hashing, SHARDS, shard_of};

const NONE: u16 = u16::MAX;

/// The routing table one edge thread reads per datagram: immutable, swapped
/// whole when a backend goes up or down.
#[derive(Debug)]
pub struct Table {
    backends: Vec<SocketAddr>,
    up: Vec<bool>,
    owner: Box<[u16]>,
    /// For each backend, a key whose shard it owns (for Record-Route of
    /// requests it sends out, so the answers come back to it).
    own_key: Vec<Option<u64>>,
    epoch: u64,
}

impl Table {
    /// Builds the table for `backends` with the given up/down states.
    ///
    /// # Panics
    /// If `up` and `backends` differ in length or there are more than
    /// 65,534 backends.
    pub fn new(backends: Vec<SocketAddr>, up: Vec<bool>, epoch: u64, hashing: &Hashing) -> Self {
        assert_eq!(backends.len(), up.len());
        assert!(backends.len() < usize::from(NONE));
        let ids: Vec<Vec<u8>> = backends
            .iter()
            .map(|b| b.to_string().into_bytes())
            .collect();
        let mut owner = vec![NONE; SHARDS].into_boxed_slice();
        let mut own_key = vec![None; backends.len()];
        for (shard, slot) in owner.iter_mut().enumerate() {
            let mut best: Option<(u64, u16)> = None;
            for (i, id) in ids.iter().enumerate() {
                if !up[i] {
                    continue;
                }
                let w = hashing.rendezvous(shard as u32, id);
                if best.is_none_or(|(bw, _)| w > bw) {
                    best = Some((w, i as u16));
                }
            }
            if let Some((_, i)) = best {
                *slot = i;
                own_key[usize::from(i)].get_or_insert(shard as u64);
            }
        }
        Self {
            backends,
            up,
            owner,
            own_key,
            epoch,
        }
    }

    /// The table of a cluster's shard map (docs/architecture.md, "The edge"): `owners[shard]`
    /// is the index of the backend that owns it, `None` for nobody. A
    /// backend is up when it owns a shard.
    ///
    /// # Panics
    /// If `owners` does not hold [`SHARDS`] entries or names a backend
    /// beyond `backends`.
    pub fn from_owners(backends: Vec<SocketAddr>, owners: &[Option<usize>], epoch: u64) -> Self {
        assert_eq!(owners.len(), SHARDS);
        assert!(backends.len() < usize::from(NONE));
        let mut up = vec![false; backends.len()];
        let mut own_key = vec![None; backends.len()];
        let owner: Box<[u16]> = owners
            .iter()
            .enumerate()
            .map(|(shard, o)| match *o {
                Some(i) => {
                    up[i] = true;
                    own_key[i].get_or_insert(shard as u64);
                    i as u16
                }
                None => NONE,
            })
            .collect();
        Self {
            backends,
            up,
            owner,
            own_key,
            epoch,
        }
    }

    /// The backend that owns `key`'s shard: its index and address.
    #[inline]
    pub fn route(&self, key: u64) -> Option<(usize, SocketAddr)> {
        let i = self.owner[shard_of(key, SHARDS)];
        (i != NONE).then(|| (usize::from(i), self.backends[usize::from(i)]))
    }

    /// The index of the backend at `addr`, if `addr` is one.
    #[inline]
    pub fn backend_index(&self, addr: SocketAddr) -> Option<usize> {
        self.backends.iter().position(|b| *b == addr)
    }

    /// A key routed to backend `i` (while it is up).
    pub fn key_for_backend(&self, i: usize) -> Option<u64> {
        self.own_key.get(i).copied().flatten()
    }

    /// All backends, in configuration order.
    pub fn backends(&self) -> &[SocketAddr] {
        &self.backends
    }

    /// Up/down state per backend.
    pub fn up(&self) -> &[bool] {
        &self.up
    }

    /// Shard owner per shard (`None` when no backend is up).
    pub fn owner_of_shard(&self, shard: usize) -> Option<usize> {
        let i = self.owner[shard];
        (i != NONE).then_some(usize::from(i))
    }

    /// Increases with every rebuild.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| format!("127.0.0.1:{}", 5070 + i).parse().unwrap())
            .collect()
    }

    fn moved(a: &Table, b: &Table) -> usize {
        (0..SHARDS)
            .filter(|&s| a.owner_of_shard(s) != b.owner_of_shard(s))
            .count()
    }

    #[test]
    fn a_cluster_map_routes_each_shard_to_its_owner() {
        let b = addrs(3);
        let owners: Vec<Option<usize>> = (0..SHARDS)
            .map(|s| if s % 2 == 0 { Some(2) } else { None })
            .collect();
        let t = Table::from_owners(b.clone(), &owners, 9);
        assert_eq!(t.route(4), Some((2, b[2])));
        assert_eq!(t.route(4 + SHARDS as u64), Some((2, b[2])));
        assert_eq!(t.route(5), None);
        assert_eq!(t.up(), &[false, false, true]);
        assert_eq!(t.key_for_backend(2), Some(0));
        assert_eq!(t.epoch(), 9);
    }

    #[test]
    fn spread_is_even() {
        let t = Table::new(addrs(3), vec![true; 3], 1, &Hashing::default());
        let mut count = [0usize; 3];
        for s in 0..SHARDS {
            count[t.owner_of_shard(s).unwrap()] += 1;
        }
        for c in count {
            let share = c as f64 / SHARDS as f64;
            assert!((share - 1.0 / 3.0).abs() < 0.05, "{count:?}");
        }
    }

    #[test]
    fn removing_one_of_n_moves_only_its_shards() {
        let h = Hashing::default();
        for n in [2usize, 3, 4, 8] {
            let all = Table::new(addrs(n), vec![true; n], 1, &h);
            let mut up = vec![true; n];
            up[1] = false;
            let less = Table::new(addrs(n), up, 2, &h);
            let owned_by_1 = (0..SHARDS)
                .filter(|&s| all.owner_of_shard(s) == Some(1))
                .count();
            assert_eq!(
                moved(&all, &less),
                owned_by_1,
                "only the dead backend's shards move"
            );
            let frac = moved(&all, &less) as f64 / SHARDS as f64;
            println!(
                "n={n}: removing one backend moved {:.3} of shards (ideal {:.3})",
                frac,
                1.0 / n as f64
            );
            assert!((frac - 1.0 / n as f64).abs() < 0.05, "n={n}: {frac}");
            // And it comes back to exactly its old shards.
            assert_eq!(moved(&all, &Table::new(addrs(n), vec![true; n], 3, &h)), 0);
        }
    }

    #[test]
    fn adding_one_takes_about_one_in_n_plus_one() {
        let h = Hashing::default();
        let three = Table::new(addrs(3), vec![true; 3], 1, &h);
        let four = Table::new(addrs(4), vec![true; 4], 2, &h);
        let frac = moved(&three, &four) as f64 / SHARDS as f64;
        println!("adding a 4th backend moved {frac:.3} of shards (ideal 0.25)");
        assert!((frac - 0.25).abs() < 0.05, "{frac}");
        for s in 0..SHARDS {
            let (a, b) = (three.owner_of_shard(s), four.owner_of_shard(s));
            assert!(
                a == b || b == Some(3),
                "a shard only ever moves to the new backend"
            );
        }
    }

    #[test]
    fn routes_and_own_keys() {
        let t = Table::new(addrs(2), vec![true, true], 1, &Hashing::default());
        for i in 0..2 {
            let k = t.key_for_backend(i).unwrap();
            assert_eq!(t.route(k).unwrap().0, i);
        }
        assert_eq!(t.backend_index("127.0.0.1:5071".parse().unwrap()), Some(1));
        assert_eq!(t.backend_index("127.0.0.1:9".parse().unwrap()), None);
        let none = Table::new(addrs(2), vec![false, false], 2, &Hashing::default());
        assert!(none.route(7).is_none());
    }
}
