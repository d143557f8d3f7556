//! Live drift of one version: sampled requests go through a bounded channel to
//! a thread that bins their rows into the profile's bins over a sliding window
//! of rows; reports compare that window with the reference.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;
use smallvec::SmallVec;

use super::profile::{Kind, Profile, Side};
use super::stats;
use crate::core::config::DriftConfig;
use crate::core::tensor::{DataType, Tensor};

/// Requests waiting to be binned; past this, observations are dropped (and counted).
const CHANNEL: usize = 8192;

/// Buffers kept for reuse, and the largest kept: at most 16 MiB a version.
const SPENT: usize = 1024;
const SPENT_BYTES: usize = 16 << 10;

/// The tensors a profile reads, each once, and which of them each feature reads:
/// worked out once, so that a request is matched by a few name comparisons.
struct Layout {
    tensors: Vec<(Side, String)>,
    /// For each profile feature, its tensor's index in `tensors`.
    of_feature: Vec<usize>,
}

impl Layout {
    fn of(profile: &Profile) -> Layout {
        let mut tensors: Vec<(Side, String)> = Vec::new();
        let of_feature = profile
            .features
            .iter()
            .map(|f| {
                let key = (f.side, f.tensor.clone());
                tensors.iter().position(|t| *t == key).unwrap_or_else(|| {
                    tensors.push(key);
                    tensors.len() - 1
                })
            })
            .collect();
        Layout {
            tensors,
            of_feature,
        }
    }
}

/// A sampled request's values, as the binning thread reads them: the bytes of
/// each tensor the profile reads, copied into one buffer. One allocation a
/// request (it was seven when whole tensors were cloned, a fifth of
/// `mlp_small`'s throughput with the frees on another thread). A copy, not a
/// shared slice: inputs slice the request body, and holding it past the
/// request would keep hyper from reusing its read buffer.
pub struct Observation {
    buf: Vec<u8>,
    /// Indexed like `Layout::tensors`.
    parts: SmallVec<[Part; 4]>,
}

/// Where one tensor lies in an observation's buffer.
#[derive(Debug, Clone, Copy)]
struct Part {
    dtype: DataType,
    start: usize,
    rows: usize,
    per_row: usize,
}

impl Part {
    /// Element `i` as f64; `None` past the end or for a non-numeric type.
    #[inline]
    fn value(&self, buf: &[u8], i: usize) -> Option<f64> {
        if i >= self.rows * self.per_row {
            return None;
        }
        let at = |w: usize| -> Option<[u8; 8]> {
            let b = buf.get(self.start + i * w..self.start + (i + 1) * w)?;
            let mut a = [0u8; 8];
            a[..w].copy_from_slice(b);
            Some(a)
        };
        Some(match self.dtype {
            DataType::F32 => f32::from_le_bytes(at(4)?[..4].try_into().ok()?) as f64,
            DataType::F64 => f64::from_le_bytes(at(8)?),
            DataType::I64 => i64::from_le_bytes(at(8)?) as f64,
            DataType::I32 => i32::from_le_bytes(at(4)?[..4].try_into().ok()?) as f64,
            _ => return None,
        })
    }
}

impl Observation {
    /// Appends a tensor's bytes as part `ix`.
    fn put(&mut self, ix: usize, t: &Tensor) -> Option<()> {
        let (&rows, rest) = t.shape.split_first()?;
        self.parts[ix] = Part {
            dtype: t.dtype,
            start: self.buf.len(),
            rows: usize::try_from(rows).ok()?,
            per_row: rest.iter().product::<i64>().max(0) as usize,
        };
        self.buf.extend_from_slice(&t.data);
        Some(())
    }
}

pub struct Monitor {
    profile: Arc<Profile>,
    sample_rate: f64,
    psi_threshold: f64,
    share: f64,
    min_rows: usize,
    layout: Arc<Layout>,
    tx: Sender<Observation>,
    /// Buffers the binning thread is done with, for the next captures.
    spent: Receiver<Vec<u8>>,
    window: Arc<Mutex<Window>>,
    /// Observations dropped because the binning thread was behind.
    pub dropped: AtomicU64,
}

/// The last rows seen: each row's bin per feature, and the counts per bin.
struct Window {
    capacity: usize,
    /// Rows older than this leave the window too (`drift.window_seconds`).
    max_age: Option<std::time::Duration>,
    started: std::time::Instant,
    /// Rows binned since the start.
    seen: u64,
    /// A ring of `capacity` rows, each `features` bins, the oldest at `head`.
    bins: Vec<u16>,
    /// When each slot's row was seen, in milliseconds since `started`.
    at_ms: Vec<u64>,
    head: usize,
    len: usize,
    features: usize,
    /// Rows per bin, every feature's bins end to end (one allocation: the
    /// binning thread touches a row's worth of them per row).
    counts: Vec<u64>,
    /// Where each feature's bins start in `counts`, and the end.
    offsets: Vec<usize>,
}

impl Window {
    fn new(capacity: usize, max_age: Option<std::time::Duration>, profile: &Profile) -> Window {
        let features = profile.features.len();
        let offsets: Vec<usize> = std::iter::once(0)
            .chain(profile.features.iter().scan(0, |end, f| {
                *end += f.kind.bins();
                Some(*end)
            }))
            .collect();
        Window {
            capacity,
            max_age,
            started: std::time::Instant::now(),
            seen: 0,
            bins: vec![0; capacity * features],
            at_ms: vec![0; capacity],
            head: 0,
            len: 0,
            features,
            counts: vec![0; *offsets.last().unwrap_or(&0)],
            offsets,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Feature `f`'s rows per bin.
    fn counts_of(&self, f: usize) -> &[u64] {
        &self.counts[self.offsets[f]..self.offsets[f + 1]]
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn pop_oldest(&mut self) {
        let slot = self.head * self.features;
        for (f, &b) in self.bins[slot..slot + self.features].iter().enumerate() {
            self.counts[self.offsets[f] + b as usize] -= 1;
        }
        self.head = (self.head + 1) % self.capacity;
        self.len -= 1;
    }

    /// Forgets the rows older than the time window, if there is one.
    fn expire(&mut self) {
        let Some(age) = self.max_age else { return };
        let cutoff = self.now_ms().saturating_sub(age.as_millis() as u64);
        while self.len > 0 && self.at_ms[self.head] < cutoff {
            self.pop_oldest();
        }
    }

    /// Adds one row's bins, forgetting the oldest row when full.
    fn push(&mut self, row: &[u16], now_ms: u64) {
        if self.len == self.capacity {
            self.pop_oldest();
        }
        let i = (self.head + self.len) % self.capacity;
        for (f, &b) in row.iter().enumerate() {
            self.counts[self.offsets[f] + b as usize] += 1;
        }
        self.bins[i * self.features..(i + 1) * self.features].copy_from_slice(row);
        self.at_ms[i] = now_ms;
        self.len += 1;
        self.seen += 1;
    }
}

/// One feature's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureReport {
    pub feature: String,
    pub side: Side,
    pub psi: f64,
    pub jensen_shannon: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ks: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wasserstein: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chi_square: Option<f64>,
    pub drifted: bool,
    pub reference: Vec<f64>,
    pub current: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Rows in the window now, and binned since the start.
    pub rows: usize,
    pub seen: u64,
    pub window: usize,
    /// Fewer rows than this in the window: no feature counts as drifted.
    pub min_rows: usize,
    pub psi_threshold: f64,
    pub share: f64,
    /// Input features drifted over all input features.
    pub drifted_share: f64,
    pub alert: bool,
    pub prediction_drifted_share: f64,
    pub prediction_alert: bool,
    pub dropped: u64,
    pub features: Vec<FeatureReport>,
}

impl Monitor {
    pub fn start(
        profile: Profile,
        cfg: &DriftConfig,
        label: &str,
        scope: &crate::core::tasks::Scope,
    ) -> crate::core::error::Result<Arc<Monitor>> {
        let capacity = cfg.window.unwrap_or(1000).max(1);
        let profile = Arc::new(profile);
        let max_age = cfg.window_seconds.map(std::time::Duration::from_secs_f64);
        let window = Arc::new(Mutex::new(Window::new(capacity, max_age, &profile)));
        let layout = Arc::new(Layout::of(&profile));
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL);
        let (spent_tx, spent) = crossbeam_channel::bounded(SPENT);
        let (p, l, w) = (profile.clone(), layout.clone(), window.clone());
        // It ends when the version (its sender) goes: it lives in the
        // version's scope.
        scope
            .spawn_thread(format!("drift-{label}"), move || {
                bin_rows(&p, &l, &rx, &spent_tx, &w)
            })
            .map_err(|e| {
                crate::core::error::Error::load(format!("cannot start the drift thread: {e}"))
            })?;
        Ok(Arc::new(Monitor {
            profile,
            sample_rate: cfg.sample_rate.unwrap_or(1.0).clamp(0.0, 1.0),
            psi_threshold: cfg.psi_threshold.unwrap_or(0.1),
            share: cfg.share.unwrap_or(0.5),
            min_rows: cfg.min_rows.unwrap_or(100),
            layout,
            tx,
            spent,
            window,
            dropped: AtomicU64::new(0),
        }))
    }

    /// Copies the inputs the profile reads when this request is drawn at the
    /// sample rate; `None` when it is not, or lacks one of them.
    pub fn capture(&self, inputs: &[Tensor]) -> Option<Observation> {
        if self.sample_rate < 1.0 && fastrand::f64() >= self.sample_rate {
            return None;
        }
        let tensors = &self.layout.tensors;
        let mut obs = Observation {
            // A buffer back from the binning thread: allocating here and freeing
            // there cost the request threads mimalloc's cross-thread frees.
            buf: self.spent.try_recv().unwrap_or_default(),
            parts: smallvec::smallvec![Part { dtype: DataType::F32, start: 0, rows: 0, per_row: 0 }; tensors.len()],
        };
        for (ix, (side, name)) in tensors.iter().enumerate() {
            if *side == Side::Input {
                obs.put(ix, inputs.iter().find(|t| t.name == *name)?)?;
            }
        }
        Some(obs)
    }

    /// Adds a captured request's outputs and hands it to the binning thread;
    /// never waits. A request without an output the profile reads (one not
    /// asked for) is not observed.
    pub fn observe(&self, mut obs: Observation, outputs: &[Tensor]) {
        for (ix, (side, name)) in self.layout.tensors.iter().enumerate() {
            if *side == Side::Output {
                let Some(t) = outputs.iter().find(|t| t.name == *name) else {
                    return;
                };
                if obs.put(ix, t).is_none() {
                    return;
                }
            }
        }
        if let Err(TrySendError::Full(_)) = self.tx.try_send(obs) {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    pub fn report(&self) -> Report {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.expire();
        let mut features = Vec::new();
        for (i, f) in self.profile.features.iter().enumerate() {
            let counts = w.counts_of(i);
            let reference = f.kind.reference();
            let current = stats::proportions(counts);
            let (ks, wasserstein, chi_square) = match &f.kind {
                Kind::Numeric { edges, std, .. } => {
                    let centres: Vec<f64> = edges.windows(2).map(|e| (e[0] + e[1]) / 2.0).collect();
                    (
                        Some(stats::ks(&reference, &current)),
                        Some(stats::wasserstein_normed(
                            &reference, &current, &centres, *std,
                        )),
                        None,
                    )
                }
                Kind::Categorical { .. } => {
                    (None, None, Some(stats::chi_square(&reference, counts)))
                }
            };
            let psi = stats::psi(&reference, &current);
            features.push(FeatureReport {
                feature: f.name.clone(),
                side: f.side,
                psi,
                jensen_shannon: stats::jensen_shannon(&reference, &current),
                ks,
                wasserstein,
                chi_square,
                drifted: w.len() >= self.min_rows.max(1) && psi >= self.psi_threshold,
                reference,
                current,
            });
        }
        let share_of = |side: Side| {
            let of: Vec<&FeatureReport> = features.iter().filter(|f| f.side == side).collect();
            if of.is_empty() {
                0.0
            } else {
                of.iter().filter(|f| f.drifted).count() as f64 / of.len() as f64
            }
        };
        let (drifted_share, prediction_drifted_share) =
            (share_of(Side::Input), share_of(Side::Output));
        Report {
            rows: w.len(),
            seen: w.seen,
            window: w.capacity,
            min_rows: self.min_rows,
            psi_threshold: self.psi_threshold,
            share: self.share,
            drifted_share,
            alert: drifted_share > 0.0 && drifted_share >= self.share,
            prediction_drifted_share,
            prediction_alert: prediction_drifted_share > 0.0
                && prediction_drifted_share >= self.share,
            dropped: self.dropped.load(Relaxed),
            features,
        }
    }

    /// Bytes the window holds (the monitor's memory beyond its profile).
    pub fn window_bytes(&self) -> usize {
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.bins.len() * 2 + w.at_ms.len() * 8 + w.counts.len() * 8 + w.offsets.len() * 8
    }
}

/// How often the binning thread wakes while requests come: waking it per
/// request would cost more than the binning.
const TICK: std::time::Duration = std::time::Duration::from_millis(5);

/// The binning thread: while requests come, every tick, bins what was queued;
/// after a tick that found nothing it sleeps until the next observation
/// (an idle server wakes no thread: a 5 ms tick at rest was 92 % of an idle
/// server's CPU). Old rows need no tick: a report expires them. Runs until the
/// monitor (and its sender) is dropped.
fn bin_rows(
    profile: &Profile,
    layout: &Layout,
    rx: &Receiver<Observation>,
    spent: &Sender<Vec<u8>>,
    window: &Mutex<Window>,
) {
    let mut row = vec![0u16; profile.features.len()];
    let plan: Vec<_> = profile
        .features
        .iter()
        .zip(layout.of_feature.iter().copied())
        .collect();
    let mut idle = true;
    loop {
        let mut first = None;
        if idle {
            match rx.recv() {
                Ok(obs) => first = Some(obs),
                Err(_) => return,
            }
        } else {
            std::thread::sleep(TICK);
        }
        let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
        w.expire();
        let now = w.now_ms();
        idle = first.is_none();
        loop {
            let obs = match first.take().map_or_else(|| rx.try_recv(), Ok) {
                Ok(m) => m,
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
            };
            idle = false;
            let rows = obs.parts.iter().map(|p| p.rows).min().unwrap_or(0);
            for r in 0..rows {
                for (&(f, ix), b) in plan.iter().zip(row.iter_mut()) {
                    let part = &obs.parts[ix];
                    let first = r * part.per_row;
                    let x = match f.summary {
                        Some(s) => s
                            .of((first..first + part.per_row)
                                .filter_map(|i| part.value(&obs.buf, i))),
                        None => part
                            .value(&obs.buf, first + f.column.unwrap_or(0))
                            .unwrap_or(f64::NAN),
                    };
                    *b = f.kind.bin(x) as u16;
                }
                w.push(&row, now);
            }
            let mut buf = obs.buf;
            if buf.capacity() <= SPENT_BYTES {
                buf.clear();
                let _ = spent.try_send(buf);
            }
        }
    }
}

/// A monitor watches its version's requests: a sample of their inputs, then
/// the outputs they were answered with.
impl crate::serving::RequestObserver for Monitor {
    fn on_request(
        &self,
        request: &crate::core::request::InferRequest,
    ) -> Option<crate::serving::Observation> {
        Some(Box::new(self.capture(&request.inputs)?))
    }

    fn on_response(&self, kept: crate::serving::Observation, answer: crate::serving::Answer<'_>) {
        // A failed request has no outputs to compare; its sampled inputs go.
        if let (Ok(obs), Ok(outputs)) = (kept.downcast::<Observation>(), answer.outputs) {
            self.observe(*obs, outputs);
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::drift::profile::Feature;

    fn profile() -> Profile {
        Profile {
            rows: 4,
            features: vec![Feature {
                name: "x".into(),
                side: Side::Input,
                tensor: "x".into(),
                column: None,
                summary: None,
                kind: Kind::Numeric {
                    edges: vec![0.0, 1.0, 2.0],
                    proportions: vec![0.5, 0.5],
                    std: 0.5,
                },
            }],
        }
    }

    #[test]
    fn the_window_keeps_the_last_rows_and_forgets_old_ones() {
        let mut w = Window::new(3, Some(std::time::Duration::from_millis(100)), &profile());
        for (b, t) in [(0u16, 0u64), (1, 10), (1, 20), (0, 30)] {
            w.push(&[b], t);
        }
        assert_eq!((w.len(), w.seen), (3, 4));
        assert_eq!(w.counts_of(0), [1, 2], "the first row left");
        std::thread::sleep(std::time::Duration::from_millis(150));
        w.expire();
        assert_eq!(
            (w.len(), w.counts_of(0).to_vec()),
            (0, vec![0, 0]),
            "all older than 100 ms"
        );
    }

    fn feature(name: &str, side: Side, tensor: &str, column: Option<usize>) -> Feature {
        Feature {
            name: name.into(),
            side,
            tensor: tensor.into(),
            column,
            summary: None,
            kind: Kind::Numeric {
                edges: vec![0.0, 1.0, 2.0],
                proportions: vec![0.5, 0.5],
                std: 0.5,
            },
        }
    }

    fn f32s(name: &str, shape: &[i64], values: &[f32]) -> Tensor {
        Tensor {
            name: name.into(),
            dtype: DataType::F32,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn seen_after(m: &Monitor, n: u64) -> Report {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let r = m.report();
            if r.seen >= n || std::time::Instant::now() > until {
                return r;
            }
            std::thread::sleep(TICK);
        }
    }

    #[test]
    fn rows_are_binned_from_the_tensors_each_feature_names() {
        let profile = Profile {
            rows: 4,
            features: vec![
                feature("x0", Side::Input, "x", Some(0)),
                feature("x1", Side::Input, "x", Some(1)),
                feature("y", Side::Output, "y", None),
            ],
        };
        let m = Monitor::start(
            profile,
            &DriftConfig::default(),
            "test",
            &crate::core::tasks::Scope::new("test"),
        )
        .unwrap();
        assert!(
            m.capture(&[f32s("other", &[1, 2], &[0.5, 1.5])]).is_none(),
            "no input x"
        );
        let obs = m
            .capture(&[f32s("x", &[2, 2], &[0.5, 1.5, 0.5, 0.5])])
            .unwrap();
        m.observe(obs, &[f32s("z", &[2], &[1.5, 1.5])]);
        let obs = m
            .capture(&[f32s("x", &[2, 2], &[0.5, 1.5, 0.5, 0.5])])
            .unwrap();
        m.observe(
            obs,
            &[f32s("z", &[2], &[1.5, 1.5]), f32s("y", &[2], &[1.5, 0.5])],
        );
        let r = seen_after(&m, 2);
        assert_eq!(r.seen, 2, "only the request with output y was observed");
        let current: Vec<&[f64]> = r.features.iter().map(|f| &f.current[..]).collect();
        assert_eq!(current, [&[1.0, 0.0][..], &[0.5, 0.5], &[0.5, 0.5]]);
    }
}
