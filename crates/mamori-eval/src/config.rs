//! The evaluation configuration (`eval.toml`).
//!
//! ```toml
//! seed = 7
//! [victim]                     # trained once and cached, or `model = "path"`
//! dataset = "fashion-mnist"
//! arch = { kind = "mlp", hidden = [256] }
//! epochs = 4
//! [substitute]                 # trained until its fit to the answers plateaus
//! arch = { kind = "mlp", hidden = [256] }
//! epochs = 50                  # the cap
//! patience = 3                 # 0: exactly `epochs` epochs
//! min_gain = 0.0
//! [benign]
//! replay_clients = 4           # test-set images in random order
//! other_clients = 2            # images of another dataset
//! other_dataset = "mnist"
//! bursty_clients = 2           # repeated legitimate queries, in bursts
//! queries_per_client = 300
//! [[attacks]]
//! strategy = "knockoff"
//! budget = 3000
//! query_data = "mnist"
//! [matrix]
//! policies = ["none", "rounding", "detect", "dawn", "default"]
//! ```
//!
//! Every table rejects unknown fields; [`EvalConfig::check`] names the field of any bad value.

use crate::error::EvalError;
use mamori_gateway::protection::{self, PolicySpec};
use mamori_ml::{Arch, Plateau};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The victim model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VictimConfig {
    /// Dataset shortcut or path (`mamori_data::load`).
    pub dataset: String,
    /// A native model directory to use instead of training one.
    pub model: Option<String>,
    /// Architecture of the victim trained when `model` is not given.
    pub arch: Arch,
    /// Training epochs.
    pub epochs: usize,
    /// Use at most this many training samples (0 = all).
    pub train_limit: usize,
    /// Test samples used to score substitutes (fidelity, accuracy).
    pub eval_samples: usize,
    /// Uniform random inputs used for the second fidelity measure.
    pub uniform_samples: usize,
}

impl Default for VictimConfig {
    fn default() -> Self {
        Self {
            dataset: "fashion-mnist".into(),
            model: None,
            arch: Arch::Mlp { hidden: vec![256] },
            epochs: 4,
            train_limit: 0,
            eval_samples: 2000,
            uniform_samples: 1000,
        }
    }
}

/// The attacker's substitute, trained the way a thief trains it: until its fit to the stolen
/// answers plateaus ([`mamori_ml::Plateau`]), at most `epochs` epochs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubstituteConfig {
    /// Architecture.
    pub arch: Arch,
    /// Training epochs: the cap when `patience > 0`, else the exact count.
    pub epochs: usize,
    /// Stop after this many epochs without a gain of more than `min_gain` in training
    /// agreement; 0 trains exactly `epochs` epochs.
    pub patience: usize,
    /// Gain in training agreement (a fraction) that counts as progress.
    pub min_gain: f32,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f32,
    /// Samples per oracle call.
    pub query_batch: usize,
}

impl SubstituteConfig {
    /// The stopping rule: a [`Plateau`] when `patience > 0`, else `None` (a fixed schedule).
    pub fn stop(&self) -> Option<Plateau> {
        (self.patience > 0).then_some(Plateau {
            patience: self.patience,
            min_gain: self.min_gain,
        })
    }
}

impl Default for SubstituteConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Mlp { hidden: vec![256] },
            epochs: mamori_attack::extract::SUBSTITUTE_MAX_EPOCHS,
            patience: Plateau::default().patience,
            min_gain: Plateau::default().min_gain,
            batch_size: 64,
            learning_rate: 1e-3,
            query_batch: 100,
        }
    }
}

/// Detector calibration on benign data (`mamori_detect::calibrate`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalibrationConfig {
    /// Target false-positive rate.
    pub fpr: f64,
    /// Simulated benign clients.
    pub clients: usize,
    /// Queries per simulated client.
    pub queries_per_client: usize,
    /// Training samples for the OOD statistics (at most).
    pub max_train: usize,
    /// Simulated clients PRADA's per-client tail is fitted on (unset: ⌈1/fpr⌉, see
    /// `mamori_detect::CalibrationOptions::tail_clients`).
    pub tail_clients: Option<usize>,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self {
            fpr: 0.001,
            clients: 10,
            queries_per_client: 400,
            max_train: 5000,
            tail_clients: None,
        }
    }
}

/// The benign population beside each attacker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BenignConfig {
    /// Clients replaying test-set images in random order.
    pub replay_clients: usize,
    /// Clients sending images of another dataset.
    pub other_clients: usize,
    /// The other dataset.
    pub other_dataset: String,
    /// Clients repeating a small working set of legitimate images in bursts.
    pub bursty_clients: usize,
    /// Distinct images in a bursty client's working set.
    pub bursty_working_set: usize,
    /// Queries per client.
    pub queries_per_client: usize,
    /// Samples per request.
    pub batch: usize,
}

impl Default for BenignConfig {
    fn default() -> Self {
        Self {
            replay_clients: 4,
            other_clients: 2,
            other_dataset: "mnist".into(),
            bursty_clients: 2,
            bursty_working_set: 40,
            queries_per_client: 300,
            batch: 10,
        }
    }
}

/// One attack of the matrix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackConfig {
    /// Row name in the reports (default: the strategy).
    #[serde(default)]
    pub name: Option<String>,
    /// Strategy (`mamori_attack::extract::STRATEGIES`).
    pub strategy: String,
    /// Query budget.
    pub budget: u64,
    /// Attacker data (dataset shortcut or path; its training part is used).
    #[serde(default)]
    pub query_data: Option<String>,
    /// Use at most this many attacker samples (0 = all).
    #[serde(default)]
    pub query_limit: usize,
}

impl AttackConfig {
    /// The row name.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.strategy.clone())
    }
}

/// Which policies run, and custom policy definitions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatrixConfig {
    /// Policy names (built-in or defined below), one column each.
    pub policies: Vec<String>,
    /// Custom policies.
    pub custom: BTreeMap<String, PolicySpec>,
    /// Fractions of the budget at which the fidelity curve is measured.
    pub checkpoints: Vec<f64>,
    /// Runs per cell (seeds `seed`, `seed + 1`, ...).
    pub repeats: usize,
}

impl Default for MatrixConfig {
    fn default() -> Self {
        Self {
            policies: vec![
                "none".into(),
                "rounding".into(),
                "reverse_sigmoid".into(),
                "label_only".into(),
                "detect".into(),
                "dawn".into(),
                "default".into(),
            ],
            custom: BTreeMap::new(),
            checkpoints: vec![0.1, 0.25, 0.5, 0.75, 1.0],
            repeats: 1,
        }
    }
}

/// The whole evaluation configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// The victim.
    pub victim: VictimConfig,
    /// The attacker's substitute.
    pub substitute: SubstituteConfig,
    /// Detector calibration.
    pub calibration: CalibrationConfig,
    /// Benign clients.
    pub benign: BenignConfig,
    /// The attacks (rows).
    pub attacks: Vec<AttackConfig>,
    /// The policies (columns).
    pub matrix: MatrixConfig,
}

impl Default for EvalConfig {
    /// Defaults of every table and no attack (see [`EvalConfig::shipped`] for the shipped
    /// default configuration).
    fn default() -> Self {
        Self {
            seed: 7,
            victim: VictimConfig::default(),
            substitute: SubstituteConfig::default(),
            calibration: CalibrationConfig::default(),
            benign: BenignConfig::default(),
            attacks: Vec::new(),
            matrix: MatrixConfig::default(),
        }
    }
}

/// The shipped default configuration (`crates/mamori-eval/eval.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../eval.toml");

impl EvalConfig {
    /// The shipped default configuration ([`DEFAULT_CONFIG`]).
    pub fn shipped() -> Self {
        Self::from_toml(DEFAULT_CONFIG, "<embedded default>")
            .expect("the embedded default config parses and checks")
    }

    /// Parses and checks a TOML configuration; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, EvalError> {
        let cfg: EvalConfig = toml::from_str(text).map_err(|e| EvalError::Config {
            path: origin.into(),
            message: e.to_string(),
        })?;
        cfg.check(origin)?;
        Ok(cfg)
    }

    /// Reads, parses and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, EvalError> {
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Checks every value; the error names the field.
    pub fn check(&self, origin: &str) -> Result<(), EvalError> {
        let bad = |field: &str, problem: String| EvalError::Config {
            path: origin.into(),
            message: format!("{field}: {problem}"),
        };
        if self.victim.model.is_none() && self.victim.epochs == 0 {
            return Err(bad("victim.epochs", "must be at least 1".into()));
        }
        if self.victim.eval_samples == 0 {
            return Err(bad("victim.eval_samples", "must be at least 1".into()));
        }
        if self.substitute.epochs == 0 {
            return Err(bad("substitute.epochs", "must be at least 1".into()));
        }
        if let Some(p) = self.substitute.stop() {
            p.check()
                .map_err(|e| bad("substitute.min_gain", e.to_string()))?;
        }
        if self.substitute.query_batch == 0 || self.substitute.batch_size == 0 {
            return Err(bad(
                "substitute.query_batch / batch_size",
                "must be at least 1".into(),
            ));
        }
        if !(self.substitute.learning_rate > 0.0 && self.substitute.learning_rate.is_finite()) {
            return Err(bad(
                "substitute.learning_rate",
                format!("must be positive, got {}", self.substitute.learning_rate),
            ));
        }
        if !(self.calibration.fpr > 0.0 && self.calibration.fpr < 1.0) {
            return Err(bad(
                "calibration.fpr",
                format!("must lie in (0, 1), got {}", self.calibration.fpr),
            ));
        }
        if self.benign.batch == 0 {
            return Err(bad("benign.batch", "must be at least 1".into()));
        }
        if self.attacks.is_empty() {
            return Err(bad(
                "attacks",
                "at least one [[attacks]] entry is needed".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, a) in self.attacks.iter().enumerate() {
            if !mamori_attack::extract::STRATEGIES.contains(&a.strategy.as_str()) {
                return Err(bad(
                    &format!("attacks[{i}].strategy"),
                    format!(
                        "unknown strategy {:?}; known: {}",
                        a.strategy,
                        mamori_attack::extract::STRATEGIES.join(", ")
                    ),
                ));
            }
            if a.budget == 0 {
                return Err(bad(
                    &format!("attacks[{i}].budget"),
                    "must be at least 1".into(),
                ));
            }
            let info = mamori_attack::by_name(&a.strategy)
                .map_err(|e| bad(&format!("attacks[{i}].strategy"), e.to_string()))?
                .info();
            if info.needs_query_data && a.query_data.is_none() {
                return Err(bad(
                    &format!("attacks[{i}].query_data"),
                    format!("strategy {:?} needs attacker data", a.strategy),
                ));
            }
            if !names.insert(a.label()) {
                return Err(bad(
                    &format!("attacks[{i}].name"),
                    format!("two attacks are named {:?}", a.label()),
                ));
            }
        }
        if self.matrix.policies.is_empty() {
            return Err(bad(
                "matrix.policies",
                "at least one policy is needed".into(),
            ));
        }
        for (i, p) in self.matrix.policies.iter().enumerate() {
            let spec = protection::resolve(p, &self.matrix.custom)
                .map_err(|e| bad(&format!("matrix.policies[{i}]"), e.to_string()))?;
            spec.check(p)
                .map_err(|e| bad(&format!("matrix.policies[{i}]"), e.to_string()))?;
        }
        if self.matrix.repeats == 0 {
            return Err(bad("matrix.repeats", "must be at least 1".into()));
        }
        if self.matrix.checkpoints.is_empty()
            || self
                .matrix
                .checkpoints
                .iter()
                .any(|c| !(*c > 0.0 && *c <= 1.0))
        {
            return Err(bad(
                "matrix.checkpoints",
                "needs fractions of the budget in (0, 1]".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_parses_and_checks() {
        let c = EvalConfig::shipped();
        assert!(c.attacks.len() >= 3);
        assert!(c.matrix.policies.contains(&"default".to_string()));
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            ("[victim]\nepocs = 3\n[[attacks]]\nstrategy = \"random\"\nbudget = 10\n", "epocs"),
            ("[[attacks]]\nstrategy = \"telepathy\"\nbudget = 10\n", "attacks[0].strategy"),
            ("[[attacks]]\nstrategy = \"random\"\nbudget = 0\n", "attacks[0].budget"),
            ("[[attacks]]\nstrategy = \"knockoff\"\nbudget = 10\n", "attacks[0].query_data"),
            (
                "[[attacks]]\nstrategy = \"random\"\nbudget = 10\n[matrix]\npolicies = [\"nope\"]\n",
                "matrix.policies[0]",
            ),
            (
                "[[attacks]]\nstrategy = \"random\"\nbudget = 10\n[calibration]\nfpr = 2.0\n",
                "calibration.fpr",
            ),
            (
                "[[attacks]]\nstrategy = \"random\"\nbudget = 10\n[matrix]\ncheckpoints = [1.5]\n",
                "matrix.checkpoints",
            ),
            (
                "[[attacks]]\nstrategy = \"random\"\nbudget = 10\n[[attacks]]\nstrategy = \"random\"\nbudget = 5\n",
                "two attacks",
            ),
            (
                "[[attacks]]\nstrategy = \"random\"\nbudget = 10\n[substitute]\nmin_gain = -0.5\n",
                "substitute.min_gain",
            ),
            ("attacks = []\n", "attacks"),
            ("seed = \"x\"\n", "seed"),
        ];
        for (text, want) in cases {
            let e = EvalConfig::from_toml(text, "t.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("t.toml"), "{text:?} → {e}");
        }
    }

    #[test]
    fn the_shipped_thief_trains_until_its_fit_plateaus() {
        let c = EvalConfig::shipped();
        assert_eq!(c.substitute, SubstituteConfig::default());
        assert_eq!(c.substitute.stop(), Some(Plateau::default()));
        let fixed = EvalConfig::from_toml(
            "[[attacks]]\nstrategy = \"random\"\nbudget = 10\n[substitute]\npatience = 0\nepochs = 7\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(fixed.substitute.stop(), None);
        assert_eq!(fixed.substitute.epochs, 7);
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = EvalConfig::load(Path::new("/nonexistent/eval.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/eval.toml"), "{e}");
    }

    #[test]
    fn custom_policies_are_columns() {
        let c = EvalConfig::from_toml(
            "[[attacks]]\nstrategy = \"random\"\nbudget = 10\n[matrix]\npolicies = [\"strict\"]\n\
             [matrix.custom.strict]\ndetect = true\n[matrix.custom.strict.escalation]\nblock_at = 5.0\n",
            "t.toml",
        )
        .unwrap();
        assert!(c.matrix.custom["strict"].detect);
    }
}
