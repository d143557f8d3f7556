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
    /// Rows in the sliding window (default 1000).
    pub window: Option<usize>,
    /// PSI at or above which a feature counts as drifted (default 0.1).
    pub psi_threshold: Option<f64>,
    /// Share of drifted features that raises the alert (default 0.5).
    pub share: Option<f64>,
}

/// Requests waiting to be binned; past this, observations are dropped (and counted).
const CHANNEL: usize = 8192;

pub struct Monitor {
    profile: Arc<Profile>,
    sample_rate: f64,
    psi_threshold: f64,
    share: f64,
    tx: Sender<(Vec<Tensor>, Vec<Tensor>)>,
    window: Arc<Mutex<Window>>,
    /// Observations dropped because the binning thread was behind.
    pub dropped: AtomicU64,
}

/// The last rows seen: each row's bin per feature, and the counts per bin.
struct Window {
    capacity: usize,
    /// Rows binned since the start.
    seen: u64,
    /// A ring of `capacity` rows, each `features` bins; the oldest row is at
    /// `seen % capacity` once the ring is full.
    bins: Vec<u16>,
    features: usize,
    counts: Vec<Vec<u64>>,
}

impl Window {
    fn len(&self) -> usize {
        (self.seen as usize).min(self.capacity)
    }

    /// Adds one row's bins, forgetting the oldest row when full.
    fn push(&mut self, row: &[u16]) {
        let slot = (self.seen % self.capacity as u64) as usize * self.features;
        if self.seen >= self.capacity as u64 {
            for (f, &b) in self.bins[slot..slot + self.features].iter().enumerate() {
                self.counts[f][b as usize] -= 1;
            }
        }
        for (f, &b) in row.iter().enumerate() {
            self.counts[f][b as usize] += 1;
        }
        self.bins[slot..slot + self.features].copy_from_slice(row);
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
        let window = Arc::new(Mutex::new(Window {
            capacity,
            seen: 0,
            bins: vec![0; capacity * profile.features.len()],
            features: profile.features.len(),
            counts: profile
                .features
                .iter()
                .map(|f| vec![0; f.kind.bins()])
                .collect(),
        }));
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
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
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
                drifted: w.len() > 0 && psi >= self.psi_threshold,
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
        w.bins.len() * 2 + w.counts.iter().map(|c| c.len() * 8).sum::<usize>()
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
        loop {
            let (inputs, outputs) = match rx.try_recv() {
                Ok(m) => m,
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
            };
            // Each feature's tensor: (values, rows, columns).
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
                    match t.shape.as_slice() {
                        [n] => Some((t, *n as usize, 1)),
                        [n, k] => Some((t, *n as usize, *k as usize)),
                        _ => None,
                    }
                })
                .collect();
            // A request without some feature's tensor (outputs not asked for) is skipped.
            let Some(tensors) = tensors else { continue };
            let rows = tensors.iter().map(|t| t.1).min().unwrap_or(0);
            for r in 0..rows {
                for ((f, (t, _, cols)), b) in
                    profile.features.iter().zip(&tensors).zip(row.iter_mut())
                {
                    let x = value(t, r * cols + f.column.unwrap_or(0)).unwrap_or(f64::NAN);
                    *b = f.kind.bin(x) as u16;
                }
                w.push(&row);
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
