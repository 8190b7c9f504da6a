//! Similarity hashing of quantised inputs (Li, Shan, Wenger, Zhang, Zheng, Zhao,
//! "Blacklight: Scalable Defense for Neural Networks against Query-Based Black-Box Attacks",
//! USENIX Security 2022).
//!
//! Each query is flattened, every value quantised to `floor(255·x / quant_step)`, every window
//! of `window` consecutive quantised values hashed, and the `top_n` largest distinct hashes kept
//! as the query's fingerprint. A query whose fingerprint shares at least `match_threshold`
//! hashes with one past query of the same client is *flagged* (paper defaults for images:
//! step 50, window 20, top 50, threshold 25). The client alarms once `min_flagged` of its last
//! `window_queries` queries were flagged.
//!
//! Hashes: a polynomial rolling hash per window (O(1) per window) finalised by SplitMix64,
//! instead of the paper's SHA-256 — collisions only matter across *different* windows, and a
//! 64-bit mixed hash makes them negligible while cutting the per-query cost ~50×.
//!
//! Memory: posting lists (hash → past query ids) in two generations of `capacity` queries each
//! (the older generation is dropped when the current one fills), each list capped at
//! `max_postings` newest ids.
//!
//! Cost: the posting maps are keyed by already-mixed 64-bit hashes, so they use the
//! multiplicative Fx hash instead of SipHash (no adversary chooses the keys: a client's hashes
//! only index that client's own state); the lookups are made in a pass of their own (their
//! cache misses overlap), and the lists' lines loaded before they are counted (the same); the
//! matches are counted in a dense per-thread array indexed by query id (the ids of a client's
//! lists span its last two generations), not a map, its counters tagged with the query's epoch
//! so that they need no reset; posting lists of up to 6 ids are stored inside the map's bucket
//! (no pointer to follow for the common short list), and a full list is a ring.

use crate::error::{decode_state, encode_state};
use crate::simd::Kernel;
use crate::window::FlagWindow;
use mamori_core::{DataNeed, Detector, DetectorInfo, DetectorState, Observation, Stage, Verdict};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// Blacklight configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlacklightConfig {
    /// Quantisation step on the 0–255 scale.
    pub quant_step: u32,
    /// Window length in values.
    pub window: usize,
    /// Hashes kept per query.
    pub top_n: usize,
    /// Shared hashes that flag a query.
    pub match_threshold: usize,
    /// Queries considered for the client alarm.
    pub window_queries: usize,
    /// Flagged queries in that window that raise the alarm.
    pub min_flagged: usize,
    /// Queries per generation.
    pub capacity: usize,
    /// Newest ids kept per posting list.
    pub max_postings: usize,
    /// Range of the model's input values (its card's `input_range`; the gateway and
    /// calibration set it from the card, [`crate::DetectorsConfig::set_input_range`]), mapped
    /// onto the 0–255 scale before quantising: `[0, 1]` for images; a tabular model's
    /// features in `[0, 1000]` would otherwise all saturate at the top level and share their
    /// hashes.
    pub input_range: [f32; 2],
}

impl Default for BlacklightConfig {
    fn default() -> Self {
        Self {
            quant_step: 50,
            window: 20,
            top_n: 50,
            match_threshold: 25,
            window_queries: 20,
            min_flagged: 2,
            capacity: 20_000,
            max_postings: 32,
            input_range: crate::settings::UNIT_RANGE,
        }
    }
}

/// The Blacklight detector.
#[derive(Clone, Debug)]
pub struct BlacklightDetector {
    cfg: BlacklightConfig,
}

impl BlacklightDetector {
    /// Name in the catalogue.
    pub const NAME: &'static str = "blacklight";

    /// A detector with `cfg`.
    pub fn new(cfg: BlacklightConfig) -> Self {
        Self { cfg }
    }

    /// Per-query maximum number of hashes shared with one earlier query of the stream (for
    /// calibration).
    pub fn match_stream(&self, xs: &[&[f32]]) -> Vec<usize> {
        let mut s = BlState {
            cfg: self.cfg.clone(),
            ..BlState::default()
        };
        xs.iter().map(|x| s.match_and_insert(x)).collect()
    }
}

/// The `top_n` largest distinct window hashes of `x`.
///
/// Windows whose values all quantise to 0 (blank background, e.g. the borders of an MNIST
/// digit) are not hashed: every image with a blank region of `window` values shares that hash,
/// so it carries no information about the query and only inflates matches between unrelated
/// sparse images.
pub fn fingerprint(cfg: &BlacklightConfig, x: &[f32]) -> Vec<u64> {
    let (mut levels, mut hashes) = (Vec::new(), Vec::new());
    fingerprint_into(cfg, x, &mut levels, &mut hashes);
    hashes
}

/// [`fingerprint`] into `hashes`, with `levels` for the quantised values (both cleared first),
/// so that a state reuses its buffers.
fn fingerprint_into(
    cfg: &BlacklightConfig,
    x: &[f32],
    levels: &mut Vec<u32>,
    hashes: &mut Vec<u64>,
) {
    const BASE: u64 = 0x100_0000_01B3;
    hashes.clear();
    levels.clear();
    if x.is_empty() {
        return;
    }
    let step = cfg.quant_step.max(1) as f32;
    let (lo, inv) = crate::settings::unit_map(cfg.input_range);
    levels.resize(x.len(), 0);
    crate::simd::vectorized(LevelsKernel {
        x,
        lo,
        inv,
        step,
        out: levels,
    });
    let q = levels.as_slice();
    let w = cfg.window.max(1).min(q.len());
    let pow = (0..w).fold(1u64, |acc, _| acc.wrapping_mul(BASE));
    let mut h = 0u64;
    // Values in the current window above the lowest level (level 0 is stored as 1).
    let mut lit = 0usize;
    hashes.reserve(q.len());
    for i in 0..q.len() {
        h = h.wrapping_mul(BASE).wrapping_add(u64::from(q[i]));
        lit += (q[i] > 1) as usize;
        if i >= w {
            h = h.wrapping_sub(u64::from(q[i - w]).wrapping_mul(pow));
            lit -= (q[i - w] > 1) as usize;
        }
        if i + 1 >= w && lit > 0 {
            let mut z = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            hashes.push(z ^ (z >> 31));
        }
    }
    top_distinct(hashes, cfg.top_n);
}

/// [`fingerprint_into`]'s quantisation as a [`Kernel`]: level `floor(255·x / step) + 1` of
/// every value, in a pass of its own, at the dispatched instruction set. The quotient of
/// [`crate::settings::unit_value`] is a number in `0..=255` whose floor is converted exactly by
/// [`crate::simd::whole_to_u32`] (vectorised; `as u32` is a scalar conversion per value) — the
/// level the clamp, division and saturating cast gave, NaN included (level 1).
struct LevelsKernel<'a> {
    x: &'a [f32],
    lo: f32,
    inv: f32,
    step: f32,
    out: &'a mut [u32],
}

impl Kernel for LevelsKernel<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let LevelsKernel {
            x,
            lo,
            inv,
            step,
            out,
        } = self;
        for (o, &v) in out.iter_mut().zip(x) {
            let unit = crate::settings::unit_value(v, lo, inv);
            *o = crate::simd::whole_to_u32((unit * 255.0 / step).floor()) + 1;
        }
    }
}

/// Keeps the `n` largest distinct values of `v`, in decreasing order: a bounded selection
/// (`select_nth_unstable`, O(len)) of a few more than `n` candidates, sorted and deduplicated
/// in place; a full sort only when duplicates among the candidates leave fewer than `n`
/// distinct values.
fn top_distinct(v: &mut Vec<u64>, n: usize) {
    let m = (2 * n).max(1);
    if v.len() > m {
        v.select_nth_unstable_by(m - 1, |a, b| b.cmp(a));
        let head = &mut v[..m];
        head.sort_unstable_by(|a, b| b.cmp(a));
        // The distinct values of the head, moved to its front.
        let mut distinct = 1;
        for i in 1..m {
            if head[i] != head[distinct - 1] {
                head[distinct] = head[i];
                distinct += 1;
            }
        }
        if distinct >= n {
            v.truncate(n);
            return;
        }
    }
    v.sort_unstable_by(|a, b| b.cmp(a));
    v.dedup();
    v.truncate(n);
}

/// Posting lists of up to this many ids are stored inline, in the map's bucket.
const INLINE: usize = 6;

/// One posting list (past query ids). Short lists — most hashes are seen by one or a few
/// queries — live inline in the map's bucket, so a lookup does not follow a pointer to the
/// heap (one cache miss fewer); a list that outgrows [`INLINE`] ids moves to the heap, where a
/// full list is a ring (its newest id overwrites its oldest in place instead of shifting the
/// list: the counts need the ids, not their order). Serialised as the plain list of ids,
/// oldest first (the form of states written before).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "Vec<u32>", into = "Vec<u32>")]
struct Postings {
    /// Ids held inline; once the list is on the heap, the ring's oldest slot.
    len: u32,
    inline: [u32; INLINE],
    spill: Vec<u32>,
}

impl PartialEq for Postings {
    fn eq(&self, other: &Self) -> bool {
        self.oldest_first() == other.oldest_first()
    }
}

impl Postings {
    /// The ids, in no particular order.
    fn as_slice(&self) -> &[u32] {
        if self.spill.is_empty() {
            &self.inline[..self.len as usize]
        } else {
            &self.spill
        }
    }

    /// The ids, oldest first.
    fn oldest_first(&self) -> Vec<u32> {
        let mut v = self.as_slice().to_vec();
        if !self.spill.is_empty() {
            let head = self.len as usize % v.len();
            v.rotate_left(head);
        }
        v
    }

    /// Appends `id`, dropping the oldest id beyond `max` entries.
    fn push_capped(&mut self, id: u32, max: usize) {
        let max = max.max(1);
        if !self.spill.is_empty() {
            if self.spill.len() < max {
                self.spill.push(id);
                return;
            }
            if self.spill.len() > max {
                // A smaller cap than the list was filled under: the newest `max − 1` stay.
                let mut v = self.oldest_first();
                v.drain(..v.len() - (max - 1));
                v.push(id);
                self.spill = v;
                self.len = 0;
                return;
            }
            let head = self.len as usize % max;
            self.spill[head] = id;
            self.len = ((head + 1) % max) as u32;
            return;
        }
        let n = self.len as usize;
        if n < INLINE.min(max) {
            self.inline[n] = id;
            self.len += 1;
        } else if max <= INLINE {
            // Full at `max`: drop the oldest, append.
            self.inline.copy_within(1..n, 0);
            self.inline[n - 1] = id;
        } else {
            self.spill.reserve(INLINE + 1);
            self.spill.extend_from_slice(&self.inline[..n]);
            self.spill.push(id);
            self.len = 0;
        }
    }
}

impl From<Vec<u32>> for Postings {
    fn from(ids: Vec<u32>) -> Self {
        if ids.len() <= INLINE {
            let mut p = Postings {
                len: ids.len() as u32,
                ..Postings::default()
            };
            p.inline[..ids.len()].copy_from_slice(&ids);
            p
        } else {
            Postings {
                spill: ids,
                ..Postings::default()
            }
        }
    }
}

impl From<Postings> for Vec<u32> {
    fn from(p: Postings) -> Self {
        p.oldest_first()
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Generation {
    postings: FxHashMap<u64, Postings>,
    count: usize,
    /// Heap bytes of the posting lists that outgrew their bucket (kept as they grow, so that
    /// a measure does not walk the map; recounted on restore).
    #[serde(skip)]
    spill_bytes: usize,
}

impl Generation {
    /// Heap bytes of its map and of the posting lists that outgrew their bucket.
    fn heap_bytes(&self) -> usize {
        crate::heap::map(&self.postings) + self.spill_bytes
    }

    /// Counts [`Generation::spill_bytes`] again from the lists.
    fn recount_spill(&mut self) {
        self.spill_bytes = self
            .postings
            .values()
            .map(|p| crate::heap::vec(&p.spill))
            .sum();
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct BlState {
    #[serde(skip)]
    cfg: BlacklightConfig,
    current: Generation,
    previous: Generation,
    next_id: u32,
    #[serde(flatten)]
    flags: FlagWindow,
    queries: u64,
    /// The query's fingerprint (reused).
    #[serde(skip)]
    fp: Vec<u64>,
    /// The query's quantised values (reused).
    #[serde(skip)]
    levels: Vec<u32>,
}

/// Widest id range counted in the dense per-thread array (a wider one — two generations of a
/// capacity above 2²¹ queries — is counted in a map).
const DENSE_SPAN: usize = 1 << 22;

thread_local! {
    /// Per-thread dense match counts (`counts[id − base]`, each tagged with the count's epoch,
    /// [`dense_max_shared`]) and the current epoch: shared by every client state a thread
    /// observes, so it costs no memory per client.
    static DENSE: std::cell::RefCell<(Vec<u16>, u8)> =
        const { std::cell::RefCell::new((Vec::new(), 0)) };
}

/// The largest number of `lists` an id occurs in (ids occur at most once per list).
///
/// The ids of a client's posting lists lie in its last two generations, the `span` ids from
/// `lo` on (wrapping around `u32::MAX`), known from the generations' sizes: they are counted
/// in a dense array indexed by `id − lo` (one increment in cache-resident memory per id,
/// instead of a hash-map entry; [`dense_max_shared`]). A span wider than [`DENSE_SPAN`] (a
/// configured capacity above 2²¹), more than 255 lists (a count would not fit its byte), or
/// an id outside the span (a state whose sizes do not describe its ids), is counted in a map.
fn max_shared(lists: &[&[u32]], lo: u32, span: usize) -> u32 {
    if span <= DENSE_SPAN && lists.len() <= usize::from(u8::MAX) {
        if let Some(best) = DENSE.with(|d| dense_max_shared(&mut d.borrow_mut(), lists, lo, span)) {
            return best;
        }
    }
    let mut counts = FxHashMap::<u32, u32>::default();
    let mut best = 0u32;
    for &i in lists.iter().flat_map(|l| l.iter()) {
        let c = counts.entry(i).or_default();
        *c += 1;
        best = best.max(*c);
    }
    best
}

/// [`max_shared`] in the dense array `d`; `None` when an id lies outside `[lo, lo + span)`.
///
/// Each counter is `epoch << 8 | count`, the epoch a byte advanced at each call: a counter
/// of another epoch counts as zero, so the counters need no reset after a call — one random
/// access per id instead of two (≈ 1,150 ids per query spread over the array at 100k queries
/// of history, evicted between two queries by the other detectors' scans). The whole array is
/// zeroed once every 255 calls, when the epoch wraps (0 is never a current epoch). Counts fit
/// their byte: the caller counts at most 255 lists.
fn dense_max_shared(
    (d, epoch): &mut (Vec<u16>, u8),
    lists: &[&[u32]],
    lo: u32,
    span: usize,
) -> Option<u32> {
    if d.len() < span {
        d.resize(span, 0);
    }
    *epoch = epoch.wrapping_add(1);
    if *epoch == 0 {
        d.fill(0);
        *epoch = 1;
    }
    let tag = u16::from(*epoch) << 8;
    let mut best = 0u16;
    for l in lists {
        for &i in *l {
            let at = i.wrapping_sub(lo) as usize;
            let c = d.get_mut(at).filter(|_| at < span)?;
            let n = if *c & 0xff00 == tag {
                (*c & 0xff) + 1
            } else {
                1
            };
            *c = tag | n;
            best = best.max(n);
        }
    }
    Some(u32::from(best))
}

impl BlState {
    fn match_and_insert(&mut self, x: &[f32]) -> usize {
        let mut fp = std::mem::take(&mut self.fp);
        fingerprint_into(&self.cfg, x, &mut self.levels, &mut fp);
        // The lists of every hash in both generations are looked up first (independent
        // lookups whose cache misses overlap), then counted.
        let mut lists: Vec<&[u32]> = Vec::with_capacity(2 * fp.len());
        for h in &fp {
            for g in [&self.current, &self.previous] {
                if let Some(list) = g.postings.get(h) {
                    lists.push(list.as_slice());
                }
            }
        }
        // One id per query, in order: the current generation holds the last `current.count`
        // ids before `next_id`, the previous one the `previous.count` before those.
        let held = self.current.count + self.previous.count;
        let lo = self.next_id.wrapping_sub(held as u32);
        // Every list's cache lines loaded first, nothing depending on the loads: a list held
        // on the heap is one more miss, and these overlap, where the count would wait for
        // each list in turn.
        let mut touched = 0u32;
        for l in &lists {
            for &i in l.iter().step_by(16).chain(l.last()) {
                touched |= i;
            }
        }
        std::hint::black_box(touched);
        let best = max_shared(&lists, lo, held);
        if self.current.count >= self.cfg.capacity.max(1) {
            self.previous = std::mem::take(&mut self.current);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let max_postings = self.cfg.max_postings.max(1);
        for &h in &fp {
            let list = self.current.postings.entry(h).or_default();
            let before = list.spill.capacity();
            list.push_capped(id, max_postings);
            // A list's buffer only grows (the oldest id is dropped in place).
            self.current.spill_bytes +=
                (list.spill.capacity() - before) * std::mem::size_of::<u32>();
        }
        self.current.count += 1;
        self.fp = fp;
        best as usize
    }
}

impl Detector for BlacklightDetector {
    fn info(&self) -> DetectorInfo {
        DetectorInfo {
            name: Self::NAME.into(),
            paper: "Li et al., Blacklight, USENIX Security 2022".into(),
            targets: "query-based black-box adversarial search (near-duplicate queries)".into(),
            stage: Stage::Precursor,
            needs: vec![DataNeed::Input],
        }
    }

    fn new_state(&self) -> Box<dyn DetectorState> {
        Box::new(BlState {
            cfg: self.cfg.clone(),
            ..BlState::default()
        })
    }

    fn restore_state(&self, snapshot: &[u8]) -> Result<Box<dyn DetectorState>, String> {
        let mut s: BlState = decode_state(Self::NAME, snapshot)?;
        s.cfg = self.cfg.clone();
        s.current.recount_spill();
        s.previous.recount_spill();
        Ok(Box::new(s))
    }
}

impl DetectorState for BlState {
    fn observe(&mut self, obs: &Observation<'_>) -> Verdict {
        self.queries += 1;
        let best = self.match_and_insert(obs.input);
        let flag = best >= self.cfg.match_threshold.max(1);
        self.flags
            .push(flag, self.cfg.window_queries, self.cfg.min_flagged)
    }

    fn snapshot(&self) -> Vec<u8> {
        encode_state(self)
    }

    fn queries(&self) -> u64 {
        self.queries
    }

    fn heap_bytes(&self) -> usize {
        self.current.heap_bytes()
            + self.previous.heap_bytes()
            + crate::heap::vec(&self.fp)
            + crate::heap::vec(&self.levels)
            + self.flags.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Client `c`'s observation of `x` (no shape, scores or time: Blacklight reads the input).
    fn obs(x: &[f32]) -> Observation<'_> {
        Observation {
            client: "c",
            input: x,
            input_shape: &[],
            probs: &[],
            label: 0,
            time_ms: 0,
        }
    }

    #[test]
    fn fingerprint_is_stable_under_small_noise_and_differs_across_images() {
        let cfg = BlacklightConfig::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a: Vec<f32> = (0..784).map(|_| rng.gen()).collect();
        let b: Vec<f32> = (0..784).map(|_| rng.gen()).collect();
        let fa = fingerprint(&cfg, &a);
        assert_eq!(fa.len(), 50);
        let fb = fingerprint(&cfg, &b);
        assert_eq!(fa.iter().filter(|h| fb.contains(h)).count(), 0);
        let d = BlacklightDetector::new(cfg);
        let m = d.match_stream(&[&a, &a, &b]);
        assert_eq!(m, vec![0, 50, 0]);
    }

    #[test]
    fn perturbation_search_alarms_distinct_queries_do_not() {
        let d = BlacklightDetector::new(BlacklightConfig::default());
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut s = d.new_state();
        for _ in 0..300 {
            let x: Vec<f32> = (0..784).map(|_| rng.gen()).collect();
            assert!(!s.observe(&obs(&x)).alarm);
        }
        // A boundary-attack-like stream: one image, a few pixels changed per step.
        let mut x: Vec<f32> = (0..784).map(|_| rng.gen()).collect();
        let mut first = None;
        for i in 0..20 {
            for _ in 0..5 {
                let j = rng.gen_range(0..784);
                x[j] = rng.gen();
            }
            if s.observe(&obs(&x)).alarm && first.is_none() {
                first = Some(i + 1);
            }
        }
        assert_eq!(first, Some(3), "second and third near-duplicates flag");
        let r = d.restore_state(&s.snapshot()).unwrap();
        assert_eq!(r.queries(), 320);
        assert!(d.restore_state(b"nope").is_err());
    }

    /// A tabular model's rows (64 features in `[0, 1000]`): with the model's input range the
    /// fingerprints use the quantisation levels across it, so distinct rows share no hash and
    /// a near-duplicate stream (small perturbations of one row) alarms; on
    /// the `[0, 1]` default every value saturates at the top level, every window hashes alike,
    /// a row has one distinct hash and the detector is blind to the stream.
    #[test]
    fn tabular_rows_are_fingerprinted_over_the_models_input_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let rows: Vec<Vec<f32>> = (0..200)
            .map(|_| (0..64).map(|_| rng.gen_range(0.0..1000.0)).collect())
            .collect();
        let first_alarm = |cfg: &BlacklightConfig, xs: &[Vec<f32>]| {
            let mut s = BlacklightDetector::new(cfg.clone()).new_state();
            xs.iter().position(|x| s.observe(&obs(x)).alarm)
        };
        let unit = BlacklightConfig::default();
        let ranged = BlacklightConfig {
            input_range: [0.0, 1000.0],
            ..BlacklightConfig::default()
        };
        let (a, b) = (
            fingerprint(&ranged, &rows[0]),
            fingerprint(&ranged, &rows[1]),
        );
        assert!(!a.is_empty());
        assert_eq!(a.iter().filter(|h| b.contains(h)).count(), 0);
        assert_eq!(fingerprint(&unit, &rows[0]).len(), 1, "saturated");
        assert_eq!(first_alarm(&ranged, &rows), None, "benign rows");
        // Near-duplicates: one row, every feature moved by up to ±1 per query (a
        // perturbation search; a quantisation level spans ≈ 196 here).
        let mut x = rows[0].clone();
        let mut search = Vec::new();
        for _ in 0..20 {
            for v in x.iter_mut() {
                *v = (*v + rng.gen_range(-1.0..1.0)).clamp(0.0, 1000.0);
            }
            search.push(x.clone());
        }
        assert_eq!(first_alarm(&ranged, &search), Some(2));
        assert_eq!(first_alarm(&unit, &search), None, "saturated: blind");
    }

    /// Inline and heap posting lists keep the newest `max` ids in order, exactly as a plain
    /// list capped the same way, and serialise as that plain list (states written before load).
    #[test]
    fn posting_lists_match_a_capped_vec_and_serialise_as_one() {
        for max in [1usize, 3, 6, 7, 32] {
            let mut p = Postings::default();
            let mut v: Vec<u32> = Vec::new();
            for id in 0..100u32 {
                p.push_capped(id, max);
                v.push(id);
                if v.len() > max {
                    v.remove(0);
                }
                assert_eq!(p.oldest_first(), v, "max {max}, id {id}");
                let mut held = p.as_slice().to_vec();
                held.sort_unstable();
                assert_eq!(held, v, "max {max}, id {id}");
                let json = serde_json::to_string(&p).unwrap();
                assert_eq!(json, serde_json::to_string(&v).unwrap());
                assert_eq!(
                    serde_json::from_str::<Postings>(&json).unwrap().as_slice(),
                    &v[..]
                );
            }
        }
        // A ring filled under a cap of 32, then pushed under a cap of 7 (a configuration
        // changed between two runs): the newest 7 stay, and the ring goes on from there.
        let mut p = Postings::default();
        for id in 0..45u32 {
            p.push_capped(id, 32);
        }
        p.push_capped(45, 7);
        assert_eq!(p.oldest_first(), (39..46).collect::<Vec<u32>>());
        p.push_capped(46, 7);
        assert_eq!(p.oldest_first(), (40..47).collect::<Vec<u32>>());
        let old = r#"{"postings":{"7":[1,2,3,4,5,6,7,8],"9":[3]},"count":2}"#;
        let g: Generation = serde_json::from_str(old).unwrap();
        assert_eq!(g.postings[&7].as_slice(), &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(g.postings[&9].as_slice(), &[3]);
    }

    /// Through generation turnovers and the ids' wrap around `u32::MAX`, every id in the
    /// posting lists lies in the span the generations' sizes give (so the dense count never
    /// falls back), and each query's match count is the most hashes it shares with one query
    /// of the last two generations, computed pair by pair.
    #[test]
    fn match_counts_follow_the_generations_through_the_id_wrap() {
        let cfg = BlacklightConfig {
            capacity: 7,
            max_postings: 1000,
            ..BlacklightConfig::default()
        };
        let mut s = BlState {
            cfg: cfg.clone(),
            next_id: u32::MAX - 20,
            ..BlState::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        // Five families of near-duplicates (a base image with 20 values redrawn per query):
        // a query matches its family's queries still held, and hardly anything else.
        let bases: Vec<Vec<f32>> = (0..5)
            .map(|_| (0..784).map(|_| rng.gen()).collect())
            .collect();
        // (generation, fingerprint) of every query so far; query j joins generation
        // j / capacity.
        let mut past: Vec<(usize, Vec<u64>)> = Vec::new();
        let mut distinct = std::collections::BTreeSet::new();
        for q in 0..80usize {
            let mut x = bases[rng.gen_range(0..5)].clone();
            for _ in 0..20 {
                x[rng.gen_range(0..784)] = rng.gen();
            }
            let fp = fingerprint(&cfg, &x);
            // Query q is matched before the turnover it may cause: against the generation of
            // query q − 1 and the one before it.
            let newest = q.saturating_sub(1) / cfg.capacity;
            let want = past
                .iter()
                .filter(|(g, _)| *g + 1 >= newest)
                .map(|(_, f)| fp.iter().filter(|h| f.contains(h)).count())
                .max()
                .unwrap_or(0);
            assert_eq!(s.match_and_insert(&x), want, "query {q}");
            distinct.insert(want);
            past.push((q / cfg.capacity, fp));
            let held = s.current.count + s.previous.count;
            let lo = s.next_id.wrapping_sub(held as u32);
            for g in [&s.current, &s.previous] {
                for list in g.postings.values() {
                    for &id in list.as_slice() {
                        assert!((id.wrapping_sub(lo) as usize) < held, "query {q}: id {id}");
                    }
                }
            }
        }
        assert!(s.next_id < 100, "the ids wrapped");
        assert!(distinct.len() > 5, "match counts {distinct:?}");
    }

    /// The dense count gives what a plain map count gives — for ids near each other, across
    /// the wrap around `u32::MAX`, with a span wider than the dense array, with ids outside
    /// the span given (the map's fallback), and for no lists — and leaves the per-thread
    /// array zeroed for the next query.
    #[test]
    fn dense_match_counts_equal_a_map_count() {
        fn plain(lists: &[&[u32]]) -> u32 {
            let mut m = std::collections::HashMap::<u32, u32>::new();
            for &i in lists.iter().flat_map(|l| l.iter()) {
                *m.entry(i).or_default() += 1;
            }
            m.values().copied().max().unwrap_or(0)
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for base in [0u32, 1_000_000, u32::MAX - 50] {
            for (lo, span) in [
                (base, 200),
                (base.wrapping_sub(7), 300),
                (base, DENSE_SPAN + 1),
                (base.wrapping_add(100), 50),
            ] {
                for _ in 0..50 {
                    let n = rng.gen_range(0..40);
                    let owned: Vec<Vec<u32>> = (0..n)
                        .map(|_| {
                            let mut l: Vec<u32> = (0..rng.gen_range(1..33))
                                .map(|_| base.wrapping_add(rng.gen_range(0..200)))
                                .collect();
                            l.sort_unstable();
                            l.dedup();
                            l
                        })
                        .collect();
                    let lists: Vec<&[u32]> = owned.iter().map(Vec::as_slice).collect();
                    assert_eq!(max_shared(&lists, lo, span), plain(&lists), "{lo} {span}");
                }
            }
        }
        assert_eq!(max_shared(&[], 0, 0), 0);
        // Over more calls than the epoch's 255 values, counts of earlier calls never leak into
        // later ones.
        for round in 0..600u32 {
            let a: Vec<u32> = (0..5).map(|k| k * 3 + round % 7).collect();
            let lists = [a.as_slice(), &a[1..], &a[2..]];
            assert_eq!(max_shared(&lists, 0, 100), 3, "round {round}");
        }
    }

    /// The levels are, for every value, those of the clamp, division and saturating cast they
    /// are written without (NaN and infinities included), at the dispatched instruction set
    /// and in the portable loop, for several steps and a range that is not `[0, 1]`.
    #[test]
    fn levels_match_the_saturating_cast() {
        let base = crate::simd::tests::quantisation_probes();
        for (range, step) in [
            ([0.0f32, 1.0], 50u32),
            ([0.0, 1.0], 1),
            ([-3.0, 5.0], 7),
            ([0.0, 1.0], 255),
        ] {
            let (lo, inv) = crate::settings::unit_map(range);
            let xs: Vec<f32> = base
                .iter()
                .flat_map(|&t| [t, lo + t * (range[1] - range[0])])
                .collect();
            let step = step as f32;
            let want: Vec<u32> = xs
                .iter()
                .map(|&v| ((((v - lo) * inv).clamp(0.0, 1.0) * 255.0) / step) as u32 + 1)
                .collect();
            let mut got = vec![0u32; xs.len()];
            crate::simd::vectorized(LevelsKernel {
                x: &xs,
                lo,
                inv,
                step,
                out: &mut got,
            });
            assert_eq!(got, want, "dispatched, {range:?}, step {step}");
            let mut plain = vec![0u32; xs.len()];
            LevelsKernel {
                x: &xs,
                lo,
                inv,
                step,
                out: &mut plain,
            }
            .run();
            assert_eq!(plain, want, "portable, {range:?}, step {step}");
        }
    }

    #[test]
    fn blank_windows_are_not_hashed_and_selection_matches_a_full_sort() {
        let cfg = BlacklightConfig::default();
        assert!(fingerprint(&cfg, &[0.0; 784]).is_empty());
        // Two unrelated sparse images (one short stroke each, far apart) share no hash.
        let mut a = vec![0.0f32; 784];
        let mut b = vec![0.0f32; 784];
        a[100..104].fill(1.0);
        b[600..605].fill(0.6);
        let (fa, fb) = (fingerprint(&cfg, &a), fingerprint(&cfg, &b));
        assert!(!fa.is_empty() && !fb.is_empty());
        assert_eq!(fa.iter().filter(|h| fb.contains(h)).count(), 0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        // Few distinct values (many duplicates among the candidates: the full sort's path) and
        // all distinct ones (the in-place selection's).
        for (len, range) in [0usize, 3, 60, 100, 101, 765]
            .into_iter()
            .flat_map(|len| [(len, 40), (len, u64::MAX)])
        {
            for n in [1usize, 5, 50] {
                let v: Vec<u64> = (0..len).map(|_| rng.gen_range(0..range)).collect();
                let mut want = v.clone();
                want.sort_unstable_by(|a, b| b.cmp(a));
                want.dedup();
                want.truncate(n);
                let mut got = v;
                top_distinct(&mut got, n);
                assert_eq!(got, want, "len {len}, n {n}, range {range}");
            }
        }
    }
}
