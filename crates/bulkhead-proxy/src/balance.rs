//! Choosing a target within a group: smooth weighted round robin, least
//! request (power of two choices), weighted random and consistent hashing
//! (a hash ring). Unhealthy or drained targets are skipped; every choice is
//! lock-free on the request path.

use bulkhead_config::Balance;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The live state of a target: shared by every generation of the config in
/// which the target is unchanged, so a reload keeps its health, drain and
/// in-flight count.
#[derive(Debug)]
pub struct TargetLive {
    /// Passed its health checks (true until a check says otherwise).
    pub healthy: AtomicBool,
    /// Taken out of rotation by an operator.
    pub drained: AtomicBool,
    /// Requests in flight.
    pub in_flight: AtomicUsize,
    /// Failures in a row (outlier detection).
    pub consecutive_errors: AtomicU32,
    /// Ejections in a row (each one lasts longer).
    pub ejections: AtomicU32,
    /// Ejected until this [`now_ms`] instant (0 = not ejected).
    pub ejected_until: AtomicU64,
}

impl Default for TargetLive {
    fn default() -> Self {
        TargetLive {
            healthy: AtomicBool::new(true),
            drained: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            consecutive_errors: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }
}

/// Milliseconds on a process-wide monotonic clock.
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl TargetLive {
    /// Ejected by outlier detection at `now` (a [`now_ms`] instant).
    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }
}

/// One target of a group.
#[derive(Debug)]
pub struct TargetState {
    /// `host:port` as written in the config.
    pub address: crate::access_log::Name,
    /// Weight 1–1000.
    pub weight: u32,
    /// Its live state.
    pub live: Arc<TargetLive>,
}

impl std::ops::Deref for TargetState {
    type Target = TargetLive;
    fn deref(&self) -> &TargetLive {
        &self.live
    }
}

impl TargetState {
    /// A healthy target.
    pub fn new(address: String, weight: u32) -> Self {
        Self::with_live(address.into(), weight, Arc::default())
    }

    /// A target continuing the live state of an earlier generation.
    pub fn with_live(address: crate::access_log::Name, weight: u32, live: Arc<TargetLive>) -> Self {
        TargetState {
            address,
            weight: weight.max(1),
            live,
        }
    }

    /// May receive new requests.
    pub fn available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && !self.drained.load(Ordering::Relaxed)
            && (self.ejected_until.load(Ordering::Relaxed) == 0 || !self.ejected(now_ms()))
    }
}

/// A group's picker, built once per snapshot.
#[derive(Debug)]
pub struct Balancer {
    kind: Balance,
    /// Smooth WRR order of target indices (length = sum of weights, capped).
    schedule: Vec<u32>,
    next: AtomicUsize,
    /// Cumulative weights for weighted random.
    cumulative: Vec<u64>,
    /// Hash ring: (point, target index), sorted.
    ring: Vec<(u64, u32)>,
}

/// Virtual nodes per unit of weight on the hash ring.
const RING_POINTS_PER_WEIGHT: u32 = 40;
/// Longest round-robin schedule; weights are scaled down past it.
const MAX_SCHEDULE: u64 = 10_000;

impl Balancer {
    /// Build the picker for `targets`.
    pub fn new(kind: Balance, targets: &[TargetState]) -> Self {
        let weights: Vec<u64> = targets.iter().map(|t| u64::from(t.weight)).collect();
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut sum = 0;
        for w in &weights {
            sum += w;
            cumulative.push(sum);
        }
        let schedule = if kind == Balance::RoundRobin {
            smooth_schedule(&weights)
        } else {
            Vec::new()
        };
        let ring = if kind == Balance::ConsistentHash {
            hash_ring(targets)
        } else {
            Vec::new()
        };
        Balancer {
            kind,
            schedule,
            next: AtomicUsize::new(0),
            cumulative,
            ring,
        }
    }

    /// Does this balancer use the request's hash key?
    pub fn hashes(&self) -> bool {
        self.kind == Balance::ConsistentHash
    }

    /// Choose an available target. `random` is a fresh random number,
    /// `hash` the request's consistent-hash key (when the group hashes).
    pub fn pick(&self, targets: &[TargetState], random: u64, hash: Option<u64>) -> Option<usize> {
        match targets {
            [] => return None,
            // Every kind picks the one target (and its state is all it reads).
            [only] => return only.available().then_some(0),
            _ => {}
        }
        match self.kind {
            Balance::RoundRobin => {
                let len = self.schedule.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|i| self.schedule[(start + i) % len] as usize)
                    .find(|&t| targets[t].available())
            }
            Balance::Random => self.weighted_random(targets, random),
            Balance::LeastRequest => {
                let a = self.weighted_random(targets, random)?;
                let b =
                    self.weighted_random(targets, random.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15)?;
                // Compare in_flight / weight without dividing.
                let la = targets[a].in_flight.load(Ordering::Relaxed) as u64
                    * u64::from(targets[b].weight);
                let lb = targets[b].in_flight.load(Ordering::Relaxed) as u64
                    * u64::from(targets[a].weight);
                Some(if lb < la { b } else { a })
            }
            Balance::ConsistentHash => {
                let key = hash.unwrap_or(random);
                let start = self.ring.partition_point(|(p, _)| *p < key);
                let n = self.ring.len();
                (0..n)
                    .map(|i| self.ring[(start + i) % n].1 as usize)
                    .find(|&t| targets[t].available())
            }
        }
    }

    fn weighted_random(&self, targets: &[TargetState], random: u64) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let point = random % total;
        let first = self.cumulative.partition_point(|c| *c <= point);
        let n = targets.len();
        (0..n)
            .map(|i| (first + i) % n)
            .find(|&t| targets[t].available())
    }
}

/// nginx's smooth weighted round robin, unrolled into a schedule: weights
/// 5,1,1 give `a a b a c a a` rather than `a a a a a b c`.
fn smooth_schedule(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let scale = total.div_ceil(MAX_SCHEDULE).max(1);
    let weights: Vec<i64> = weights.iter().map(|w| (w / scale).max(1) as i64).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn hash_ring(targets: &[TargetState]) -> Vec<(u64, u32)> {
    let mut ring = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        for v in 0..t.weight * RING_POINTS_PER_WEIGHT {
            ring.push((
                hash_bytes(format!("{}#{v}", t.address).as_bytes()),
                i as u32,
            ));
        }
    }
    ring.sort_unstable();
    ring
}

/// FNV-1a followed by a 64-bit finalizer: stable across runs and processes,
/// so a key keeps its target after a restart.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(weights: &[u32]) -> Vec<TargetState> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| TargetState::new(format!("127.0.0.1:{}", 9000 + i), *w))
            .collect()
    }

    #[test]
    fn round_robin_is_smooth_and_weighted() {
        let t = targets(&[5, 1, 1]);
        let b = Balancer::new(Balance::RoundRobin, &t);
        let picks: Vec<usize> = (0..7).filter_map(|_| b.pick(&t, 0, None)).collect();
        assert_eq!(picks.iter().filter(|p| **p == 0).count(), 5);
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn unavailable_targets_are_skipped() {
        let t = targets(&[1, 1, 1]);
        t[1].healthy.store(false, Ordering::Relaxed);
        t[2].drained.store(true, Ordering::Relaxed);
        for kind in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::LeastRequest,
            Balance::ConsistentHash,
        ] {
            let b = Balancer::new(kind, &t);
            for r in 0..50u64 {
                assert_eq!(
                    b.pick(&t, r.wrapping_mul(0x9e37_79b9), Some(r)),
                    Some(0),
                    "{kind:?}"
                );
            }
        }
        t[0].healthy.store(false, Ordering::Relaxed);
        assert_eq!(
            Balancer::new(Balance::RoundRobin, &t).pick(&t, 0, None),
            None
        );
    }

    #[test]
    fn a_lone_target_is_picked_while_available() {
        let kinds = [
            Balance::RoundRobin,
            Balance::Random,
            Balance::LeastRequest,
            Balance::ConsistentHash,
        ];
        let t = targets(&[3]);
        for kind in kinds {
            assert_eq!(Balancer::new(kind, &t).pick(&t, 7, Some(7)), Some(0));
        }
        t[0].drained.store(true, Ordering::Relaxed);
        for kind in kinds {
            assert_eq!(Balancer::new(kind, &t).pick(&t, 7, Some(7)), None);
        }
        assert_eq!(
            Balancer::new(Balance::RoundRobin, &[]).pick(&[], 0, None),
            None
        );
    }

    #[test]
    fn random_follows_weights() {
        let t = targets(&[3, 1]);
        let b = Balancer::new(Balance::Random, &t);
        let first = (0..4000u64)
            .filter(|r| b.pick(&t, hash_bytes(&r.to_le_bytes()), None) == Some(0))
            .count();
        assert!((2700..3300).contains(&first), "{first}");
    }

    #[test]
    fn least_request_prefers_idle() {
        let t = targets(&[1, 1]);
        t[0].in_flight.store(10, Ordering::Relaxed);
        let b = Balancer::new(Balance::LeastRequest, &t);
        let idle = (0..200u64)
            .filter(|r| b.pick(&t, hash_bytes(&r.to_le_bytes()), None) == Some(1))
            .count();
        // Two random choices hit the loaded target together a quarter of the time.
        assert!(idle > 120, "{idle}");
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_little() {
        let t = targets(&[1, 1, 1, 1]);
        let b = Balancer::new(Balance::ConsistentHash, &t);
        let keys: Vec<u64> = (0..1000u64).map(|k| hash_bytes(&k.to_le_bytes())).collect();
        let before: Vec<_> = keys.iter().map(|k| b.pick(&t, 0, Some(*k))).collect();
        let again: Vec<_> = keys.iter().map(|k| b.pick(&t, 99, Some(*k))).collect();
        assert_eq!(before, again);
        t[3].healthy.store(false, Ordering::Relaxed);
        let after: Vec<_> = keys.iter().map(|k| b.pick(&t, 0, Some(*k))).collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let on_removed = before.iter().filter(|p| **p == Some(3)).count();
        assert_eq!(moved, on_removed, "only keys of the removed target move");
    }
}
