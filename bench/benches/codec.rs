//! Codec micro-benchmarks: frames per second through the encoder and the
//! decoder, for small control-sized and large data-sized frames.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
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
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                let mut dec = FrameDecoder::default();
                let mut n = 0;
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    n += f.stream() as usize;
                }
                n
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
