//! Token buckets and daily quotas in Redis, shared by every gateway replica: behind a load
//! balancer, `N` replicas with their own [`crate::ratelimit::RateLimiter`] would let a key
//! through at `N` times its tier's rate and quota. Here every check is one Lua script run
//! atomically by Redis (refill, quota, burst, take), on Redis's own clock (`TIME`), so the
//! replicas' clocks need not agree; an escalation's throttle set by one replica applies on all.
//!
//! Each key's bucket is the hash `<prefix><key id>` (`tokens`, `last`, `day`, `used`,
//! `throttle`), expiring two days after its last use. The semantics are exactly the local
//! limiter's (same refill, same burst cap, same UTC-day quota, same throttle factor) —
//! test `redis_and_local_limiters_decide_alike` runs both on the same sequence.
//!
//! **When Redis fails** (down, network, timeout of `limits.redis_timeout_ms`), the gateway does
//! not stop answering: the check falls back to this replica's local buckets (each replica then
//! enforces the tier's limits on its own share of the traffic), logs the error (at most once
//! every 10 s) and counts it in `mamori_limit_store_errors_total`. For one second after a
//! failure the checks go straight to the local buckets (also counted), so an outage costs
//! requests no waiting; then Redis is tried again.

use crate::error::GatewayError;
use crate::ratelimit::{Limiter, Limits, RateLimiter};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The check, run atomically by Redis. `KEYS[1]`: the bucket. `ARGV`: rate per second, burst,
/// daily quota, cost, time to live (s). Returns `{0}` (taken) or `{code, detail…}`: 1 quota
/// exhausted (used today, retry s), 2 batch above the burst (burst, retry s), 3 rate exceeded
/// (rate, burst, retry s). Mirrors `RateLimiter::check` step by step.
const CHECK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local quota = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local h = redis.call('HMGET', KEYS[1], 'tokens', 'last', 'day', 'used', 'throttle')
local factor = tonumber(h[5]) or 1.0
local r = rate * factor
local b = math.max(burst * factor, 1.0)
local tokens = tonumber(h[1]) or burst
local last = tonumber(h[2]) or now
local day = math.floor(now / 86400000)
local used = tonumber(h[4]) or 0
if tonumber(h[3]) ~= day then used = 0 end
tokens = math.min(tokens + math.max(now - last, 0) / 1000.0 * r, b)
last = math.max(now, last)
local function save()
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(last),
             'day', tostring(day), 'used', tostring(used))
  redis.call('EXPIRE', KEYS[1], ttl)
end
if used + cost > quota then
  save()
  local retry = math.ceil(((day + 1) * 86400000 - now) / 1000)
  return {1, tostring(used), tostring(math.max(retry, 1))}
end
if cost > b then
  save()
  return {2, tostring(math.floor(b)), tostring(math.max(math.ceil(cost / r), 1))}
end
if tokens < cost then
  save()
  return {3, tostring(r), tostring(math.floor(b)), tostring(math.max(math.ceil((cost - tokens) / r), 1))}
end
tokens = tokens - cost
used = used + cost
save()
return {0}
"#;

/// Buckets live two days after their last use (the quota's day plus slack).
const TTL_S: u64 = 2 * 86_400;
/// Errors are logged at most this often.
const LOG_EVERY_MS: u64 = 10_000;
/// After a failure, Redis is left alone this long.
const COOL_DOWN_MS: u64 = 1_000;
/// A throttle factor this replica wrote is not written again for this long: the escalation
/// policy re-decides "throttle" on every request of a throttled client, and rewriting the same
/// factor each time would cost every such request a round trip. The refresh keeps the bucket's
/// TTL alive and restores the factor within this time if Redis lost it (a restart without
/// persistence).
const THROTTLE_REFRESH_MS: u64 = 60_000;
/// At most this many keys' last written throttles are remembered (then forgotten at once:
/// the next writes go to Redis again).
const THROTTLE_MEMORY: usize = 100_000;

/// Gives every pooled connection read and write timeouts, so a stalled Redis delays a request
/// by at most the timeout before the local fallback answers.
#[derive(Debug)]
struct Timeouts(Duration);

impl r2d2::CustomizeConnection<redis::Connection, redis::RedisError> for Timeouts {
    fn on_acquire(&self, c: &mut redis::Connection) -> Result<(), redis::RedisError> {
        c.set_read_timeout(Some(self.0))?;
        c.set_write_timeout(Some(self.0))
    }
}

/// The Redis limiter (see the module documentation).
pub struct RedisLimiter {
    pool: r2d2::Pool<redis::Client>,
    script: redis::Script,
    prefix: String,
    fallback: RateLimiter,
    errors: prometheus_client::metrics::counter::Counter,
    last_log_ms: AtomicU64,
    /// Until when (ms since the epoch) checks skip Redis after a failure.
    down_until_ms: AtomicU64,
    url: String,
    /// Per key: the throttle factor last written to Redis and when ([`THROTTLE_REFRESH_MS`]).
    written: std::sync::Mutex<std::collections::HashMap<String, (Option<u64>, u64)>>,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("url", &crate::config::redact_password(&self.url))
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RedisLimiter {
    /// Connects to `url` (`redis://[:password@]host:port[/db]`, `rediss://` for TLS,
    /// `redis+unix:///path`), with `timeout` for connecting and for each command, and checks
    /// that the server answers (`PING`). Buckets are named `<prefix><key id>`; failed checks
    /// are counted in `errors` (the gateway's `mamori_limit_store_errors_total`,
    /// [`crate::metrics::Metrics::limit_store_errors`]). Errors name the server with its
    /// password hidden.
    pub fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
        errors: prometheus_client::metrics::counter::Counter,
    ) -> Result<Self, GatewayError> {
        let shown = crate::config::redact_password(url);
        let client = redis::Client::open(url)
            .map_err(|e| GatewayError::Config(format!("limits.redis_url {shown}: {e}")))?;
        let pool = r2d2::Pool::builder()
            .max_size(16)
            .min_idle(Some(1))
            .connection_timeout(timeout)
            // A broken connection shows itself by failing its command (and is then dropped);
            // a PING before every check would double the round trips.
            .test_on_check_out(false)
            .connection_customizer(Box::new(Timeouts(timeout)))
            .build(client)
            .map_err(|e| GatewayError::Storage(format!("Redis {shown}: connecting: {e}")))?;
        let me = Self {
            pool,
            script: redis::Script::new(CHECK),
            prefix: prefix.to_string(),
            fallback: RateLimiter::new(),
            errors,
            last_log_ms: AtomicU64::new(0),
            down_until_ms: AtomicU64::new(0),
            url: url.to_string(),
            written: std::sync::Mutex::new(std::collections::HashMap::new()),
        };
        let mut c = me.conn()?;
        let pong: String = redis::cmd("PING")
            .query(&mut *c)
            .map_err(|e| me.err("PING", e))?;
        if pong != "PONG" {
            return Err(GatewayError::Storage(format!(
                "Redis {shown}: PING answered {pong:?}"
            )));
        }
        Ok(me)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> GatewayError {
        GatewayError::Storage(format!(
            "Redis {}: {what}: {e}",
            crate::config::redact_password(&self.url)
        ))
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<redis::Client>, GatewayError> {
        self.pool.get().map_err(|e| self.err("connecting", e))
    }

    /// Whether Redis failed less than [`COOL_DOWN_MS`] ago (then it is not asked; the skipped
    /// check is counted).
    fn cooling_down(&self) -> bool {
        let down = now_ms() < self.down_until_ms.load(Ordering::Relaxed);
        if down {
            self.errors.inc();
        }
        down
    }

    fn bucket(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs the check in Redis: `Ok(Ok(()))` taken, `Ok(Err(refusal))`, `Err` Redis failed.
    fn check_redis(
        &self,
        key: &str,
        limits: Limits,
        cost: u64,
    ) -> Result<Result<(), GatewayError>, GatewayError> {
        let mut c = self.conn()?;
        let reply: Vec<String> = self
            .script
            .key(self.bucket(key))
            .arg(limits.rate_per_s)
            .arg(limits.burst)
            .arg(limits.daily_quota)
            .arg(cost)
            .arg(TTL_S)
            .invoke(&mut *c)
            .map_err(|e| self.err("rate limit script", e))?;
        let num = |i: usize| -> Result<f64, GatewayError> {
            reply
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| self.err("rate limit script", format!("bad reply {reply:?}")))
        };
        let code = num(0)? as u64;
        Ok(match code {
            0 => Ok(()),
            1 => Err(GatewayError::RateLimited {
                message: format!(
                    "daily quota of {} queries exhausted ({} used today, {cost} asked)",
                    limits.daily_quota,
                    num(1)? as u64
                ),
                retry_after_s: num(2)? as u64,
            }),
            2 => Err(GatewayError::RateLimited {
                message: format!(
                    "a batch of {cost} queries exceeds this key's burst of {}; send smaller batches",
                    num(1)? as u64
                ),
                retry_after_s: num(2)? as u64,
            }),
            3 => Err(GatewayError::RateLimited {
                message: format!(
                    "rate limit of {:.3} queries/s (burst {}) exceeded",
                    num(1)?,
                    num(2)? as u64
                ),
                retry_after_s: num(3)? as u64,
            }),
            other => {
                return Err(self.err("rate limit script", format!("unknown answer {other}")))
            }
        })
    }

    /// Counts a failure, starts the cool-down and logs it, at most once every 10 s.
    fn failed(&self, e: &GatewayError) {
        self.errors.inc();
        let now = now_ms();
        self.down_until_ms
            .fetch_max(now + COOL_DOWN_MS, Ordering::Relaxed);
        let last = self.last_log_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= LOG_EVERY_MS
            && self
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::error!("{e}; rate limits fall back to this replica's own buckets");
        }
    }
}

impl Limiter for RedisLimiter {
    fn check(&self, key: &str, limits: Limits, cost: u64, now_ms: u64) -> Result<(), GatewayError> {
        if self.cooling_down() {
            return self.fallback.check(key, limits, cost, now_ms);
        }
        match self.check_redis(key, limits, cost) {
            Ok(decision) => decision,
            Err(e) => {
                self.failed(&e);
                self.fallback.check(key, limits, cost, now_ms)
            }
        }
    }

    fn set_throttle(&self, key: &str, factor: Option<f64>) {
        self.fallback.set_throttle(key, factor);
        if self.cooling_down() {
            return;
        }
        // The same factor written by this replica less than THROTTLE_REFRESH_MS ago: nothing
        // to do (see THROTTLE_REFRESH_MS).
        let now = now_ms();
        let bits = factor.map(f64::to_bits);
        {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            match written.get(key) {
                Some(&(b, at)) if b == bits && now.saturating_sub(at) < THROTTLE_REFRESH_MS => {
                    return
                }
                _ => {
                    if written.len() >= THROTTLE_MEMORY {
                        written.clear();
                    }
                    written.insert(key.to_string(), (bits, now));
                }
            }
        }
        let bucket = self.bucket(key);
        let result = self.conn().and_then(|mut c| {
            let r: redis::RedisResult<()> = match factor {
                Some(f) => redis::pipe()
                    .cmd("HSET")
                    .arg(&bucket)
                    .arg("throttle")
                    .arg(f)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&bucket)
                    .arg(TTL_S)
                    .ignore()
                    .query(&mut *c),
                None => redis::cmd("HDEL")
                    .arg(&bucket)
                    .arg("throttle")
                    .query(&mut *c),
            };
            r.map_err(|e| self.err("setting a throttle", e))
        });
        if let Err(e) = result {
            // Not written: the next call tries again.
            self.written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(key);
            self.failed(&e);
        }
    }

    fn is_throttled(&self, key: &str) -> bool {
        if self.cooling_down() {
            return self.fallback.is_throttled(key);
        }
        let bucket = self.bucket(key);
        let result = self.conn().and_then(|mut c| {
            redis::cmd("HEXISTS")
                .arg(&bucket)
                .arg("throttle")
                .query::<bool>(&mut *c)
                .map_err(|e| self.err("reading a throttle", e))
        });
        match result {
            Ok(t) => t,
            Err(e) => {
                self.failed(&e);
                self.fallback.is_throttled(key)
            }
        }
    }
}
