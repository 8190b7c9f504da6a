//! Per-key rate limiting: a token bucket with burst, plus a daily quota (UTC days).
//!
//! One query is one sample: a batch of 32 costs 32 tokens. A throttled key (escalation
//! decision [`mamori_core::Action::Throttle`]) keeps its bucket but refills at a fraction of its
//! tier's rate and holds a proportionally smaller burst.

use crate::error::GatewayError;
use std::collections::HashMap;
use std::sync::Mutex;

/// The limits of one key (from its tier).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Tokens per second.
    pub rate_per_s: f64,
    /// Bucket capacity.
    pub burst: u64,
    /// Queries per UTC day.
    pub daily_quota: u64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
    day: u64,
    used_today: u64,
    throttle: Option<f64>,
}

/// Where the token buckets live: in this process ([`RateLimiter`], the default) or in Redis,
/// shared by every replica ([`crate::ratelimit_redis::RedisLimiter`]). The chain's limit stage
/// and the escalation policy's throttle use only this.
pub trait Limiter: Send + Sync {
    /// Takes `cost` queries from `key`'s bucket at time `now_ms`, or explains why not
    /// ([`GatewayError::RateLimited`]).
    fn check(&self, key: &str, limits: Limits, cost: u64, now_ms: u64) -> Result<(), GatewayError>;
    /// Sets (or clears, with `None`) a throttle factor for `key`: its bucket refills at that
    /// fraction of the tier's rate and holds that fraction of its burst.
    fn set_throttle(&self, key: &str, factor: Option<f64>);
    /// Whether `key` is currently throttled.
    fn is_throttled(&self, key: &str) -> bool;
    /// What must survive a restart (each key's queries used today), for a limiter that keeps
    /// it in the process; `None` when the store keeps it itself (Redis).
    fn snapshot(&self) -> Option<Vec<u8>> {
        None
    }
    /// Restores what [`Limiter::snapshot`] saved.
    fn restore(&self, _snapshot: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

impl Limiter for RateLimiter {
    fn check(&self, key: &str, limits: Limits, cost: u64, now_ms: u64) -> Result<(), GatewayError> {
        RateLimiter::check(self, key, limits, cost, now_ms)
    }
    fn set_throttle(&self, key: &str, factor: Option<f64>) {
        RateLimiter::set_throttle(self, key, factor)
    }
    fn is_throttled(&self, key: &str) -> bool {
        RateLimiter::is_throttled(self, key)
    }
    fn snapshot(&self) -> Option<Vec<u8>> {
        let map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let used: Vec<(&str, u64, u64)> = map
            .iter()
            .filter(|(_, b)| b.used_today > 0)
            .map(|(k, b)| (k.as_str(), b.day, b.used_today))
            .collect();
        serde_json::to_vec(&used).ok()
    }
    fn restore(&self, snapshot: &[u8]) -> Result<(), String> {
        let used: Vec<(String, u64, u64)> =
            serde_json::from_slice(snapshot).map_err(|e| format!("invalid quota state: {e}"))?;
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        for (key, day, used_today) in used {
            // A restored bucket starts empty of tokens' history (full burst) but keeps the
            // day's count: the daily quota does not reset with the process.
            map.insert(
                key,
                Bucket {
                    tokens: f64::INFINITY,
                    last_ms: day * DAY_MS,
                    day,
                    used_today,
                    throttle: None,
                },
            );
        }
        Ok(())
    }
}

/// Token buckets for every key, in this process.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

const DAY_MS: u64 = 86_400_000;

impl RateLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `cost` queries from `key`'s bucket at time `now_ms`, or explains why not.
    pub fn check(
        &self,
        key: &str,
        limits: Limits,
        cost: u64,
        now_ms: u64,
    ) -> Result<(), GatewayError> {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        // Look up before inserting: a known key costs no allocation.
        if !map.contains_key(key) {
            map.insert(
                key.to_string(),
                Bucket {
                    tokens: limits.burst as f64,
                    last_ms: now_ms,
                    day: now_ms / DAY_MS,
                    used_today: 0,
                    throttle: None,
                },
            );
        }
        let Some(b) = map.get_mut(key) else {
            return Err(GatewayError::Config("rate limiter lost a bucket".into()));
        };
        let factor = b.throttle.unwrap_or(1.0);
        let rate = limits.rate_per_s * factor;
        let burst = ((limits.burst as f64) * factor).max(1.0);
        let elapsed_s = now_ms.saturating_sub(b.last_ms) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed_s * rate).min(burst);
        b.last_ms = now_ms.max(b.last_ms);
        let day = now_ms / DAY_MS;
        if day != b.day {
            b.day = day;
            b.used_today = 0;
        }
        if b.used_today + cost > limits.daily_quota {
            let retry = ((day + 1) * DAY_MS - now_ms).div_ceil(1000);
            return Err(GatewayError::RateLimited {
                message: format!(
                    "daily quota of {} queries exhausted ({} used today, {cost} asked)",
                    limits.daily_quota, b.used_today
                ),
                retry_after_s: retry.max(1),
            });
        }
        if cost as f64 > burst {
            return Err(GatewayError::RateLimited {
                message: format!(
                    "a batch of {cost} queries exceeds this key's burst of {}; send smaller batches",
                    burst as u64
                ),
                retry_after_s: (cost as f64 / rate).ceil().max(1.0) as u64,
            });
        }
        if b.tokens < cost as f64 {
            let wait = (cost as f64 - b.tokens) / rate;
            return Err(GatewayError::RateLimited {
                message: format!(
                    "rate limit of {rate:.3} queries/s (burst {}) exceeded",
                    burst as u64
                ),
                retry_after_s: wait.ceil().max(1.0) as u64,
            });
        }
        b.tokens -= cost as f64;
        b.used_today += cost;
        Ok(())
    }

    /// Sets (or clears, with `None`) a throttle factor for `key`.
    pub fn set_throttle(&self, key: &str, factor: Option<f64>) {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = map.get_mut(key) {
            // The bucket is capped at the throttled burst on the next check.
            b.throttle = factor;
        }
    }

    /// Whether `key` is currently throttled.
    pub fn is_throttled(&self, key: &str) -> bool {
        let map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).is_some_and(|b| b.throttle.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        rate_per_s: 2.0,
        burst: 4,
        daily_quota: 10,
    };

    #[test]
    fn burst_then_refill() {
        let r = RateLimiter::new();
        for _ in 0..4 {
            r.check("k", L, 1, 0).unwrap();
        }
        match r.check("k", L, 1, 0) {
            Err(GatewayError::RateLimited { retry_after_s, .. }) => assert_eq!(retry_after_s, 1),
            other => panic!("{other:?}"),
        }
        // 0.5 s later one token is back.
        r.check("k", L, 1, 500).unwrap();
        assert!(r.check("k", L, 1, 500).is_err());
        // Another key is independent.
        r.check("other", L, 4, 500).unwrap();
    }

    #[test]
    fn daily_quota_and_oversized_batch() {
        let r = RateLimiter::new();
        let mut t = 0;
        for _ in 0..10 {
            r.check("k", L, 1, t).unwrap();
            t += 1000;
        }
        let e = r.check("k", L, 1, t).unwrap_err();
        assert!(e.to_string().contains("daily quota"), "{e}");
        // Next UTC day the quota resets.
        r.check("k", L, 1, DAY_MS + 1).unwrap();
        assert!(r
            .check("k", L, 5, DAY_MS + 10_000)
            .unwrap_err()
            .to_string()
            .contains("exceeds"));
    }

    #[test]
    fn throttle_shrinks_the_bucket() {
        let r = RateLimiter::new();
        r.check("k", L, 1, 0).unwrap();
        r.set_throttle("k", Some(0.25));
        assert!(r.is_throttled("k"));
        // Burst becomes 1, rate 0.5/s.
        assert!(r.check("k", L, 2, 10_000).is_err());
        r.check("k", L, 1, 10_000).unwrap();
        assert!(r.check("k", L, 1, 11_000).is_err());
        r.check("k", L, 1, 12_100).unwrap();
    }
}
