//! Live drift of one version: sampled requests go through a bounded channel to
//! a thread that bins their rows into the profile's bins over a sliding window
//! of rows; reports compare that window with the reference.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::{Deserialize, Serialize};

use super::profile::{table, Kind, Profile, Side};
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
const CHANNEL: usize = 1024;

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
    rows: VecDeque<Vec<u16>>,
    counts: Vec<Vec<u64>>,
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
            rows: VecDeque::with_capacity(capacity),
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
                drifted: !w.rows.is_empty() && psi >= self.psi_threshold,
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
            rows: w.rows.len(),
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
        w.capacity * (self.profile.features.len() * 2 + 24)
            + w.counts.iter().map(|c| c.len() * 8).sum::<usize>()
    }
}

/// The binning thread: runs until the monitor (and its sender) is dropped.
fn bin_rows(profile: &Profile, rx: &Receiver<(Vec<Tensor>, Vec<Tensor>)>, window: &Mutex<Window>) {
    for (inputs, outputs) in rx {
        let tables: Vec<Option<(usize, usize, Vec<f64>)>> = profile
            .features
            .iter()
            .map(|f| {
                let pool = if f.side == Side::Input {
                    &inputs
                } else {
                    &outputs
                };
                pool.iter().find(|t| t.name == f.tensor).and_then(table)
            })
            .collect();
        let Some(rows) = tables.iter().flatten().map(|t| t.0).min() else {
            continue;
        };
        let mut binned = Vec::with_capacity(rows);
        for r in 0..rows {
            let row: Option<Vec<u16>> = profile
                .features
                .iter()
                .zip(&tables)
                .map(|(f, t)| {
                    let (_, cols, values) = t.as_ref()?;
                    let x = values.get(r * cols + f.column.unwrap_or(0))?;
                    Some(f.kind.bin(*x) as u16)
                })
                .collect();
            // A request missing a feature's tensor (outputs not asked for) is skipped.
            if let Some(row) = row {
                binned.push(row);
            }
        }
        let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
        for row in binned {
            for (c, b) in w.counts.iter_mut().zip(&row) {
                c[*b as usize] += 1;
            }
            w.rows.push_back(row);
            w.seen += 1;
            if w.rows.len() > w.capacity {
                let old = w.rows.pop_front().expect("non-empty");
                for (c, b) in w.counts.iter_mut().zip(&old) {
                    c[*b as usize] -= 1;
                }
            }
        }
    }
}
