//! A consistent hash ring with virtual nodes.
//!
//! Every member is placed on a 64-bit ring at [`VNODES`] points (the hash of `member#i`); a key
//! belongs to the member of the first point at or after the key's hash, wrapping around. When a
//! member joins it takes over only the keys that now fall just before its points, about `1/N`
//! of them; when one leaves, only its keys move, each to the member of the next point. Every
//! replica that sees the same members computes the same owner for every key: the hash is
//! SHA-256 (stable across builds, platforms and versions), not the standard library's hasher.

use sha2::{Digest, Sha256};

/// Points per member. More points spread the keys more evenly (the spread of a member's share
/// shrinks with the square root of this); 128 keeps three members within about ±10 % of a third
/// and a lookup a binary search over a few hundred points.
pub const VNODES: usize = 128;

/// The first 8 bytes of SHA-256, as a big-endian number.
fn hash64(bytes: &[u8]) -> u64 {
    let digest = Sha256::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The hash of a key on the ring; compute it once and ask several rings with
/// [`Ring::owner_of_hash`].
pub fn key_hash(key: &str) -> u64 {
    hash64(key.as_bytes())
}

/// A ring over a set of members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    /// The members, sorted and without duplicates.
    members: Vec<String>,
    /// `(point, index into members)`, sorted by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// A ring over `members` (order and duplicates do not matter).
    pub fn new<I, S>(members: I) -> Ring
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut members: Vec<String> = members.into_iter().map(Into::into).collect();
        members.sort();
        members.dedup();
        let mut points = Vec::with_capacity(members.len() * VNODES);
        for (index, member) in members.iter().enumerate() {
            for v in 0..VNODES {
                points.push((hash64(format!("{member}#{v}").as_bytes()), index));
            }
        }
        // Ties (astronomically unlikely) are broken by member name, the same everywhere.
        points.sort_unstable();
        Ring { members, points }
    }

    /// The members, sorted.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// Whether `member` is on the ring.
    pub fn contains(&self, member: &str) -> bool {
        self.members.binary_search_by(|m| m.as_str().cmp(member)).is_ok()
    }

    /// The member that owns `key`; `None` on an empty ring.
    pub fn owner(&self, key: &str) -> Option<&str> {
        self.owner_of_hash(key_hash(key))
    }

    /// The member that owns a key with hash `hash` (from [`key_hash`]).
    pub fn owner_of_hash(&self, hash: u64) -> Option<&str> {
        if self.points.is_empty() {
            return None;
        }
        let at = self.points.partition_point(|(point, _)| *point < hash);
        let (_, index) = self.points.get(at).unwrap_or(&self.points[0]);
        self.members.get(*index).map(String::as_str)
    }

    /// A short fingerprint of the member list: two replicas that see the same members have the
    /// same view, and only then the same assignment.
    pub fn view(&self) -> String {
        let digest = Sha256::digest(self.members.join("\n").as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("tenant-{}/connection-{i}", i % 7)).collect()
    }

    fn shares(ring: &Ring, keys: &[String]) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for k in keys {
            *out.entry(ring.owner(k).expect("an owner").to_string()).or_insert(0) += 1;
        }
        out
    }

    #[test]
    fn three_members_each_get_about_a_third_of_300_connections() {
        for members in [
            ["a", "b", "c"],
            ["replica-0", "replica-1", "replica-2"],
            [
                "carerix-operator-7c9d5b6f4-2xk8p",
                "carerix-operator-7c9d5b6f4-9qzvt",
                "carerix-operator-7c9d5b6f4-mf4wl",
            ],
        ] {
            let ring = Ring::new(members);
            let got = shares(&ring, &keys(300));
            assert_eq!(got.len(), 3, "{members:?}: every member owns some: {got:?}");
            for (member, n) in &got {
                assert!((65..=135).contains(n), "{members:?}: {member} owns {n} of 300 ({got:?})");
            }
        }
    }

    #[test]
    fn a_joining_member_takes_about_a_quarter_and_nothing_moves_between_the_others() {
        let keys = keys(1000);
        let before = Ring::new(["a", "b", "c"]);
        let after = Ring::new(["a", "b", "c", "d"]);
        let mut moved = 0;
        for k in &keys {
            let (old, new) = (before.owner(k).expect("owner"), after.owner(k).expect("owner"));
            if old != new {
                assert_eq!(new, "d", "{k} moved from {old} to {new}, not to the new member");
                moved += 1;
            }
        }
        assert!((150..=350).contains(&moved), "{moved} of 1000 moved to the fourth member");
    }

    #[test]
    fn a_leaving_member_gives_away_only_its_own_connections() {
        let keys = keys(1000);
        let before = Ring::new(["a", "b", "c"]);
        let after = Ring::new(["a", "c"]);
        for k in &keys {
            let old = before.owner(k).expect("owner");
            if old != "b" {
                assert_eq!(after.owner(k), Some(old), "{k} moved although its owner stayed");
            }
        }
    }

    #[test]
    fn every_replica_computes_the_same_owner_and_view_whatever_the_order_it_saw_members_in() {
        let one = Ring::new(["c", "a", "b", "a"]);
        let two = Ring::new(vec!["b".to_string(), "c".to_string(), "a".to_string()]);
        assert_eq!(one, two);
        assert_eq!(one.view(), two.view());
        assert_ne!(one.view(), Ring::new(["a", "b"]).view());
        for k in keys(100) {
            assert_eq!(one.owner(&k), two.owner(&k));
        }
        // Pinned: a change of hash or point layout would split a rolling update in two views.
        assert_eq!(Ring::new(["a", "b", "c"]).owner("default/acme"), Some("a"));
    }

    #[test]
    fn an_empty_ring_owns_nothing_and_a_single_member_owns_everything() {
        assert_eq!(Ring::new(Vec::<String>::new()).owner("x/y"), None);
        let solo = Ring::new(["only"]);
        assert!(keys(50).iter().all(|k| solo.owner(k) == Some("only")));
        assert!(solo.contains("only") && !solo.contains("other"));
    }
}
