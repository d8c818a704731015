//! Watermark hot path: parse + digest + check-and-record in memory, the file store (one key
//! sequential, and 16 concurrent clients over distinct keys sharing fsyncs), and the raw
//! durable write floor (write temp, fsync, rename, fsync directory).
//!
//! Run: `cargo bench --bench watermark` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::FutureExt as _;
use signer_gateway::payload::{self, Payload};
use signer_gateway::tezos::{self, ChainId, Pkh};
use signer_gateway::watermark::{durable_write, FileStore, MarkKey, MarkRequest, MemoryStore, Outcome, WatermarkStore};

const PKH: &str = "tz1KqTpEZ7Yob7QbPE4Hy4Wo8fHG8LhKxZSx";
const CHAIN: [u8; 4] = [0x7a, 0x06, 0xa7, 0x70];
/// Concurrent clients in the group-commit benchmark.
const CLIENTS: usize = 16;

/// An 80-byte attestation (magic 0x13, tag 21): chain, branch, tag, slot, level, round, hash.
fn attestation(level: i32, round: i32) -> [u8; 80] {
    let mut b = [0u8; 80];
    b[0] = 0x13;
    b[1..5].copy_from_slice(&CHAIN);
    b[5..37].fill(0x42); // branch
    b[37] = 21;
    b[38..40].copy_from_slice(&7u16.to_be_bytes()); // slot
    b[40..44].copy_from_slice(&level.to_be_bytes());
    b[44..48].copy_from_slice(&round.to_be_bytes());
    b[48..80].fill(0x99); // payload hash
    b
}

fn pkh() -> Pkh {
    PKH.parse().expect("valid pkh")
}

/// What the gateway does per consensus request before the store: parse, key, digest.
fn request_for(pkh: Pkh, bytes: &[u8]) -> MarkRequest {
    match payload::parse(bytes) {
        Ok(Payload::Consensus(c)) => MarkRequest {
            key: MarkKey {
                chain: c.chain,
                pkh,
                kind: c.kind,
            },
            level: c.level,
            round: c.round,
            digest: tezos::blake2b_256(bytes),
        },
        other => panic!("bench payload does not parse as consensus: {other:?}"),
    }
}

fn recorded(got: Result<Outcome, signer_gateway::watermark::WatermarkError>) {
    assert_eq!(got, Ok(Outcome::Recorded));
}

fn memory(c: &mut Criterion) {
    let pkh = pkh();
    let mut g = c.benchmark_group("memory");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(1));
    g.bench_function("payload_parse", |b| {
        let bytes = attestation(1_000, 0);
        b.iter(|| payload::parse(black_box(&bytes)))
    });
    g.bench_function("parse_digest_check_and_record", |b| {
        let store = MemoryStore::new();
        let mut level = 0i32;
        b.iter(|| {
            level += 1;
            let bytes = attestation(level, 0);
            let req = request_for(pkh, black_box(&bytes));
            // The memory store never awaits: poll once.
            recorded(
                store
                    .check_and_record(&req)
                    .now_or_never()
                    .expect("memory store is immediate"),
            );
        })
    });
    g.finish();
}

fn file(c: &mut Criterion) {
    let pkh = pkh();
    let mut g = c.benchmark_group("file");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));

    g.bench_function("durable_write_raw", |b| {
        let dir = tempfile::tempdir().expect("tempdir");
        // About the size of a one-mark state file.
        let bytes = vec![b'x'; 320];
        b.iter(|| durable_write(dir.path(), "bench.json", &bytes).expect("durable write"))
    });

    g.bench_function("check_and_record_one_key_sequential", |b| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(&dir.path().join("store"), true).expect("open store");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut level = 0i32;
        b.iter(|| {
            level += 1;
            let req = request_for(pkh, &attestation(level, 0));
            recorded(rt.block_on(store.check_and_record(&req)));
        })
    });

    g.bench_function("check_and_record_16_clients_distinct_keys", |b| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn WatermarkStore> =
            Arc::new(FileStore::open(&dir.path().join("store"), true).expect("open store"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let level = Arc::new(AtomicI32::new(0));
        let chain = ChainId(CHAIN);
        b.iter_custom(|iters| {
            let per_client = iters.div_ceil(CLIENTS as u64);
            let start = Instant::now();
            rt.block_on(async {
                let clients: Vec<_> = (0..CLIENTS)
                    .map(|i| {
                        let store = Arc::clone(&store);
                        let level = Arc::clone(&level);
                        let key = MarkKey {
                            chain,
                            pkh: Pkh {
                                hash: [i as u8; 20],
                                ..pkh
                            },
                            kind: payload::Kind::Attestation,
                        };
                        tokio::spawn(async move {
                            for _ in 0..per_client {
                                let req = MarkRequest {
                                    key,
                                    level: level.fetch_add(1, Ordering::Relaxed),
                                    round: 0,
                                    digest: [i as u8; 32],
                                };
                                recorded(store.check_and_record(&req).await);
                            }
                        })
                    })
                    .collect();
                for c in clients {
                    c.await.expect("client task");
                }
            });
            // Report time per record actually made.
            start
                .elapsed()
                .mul_f64(iters as f64 / (per_client * CLIENTS as u64) as f64)
        })
    });
    g.finish();
}

criterion_group!(benches, memory, file);
criterion_main!(benches);
