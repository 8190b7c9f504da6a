//! The per-client / per-group detection engine the gateway calls:
//! `engine.observe(client, group, obs) -> Decision`.
//!
//! The engine owns one [`DetectorState`] per detector for every client and for every group of
//! clients (same organisation, same source network — whatever key the gateway passes), and the
//! [`Policy`]. Group states see the union of their members' queries, so an attacker who splits
//! a stream over many API keys is still seen; group verdicts reach each member's decision as
//! `group:<detector>`.
//!
//! Exact repeats: a query whose input is bit-identical to one the same client (group) already
//! sent is answered identically and leaks nothing new, so only the volume detector (`rate`)
//! sees it; the similarity detectors would otherwise flag legitimate retries. The repeat memory
//! holds at most `max_seen` input hashes per client (cleared when full).
//!
//! Memory per client is bounded by each detector's own rule (see their modules); the number of
//! clients this engine holds is not (the callers here are evaluations and tools with a known
//! set of clients; [`Engine::forget`] drops one). The gateway keeps its subjects' detector
//! states itself and bounds how many stay in memory (`detect.max_resident_subjects`).

use crate::error::DetectError;
use crate::policy::{Decision, Override, Policy, PolicyConfig};
use crate::rate::RateDetector;
use mamori_core::{Detector, DetectorState, Observation, Verdict};
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Input hashes remembered per client for exact-repeat detection.
pub const MAX_SEEN: usize = 100_000;

/// The exact-repeat rule's memory for one client (or group): keyed hashes of the inputs it
/// sent, at most [`MAX_SEEN`] (all forgotten when full). Shared by this engine and the
/// gateway, which applies the same rule to its subjects.
///
/// The hash is keyed with a secret drawn when the memory is made — the engine draws one for
/// all its clients' and groups' memories — ([`RepeatHash`]): a query
/// taken for a repeat is hidden from every detector but the volume one, so a client able to
/// make a new input collide with an old one would hide its whole search. An unkeyed hash
/// (as this one was before: FNV-style, every step invertible) lets it do that by choosing a
/// few input values; with a secret polynomial key two given different inputs collide with
/// probability at most `len / (2⁶¹ − 1)`, whatever they are.
#[derive(Clone, Debug, Default)]
pub struct RepeatMemory {
    hash: RepeatHash,
    /// Input hashes (already uniform: the Fx hash of the set adds one multiply, not SipHash).
    seen: FxHashSet<u64>,
}

impl RepeatMemory {
    /// Whether `x` is bit-identical to an input remembered (by its keyed 64-bit hash);
    /// remembers it.
    pub fn repeat(&mut self, x: &[f32]) -> bool {
        self.repeat_hashed(self.hash.of(x))
    }

    /// An empty memory whose hashes are `hash`'s (the engine's memories share one key, so that
    /// a query is hashed once for its client and its group).
    fn with_key(hash: RepeatHash) -> Self {
        Self {
            hash,
            seen: FxHashSet::default(),
        }
    }

    /// [`RepeatMemory::repeat`] of an input whose hash (by this memory's key) is `h`.
    fn repeat_hashed(&mut self, h: u64) -> bool {
        if self.seen.len() >= MAX_SEEN {
            self.seen.clear();
        }
        !self.seen.insert(h)
    }

    /// Heap bytes of its hash set.
    pub fn heap_bytes(&self) -> usize {
        crate::heap::set(&self.seen)
    }
}

/// The Mersenne prime `2⁶¹ − 1`, the field of [`RepeatHash`].
const P61: u64 = (1 << 61) - 1;

/// `a·b mod 2⁶¹ − 1` for `a, b < 2⁶¹`.
#[inline(always)]
fn mul61(a: u64, b: u64) -> u64 {
    let z = a as u128 * b as u128;
    add61((z as u64) & P61, (z >> 61) as u64)
}

/// `a + b mod 2⁶¹ − 1` for `a, b ≤ 2⁶¹ − 1`.
#[inline(always)]
fn add61(a: u64, b: u64) -> u64 {
    let s = a + b;
    let r = (s & P61) + (s >> 61);
    if r >= P61 {
        r - P61
    } else {
        r
    }
}

/// A polynomial hash with a secret evaluation point (Carter–Wegman; the field `2⁶¹ − 1`):
/// an input's values `m_0 … m_{L−1}` (their `f32` bits) give
/// `H = Σ (m_i + 1)·r^(L−i) mod 2⁶¹ − 1`. Two different inputs (of any lengths up to `L`)
/// differ as polynomials in `r` of degree at most `L` — the `+ 1` keeps a longer input's extra
/// leading values from vanishing — so they collide for at most `L` of the `2⁶¹ − 2` keys: a
/// client that sees none of the hashes cannot choose a colliding input. Evaluated four
/// values per step (`r⁴` Horner, the same value as one value per step) so that the
/// multiplications overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct RepeatHash {
    /// `r, r², r³, r⁴`.
    pow: [u64; 4],
}

impl Default for RepeatHash {
    /// A fresh secret key (the thread's CSPRNG, seeded from the operating system).
    fn default() -> Self {
        Self::with_key(rand::random::<u64>() % (P61 - 1) + 1)
    }
}

impl From<RepeatHash> for u64 {
    fn from(h: RepeatHash) -> u64 {
        h.pow[0]
    }
}

impl TryFrom<u64> for RepeatHash {
    type Error = String;

    fn try_from(r: u64) -> Result<Self, String> {
        if r == 0 || r >= P61 {
            return Err(format!("repeat hash key {r} is not in [1, 2^61 - 1)"));
        }
        Ok(Self::with_key(r))
    }
}

impl RepeatHash {
    /// The hash with evaluation point `r` (in `[1, 2⁶¹ − 1)`).
    fn with_key(r: u64) -> Self {
        let r2 = mul61(r, r);
        let r3 = mul61(r2, r);
        Self {
            pow: [r, r2, r3, mul61(r3, r)],
        }
    }

    /// The hash of `x`'s exact bits.
    ///
    /// Four interleaved Horner chains in `r⁴` (lane `j` takes values `4q + j`), combined as
    /// `A₀·r⁴ + A₁·r³ + A₂·r² + A₃·r`, then the remaining values one by one: the value of
    /// the one-chain definition, with four independent multiplications in flight. Inside the
    /// chains values are kept below `2⁶¹ + 2³³` (two folds of `2⁶¹ ≡ 1`, no comparison) and
    /// reduced exactly at the end.
    pub fn of(&self, x: &[f32]) -> u64 {
        #[inline(always)]
        fn fold(z: u128) -> u64 {
            let once = (z as u64 & P61) as u128 + (z >> 61);
            ((once as u64) & P61) + (once >> 61) as u64
        }
        let [r, r2, r3, r4] = self.pow;
        let c = |v: f32| v.to_bits() as u64 + 1;
        let quads = x.chunks_exact(4);
        let rest = quads.remainder();
        let mut lanes = [0u64; 4];
        for q in quads {
            for (a, &v) in lanes.iter_mut().zip(q) {
                *a = fold(*a as u128 * r4 as u128) + c(v);
            }
        }
        let [a0, a1, a2, a3] = lanes.map(|a| add61(a & P61, a >> 61));
        let mut acc = add61(
            add61(mul61(a0, r4), mul61(a1, r3)),
            add61(mul61(a2, r2), mul61(a3, r)),
        );
        for &v in rest {
            acc = mul61(add61(acc, c(v)), r);
        }
        acc
    }
}

struct Tracked {
    states: Vec<Box<dyn DetectorState>>,
    seen: RepeatMemory,
    queries: u64,
}

#[derive(Serialize, Deserialize)]
struct TrackedSnapshot {
    states: BTreeMap<String, serde_json::Value>,
    seen: Vec<u64>,
    queries: u64,
}

#[derive(Serialize, Deserialize)]
struct EngineSnapshot {
    version: u32,
    /// The key of every `seen` hash (absent from snapshots made before the hash was keyed:
    /// their hashes are of another function, so they are dropped and a fresh key drawn).
    #[serde(default)]
    repeat_key: Option<RepeatHash>,
    clients: BTreeMap<String, TrackedSnapshot>,
    groups: BTreeMap<String, TrackedSnapshot>,
    policy: Policy,
}

/// Detection engine: detectors, per-client and per-group states, and the policy.
pub struct Engine {
    detectors: Vec<Arc<dyn Detector>>,
    names: Vec<String>,
    /// `group:<name>`, built once (verdict names are borrowed per query, not formatted).
    group_names: Vec<String>,
    clients: HashMap<String, Tracked>,
    groups: HashMap<String, Tracked>,
    policy: Policy,
    /// The key of every client's and group's repeat memory: an input is hashed once per query.
    repeat_key: RepeatHash,
}

impl Engine {
    /// An engine running `detectors` under `policy`.
    pub fn new(detectors: Vec<Arc<dyn Detector>>, policy: PolicyConfig) -> Self {
        let names: Vec<String> = detectors.iter().map(|d| d.info().name).collect();
        let group_names = names.iter().map(|n| format!("group:{n}")).collect();
        Self {
            detectors,
            names,
            group_names,
            clients: HashMap::new(),
            groups: HashMap::new(),
            policy: Policy::new(policy),
            repeat_key: RepeatHash::default(),
        }
    }

    /// Detector names, in order.
    pub fn detector_names(&self) -> &[String] {
        &self.names
    }

    /// The policy (risk, overrides).
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Sets or clears an admin override for `client`.
    pub fn set_override(&mut self, client: &str, o: Option<Override>) {
        self.policy.set_override(client, o);
    }

    /// Drops everything known about `client`.
    pub fn forget(&mut self, client: &str) {
        self.clients.remove(client);
        self.policy.reset(client);
    }

    /// Queries observed from `client`.
    pub fn queries(&self, client: &str) -> u64 {
        self.clients.get(client).map_or(0, |t| t.queries)
    }

    fn fresh(detectors: &[Arc<dyn Detector>], key: RepeatHash) -> Tracked {
        Tracked {
            states: detectors.iter().map(|d| d.new_state()).collect(),
            seen: RepeatMemory::with_key(key),
            queries: 0,
        }
    }

    fn run<'n>(
        names: &'n [String],
        labels: &'n [String],
        t: &mut Tracked,
        obs: &Observation<'_>,
        hash: u64,
        out: &mut Vec<(&'n str, Verdict)>,
    ) {
        t.queries += 1;
        let repeat = t.seen.repeat_hashed(hash);
        for ((name, label), st) in names.iter().zip(labels).zip(t.states.iter_mut()) {
            if repeat && name != RateDetector::NAME {
                continue;
            }
            out.push((label.as_str(), st.observe(obs)));
        }
    }

    /// Observes one query of `client` (member of `group`, if any) and decides what to do.
    pub fn observe(
        &mut self,
        client: &str,
        group: Option<&str>,
        obs: &Observation<'_>,
    ) -> Decision {
        let hash = self.repeat_key.of(obs.input);
        let mut verdicts = Vec::with_capacity(2 * self.names.len());
        let dets = &self.detectors;
        // Look up before inserting: no key allocation for a known client.
        if !self.clients.contains_key(client) {
            self.clients
                .insert(client.to_string(), Self::fresh(dets, self.repeat_key));
        }
        if let Some(t) = self.clients.get_mut(client) {
            Self::run(&self.names, &self.names, t, obs, hash, &mut verdicts);
        }
        if let Some(g) = group {
            if !self.groups.contains_key(g) {
                self.groups
                    .insert(g.to_string(), Self::fresh(dets, self.repeat_key));
            }
            if let Some(t) = self.groups.get_mut(g) {
                Self::run(&self.names, &self.group_names, t, obs, hash, &mut verdicts);
            }
        }
        self.policy.decide(client, group, &verdicts, obs.time_ms)
    }

    fn snap(names: &[String], t: &Tracked) -> TrackedSnapshot {
        TrackedSnapshot {
            states: names
                .iter()
                .zip(&t.states)
                .map(|(n, s)| {
                    let v = serde_json::from_slice(&s.snapshot()).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&s.snapshot()).into())
                    });
                    (n.clone(), v)
                })
                .collect(),
            seen: t.seen.seen.iter().copied().collect(),
            queries: t.queries,
        }
    }

    /// Serialises every client's and group's state and the policy's risk (JSON).
    pub fn snapshot(&self) -> Vec<u8> {
        let snap = EngineSnapshot {
            version: 1,
            repeat_key: Some(self.repeat_key),
            clients: self
                .clients
                .iter()
                .map(|(k, t)| (k.clone(), Self::snap(&self.names, t)))
                .collect(),
            groups: self
                .groups
                .iter()
                .map(|(k, t)| (k.clone(), Self::snap(&self.names, t)))
                .collect(),
            policy: self.policy.clone(),
        };
        serde_json::to_vec(&snap).unwrap_or_default()
    }

    fn unsnap(
        detectors: &[Arc<dyn Detector>],
        names: &[String],
        key: &str,
        repeat: (RepeatHash, bool),
        s: TrackedSnapshot,
    ) -> Result<Tracked, DetectError> {
        let mut states = Vec::with_capacity(detectors.len());
        for (d, n) in detectors.iter().zip(names) {
            let st = match s.states.get(n) {
                // A detector added since the snapshot starts fresh.
                None => d.new_state(),
                Some(v) => {
                    let bytes = match v {
                        serde_json::Value::String(s) => s.clone().into_bytes(),
                        other => serde_json::to_vec(other).unwrap_or_default(),
                    };
                    d.restore_state(&bytes).map_err(|m| DetectError::Snapshot {
                        detector: n.clone(),
                        message: format!("client `{key}`: {m}"),
                    })?
                }
            };
            states.push(st);
        }
        Ok(Tracked {
            states,
            // `repeat.1`: the snapshot's hashes are of this key (not of the unkeyed hash).
            seen: RepeatMemory {
                hash: repeat.0,
                seen: if repeat.1 {
                    s.seen.into_iter().collect()
                } else {
                    FxHashSet::default()
                },
            },
            queries: s.queries,
        })
    }

    /// Rebuilds an engine from [`Engine::snapshot`] bytes, with `detectors` and `policy`
    /// (the policy's configuration comes from `policy`, its risk and overrides from the
    /// snapshot).
    pub fn restore(
        detectors: Vec<Arc<dyn Detector>>,
        policy: PolicyConfig,
        bytes: &[u8],
    ) -> Result<Self, DetectError> {
        let snap: EngineSnapshot =
            serde_json::from_slice(bytes).map_err(|e| DetectError::Snapshot {
                detector: "engine".into(),
                message: e.to_string(),
            })?;
        if snap.version != 1 {
            return Err(DetectError::Snapshot {
                detector: "engine".into(),
                message: format!("unsupported snapshot version {}", snap.version),
            });
        }
        let mut e = Engine::new(detectors, policy.clone());
        if let Some(key) = snap.repeat_key {
            e.repeat_key = key;
        }
        let repeat = (e.repeat_key, snap.repeat_key.is_some());
        for (k, s) in snap.clients {
            let t = Self::unsnap(&e.detectors, &e.names, &k, repeat, s)?;
            e.clients.insert(k, t);
        }
        for (k, s) in snap.groups {
            let t = Self::unsnap(&e.detectors, &e.names, &k, repeat, s)?;
            e.groups.insert(k, t);
        }
        e.policy = snap.policy.with_config(policy);
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{default_detectors, DetectorsConfig};
    use mamori_core::Action;
    use rand::{Rng, SeedableRng};

    fn obs<'a>(x: &'a [f32], probs: &'a [f32], t: u64) -> Observation<'a> {
        Observation {
            client: "",
            input: x,
            input_shape: &[],
            probs,
            label: 0,
            time_ms: t,
        }
    }

    /// The repeat hash is the keyed polynomial its docs define (one value per step, computed
    /// here with plain `u128` arithmetic), four values per step included, for every remainder
    /// length; another key gives other hashes; the key round-trips and bad keys are refused.
    #[test]
    fn repeat_hash_is_the_keyed_polynomial() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let p = P61 as u128;
        let reference = |r: u64, x: &[f32]| -> u64 {
            x.iter().fold(0u128, |acc, v| {
                (acc + v.to_bits() as u128 + 1) % p * r as u128 % p
            }) as u64
        };
        for len in (0..=9).chain([783, 784]) {
            let x: Vec<f32> = (0..len).map(|_| rng.gen_range(-2.0..2.0)).collect();
            for r in [1, 2, P61 - 1, rng.gen_range(1..P61)] {
                let h = RepeatHash::try_from(r).unwrap();
                assert_eq!(h.of(&x), reference(r, &x), "len {len}, key {r}");
            }
            let (a, b) = (RepeatHash::default(), RepeatHash::default());
            assert_ne!(a, b, "two fresh keys");
            if len > 0 {
                assert_ne!(a.of(&x), b.of(&x), "len {len}: another key, another hash");
            }
        }
        let h = RepeatHash::default();
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<RepeatHash>(&json).unwrap(), h);
        for bad in ["0", "2305843009213693951", "-1"] {
            assert!(serde_json::from_str::<RepeatHash>(bad).is_err(), "{bad}");
        }
    }

    /// Inputs that differ in one value, anywhere, or by a trailing value (a longer input whose
    /// extra value is +0.0, whose bits are 0) never share a hash (100k random pairs), and
    /// the value 0 and its negative are told apart.
    #[test]
    fn repeat_hash_separates_near_identical_inputs() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let h = RepeatHash::default();
        for _ in 0..50_000 {
            let len = rng.gen_range(1..40);
            let x: Vec<f32> = (0..len).map(|_| rng.gen()).collect();
            let mut y = x.clone();
            let i = rng.gen_range(0..len);
            y[i] = f32::from_bits(y[i].to_bits() ^ (1 << rng.gen_range(0..32)));
            assert_ne!(h.of(&x), h.of(&y), "{x:?} / {y:?}");
            let mut z = x.clone();
            z.push(0.0);
            assert_ne!(h.of(&x), h.of(&z), "{x:?} and one more zero");
        }
        assert_ne!(h.of(&[0.0]), h.of(&[-0.0]));
        assert_ne!(h.of(&[]), h.of(&[0.0]));
    }

    /// The repeat memory survives a snapshot with its key (a repeat after the restore is
    /// still one, so it reaches no similarity detector); a snapshot written before the key
    /// (no `repeat_key`) restores with a fresh, empty memory instead of hashes of another
    /// function.
    #[test]
    fn repeat_memory_survives_a_restore_and_keyless_snapshots_start_afresh() {
        let dets = default_detectors(&DetectorsConfig::default());
        let mut e = Engine::new(dets.clone(), PolicyConfig::default());
        let p = [1.0f32];
        let x: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
        e.observe("c", None, &obs(&x, &p, 0));
        let knn_queries = |e: &Engine| {
            let t = &e.clients["c"];
            let i = e.names.iter().position(|n| n == "knn").unwrap();
            t.states[i].queries()
        };
        assert_eq!(knn_queries(&e), 1);
        let snap = e.snapshot();
        let mut r = Engine::restore(dets.clone(), PolicyConfig::default(), &snap).unwrap();
        r.observe("c", None, &obs(&x, &p, 1));
        assert_eq!(
            knn_queries(&r),
            1,
            "the repeat reached the k-NN detector after a restore"
        );
        let mut v: serde_json::Value = serde_json::from_slice(&snap).unwrap();
        v.as_object_mut().unwrap().remove("repeat_key");
        let old = serde_json::to_vec(&v).unwrap();
        let mut r = Engine::restore(dets, PolicyConfig::default(), &old).unwrap();
        assert!(r.clients["c"].seen.seen.is_empty());
        r.observe("c", None, &obs(&x, &p, 1));
        assert_eq!(knn_queries(&r), 2, "a keyless memory was kept");
    }

    #[test]
    fn repeats_do_not_alarm_and_split_search_is_seen_by_the_group() {
        let dets = default_detectors(&DetectorsConfig::default());
        let mut e = Engine::new(dets.clone(), PolicyConfig::default());
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let p = [1.0f32];
        let x: Vec<f32> = (0..196).map(|_| rng.gen()).collect();
        for t in 0..300 {
            let d = e.observe("retry", None, &obs(&x, &p, t * 1000));
            assert_eq!(d.action, Action::Allow, "repeat {t}: {:?}", d.reasons);
        }
        // A near-duplicate search split over 10 keys of one organisation: 3 queries per key.
        let mut base: Vec<f32> = (0..196).map(|_| rng.gen()).collect();
        let mut group_alarm = false;
        let mut client_alarm = false;
        for i in 0..30 {
            for _ in 0..3 {
                let j = rng.gen_range(0..196);
                base[j] = rng.gen();
            }
            let d = e.observe(&format!("key{}", i % 10), Some("org"), &obs(&base, &p, i));
            group_alarm |= d.reasons.iter().any(|r| r.detector.starts_with("group:"));
            client_alarm |= d.reasons.iter().any(|r| !r.detector.starts_with("group:"));
        }
        assert!(group_alarm, "group did not alarm");
        assert!(!client_alarm, "a single key alarmed on 3 queries");
        // Snapshot / restore keeps states and risk.
        let snap = e.snapshot();
        let r = Engine::restore(dets.clone(), PolicyConfig::default(), &snap).unwrap();
        assert_eq!(r.queries("retry"), 300);
        assert_eq!(r.queries("key3"), 3);
        assert!(r.policy().risk("key9", 30) > 0.0);
        assert!(Engine::restore(dets, PolicyConfig::default(), b"{}").is_err());
    }
}
