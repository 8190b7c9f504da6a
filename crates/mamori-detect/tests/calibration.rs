//! `calibrate` on a tiny linear model: the rate limit fitted from the benign arrival rate, and
//! bad options refused.

use mamori_core::{Model, ModelCard, ModelError, Tensor};
use mamori_detect::{calibrate, CalibrationOptions, DetectError};

const LEN: usize = 16;

struct Linear(ModelCard);

impl Model for Linear {
    fn card(&self) -> &ModelCard {
        &self.0
    }
    fn logits(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.check_input(x)?;
        let mut out = Vec::new();
        for r in x.rows() {
            for c in 0..3 {
                out.push(
                    r.iter()
                        .enumerate()
                        .map(|(i, v)| v * (((i * 7 + c * 5) % 11) as f32 - 5.0))
                        .sum(),
                );
            }
        }
        Ok(Tensor::new(vec![x.batch_size(), 3], out)?)
    }
}

fn model() -> Linear {
    Linear(ModelCard::classifier("linear", "softmax", &[LEN], 3))
}

fn data(n: usize, salt: usize) -> Tensor {
    let x: Vec<f32> = (0..n * LEN)
        .map(|i| ((i * 31 + salt * 17 + i / LEN * 13) % 97) as f32 / 97.0)
        .collect();
    Tensor::new(vec![n, LEN], x).unwrap()
}

fn opts(interval: Option<f64>) -> CalibrationOptions {
    CalibrationOptions {
        clients: 4,
        queries_per_client: 200,
        max_train: 300,
        benign_interval_ms: interval,
        tail_clients: Some(8),
        ..CalibrationOptions::default()
    }
}

#[test]
fn rate_limit_follows_the_benign_arrival_rate() {
    let (m, tr, be) = (model(), data(300, 1), data(300, 2));
    let none = calibrate(&m, &tr, &be, "b", &opts(None)).unwrap();
    assert_eq!(
        none.detectors.rate.max_per_window, 600,
        "configured default kept"
    );
    assert_eq!(none.report.rate_benign_interval_ms, None);
    // One query per 10 s on average over 60 s windows: ≈ 6 per window, bound well below 600.
    let slow = calibrate(&m, &tr, &be, "b", &opts(Some(10_000.0))).unwrap();
    let b = slow.detectors.rate.max_per_window;
    assert!((10..=30).contains(&b), "bound {b}");
    assert!(b >= slow.report.rate_max_window);
    // The Poisson tail at this detector's share of the per-client budget: fpr / (5 · 200).
    let share = 0.001 / (mamori_detect::calibration::ALONE_DETECTORS as f64 * 200.0);
    let analytic = 1 + mamori_detect::rate::poisson_bound(6.0, share);
    assert_eq!(b, analytic.max(slow.report.rate_max_window));
    // Ten times faster benign clients get a much higher bound (mean 60 per window).
    let fast = calibrate(&m, &tr, &be, "b", &opts(Some(1_000.0))).unwrap();
    assert!(fast.detectors.rate.max_per_window > 3 * b);
}

/// Foreign benign traffic: every value in `[0.7, 1]`, far from the benign data's centroids
/// (values spread over `[0, 1]`), so the fitted OOD test calls it out of distribution.
fn foreign(n: usize, len: usize) -> mamori_detect::ForeignBenign {
    let x: Vec<f32> = (0..n * len)
        .map(|i| 0.7 + 0.3 * ((i * 37 + i / len * 11) % 89) as f32 / 89.0)
        .collect();
    mamori_detect::ForeignBenign {
        name: "far".into(),
        x: std::sync::Arc::new(Tensor::new(vec![n, len], x).unwrap()),
    }
}

/// `prada.ood_delta` is PRADA's rule applied to the second pool: 0.995 × the smallest critical
/// δ of the simulated foreign clients' out-of-distribution queries (at most the configured
/// δ); without foreign traffic it keeps its default. Foreign data of another shape is
/// refused, naming it.
#[test]
fn prada_ood_delta_is_fitted_on_foreign_traffic() {
    let (m, tr, be) = (model(), data(300, 1), data(300, 2));
    let plain = calibrate(&m, &tr, &be, "b", &opts(None)).unwrap();
    assert_eq!(plain.detectors.prada.ood_delta, 0.8);
    assert_eq!(plain.report.foreign, None);
    let o = CalibrationOptions {
        foreign: Some(foreign(300, LEN)),
        ..opts(None)
    };
    let c = calibrate(&m, &tr, &be, "b", &o).unwrap();
    let r = &c.report;
    assert_eq!(r.foreign.as_deref(), Some("far"));
    assert!(r.foreign_ood_rate > 0.9, "{}", r.foreign_ood_rate);
    let crit = r
        .prada_ood_min_critical
        .expect("the foreign clients ran tests");
    let d = c.detectors.prada.ood_delta;
    assert!(
        d < crit && (d - (0.995 * crit).min(0.95)).abs() < 1e-12,
        "ood_delta {d}, critical {crit}"
    );
    assert_ne!(d, 0.8, "fitted, not the default");
    // The rest of the fit does not depend on the foreign data.
    assert_eq!(c.detectors.prada.delta, plain.detectors.prada.delta);
    assert_eq!(c.detectors.knn, plain.detectors.knn);
    // Written and read back with the report.
    let back =
        mamori_detect::Calibration::from_json(&serde_json::to_string(&c).unwrap(), "t").unwrap();
    assert_eq!(back, c);

    let wrong = CalibrationOptions {
        foreign: Some(foreign(50, LEN + 1)),
        ..opts(None)
    };
    let e = calibrate(&m, &tr, &be, "b", &wrong)
        .unwrap_err()
        .to_string();
    assert!(e.contains("foreign samples have shape"), "{e}");
}

#[test]
fn bad_interval_is_refused() {
    let (m, tr, be) = (model(), data(300, 1), data(300, 2));
    for bad in [0.0, -5.0, f64::NAN, f64::INFINITY] {
        let e = calibrate(&m, &tr, &be, "b", &opts(Some(bad))).unwrap_err();
        assert!(matches!(e, DetectError::Calibration(_)), "{bad}: {e}");
        assert!(e.to_string().contains("benign_interval_ms"), "{e}");
    }
}

#[test]
fn blacklight_client_alarm_tolerates_the_configured_flag_rate() {
    let (m, tr, be) = (model(), data(300, 1), data(300, 2));
    let c = calibrate(&m, &tr, &be, "b", &opts(None)).unwrap();
    let b = &c.detectors.blacklight;
    let rate = c.report.blacklight_flag_rate.max(0.05);
    // One more than the binomial tail bound at fpr / (5 detectors · queries) = 1e-6 over a
    // 20-query window
    // for the default tolerated flag rate of 5%.
    let want = 1 + mamori_detect::ood::binomial_bound(
        b.window_queries,
        rate,
        0.001 / (mamori_detect::calibration::ALONE_DETECTORS as f64 * 200.0),
    );
    assert_eq!(b.min_flagged, want.clamp(2, b.window_queries));
    assert!(b.min_flagged >= 8, "{}", b.min_flagged);
    // A larger tolerated rate needs more flagged queries.
    let loose = calibrate(
        &m,
        &tr,
        &be,
        "b",
        &CalibrationOptions {
            blacklight_tolerance: 0.2,
            ..opts(None)
        },
    )
    .unwrap();
    assert!(loose.detectors.blacklight.min_flagged > b.min_flagged);
}

#[test]
fn prada_delta_lets_every_calibration_client_through() {
    let (m, tr, be) = (model(), data(300, 1), data(300, 2));
    let c = calibrate(&m, &tr, &be, "b", &opts(None)).unwrap();
    let r = &c.report;
    // PRADA is fitted on its own, larger population (8 here, the other detectors on 4).
    assert_eq!(r.prada_clients, 8);
    let crit = r.prada_min_critical.expect("every client ran tests");
    let min_w = r.prada_min_w.expect("tests ran");
    // A critical value is the largest W of some run of `persist` tests: never below the
    // smallest W, and δ sits strictly below every client's critical value.
    assert!(crit >= min_w, "{crit} < {min_w}");
    let d = c.detectors.prada.delta;
    assert!(
        d < crit && (d - (0.95f64).min(0.995 * crit)).abs() < 1e-12,
        "δ {d}, critical {crit}"
    );
    // By default the population is ⌈1/fpr⌉ and never smaller than `clients`.
    let o = |clients, fpr| CalibrationOptions {
        clients,
        fpr,
        ..CalibrationOptions::default()
    };
    assert_eq!(o(20, 0.001).prada_clients(), 1000);
    assert_eq!(o(2000, 0.001).prada_clients(), 2000);
    assert_eq!(o(20, 1e-6).prada_clients(), 5000);
}

#[test]
fn synthetic_detector_is_fitted_on_images_only() {
    // Tabular inputs: no spatial structure, the detector stays inactive.
    let (m, tr, be) = (model(), data(300, 1), data(300, 2));
    let c = calibrate(&m, &tr, &be, "b", &opts(None)).unwrap();
    assert_eq!(c.detectors.synthetic.threshold, None);

    // 4×4 images (the same linear model over 16 pixels): smooth gradients with a random
    // direction. The threshold lies below every training image's smoothness but above noise.
    let mut img = model();
    img.0.input_shape = vec![1, 4, 4];
    let smooth = |n: usize, salt: usize| {
        let x: Vec<f32> = (0..n)
            .flat_map(|k| {
                let (a, b) = (
                    ((k * 7 + salt) % 5) as f32 * 0.05,
                    ((k * 3 + salt) % 7) as f32,
                );
                (0..LEN).map(move |i| {
                    let (r, c) = ((i / 4) as f32, (i % 4) as f32);
                    (0.1 + a * r + 0.02 * b * c).min(1.0)
                })
            })
            .collect();
        Tensor::new(vec![n, 1, 4, 4], x).unwrap()
    };
    let c = calibrate(&img, &smooth(300, 1), &smooth(300, 2), "b", &opts(None)).unwrap();
    let t = c.detectors.synthetic.threshold.expect("fitted on images");
    let rho: Vec<f64> = (0..300)
        .filter_map(|k| mamori_detect::synthetic::smoothness(smooth(300, 1).row(k), &[1, 4, 4]))
        .collect();
    let min = rho.iter().copied().fold(f64::MAX, f64::min);
    assert!(
        t <= min + 1e-12 && t > 0.3,
        "threshold {t}, smallest training ρ {min}"
    );
    assert_eq!(c.report.synthetic_benign_rate, 0.0);
    assert!(c.detectors.synthetic.max_flagged >= 1);
}

#[test]
fn older_calibrations_load_but_are_not_current_and_unknown_versions_are_refused() {
    let (m, tr, be) = (model(), data(300, 1), data(300, 2));
    let c = calibrate(&m, &tr, &be, "b", &opts(None)).unwrap();
    assert_eq!(c.version, mamori_detect::CALIBRATION_VERSION);
    assert!(c.is_current());
    let dir = tempfile::tempdir().unwrap();
    let path = c.save(dir.path()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    // A version-1 file (written before `synthetic` existed) still loads.
    v["version"] = 1.into();
    v["detectors"].as_object_mut().unwrap().remove("synthetic");
    std::fs::write(&path, v.to_string()).unwrap();
    let old = mamori_detect::Calibration::load(&path).unwrap();
    assert!(!old.is_current());
    assert_eq!(old.detectors.synthetic.threshold, None);
    for bad in [0u32, mamori_detect::CALIBRATION_VERSION + 1] {
        v["version"] = bad.into();
        std::fs::write(&path, v.to_string()).unwrap();
        let e = mamori_detect::Calibration::load(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported calibration version"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
    }
}

/// A real calibration validates; one edited out of range (by hand, or by a bug) is refused at
/// load, naming the file and the setting, instead of reaching the detectors.
#[test]
fn a_calibration_with_a_setting_out_of_range_is_refused_by_name() {
    let (m, tr, be) = (model(), data(300, 1), data(300, 2));
    let c = calibrate(&m, &tr, &be, "b", &opts(None)).unwrap();
    c.detectors.validate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = c.save(dir.path()).unwrap();
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (pointer, value, setting) in [
        (
            "/detectors/knn/window",
            serde_json::json!(0),
            "detectors.knn.window",
        ),
        (
            "/detectors/ood/radius",
            serde_json::json!([1.0]),
            "detectors.ood.radius",
        ),
        (
            "/detectors/prada/delta",
            serde_json::json!(1.5),
            "detectors.prada.delta",
        ),
        (
            "/detectors/blacklight/top_n",
            serde_json::json!(5),
            "blacklight.top_n",
        ),
    ] {
        let mut v = good.clone();
        *v.pointer_mut(pointer).unwrap() = value;
        std::fs::write(&path, v.to_string()).unwrap();
        let e = mamori_detect::Calibration::load(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains(setting), "{pointer}: {e}");
        assert!(e.contains(&path.display().to_string()), "{pointer}: {e}");
    }
}
