//! `mamori detectors` (issue #5): the detector catalogue.

use crate::global::Global;
use mamori_core::{DataNeed, Stage};

/// Arguments of `mamori detectors`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the catalogue as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn need(n: &DataNeed) -> &'static str {
    match n {
        DataNeed::TrainingData => "training data",
        DataNeed::TrainedModel => "trained model",
        DataNeed::Input => "input",
        DataNeed::Output => "output",
    }
}

/// Runs `mamori detectors`.
pub fn run(args: Args, _g: &Global) -> anyhow::Result<()> {
    let cat = mamori_detect::catalogue();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&cat)?);
        return Ok(());
    }
    let rows: Vec<[String; 5]> = cat
        .iter()
        .map(|i| {
            [
                i.name.clone(),
                i.paper.clone(),
                i.targets.clone(),
                match i.stage {
                    Stage::Precursor => "precursor".to_string(),
                    Stage::Symptom => "symptom".to_string(),
                },
                i.needs.iter().map(need).collect::<Vec<_>>().join(", "),
            ]
        })
        .collect();
    let header = ["name", "paper", "target", "stage", "needs"];
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(&header.map(String::from)));
    println!(
        "{}",
        line(&width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>())
    );
    for r in &rows {
        println!("{}", line(r));
    }
    Ok(())
}
