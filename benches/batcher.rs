//! The batcher: enqueue → dispatch → answer through a version's worker with a no-op
//! backend (the cost the server adds around a model), and tensor concatenation and
//! splitting of 64 one-row requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchyard::core::batch::{concat, split};
use switchyard::core::tensor::{DataType, Tensor};
use switchyard::runtime::Backend;
use switchyard::serving::{BatchPolicy, Job, Workers};
use switchyard::Result;

/// Answers with its inputs: no compute, so only the batcher is measured.
struct Noop;

impl Backend for Noop {
    fn infer(&mut self, inputs: &[Tensor], _outputs: &[String]) -> Result<Vec<Tensor>> {
        Ok(inputs.to_vec())
    }
}

fn row(cols: usize) -> Vec<Tensor> {
    vec![Tensor {
        name: "input".into(),
        dtype: DataType::F32,
        shape: vec![1, cols as i64],
        data: vec![0u8; cols * 4].into(),
    }]
}

/// Queues one request; the receiver gets its answer.
fn submit(w: &Workers, inputs: &[Tensor]) -> tokio::sync::oneshot::Receiver<Result<Vec<Tensor>>> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    let job = Job {
        inputs: inputs.to_vec(),
        outputs: vec!["input".into()],
        reply,
        enqueued: Instant::now(),
        deadline: None,
        trace: None,
    };
    w.submit(job, 0, "m", 1).unwrap();
    rx
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("batcher");
    for (name, spin) in [("idle_spin_100us", 100), ("idle_spin_0", 0)] {
        let w = Workers::spawn(
            &switchyard::core::tasks::Scope::new("bench"),
            "bench",
            vec![Box::new(Noop)],
            1024,
            Duration::from_micros(spin),
            BatchPolicy {
                max_batch_size: 64,
                max_queue_delay: Duration::ZERO,
                priority_levels: 0,
                preferred: vec![],
                outputs: vec![],
                inline_budget: Duration::ZERO,
            },
            Arc::default(),
        )
        .unwrap();
        let inputs = row(256);
        g.bench_function(format!("round_trip_one/{name}"), |b| {
            b.iter(|| submit(&w, &inputs).blocking_recv().unwrap().unwrap())
        });
        g.throughput(Throughput::Elements(64));
        g.bench_function(format!("round_trip_64_queued/{name}"), |b| {
            b.iter(|| {
                let rxs: Vec<_> = (0..64).map(|_| submit(&w, &inputs)).collect();
                for rx in rxs {
                    rx.blocking_recv().unwrap().unwrap();
                }
            })
        });
    }
    g.finish();
}

fn concat_split(c: &mut Criterion) {
    let requests: Vec<Vec<Tensor>> = (0..64).map(|_| row(256)).collect();
    let refs: Vec<&[Tensor]> = requests.iter().map(|r| r.as_slice()).collect();
    let rows = vec![1usize; 64];
    let mut g = c.benchmark_group("tensors");
    g.throughput(Throughput::Elements(64));
    g.bench_function("concat_64x256", |b| b.iter(|| concat(&refs)));
    let joined = concat(&refs);
    g.bench_function("split_64x256", |b| {
        b.iter(|| split(joined.clone(), &rows).unwrap())
    });
    g.finish();
}

criterion_group!(benches, round_trip, concat_split);
criterion_main!(benches);
