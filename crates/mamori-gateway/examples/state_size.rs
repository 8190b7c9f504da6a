//! What `detect.shared_state` writes per subject at a checkpoint: one client's detector states
//! (the shipped detector set) after N MNIST queries, in the first format (hex JSON) and as
//! `MSS1` ([`mamori_gateway::state_codec`]), with the time to encode and decode.
//!
//! `cargo run --release -p mamori-gateway --example state_size -- [N ...]`
#![allow(missing_docs)]
use mamori_core::Observation;
use mamori_detect::{default_detectors, DetectorsConfig};
use mamori_gateway::state_codec;
use std::collections::BTreeMap;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000]
    } else {
        sizes
    };
    let dir = mamori_data::resolve_data_dir(None);
    let s = mamori_data::load("mnist", &dir)?;
    let mut cfg = DetectorsConfig::example_active();
    cfg.ood.radius = vec![100.0; 10];
    let dets = default_detectors(&cfg);
    println!("| queries | hex JSON (first format) | MSS1 | ratio | encode | decode |");
    println!("|---|---|---|---|---|---|");
    for n in sizes {
        let mut states: Vec<_> = dets.iter().map(|d| d.new_state()).collect();
        for i in 0..n {
            let j = i % s.train.len();
            let y = s.train.y[j];
            let mut p = vec![0.001f32; 10];
            p[y] = 0.991;
            let o = Observation {
                client: "c",
                input: s.train.x.row(j),
                input_shape: &[1, 28, 28],
                probs: &p,
                label: y,
                time_ms: 1000 * i as u64,
            };
            for st in states.iter_mut() {
                st.observe(&o);
            }
        }
        let snaps: Vec<(String, Vec<u8>)> = dets
            .iter()
            .zip(&states)
            .map(|(d, st)| (d.info().name, st.snapshot()))
            .collect();
        let hex: BTreeMap<&str, String> = snaps
            .iter()
            .map(|(k, v)| (k.as_str(), hex::encode(v)))
            .collect();
        let old = serde_json::to_vec(&hex)?.len();
        let t = Instant::now();
        let enc = state_codec::encode(&snaps);
        let t_enc = t.elapsed();
        let t = Instant::now();
        let back = state_codec::decode(&enc)?;
        let t_dec = t.elapsed();
        assert_eq!(back.len(), snaps.len());
        println!(
            "| {n} | {:.2} MB | {:.2} MB | {:.1}× | {:.0} ms | {:.0} ms |",
            old as f64 / 1e6,
            enc.len() as f64 / 1e6,
            old as f64 / enc.len() as f64,
            t_enc.as_secs_f64() * 1e3,
            t_dec.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
