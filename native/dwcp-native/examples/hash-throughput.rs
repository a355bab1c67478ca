//! What per-chunk hashing costs natively on this machine, for bench/dwcp/hash-cost.ts: hashes a sample file in
//! fixed chunks with sha256 (what DWCP uses today), BLAKE3 and xxh3-128, the candidates for a cheaper chunk hash.
//! Dev-dependencies only: nothing here is built by `npm install`.
//!
//! cargo run --release --example hash-throughput -- <sample file> <chunk bytes> <rounds>
use sha2::Digest;
use std::time::Instant;

/// One chunk's hash, folded to a byte.
type ChunkHash = fn(&[u8]) -> u8;

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: hash-throughput <sample file> <chunk bytes> <rounds>";
    let data = std::fs::read(args.get(1).expect(usage)).expect("sample file unreadable");
    let chunk: usize = args.get(2).expect(usage).parse().expect(usage);
    let rounds: usize = args.get(3).expect(usage).parse().expect(usage);
    // Each hash folds into a checksum that is printed, so the optimiser cannot drop the work.
    let algorithms: [(&str, ChunkHash); 3] = [
        ("sha256", |c| sha2::Sha256::digest(c)[0]),
        ("blake3", |c| blake3::hash(c).as_bytes()[0]),
        ("xxh3-128", |c| xxhash_rust::xxh3::xxh3_128(c) as u8),
    ];
    for round in 1..=rounds {
        for (name, hash) in algorithms {
            let cpu = thread_cpu_seconds();
            let started = Instant::now();
            let check = data.chunks(chunk).fold(0u8, |acc, c| acc ^ hash(c));
            let seconds = started.elapsed().as_secs_f64();
            let cpu_seconds = thread_cpu_seconds() - cpu;
            println!(
                "{{\"algorithm\":\"{name}\",\"round\":{round},\"seconds\":{seconds},\"cpuSeconds\":{cpu_seconds},\"check\":{check}}}"
            );
        }
    }
}
