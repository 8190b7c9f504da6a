//! `mamori watermark` end to end: a DAWN ledger in the home, a suspect that memorised the
//! watermarked answers and one that did not, the JSON result, the signed report and its
//! check, and the bad inputs the command refuses.

mod common;

use common::{mamori, read_json};
use mamori_core::{Model, ModelCard, Tensor};
use mamori_defense::Dawn;
use mamori_ml::{Arch, NativeModel, Network, Targets, TrainConfig};
use rand::{Rng, SeedableRng};
use std::path::Path;

const SHAPE: [usize; 3] = [1, 4, 4];
const CLASSES: usize = 4;

fn card(name: &str) -> ModelCard {
    ModelCard::classifier(name, "mlp", &SHAPE, CLASSES)
}

/// Writes DAWN marks for 400 random inputs answered by `victim` into `home`'s ledger (rate
/// 0.25); returns the marked inputs and their watermark labels.
fn make_ledger(home: &Path, victim: &NativeModel) -> (Vec<Vec<f32>>, Vec<usize>) {
    // A fixed key, so the statistical checks below see the same ledger every run.
    let paths = mamori_defense::dawn::DawnPaths::in_home(home);
    std::fs::create_dir_all(paths.key.parent().unwrap()).unwrap();
    mamori_defense::SecretKey::from_bytes([0x3c; 32])
        .save_new(&paths.key)
        .unwrap();
    let dawn = Dawn::open_home(home, 0.25).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for _ in 0..400 {
        let x: Vec<f32> = (0..16).map(|_| rng.gen::<f32>()).collect();
        let t = Tensor::new(vec![1, 1, 4, 4], x.clone()).unwrap();
        let mut p = victim.predict(&t).unwrap().data().to_vec();
        if let Some(m) = dawn.apply_recorded(&x, &mut p).unwrap() {
            xs.push(x);
            ys.push(m.given_label);
        }
    }
    (xs, ys)
}

/// An MLP trained on `xs` with labels `ys` until it memorises them.
fn memoriser(dir: &Path, xs: &[Vec<f32>], ys: &[usize]) {
    let mut net = Network::new(&Arch::Mlp { hidden: vec![64] }, &SHAPE, CLASSES, 5);
    let x = Tensor::new(
        vec![xs.len(), 1, 4, 4],
        xs.iter().flatten().copied().collect(),
    )
    .unwrap();
    let cfg = TrainConfig {
        epochs: 300,
        batch_size: 32,
        learning_rate: 1e-2,
        ..TrainConfig::default()
    };
    mamori_ml::train(&mut net, &x, &Targets::Labels(ys.to_vec()), &cfg).unwrap();
    NativeModel::new(net, card("thief")).save(dir).unwrap();
}

/// `mamori watermark verify --suspect SUSPECT ARGS…`.
fn verify(home: &Path, suspect: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec![
        "watermark",
        "verify",
        "--suspect",
        suspect.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    run(home, &all)
}

/// `mamori watermark check-report FILE --public-key KEY`.
fn check_report(home: &Path, file: &str, key: &str) -> (bool, String, String) {
    run(
        home,
        &["watermark", "check-report", file, "--public-key", key],
    )
}

fn run(home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = mamori(home).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn verify_convicts_a_memoriser_clears_an_independent_model_and_signs_the_evidence() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let victim = NativeModel::new(
        Network::new(&Arch::Mlp { hidden: vec![8] }, &SHAPE, CLASSES, 3),
        card("victim"),
    );
    let (xs, ys) = make_ledger(&home, &victim);
    assert!(xs.len() > 60, "{} marks", xs.len());
    let thief = tmp.path().join("thief");
    memoriser(&thief, &xs, &ys);
    let clean = tmp.path().join("clean");
    NativeModel::new(
        Network::new(&Arch::Mlp { hidden: vec![8] }, &SHAPE, CLASSES, 99),
        card("clean"),
    )
    .save(&clean)
    .unwrap();

    let json = tmp.path().join("thief.json");
    let report = tmp.path().join("thief.report.json");
    let (ok, out, err) = verify(
        &home,
        &thief,
        &[
            "--json",
            json.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("watermark found"), "{out}");
    assert!(out.contains("rank_sum"), "{out}");
    let j = read_json(&json);
    assert_eq!(j["verdict"], "watermark_found");
    assert_eq!(j["statistic"], "log_gap_sum_or_centred_gap_sum");
    assert_eq!(j["queried"], xs.len());
    assert!(j["p_value"].as_f64().unwrap() < 1e-9, "{j}");
    assert!(j["matches"].as_u64().unwrap() > xs.len() as u64 / 2);
    assert!(j["rank_sum"]["p_value"].as_f64().unwrap() < 1e-9);
    assert!(out.contains("log_gap_sum"), "{out}");
    assert!(j["log_gap_sum"]["p_value"].as_f64().unwrap() < 1e-9);
    assert!(out.contains("centred_gap"), "{out}");
    assert!(
        j["centred_gap_sum"]["p_value"].as_f64().unwrap() < 1e-9,
        "{j}"
    );

    // The signed report checks with the public key written beside the signing key, and
    // fails once edited.
    let pk = home.join("watermark").join("signing.key.pub");
    let (ok, out, err) = check_report(&home, report.to_str().unwrap(), pk.to_str().unwrap());
    assert!(ok, "{err}");
    assert!(out.contains("signature   valid"), "{out}");
    assert!(
        out.contains("recomputed  top1, top_among_wrong, rank_sum, log_gap_sum, centred_gap_sum")
            && out.contains("consistent"),
        "{out}"
    );
    // A report whose p-value was made smaller and signed again (a dishonest signer): the
    // signature is valid, the recheck is not.
    {
        use mamori_defense::report::{read_signed_report, ReportSigner};
        let signer = ReportSigner::new(mamori_defense::SecretKey::from_bytes([5; 32]));
        let mut r = read_signed_report(&report).unwrap().report;
        r.log10_p_value -= 10.0;
        r.p_value = 10f64.powf(r.log10_p_value);
        let forged = tmp.path().join("forged.json");
        std::fs::write(&forged, serde_json::to_string(&signer.sign(r)).unwrap()).unwrap();
        let (ok, out, err) =
            check_report(&home, forged.to_str().unwrap(), &signer.public_key_hex());
        assert!(!ok && out.contains("signature   valid"), "{out}");
        assert!(
            err.contains("do not follow from the evidence") && err.contains("p-value"),
            "{err}"
        );
    }
    let text = std::fs::read_to_string(&report).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["report"]["version"], 6);
    for stat in ["log_gap_sum", "centred_gap_sum"] {
        let mut t = v.clone();
        let sum = t["report"][stat]["log_gap_sum"].as_u64().unwrap();
        t["report"][stat]["log_gap_sum"] = serde_json::json!(sum + 7);
        let tampered = tmp.path().join("tampered.json");
        std::fs::write(&tampered, serde_json::to_string_pretty(&t).unwrap()).unwrap();
        let (ok, _, err) = check_report(&home, tampered.to_str().unwrap(), pk.to_str().unwrap());
        assert!(
            !ok && err.contains("signature does not verify"),
            "{stat}: {err}"
        );
    }

    // With the protected model as reference (and its calibration's quiet dimensions), the
    // fingerprint test joins the decision.
    let reference = tmp.path().join("reference");
    victim.save(&reference).unwrap();
    let (ok, _, err) = verify(&home, &thief, &["--reference", reference.to_str().unwrap()]);
    assert!(!ok && err.contains("mamori calibrate"), "{err}");
    mamori_detect::Calibration {
        version: mamori_detect::CALIBRATION_VERSION,
        model: "victim".into(),
        benign: "test".into(),
        fpr: 0.001,
        clients: 1,
        queries_per_client: 1,
        detectors: mamori_detect::DetectorsConfig::default(),
        report: mamori_detect::calibration::CalibrationReport::default(),
        fingerprint_dims: (0..8).collect(),
    }
    .save(&reference)
    .unwrap();
    let (ok, out, err) = verify(
        &home,
        &thief,
        &[
            "--reference",
            reference.to_str().unwrap(),
            "--fingerprint-queries",
            "500",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("fingerprint     z ="), "{out}");
    let j = read_json(&json);
    assert_eq!(
        j["statistic"],
        "log_gap_sum_or_reference_gap_sum_or_centred_gap_sum_or_fingerprint"
    );
    assert!(
        j["reference_gap_sum"]["p_value"].as_f64().unwrap() < 1e-9,
        "{j}"
    );
    assert_eq!(j["fingerprint"]["queried"], 500);
    assert_eq!(j["verdict"], "watermark_found");
    // A missing DAWN key is named.
    let (ok, _, err) = verify(
        &home,
        &thief,
        &[
            "--reference",
            reference.to_str().unwrap(),
            "--dawn-key",
            tmp.path().join("nokey").to_str().unwrap(),
        ],
    );
    assert!(!ok && err.contains("nokey"), "{err}");

    // A model that never saw our answers is not accused.
    let (ok, out, err) = verify(&home, &clean, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("not found at alpha"), "{out}");

    // One of 20 suspects screened: the p-value is 20 times this suspect's own (Bonferroni),
    // the single value is kept, the signed report carries both; 0 suspects is refused.
    let (single, family) = (
        tmp.path().join("single.json"),
        tmp.path().join("family.json"),
    );
    let freport = tmp.path().join("family.report.json");
    assert!(verify(&home, &clean, &["--json", single.to_str().unwrap()]).0);
    let (ok, out, err) = verify(
        &home,
        &clean,
        &[
            "--family",
            "20",
            "--json",
            family.to_str().unwrap(),
            "--report",
            freport.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("family      20 suspects screened"), "{out}");
    let (s, f) = (read_json(&single), read_json(&family));
    assert!(s.get("family").is_none(), "{s}");
    assert_eq!(f["family"], 20);
    let (ls, lf) = (
        s["log10_p_value"].as_f64().unwrap(),
        f["log10_p_value"].as_f64().unwrap(),
    );
    assert!((f["log10_p_value_single"].as_f64().unwrap() - ls).abs() < 1e-12);
    assert!(
        (lf - (ls + 20f64.log10()).min(0.0)).abs() < 1e-12,
        "{ls} {lf}"
    );
    let (ok, out, err) = check_report(&home, freport.to_str().unwrap(), pk.to_str().unwrap());
    assert!(
        ok && out.contains("family      20 suspects screened"),
        "{out}{err}"
    );
    let (ok, _, err) = verify(&home, &clean, &["--family", "0"]);
    assert!(!ok && err.contains("--family"), "{err}");
}

#[test]
fn verify_refuses_bad_inputs_with_the_file_and_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let victim = NativeModel::new(
        Network::new(&Arch::Mlp { hidden: vec![8] }, &SHAPE, CLASSES, 3),
        card("victim"),
    );
    make_ledger(&home, &victim);
    let model = tmp.path().join("model");
    victim.save(&model).unwrap();

    // No ledger in this home.
    let empty = tmp.path().join("empty");
    let (ok, _, err) = verify(&empty, &model, &[]);
    assert!(!ok && err.contains("no DAWN ledger"), "{err}");
    // A --ledger path that does not exist.
    let nowhere = tmp.path().join("nowhere").join("ledger.bin");
    let (ok, _, err) = verify(&home, &model, &["--ledger", nowhere.to_str().unwrap()]);
    assert!(
        !ok && err.contains("ledger") && err.contains("does not exist"),
        "{err}"
    );

    // A suspect path that is not a model.
    let missing = tmp.path().join("no-such-model");
    let (ok, _, err) = verify(&home, &missing, &[]);
    assert!(!ok && err.contains("no-such-model"), "{err}");

    // A suspect of another shape.
    let other = tmp.path().join("other");
    common::tiny_model(&other, "other");
    let (ok, _, err) = verify(&home, &other, &[]);
    assert!(!ok && err.contains("classes"), "{err}");

    // A significance level outside (0, 1).
    let (ok, _, err) = verify(&home, &model, &["--alpha", "2"]);
    assert!(!ok && err.contains("alpha"), "{err}");

    // A report file that is not a report, and a malformed public key.
    let junk = tmp.path().join("junk.json");
    std::fs::write(&junk, "{\"nope\": 1}").unwrap();
    let (ok, _, err) = check_report(
        &home,
        junk.to_str().unwrap(),
        &mamori_defense::report::ReportSigner::new(mamori_defense::SecretKey::from_bytes([1; 32]))
            .public_key_hex(),
    );
    assert!(
        !ok && err.contains("junk.json") && err.contains("not a signed report"),
        "{err}"
    );
    let (ok, _, err) = check_report(&home, junk.to_str().unwrap(), "xyz");
    assert!(!ok && err.contains("public key"), "{err}");
}
