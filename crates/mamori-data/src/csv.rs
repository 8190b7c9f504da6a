//! CSV with a label column (UCI digits: 64 features then the label), optionally gzipped.
//!
//! Every row must have the same number of fields and every field must be a number; the label
//! field must be a non-negative integer. A first line whose fields are all non-numeric is taken
//! as a header. Errors name the file, the line and the column.

use crate::read::read_maybe_gz;
use crate::DataError;
use mamori_core::FileDigest;
use std::path::Path;

/// Which column holds the label.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LabelColumn {
    /// The last column (UCI digits).
    #[default]
    Last,
    /// The column at this 0-based index.
    Index(usize),
    /// The column with this header name (the file must have a header line).
    Name(String),
}

/// How to read a CSV file.
#[derive(Clone, Debug)]
pub struct CsvOptions {
    /// Which column holds the label.
    pub label_column: LabelColumn,
    /// Multiplier applied to every feature (digits: `1/16`, so features lie in `[0, 1]`).
    pub scale: f32,
    /// Field separator.
    pub delimiter: char,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            label_column: LabelColumn::Last,
            scale: 1.0,
            delimiter: ',',
        }
    }
}

/// Features and labels read from a CSV file.
#[derive(Debug)]
pub struct CsvTable {
    /// Features per row (all columns but the label).
    pub features: usize,
    /// Row-major features, scaled.
    pub x: Vec<f32>,
    /// Labels.
    pub y: Vec<usize>,
    /// Header names, if the file had a header line.
    pub header: Option<Vec<String>>,
    /// Digest of the file as stored.
    pub digest: FileDigest,
}

/// Reads a CSV (or gzipped CSV) file.
pub fn read_csv(path: &Path, opts: &CsvOptions) -> Result<CsvTable, DataError> {
    let f = read_maybe_gz(path)?;
    let text = std::str::from_utf8(&f.content)
        .map_err(|e| DataError::malformed(path, format!("not UTF-8 text: {e}")))?;
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty())
        .peekable();
    let split = |l: &str| -> Vec<String> {
        l.split(opts.delimiter)
            .map(|s| s.trim().to_string())
            .collect()
    };
    let mut header = None;
    if let Some((_, first)) = lines.peek() {
        let fields = split(first);
        if fields.iter().all(|s| s.parse::<f64>().is_err()) {
            header = Some(fields);
            lines.next();
        }
    }
    let mut width: Option<usize> = header.as_ref().map(|h| h.len());
    let mut label_at: Option<usize> = None;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for (lineno, line) in lines {
        let fields = split(line);
        let w = *width.get_or_insert(fields.len());
        if fields.len() != w {
            return Err(DataError::malformed(
                path,
                format!(
                    "ragged CSV: line {lineno} has {} fields, expected {w}",
                    fields.len()
                ),
            ));
        }
        if w < 2 {
            return Err(DataError::malformed(
                path,
                format!("line {lineno}: need at least one feature and a label, found {w} field(s)"),
            ));
        }
        let li = match label_at {
            Some(i) => i,
            None => {
                let i = label_index(path, &opts.label_column, w, header.as_deref())?;
                label_at = Some(i);
                i
            }
        };
        for (c, s) in fields.iter().enumerate() {
            if c == li {
                let label = s.parse::<usize>().ok().or_else(|| {
                    // Accept "3.0" but not "2.5" or "-1".
                    s.parse::<f64>()
                        .ok()
                        .filter(|v| *v >= 0.0 && v.fract() == 0.0 && *v < 1e9)
                        .map(|v| v as usize)
                });
                match label {
                    Some(l) => y.push(l),
                    None => {
                        return Err(DataError::malformed(
                            path,
                            format!(
                            "line {lineno}, column {}: label '{s}' is not a non-negative integer",
                            c + 1
                        ),
                        ))
                    }
                }
            } else {
                match s.parse::<f32>() {
                    Ok(v) if v.is_finite() => x.push(v * opts.scale),
                    _ => {
                        return Err(DataError::malformed(
                            path,
                            format!(
                                "non-numeric CSV: line {lineno}, column {}: '{s}' is not a finite number",
                                c + 1
                            ),
                        ))
                    }
                }
            }
        }
    }
    if y.is_empty() {
        return Err(DataError::malformed(path, "no data rows"));
    }
    Ok(CsvTable {
        features: width.unwrap_or(1) - 1,
        x,
        y,
        header,
        digest: f.digest,
    })
}

fn label_index(
    path: &Path,
    which: &LabelColumn,
    width: usize,
    header: Option<&[String]>,
) -> Result<usize, DataError> {
    match which {
        LabelColumn::Last => Ok(width - 1),
        LabelColumn::Index(i) if *i < width => Ok(*i),
        LabelColumn::Index(i) => Err(DataError::malformed(
            path,
            format!(
                "label column {i} does not exist (rows have {width} columns, 0..{})",
                width - 1
            ),
        )),
        LabelColumn::Name(n) => header
            .and_then(|h| h.iter().position(|c| c == n))
            .ok_or_else(|| {
                DataError::malformed(
                    path,
                    match header {
                        Some(h) => {
                            format!("no column named '{n}' in the header ({})", h.join(", "))
                        }
                        None => format!(
                            "label column '{n}' asked by name but the file has no header line"
                        ),
                    },
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str, opts: &CsvOptions) -> Result<CsvTable, DataError> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.csv");
        std::fs::write(&p, text).unwrap();
        read_csv(&p, opts)
    }

    #[test]
    fn reads_features_and_last_column_label() {
        let t = csv(
            "0,16,1\n8,4,0\n",
            &CsvOptions {
                scale: 1.0 / 16.0,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(t.features, 2);
        assert_eq!(t.y, vec![1, 0]);
        assert_eq!(t.x, vec![0.0, 1.0, 0.5, 0.25]);
        assert!(t.header.is_none());
    }

    #[test]
    fn label_column_by_index_and_name() {
        let o = CsvOptions {
            label_column: LabelColumn::Index(0),
            ..Default::default()
        };
        let t = csv("2,0.5,0.25\n1,1,1\n", &o).unwrap();
        assert_eq!(t.y, vec![2, 1]);
        assert_eq!(t.x, vec![0.5, 0.25, 1.0, 1.0]);
        let o = CsvOptions {
            label_column: LabelColumn::Name("cls".into()),
            ..Default::default()
        };
        let t = csv("a,cls,b\n1,3,2\n", &o).unwrap();
        assert_eq!(t.y, vec![3]);
        assert_eq!(t.header.unwrap(), vec!["a", "cls", "b"]);
        let e = csv("a,b\n1,2\n", &o).unwrap_err().to_string();
        assert!(e.contains("no column named 'cls'"), "{e}");
        let o = CsvOptions {
            label_column: LabelColumn::Index(5),
            ..Default::default()
        };
        assert!(csv("1,2\n", &o)
            .unwrap_err()
            .to_string()
            .contains("label column 5 does not exist"));
    }

    #[test]
    fn ragged_rows_are_reported_with_line() {
        let e = csv("1,2,0\n1,2,3,0\n", &CsvOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.csv: ragged CSV: line 2 has 4 fields, expected 3"),
            "{e}"
        );
    }

    #[test]
    fn non_numeric_field_is_reported() {
        let e = csv("1,2,0\n1,x,1\n", &CsvOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.csv: non-numeric CSV: line 2, column 2: 'x' is not a finite number"),
            "{e}"
        );
        let e = csv("1,2,0.5\n", &CsvOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("label '0.5' is not a non-negative integer"),
            "{e}"
        );
    }

    #[test]
    fn header_only_or_blank_is_no_data() {
        let e = csv("a,b,c\n\n", &CsvOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.csv: no data rows"), "{e}");
    }
}
