//! ANI pool hot path: one `pick` + `release` per iteration on a pool of 1,000,000 ANIs, with a new
//! destination every iteration and a simulated clock advancing 1 ms per call (1,000 calls/s), so the
//! cool-down table fills to its steady state (10 min × 1,000/s = 600,000 entries) and is swept as in
//! production. Target: ≤ 1 µs per pick.

use std::hint::black_box;
use std::time::{Duration, Instant};

use callcode::call::code::Code;
use callcode::call::number::Msisdn;
use callcode::pool::{AniPool, AniRange, CallResult, PoolPolicy, Want};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::{rngs::StdRng, SeedableRng};

const TICK: Duration = Duration::from_millis(1);

fn pool() -> AniPool {
    let range: AniRange = "79000000000-79000999999".parse().unwrap();
    AniPool::new(&[range], PoolPolicy::default()).unwrap()
}

/// Runs `pick(want())` + `release` with destination and clock moving on every iteration.
fn run(c: &mut Criterion, name: &str, mut want: impl FnMut() -> Want) {
    let mut pool = pool();
    let mut rng = StdRng::seed_from_u64(1);
    let mut now = Instant::now();
    let mut n: u64 = 0;
    c.bench_function(name, |b| {
        b.iter(|| {
            n += 1;
            now += TICK;
            let to = Msisdn::from_u64(79_160_000_000 + n % 10_000_000).unwrap();
            let lease = pool.pick(black_box(want()), to, now, &mut rng);
            if let Some(lease) = black_box(lease) {
                pool.release(lease, CallResult::Other, now);
            }
        })
    });
}

fn bench(c: &mut Criterion) {
    // A client-supplied 4-digit code (random: clients' codes are).
    let mut codes = StdRng::seed_from_u64(2);
    run(c, "pool/pick_suffix4+release", || {
        Want::Suffix(Code::random(&mut codes, 4).unwrap())
    });
    run(c, "pool/pick_random_suffix+release", || Want::RandomSuffix);
    run(c, "pool/pick_any+release", || Want::Any);
    // A 6-digit code filters the 100 ANIs of its 4-digit bucket.
    let mut codes = StdRng::seed_from_u64(3);
    run(c, "pool/pick_suffix6+release", || {
        Want::Suffix(Code::random(&mut codes, 6).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
