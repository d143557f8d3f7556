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
}
