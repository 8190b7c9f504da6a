//! Approximate nearest-neighbour index with bounded memory: an HNSW graph (Malkov & Yashunin,
//! "Efficient and robust approximate nearest neighbor search using Hierarchical Navigable Small
//! World graphs", TPAMI 2018) with incremental insertion, wrapped in a two-generation store.
//!
//! The k-NN and PRADA detectors searched this index until they moved to the inverted-file index
//! of [`crate::ivf`] (contiguous scans instead of a cache miss per visited node); it remains the
//! format of their states saved before (read and converted on restore, see [`AnnIndex::points`]
//! and [`AnnIndex::points_with_payload`]) and the graph index `examples/knn_recall.rs` compares
//! against.
//!
//! Why our own: the maintained crates we looked at (`hnsw_rs`, `instant-distance`) either build
//! the graph in one batch (instant-distance) or do not serialise per-client state with serde
//! (hnsw_rs dumps to files); detectors need incremental insertion *and* a serde snapshot of each
//! client's index, so a compact implementation (simple nearest-M neighbour selection) lives here.
//!
//! **Eviction rule** ([`AnnIndex`]): points go into the *current* generation; when it holds
//! `capacity` points it becomes the *previous* generation (the old previous one is dropped) and
//! a fresh current one starts. Searches look in both. A client's index therefore holds between
//! `capacity` and `2·capacity` of its most recent points — memory is bounded and the oldest
//! history is forgotten first, in blocks.

use serde::ser::SerializeStruct;
use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize, Serializer};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// A vector element type with a squared-L2 distance.
pub trait Elem: Copy + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Squared Euclidean distance between two equal-length slices.
    fn dist2(a: &[Self], b: &[Self]) -> f32;
}

/// Lanes of the partial sums below: independent accumulators let the compiler vectorise the
/// loop (a single running `f32` sum is a serial dependency chain it may not reorder).
const LANES: usize = 8;

/// Lanes of [`Elem::dist2`] for bytes.
const U8_LANES: usize = 16;

/// `Σ a_i·b_i` over the common length, accumulated in [`LANES`] partial sums.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `Σ (a_i − b_i)²` over the common length, accumulated in [`LANES`] partial sums.
#[inline(always)]
pub(crate) fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| (x - y) * (x - y)).sum();
    acc.iter().sum::<f32>() + tail
}

impl Elem for f32 {
    fn dist2(a: &[f32], b: &[f32]) -> f32 {
        sq_dist(a, b)
    }
}

impl Elem for u8 {
    /// Exact (integer) sum over the common length, in 16 partial sums written as
    /// plain loops (no iterator adapter left out of line), so that it vectorises inside a
    /// dispatched kernel (`crate::simd`).
    #[inline(always)]
    fn dist2(a: &[u8], b: &[u8]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0u32; U8_LANES];
        let (ca, cb) = (a.chunks_exact(U8_LANES), b.chunks_exact(U8_LANES));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for i in 0..U8_LANES {
                let d = x[i] as i32 - y[i] as i32;
                acc[i] = acc[i].wrapping_add((d * d) as u32);
            }
        }
        let mut s = 0u32;
        for &v in &acc {
            s = s.wrapping_add(v);
        }
        for (&x, &y) in ra.iter().zip(rb) {
            let d = x as i32 - y as i32;
            s = s.wrapping_add((d * d) as u32);
        }
        s as f32
    }
}

/// HNSW parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HnswParams {
    /// Links per node on upper layers (layer 0 keeps `2·m`).
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Candidate list size while searching (at least `k`).
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 12,
            ef_construction: 48,
            ef_search: 48,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Cand(f32, u32);
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Reusable search buffers of one graph (not serialised): a generation-stamped visited array
/// (no per-search set or clearing), the candidate heap, the bounded result list and the
/// neighbour-selection buffers. Keeping them across searches removes every allocation from the
/// search and insertion paths.
#[derive(Clone, Debug, Default)]
struct Scratch {
    /// One byte per point (a small footprint next to the vectors and lists the search reads),
    /// cleared once every 255 searches.
    visited: Vec<u8>,
    stamp: u8,
    heap: BinaryHeap<Reverse<Cand>>,
    /// Result of the last [`Hnsw::search_layer`]: ascending, at most `ef` entries.
    found: Vec<Cand>,
    /// The unvisited neighbours of the node being expanded, with their distances.
    batch: Vec<Cand>,
    /// A neighbour list being pruned, scored against its owner.
    scored: Vec<Cand>,
    kept: Vec<u32>,
    pruned: Vec<u32>,
    chosen: Vec<u32>,
    eps: Vec<u32>,
}

impl Scratch {
    /// Starts a search over `n` points: a fresh stamp marks "visited in this search".
    fn begin(&mut self, n: usize) -> u8 {
        if self.visited.len() < n {
            self.visited.resize(n, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.visited.fill(0);
            self.stamp = 1;
        }
        self.stamp
    }
}

/// Inserts `c` into the ascending list `found` and drops its largest entry beyond `ef` — the
/// same set and order as a max-heap bounded to `ef`, in one contiguous array.
fn push_bounded(found: &mut Vec<Cand>, c: Cand, ef: usize) {
    // Shifted in from the end (short lists: no `memmove` call).
    found.push(c);
    let mut i = found.len() - 1;
    while i > 0 && found[i - 1] > c {
        found[i] = found[i - 1];
        i -= 1;
    }
    found[i] = c;
    if found.len() > ef {
        found.pop();
    }
}

/// Most ids a neighbour list holds between prunings: `max_links` plus half again (lists
/// overflow by half before being pruned back, which amortises the O(m²) pruning).
fn list_cap(max_links: usize) -> usize {
    max_links + max_links / 2
}

/// Slots per node in the flat layer-0 array: the list length, then up to
/// `list_cap(2·m)` neighbour ids.
fn layer0_stride(params: &HnswParams) -> usize {
    list_cap(2 * params.m).max(1) + 1
}

/// One HNSW graph over vectors of a fixed dimension.
///
/// Layout: vectors in one contiguous array; layer-0 lists (every node has one, and searches
/// spend nearly all their time there) in one flat array with a fixed number of slots per node,
/// so expanding a node reads one block instead of following two pointers; the rarer upper-layer
/// lists (a fraction `1/M` of the nodes) as nested vectors. The serialised form is the nested
/// `links[node][level]` list of ids, checked on loading (ids in range, levels consistent).
#[derive(Clone, Debug)]
pub struct Hnsw<T> {
    dim: usize,
    params: HnswParams,
    data: Vec<T>,
    /// Node `i` owns `layer0[i·stride .. (i+1)·stride]`: its list length, then the ids.
    layer0: Vec<u32>,
    stride: usize,
    /// `upper[node][level − 1]` = neighbour ids on `level ≥ 1`; empty for layer-0-only nodes.
    upper: Vec<Vec<Vec<u32>>>,
    entry: Option<u32>,
    rng: u64,
    /// Optional per-point byte payload (e.g. the full quantised input), `payload_dim` each.
    payload_dim: usize,
    payload: Vec<u8>,
    scratch: Scratch,
}

impl<T> Hnsw<T> {
    /// Number of points.
    pub fn len(&self) -> usize {
        self.upper.len()
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.upper.is_empty()
    }

    #[inline]
    fn level_of(&self, i: u32) -> usize {
        self.upper[i as usize].len()
    }

    /// Neighbour ids of node `i` on `level`.
    #[inline]
    fn links(&self, i: u32, level: usize) -> &[u32] {
        if level == 0 {
            let s = i as usize * self.stride;
            let n = self.layer0[s] as usize;
            &self.layer0[s + 1..s + 1 + n]
        } else {
            &self.upper[i as usize][level - 1]
        }
    }

    /// Replaces node `i`'s list on `level` (at most `stride − 1` ids on layer 0; callers never
    /// pass more than `list_cap(2·m)`).
    fn set_links(&mut self, i: u32, level: usize, ids: &[u32]) {
        if level == 0 {
            let s = i as usize * self.stride;
            let n = ids.len().min(self.stride - 1);
            self.layer0[s] = n as u32;
            self.layer0[s + 1..s + 1 + n].copy_from_slice(&ids[..n]);
        } else {
            let l = &mut self.upper[i as usize][level - 1];
            l.clear();
            l.extend_from_slice(ids);
        }
    }

    /// The serialised `links[node][level]` form of node `i`.
    fn node_links(&self, i: u32) -> impl Iterator<Item = &[u32]> {
        std::iter::once(self.links(i, 0)).chain(self.upper[i as usize].iter().map(Vec::as_slice))
    }
}

impl<T: Elem> Hnsw<T> {
    /// An empty graph for `dim`-dimensional vectors.
    pub fn new(dim: usize, params: HnswParams, seed: u64) -> Self {
        Self {
            dim,
            params,
            data: Vec::new(),
            layer0: Vec::new(),
            stride: layer0_stride(&params),
            upper: Vec::new(),
            entry: None,
            rng: seed,
            payload_dim: 0,
            payload: Vec::new(),
            scratch: Scratch::default(),
        }
    }

    #[inline]
    fn vec(&self, i: u32) -> &[T] {
        let i = i as usize;
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    fn greedy(&self, q: &[T], mut ep: u32, level: usize) -> u32 {
        let mut best = T::dist2(q, self.vec(ep));
        loop {
            let mut changed = false;
            // Distances of a block of neighbours first, then the comparisons (same result as
            // one pass; the loads overlap, see `search_layer`).
            for block in self.links(ep, level).chunks(16) {
                let mut d = [0.0f32; 16];
                for (di, &nb) in d.iter_mut().zip(block) {
                    *di = T::dist2(q, self.vec(nb));
                }
                for (&di, &nb) in d.iter().zip(block) {
                    if di < best {
                        best = di;
                        ep = nb;
                        changed = true;
                    }
                }
            }
            if !changed {
                return ep;
            }
        }
    }

    /// Best-first search on one layer (the paper's Algorithm 2); leaves up to `ef` candidates,
    /// ascending by distance, in `sc.found`.
    fn search_layer(&self, sc: &mut Scratch, q: &[T], eps: &[u32], ef: usize, level: usize) {
        let stamp = sc.begin(self.len());
        let Scratch {
            visited,
            heap,
            found,
            batch,
            ..
        } = sc;
        heap.clear();
        found.clear();
        for &e in eps {
            visited[e as usize] = stamp;
            let c = Cand(T::dist2(q, self.vec(e)), e);
            heap.push(Reverse(c));
            push_bounded(found, c, ef.max(eps.len()));
        }
        while let Some(Reverse(c)) = heap.pop() {
            let worst = found.last().map_or(f32::INFINITY, |w| w.0);
            if c.0 > worst && found.len() >= ef {
                break;
            }
            // In three passes over the node's list (same visits, distances and decisions as
            // one pass): the unvisited neighbours, then all their distances in a loop without
            // data-dependent branches (their vectors are scattered in memory; without a
            // mispredicted branch between them, the loads overlap), then the updates.
            batch.clear();
            for &nb in self.links(c.1, level) {
                let seen = &mut visited[nb as usize];
                if *seen != stamp {
                    *seen = stamp;
                    batch.push(Cand(0.0, nb));
                }
            }
            for b in batch.iter_mut() {
                b.0 = T::dist2(q, self.vec(b.1));
            }
            for &c in batch.iter() {
                let worst = found.last().map_or(f32::INFINITY, |w| w.0);
                if found.len() < ef || c.0 < worst {
                    heap.push(Reverse(c));
                    push_bounded(found, c, ef);
                }
            }
        }
    }

    /// The paper's neighbour-selection heuristic (Algorithm 4, keeping pruned connections):
    /// a candidate is kept when it is closer to the base point than to every neighbour kept
    /// so far, which preserves links between clusters; the list is then topped up with the
    /// nearest pruned candidates. `sorted` is ascending by distance to the base point; the
    /// selection is left in `kept`.
    fn select_neighbours(
        &self,
        kept: &mut Vec<u32>,
        pruned: &mut Vec<u32>,
        sorted: &[Cand],
        m: usize,
    ) {
        kept.clear();
        pruned.clear();
        for c in sorted {
            if kept.len() >= m {
                break;
            }
            let vc = self.vec(c.1);
            if kept.iter().all(|&r| T::dist2(vc, self.vec(r)) > c.0) {
                kept.push(c.1);
            } else {
                pruned.push(c.1);
            }
        }
        for &p in pruned.iter() {
            if kept.len() >= m {
                break;
            }
            kept.push(p);
        }
    }

    /// Adds the link `nb → id` on `level`; a list that would exceed `list_cap(max_links)` is
    /// pruned back to `max_links` by the selection heuristic (over its ids and `id`).
    fn add_link(&mut self, sc: &mut Scratch, nb: u32, level: usize, id: u32, max_links: usize) {
        let len = self.links(nb, level).len();
        if len < list_cap(max_links) {
            if level == 0 {
                let s = nb as usize * self.stride;
                self.layer0[s + 1 + len] = id;
                self.layer0[s] += 1;
            } else {
                self.upper[nb as usize][level - 1].push(id);
            }
            return;
        }
        let base = self.vec(nb);
        sc.scored.clear();
        for &x in self.links(nb, level).iter().chain(std::iter::once(&id)) {
            sc.scored.push(Cand(T::dist2(base, self.vec(x)), x));
        }
        sc.scored.sort_unstable();
        self.select_neighbours(&mut sc.kept, &mut sc.pruned, &sc.scored, max_links);
        let kept = std::mem::take(&mut sc.kept);
        self.set_links(nb, level, &kept);
        sc.kept = kept;
    }

    /// Draws the level of a new point (Malkov & Yashunin: `⌊−ln(U)·m_L⌋`, `m_L = 1/ln M`).
    fn draw_level(&mut self) -> usize {
        let ml = 1.0 / (self.params.m.max(2) as f64).ln();
        let u = (splitmix(&mut self.rng) >> 11) as f64 / (1u64 << 53) as f64;
        ((-(1.0 - u).ln()) * ml).floor().min(16.0) as usize
    }

    /// Inserts a vector (must have the graph's dimension).
    pub fn insert(&mut self, v: &[T]) {
        let level = self.draw_level();
        self.insert_at(v, level, None);
    }

    /// Squared distances of (approximately) the `k` nearest points to `v`, then inserts `v` —
    /// the same as [`Hnsw::search`] followed by [`Hnsw::insert`], but for a point drawn at
    /// level 0 (a fraction `1 − 1/M` of them) one layer-0 search with
    /// `ef = max(ef_search, k, ef_construction)` serves both: its `k` nearest are the answer and
    /// its `ef_construction` nearest the insertion candidates (the upper-layer descent is the
    /// same greedy walk for both).
    pub fn search_insert(&mut self, v: &[T], k: usize) -> Vec<f32> {
        debug_assert_eq!(v.len(), self.dim);
        let level = self.draw_level();
        let Some(entry) = self.entry else {
            self.insert_at(v, level, None);
            return Vec::new();
        };
        if level > 0 {
            let d = self.search(v, k);
            self.insert_at(v, level, None);
            return d;
        }
        let mut ep = entry;
        for l in (1..=self.level_of(entry)).rev() {
            ep = self.greedy(v, ep, l);
        }
        let ef = self
            .params
            .ef_search
            .max(k)
            .max(self.params.ef_construction);
        let mut sc = std::mem::take(&mut self.scratch);
        self.search_layer(&mut sc, v, &[ep], ef, 0);
        let mut found = std::mem::take(&mut sc.found);
        self.scratch = sc;
        let d = found.iter().take(k).map(|c| c.0).collect();
        found.truncate(self.params.ef_construction.max(1));
        self.insert_at(v, 0, Some(found));
        d
    }

    /// Inserts `v` at `level`; `layer0` = layer-0 candidates already found (only with
    /// `level == 0` and a non-empty graph).
    fn insert_at(&mut self, v: &[T], level: usize, layer0: Option<Vec<Cand>>) {
        let id = self.len() as u32;
        self.data.extend_from_slice(v);
        self.layer0.resize(self.layer0.len() + self.stride, 0);
        self.upper.push(vec![Vec::new(); level]);
        let Some(entry) = self.entry else {
            self.entry = Some(id);
            return;
        };
        let mut sc = std::mem::take(&mut self.scratch);
        let top = self.level_of(entry);
        let mut ep = entry;
        if layer0.is_none() {
            for l in (level + 1..=top).rev() {
                ep = self.greedy(v, ep, l);
            }
        }
        let mut eps = std::mem::take(&mut sc.eps);
        eps.clear();
        eps.push(ep);
        let mut layer0 = layer0;
        for l in (0..=level.min(top)).rev() {
            let found = match layer0.take() {
                Some(f) if l == 0 => f,
                _ => {
                    self.search_layer(&mut sc, v, &eps, self.params.ef_construction, l);
                    std::mem::take(&mut sc.found)
                }
            };
            let max_links = if l == 0 {
                2 * self.params.m
            } else {
                self.params.m
            };
            let mut chosen = std::mem::take(&mut sc.chosen);
            self.select_neighbours(&mut chosen, &mut sc.pruned, &found, self.params.m);
            for &nb in &chosen {
                self.add_link(&mut sc, nb, l, id, max_links);
            }
            self.set_links(id, l, &chosen);
            sc.chosen = chosen;
            eps.clear();
            eps.extend(found.iter().map(|c| c.1));
            sc.found = found;
        }
        sc.eps = eps;
        self.scratch = sc;
        if level > top {
            self.entry = Some(id);
        }
    }

    /// Squared distances of (approximately) the `k` nearest points to `q`, ascending.
    pub fn search(&mut self, q: &[T], k: usize) -> Vec<f32> {
        let n = self.search_scratch(q, k);
        self.scratch.found[..n].iter().map(|c| c.0).collect()
    }

    /// Inserts a vector with a byte payload (all payloads of a graph have one length).
    pub fn insert_with_payload(&mut self, v: &[T], payload: &[u8]) {
        if self.is_empty() {
            self.payload_dim = payload.len();
        }
        debug_assert_eq!(payload.len(), self.payload_dim);
        self.payload.extend_from_slice(payload);
        self.insert(v);
    }

    /// The payload of point `id`.
    pub fn payload(&self, id: u32) -> &[u8] {
        let i = id as usize;
        &self.payload[i * self.payload_dim..(i + 1) * self.payload_dim]
    }

    /// Searches for the `k` nearest points to `q`; they are the first entries (the returned
    /// count) of `self.scratch.found`, ascending.
    fn search_scratch(&mut self, q: &[T], k: usize) -> usize {
        let Some(entry) = self.entry else {
            self.scratch.found.clear();
            return 0;
        };
        let mut ep = entry;
        for l in (1..=self.level_of(entry)).rev() {
            ep = self.greedy(q, ep, l);
        }
        let ef = self.params.ef_search.max(k);
        let mut sc = std::mem::take(&mut self.scratch);
        self.search_layer(&mut sc, q, &[ep], ef, 0);
        sc.found.truncate(k);
        let n = sc.found.len();
        self.scratch = sc;
        n
    }

    /// Exact squared distances of the `k` nearest points (linear scan; for tests and checks).
    pub fn exact_search(&self, q: &[T], k: usize) -> Vec<f32> {
        let mut d: Vec<f32> = (0..self.len() as u32)
            .map(|i| T::dist2(q, self.vec(i)))
            .collect();
        d.sort_by(f32::total_cmp);
        d.truncate(k);
        d
    }
}

/// Serialised form of [`Hnsw`] (the field names and nesting of the first, all-nested layout,
/// so stored client states keep loading).
#[derive(Deserialize)]
struct HnswRepr<T> {
    dim: usize,
    params: HnswParams,
    data: Vec<T>,
    /// `links[node][level]` = neighbour ids.
    links: Vec<Vec<Vec<u32>>>,
    entry: Option<u32>,
    rng: u64,
    #[serde(default)]
    payload_dim: usize,
    #[serde(default)]
    payload: Vec<u8>,
}

impl<T> Hnsw<T> {
    /// Checks a loaded graph (a corrupt snapshot must give an error, not a panic in a later
    /// search) and builds the flat layout.
    fn from_repr(r: HnswRepr<T>) -> Result<Self, String> {
        let n = r.links.len();
        if n > u32::MAX as usize || Some(r.data.len()) != n.checked_mul(r.dim) {
            return Err(format!(
                "{} vector values for {n} points of dimension {}",
                r.data.len(),
                r.dim
            ));
        }
        match r.entry {
            None if n == 0 => {}
            Some(e) if (e as usize) < n => {}
            e => return Err(format!("entry point {e:?} for {n} points")),
        }
        if let Some(i) = r.links.iter().position(Vec::is_empty) {
            return Err(format!("point {i} has no layer"));
        }
        for (i, node) in r.links.iter().enumerate() {
            for (l, list) in node.iter().enumerate() {
                // A neighbour on layer `l` must itself have layer `l`.
                if let Some(&bad) = list
                    .iter()
                    .find(|&&nb| r.links.get(nb as usize).is_none_or(|x| x.len() <= l))
                {
                    return Err(format!("point {i}, layer {l}: bad neighbour {bad}"));
                }
            }
        }
        let longest = r.links.iter().map(|x| x[0].len()).max().unwrap_or(0);
        let stride = layer0_stride(&r.params).max(longest + 1);
        let mut layer0 = vec![0u32; n * stride];
        let mut upper = Vec::with_capacity(n);
        for (i, mut node) in r.links.into_iter().enumerate() {
            let l0 = &node[0];
            layer0[i * stride] = l0.len() as u32;
            layer0[i * stride + 1..i * stride + 1 + l0.len()].copy_from_slice(l0);
            node.remove(0);
            upper.push(node);
        }
        Ok(Self {
            dim: r.dim,
            params: r.params,
            data: r.data,
            layer0,
            stride,
            upper,
            entry: r.entry,
            rng: r.rng,
            payload_dim: r.payload_dim,
            payload: r.payload,
            scratch: Scratch::default(),
        })
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Hnsw<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::from_repr(HnswRepr::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `links[node][level]`, written from the flat layout without building the nested lists.
struct LinksSer<'a, T>(&'a Hnsw<T>);

impl<T> Serialize for LinksSer<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((0..self.0.len() as u32).map(|i| NodeSer(self.0, i)))
    }
}

struct NodeSer<'a, T>(&'a Hnsw<T>, u32);

impl<T> Serialize for NodeSer<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.node_links(self.1))
    }
}

impl<T: Serialize> Serialize for Hnsw<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Hnsw", 8)?;
        st.serialize_field("dim", &self.dim)?;
        st.serialize_field("params", &self.params)?;
        st.serialize_field("data", &self.data)?;
        st.serialize_field("links", &LinksSer(self))?;
        st.serialize_field("entry", &self.entry)?;
        st.serialize_field("rng", &self.rng)?;
        st.serialize_field("payload_dim", &self.payload_dim)?;
        st.serialize_field("payload", &self.payload)?;
        st.end()
    }
}

/// A bounded-memory index: two HNSW generations (see the module docs for the eviction rule).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AnnIndex<T> {
    capacity: usize,
    current: Hnsw<T>,
    previous: Option<Hnsw<T>>,
    generation: u64,
}

impl<T: Elem> AnnIndex<T> {
    /// An empty index; each generation holds up to `capacity` points.
    pub fn new(dim: usize, params: HnswParams, capacity: usize, seed: u64) -> Self {
        Self {
            capacity: capacity.max(1),
            current: Hnsw::new(dim, params, seed),
            previous: None,
            generation: 0,
        }
    }

    /// Points held now (≤ 2·capacity).
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.as_ref().map_or(0, Hnsw::len)
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The vector dimension.
    pub fn dim(&self) -> usize {
        self.current.dim
    }

    /// The held points in insertion order (previous generation first).
    pub fn points(&self) -> impl Iterator<Item = &[T]> {
        let dim = self.current.dim.max(1);
        self.previous
            .iter()
            .chain(std::iter::once(&self.current))
            .flat_map(move |g| g.data.chunks_exact(dim))
    }

    /// The held points with their payloads (empty when the index has none), in insertion
    /// order (previous generation first).
    pub fn points_with_payload(&self) -> impl Iterator<Item = (&[T], &[u8])> {
        self.previous
            .iter()
            .chain(std::iter::once(&self.current))
            .flat_map(|g| (0..g.len() as u32).map(move |i| (g.vec(i), g.payload(i))))
    }

    /// Inserts a point, rotating generations when the current one is full.
    pub fn insert(&mut self, v: &[T]) {
        self.rotate();
        self.current.insert(v);
    }

    fn rotate(&mut self) {
        if self.current.len() >= self.capacity {
            self.generation += 1;
            let fresh = Hnsw::new(
                self.current.dim,
                self.current.params,
                self.current.rng ^ self.generation,
            );
            self.previous = Some(std::mem::replace(&mut self.current, fresh));
        }
    }

    /// Inserts a point with a byte payload, rotating generations when the current one is full.
    pub fn insert_with_payload(&mut self, v: &[T], payload: &[u8]) {
        self.rotate();
        self.current.insert_with_payload(v, payload);
    }

    /// Re-ranking search: the `candidates` approximate nearest points to `q` in index space,
    /// then the smallest exact squared distance between `full` and their payloads.
    pub fn nearest_payload_dist2(
        &mut self,
        q: &[T],
        full: &[u8],
        candidates: usize,
    ) -> Option<f32> {
        let mut best: Option<f32> = None;
        for g in std::iter::once(&mut self.current).chain(self.previous.as_mut()) {
            let n = g.search_scratch(q, candidates);
            for c in &g.scratch.found[..n] {
                let d = u8::dist2(full, g.payload(c.1));
                best = Some(best.map_or(d, |b| b.min(d)));
            }
        }
        best
    }

    /// Exact version of [`AnnIndex::nearest_payload_dist2`] (linear scan over payloads).
    pub fn exact_nearest_payload_dist2(&self, full: &[u8]) -> Option<f32> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .flat_map(|g| (0..g.len() as u32).map(move |i| u8::dist2(full, g.payload(i))))
            .reduce(f32::min)
    }

    /// Squared distances of the `k` nearest held points, ascending.
    pub fn search(&mut self, q: &[T], k: usize) -> Vec<f32> {
        let mut d = self.current.search(q, k);
        if let Some(p) = self.previous.as_mut() {
            d.extend(p.search(q, k));
            d.sort_by(f32::total_cmp);
            d.truncate(k);
        }
        d
    }

    /// [`AnnIndex::search`] then [`AnnIndex::insert`] of the same point, sharing the current
    /// generation's search ([`Hnsw::search_insert`]).
    pub fn search_insert(&mut self, v: &[T], k: usize) -> Vec<f32> {
        // Rotating first searches the same points: the full generation becomes `previous`.
        self.rotate();
        let mut d = self.current.search_insert(v, k);
        if let Some(p) = self.previous.as_mut() {
            d.extend(p.search(v, k));
            d.sort_by(f32::total_cmp);
            d.truncate(k);
        }
        d
    }

    /// Exact version of [`AnnIndex::search`] (linear scan).
    pub fn exact_search(&self, q: &[T], k: usize) -> Vec<f32> {
        let mut d = self.current.exact_search(q, k);
        if let Some(p) = self.previous.as_ref() {
            d.extend(p.exact_search(q, k));
            d.sort_by(f32::total_cmp);
            d.truncate(k);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn clustered(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let centres: Vec<Vec<f32>> = (0..10)
            .map(|_| (0..dim).map(|_| rng.gen::<f32>() * 4.0).collect())
            .collect();
        (0..n)
            .map(|i| {
                centres[i % 10]
                    .iter()
                    .map(|c| c + rng.gen::<f32>() - 0.5)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn recall_against_exact_search() {
        let pts = clustered(4000, 32, 1);
        let params = HnswParams {
            m: 16,
            ef_construction: 100,
            ef_search: 100,
        };
        let mut idx = AnnIndex::new(32, params, 10_000, 7);
        for p in &pts {
            idx.insert(p);
        }
        let queries = clustered(100, 32, 2);
        let k = 50;
        let mut hit = 0usize;
        for q in &queries {
            let exact = idx.exact_search(q, k);
            let approx = idx.search(q, k);
            let kth = exact[k - 1];
            hit += approx.iter().filter(|&&d| d <= kth).count().min(k);
        }
        let recall = hit as f64 / (queries.len() * k) as f64;
        assert!(recall > 0.9, "recall@50 = {recall}");
        // 1-NN recall for the u8 variant used by PRADA.
        let mut idx8 = AnnIndex::<u8>::new(64, HnswParams::default(), 10_000, 3);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let p8: Vec<Vec<u8>> = (0..3000)
            .map(|_| (0..64).map(|_| rng.gen_range(0..=255u8)).collect())
            .collect();
        for p in &p8 {
            idx8.insert(p);
        }
        let mut exact_hits = 0;
        for _ in 0..100 {
            let q: Vec<u8> = (0..64).map(|_| rng.gen_range(0..=255u8)).collect();
            if idx8.search(&q, 1)[0] <= idx8.exact_search(&q, 1)[0] {
                exact_hits += 1;
            }
        }
        assert!(exact_hits >= 90, "1-NN recall {exact_hits}/100");
    }

    /// The k-NN detector's former HNSW parameters (k = 50, 24-d codes, `KnnConfig::hnsw`): a stream
    /// scored and inserted with `search_insert` keeps recall@50 against exact search, and the
    /// graph it builds answers later searches as well as one built by `insert`.
    #[test]
    fn search_insert_keeps_recall_at_knn_parameters() {
        let params = crate::knn::KnnConfig::default().hnsw;
        let k = 50;
        let pts = clustered(3000, 24, 11);
        let mut a = AnnIndex::new(24, params, 1000, 5);
        let mut b = AnnIndex::new(24, params, 1000, 5);
        let (mut hit, mut total) = (0usize, 0usize);
        for (i, p) in pts.iter().enumerate() {
            let exact = a.exact_search(p, k);
            let approx = a.search_insert(p, k);
            b.insert(p);
            assert_eq!(approx.len(), exact.len(), "point {i}");
            if exact.len() == k && i % 10 == 0 {
                let kth = exact[k - 1];
                hit += approx.iter().filter(|&&d| d <= kth).count();
                total += k;
            }
        }
        assert_eq!(a.len(), b.len());
        let stream_recall = hit as f64 / total as f64;
        assert!(stream_recall > 0.9, "stream recall@50 = {stream_recall}");
        let queries = clustered(100, 24, 12);
        let recall = |idx: &mut AnnIndex<f32>| {
            let mut hit = 0usize;
            for q in &queries {
                let kth = idx.exact_search(q, k)[k - 1];
                hit += idx.search(q, k).iter().filter(|&&d| d <= kth).count();
            }
            hit as f64 / (queries.len() * k) as f64
        };
        let (ra, rb) = (recall(&mut a), recall(&mut b));
        assert!(
            ra > 0.9 && ra > rb - 0.03,
            "search_insert graph {ra}, insert graph {rb}"
        );
    }

    #[test]
    fn payload_rerank_finds_the_exact_nearest() {
        // PRADA's use: search in a 32-d projection, re-rank 8 candidates on full bytes.
        // Image-like data: a low intrinsic dimension (8) embedded in 196 values, plus noise.
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let basis: Vec<Vec<f32>> = (0..8)
            .map(|_| (0..196).map(|_| rng.gen::<f32>() - 0.5).collect())
            .collect();
        let all: Vec<Vec<f32>> = (0..3200)
            .map(|_| {
                let z: Vec<f32> = (0..8).map(|_| rng.gen::<f32>()).collect();
                (0..196)
                    .map(|j| {
                        let s: f32 = z.iter().zip(&basis).map(|(a, b)| a * b[j]).sum();
                        (2.25 + 1.5 * s + 0.05 * (rng.gen::<f32>() - 0.5)).clamp(0.0, 4.5)
                    })
                    .collect()
            })
            .collect();
        let (pts, queries) = all.split_at(3000);
        let proj = crate::knn::Projections::new(5, 32);
        let m = proj.matrix(196);
        let prep = |p: &[f32]| {
            let unit: Vec<f32> = p.iter().map(|v| v / 4.5).collect();
            let mut code = Vec::new();
            crate::knn::Projections::project(&m, &unit, &mut code);
            let mut bytes = Vec::new();
            crate::prada::quantise_range(&unit, crate::settings::UNIT_RANGE, &mut bytes);
            (code, bytes)
        };
        let params = HnswParams {
            m: 8,
            ef_construction: 32,
            ef_search: 24,
        };
        let mut idx = AnnIndex::new(32, params, 10_000, 1);
        for p in pts {
            let (c, b) = prep(p);
            idx.insert_with_payload(&c, &b);
        }
        let mut exact = 0;
        for q in queries {
            let (c, b) = prep(q);
            let approx = idx.nearest_payload_dist2(&c, &b, 8).unwrap();
            let truth = idx.exact_nearest_payload_dist2(&b).unwrap();
            assert!(approx >= truth);
            exact += (approx == truth) as usize;
        }
        assert!(exact >= 180, "exact 1-NN for {exact}/200 queries");
    }

    /// The serialised graph keeps the nested `links[node][level]` form (states written before
    /// the flat layer-0 layout load unchanged), and a corrupt graph is an error, not a later
    /// out-of-range panic in a search.
    #[test]
    fn nested_links_load_and_corrupt_graphs_are_refused() {
        let graph = |data: &str, links: &str, entry: &str| {
            format!(
                r#"{{"dim":1,"params":{{"m":2,"ef_construction":4,"ef_search":4}},"data":{data},"links":{links},"entry":{entry},"rng":1,"payload_dim":0,"payload":[]}}"#
            )
        };
        let good = graph("[0.0,1.0,5.0]", "[[[1,2],[1]],[[0],[0]],[[0]]]", "0");
        let mut h: Hnsw<f32> = serde_json::from_str(&good).unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h.search(&[4.0], 2), vec![1.0, 9.0]);
        assert_eq!(serde_json::to_string(&h).unwrap(), good);
        h.insert(&[4.5]);
        assert_eq!(h.search(&[4.0], 1), vec![0.25]);
        for (data, links, entry, what) in [
            ("[0.0,1.0]", "[[[1,2]],[[0]],[[0]]]", "0", "vector values"),
            (
                "[0.0,1.0,5.0]",
                "[[[1,7]],[[0]],[[0]]]",
                "0",
                "bad neighbour 7",
            ),
            (
                "[0.0,1.0,5.0]",
                "[[[1,2],[2]],[[0]],[[0]]]",
                "0",
                "layer 1: bad neighbour 2",
            ),
            ("[0.0,1.0,5.0]", "[[[1,2]],[],[[0]]]", "0", "no layer"),
            ("[0.0,1.0,5.0]", "[[[1,2]],[[0]],[[0]]]", "3", "entry point"),
            ("[]", "[]", "0", "entry point"),
        ] {
            let err = serde_json::from_str::<Hnsw<f32>>(&graph(data, links, entry)).unwrap_err();
            assert!(err.to_string().contains(what), "{err}");
        }
    }

    #[test]
    fn generations_bound_memory_and_serialise() {
        let mut idx = AnnIndex::new(4, HnswParams::default(), 100, 1);
        for i in 0..1000 {
            idx.insert(&[i as f32, 0.0, 0.0, 0.0]);
            assert!(idx.len() <= 200);
        }
        assert_eq!(idx.len(), 200);
        // The newest points are held, the oldest forgotten.
        assert_eq!(idx.search(&[999.0, 0.0, 0.0, 0.0], 1), vec![0.0]);
        assert!(idx.search(&[0.0, 0.0, 0.0, 0.0], 1)[0] > 1000.0);
        let json = serde_json::to_vec(&idx).unwrap();
        let mut back: AnnIndex<f32> = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            back.search(&[850.2, 0.0, 0.0, 0.0], 3),
            idx.search(&[850.2, 0.0, 0.0, 0.0], 3)
        );
    }
}
