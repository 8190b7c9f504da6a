//! `mamori data`: fetch and verify the public datasets, inspect local files (issue #2).

use crate::global::Global;
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use mamori_data::fetch::{CheckStatus, FetchEvent, FetchOptions};
use mamori_data::{CsvOptions, LabelColumn, LoadOptions, DATASETS};
use std::io::Write;
use std::path::PathBuf;

/// `println!` that ignores a closed stdout (`mamori data info mnist | head` must not panic).
macro_rules! say {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Arguments of `mamori data`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(clap::Subcommand, Debug)]
enum DataCommand {
    /// Download a dataset from its official mirror and check its pinned SHA-256 sums.
    Fetch {
        /// Dataset: fashion-mnist, mnist, digits, or `all`.
        name: String,
        /// Base URL of a mirror serving the same file names (default: the official mirror).
        #[arg(long)]
        mirror: Option<String>,
        /// Data directory to write `<name>/` into (default: the data directory).
        #[arg(long)]
        dest: Option<PathBuf>,
        /// Downloads tried per file before giving up.
        #[arg(long, default_value_t = 3)]
        attempts: usize,
        /// Download even if a verified copy is present.
        #[arg(long)]
        force: bool,
    },
    /// Check the files in the data directory against the pinned SHA-256 sums.
    Verify {
        /// Dataset to check (default: all).
        name: Option<String>,
    },
    /// Print counts, sample shape and class histogram of a dataset (shortcut or path).
    Info {
        /// Shortcut (fashion-mnist, mnist, digits) or path (IDX directory, .csv[.gz], .npy).
        dataset: String,
        /// CSV label column (0-based index, or a header name); default: the last column.
        #[arg(long)]
        label_column: Option<String>,
        /// CSV feature scale (e.g. 0.0625 for values 0..16).
        #[arg(long, default_value_t = 1.0)]
        scale: f32,
    },
}

/// Runs `mamori data`.
pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Fetch {
            name,
            mirror,
            dest,
            attempts,
            force,
        } => {
            let dest = dest.unwrap_or_else(|| g.data_dir());
            let names: Vec<&str> = if name == "all" {
                DATASETS.iter().map(|d| d.name).collect()
            } else {
                vec![name.as_str()]
            };
            if mirror.is_some() && names.len() > 1 {
                bail!("--mirror serves one dataset's files; fetch the datasets one at a time");
            }
            let opts = FetchOptions {
                mirror,
                attempts,
                force,
                ..Default::default()
            };
            for n in names {
                fetch_one(n, &dest, &opts)?;
            }
            say!("data directory: {}", dest.display());
            if dest != g.data_dir() {
                say!(
                    "use it with --data-dir {} (or MAMORI_DATA={})",
                    dest.display(),
                    dest.display()
                );
            }
            Ok(())
        }
        DataCommand::Verify { name } => {
            let dir = g.data_dir();
            let checks = mamori_data::fetch::verify(name.as_deref(), &dir)?;
            let mut bad = 0;
            for c in &checks {
                let status = match &c.status {
                    CheckStatus::Ok => "ok".to_string(),
                    CheckStatus::Missing => {
                        bad += 1;
                        format!("MISSING (run `mamori data fetch {}`)", c.dataset)
                    }
                    CheckStatus::Mismatch { actual } => {
                        bad += 1;
                        format!("MISMATCH (got {actual}, expected {})", c.expected)
                    }
                    CheckStatus::Unreadable { error } => {
                        bad += 1;
                        format!("UNREADABLE ({error})")
                    }
                };
                say!("{:<60} {status}", c.path.display());
            }
            if bad > 0 {
                bail!(
                    "{bad} of {} file(s) in {} failed verification",
                    checks.len(),
                    dir.display()
                );
            }
            say!("all {} file(s) match their pinned SHA-256", checks.len());
            Ok(())
        }
        DataCommand::Info {
            dataset,
            label_column,
            scale,
        } => {
            let label_column = match label_column {
                None => LabelColumn::Last,
                Some(s) => match s.parse::<usize>() {
                    Ok(i) => LabelColumn::Index(i),
                    Err(_) => LabelColumn::Name(s),
                },
            };
            let opts = LoadOptions {
                csv: CsvOptions {
                    label_column,
                    scale,
                    ..Default::default()
                },
                ..Default::default()
            };
            let split = mamori_data::load_with(&dataset, &g.data_dir(), &opts)
                .with_context(|| format!("loading {dataset}"))?;
            let tr = &split.train;
            say!("dataset:       {}", tr.name);
            say!("train / test:  {} / {}", tr.len(), split.test.len());
            say!("sample shape:  {:?}", tr.sample_shape());
            say!("classes:       {}", tr.num_classes);
            let n = &tr.normalisation;
            say!(
                "normalisation: input = (raw * {} - {}) / {}",
                n.scale,
                n.mean,
                n.std
            );
            let (lo, hi) =
                tr.x.data()
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                        (a.min(v), b.max(v))
                    });
            say!("input range:   [{lo}, {hi}]");
            say!("{:<6} {:<14} {:>8} {:>8}", "class", "name", "train", "test");
            for (c, (a, b)) in tr
                .class_histogram()
                .iter()
                .zip(split.test.class_histogram())
                .enumerate()
            {
                say!(
                    "{c:<6} {:<14} {a:>8} {b:>8}",
                    tr.class_names.get(c).map_or("", |s| s)
                );
            }
            let mut files = tr.files.clone();
            for f in &split.test.files {
                if !files.contains(f) {
                    files.push(f.clone());
                }
            }
            for f in files {
                say!("file: {}  sha256 {}", f.path, f.sha256);
            }
            Ok(())
        }
    }
}

fn fetch_one(name: &str, dest: &std::path::Path, opts: &FetchOptions) -> anyhow::Result<()> {
    let style = ProgressStyle::with_template(
        "{msg:32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    let mut bar: Option<ProgressBar> = None;
    let mut on_event = |e: &FetchEvent| match e {
        FetchEvent::Start { file, total, .. } => {
            let b = ProgressBar::new(total.unwrap_or(0));
            b.set_style(style.clone());
            b.set_message(format!("{name}/{file}"));
            bar = Some(b);
        }
        FetchEvent::Progress { bytes, .. } => {
            if let Some(b) = &bar {
                b.set_position(*bytes);
            }
        }
        FetchEvent::Done { path } => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            say!("verified  {}", path.display());
        }
        FetchEvent::AlreadyPresent { path } => say!("present   {} (verified)", path.display()),
        FetchEvent::Retry {
            file,
            attempt,
            error,
        } => {
            if let Some(b) = bar.take() {
                b.abandon();
            }
            eprintln!("attempt {attempt} for {file} failed: {error}; retrying");
        }
    };
    mamori_data::fetch::fetch(name, dest, opts, &mut on_event)
        .with_context(|| format!("fetching {name} into {}", dest.display()))?;
    Ok(())
}
