//! Escalation policy: detector verdicts → [`Action`].
//!
//! The detect stage asks the model's policy for a decision after every answered request; the
//! chain then acts on it (see [`crate::chain`]). The escalation policies with memory (alert,
//! then degrade, then throttle, then block) live in `mamori-detect`; this module holds the trait
//! and the default.

use mamori_core::{Action, Verdict};

/// One detector's verdict about one subject (a client, or `group:<name>` for a client group).
#[derive(Clone, Debug, PartialEq)]
pub struct NamedVerdict {
    /// Detector name ([`mamori_core::DetectorInfo::name`]).
    pub detector: String,
    /// The subject the state belongs to.
    pub subject: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Queries the detector has seen from the subject.
    pub queries: u64,
}

/// Maps the verdicts about a client to an action.
pub trait Policy: Send {
    /// Decides what to do with `client` given the current `verdicts` (time `now_ms`).
    fn decide(&mut self, client: &str, verdicts: &[NamedVerdict], now_ms: u64) -> Action;
    /// The policy's memory (per-client risk and the like) for the gateway to save with the
    /// detector states; `None` for a policy without memory.
    fn snapshot(&self) -> Option<Vec<u8>> {
        None
    }
    /// Restores what [`Policy::snapshot`] saved (the current configuration is kept).
    fn restore(&mut self, _snapshot: &[u8]) -> Result<(), String> {
        Ok(())
    }
    /// The client's current risk, for a policy that keeps one (the admin API shows it).
    fn risk(&self, _client: &str, _now_ms: u64) -> Option<f64> {
        None
    }
}

/// The default policy: any alarm → [`Action::Alert`], otherwise [`Action::Allow`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AlertOnAlarm;

impl Policy for AlertOnAlarm {
    fn decide(&mut self, _client: &str, verdicts: &[NamedVerdict], _now_ms: u64) -> Action {
        if verdicts.iter().any(|v| v.verdict.alarm) {
            Action::Alert
        } else {
            Action::Allow
        }
    }
}

/// A policy that maps any alarm to a fixed action (tests, demos, strict deployments).
#[derive(Clone, Copy, Debug)]
pub struct OnAlarm(pub Action);

impl Policy for OnAlarm {
    fn decide(&mut self, _client: &str, verdicts: &[NamedVerdict], _now_ms: u64) -> Action {
        if verdicts.iter().any(|v| v.verdict.alarm) {
            self.0
        } else {
            Action::Allow
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_alerts_only_on_alarm() {
        let mut p = AlertOnAlarm;
        let mut v = vec![NamedVerdict {
            detector: "d".into(),
            subject: "c".into(),
            verdict: Verdict {
                score: 0.5,
                alarm: false,
            },
            queries: 1,
        }];
        assert_eq!(p.decide("c", &v, 0), Action::Allow);
        v[0].verdict.alarm = true;
        assert_eq!(p.decide("c", &v, 0), Action::Alert);
        assert_eq!(OnAlarm(Action::Block).decide("c", &v, 0), Action::Block);
    }
}
