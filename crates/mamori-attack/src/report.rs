//! Reports: Markdown tables and PNG plots (plotters, bitmap backend).

use crate::error::AttackError;
use crate::membership::MembershipResult;
use crate::metrics::CurvePoint;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

fn out_err(path: &Path, e: impl std::fmt::Display) -> AttackError {
    AttackError::Output {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Line plot of several named series `(x, y)`; `log_x` uses a logarithmic x axis.
pub fn plot_series(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
    y_range: (f64, f64),
) -> Result<(), AttackError> {
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.1.iter().copied()).collect();
    if pts.is_empty() {
        return Err(out_err(path, "nothing to plot"));
    }
    let xmin = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let xmax = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let (xmin, xmax) = if xmax > xmin {
        (xmin, xmax)
    } else {
        (xmin * 0.9, xmin * 1.1 + 1.0)
    };
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| out_err(path, e))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .draw()
                .map_err(|e| out_err(path, e))?;
            for (i, (name, s)) in series.iter().enumerate() {
                let c = COLORS[i % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(s.iter().copied(), c.stroke_width(2)))
                    .map_err(|e| out_err(path, e))?
                    .label(name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
                chart
                    .draw_series(s.iter().map(|p| Circle::new(*p, 3, c.filled())))
                    .map_err(|e| out_err(path, e))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(|e| out_err(path, e))?;
        }};
    }
    if log_x {
        let c = builder
            .build_cartesian_2d((xmin.max(1e-9)..xmax).log_scale(), y_range.0..y_range.1)
            .map_err(|e| out_err(path, e))?;
        draw!(c);
    } else {
        let c = builder
            .build_cartesian_2d(xmin..xmax, y_range.0..y_range.1)
            .map_err(|e| out_err(path, e))?;
        draw!(c);
    }
    root.present().map_err(|e| out_err(path, e))?;
    Ok(())
}

/// Grid of grey images (values in `[0, 1]`), `cols` per row, each pixel `scale`×`scale`.
pub fn save_image_grid(
    path: &Path,
    images: &[Vec<f32>],
    h: usize,
    w: usize,
    cols: usize,
    scale: u32,
) -> Result<(), AttackError> {
    if images.is_empty() || images.iter().any(|im| im.len() < h * w) {
        return Err(out_err(
            path,
            format!("need images of at least {h}×{w} values"),
        ));
    }
    let cols = cols.max(1);
    let rows = images.len().div_ceil(cols);
    let pad = 2u32;
    let cw = w as u32 * scale + pad;
    let chh = h as u32 * scale + pad;
    let root = BitMapBackend::new(path, (cols as u32 * cw + pad, rows as u32 * chh + pad))
        .into_drawing_area();
    root.fill(&RGBColor(128, 128, 128))
        .map_err(|e| out_err(path, e))?;
    for (k, im) in images.iter().enumerate() {
        let (ox, oy) = ((k % cols) as u32 * cw + pad, (k / cols) as u32 * chh + pad);
        for y in 0..h {
            for x in 0..w {
                let v = (im[y * w + x].clamp(0.0, 1.0) * 255.0).round() as u8;
                let x0 = (ox + x as u32 * scale) as i32;
                let y0 = (oy + y as u32 * scale) as i32;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + scale as i32, y0 + scale as i32)],
                    RGBColor(v, v, v).filled(),
                ))
                .map_err(|e| out_err(path, e))?;
            }
        }
    }
    root.present().map_err(|e| out_err(path, e))?;
    Ok(())
}

/// Writes `dir/extraction.md`, `dir/fidelity.png` and `dir/accuracy.png` for curve points
/// (one series per strategy).
pub fn write_extraction_report(
    dir: &Path,
    title: &str,
    victim_accuracy: Option<f64>,
    points: &[CurvePoint],
    command: &str,
) -> Result<(), AttackError> {
    std::fs::create_dir_all(dir).map_err(|e| out_err(dir, e))?;
    let mut names: Vec<String> = points.iter().map(|p| p.strategy.clone()).collect();
    names.dedup();
    names.sort();
    names.dedup();
    let series = |f: &dyn Fn(&CurvePoint) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        names
            .iter()
            .map(|n| {
                let mut v: Vec<(f64, f64)> = points
                    .iter()
                    .filter(|p| &p.strategy == n)
                    .map(|p| (p.queries.max(1) as f64, f(p)))
                    .collect();
                v.sort_by(|a, b| a.0.total_cmp(&b.0));
                (n.clone(), v)
            })
            .collect()
    };
    let log_x = points.iter().map(|p| p.queries).max().unwrap_or(1)
        > 10 * points.iter().map(|p| p.queries.max(1)).min().unwrap_or(1);
    plot_series(
        &dir.join("fidelity.png"),
        &format!("{title}: fidelity vs queries"),
        "queries",
        "test agreement with victim",
        &series(&|p| p.fidelity),
        log_x,
        (0.0, 1.0),
    )?;
    plot_series(
        &dir.join("accuracy.png"),
        &format!("{title}: substitute accuracy vs queries"),
        "queries",
        "substitute test accuracy",
        &series(&|p| p.substitute_accuracy),
        log_x,
        (0.0, 1.0),
    )?;
    let mut md = String::new();
    let _ = writeln!(md, "# {title}\n");
    if let Some(a) = victim_accuracy {
        let _ = writeln!(md, "Victim test accuracy: {a:.4}\n");
    }
    let _ = writeln!(md, "Command: `{command}`\n");
    let _ = writeln!(
        md,
        "| strategy | budget | queries | substitute accuracy | fidelity (test) | fidelity (uniform) | seconds | soft targets |\n|---|---:|---:|---:|---:|---:|---:|---|"
    );
    for p in points {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.4} | {:.4} | {:.4} | {:.1} | {} |",
            p.strategy,
            p.budget,
            p.queries,
            p.substitute_accuracy,
            p.fidelity,
            p.fidelity_uniform,
            p.seconds,
            p.soft_targets
        );
    }
    let _ = writeln!(
        md,
        "\n![fidelity](fidelity.png)\n\n![accuracy](accuracy.png)"
    );
    std::fs::write(dir.join("extraction.md"), md).map_err(|e| out_err(dir, e))
}

/// Writes `dir/membership.md` and `dir/roc.png` (log–log ROC) for membership results.
pub fn write_membership_report(
    dir: &Path,
    title: &str,
    results: &[MembershipResult],
    command: &str,
) -> Result<(), AttackError> {
    std::fs::create_dir_all(dir).map_err(|e| out_err(dir, e))?;
    let series: Vec<(String, Vec<(f64, f64)>)> = results
        .iter()
        .map(|r| {
            (
                format!("{} (AUC {:.3})", r.attack, r.auc),
                r.roc
                    .fpr
                    .iter()
                    .zip(&r.roc.tpr)
                    .filter(|(f, _)| **f > 0.0)
                    .map(|(f, t)| (*f, *t))
                    .collect(),
            )
        })
        .collect();
    plot_series(
        &dir.join("roc.png"),
        &format!("{title}: ROC"),
        "false-positive rate",
        "true-positive rate",
        &series,
        true,
        (0.0, 1.0),
    )?;
    let mut md = String::new();
    let _ = writeln!(md, "# {title}\n\nCommand: `{command}`\n");
    let _ = writeln!(
        md,
        "| attack | AUC | TPR @ 0.1% FPR | TPR @ 1% FPR | best balanced accuracy |\n|---|---:|---:|---:|---:|"
    );
    for r in results {
        let _ = writeln!(
            md,
            "| {} | {:.4} | {:.4} | {:.4} | {:.4} |",
            r.attack, r.auc, r.tpr_at_0_1pct_fpr, r.tpr_at_1pct_fpr, r.best_accuracy
        );
    }
    let _ = writeln!(md, "\n![ROC](roc.png)");
    std::fs::write(dir.join("membership.md"), md).map_err(|e| out_err(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("grid.png");
        save_image_grid(&p, &[vec![0.0; 4], vec![1.0; 4]], 2, 2, 2, 3).unwrap();
        assert!(std::fs::metadata(&p).unwrap().len() > 0);
        assert!(save_image_grid(&p, &[vec![0.0; 3]], 2, 2, 1, 1).is_err());
        let q = dir.path().join("line.png");
        plot_series(
            &q,
            "t",
            "x",
            "y",
            &[("a".into(), vec![(1.0, 0.5), (100.0, 0.9)])],
            true,
            (0.0, 1.0),
        )
        .unwrap();
        assert!(std::fs::metadata(&q).unwrap().len() > 0);
    }
}
