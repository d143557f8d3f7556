//! The cost of routing one request by a traffic policy: weighted rendezvous
//! hashing of a sticky key over 4 versions, and a weighted random draw.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use switchyard::serving::{Traffic, TrafficSpec};

fn policy(sticky: bool) -> Traffic {
    let spec = TrafficSpec {
        weights: [("1", 70), ("2", 10), ("3", 10), ("4", 10)]
            .into_iter()
            .map(|(v, w)| (v.to_string(), w))
            .collect(),
        sticky_header: sticky.then(|| "x-user-id".to_string()),
        shadow: None,
    };
    Traffic::new(spec, &[1, 2, 3, 4], &Default::default()).expect("valid")
}

fn routing(c: &mut Criterion) {
    let sticky = policy(true);
    let keys: Vec<String> = (0..1024).map(|i| format!("user-{i:08}")).collect();
    let mut i = 0;
    c.bench_function("route/sticky key, 4 versions", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(sticky.pick(Some(keys[i].as_bytes()), |_| true))
        })
    });
    let random = policy(false);
    c.bench_function("route/weighted random, 4 versions", |b| {
        b.iter(|| black_box(random.pick(None, |_| true)))
    });
    c.bench_function("route/shadow draw", |b| {
        b.iter(|| black_box(random.shadow_this()))
    });
}

criterion_group!(benches, routing);
criterion_main!(benches);
