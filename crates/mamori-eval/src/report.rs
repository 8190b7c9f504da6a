//! Reports: `report.json`, `report.md` with PNG plots, and a self-contained `report.html`
//! (the same plots inlined as base64 data URIs).
//!
//! Plots (plotters, bitmap backend): fidelity vs queries per policy (one per attack), the
//! detection delay (attacker queries at the first alarm and at the block, per attack and
//! detecting policy), and benign cost vs protection (per policy: benign accuracy cost against
//! the attackers' mean fidelity).

use crate::error::EvalError;
use crate::runner::{queries_to_90, CellResult, EvalResults};
use base64::Engine as _;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Files a report consists of.
#[derive(Clone, Debug)]
pub struct ReportFiles {
    /// `report.json`.
    pub json: PathBuf,
    /// `report.md`.
    pub markdown: PathBuf,
    /// `report.html`.
    pub html: PathBuf,
    /// The PNG plots.
    pub plots: Vec<PathBuf>,
}

fn out_err(path: &Path, e: impl std::fmt::Display) -> EvalError {
    EvalError::io(path, e)
}

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn fmt_opt(v: Option<u64>) -> String {
    v.map_or("–".into(), |q| q.to_string())
}

fn pct(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

/// The comparison table (Markdown).
pub fn comparison_markdown(r: &EvalResults) -> String {
    let mut s = String::new();
    s.push_str(
        "| attack | query efficiency: queries to 90% of final fidelity | fidelity (unprotected) | \
         substitute accuracy | detection risk: runs detected | median queries to detection | \
         runs blocked | time (s) | queries |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in &r.comparison {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {}/{} | {} | {}/{} | {:.1} | {:.0} |",
            c.attack,
            fmt_opt(c.queries_to_90),
            pct(c.fidelity),
            pct(c.accuracy),
            c.detected_runs,
            c.detection_runs,
            c.median_queries_to_detection
                .map_or("–".into(), |q| format!("{q:.0}")),
            c.blocked_runs,
            c.detection_runs,
            c.seconds,
            c.queries
        );
    }
    s
}

/// The per-cell table (Markdown).
pub fn cells_markdown(r: &EvalResults) -> String {
    let mut s = String::new();
    s.push_str(
        "| attack | policy | queries | fidelity | accuracy | first alarm (detector) | degraded at | \
         blocked at | watermark (matches/marks, p) | benign false alarms | benign acc. cost | \
         benign refused | latency added (ms/request) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in &r.cells {
        let wm = c.watermark.as_ref().map_or("–".into(), |w| {
            if w.marks == 0 {
                "no marks".into()
            } else {
                format!(
                    "{}/{} p=10^{:.1} {}",
                    w.matches,
                    w.marks,
                    w.log10_p_value,
                    if w.verified {
                        "**convicted**"
                    } else {
                        "not convicted"
                    }
                )
            }
        });
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {:+.2} pp | {} | {:.3} |",
            c.attack,
            c.policy,
            c.queries,
            pct(c.fidelity),
            pct(c.substitute_accuracy),
            match (&c.first_alarm, &c.first_alarm_detector) {
                (Some(q), Some(d)) => format!("{q} ({d})"),
                _ => "–".into(),
            },
            fmt_opt(c.degraded_at),
            fmt_opt(c.blocked_at),
            wm,
            c.benign_false_alarms,
            c.benign.len(),
            100.0 * c.benign_accuracy_cost,
            pct(c.benign_refused_share),
            c.latency_added_ms
        );
    }
    s
}

fn policies(r: &EvalResults) -> Vec<String> {
    r.config.matrix.policies.clone()
}

fn cells_of<'a>(r: &'a EvalResults, attack: &str, policy: &str) -> Vec<&'a CellResult> {
    r.cells
        .iter()
        .filter(|c| c.attack == attack && c.policy == policy)
        .collect()
}

/// Fidelity vs queries, one series per policy, for `attack`.
pub fn plot_fidelity(r: &EvalResults, attack: &str, path: &Path) -> Result<(), EvalError> {
    let series: Vec<(String, Vec<(f64, f64)>)> = policies(r)
        .iter()
        .filter_map(|p| {
            let c = cells_of(r, attack, p).into_iter().next()?;
            let pts: Vec<(f64, f64)> = c
                .curve
                .iter()
                .map(|q| (q.queries as f64, q.fidelity))
                .collect();
            (!pts.is_empty()).then(|| (p.clone(), pts))
        })
        .collect();
    if series.is_empty() {
        return Err(out_err(path, "no curve to plot"));
    }
    mamori_attack::report::plot_series(
        path,
        &format!("{attack}: substitute fidelity vs queries answered"),
        "queries answered to the attacker",
        "fidelity (agreement with the victim)",
        &series,
        false,
        (0.0, 1.0),
    )
    .map_err(|e| out_err(path, e))
}

/// Horizontal bars: attacker queries at the first alarm (and at the block, darker) per
/// (attack, detecting policy).
pub fn plot_detection(r: &EvalResults, path: &Path) -> Result<(), EvalError> {
    let rows: Vec<(String, Option<u64>, Option<u64>, u64)> = r
        .cells
        .iter()
        .filter(|c| c.policy_detects && c.repeat == 0)
        .map(|c| {
            (
                format!("{} / {}", c.attack, c.policy),
                c.first_alarm,
                c.blocked_at,
                c.queries.max(c.budget),
            )
        })
        .collect();
    if rows.is_empty() {
        return Err(out_err(path, "no detecting policy in the matrix"));
    }
    let xmax = rows.iter().map(|r| r.3).max().unwrap_or(1).max(1) as f64 * 1.05;
    let h = (80 + 40 * rows.len()) as u32;
    let root = BitMapBackend::new(path, (900, h.max(300))).into_drawing_area();
    root.fill(&WHITE).map_err(|e| out_err(path, e))?;
    let n = rows.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Detection delay: attacker queries at first alarm (light) and block (dark)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(220)
        .build_cartesian_2d(0.0..xmax, 0.0..n as f64)
        .map_err(|e| out_err(path, e))?;
    let labels: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    chart
        .configure_mesh()
        .x_desc("attacker queries answered")
        .y_labels(n)
        .y_label_formatter(&|y| {
            let i = (*y - 0.5).round();
            if i >= 0.0 && (i as usize) < labels.len() && ((*y - 0.5) - i).abs() < 1e-6 {
                labels[i as usize].clone()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(|e| out_err(path, e))?;
    for (i, (_, alarm, block, _)) in rows.iter().enumerate() {
        let y0 = i as f64 + 0.15;
        let y1 = i as f64 + 0.85;
        if let Some(a) = alarm {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y0), (*a as f64, y1)],
                    COLORS[1].mix(0.5).filled(),
                )))
                .map_err(|e| out_err(path, e))?;
        }
        if let Some(b) = block {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y0 + 0.2), (*b as f64, y1 - 0.2)],
                    COLORS[3].filled(),
                )))
                .map_err(|e| out_err(path, e))?;
        }
    }
    root.present().map_err(|e| out_err(path, e))?;
    Ok(())
}

/// Per policy: benign accuracy cost (x, percentage points) against the attackers' mean
/// fidelity (y).
pub fn plot_cost(r: &EvalResults, path: &Path) -> Result<(), EvalError> {
    let pts: Vec<(String, f64, f64)> = policies(r)
        .iter()
        .filter_map(|p| {
            let cs: Vec<&CellResult> = r.cells.iter().filter(|c| &c.policy == p).collect();
            if cs.is_empty() {
                return None;
            }
            let n = cs.len() as f64;
            let cost = cs
                .iter()
                .map(|c| c.benign_accuracy_cost + c.benign_refused_share)
                .sum::<f64>()
                / n;
            let fid = cs.iter().map(|c| c.fidelity).sum::<f64>() / n;
            Some((p.clone(), 100.0 * cost, fid))
        })
        .collect();
    let xmin = pts.iter().map(|p| p.1).fold(0.0, f64::min) - 0.5;
    let xmax = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.2 + 0.5;
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| out_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Benign cost vs protection (per policy, mean over attacks)",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(xmin..xmax, 0.0..1.0)
        .map_err(|e| out_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("benign cost: accuracy lost + queries refused (percentage points)")
        .y_desc("attacker substitute fidelity")
        .draw()
        .map_err(|e| out_err(path, e))?;
    for (i, (name, x, y)) in pts.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(std::iter::once(Circle::new((*x, *y), 6, c.filled())))
            .map_err(|e| out_err(path, e))?;
        chart
            .draw_series(std::iter::once(Text::new(
                name.clone(),
                (*x, *y + 0.03),
                ("sans-serif", 15).into_font(),
            )))
            .map_err(|e| out_err(path, e))?;
    }
    root.present().map_err(|e| out_err(path, e))?;
    Ok(())
}

/// The Markdown report (plots referenced as files next to it).
pub fn markdown(r: &EvalResults, plots: &[(String, String)], command: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# mamori evaluation report\n");
    let _ = writeln!(
        s,
        "- command: `{command}`\n- victim: `{}` ({}, {}), accuracy on the evaluation set {}\n\
         - transport: {:?}; seed {}; {} cells; wall time {:.0} s on {} CPU thread(s)\n",
        r.victim.name,
        r.victim.architecture,
        r.victim.dataset,
        pct(r.victim.accuracy),
        r.transport,
        r.config.seed,
        r.cells.len(),
        r.wall_seconds,
        r.threads
    );
    let _ = writeln!(s, "## Comparison by attack type\n");
    s.push_str(&comparison_markdown(r));
    s.push_str(
        "\nQuery efficiency and fidelity are measured without protection (`none`); detection \
         risk over the policies that run the detectors; a run is detected when the policy acted \
         on one of the attacker's alarms (action above `allow`: OOD and HODA alarms alone are \
         suspicion and do not count).\n\n",
    );
    let _ = writeln!(s, "## Every cell\n");
    s.push_str(&cells_markdown(r));
    let _ = writeln!(s, "\n## Plots\n");
    for (title, file) in plots {
        let _ = writeln!(s, "### {title}\n\n![{title}]({file})\n");
    }
    s
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn md_table_to_html(md: &str) -> String {
    let mut out = String::from("<table>\n");
    for (i, line) in md.lines().filter(|l| l.starts_with('|')).enumerate() {
        if i == 1 {
            continue;
        }
        let tag = if i == 0 { "th" } else { "td" };
        out.push_str("<tr>");
        for cell in line.trim_matches('|').split('|') {
            let c = html_escape(cell.trim()).replace("**", "");
            let _ = write!(out, "<{tag}>{c}</{tag}>");
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

/// The self-contained HTML page.
pub fn html(
    r: &EvalResults,
    plots: &[(String, PathBuf)],
    command: &str,
) -> Result<String, EvalError> {
    let mut s = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>mamori evaluation</title>\
         <style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;}\
         table{border-collapse:collapse;font-size:13px;margin:1em 0;}\
         td,th{border:1px solid #ccc;padding:3px 6px;}th{background:#eee;}\
         img{max-width:100%;}</style></head><body>\n<h1>mamori evaluation report</h1>\n",
    );
    let _ = writeln!(
        s,
        "<p>Command: <code>{}</code><br>Victim: <code>{}</code> ({}, {}), accuracy {}<br>\
         Transport {:?}, seed {}, {} cells, wall time {:.0} s on {} thread(s)</p>",
        html_escape(command),
        html_escape(&r.victim.name),
        html_escape(&r.victim.architecture),
        html_escape(&r.victim.dataset),
        pct(r.victim.accuracy),
        r.transport,
        r.config.seed,
        r.cells.len(),
        r.wall_seconds,
        r.threads
    );
    s.push_str("<h2>Comparison by attack type</h2>\n");
    s.push_str(&md_table_to_html(&comparison_markdown(r)));
    s.push_str("<h2>Every cell</h2>\n");
    s.push_str(&md_table_to_html(&cells_markdown(r)));
    s.push_str("<h2>Plots</h2>\n");
    for (title, path) in plots {
        let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let _ = writeln!(
            s,
            "<h3>{}</h3>\n<img alt=\"{}\" src=\"data:image/png;base64,{b64}\">",
            html_escape(title),
            html_escape(title)
        );
    }
    s.push_str("</body></html>\n");
    Ok(s)
}

/// Writes `report.json`, the plots, `report.md` and `report.html` into `dir`.
pub fn write(r: &EvalResults, dir: &Path, command: &str) -> Result<ReportFiles, EvalError> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let json = dir.join("report.json");
    let text = serde_json::to_string_pretty(r).map_err(|e| out_err(&json, e))?;
    std::fs::write(&json, text).map_err(|e| EvalError::io(&json, e))?;
    let mut plots: Vec<(String, PathBuf)> = Vec::new();
    for a in &r.config.attacks {
        let label = a.label();
        let p = dir.join(format!(
            "fidelity-{}.png",
            label.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        ));
        if plot_fidelity(r, &label, &p).is_ok() {
            plots.push((format!("Fidelity vs queries: {label}"), p));
        }
    }
    let p = dir.join("detection-delay.png");
    if plot_detection(r, &p).is_ok() {
        plots.push(("Detection delay".into(), p));
    }
    let p = dir.join("benign-cost.png");
    plot_cost(r, &p)?;
    plots.push(("Benign cost vs protection".into(), p));
    let rel: Vec<(String, String)> = plots
        .iter()
        .map(|(t, p)| {
            (
                t.clone(),
                p.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            )
        })
        .collect();
    let markdown_path = dir.join("report.md");
    std::fs::write(&markdown_path, markdown(r, &rel, command))
        .map_err(|e| EvalError::io(&markdown_path, e))?;
    let html_path = dir.join("report.html");
    std::fs::write(&html_path, html(r, &plots, command)?)
        .map_err(|e| EvalError::io(&html_path, e))?;
    Ok(ReportFiles {
        json,
        markdown: markdown_path,
        html: html_path,
        plots: plots.into_iter().map(|p| p.1).collect(),
    })
}

/// Queries to 90% of final fidelity for a cell (re-exported for the demo).
pub fn cell_queries_to_90(c: &CellResult) -> Option<u64> {
    queries_to_90(&c.curve)
}
