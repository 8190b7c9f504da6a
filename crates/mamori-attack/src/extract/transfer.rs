//! Transfer-learning extraction: the substitute's feature layers start from a model trained
//! on another, public dataset, and the whole network is fine-tuned on the stolen answers.
//!
//! The setting of Knockoff Nets (Orekondy et al., CVPR 2019, pretrained substitutes) and of
//! Atli et al., "Extraction of Complex DNN Models: Real Threat or Boogeyman?" (AAAI-EDSMLS
//! 2020), where a pretrained feature extractor makes far fewer queries necessary; e.g. MNIST
//! features for a Fashion-MNIST victim.

use super::{
    check_data_shape, query_all, sample_indices, substitute_card, AttackInfo, Extraction,
    ExtractionAttack, ExtractionContext, Meter, Need,
};
use crate::error::AttackError;
use crate::oracle::{answer_targets, is_soft};
use mamori_core::Oracle;
use mamori_ml::{NativeModel, Network, Targets, TrainConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Pre-train on `ctx.aux_data`, copy every layer but the last, fine-tune on answers to
/// `ctx.query_data` samples.
#[derive(Clone, Debug)]
pub struct TransferExtraction {
    /// Epochs of pre-training on the auxiliary dataset.
    pub pretrain_epochs: usize,
    /// Auxiliary samples used for pre-training (0 = all).
    pub pretrain_samples: usize,
}

impl Default for TransferExtraction {
    fn default() -> Self {
        Self {
            pretrain_epochs: 2,
            pretrain_samples: 20_000,
        }
    }
}

/// Copies the parameters of every layer except the last parameterised one from `src` to
/// `dst` (same architecture, possibly different class counts). Returns layers copied.
pub fn copy_feature_layers(src: &Network, dst: &mut Network) -> usize {
    let last = dst
        .params
        .iter()
        .rposition(|p| !p.weight.is_empty())
        .unwrap_or(0);
    let mut copied = 0;
    for i in 0..last {
        if src.layers.get(i) == dst.layers.get(i)
            && src.params[i].weight.len() == dst.params[i].weight.len()
            && !src.params[i].weight.is_empty()
        {
            dst.params[i] = src.params[i].clone();
            copied += 1;
        }
    }
    copied
}

impl ExtractionAttack for TransferExtraction {
    fn info(&self) -> AttackInfo {
        AttackInfo {
            name: "transfer",
            paper: "Orekondy et al., Knockoff Nets, CVPR 2019 (pretrained substitutes); Atli et al., Extraction of Complex DNN Models, 2020",
            needs: Need::ProbabilitiesPreferred,
            needs_query_data: true,
            fallback: "fine-tunes on labels when probabilities are not disclosed",
        }
    }

    fn extract(
        &self,
        oracle: &mut dyn Oracle,
        ctx: &ExtractionContext<'_>,
    ) -> Result<Extraction, AttackError> {
        let data = ctx.require_query_data("transfer")?;
        check_data_shape(data, oracle, "transfer")?;
        let aux = ctx.aux_data.ok_or_else(|| AttackError::Unsupported {
            attack: "transfer".into(),
            problem: "needs a pre-training dataset (--pretrain-data DATASET)".into(),
        })?;
        check_data_shape(aux, oracle, "transfer")?;
        let meter = Meter::start(oracle);
        let shape = oracle.input_shape();
        let classes = oracle.num_classes();
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        // 1. Feature extractor trained on the public auxiliary task.
        let m = if self.pretrain_samples == 0 {
            aux.len()
        } else {
            self.pretrain_samples.min(aux.len())
        };
        let aidx = sample_indices(&mut rng, aux.len(), m);
        let mut pre = Network::new(&ctx.arch, &shape, aux.num_classes, ctx.seed ^ 0xfea7);
        let pcfg = TrainConfig {
            epochs: self.pretrain_epochs,
            progress: ctx.progress,
            ..ctx.train.clone()
        };
        mamori_ml::train(
            &mut pre,
            &aux.x.select(&aidx),
            &Targets::Labels(aidx.iter().map(|&i| aux.y[i]).collect()),
            &pcfg,
        )?;
        // 2. Substitute with those features, new head.
        let mut net = Network::new(&ctx.arch, &shape, classes, ctx.seed);
        let copied = copy_feature_layers(&pre, &mut net);
        // 3. Stolen answers, fine-tuning.
        let n = ctx.effective_budget(oracle) as usize;
        let idx = sample_indices(&mut rng, data.len(), n);
        let x = data.x.select(&idx);
        let answer = query_all(oracle, &x, ctx, "querying")?;
        let soft = is_soft(answer.disclosure) && ctx.prefer_soft;
        let t = answer_targets(&answer.probs, &answer.labels, soft, ctx.prefer_soft);
        let mut cfg = ctx.train.clone();
        cfg.progress = ctx.progress;
        if n > 0 {
            super::fit_substitute(&mut net, &x, &t, &cfg, ctx.stop.as_ref())?;
        }
        let card = substitute_card(&ctx.arch, &shape, classes, "transfer", ctx.seed);
        let notes = vec![format!(
            "pre-trained on {m} samples of '{}' ({} epochs), copied {copied} layers",
            aux.name, self.pretrain_epochs
        )];
        Ok(meter.finish(
            oracle,
            NativeModel { network: net, card },
            Some(answer.disclosure),
            soft,
            notes,
        ))
    }
}
