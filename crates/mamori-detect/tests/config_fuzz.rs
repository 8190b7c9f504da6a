//! Detector settings come from operators (`mamori.toml`) and from `calibration.json` files:
//! every numeric setting set to a value that breaks arithmetic (0, 1, huge, negative, a
//! fraction, a vector of the wrong length) is either refused by [`DetectorsConfig::validate`]
//! with a message naming the setting, or runs a client's stream without a panic — a bad
//! setting must be a start-up error, never a request-path crash.

use mamori_core::Observation;
use mamori_detect::{default_detectors, DetectorsConfig, Engine, PolicyConfig};
use serde_json::{json, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Paths (JSON pointers) of every number and every array of numbers in `v`.
fn numeric_paths(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Number(_) => out.push(at),
        Value::Array(a) if a.iter().all(Value::is_number) => out.push(at),
        Value::Array(a) => {
            out.push(at.clone());
            if let Some(first) = a.first() {
                numeric_paths(first, format!("{at}/0"), out);
            }
        }
        Value::Object(m) => {
            for (k, c) in m {
                numeric_paths(c, format!("{at}/{k}"), out);
            }
        }
        _ => {}
    }
}

/// A short stream: natural-looking and synthetic images, every class, bursts in time.
fn run(cfg: &DetectorsConfig) {
    let mut engine = Engine::new(default_detectors(cfg), PolicyConfig::default());
    let mut x = vec![0.0f32; 784];
    for i in 0..150usize {
        for (j, v) in x.iter_mut().enumerate() {
            *v = if i % 3 == 0 {
                ((i * 31 + j * 17) % 97) as f32 / 97.0
            } else if (j / 28 + i) % 7 < 3 {
                0.9
            } else {
                0.0
            };
        }
        let label = i % 10;
        let mut probs = vec![0.02f32; 10];
        probs[label] = 0.82;
        engine.observe(
            "fuzz",
            None,
            &Observation {
                client: "fuzz",
                input: &x,
                input_shape: &[1, 28, 28],
                probs: &probs,
                label,
                time_ms: (i as u64 / 4) * 1000,
            },
        );
    }
}

#[test]
fn every_bad_setting_is_refused_by_name_or_runs_without_a_panic() {
    let base = serde_json::to_value(DetectorsConfig::example_active()).unwrap();
    let mut paths = Vec::new();
    numeric_paths(&base, String::new(), &mut paths);
    assert!(paths.len() > 40, "{paths:?}");
    let values = [
        json!(0),
        json!(1),
        json!(-1),
        json!(0.5),
        json!(-0.5),
        json!(4_294_967_297u64),
        json!(1e300),
        json!([]),
        json!([0.5]),
        json!([-1.0, 2.0]),
    ];
    let (mut refused, mut ran) = (0, 0);
    let mut crashes = Vec::new();
    for path in &paths {
        for value in &values {
            let mut v = base.clone();
            *v.pointer_mut(path).unwrap() = value.clone();
            // Not a valid value of the setting's type (a negative count, an array for a
            // number): serde refuses it when the file is read.
            let Ok(cfg) = serde_json::from_value::<DetectorsConfig>(v) else {
                refused += 1;
                continue;
            };
            if let Err(e) = cfg.validate() {
                let name = path.trim_start_matches('/').replace('/', ".");
                let name = name.split(".0").next().unwrap().to_string();
                assert!(
                    e.to_string().contains(&name),
                    "{path} = {value}: the error does not name `{name}`: {e}"
                );
                refused += 1;
                continue;
            }
            if catch_unwind(AssertUnwindSafe(|| run(&cfg))).is_err() {
                crashes.push(format!("{path} = {value}"));
            }
            ran += 1;
        }
    }
    assert!(
        crashes.is_empty(),
        "{} settings crash the request path instead of being refused:\n{}",
        crashes.len(),
        crashes.join("\n")
    );
    assert!(ran > 50 && refused > 50, "ran {ran}, refused {refused}");
}

#[test]
fn the_shipped_and_calibrated_shapes_validate() {
    DetectorsConfig::default().validate().unwrap();
    DetectorsConfig::example_active().validate().unwrap();
}
