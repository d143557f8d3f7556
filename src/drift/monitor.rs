//! Live drift of one version: sampled requests go through a bounded channel to
//! a thread that bins their rows into the profile's bins over a sliding window
//! of rows; reports compare that window with the reference.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::{Deserialize, Serialize};

use super::profile::{Kind, Profile, Side};
use super::stats;
use crate::tensor::Tensor;

/// `config.toml` `[drift]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Off even when a profile exists.
    pub enabled: Option<bool>,
    /// Share of requests observed (default 1).
    pub sample_rate: Option<f64>,
    /// Rows in the sliding window at most (default 1000).
    pub window: Option<usize>,
    /// Also forget rows older than this many seconds (default: only the row count).
    pub window_seconds: Option<f64>,
    /// PSI at or above which a feature counts as drifted (default 0.1).
    pub psi_threshold: Option<f64>,
    /// Share of drifted features that raises the alert (default 0.5).
    pub share: Option<f64>,
    /// Fewer rows than this in the window: no feature counts as drifted yet
    /// (default 100; the statistics are still reported).
    pub min_rows: Option<usize>,
}

/// Requests waiting to be binned; past this, observations are dropped (and counted).
const CHANNEL: usize = 8192;

pub struct Monitor {
    profile: Arc<Profile>,
    sample_rate: f64,
    psi_threshold: f64,
    share: f64,
    min_rows: usize,
    tx: Sender<(Vec<Tensor>, Vec<Tensor>)>,
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
    counts: Vec<Vec<u64>>,
}

impl Window {
    fn new(capacity: usize, max_age: Option<std::time::Duration>, profile: &Profile) -> Window {
        let features = profile.features.len();
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
            counts: profile
                .features
                .iter()
                .map(|f| vec![0; f.kind.bins()])
                .collect(),
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn pop_oldest(&mut self) {
        let slot = self.head * self.features;
        for (f, &b) in self.bins[slot..slot + self.features].iter().enumerate() {
            self.counts[f][b as usize] -= 1;
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
            self.counts[f][b as usize] += 1;
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
    ) -> crate::error::Result<Arc<Monitor>> {
        let capacity = cfg.window.unwrap_or(1000).max(1);
        let profile = Arc::new(profile);
        let max_age = cfg.window_seconds.map(std::time::Duration::from_secs_f64);
        let window = Arc::new(Mutex::new(Window::new(capacity, max_age, &profile)));
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL);
        let (p, w) = (profile.clone(), window.clone());
        std::thread::Builder::new()
            .name(format!("drift-{label}"))
            .spawn(move || bin_rows(&p, &rx, &w))
            .map_err(|e| {
                crate::error::Error::load(format!("cannot start the drift thread: {e}"))
            })?;
        Ok(Arc::new(Monitor {
            profile,
            sample_rate: cfg.sample_rate.unwrap_or(1.0).clamp(0.0, 1.0),
            psi_threshold: cfg.psi_threshold.unwrap_or(0.1),
            share: cfg.share.unwrap_or(0.5),
            min_rows: cfg.min_rows.unwrap_or(100),
            tx,
            window,
            dropped: AtomicU64::new(0),
        }))
    }

    /// Whether this request is observed (drawn at the sample rate).
    pub fn sample(&self) -> bool {
        self.sample_rate >= 1.0 || fastrand::f64() < self.sample_rate
    }

    /// Hands a request's inputs and outputs to the binning thread; never waits.
    pub fn observe(&self, inputs: Vec<Tensor>, outputs: Vec<Tensor>) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send((inputs, outputs)) {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    pub fn report(&self) -> Report {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.expire();
        let mut features = Vec::new();
        for (f, counts) in self.profile.features.iter().zip(&w.counts) {
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
        w.bins.len() * 2 + w.at_ms.len() * 8 + w.counts.iter().map(|c| c.len() * 8).sum::<usize>()
    }
}

/// How often the binning thread wakes: waking it per request would cost more
/// than the binning.
const TICK: std::time::Duration = std::time::Duration::from_millis(5);

/// The binning thread: every tick, bins what was queued; runs until the monitor
/// (and its sender) is dropped.
fn bin_rows(profile: &Profile, rx: &Receiver<(Vec<Tensor>, Vec<Tensor>)>, window: &Mutex<Window>) {
    let mut row = vec![0u16; profile.features.len()];
    loop {
        std::thread::sleep(TICK);
        let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
        w.expire();
        let now = w.now_ms();
        loop {
            let (inputs, outputs) = match rx.try_recv() {
                Ok(m) => m,
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
            };
            // Each feature's tensor: (tensor, rows, values per row).
            let tensors: Option<Vec<(&Tensor, usize, usize)>> = profile
                .features
                .iter()
                .map(|f| {
                    let pool = if f.side == Side::Input {
                        &inputs
                    } else {
                        &outputs
                    };
                    let t = pool.iter().find(|t| t.name == f.tensor)?;
                    let (&n, rest) = t.shape.split_first()?;
                    Some((t, n as usize, rest.iter().product::<i64>().max(0) as usize))
                })
                .collect();
            // A request without some feature's tensor (outputs not asked for) is skipped.
            let Some(tensors) = tensors else { continue };
            let rows = tensors.iter().map(|t| t.1).min().unwrap_or(0);
            for r in 0..rows {
                for ((f, (t, _, per_row)), b) in
                    profile.features.iter().zip(&tensors).zip(row.iter_mut())
                {
                    let x = match f.summary {
                        Some(s) => {
                            s.of((r * per_row..(r + 1) * per_row).filter_map(|i| value(t, i)))
                        }
                        None => value(t, r * per_row + f.column.unwrap_or(0)).unwrap_or(f64::NAN),
                    };
                    *b = f.kind.bin(x) as u16;
                }
                w.push(&row, now);
            }
        }
    }
}

/// Element `i` of a numeric tensor as f64.
fn value(t: &Tensor, i: usize) -> Option<f64> {
    let d = &t.data[..];
    let at = |w: usize| d.get(i * w..(i + 1) * w);
    Some(match t.dtype {
        crate::tensor::DataType::F32 => f32::from_le_bytes(at(4)?.try_into().ok()?) as f64,
        crate::tensor::DataType::F64 => f64::from_le_bytes(at(8)?.try_into().ok()?),
        crate::tensor::DataType::I64 => i64::from_le_bytes(at(8)?.try_into().ok()?) as f64,
        crate::tensor::DataType::I32 => i32::from_le_bytes(at(4)?.try_into().ok()?) as f64,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::profile::Feature;

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
        assert_eq!(w.counts[0], vec![1, 2], "the first row left");
        std::thread::sleep(std::time::Duration::from_millis(150));
        w.expire();
        assert_eq!(
            (w.len(), w.counts[0].clone()),
            (0, vec![0, 0]),
            "all older than 100 ms"
        );
    }
}
