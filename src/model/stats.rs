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

/// What one model version has done since it was loaded.
#[derive(Debug)]
pub struct Stats {
    /// Requests answered, end to end inside the server.
    pub success: Tally,
    /// Requests that failed after they were validated and queued.
    pub fail: Tally,
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
}

impl Stats {
    /// Counters for a version that runs at most `max_batch_size` rows at once.
    pub fn new(max_batch_size: usize) -> Stats {
        Stats {
            success: Tally::default(),
            fail: Tally::default(),
            queue: Tally::default(),
            compute_infer: Tally::default(),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
            last_inference_ms: AtomicU64::new(0),
            last_compute_ns: AtomicU64::new(0),
            batches: (0..=max_batch_size.max(1))
                .map(|_| Tally::default())
                .collect(),
        }
    }

    /// Forgets everything recorded: warm-up runs are not served requests.
    pub fn reset(&self) {
        for t in [&self.success, &self.fail, &self.queue, &self.compute_infer] {
            t.reset();
        }
        for t in self.batches.iter() {
            t.reset();
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
