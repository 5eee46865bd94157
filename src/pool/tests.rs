use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::*;

const SEC: Duration = Duration::from_secs(1);

fn num(s: &str) -> Msisdn {
    s.parse().unwrap()
}

fn dest(i: u64) -> Msisdn {
    Msisdn::from_u64(79_990_000_000 + i).unwrap()
}

fn code(s: &str) -> Code {
    Code::parse_len(s, s.len()).unwrap()
}

fn pool_of(ranges: &[&str], policy: PoolPolicy) -> AniPool {
    let ranges: Vec<AniRange> = ranges.iter().map(|r| r.parse().unwrap()).collect();
    AniPool::new(&ranges, policy).unwrap()
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(42)
}

fn check_sum(pool: &AniPool, now: Instant) -> PoolStats {
    let s = pool.stats(now);
    assert_eq!(s.free + s.busy + s.quarantined, s.total, "{s:?}");
    assert_eq!(s.total, pool.len());
    s
}

/// Picks and releases at once (result `Other`), returning the ANI.
fn cycle(pool: &mut AniPool, want: Want, to: Msisdn, now: Instant) -> Option<Msisdn> {
    let lease = pool.pick(want, to, now, &mut rng())?;
    let ani = lease.ani;
    pool.release(lease, CallResult::Other, now);
    Some(ani)
}

#[test]
fn suffix_pick_ends_in_the_code() {
    let mut pool = pool_of(&["74951090000-74951099999"], PoolPolicy::default());
    let now = Instant::now();
    let lease = pool
        .pick(Want::Suffix(code("4321")), dest(1), now, &mut rng())
        .unwrap();
    assert_eq!(lease.ani, num("74951094321"));
    assert_eq!(lease.code(4), Some(code("4321")));
    let lease = pool
        .pick(Want::Suffix(code("0042")), dest(1), now, &mut rng())
        .unwrap();
    assert_eq!(lease.ani, num("74951090042"));

    let mut small = pool_of(&["74951090000-74951090999"], PoolPolicy::default());
    assert!(small
        .pick(Want::Suffix(code("4321")), dest(1), now, &mut rng())
        .is_none());
    assert!(small
        .pick(Want::Suffix(code("0999")), dest(1), now, &mut rng())
        .is_some());
}

#[test]
fn five_and_six_digit_suffixes() {
    let mut pool = pool_of(&["74951000000-74951199999"], PoolPolicy::default());
    let now = Instant::now();
    let mut r = rng();
    let five = Want::Suffix(code("54321"));
    let a = pool.pick(five, dest(1), now, &mut r).unwrap();
    let b = pool.pick(five, dest(2), now, &mut r).unwrap();
    assert_eq!(a.ani, num("74951054321"));
    assert_eq!(b.ani, num("74951154321"));
    // Both busy now: the least recently picked one carries a second call.
    let c = pool.pick(five, dest(3), now, &mut r).unwrap();
    assert_eq!(c.ani, num("74951054321"));

    let six = Want::Suffix(code("154321"));
    for i in 10..14 {
        let lease = pool.pick(six, dest(i), now, &mut r).unwrap();
        assert_eq!(lease.ani, num("74951154321"));
        pool.release(lease, CallResult::Other, now);
    }
    assert!(pool
        .pick(Want::Suffix(code("254321")), dest(1), now, &mut r)
        .is_none());
    // Codes outside 4..=6 digits find nothing rather than something wrong.
    assert!(pool
        .pick(Want::Suffix(code("321")), dest(1), now, &mut r)
        .is_none());
}

#[test]
fn least_recently_picked_first_among_a_suffix() {
    let mut pool = pool_of(
        &["74970001234", "74950001234", "74960001234", "74950001235"],
        PoolPolicy::default(),
    );
    let now = Instant::now();
    let want = Want::Suffix(code("1234"));
    let order: Vec<Msisdn> = (0..5)
        .map(|i| cycle(&mut pool, want, dest(i), now).unwrap())
        .collect();
    assert_eq!(
        order,
        [
            num("74950001234"),
            num("74960001234"),
            num("74970001234"),
            num("74950001234"),
            num("74960001234"),
        ]
    );
}

#[test]
fn suffix_picks_also_reorder_the_global_list() {
    let mut pool = pool_of(&["74950000000-74950000002"], PoolPolicy::default());
    let now = Instant::now();
    assert_eq!(
        cycle(&mut pool, Want::Suffix(code("0001")), dest(0), now),
        Some(num("74950000001"))
    );
    let order: Vec<Msisdn> = (1..4)
        .map(|i| cycle(&mut pool, Want::Any, dest(i), now).unwrap())
        .collect();
    assert_eq!(
        order,
        [num("74950000000"), num("74950000002"), num("74950000001")]
    );
}

#[test]
fn long_suffixes_are_lru_when_enumerated_from_the_ranges() {
    // One range: 5-digit matches come straight from the range table.
    let mut pool = pool_of(&["74951000000-74951299999"], PoolPolicy::default());
    let now = Instant::now();
    let want = Want::Suffix(code("54321"));
    let first = cycle(&mut pool, Want::Suffix(code("154321")), dest(0), now);
    assert_eq!(first, Some(num("74951154321")));
    let order: Vec<Msisdn> = (1..6)
        .map(|i| cycle(&mut pool, want, dest(i), now).unwrap())
        .collect();
    assert_eq!(
        order,
        [
            num("74951054321"),
            num("74951254321"),
            num("74951154321"),
            num("74951054321"),
            num("74951254321"),
        ]
    );
}

#[test]
fn long_suffixes_are_lru_when_walked_in_the_bucket() {
    // 300 single-number ranges (too many to enumerate): the 4-digit bucket is walked and filtered.
    let ranges: Vec<String> = (0..300u64)
        .map(|k| (74_950_054_321 + k * 100_000).to_string())
        .collect();
    let ranges: Vec<&str> = ranges.iter().map(String::as_str).collect();
    let mut pool = pool_of(&ranges, PoolPolicy::default());
    assert!(pool.segments.len() > ENUMERATE_CAP);
    let now = Instant::now();
    let six = Want::Suffix(code("054321")); // k = 0, 10, 20, ...
    let order: Vec<u64> = (0..3)
        .map(|i| cycle(&mut pool, six, dest(i), now).unwrap().value())
        .collect();
    assert_eq!(order, [74_950_054_321, 74_951_054_321, 74_952_054_321]);
    // The 5-digit walk skips the three just picked: they are now at the bucket's tail.
    let five = Want::Suffix(code("54321"));
    let order: Vec<u64> = (3..6)
        .map(|i| cycle(&mut pool, five, dest(i), now).unwrap().value())
        .collect();
    assert_eq!(order, [74_950_154_321, 74_950_254_321, 74_950_354_321]);
}

#[test]
fn idle_anis_are_preferred_and_max_calls_respected() {
    let policy = PoolPolicy {
        max_calls_per_ani: 2,
        ..PoolPolicy::default()
    };
    let mut pool = pool_of(&["74950001234", "74960001234"], policy);
    let now = Instant::now();
    let mut r = rng();
    let want = Want::Suffix(code("1234"));
    let a = pool.pick(want, dest(1), now, &mut r).unwrap();
    let b = pool.pick(want, dest(2), now, &mut r).unwrap();
    assert_eq!(a.ani, num("74950001234"));
    assert_eq!(b.ani, num("74960001234"));
    pool.release(b, CallResult::Other, now);
    // A is least recently picked but busy; idle B wins.
    let b = pool.pick(want, dest(3), now, &mut r).unwrap();
    assert_eq!(b.ani, num("74960001234"));
    // Both busy: second calls go to the least recently picked first.
    let a2 = pool.pick(want, dest(4), now, &mut r).unwrap();
    assert_eq!(a2.ani, num("74950001234"));
    let b2 = pool.pick(want, dest(5), now, &mut r).unwrap();
    assert_eq!(b2.ani, num("74960001234"));
    assert_eq!(pool.active_calls(num("74950001234")), 2);
    assert_eq!(pool.active_calls(num("74960001234")), 2);
    // Both full.
    assert!(pool.pick(want, dest(6), now, &mut r).is_none());
    assert!(pool.pick(Want::Any, dest(6), now, &mut r).is_none());
    assert!(pool
        .pick(Want::RandomSuffix, dest(6), now, &mut r)
        .is_none());
    pool.release(a, CallResult::Other, now);
    assert_eq!(
        pool.pick(want, dest(6), now, &mut r).unwrap().ani,
        num("74950001234")
    );
}

#[test]
fn cooldown_is_per_destination() {
    let policy = PoolPolicy::default();
    let cooldown = policy.cooldown;
    let mut pool = pool_of(&["74950001234"], policy);
    let now = Instant::now();
    let want = Want::Suffix(code("1234"));
    assert!(cycle(&mut pool, want, dest(1), now).is_some());
    assert!(cycle(&mut pool, want, dest(1), now + SEC).is_none());
    assert!(cycle(&mut pool, Want::Any, dest(1), now + SEC).is_none());
    assert!(cycle(&mut pool, Want::RandomSuffix, dest(1), now + SEC).is_none());
    assert!(cycle(&mut pool, want, dest(2), now + SEC).is_some());
    assert!(cycle(&mut pool, want, dest(1), now + cooldown - SEC).is_none());
}

#[test]
fn cooldown_skips_to_another_ani_and_expires() {
    let policy = PoolPolicy::default();
    let cooldown = policy.cooldown;
    let mut pool = pool_of(&["74950000000-74950000001"], policy);
    let now = Instant::now();
    let (a, b) = (num("74950000000"), num("74950000001"));
    assert_eq!(cycle(&mut pool, Want::Any, dest(1), now), Some(a));
    assert_eq!(cycle(&mut pool, Want::Any, dest(2), now), Some(b));
    // A is least recently used, but cooling towards destination 1.
    assert_eq!(cycle(&mut pool, Want::Any, dest(1), now), Some(b));
    assert_eq!(cycle(&mut pool, Want::Any, dest(1), now), None);
    // A window later both have cooled down towards 1; A is least recently used again.
    assert_eq!(
        cycle(&mut pool, Want::Any, dest(1), now + cooldown),
        Some(a)
    );
    assert_eq!(
        cycle(&mut pool, Want::Any, dest(1), now + cooldown),
        Some(b)
    );
}

#[test]
fn cooldown_entries_are_dropped_after_the_window() {
    let policy = PoolPolicy::default();
    let cooldown = policy.cooldown;
    let mut pool = pool_of(&["74950000000-74950000099"], policy);
    let now = Instant::now();
    for i in 0..50 {
        cycle(&mut pool, Want::Any, dest(i), now).unwrap();
    }
    assert_eq!(pool.cooldowns.len(), 50);
    for i in 0..20 {
        cycle(&mut pool, Want::Any, dest(1000 + i), now + cooldown).unwrap();
    }
    // The first 50 are a window old: kept as the previous generation, still consulted.
    assert_eq!(pool.cooldowns.len(), 70);
    cycle(&mut pool, Want::Any, dest(2000), now + 2 * cooldown).unwrap();
    assert_eq!(pool.cooldowns.len(), 21);
}

#[test]
fn cooldown_is_exact_despite_the_coarse_stamp() {
    // The per-ANI stamp (whole seconds) must never hide a cool-down. One ANI, a 1.5 s window, a
    // pick every 700 ms towards a new destination (so pick times fall at every fraction of a
    // second), and each destination checked 1,400 ms, 1,499 ms and 1,500 ms after its pick.
    let policy = PoolPolicy {
        cooldown: Duration::from_millis(1500),
        ..PoolPolicy::default()
    };
    let mut pool = pool_of(&["74950001234"], policy);
    let start = Instant::now();
    let want = Want::Suffix(code("1234"));
    let ms = Duration::from_millis;
    for i in 0..40u64 {
        let t = start + ms(i * 700);
        assert!(cycle(&mut pool, want, dest(i), t).is_some(), "pick {i}");
        if i >= 2 {
            let old = dest(i - 2); // picked at t - 1400 ms
            assert!(cycle(&mut pool, want, old, t).is_none(), "1400 ms, {i}");
            assert!(
                cycle(&mut pool, want, old, t + ms(99)).is_none(),
                "1499 ms, {i}"
            );
            assert!(
                cycle(&mut pool, want, old, t + ms(100)).is_some(),
                "1500 ms, {i}"
            );
        }
    }
}

#[test]
fn cooldown_is_exact_when_the_stamp_is_old() {
    // The pick towards the destination is the ANI's last one, made at every fraction of a second
    // past the epoch; the window (1.5 s) is checked 1 ms before and at its end.
    let ms = Duration::from_millis;
    for offset in (0..2000).step_by(50) {
        let policy = PoolPolicy {
            cooldown: ms(1500),
            ..PoolPolicy::default()
        };
        let mut pool = pool_of(&["74950001234"], policy);
        let want = Want::Suffix(code("1234"));
        let start = Instant::now();
        assert!(cycle(&mut pool, want, dest(1), start).is_some()); // sets the epoch
        let t = start + ms(offset);
        assert!(cycle(&mut pool, want, dest(2), t).is_some());
        assert!(
            cycle(&mut pool, want, dest(2), t + ms(1499)).is_none(),
            "offset {offset}"
        );
        assert!(
            cycle(&mut pool, want, dest(2), t + ms(1500)).is_some(),
            "offset {offset}"
        );
    }
}

#[test]
fn quarantine_by_streak() {
    let policy = PoolPolicy::default();
    let mut pool = pool_of(&["74950001234"], policy);
    let ani = num("74950001234");
    let mut now = Instant::now();
    let mut r = rng();
    let mut call = |pool: &mut AniPool, result, now| {
        let lease = pool.pick(Want::Any, dest(r.random_range(0..1_000_000)), now, &mut r);
        pool.release(lease.unwrap(), result, now);
    };
    // An `Other` resets the streak.
    for result in [
        CallResult::Rejected,
        CallResult::Rejected,
        CallResult::Other,
        CallResult::Rejected,
        CallResult::Rejected,
    ] {
        call(&mut pool, result, now);
        now += SEC;
    }
    assert!(!pool.is_quarantined(ani, now));
    call(&mut pool, CallResult::Rejected, now);
    assert!(pool.is_quarantined(ani, now));
    let s = check_sum(&pool, now);
    assert_eq!((s.free, s.busy, s.quarantined), (0, 0, 1));
    assert!(pool
        .pick(Want::Suffix(code("1234")), dest(99), now, &mut rng())
        .is_none());
    assert!(pool.pick(Want::Any, dest(99), now, &mut rng()).is_none());
    assert!(pool
        .pick(Want::RandomSuffix, dest(99), now, &mut rng())
        .is_none());
}

#[test]
fn quarantine_by_rate() {
    let policy = PoolPolicy::default(); // 0.5 over >= 10 results
    let mut pool = pool_of(&["74950001234"], policy);
    let ani = num("74950001234");
    let now = Instant::now();
    for i in 0..10 {
        let lease = pool.pick(Want::Any, dest(i), now, &mut rng()).unwrap();
        let result = if i % 2 == 0 {
            CallResult::Other
        } else {
            CallResult::Rejected
        };
        // 9 results with 4 rejections: the streak never exceeds 1 and the rate is not yet due.
        assert!(!pool.is_quarantined(ani, now), "after {i} results");
        pool.release(lease, result, now);
    }
    // 10th result: 5 rejections out of 10.
    assert!(pool.is_quarantined(ani, now));
}

#[test]
fn rate_needs_the_minimum_and_looks_at_recent_results_only() {
    let policy = PoolPolicy {
        reject_streak: 0,
        reject_rate: 0.5,
        reject_rate_min_calls: 10,
        ..PoolPolicy::default()
    };
    let mut pool = pool_of(&["74950001234"], policy);
    let ani = num("74950001234");
    let now = Instant::now();
    let release = |pool: &mut AniPool, i: u64, result| {
        let lease = pool.pick(Want::Any, dest(i), now, &mut rng()).unwrap();
        pool.release(lease, result, now);
    };
    // Streaks are disabled; 9 rejections in a row are below the minimum.
    for i in 0..9 {
        release(&mut pool, i, CallResult::Rejected);
    }
    assert!(!pool.is_quarantined(ani, now));
    // 32 good results push the rejections out of the window.
    for i in 100..132 {
        release(&mut pool, i, CallResult::Other);
    }
    for i in 200..215 {
        release(&mut pool, i, CallResult::Rejected);
    }
    assert!(!pool.is_quarantined(ani, now), "15 of the last 32");
    release(&mut pool, 300, CallResult::Rejected);
    assert!(pool.is_quarantined(ani, now), "16 of the last 32");
}

#[test]
fn quarantine_expires_and_history_resets() {
    let policy = PoolPolicy::default();
    let quarantine = policy.quarantine;
    let mut pool = pool_of(&["74950001234", "74950005678"], policy);
    let ani = num("74950001234");
    let want = Want::Suffix(code("1234"));
    let now = Instant::now();
    for i in 0..3 {
        let lease = pool.pick(want, dest(i), now, &mut rng()).unwrap();
        pool.release(lease, CallResult::Rejected, now);
    }
    assert!(pool.is_quarantined(ani, now));
    let end = now + quarantine;
    assert!(cycle(&mut pool, want, dest(10), end - SEC).is_none());
    assert_eq!(check_sum(&pool, end - SEC).quarantined, 1);
    // `stats` notices the end without a `&mut` call.
    let s = check_sum(&pool, end);
    assert_eq!((s.free, s.quarantined), (2, 0));
    assert!(!pool.is_quarantined(ani, end));
    // Back with a clean history: two rejections are not a streak of three.
    for i in 20..22 {
        let lease = pool.pick(want, dest(i), end, &mut rng()).unwrap();
        assert_eq!(lease.ani, ani);
        pool.release(lease, CallResult::Rejected, end);
    }
    assert!(!pool.is_quarantined(ani, end));
    assert_eq!(check_sum(&pool, end).free, 2);
}

#[test]
fn quarantined_ani_with_calls_in_flight() {
    let mut pool = pool_of(&["74950001234"], PoolPolicy::default());
    let now = Instant::now();
    let leases: Vec<Lease> = (0..4)
        .map(|i| pool.pick(Want::Any, dest(i), now, &mut rng()).unwrap())
        .collect();
    let s = check_sum(&pool, now);
    assert_eq!((s.free, s.busy), (0, 1));
    let mut leases = leases.into_iter();
    for lease in leases.by_ref().take(3) {
        pool.release(lease, CallResult::Rejected, now);
    }
    let s = check_sum(&pool, now);
    assert_eq!((s.busy, s.quarantined), (0, 1));
    assert_eq!(pool.active_calls(num("74950001234")), 1);
    // The last call is still carried to the end, then the ANI waits out its quarantine.
    pool.release(leases.next().unwrap(), CallResult::Other, now);
    assert_eq!(pool.active_calls(num("74950001234")), 0);
    let s = check_sum(&pool, now);
    assert_eq!((s.free, s.busy, s.quarantined), (0, 0, 1));
    let s = check_sum(&pool, now + pool.policy().quarantine);
    assert_eq!((s.free, s.busy, s.quarantined), (1, 0, 0));
}

#[test]
fn stats_count_each_state() {
    let policy = PoolPolicy {
        reject_streak: 1,
        ..PoolPolicy::default()
    };
    let mut pool = pool_of(&["74950000000-74950000009"], policy);
    let now = Instant::now();
    let mut r = rng();
    assert_eq!(
        check_sum(&pool, now),
        PoolStats {
            total: 10,
            free: 10,
            busy: 0,
            quarantined: 0
        }
    );
    let leases: Vec<Lease> = (0..4)
        .map(|i| pool.pick(Want::Any, dest(i), now, &mut r).unwrap())
        .collect();
    assert_eq!(
        check_sum(&pool, now),
        PoolStats {
            total: 10,
            free: 6,
            busy: 4,
            quarantined: 0
        }
    );
    let mut leases = leases.into_iter();
    pool.release(leases.next().unwrap(), CallResult::Rejected, now);
    pool.release(leases.next().unwrap(), CallResult::Other, now);
    assert_eq!(
        check_sum(&pool, now),
        PoolStats {
            total: 10,
            free: 7,
            busy: 2,
            quarantined: 1
        }
    );
    pool.record_metrics("ru-main", now);
}

#[test]
fn random_suffix_distributes() {
    let mut pool = pool_of(&["74950000000-74950009999"], PoolPolicy::default());
    let now = Instant::now();
    let mut r = rng();
    let mut seen = HashSet::new();
    let mut consecutive = 0;
    let mut last = 0;
    for i in 0..10_000 {
        let lease = pool.pick(Want::RandomSuffix, dest(i), now, &mut r).unwrap();
        let v = lease.ani.value();
        if v == last + 1 {
            consecutive += 1;
        }
        last = v;
        seen.insert(v);
        pool.release(lease, CallResult::Other, now);
    }
    // Uniform draws with replacement: ~6,321 distinct expected. An LRU walk would give all 10,000
    // in order.
    assert!(
        (5_000..7_500).contains(&seen.len()),
        "{} distinct",
        seen.len()
    );
    assert!(consecutive < 100, "{consecutive} consecutive picks");
}

#[test]
fn random_suffix_falls_back_when_its_buckets_are_exhausted() {
    let policy = PoolPolicy {
        max_calls_per_ani: 1,
        ..PoolPolicy::default()
    };
    let mut pool = pool_of(&["74950000000-74950000099"], policy);
    let now = Instant::now();
    let mut r = rng();
    let mut got = HashSet::new();
    // Every ANI gets exactly one call: the random draws land on busy buckets more and more, and the
    // global walk finds the rest.
    for i in 0..100 {
        let lease = pool.pick(Want::RandomSuffix, dest(i), now, &mut r).unwrap();
        assert!(got.insert(lease.ani));
    }
    assert!(pool
        .pick(Want::RandomSuffix, dest(100), now, &mut r)
        .is_none());
    assert_eq!(check_sum(&pool, now).busy, 100);
}

#[test]
fn release_twice_or_foreign_is_harmless() {
    let mut pool = pool_of(&["74950000000-74950000009"], PoolPolicy::default());
    let mut other = pool_of(&["74960000000-74960000009"], PoolPolicy::default());
    let now = Instant::now();
    let mut r = rng();
    let lease = pool.pick(Want::Any, dest(1), now, &mut r).unwrap();
    pool.release(lease.clone(), CallResult::Rejected, now);
    pool.release(lease.clone(), CallResult::Rejected, now);
    pool.release(lease, CallResult::Rejected, now);
    assert_eq!(pool.active_calls(num("74950000000")), 0);
    assert!(!pool.is_quarantined(num("74950000000"), now));
    assert_eq!(check_sum(&pool, now).free, 10);

    let mine = pool.pick(Want::Any, dest(2), now, &mut r).unwrap();
    let foreign = other.pick(Want::Any, dest(2), now, &mut r).unwrap();
    pool.release(foreign.clone(), CallResult::Other, now);
    // Another pool's ANI at an index that is busy here.
    pool.release(
        Lease {
            ani: foreign.ani,
            index: mine.index,
        },
        CallResult::Other,
        now,
    );
    pool.release(
        Lease {
            ani: mine.ani,
            index: 1_000_000,
        },
        CallResult::Other,
        now,
    );
    pool.release(
        Lease {
            ani: mine.ani,
            index: u32::MAX,
        },
        CallResult::Other,
        now,
    );
    assert_eq!(pool.active_calls(mine.ani), 1);
    assert_eq!(check_sum(&pool, now).busy, 1);
    pool.release(mine, CallResult::Other, now);
    assert_eq!(check_sum(&pool, now).free, 10);
}

#[test]
fn ranges_parse_and_validate() {
    let r: AniRange = "74951090000-74951099999".parse().unwrap();
    assert_eq!(r.first, num("74951090000"));
    assert_eq!(r.last, num("74951099999"));
    assert_eq!(r.count(), 10_000);
    assert_eq!(r.to_string(), "74951090000-74951099999");
    let one: AniRange = "74959999999".parse().unwrap();
    assert_eq!(
        (one.first, one.last, one.count()),
        (num("74959999999"), num("74959999999"), 1)
    );
    assert_eq!(one.to_string(), "74959999999");
    let spaced: AniRange = " +74951090000 - +74951090009 ".parse().unwrap();
    assert_eq!(spaced.count(), 10);

    assert!(matches!(
        "7495109000-74951099999".parse::<AniRange>(),
        Err(PoolError::MixedLengths { .. })
    ));
    assert!(matches!(
        "74951099999-74951090000".parse::<AniRange>(),
        Err(PoolError::EmptyRange { .. })
    ));
    for bad in [
        "",
        "-",
        "abc",
        "74951090000-",
        "7495109000a-74951099999",
        "1-2",
        "749510900001234567",
    ] {
        assert!(
            matches!(bad.parse::<AniRange>(), Err(PoolError::Number(_))),
            "{bad:?}"
        );
    }
    let backwards = AniRange {
        first: num("74951099999"),
        last: num("74951090000"),
    };
    assert_eq!(backwards.count(), 0);
}

#[test]
fn pool_construction_errors() {
    let policy = PoolPolicy::default;
    let r = |s: &str| s.parse::<AniRange>().unwrap();
    assert_eq!(
        AniPool::new(&[], policy()).unwrap_err(),
        PoolError::NoRanges
    );
    assert_eq!(
        AniPool::new(
            &[r("74950000000-74950000099"), r("74950000099-74950000100")],
            policy()
        )
        .unwrap_err(),
        PoolError::Overlap(num("74950000099"))
    );
    assert_eq!(
        AniPool::new(&[r("74950000050"), r("74950000000-74950000099")], policy()).unwrap_err(),
        PoolError::Overlap(num("74950000050"))
    );
    assert!(matches!(
        AniPool::new(&[r("70000000000-79999999999")], policy()),
        Err(PoolError::TooLarge {
            size: 10_000_000_000
        })
    ));
    let mixed = AniRange {
        first: num("7495000000"),
        last: num("74950000000"),
    };
    assert!(matches!(
        AniPool::new(&[mixed], policy()),
        Err(PoolError::MixedLengths { .. })
    ));
    let pool = AniPool::new(&[r("74950000000-74950000099"), r("74950000100")], policy()).unwrap();
    assert_eq!(pool.len(), 101);
    assert!(pool.contains(num("74950000100")));
    assert!(pool.contains(num("74950000000")));
    assert!(!pool.contains(num("74950000101")));
    assert!(!pool.contains(num("7495000000")));
}

#[test]
fn a_million_anis_is_fine() {
    let mut pool = pool_of(&["79000000000-79000999999"], PoolPolicy::default());
    assert_eq!(pool.len(), 1_000_000);
    assert_eq!(std::mem::size_of::<Slot>(), 48);
    let now = Instant::now();
    let lease = pool
        .pick(Want::Suffix(code("123456")), dest(1), now, &mut rng())
        .unwrap();
    assert_eq!(lease.ani, num("79000123456"));
}

// --- Property test: a model of the rules, checked against random operation sequences. ---

#[derive(Debug, Clone)]
enum Op {
    Pick {
        kind: u8,
        len: usize,
        hi: u64,
        lo: u64,
        to: u64,
    },
    Release {
        which: usize,
        rejected: bool,
    },
    ReleaseAgain {
        which: usize,
        rejected: bool,
    },
    Forge {
        index: u32,
        in_pool: bool,
    },
    Advance {
        secs: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 4usize..=6, 0u64..3, 0u64..210, 0u64..4)
            .prop_map(|(kind, len, hi, lo, to)| Op::Pick { kind, len, hi, lo, to }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(which, rejected)| Op::Release { which, rejected }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(which, rejected)| Op::ReleaseAgain { which, rejected }),
        1 => (any::<u32>(), any::<bool>()).prop_map(|(index, in_pool)| Op::Forge { index, in_pool }),
        2 => (0u64..200).prop_map(|secs| Op::Advance { secs }),
    ]
}

#[derive(Default, Clone)]
struct ModelAni {
    active: u16,
    until: Option<Instant>,
    results: Vec<bool>,
}

struct Model {
    policy: PoolPolicy,
    anis: HashMap<u64, ModelAni>,
    last_pick: HashMap<(u64, u64), Instant>,
}

impl Model {
    fn quarantined(&self, ani: u64, now: Instant) -> bool {
        self.anis[&ani].until.is_some_and(|t| t > now)
    }

    fn usable(&self, ani: u64, to: u64, now: Instant) -> bool {
        let a = &self.anis[&ani];
        !self.quarantined(ani, now)
            && a.active < self.policy.max_calls_per_ani.max(1)
            && self
                .last_pick
                .get(&(to, ani))
                .none_or(|t| now.saturating_duration_since(*t) >= self.policy.cooldown)
    }

    fn release(&mut self, ani: u64, rejected: bool, now: Instant) {
        let policy = self.policy.clone();
        let Some(a) = self.anis.get_mut(&ani) else {
            return;
        };
        if a.active == 0 {
            return;
        }
        a.active -= 1;
        match a.until {
            Some(t) if t > now => return,
            Some(_) => {
                a.until = None;
                a.results.clear();
            }
            None => {}
        }
        a.results.push(rejected);
        if !rejected {
            return;
        }
        let streak = a.results.iter().rev().take_while(|r| **r).count() as u32;
        let n = a.results.len();
        let window = &a.results[n.saturating_sub(32)..];
        let rate = window.iter().filter(|r| **r).count() as f64 / window.len() as f64;
        if (policy.reject_streak > 0 && streak >= policy.reject_streak)
            || (n as u32 >= policy.reject_rate_min_calls && rate >= policy.reject_rate)
        {
            a.until = Some(now + policy.quarantine);
        }
    }
}

trait OptionCompat<T> {
    fn none_or(self, f: impl FnOnce(T) -> bool) -> bool;
}

impl<T> OptionCompat<T> for Option<T> {
    fn none_or(self, f: impl FnOnce(T) -> bool) -> bool {
        match self {
            None => true,
            Some(t) => f(t),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn pool_follows_its_rules(
        seed: u64,
        fragmented: bool,
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let policy = PoolPolicy {
            cooldown: Duration::from_secs(60),
            max_calls_per_ani: 2,
            reject_streak: 3,
            reject_rate: 0.5,
            reject_rate_min_calls: 4,
            quarantine: Duration::from_secs(300),
        };
        // Buckets 0000-0149 and 0100-0199 overlap on 0100-0149; 5/6-digit suffixes differ.
        // Two ranges: long suffixes are enumerated from the range table. 260 single numbers (every
        // other one, same buckets shape): they are walked in their bucket.
        let ranges: Vec<String> = if fragmented {
            (0..130u64)
                .flat_map(|k| [74_950_000_000 + 2 * k, 74_960_010_100 + 2 * k])
                .map(|v| v.to_string())
                .collect()
        } else {
            vec!["74950000000-74950000149".into(), "74960010100-74960010199".into()]
        };
        let ranges: Vec<&str> = ranges.iter().map(String::as_str).collect();
        let mut pool = pool_of(&ranges, policy.clone());
        prop_assert_eq!(pool.segments.len() > ENUMERATE_CAP, fragmented);
        let mut model = Model {
            policy: policy.clone(),
            anis: pool.slots.iter().map(|s| (s.value, ModelAni::default())).collect(),
            last_pick: HashMap::new(),
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let mut now = Instant::now();
        let mut held: Vec<Lease> = Vec::new();
        let mut released: Vec<Lease> = Vec::new();

        for op in ops {
            match op {
                Op::Pick { kind, len, hi, lo, to } => {
                    let to = dest(to).value();
                    let suffix = Code::from_suffix(hi * 10_000 + lo, len).unwrap();
                    let want = match kind {
                        0 => Want::Suffix(suffix),
                        1 => Want::RandomSuffix,
                        _ => Want::Any,
                    };
                    let modulus = 10u64.pow(len as u32);
                    let matching: Vec<u64> = model
                        .anis
                        .keys()
                        .copied()
                        .filter(|v| !matches!(want, Want::Suffix(_)) || v % modulus == suffix.value())
                        .collect();
                    let usable: Vec<u64> = matching.iter().copied().filter(|v| model.usable(*v, to, now)).collect();
                    let idle_usable = usable.iter().any(|v| model.anis[v].active == 0);
                    match pool.pick(want, Msisdn::from_u64(to).unwrap(), now, &mut rng) {
                        Some(lease) => {
                            let v = lease.ani.value();
                            prop_assert!(pool.contains(lease.ani));
                            prop_assert!(!model.quarantined(v, now), "picked quarantined {}", v);
                            prop_assert!(model.usable(v, to, now), "picked unusable {} (cooling or full)", v);
                            if let Want::Suffix(c) = want {
                                prop_assert_eq!(v % modulus, c.value());
                                prop_assert_eq!(lease.code(len), Some(c));
                                // Small buckets: the walk cap never hides an idle ANI.
                                prop_assert!(model.anis[&v].active == 0 || !idle_usable);
                            }
                            model.anis.get_mut(&v).unwrap().active += 1;
                            model.last_pick.insert((to, v), now);
                            held.push(lease);
                        }
                        None => {
                            if matches!(want, Want::Suffix(_)) {
                                prop_assert!(usable.is_empty(), "nothing picked but {:?} usable", usable);
                            }
                        }
                    }
                }
                Op::Release { which, rejected } => {
                    if !held.is_empty() {
                        let lease = held.swap_remove(which % held.len());
                        let result = if rejected { CallResult::Rejected } else { CallResult::Other };
                        model.release(lease.ani.value(), rejected, now);
                        pool.release(lease.clone(), result, now);
                        released.push(lease);
                    }
                }
                Op::ReleaseAgain { which, rejected } => {
                    if !released.is_empty() {
                        let lease = released[which % released.len()].clone();
                        let result = if rejected { CallResult::Rejected } else { CallResult::Other };
                        // The pool cannot tell a stale lease from a live one on the same ANI; it
                        // must only never go below zero calls.
                        model.release(lease.ani.value(), rejected, now);
                        pool.release(lease, result, now);
                    }
                }
                Op::Forge { index, in_pool } => {
                    let index = if in_pool { index % pool.len() as u32 } else { index.max(pool.len() as u32) };
                    pool.release(Lease { ani: num("79990000000"), index }, CallResult::Rejected, now);
                }
                Op::Advance { secs } => now += Duration::from_secs(secs),
            }

            let s = check_sum(&pool, now);
            let quarantined = model.anis.keys().filter(|v| model.quarantined(**v, now)).count();
            let busy = model
                .anis
                .iter()
                .filter(|(v, a)| a.active > 0 && !model.quarantined(**v, now))
                .count();
            prop_assert_eq!(s.quarantined, quarantined);
            prop_assert_eq!(s.busy, busy);
            for (v, a) in &model.anis {
                prop_assert_eq!(pool.active_calls(Msisdn::from_u64(*v).unwrap()), a.active);
            }
        }
    }
}

#[test]
fn value_at_agrees_with_the_slots() {
    let pool = pool_of(
        &[
            "74950000000-74950000099",
            "74950000200",
            "79000000000-79000000009",
        ],
        PoolPolicy::default(),
    );
    for (i, slot) in pool.slots.iter().enumerate() {
        assert_eq!(pool.value_at(i), slot.value, "index {i}");
    }
}
