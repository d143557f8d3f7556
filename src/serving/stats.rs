//! Per-version counters (Triton's statistics extension): atomics, so recording takes no lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and the nanoseconds spent in it.
#[derive(Debug, Default)]
pub struct Tally {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Tally {
    pub fn record(&self, d: Duration) {
        self.count.fetch_add(1, Relaxed);
        self.ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    fn reset(&self) {
        self.count.store(0, Relaxed);
        self.ns.store(0, Relaxed);
    }

    /// `(count, ns)`.
    pub fn get(&self) -> (u64, u64) {
        (self.count.load(Relaxed), self.ns.load(Relaxed))
    }
}

/// Latency histogram with log-linear buckets (4 per power of two, ±12.5 %),
/// atomics only: recording takes no lock. Differences of two snapshots give the
/// quantiles of a window.
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
}

const BUCKETS: usize = 4 * 64;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    fn index(ns: u64) -> usize {
        if ns < 8 {
            return ns as usize;
        }
        let b = 63 - ns.leading_zeros() as usize;
        let sub = ((ns >> (b - 2)) & 3) as usize;
        4 * (b - 1) + sub
    }

    /// The largest value a bucket holds.
    fn upper(i: usize) -> u64 {
        if i < 8 {
            return i as u64;
        }
        let (b, sub) = (i / 4 + 1, (i % 4) as u64);
        ((4 + sub + 1) << (b - 2)) - 1
    }

    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[Self::index(ns)].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Relaxed)).collect()
    }

    /// The `q` quantile (0..=1) of the values recorded between two snapshots,
    /// as the upper bound of its bucket; `None` when there are none.
    pub fn quantile(before: &[u64], after: &[u64], q: f64) -> Option<Duration> {
        let counts: Vec<u64> = after
            .iter()
            .zip(before)
            .map(|(a, b)| a - b.min(a))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_nanos(Self::upper(i)));
            }
        }
        None
    }
}

/// What one model version has done since it was loaded.
#[derive(Debug)]
pub struct Stats {
    /// Requests answered, end to end inside the server.
    pub success: Tally,
    /// Requests that failed after they were validated and queued.
    pub fail: Tally,
    /// End-to-end latency of the requests answered.
    pub latency: Histogram,
    /// Time from enqueue to a worker taking the request.
    pub queue: Tally,
    /// Time in the backend's run, input and output conversion included (so the
    /// compute_input and compute_output tallies count the runs with 0 ns: Triton's
    /// clients require the three counts to agree).
    pub compute_infer: Tally,
    /// Rows inferred (a request of shape [n, ...] counts n when batching).
    pub inference_count: AtomicU64,
    /// Backend runs.
    pub execution_count: AtomicU64,
    /// Milliseconds since the Unix epoch of the last answer; 0 for never.
    pub last_inference_ms: AtomicU64,
    /// Nanoseconds of the latest run: what a lone request can expect to wait.
    pub last_compute_ns: AtomicU64,
    /// Runs and their compute time by batch size in rows (index 0 unused; a model
    /// without batching counts its runs as size 1, as Triton does).
    batches: Box<[Tally]>,
    /// The same events as Prometheus metrics, once `reset` (after warm-up) arms them.
    pub metrics: crate::serving::metrics::VersionMetrics,
    metrics_on: std::sync::atomic::AtomicBool,
    /// The last minutes in windows, for the console and `switchyard models`.
    /// Locked by the control plane's sampler every few seconds and by a
    /// reader; never on the request path.
    recent: std::sync::Mutex<Recent>,
}

/// One window of a version's answered requests.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Window {
    /// When it closed, in seconds since the Unix epoch.
    pub at: f64,
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    /// Latency quantiles of the answered requests; none without any.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Windows kept: five minutes of the control plane's 5-second samples.
pub const RECENT_WINDOWS: usize = 60;

#[derive(Debug, Default)]
struct Recent {
    /// The counters when the newest window closed: time, answered, failed, latency buckets.
    last: Option<(std::time::Instant, u64, u64, Vec<u64>)>,
    windows: std::collections::VecDeque<Window>,
}

impl Stats {
    /// Counters for a version that runs at most `max_batch_size` rows at once.
    pub fn new(max_batch_size: usize) -> Stats {
        Self::labelled(
            max_batch_size,
            crate::serving::metrics::VersionMetrics::default(),
        )
    }

    /// Counters that also feed `metrics` (one version's Prometheus handles).
    pub fn labelled(
        max_batch_size: usize,
        metrics: crate::serving::metrics::VersionMetrics,
    ) -> Stats {
        Stats {
            success: Tally::default(),
            fail: Tally::default(),
            latency: Histogram::default(),
            queue: Tally::default(),
            compute_infer: Tally::default(),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
            last_inference_ms: AtomicU64::new(0),
            last_compute_ns: AtomicU64::new(0),
            batches: (0..=max_batch_size.max(1))
                .map(|_| Tally::default())
                .collect(),
            metrics,
            metrics_on: std::sync::atomic::AtomicBool::new(false),
            recent: Default::default(),
        }
    }

    /// Whether runs are exported (not during warm-up).
    pub fn exporting(&self) -> bool {
        self.metrics_on.load(Relaxed)
    }

    /// Forgets everything recorded and starts exporting: warm-up runs are not
    /// served requests.
    pub fn reset(&self) {
        self.metrics_on.store(true, Relaxed);
        for t in [&self.success, &self.fail, &self.queue, &self.compute_infer] {
            t.reset();
        }
        for t in self.batches.iter() {
            t.reset();
        }
        for b in self.latency.buckets.iter() {
            b.store(0, Relaxed);
        }
        for a in [
            &self.inference_count,
            &self.execution_count,
            &self.last_inference_ms,
        ] {
            a.store(0, Relaxed);
        }
        // The first window counts from here, the version's first served request.
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        *recent = Recent {
            last: Some((std::time::Instant::now(), 0, 0, vec![0; BUCKETS])),
            windows: Default::default(),
        };
    }

    /// Records one backend run of `rows` rows.
    pub fn record_run(&self, rows: usize, took: Duration) {
        self.compute_infer.record(took);
        self.last_compute_ns
            .store(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        self.execution_count.fetch_add(1, Relaxed);
        let i = rows.clamp(1, self.batches.len() - 1);
        self.batches[i].record(took);
        if self.exporting() {
            self.metrics.compute.record(took.as_secs_f64());
            self.metrics.batch_rows.record(rows as f64);
            self.metrics.rows.increment(rows as u64);
        }
    }

    /// The mean compute time of the runs of `rows` rows since warm-up; `None`
    /// before the first.
    pub fn mean_run(&self, rows: usize) -> Option<Duration> {
        let (count, ns) = self.batches.get(rows.max(1))?.get();
        (count > 0).then(|| Duration::from_nanos(ns / count))
    }

    /// `(batch size, runs, ns)` of every size that ran, smallest first.
    pub fn batch_sizes(&self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        self.batches
            .iter()
            .enumerate()
            .skip(1)
            .filter_map(|(size, t)| {
                let (count, ns) = t.get();
                (count > 0).then_some((size, count, ns))
            })
    }

    /// Closes the window that started at the previous call or at [`Stats::reset`]
    /// (without either, the first call only opens one); the oldest beyond
    /// [`RECENT_WINDOWS`] is forgotten.
    pub fn sample(&self, now: std::time::Instant) {
        let (ok, failed, latency) = (
            self.success.get().0,
            self.fail.get().0,
            self.latency.snapshot(),
        );
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((then, ok0, failed0, latency0)) = &recent.last {
            let ms = |q| Histogram::quantile(latency0, &latency, q).map(|d| d.as_secs_f64() * 1e3);
            let window = Window {
                at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
                seconds: now.saturating_duration_since(*then).as_secs_f64(),
                // A reset (warm-up's end) between two samples counts from zero.
                requests: (ok + failed).saturating_sub(ok0 + failed0),
                errors: failed.saturating_sub(*failed0),
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
            };
            if recent.windows.len() == RECENT_WINDOWS {
                recent.windows.pop_front();
            }
            recent.windows.push_back(window);
        }
        recent.last = Some((now, ok, failed, latency));
    }

    /// The recent windows, oldest first.
    pub fn windows(&self) -> Vec<Window> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.windows.iter().copied().collect()
    }

    pub fn mark_last_inference(&self) {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_inference_ms.store(ms, Relaxed);
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_a_bucket() {
        let h = Histogram::default();
        let before = h.snapshot();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let after = h.snapshot();
        let p99 = Histogram::quantile(&before, &after, 0.99).unwrap();
        let want = Duration::from_micros(990);
        assert!(
            p99 >= want && p99 <= want * 9 / 8 + Duration::from_micros(1),
            "{p99:?}"
        );
        let p50 = Histogram::quantile(&before, &after, 0.5).unwrap();
        assert!(
            p50 >= Duration::from_micros(500) && p50 <= Duration::from_micros(570),
            "{p50:?}"
        );
        assert_eq!(Histogram::quantile(&after, &after, 0.5), None);
        for ns in [0, 1, 7, 8, 9, 1023, 1024, u64::MAX / 2] {
            assert!(Histogram::upper(Histogram::index(ns)) >= ns, "{ns}");
        }
    }

    #[test]
    fn windows_count_what_happened_between_samples_and_keep_five_minutes() {
        let stats = Stats::new(1);
        let t0 = std::time::Instant::now();
        stats.sample(t0);
        assert!(
            stats.windows().is_empty(),
            "the first sample only opens a window"
        );
        stats.reset();
        stats.sample(std::time::Instant::now());
        assert_eq!(stats.windows().len(), 1, "a reset opens one");
        stats.reset();
        let t0 = std::time::Instant::now();
        stats.sample(t0);
        for _ in 0..99 {
            stats.success.record(Duration::from_micros(100));
        }
        stats.success.record(Duration::from_millis(10));
        stats.fail.record(Duration::from_millis(1));
        stats.sample(t0 + Duration::from_secs(5));
        let w = stats.windows()[1];
        assert_eq!((w.requests, w.errors, w.seconds), (101, 1, 5.0));
        // Tally only counts; the latency histogram is what quantiles read.
        assert_eq!(w.p50_ms, None);
        stats.latency.record(Duration::from_micros(100));
        stats.sample(t0 + Duration::from_secs(10));
        let w = stats.windows()[2];
        assert_eq!(w.requests, 0);
        assert!(w.p50_ms.is_some_and(|p| (0.1..0.125).contains(&p)), "{w:?}");
        for i in 0..RECENT_WINDOWS as u64 {
            stats.sample(t0 + Duration::from_secs(15 + 5 * i));
        }
        assert_eq!(stats.windows().len(), RECENT_WINDOWS);
    }
}
