//! Risk and escalation policy: detectors' verdicts → per-client risk → [`Action`].
//!
//! Risk model: every query on which detector `d` alarms adds `weight[d]` (default 1) to the
//! client's risk; risk decays exponentially with half-life `half_life_ms`. The action is the
//! highest level whose threshold the risk reaches (`degrade` < `throttle` < `block`), and at
//! least [`Action::Alert`] while any detector with weight ≥ `alert_min_weight` alarms now. So a
//! persistent alarm escalates Alert → Degrade → Throttle → Block as alarming queries accumulate,
//! and a client that stops decays back down.
//!
//! Suspicion and corroboration: detectors listed in `suspicion` (default `ood`, `hoda`) see
//! only the *distribution* of a client's queries. A legitimate user whose data differs from the
//! training set (another dataset's natural images, a new camera) looks exactly like a
//! Knockoff-style stream of natural out-of-distribution images, so distribution evidence alone
//! cannot separate them. Their alarms are therefore suspicion: reported in the reasons, but they
//! add risk and raise an Alert only while a *behaviour* detector (any detector not in
//! `suspicion`: query rate/volume above the benign calibrated bound, PRADA, k-NN, Blacklight)
//! alarms on the same query — as a security team escalates an anomaly only when it is
//! corroborated by extraction behaviour. Group verdicts (`group:<d>`) follow the same rule,
//! corroborated by any behaviour alarm of the client or the group.
//!
//! Foreign queries (optional, off by default): detectors listed in `in_distribution` have a
//! benign reference of the model's *own* distribution; while a `foreign` detector (default
//! `ood`) of the same client (or group) alarms on the query, their alarms are suspicion too.
//! The default keeps the list empty: PRADA, the detector this was written for, now observes
//! only the queries the calibrated OOD test calls in-distribution
//! (`PradaConfig::only_in_distribution`), which removes its false alarms on benign foreign
//! clients (Fashion-MNIST images sent to an MNIST model) without this rule's price — demoting
//! PRADA whenever the client's OOD rate is high lets a JBDA stream diluted with foreign
//! natural images through, while the filter catches it (`docs/bench/detect.md`, eighth
//! session). `in_distribution = ["prada"]` adds the rule on top, for deployments that prefer
//! fewer alarms on foreign traffic to catching diluted streams. Admin overrides (`allow` / `block` lists, or
//! [`Policy::set_override`]) win over everything. Every [`Decision`] carries its reasons.

use mamori_core::{Action, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Policy configuration (TOML/JSON-friendly).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Risk added per alarming query, per detector name (missing = `default_weight`).
    /// Group verdicts are named `group:<detector>`.
    pub weights: BTreeMap<String, f64>,
    /// Weight of detectors not listed.
    pub default_weight: f64,
    /// An alarming detector with at least this weight raises an Alert.
    pub alert_min_weight: f64,
    /// Risk at which answers are degraded.
    pub degrade_at: f64,
    /// Risk at which the client is throttled.
    pub throttle_at: f64,
    /// Risk at which the client is blocked.
    pub block_at: f64,
    /// Risk half-life in milliseconds.
    pub half_life_ms: u64,
    /// Clients always allowed (admin override).
    pub allow: Vec<String>,
    /// Clients always blocked (admin override).
    pub block: Vec<String>,
    /// Distribution-only detectors: their alarms count only when a detector not listed here
    /// alarms on the same query (see the module documentation). Names without the `group:`
    /// prefix; they apply to group verdicts too. Empty = every alarm counts on its own.
    pub suspicion: Vec<String>,
    /// Detectors whose alarm says the client's current queries are out of the model's
    /// distribution (names without the `group:` prefix; a group's verdicts are read within the
    /// group). See `in_distribution`.
    pub foreign: Vec<String>,
    /// Detectors whose benign reference assumes in-distribution queries (e.g. `prada`): while a
    /// `foreign` detector of the same client (or group) alarms on the query, their alarms are
    /// suspicion (see the module documentation). Empty (the default) = never.
    pub in_distribution: Vec<String>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            weights: BTreeMap::from([("rate".to_string(), 2.0)]),
            default_weight: 1.0,
            alert_min_weight: 0.5,
            degrade_at: 5.0,
            throttle_at: 20.0,
            block_at: 50.0,
            half_life_ms: 3_600_000,
            allow: Vec::new(),
            block: Vec::new(),
            suspicion: vec!["ood".to_string(), "hoda".to_string()],
            foreign: vec!["ood".to_string()],
            in_distribution: Vec::new(),
        }
    }
}

/// An admin override for one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Override {
    /// Always allow.
    Allow,
    /// Always block.
    Block,
}

/// Why a decision was taken.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// Detector name (`group:<name>` for group-level verdicts, `override` for admin overrides).
    pub detector: String,
    /// Its score.
    pub score: f64,
    /// Whether it alarms.
    pub alarm: bool,
}

/// The policy's answer for one query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// The client's risk after this query.
    pub risk: f64,
    /// Alarming detectors (and overrides) behind the action.
    pub reasons: Vec<Reason>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ClientRisk {
    risk: f64,
    last_ms: u64,
}

/// The escalation policy with per-client risk.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Policy {
    cfg: PolicyConfig,
    risk: BTreeMap<String, ClientRisk>,
    overrides: BTreeMap<String, Override>,
}

impl Policy {
    /// A policy with `cfg` (its allow/block lists become overrides).
    pub fn new(cfg: PolicyConfig) -> Self {
        let mut overrides = BTreeMap::new();
        for c in &cfg.allow {
            overrides.insert(c.clone(), Override::Allow);
        }
        for c in &cfg.block {
            overrides.insert(c.clone(), Override::Block);
        }
        Self {
            cfg,
            risk: BTreeMap::new(),
            overrides,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// Sets (`Some`) or clears (`None`) an admin override for `client`.
    pub fn set_override(&mut self, client: &str, o: Option<Override>) {
        match o {
            Some(o) => {
                self.overrides.insert(client.to_string(), o);
            }
            None => {
                self.overrides.remove(client);
            }
        }
    }

    /// Clears a client's accumulated risk (admin action).
    pub fn reset(&mut self, client: &str) {
        self.risk.remove(client);
    }

    /// The client's current risk (decayed to `now_ms`).
    pub fn risk(&self, client: &str, now_ms: u64) -> f64 {
        self.risk
            .get(client)
            .map_or(0.0, |r| r.risk * self.decay(r.last_ms, now_ms))
    }

    fn decay(&self, from: u64, to: u64) -> f64 {
        if self.cfg.half_life_ms == 0 {
            return 1.0;
        }
        let dt = to.saturating_sub(from) as f64;
        0.5f64.powf(dt / self.cfg.half_life_ms as f64)
    }

    /// Whether `name` (possibly `group:<d>`) is a distribution-only detector.
    fn is_suspicion(&self, name: &str) -> bool {
        let base = name.strip_prefix("group:").unwrap_or(name);
        self.cfg.suspicion.iter().any(|s| s == base)
    }

    fn weight(&self, name: &str) -> f64 {
        self.cfg
            .weights
            .get(name)
            .copied()
            .unwrap_or(self.cfg.default_weight)
    }

    /// Decides the action for `client` after a query with these verdicts. `group`, when
    /// given, only labels the reasons; group-level verdicts are passed in `verdicts` named
    /// `group:<detector>`.
    pub fn decide<S: AsRef<str>>(
        &mut self,
        client: &str,
        group: Option<&str>,
        verdicts: &[(S, Verdict)],
        now_ms: u64,
    ) -> Decision {
        let mut reasons: Vec<Reason> = verdicts
            .iter()
            .filter(|(_, v)| v.alarm)
            .map(|(n, v)| Reason {
                detector: match group {
                    Some(g) if n.as_ref().starts_with("group:") => format!("{}@{g}", n.as_ref()),
                    _ => n.as_ref().to_string(),
                },
                score: v.score,
                alarm: true,
            })
            .collect();
        // Whether a `foreign` detector of the client (`false`) or of the group (`true`) alarms.
        let foreign_in = |group_level: bool| {
            verdicts.iter().any(|(n, v)| {
                let n = n.as_ref();
                let base = n.strip_prefix("group:");
                v.alarm
                    && base.is_some() == group_level
                    && self.cfg.foreign.iter().any(|f| f == base.unwrap_or(n))
            })
        };
        // Only looked for when the rule is on (off by default): no extra pass per query.
        let rule = !self.cfg.in_distribution.is_empty();
        let (foreign_client, foreign_group) = (rule && foreign_in(false), rule && foreign_in(true));
        let weak = |n: &str| {
            let base = n.strip_prefix("group:");
            let foreign = if base.is_some() {
                foreign_group
            } else {
                foreign_client
            };
            self.is_suspicion(n)
                || (foreign
                    && self
                        .cfg
                        .in_distribution
                        .iter()
                        .any(|d| d == base.unwrap_or(n)))
        };
        let corroborated = verdicts.iter().any(|(n, v)| v.alarm && !weak(n.as_ref()));
        let counts = |n: &str| corroborated || !weak(n);
        let added: f64 = verdicts
            .iter()
            .filter(|(n, v)| v.alarm && counts(n.as_ref()))
            .map(|(n, _)| self.weight(n.as_ref()))
            .sum();
        let alert = verdicts.iter().any(|(n, v)| {
            v.alarm && counts(n.as_ref()) && self.weight(n.as_ref()) >= self.cfg.alert_min_weight
        });
        let decayed = self.risk(client, now_ms);
        let risk = decayed + added;
        if risk > 0.0 {
            let r = ClientRisk {
                risk,
                last_ms: now_ms,
            };
            match self.risk.get_mut(client) {
                Some(slot) => *slot = r,
                None => {
                    self.risk.insert(client.to_string(), r);
                }
            }
        }
        let mut action = if risk >= self.cfg.block_at {
            Action::Block
        } else if risk >= self.cfg.throttle_at {
            Action::Throttle
        } else if risk >= self.cfg.degrade_at {
            Action::Degrade
        } else {
            Action::Allow
        };
        if alert && action < Action::Alert {
            action = Action::Alert;
        }
        if let Some(o) = self.overrides.get(client) {
            action = match o {
                Override::Allow => Action::Allow,
                Override::Block => Action::Block,
            };
            reasons.push(Reason {
                detector: "override".into(),
                score: 0.0,
                alarm: *o == Override::Block,
            });
        }
        Decision {
            action,
            risk,
            reasons,
        }
    }
}

impl Policy {
    /// Takes over the per-client risk of `saved` (a policy restored from a snapshot), keeping
    /// this policy's configuration and overrides: a restart keeps what clients accumulated,
    /// while allow/block lists come from the configuration in force.
    pub fn restore_risk(&mut self, saved: &Policy) {
        self.risk = saved.risk.clone();
    }

    /// This policy's risk and overrides under a new configuration (its allow/block lists are
    /// added to the overrides).
    pub fn with_config(mut self, cfg: PolicyConfig) -> Self {
        for c in &cfg.allow {
            self.overrides.insert(c.clone(), Override::Allow);
        }
        for c in &cfg.block {
            self.overrides.insert(c.clone(), Override::Block);
        }
        self.cfg = cfg;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(alarm: bool) -> Verdict {
        Verdict {
            score: if alarm { 2.0 } else { 0.1 },
            alarm,
        }
    }

    #[test]
    fn escalates_decays_and_obeys_overrides() {
        let mut p = Policy::new(PolicyConfig::default());
        let quiet = [("prada".to_string(), v(false))];
        let loud = [("prada".to_string(), v(true))];
        assert_eq!(p.decide("a", None, &quiet, 0).action, Action::Allow);
        let mut seen = Vec::new();
        for i in 0..60 {
            let d = p.decide("a", None, &loud, i);
            if seen.last() != Some(&d.action) {
                seen.push(d.action);
            }
            assert_eq!(d.reasons[0].detector, "prada");
        }
        assert_eq!(
            seen,
            vec![
                Action::Alert,
                Action::Degrade,
                Action::Throttle,
                Action::Block
            ]
        );
        // Ten half-lives later the risk has decayed below every threshold.
        let later = 60 + 10 * 3_600_000;
        assert!(p.risk("a", later) < 0.1);
        assert_eq!(p.decide("a", None, &quiet, later).action, Action::Allow);
        p.set_override("a", Some(Override::Block));
        let d = p.decide("a", None, &quiet, later);
        assert_eq!(d.action, Action::Block);
        assert_eq!(d.reasons.last().unwrap().detector, "override");
        p.set_override("a", Some(Override::Allow));
        assert_eq!(p.decide("a", None, &loud, later).action, Action::Allow);
        p.set_override("a", None);
        assert_eq!(p.decide("a", None, &loud, later).action, Action::Alert);
    }

    #[test]
    fn weights_and_toml_config() {
        let cfg: PolicyConfig = toml::from_str(
            "degrade_at = 2.0\nallow = [\"ops\"]\nsuspicion = []\n[weights]\nood = 0.25\n",
        )
        .unwrap();
        let mut p = Policy::new(cfg);
        let ood = [("ood".to_string(), v(true))];
        // Below the alert weight: risk grows, no alert yet.
        assert_eq!(p.decide("b", None, &ood, 0).action, Action::Allow);
        for t in 1..8 {
            p.decide("b", None, &ood, t);
        }
        assert_eq!(p.decide("b", None, &ood, 9).action, Action::Degrade);
        assert_eq!(p.decide("ops", None, &ood, 9).action, Action::Allow);
        let bad: Result<PolicyConfig, _> = toml::from_str("degrade = 2.0");
        assert!(bad.is_err());
        // The documented keys (docs/gateway.md's `[detect.policy]`), and their defaults.
        let cfg: PolicyConfig = toml::from_str(
            "suspicion = [\"ood\", \"hoda\"]\nforeign = [\"ood\"]\nin_distribution = []\n",
        )
        .unwrap();
        assert_eq!(cfg, PolicyConfig::default());
        let cfg: PolicyConfig = toml::from_str("in_distribution = [\"prada\"]").unwrap();
        assert_eq!(cfg.in_distribution, ["prada"]);
        assert_eq!(cfg.foreign, ["ood"]);
    }

    #[test]
    fn distribution_alarms_need_corroboration() {
        let mut p = Policy::new(PolicyConfig::default());
        let ood_only = [
            ("ood".to_string(), v(true)),
            ("group:hoda".to_string(), v(true)),
            ("rate".to_string(), v(false)),
        ];
        for t in 0..1000 {
            let d = p.decide("c", Some("org"), &ood_only, t);
            assert_eq!(d.action, Action::Allow, "query {t}");
            assert_eq!(d.risk, 0.0);
            // Still reported, for the audit log.
            assert_eq!(d.reasons.len(), 2);
        }
        // Corroborated by a behaviour detector (rate: weight 2): ood and group:hoda count too.
        let both = [
            ("ood".to_string(), v(true)),
            ("group:hoda".to_string(), v(true)),
            ("rate".to_string(), v(true)),
        ];
        let d = p.decide("c", Some("org"), &both, 1000);
        assert_eq!(d.action, Action::Alert);
        assert!((d.risk - 4.0).abs() < 1e-9, "{}", d.risk);
        // A group-level behaviour alarm corroborates the client's own ood alarm.
        let d = p.decide(
            "d",
            Some("org"),
            &[
                ("ood".to_string(), v(true)),
                ("group:knn".to_string(), v(true)),
            ],
            0,
        );
        assert!((d.risk - 2.0).abs() < 1e-9, "{}", d.risk);
    }

    #[test]
    fn prada_on_foreign_queries_needs_corroboration() {
        let rule = PolicyConfig {
            in_distribution: vec!["prada".into()],
            ..PolicyConfig::default()
        };
        let mut p = Policy::new(rule);
        let named = |xs: &[(&str, bool)]| -> Vec<(String, Verdict)> {
            xs.iter().map(|(n, a)| (n.to_string(), v(*a))).collect()
        };
        // In-distribution queries: PRADA alone alerts.
        let d = p.decide("in", None, &named(&[("prada", true), ("ood", false)]), 0);
        assert_eq!(d.action, Action::Alert);
        assert!((d.risk - 1.0).abs() < 1e-9, "{}", d.risk);
        // Foreign queries (the client's OOD monitor alarms): PRADA is suspicion, as OOD is.
        for t in 0..1000 {
            let d = p.decide("out", None, &named(&[("prada", true), ("ood", true)]), t);
            assert_eq!(d.action, Action::Allow, "query {t}");
            assert_eq!(d.risk, 0.0);
            assert_eq!(d.reasons.len(), 2, "still reported");
        }
        // ... until another behaviour detector corroborates: then all three count.
        let d = p.decide(
            "out",
            None,
            &named(&[("prada", true), ("ood", true), ("knn", true)]),
            1000,
        );
        assert_eq!(d.action, Action::Alert);
        assert!((d.risk - 3.0).abs() < 1e-9, "{}", d.risk);
        // Namespaces are separate: a group's OOD alarm does not demote the client's own
        // PRADA, and the client's OOD alarm does not demote the group's PRADA.
        let d = p.decide(
            "g1",
            Some("org"),
            &named(&[("prada", true), ("group:ood", true)]),
            0,
        );
        assert_eq!(d.action, Action::Alert);
        let d = p.decide(
            "g2",
            Some("org"),
            &named(&[("ood", true), ("group:prada", true)]),
            0,
        );
        assert_eq!(d.action, Action::Alert);
        assert!((d.risk - 2.0).abs() < 1e-9, "{}", d.risk);
        // Off by default.
        let mut q = Policy::new(PolicyConfig::default());
        let d = q.decide("out", None, &named(&[("prada", true), ("ood", true)]), 0);
        assert_eq!(d.action, Action::Alert);
    }
}
