//! How a model's requests are split over its versions: weights (a canary), a
//! sticky key hashed with weighted rendezvous hashing (so raising one weight
//! moves only the keys that must move), and a shadow version that gets a copy
//! of some requests, whose answers are measured against the primary's and dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::core::config::TrafficSpec;
use crate::core::error::{Error, Result};
use crate::core::tensor::{DataType, Tensor};

/// A validated policy, ready to route with.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    /// `(version, weight)` with weight > 0, ascending by version.
    weights: Vec<(u64, u64)>,
    total: u64,
    pub sticky_header: Option<String>,
    /// `(version, share of requests in [0, 1])`.
    pub shadow: Option<(u64, f64)>,
    pub spec: TrafficSpec,
}

impl Traffic {
    /// Checks a spec against the versions that serve; every reason is a 400.
    /// Versions are numbers, or alias names the source gives (`aliases`).
    pub fn new(
        spec: TrafficSpec,
        ready: &[u64],
        aliases: &BTreeMap<String, u64>,
    ) -> Result<Traffic> {
        let version = |s: &str, what: &str| -> Result<u64> {
            let v: u64 = match s.parse() {
                Ok(v) => v,
                Err(_) => *aliases.get(s).ok_or_else(|| {
                    Error::invalid(format!(
                        "{what} '{s}' is not a version number or an alias (aliases: {:?})",
                        aliases.keys().collect::<Vec<_>>()
                    ))
                })?,
            };
            if !ready.contains(&v) {
                return Err(Error::invalid(format!(
                    "{what} {v} is not a ready version (ready: {ready:?})"
                )));
            }
            Ok(v)
        };
        let mut weights = Vec::new();
        for (v, &w) in &spec.weights {
            let v = version(v, "version")?;
            if w > 0 {
                weights.push((v, w));
            }
        }
        weights.sort_unstable();
        let total = weights.iter().map(|(_, w)| w).sum::<u64>();
        if !spec.weights.is_empty() && total == 0 {
            return Err(Error::invalid("every weight is 0: no version would answer"));
        }
        let shadow = match &spec.shadow {
            None => None,
            Some(s) => {
                let v = version(&s.version, "shadow version")?;
                if weights.iter().any(|(w, _)| *w == v) {
                    return Err(Error::invalid(format!(
                        "shadow version {v} also has a weight: a shadow only gets copies"
                    )));
                }
                if !(0.0..=100.0).contains(&s.percent) || s.percent.is_nan() {
                    return Err(Error::invalid(format!(
                        "shadow percent {} is not within 0..=100",
                        s.percent
                    )));
                }
                Some((v, s.percent / 100.0))
            }
        };
        if let Some(h) = &spec.sticky_header {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(Error::invalid(format!(
                    "sticky_header '{h}' is not a header name"
                )));
            }
        }
        Ok(Traffic {
            weights,
            total,
            sticky_header: spec.sticky_header.as_ref().map(|h| h.to_ascii_lowercase()),
            shadow,
            spec,
        })
    }

    /// The share of unversioned requests version `v` gets; `None` without a split.
    pub fn share(&self, v: u64) -> Option<f64> {
        (self.total > 0).then(|| {
            let w: u64 = self
                .weights
                .iter()
                .filter(|(x, _)| *x == v)
                .map(|(_, w)| w)
                .sum();
            w as f64 / self.total as f64
        })
    }

    /// Whether a policy splits anything (else the default version answers).
    pub fn splits(&self) -> bool {
        !self.weights.is_empty()
    }

    /// The version for one request among those `ready`: by rendezvous hashing of
    /// `key` when there is one, else at random by weight. `None`: no weighted
    /// version is ready (the caller falls back to the default version).
    pub fn pick(&self, key: Option<&[u8]>, ready: impl Fn(u64) -> bool) -> Option<u64> {
        match key {
            Some(k) => self
                .weights
                .iter()
                .filter(|(v, _)| ready(*v))
                .map(|&(v, w)| (rendezvous_score(k, v, w), v))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, v)| v),
            None => {
                let live: u64 = self
                    .weights
                    .iter()
                    .filter(|(v, _)| ready(*v))
                    .map(|(_, w)| w)
                    .sum();
                if live == 0 {
                    return None;
                }
                let mut r = if live == self.total {
                    fastrand::u64(..self.total)
                } else {
                    fastrand::u64(..live)
                };
                for &(v, w) in self.weights.iter().filter(|(v, _)| ready(*v)) {
                    if r < w {
                        return Some(v);
                    }
                    r -= w;
                }
                None
            }
        }
    }

    /// Whether this request also goes to the shadow version.
    pub fn shadow_this(&self) -> Option<u64> {
        self.shadow
            .filter(|&(_, share)| share > 0.0 && fastrand::f64() < share)
            .map(|(v, _)| v)
    }
}

/// A request's own sticky key: V2 `parameters.routing_key` (a string or a number).
pub fn routing_key(parameters: &crate::core::request::Parameters) -> Option<Vec<u8>> {
    match parameters.get("routing_key")? {
        serde_json::Value::String(s) => Some(s.as_bytes().to_vec()),
        v @ serde_json::Value::Number(_) => Some(v.to_string().into_bytes()),
        _ => None,
    }
}

/// Weighted rendezvous hashing: every (key, version) pair gets a uniform number
/// in (0, 1); the version with the highest `weight / -ln(u)` wins. Raising one
/// weight only moves keys to that version.
fn rendezvous_score(key: &[u8], version: u64, weight: u64) -> f64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(key, version);
    // 53 random bits, never 0 or 1.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight as f64 / -u.ln()
}

/// What the shadow version did with the copies it got.
#[derive(Debug, Default)]
pub struct ShadowStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Requests whose primary and shadow answers agree on the argmax of every
    /// output with a class dimension.
    pub argmax_agree: AtomicU64,
    /// Answers that disagree on some argmax (issue 7's disagreement counter).
    pub disagreements: AtomicU64,
    /// Nanoseconds the shadow took, summed.
    pub latency_ns: AtomicU64,
    /// Per output: the largest absolute difference seen. Updated by
    /// read-copy-update, so no lock is taken on an async thread.
    max_abs_diff: arc_swap::ArcSwap<BTreeMap<String, f64>>,
}

impl ShadowStats {
    /// Records one shadow answer against the primary's outputs.
    pub fn record(
        &self,
        took: std::time::Duration,
        primary: &[Tensor],
        shadow: Result<Vec<Tensor>>,
    ) {
        self.requests.fetch_add(1, Relaxed);
        self.latency_ns
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        let shadow = match shadow {
            Ok(s) => s,
            Err(_) => {
                self.errors.fetch_add(1, Relaxed);
                return;
            }
        };
        let mut agree = true;
        let mut diffs: Vec<(&str, f64)> = Vec::with_capacity(primary.len());
        for p in primary {
            let Some(s) = shadow.iter().find(|s| s.name == p.name) else {
                continue;
            };
            let (Some(a), Some(b)) = (as_f64(p), as_f64(s)) else {
                continue;
            };
            if a.len() != b.len() || p.shape != s.shape {
                agree = false;
                continue;
            }
            let d = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            diffs.push((&p.name, d));
            if let Some(&cols) = p.shape.last().filter(|_| p.shape.len() >= 2) {
                let cols = cols.max(1) as usize;
                agree &= a
                    .chunks(cols)
                    .zip(b.chunks(cols))
                    .all(|(x, y)| argmax(x) == argmax(y));
            }
        }
        let grows = |m: &BTreeMap<String, f64>| {
            diffs
                .iter()
                .any(|(n, d)| m.get(*n).is_none_or(|old| d > old))
        };
        if grows(&self.max_abs_diff.load()) {
            self.max_abs_diff.rcu(|m| {
                let mut m = BTreeMap::clone(m);
                for (n, d) in &diffs {
                    let e = m.entry(n.to_string()).or_insert(0.0);
                    *e = e.max(*d);
                }
                m
            });
        }
        if agree {
            self.argmax_agree.fetch_add(1, Relaxed);
        } else {
            self.disagreements.fetch_add(1, Relaxed);
        }
    }

    /// The stats as the admin API shows them.
    pub fn to_json(&self) -> serde_json::Value {
        let n = self.requests.load(Relaxed);
        let errors = self.errors.load(Relaxed);
        let answered = n - errors.min(n);
        serde_json::json!({
            "requests": n,
            "errors": errors,
            "argmax_agreement": if answered > 0 { self.argmax_agree.load(Relaxed) as f64 / answered as f64 } else { 0.0 },
            "disagreements": self.disagreements.load(Relaxed),
            "mean_latency_us": if n > 0 { self.latency_ns.load(Relaxed) as f64 / n as f64 / 1000.0 } else { 0.0 },
            "max_abs_diff": **self.max_abs_diff.load(),
        })
    }
}

fn argmax(x: &[f64]) -> usize {
    x.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// A numeric tensor's elements as f64; `None` for BYTES and BOOL.
fn as_f64(t: &Tensor) -> Option<Vec<f64>> {
    let d = &t.data[..];
    Some(match t.dtype {
        DataType::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        DataType::F64 => d
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DataType::I64 => d
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        DataType::I32 => d
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::ShadowSpec;

    fn spec(w: &[(&str, u64)]) -> TrafficSpec {
        TrafficSpec {
            weights: w.iter().map(|(v, w)| (v.to_string(), *w)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn invalid_policies_say_why() {
        let ready = [1, 2, 3];
        for (s, needle) in [
            (spec(&[("9", 1)]), "not a ready version"),
            (spec(&[("x", 1)]), "not a version number or an alias"),
            (spec(&[("1", 0), ("2", 0)]), "every weight is 0"),
            (
                TrafficSpec {
                    shadow: Some(ShadowSpec {
                        version: "1".into(),
                        percent: 10.0,
                    }),
                    ..spec(&[("1", 100)])
                },
                "also has a weight",
            ),
            (
                TrafficSpec {
                    shadow: Some(ShadowSpec {
                        version: "2".into(),
                        percent: 120.0,
                    }),
                    ..spec(&[("1", 100)])
                },
                "within 0..=100",
            ),
        ] {
            let e = Traffic::new(s, &ready, &BTreeMap::new())
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn raising_a_weight_moves_only_the_keys_that_must_move() {
        let aliases = BTreeMap::from([("champion".to_string(), 1)]);
        let t10 = Traffic::new(spec(&[("champion", 90), ("2", 10)]), &[1, 2], &aliases).unwrap();
        let t20 = Traffic::new(spec(&[("1", 80), ("2", 20)]), &[1, 2], &aliases).unwrap();
        let (mut on2, mut moved, mut back) = (0, 0, 0);
        let n = 20_000;
        for i in 0..n {
            let k = format!("user-{i}");
            let a = t10.pick(Some(k.as_bytes()), |_| true).unwrap();
            let b = t20.pick(Some(k.as_bytes()), |_| true).unwrap();
            assert_eq!(a, t10.pick(Some(k.as_bytes()), |_| true).unwrap(), "sticky");
            on2 += usize::from(a == 2);
            moved += usize::from(a != b);
            back += usize::from(a == 2 && b == 1);
        }
        let share = |x: usize| x as f64 / n as f64;
        assert!((share(on2) - 0.10).abs() < 0.01, "{}", share(on2));
        assert!((0.09..0.12).contains(&share(moved)), "{}", share(moved));
        assert_eq!(back, 0, "no key leaves the version whose weight rose");
        // A version that is not ready is skipped.
        assert_eq!(t10.pick(Some(b"k"), |v| v == 1), Some(1));
        assert_eq!(t10.pick(None, |_| false), None);
    }
}
