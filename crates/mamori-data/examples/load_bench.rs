//! Times `mamori_data::load` for each named dataset against a baseline that only reads and
//! gunzips the same files (the floor any loader pays). Usage:
//! `cargo run -p mamori-data --example load_bench [--release] [-- DATA_DIR]`.

use mamori_data::{catalog::DATASETS, load, read::read_maybe_gz, resolve_data_dir};
use std::path::PathBuf;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| resolve_data_dir(None));
    let runs = 5;
    println!("| dataset | samples | baseline: read + gunzip (ms) | `load` (ms) | overhead |");
    println!("|---|---:|---:|---:|---:|");
    for spec in DATASETS {
        let files: Vec<PathBuf> = spec
            .files
            .iter()
            .map(|f| dir.join(spec.name).join(f.name))
            .collect();
        let mut base = Vec::new();
        let mut full = Vec::new();
        let mut n = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let mut bytes = 0;
            for f in &files {
                bytes += read_maybe_gz(f).expect("read").content.len();
            }
            std::hint::black_box(bytes);
            base.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let s = load(spec.name, &dir).expect("load");
            full.push(t.elapsed().as_secs_f64() * 1e3);
            n = s.train.len() + s.test.len();
        }
        let (b, f) = (median(base), median(full));
        println!("| {} | {n} | {b:.0} | {f:.0} | {:.2}x |", spec.name, f / b);
    }
}
