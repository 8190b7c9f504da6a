//! `mamori alerts` (issue #3): list the alerts raised by the detectors.

use crate::global::Global;

/// Arguments of `mamori alerts`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// JSON array output (fields: time, time_ms, model, client, detector, score, queries,
    /// action).
    #[arg(long)]
    pub json: bool,
    /// Only this client.
    #[arg(long)]
    pub client: Option<String>,
    /// Gateway configuration naming the audit store (default: `mamori.toml` in the home
    /// directory, if present).
    #[arg(long, env = "MAMORI_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Runs `mamori alerts`.
pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let alerts = match super::audit::open_configured_store(args.config.as_deref(), &g.home())? {
        Some(store) => store.alerts()?,
        None => Vec::new(),
    };
    let alerts: Vec<_> = alerts
        .into_iter()
        .filter(|a| args.client.as_ref().is_none_or(|c| *c == a.client))
        .collect();
    if args.json {
        let v: Vec<serde_json::Value> = alerts
            .iter()
            .map(|a| {
                serde_json::json!({
                    "time": rfc3339(a.time_ms),
                    "time_ms": a.time_ms,
                    "model": a.model,
                    "client": a.client,
                    "detector": a.detector,
                    "score": a.score,
                    "queries": a.queries,
                    "action": a.action,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if alerts.is_empty() {
        println!("no alerts");
        return Ok(());
    }
    println!(
        "{:<25} {:<14} {:<16} {:<12} {:>8} {:>9} action",
        "time", "model", "client", "detector", "score", "queries"
    );
    for a in alerts {
        println!(
            "{:<25} {:<14} {:<16} {:<12} {:>8.3} {:>9} {}",
            rfc3339(a.time_ms),
            a.model,
            a.client,
            a.detector,
            a.score,
            a.queries,
            a.action
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_epoch_ms() {
        assert_eq!(
            super::rfc3339(1_700_000_000_500),
            "2023-11-14T22:13:20.500Z"
        );
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
