//! Per-segment policies that need state (DESIGN §2 step 7): rate limits
//! (token buckets keyed per route and per client key, so one tenant can
//! never spend another's budget) and the tenant / listener concurrency
//! budgets, with fair shedding on a crowded listener.

use bulkhead_config::{RateKey, RateLimit};
use bulkhead_core::Snapshot;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One route's rate limit: a token bucket per key.
pub struct RouteLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    key: RateKey,
}

impl RouteLimiter {
    fn new(rl: &RateLimit) -> Option<Self> {
        let per_second = NonZeroU32::new(rl.per_second)?;
        let burst = NonZeroU32::new(rl.burst.max(1))?;
        Some(RouteLimiter {
            limiter: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            ),
            key: rl.key.clone(),
        })
    }

    /// Take a token for this request, or say how long to wait.
    pub fn check(
        &self,
        client: IpAddr,
        identity: Option<&str>,
        headers: &http::HeaderMap,
    ) -> Result<(), Duration> {
        let key = match &self.key {
            RateKey::ClientIp => client.to_string(),
            // Callers without an identity share one bucket per address.
            RateKey::Identity => {
                identity.map_or_else(|| format!("ip:{client}"), |i| format!("id:{i}"))
            }
            RateKey::Header(name) => match headers.get(name.as_str()).and_then(|v| v.to_str().ok())
            {
                Some(v) => format!("h:{v}"),
                None => format!("ip:{client}"),
            },
        };
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forget keys whose buckets are full again (bounds memory).
    pub fn shrink(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// A concurrency budget (`max_requests` of a tenant or listener).
#[derive(Clone, Debug)]
pub struct Budget {
    /// The limit.
    pub max: usize,
    /// Requests in flight; shared across reloads while the limit's owner exists.
    pub in_flight: Arc<AtomicUsize>,
}

/// Holds a place in one or more budgets; released on drop.
#[derive(Default)]
pub struct BudgetSlots(Vec<Arc<AtomicUsize>>);

impl Drop for BudgetSlots {
    fn drop(&mut self) {
        for c in &self.0 {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl BudgetSlots {
    fn take(&mut self, counter: &Arc<AtomicUsize>) -> usize {
        self.0.push(counter.clone());
        counter.fetch_add(1, Ordering::Relaxed)
    }
}

/// Per-generation policy state.
#[derive(Default)]
pub struct Policies {
    /// Rate limiters by (listener, tenant, route).
    limiters: HashMap<(u32, u32, u32), Arc<RouteLimiter>>,
    tenant_budgets: Vec<Option<Budget>>,
    listener_budgets: Vec<Option<Budget>>,
    /// In flight per (listener, tenant) on listeners with a budget, for fair shedding.
    shares: HashMap<(u32, u32), Arc<AtomicUsize>>,
}

impl Policies {
    /// Build the state of `snapshot`, keeping the counters of `previous`
    /// for tenants and listeners that still exist (by name).
    pub fn new(snapshot: &Snapshot, previous: Option<(&Snapshot, &Policies)>) -> Policies {
        let mut limiters = HashMap::new();
        for (lid, _) in snapshot.listeners.iter().enumerate() {
            for (tid, t) in snapshot.tenants.iter().enumerate() {
                if !t.served_on.contains(lid) {
                    continue;
                }
                for rid in 0..t.routes.len() {
                    let policy = snapshot.policy(lid as u32, tid as u32, rid as u32, None);
                    if let Some(limiter) = policy.rate_limit().and_then(RouteLimiter::new) {
                        limiters.insert((lid as u32, tid as u32, rid as u32), Arc::new(limiter));
                    }
                }
            }
        }
        let carried = |kind: &str, name: &str| -> Arc<AtomicUsize> {
            previous
                .and_then(|(ps, pp)| match kind {
                    "tenant" => ps
                        .tenant_id(name)
                        .and_then(|i| pp.tenant_budgets.get(i as usize)?.as_ref()),
                    _ => ps
                        .listener_id(name)
                        .and_then(|i| pp.listener_budgets.get(i as usize)?.as_ref()),
                })
                .map_or_else(Arc::default, |b| b.in_flight.clone())
        };
        let tenant_budgets = snapshot
            .config
            .tenants
            .iter()
            .map(|t| {
                t.max_requests.map(|max| Budget {
                    max: max as usize,
                    in_flight: carried("tenant", &t.name.value),
                })
            })
            .collect();
        let listener_budgets: Vec<Option<Budget>> = snapshot
            .config
            .listeners
            .iter()
            .map(|l| {
                l.limits.max_requests.map(|max| Budget {
                    max: max as usize,
                    in_flight: carried("listener", &l.name.value),
                })
            })
            .collect();
        let mut shares = HashMap::new();
        for (lid, b) in listener_budgets.iter().enumerate() {
            if b.is_some() {
                for (tid, t) in snapshot.tenants.iter().enumerate() {
                    if t.served_on.contains(lid) {
                        shares.insert((lid as u32, tid as u32), Arc::default());
                    }
                }
            }
        }
        Policies {
            limiters,
            tenant_budgets,
            listener_budgets,
            shares,
        }
    }

    /// The rate limiter of a route on a listener, if it has one.
    pub fn limiter(&self, listener: u32, tenant: u32, route: u32) -> Option<&Arc<RouteLimiter>> {
        if self.limiters.is_empty() {
            return None;
        }
        self.limiters.get(&(listener, tenant, route))
    }

    /// Every rate limiter (for periodic shrinking).
    pub fn limiters(&self) -> impl Iterator<Item = &Arc<RouteLimiter>> {
        self.limiters.values()
    }

    /// Enter the tenant's and listener's budgets. A crowded listener (more
    /// than half its budget in use) sheds first the tenants using more than
    /// an equal share of it, so one flooding tenant cannot take the others'
    /// place. `Err` names the budget that shed the request.
    pub fn enter(&self, listener: u32, tenant: u32) -> Result<BudgetSlots, &'static str> {
        let mut slots = BudgetSlots::default();
        if let Some(Some(b)) = self.tenant_budgets.get(tenant as usize) {
            if slots.take(&b.in_flight) >= b.max {
                return Err("tenant max_requests");
            }
        }
        if let Some(Some(b)) = self.listener_budgets.get(listener as usize) {
            let used = slots.take(&b.in_flight);
            if used >= b.max {
                return Err("listener max_requests");
            }
            if let Some(mine) = self.shares.get(&(listener, tenant)) {
                let held = slots.take(mine);
                let tenants = self
                    .shares
                    .keys()
                    .filter(|(l, _)| *l == listener)
                    .count()
                    .max(1);
                let fair = b.max.div_ceil(tenants);
                if used * 2 >= b.max && held >= fair {
                    return Err("tenant over its share of a crowded listener");
                }
            }
        }
        Ok(slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_per_key() {
        let l = RouteLimiter::new(&RateLimit {
            per_second: 1,
            burst: 2,
            key: RateKey::ClientIp,
        })
        .expect("limiter");
        let h = http::HeaderMap::new();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert!(l.check(a, None, &h).is_ok());
        assert!(l.check(a, None, &h).is_ok());
        let wait = l
            .check(a, None, &h)
            .expect_err("third within a second is limited");
        assert!(wait <= Duration::from_secs(1));
        assert!(
            l.check(b, None, &h).is_ok(),
            "another key has its own bucket"
        );
    }

    #[test]
    fn budgets_release_on_drop() {
        let counter = Arc::new(AtomicUsize::new(0));
        {
            let mut s = BudgetSlots::default();
            s.take(&counter);
            assert_eq!(counter.load(Ordering::Relaxed), 1);
        }
        assert_eq!(counter.load(Ordering::Relaxed), 0);
    }
}
