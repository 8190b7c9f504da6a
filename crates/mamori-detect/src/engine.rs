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

/// The exact-repeat rule's memory for one client (or group): the hashes of the inputs it sent,
/// at most [`MAX_SEEN`] (all forgotten when full). Shared by this engine and the gateway, which
/// applies the same rule to its subjects.
#[derive(Clone, Debug, Default)]
pub struct RepeatMemory {
    /// Input hashes (already mixed: the Fx hash of the set adds one multiply, not SipHash).
    seen: FxHashSet<u64>,
}

impl RepeatMemory {
    /// Whether `x` is bit-identical to an input remembered (by its 64-bit [`input_hash`]);
    /// remembers it.
    pub fn repeat(&mut self, x: &[f32]) -> bool {
        self.repeat_hash(input_hash(x))
    }

    /// Heap bytes of its hash set.
    pub fn heap_bytes(&self) -> usize {
        crate::heap::set(&self.seen)
    }

    /// [`RepeatMemory::repeat`] of an input whose hash is `hash`.
    fn repeat_hash(&mut self, hash: u64) -> bool {
        if self.seen.len() >= MAX_SEEN {
            self.seen.clear();
        }
        !self.seen.insert(hash)
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
}

/// A 64-bit hash of an input's exact bits (FNV-style, mixed per value), for the exact-repeat
/// rule.
pub fn input_hash(x: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in x {
        h ^= v.to_bits() as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
        h ^= h >> 29;
    }
    h
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

    fn fresh(detectors: &[Arc<dyn Detector>]) -> Tracked {
        Tracked {
            states: detectors.iter().map(|d| d.new_state()).collect(),
            seen: RepeatMemory::default(),
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
        let repeat = t.seen.repeat_hash(hash);
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
        let hash = input_hash(obs.input);
        let mut verdicts = Vec::with_capacity(2 * self.names.len());
        let dets = &self.detectors;
        // Look up before inserting: no key allocation for a known client.
        if !self.clients.contains_key(client) {
            self.clients.insert(client.to_string(), Self::fresh(dets));
        }
        if let Some(t) = self.clients.get_mut(client) {
            Self::run(&self.names, &self.names, t, obs, hash, &mut verdicts);
        }
        if let Some(g) = group {
            if !self.groups.contains_key(g) {
                self.groups.insert(g.to_string(), Self::fresh(dets));
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
            seen: RepeatMemory {
                seen: s.seen.into_iter().collect(),
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
        for (k, s) in snap.clients {
            let t = Self::unsnap(&e.detectors, &e.names, &k, s)?;
            e.clients.insert(k, t);
        }
        for (k, s) in snap.groups {
            let t = Self::unsnap(&e.detectors, &e.names, &k, s)?;
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
