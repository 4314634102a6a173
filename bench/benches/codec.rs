//! Codec micro-benchmarks: frames per second through the encoder and the
//! decoder, for small control-sized and large data-sized frames.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use ferry_protocol::{Frame, FrameDecoder};

fn frames(size: usize, n: usize) -> Vec<Frame> {
    let payload = Bytes::from(vec![0x42u8; size]);
    (0..n).map(|i| Frame::Data { stream: 1 + 2 * i as u32, payload: payload.clone() }).collect()
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for size in [0usize, 64, 16 * 1024, 256 * 1024] {
        let batch = frames(size, 64);
        g.throughput(Throughput::Elements(batch.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode into_parts", size), &batch, |b, batch| {
            b.iter(|| {
                let mut total = 0;
                for f in batch.iter().cloned() {
                    let (h, p) = f.into_parts();
                    total += h.len() + p.len();
                }
                total
            })
        });
        let mut wire = BytesMut::new();
        for f in batch.iter().cloned() {
            f.encode(&mut wire);
        }
        let wire = wire.freeze();
        g.bench_with_input(BenchmarkId::new("decode", size), &wire, |b, wire| {
            b.iter_batched(|| BytesMut::from(&wire[..]), decode_all, BatchSize::LargeInput)
        });
    }
    g.finish();
}

fn decode_all(mut buf: BytesMut) -> usize {
    let mut dec = FrameDecoder::default();
    let mut n = 0;
    while let Some(f) = dec.decode(&mut buf).unwrap() {
        n += f.stream() as usize;
    }
    n
}

/// Counts heap allocations, to report allocations per frame.
struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(c: &mut Criterion) {
    let _ = c;
    const N: usize = 1000;
    for size in [0usize, 64, 16 * 1024] {
        let batch = frames(size, N);
        let before = ALLOCS.load(Ordering::Relaxed);
        for f in batch.iter().cloned() {
            let _ = f.into_parts();
        }
        let enc = ALLOCS.load(Ordering::Relaxed) - before;
        let mut wire = BytesMut::new();
        for f in batch.iter().cloned() {
            f.encode(&mut wire);
        }
        let before = ALLOCS.load(Ordering::Relaxed);
        decode_all(wire);
        let dec = ALLOCS.load(Ordering::Relaxed) - before;
        println!(
            "allocations per {size}-byte DATA frame: encode {:.2}, decode {:.2}",
            enc as f64 / N as f64,
            dec as f64 / N as f64
        );
    }
}

criterion_group!(benches, codec, allocations);
criterion_main!(benches);
