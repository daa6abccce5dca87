//! The sticky split: `bucket = hash(policy name, sticky key) mod 10_000`; a
//! request goes to the candidate when `bucket < weight` (basis points), so
//! raising the weight never moves a key that was on the candidate back to the
//! baseline. Without a sticky key, a random bucket.
//!
//! The hash is FNV-1a (64 bit) finished with a 64-bit mixer: stable across
//! agents, platforms and versions, so every agent puts a key on the same side.

/// Number of buckets: weights are in basis points.
pub const BUCKETS: u32 = 10_000;

/// The bucket of a sticky key within a policy.
pub fn bucket(policy: &str, key: &[u8]) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for &b in policy.as_bytes().iter().chain(&[0xff]).chain(key) {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    // Finaliser of MurmurHash3, so nearby keys spread over all buckets.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % u64::from(BUCKETS)) as u32
}

/// A uniformly random bucket, for requests without a sticky key.
pub fn random_bucket() -> u32 {
    rand::random_range(0..BUCKETS)
}

/// True when a request in `bucket` goes to the candidate at `weight`.
pub fn to_candidate(bucket: u32, weight: u32) -> bool {
    bucket < weight
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is fixed: these values must never change, or keys would move.
    #[test]
    fn buckets_are_stable() {
        assert_eq!(bucket("chat", b"user-1"), bucket("chat", b"user-1"));
        let pinned: Vec<u32> = ["user-1", "user-2", "conversation-42"]
            .iter()
            .map(|k| bucket("chat", k.as_bytes()))
            .collect();
        assert_eq!(pinned, PINNED);
        assert_ne!(bucket("chat", b"user-1"), bucket("other", b"user-1"));
    }

    const PINNED: [u32; 3] = [3857, 4750, 6443];

    /// Keys spread evenly over the buckets.
    #[test]
    fn keys_spread_evenly() {
        let n = 100_000u32;
        let below = (0..n)
            .filter(|i| to_candidate(bucket("chat", format!("user-{i}").as_bytes()), 1000))
            .count() as f64;
        // 10 % expected; 5 standard deviations is about 0.5 %.
        assert!((below / f64::from(n) - 0.10).abs() < 0.005, "{below}");
    }

    /// Raising the weight keeps every candidate key on the candidate.
    #[test]
    fn raising_weight_never_moves_keys_back() {
        for i in 0..10_000 {
            let b = bucket("chat", format!("k{i}").as_bytes());
            if to_candidate(b, 500) {
                assert!(to_candidate(b, 501) && to_candidate(b, 10_000));
            }
        }
    }
}
