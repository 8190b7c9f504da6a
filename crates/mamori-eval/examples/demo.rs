//! Runs the demo story: `cargo run --release -p mamori-eval --example demo -- [HOME] [OUT] [--quick]`.
//!
//! `mamori demo` calls the same [`mamori_eval::demo::run`].

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let home = std::path::PathBuf::from(pos.first().map_or("demo-home", |s| s.as_str()));
    let out = pos
        .get(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| mamori_eval::demo::default_out_dir(&home));
    if let Err(e) = mamori_eval::demo::run(&home, None, &out, 7, quick) {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}
