//! Reproduction check of reverse sigmoid's published pattern (Lee et al., "Defending Against NN
//! Model Stealing Attacks Using Deceptive Perturbations", IEEE S&P Workshops 2019; PAPERS.md
//! row 14: MNIST, β = 1, γ = 0.2 → a soft-label thief collapses to ~20% accuracy while a
//! label-only thief still reaches ~88%).
//!
//! ```text
//! cargo run --release -p mamori-defense --example reverse_sigmoid_repro -- \
//!     [--data-dir DIR] [--beta B] [--gamma G] [--victim-epochs E] [--datasets a,b] [--quick]
//! ```
//!
//! For MNIST (the paper's dataset) and Fashion-MNIST (our default): an MLP 784-256-10 victim
//! is trained on the first 50,000 training images; the thief queries the other 10,000 once,
//! through no defense and through reverse sigmoid, and fits substitutes (MLP 784-256-10) to
//! the answers with four losses: argmax labels (label-only thief), soft-target cross-entropy,
//! logit regression (squared error between centred logits and the answers' centred
//! log-probabilities, i.e. a thief that inverts the softmax) and probability regression
//! (squared error on the probabilities). Prints a Markdown table on stdout.

use mamori_core::{ModelCard, Postprocessor, Tensor};
use mamori_defense::defended_answers;
use mamori_defense::post::ReverseSigmoid;
use mamori_defense::simplex::argmax;
use mamori_ml::{
    accuracy, agreement, train, train_with_loss, Arch, NativeModel, Network, SoftLoss, Targets,
    TrainConfig,
};
use std::time::Instant;

fn answer(victim: &NativeModel, x: &Tensor, pp: Option<&dyn Postprocessor>) -> Tensor {
    defended_answers(victim, x, pp, "repro").expect("victim runs")
}

fn main() {
    let (mut data_dir, mut quick, mut beta, mut gamma) = (None, false, 1.0f32, 0.2f32);
    let mut victim_epochs = None;
    let mut datasets = vec!["mnist".to_string(), "fashion-mnist".to_string()];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--data-dir" => data_dir = Some(std::path::PathBuf::from(args.next().expect("DIR"))),
            "--beta" => beta = args.next().and_then(|v| v.parse().ok()).expect("--beta B"),
            "--gamma" => gamma = args.next().and_then(|v| v.parse().ok()).expect("--gamma G"),
            "--victim-epochs" => {
                victim_epochs = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--victim-epochs E"),
                )
            }
            "--datasets" => {
                datasets = args
                    .next()
                    .expect("--datasets a,b")
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            "--quick" => quick = true,
            other => panic!("unknown argument {other}"),
        }
    }
    let t0 = Instant::now();
    let dir = mamori_data::resolve_data_dir(data_dir.as_deref());
    let rs = ReverseSigmoid::new(beta, gamma).expect("valid β, γ");
    let (n_victim, n_q, v_epochs, s_epochs) = if quick {
        (10_000, 2_000, 2, 4)
    } else {
        (50_000, 10_000, 5, 15)
    };
    let v_epochs = victim_epochs.unwrap_or(v_epochs);
    println!(
        "| dataset | victim epochs | victim acc. | victim mean max-prob (test) | defense | benign acc. | thief loss | thief acc. | fidelity |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for name in datasets.iter().map(String::as_str) {
        let split = mamori_data::load(name, &dir).expect("dataset loads");
        let (tr, test) = (split.train, split.test);
        let classes = tr.num_classes;
        let shape = tr.x.sample_shape().to_vec();
        let vset = tr.select(&(0..n_victim).collect::<Vec<_>>());
        let qx = tr.x.select(&(50_000..50_000 + n_q).collect::<Vec<_>>());
        let mut vnet = Network::new(&Arch::Mlp { hidden: vec![256] }, &shape, classes, 7);
        let cfg = |epochs, seed| TrainConfig {
            epochs,
            batch_size: 64,
            learning_rate: 1e-3,
            seed,
            ..Default::default()
        };
        train(
            &mut vnet,
            &vset.x,
            &Targets::Labels(vset.y.clone()),
            &cfg(v_epochs, 7),
        )
        .expect("victim trains");
        let victim = NativeModel {
            network: vnet,
            card: ModelCard::classifier("repro", "mlp", &shape, classes),
        };
        let vacc = accuracy(&victim, &test.x, &test.y).unwrap();
        eprintln!(
            "[{:>6.1}s] {name}: victim accuracy {vacc:.4}",
            t0.elapsed().as_secs_f64()
        );
        let clean = answer(&victim, &test.x, None);
        let conf = clean
            .rows()
            .map(|r| r.iter().copied().fold(0.0f32, f32::max) as f64)
            .sum::<f64>()
            / test.y.len() as f64;
        let rs_name = format!("reverse_sigmoid β={beta} γ={gamma}");
        for (dname, pp) in [
            ("none", None),
            (rs_name.as_str(), Some(&rs as &dyn Postprocessor)),
        ] {
            let test_ans = answer(&victim, &test.x, pp);
            let benign = test_ans
                .rows()
                .zip(&test.y)
                .filter(|(r, &y)| argmax(r) == y)
                .count() as f64
                / test.y.len() as f64;
            let q = answer(&victim, &qx, pp);
            let labels: Vec<usize> = q.rows().map(argmax).collect();
            let thieves: [(&str, Targets, SoftLoss); 4] = [
                (
                    "labels (cross-entropy)",
                    Targets::Labels(labels),
                    SoftLoss::CrossEntropy,
                ),
                (
                    "soft, cross-entropy",
                    Targets::Soft(q.clone()),
                    SoftLoss::CrossEntropy,
                ),
                (
                    "soft, logit regression",
                    Targets::Soft(q.clone()),
                    SoftLoss::LogitMse,
                ),
                (
                    "soft, probability regression",
                    Targets::Soft(q.clone()),
                    SoftLoss::ProbabilityMse,
                ),
            ];
            for (tname, targets, loss) in thieves {
                let mut net = Network::new(&Arch::Mlp { hidden: vec![256] }, &shape, classes, 11);
                train_with_loss(&mut net, &qx, &targets, &cfg(s_epochs, 11), loss)
                    .expect("substitute trains");
                let sub = NativeModel {
                    network: net,
                    card: ModelCard::classifier("repro", "mlp", &shape, classes),
                };
                let acc = accuracy(&sub, &test.x, &test.y).unwrap();
                let fid = agreement(&sub, &victim, &test.x).unwrap();
                println!(
                    "| {name} | {v_epochs} | {:.2}% | {conf:.4} | {dname} | {:.2}% | {tname} | {:.2}% | {:.2}% |",
                    100.0 * vacc,
                    100.0 * benign,
                    100.0 * acc,
                    100.0 * fid
                );
                eprintln!(
                    "[{:>6.1}s] {name} / {dname} / {tname}: acc {acc:.4} fidelity {fid:.4}",
                    t0.elapsed().as_secs_f64()
                );
            }
        }
    }
    eprintln!("total {:.0} s", t0.elapsed().as_secs_f64());
}
