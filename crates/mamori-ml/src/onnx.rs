//! ONNX models run by tract (pure Rust, `tract-onnx`), behind the [`Model`] trait.
//!
//! An [`OnnxModel`] is built from an `.onnx` file and an optional model card `<file>.json`
//! beside it (`model.onnx` → `model.onnx.json`). Without a card, the card is inferred from the
//! graph: the input shape from the graph's first (non-initializer) input, FP32 in `[0, 1]`,
//! class names `0..c-1` from the output width, the name from the file stem, and the output
//! kind from the graph's last node (`Softmax` → probabilities, anything else → logits).
//!
//! The batch dimension is made symbolic (`N`) before tract optimises the graph, so one
//! optimised plan serves every batch size. Graphs whose shapes tract cannot optimise with a
//! symbolic batch fall back to one plan per batch size, kept in a small cache.

use crate::api::MlError;
use mamori_core::Tensor as CoreTensor;
use mamori_core::{DatasetRef, Model, ModelCard, ModelError, Normalisation, OutputKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::DimLike;

type Plan = Arc<TypedRunnableModel>;

/// Plans kept when the batch cannot be symbolic (one per batch size, oldest evicted first).
const PLAN_CACHE: usize = 8;

/// How the graph is run.
enum Runner {
    /// One plan with a symbolic batch dimension.
    Symbolic(Plan),
    /// The typed graph with the batch fixed per call; plans cached by batch size.
    PerBatch {
        typed: Box<TypedModel>,
        batch: Symbol,
        cache: Mutex<Vec<(usize, Plan)>>,
    },
}

/// An ONNX classifier run by tract. Gradients are not available (opaque graph).
pub struct OnnxModel {
    card: ModelCard,
    path: PathBuf,
    runner: Runner,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("name", &self.card.name)
            .field("input_shape", &self.card.input_shape)
            .field("classes", &self.card.class_names.len())
            .field(
                "symbolic_batch",
                &matches!(self.runner, Runner::Symbolic(_)),
            )
            .finish()
    }
}

/// The card path of an ONNX file: `<file>.json`.
pub fn card_path(onnx: &Path) -> PathBuf {
    let mut s = onnx.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

fn invalid(path: &Path, message: impl Into<String>) -> MlError {
    MlError::InvalidModel {
        path: path.display().to_string(),
        message: message.into(),
    }
}

impl OnnxModel {
    /// Loads `path` and its card `<path>.json` if present.
    pub fn load(path: &Path) -> Result<OnnxModel, MlError> {
        let cp = card_path(path);
        let card = if cp.is_file() {
            let text = std::fs::read_to_string(&cp).map_err(|e| MlError::File {
                path: cp.display().to_string(),
                message: e.to_string(),
            })?;
            Some(
                serde_json::from_str::<ModelCard>(&text)
                    .map_err(|e| invalid(&cp, format!("bad model card: {e}")))?,
            )
        } else {
            None
        };
        Self::load_with_card(path, card)
    }

    /// Loads `path` with an explicit card (`None`: infer it from the graph).
    pub fn load_with_card(path: &Path, card: Option<ModelCard>) -> Result<OnnxModel, MlError> {
        Self::load_inner(path, card, true)
    }

    /// Builds a model from the bytes of an `.onnx` file held in memory (e.g. decrypted from an
    /// encrypted model directory: the plaintext never touches the disk). `path` names the file
    /// the bytes came from, in errors and in the inferred card's name; `card` as in
    /// [`OnnxModel::load_with_card`].
    pub fn from_bytes(
        bytes: &[u8],
        path: &Path,
        card: Option<ModelCard>,
    ) -> Result<OnnxModel, MlError> {
        Self::build(bytes, path, card, true)
    }

    fn load_inner(
        path: &Path,
        card: Option<ModelCard>,
        try_symbolic: bool,
    ) -> Result<OnnxModel, MlError> {
        let bytes = std::fs::read(path).map_err(|e| MlError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::build(&bytes, path, card, try_symbolic)
    }

    fn build(
        bytes: &[u8],
        path: &Path,
        card: Option<ModelCard>,
        try_symbolic: bool,
    ) -> Result<OnnxModel, MlError> {
        if bytes.is_empty() {
            return Err(invalid(path, "empty file"));
        }
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| invalid(path, format!("not an ONNX model: {e:#}")))?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| invalid(path, "the ONNX model has no graph"))?;
        let input = graph_input(graph).ok_or_else(|| invalid(path, "the graph has no input"))?;
        let graph_sample = sample_dims(input);
        let graph_kind = output_kind_of(graph);

        let sample_shape: Vec<usize> = match (&card, &graph_sample) {
            (Some(c), Some(g)) if &c.input_shape != g => {
                return Err(invalid(
                    path,
                    format!(
                        "the card's input_shape {:?} differs from the graph's input {:?}",
                        c.input_shape, g
                    ),
                ))
            }
            (Some(c), _) => c.input_shape.clone(),
            (None, Some(g)) => g.clone(),
            (None, None) => {
                return Err(invalid(
                    path,
                    format!(
                    "cannot infer the input shape of '{}' from the graph; write a model card {}",
                    input.name,
                    card_path(path).display()
                ),
                ))
            }
        };

        let mut model = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| invalid(path, format!("cannot build the graph: {e:#}")))?;
        let batch = model.sym("N");
        let mut dims: TVec<TDim> = tvec![batch.clone().into()];
        dims.extend(sample_shape.iter().map(|&d| d.to_dim()));
        model
            .set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), dims))
            .map_err(|e| invalid(path, format!("cannot set the input shape: {e:#}")))?;
        let typed = model
            .into_typed()
            .map_err(|e| invalid(path, format!("cannot type the graph: {e:#}")))?;
        let out_fact = typed
            .output_fact(0)
            .map_err(|e| invalid(path, format!("no output: {e:#}")))?
            .clone();
        let classes = match out_fact.shape.iter().last().and_then(|d| d.to_usize().ok()) {
            Some(c) if out_fact.shape.len() == 2 => c,
            _ => {
                return Err(invalid(
                    path,
                    format!(
                        "the output must be [batch, classes], got {:?}",
                        out_fact.shape
                    ),
                ))
            }
        };
        let card = match card {
            Some(c) => {
                if c.class_names.len() != classes {
                    return Err(invalid(
                        path,
                        format!(
                            "the card names {} classes but the graph outputs {classes}",
                            c.class_names.len()
                        ),
                    ));
                }
                c
            }
            None => inferred_card(path, sample_shape, classes, graph_kind),
        };
        let symbolic = if try_symbolic {
            typed
                .clone()
                .into_optimized()
                .and_then(|m| m.into_runnable())
                .ok()
        } else {
            None
        };
        let runner = match symbolic {
            Some(plan) => Runner::Symbolic(plan),
            None => Runner::PerBatch {
                typed: Box::new(typed),
                batch,
                cache: Mutex::new(Vec::new()),
            },
        };
        Ok(OnnxModel {
            card,
            path: path.to_path_buf(),
            runner,
        })
    }

    /// The file this model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether one plan with a symbolic batch dimension serves every batch size.
    pub fn has_symbolic_batch(&self) -> bool {
        matches!(self.runner, Runner::Symbolic(_))
    }

    /// The raw output tensor `[n, classes]` (logits or probabilities, per the card).
    pub fn raw_output(&self, x: &CoreTensor) -> Result<CoreTensor, ModelError> {
        self.check_input(x)?;
        let n = x.batch_size();
        let rt = |e: TractError| ModelError::Runtime(format!("{}: {e:#}", self.path.display()));
        let plan = match &self.runner {
            Runner::Symbolic(p) => p.clone(),
            Runner::PerBatch {
                typed,
                batch,
                cache,
            } => {
                let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((_, p)) = c.iter().find(|(b, _)| *b == n) {
                    p.clone()
                } else {
                    let subs: HashMap<Symbol, TDim> =
                        [(batch.clone(), (n as i64).to_dim())].into_iter().collect();
                    let p = typed
                        .set_symbols(&subs)
                        .and_then(|m| m.into_optimized())
                        .and_then(|m| m.into_runnable())
                        .map_err(rt)?;
                    if c.len() >= PLAN_CACHE {
                        c.remove(0);
                    }
                    c.push((n, p.clone()));
                    p
                }
            }
        };
        let input = tract_ndarray::ArrayD::from_shape_vec(x.shape().to_vec(), x.data().to_vec())
            .map_err(|e| ModelError::Runtime(e.to_string()))?;
        let out = plan.run(tvec!(Tensor::from(input).into())).map_err(rt)?;
        let t = out[0].to_plain_array_view::<f32>().map_err(rt)?;
        let shape = t.shape().to_vec();
        if shape.len() != 2 || shape[0] != n || shape[1] != self.card.class_names.len() {
            return Err(ModelError::Runtime(format!(
                "{}: output shape {shape:?}, expected [{n}, {}]",
                self.path.display(),
                self.card.class_names.len()
            )));
        }
        Ok(CoreTensor::new(shape, t.iter().copied().collect())?)
    }
}

impl Model for OnnxModel {
    fn card(&self) -> &ModelCard {
        &self.card
    }

    /// Logits; for a graph that outputs probabilities, their natural log (softmax of which gives
    /// the probabilities back).
    fn logits(&self, x: &CoreTensor) -> Result<CoreTensor, ModelError> {
        let mut out = self.raw_output(x)?;
        if self.card.output_kind == OutputKind::Probabilities {
            for v in out.data_mut() {
                *v = v.max(f32::MIN_POSITIVE).ln();
            }
        }
        Ok(out)
    }

    fn predict(&self, x: &CoreTensor) -> Result<CoreTensor, ModelError> {
        let mut out = self.raw_output(x)?;
        match self.card.output_kind {
            OutputKind::Logits => mamori_core::softmax_rows(&mut out),
            OutputKind::Probabilities => {
                // Renormalise away the graph's rounding so rows sum to 1.
                let c = out.sample_len().max(1);
                for row in out.data_mut().chunks_mut(c) {
                    let s: f32 = row.iter().sum();
                    if s > 0.0 {
                        row.iter_mut().for_each(|v| *v /= s);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The graph's first input that is not an initializer (old IR versions list weights as inputs).
fn graph_input(g: &pb::GraphProto) -> Option<&pb::ValueInfoProto> {
    g.input
        .iter()
        .find(|i| !g.initializer.iter().any(|t| t.name == i.name))
}

/// The input's per-sample dims, if all of them are fixed numbers.
fn sample_dims(v: &pb::ValueInfoProto) -> Option<Vec<usize>> {
    use pb::tensor_shape_proto::dimension::Value;
    let pb::type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
    let dims = &t.shape.as_ref()?.dim;
    if dims.len() < 2 {
        return None;
    }
    dims[1..]
        .iter()
        .map(|d| match d.value {
            Some(Value::DimValue(n)) if n > 0 => Some(n as usize),
            _ => None,
        })
        .collect()
}

/// `Probabilities` if the node producing the graph's output is a Softmax.
fn output_kind_of(g: &pb::GraphProto) -> OutputKind {
    let Some(out) = g.output.first() else {
        return OutputKind::Logits;
    };
    match g.node.iter().rev().find(|n| n.output.contains(&out.name)) {
        Some(n) if n.op_type == "Softmax" => OutputKind::Probabilities,
        _ => OutputKind::Logits,
    }
}

fn inferred_card(
    path: &Path,
    input_shape: Vec<usize>,
    classes: usize,
    kind: OutputKind,
) -> ModelCard {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "onnx".into());
    let mut extra = serde_json::Map::new();
    extra.insert("card".into(), "inferred from the ONNX graph".into());
    ModelCard {
        name,
        architecture: "onnx".into(),
        architecture_detail: serde_json::Value::Null,
        input_shape,
        input_dtype: "FP32".into(),
        input_range: [0.0, 1.0],
        normalisation: Normalisation::default(),
        class_names: (0..classes).map(|c| c.to_string()).collect(),
        output_kind: kind,
        dataset: DatasetRef::default(),
        test_accuracy: None,
        training_time_s: None,
        seed: None,
        extra,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_model_is_send_and_sync() {
        fn is<T: Send + Sync>() {}
        is::<OnnxModel>();
    }

    #[test]
    fn a_model_from_bytes_answers_as_the_file_and_bad_bytes_are_named() {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cnn_probs.onnx");
        let bytes = std::fs::read(&f).unwrap();
        let label = Path::new("decrypted/cnn.onnx");
        let mem = OnnxModel::from_bytes(&bytes, label, None).unwrap();
        let file = OnnxModel::load(&f).unwrap();
        assert_eq!(mem.path(), label);
        assert_eq!(mem.card().name, "cnn");
        let x = CoreTensor::new(
            vec![2, 1, 28, 28],
            (0..2 * 784).map(|i| (i % 13) as f32 / 13.0).collect(),
        )
        .unwrap();
        assert_eq!(
            mem.predict(&x).unwrap().data(),
            file.predict(&x).unwrap().data()
        );
        for (bad, why) in [
            (&b""[..], "empty file"),
            (&b"not onnx"[..], "not an ONNX model"),
        ] {
            let e = OnnxModel::from_bytes(bad, label, None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why) && e.contains("decrypted/cnn.onnx"), "{e}");
        }
    }

    #[test]
    fn per_batch_plans_match_the_symbolic_plan() {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cnn_logits.onnx");
        let sym = OnnxModel::load_inner(&f, None, true).unwrap();
        let per = OnnxModel::load_inner(&f, None, false).unwrap();
        assert!(sym.has_symbolic_batch() && !per.has_symbolic_batch());
        let x = CoreTensor::new(
            vec![3, 1, 28, 28],
            (0..3 * 784).map(|i| (i % 17) as f32 / 17.0).collect(),
        )
        .unwrap();
        for n in [3, 1, 2, 3] {
            let part = x.slice_rows(0, n);
            let a = sym.logits(&part).unwrap();
            let b = per.logits(&part).unwrap();
            for (u, v) in a.data().iter().zip(b.data()) {
                assert!((u - v).abs() < 1e-5, "{u} vs {v}");
            }
        }
        let Runner::PerBatch { cache, .. } = &per.runner else {
            unreachable!()
        };
        assert_eq!(cache.lock().unwrap().len(), 3);
    }

    #[test]
    fn card_path_appends_json() {
        assert_eq!(
            card_path(Path::new("a/m.onnx")),
            PathBuf::from("a/m.onnx.json")
        );
    }
}
