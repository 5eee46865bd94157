//! The ANI pool: which caller number (ANI) an outgoing call presents.
//!
//! A flash call with a client-supplied code needs an ANI whose last digits are that code; a flash
//! call with a generated code needs an ANI picked at random (the code is then its last digits); a
//! voice call can use any ANI. The pool answers each of these in O(1) whatever its size: ANIs are
//! indexed in 10,000 buckets by their last 4 digits, each bucket (and one global list) an intrusive
//! doubly-linked list ordered by last pick, least recently picked first (a 5/6-digit code is found
//! from the range table, or filtered in its 4-digit bucket when the ranges are too fragmented for
//! that). Among candidates it prefers idle ANIs, skips ANIs cooling down towards the same destination and ANIs quarantined because
//! carriers keep rejecting them (cause 21/31 streaks or rates: flash-call ANIs get flagged as spam).
//!
//! This module is pure and must stay so: no I/O, no async, no clock reads and no randomness of its
//! own. Time comes in as a `now: Instant` argument and randomness from the `Rng` the caller hands
//! over, so every timing path is testable without sleeping. It must never panic whatever the input
//! (a lease released twice or handed to the wrong pool is ignored), never scan the whole pool on a
//! hot path, and `pick` must not allocate on its common path (only amortised growth of the
//! cool-down tables, which stops once a window's worth of calls has been seen).

mod cooldown;

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::call::code::{Code, MAX_CAPACITY, MIN_CAPACITY};
use crate::call::number::{Msisdn, NumberError};

use cooldown::Cooldowns;

/// Most ANIs one pool may hold. Indices are `u32`; each ANI costs 48 bytes, so this is ~480 MB.
pub const MAX_ANIS: usize = 10_000_000;
/// Candidates one walk examines before settling for a busy ANI (or nothing).
pub const WALK_CAP: usize = 64;
/// Nodes a 5/6-digit suffix walk may cross in its 4-digit bucket (non-matching ones do not count
/// towards `WALK_CAP`). A bucket of a contiguous range holds one ANI per 10,000, so this covers
/// pools of ~40 million ANIs.
pub const FILTER_WALK_CAP: usize = 4096;
/// A 5/6-digit suffix is looked up directly in the range table (no bucket walk) when the ranges
/// plus the matching numbers they can hold are at most this many: one range of a million ANIs has
/// 1 match for a 6-digit code and 10 for a 5-digit one, where its 4-digit bucket holds 100.
pub const ENUMERATE_CAP: usize = 256;
/// Random draws `Want::RandomSuffix` tries before falling back to the global LRU walk.
pub const RANDOM_TRIES: usize = 8;
/// Buckets: one per 4-digit suffix.
const BUCKETS: usize = 10_000;
/// Digits that select the bucket.
const BUCKET_DIGITS: u32 = 4;
/// Results remembered for the reject rate.
const HISTORY: u16 = 32;
/// "No node" in the intrusive lists.
const NIL: u32 = u32::MAX;

/// An inclusive range of ANIs with the same digit count, e.g. `74951090000-74951099999`; a single
/// number is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AniRange {
    pub first: Msisdn,
    pub last: Msisdn,
}

impl AniRange {
    /// A checked range: same digit count, `first <= last`.
    pub fn new(first: Msisdn, last: Msisdn) -> Result<AniRange, PoolError> {
        let range = AniRange { first, last };
        range.check()?;
        Ok(range)
    }

    /// Numbers in the range (0 if it is invalid).
    pub fn count(&self) -> u64 {
        if self.check().is_err() {
            return 0;
        }
        self.last.value() - self.first.value() + 1
    }

    fn check(&self) -> Result<(), PoolError> {
        if self.first.len() != self.last.len() {
            return Err(PoolError::MixedLengths {
                first: self.first,
                last: self.last,
            });
        }
        if self.first.value() > self.last.value() {
            return Err(PoolError::EmptyRange {
                first: self.first,
                last: self.last,
            });
        }
        Ok(())
    }
}

impl FromStr for AniRange {
    type Err = PoolError;

    /// `first-last` (inclusive) or a single number; digits with an optional leading `+`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s, s),
        };
        AniRange::new(first.parse()?, last.parse()?)
    }
}

impl fmt::Display for AniRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// How the pool rotates and protects its ANIs.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPolicy {
    /// An ANI is not reused towards the same destination within this window.
    pub cooldown: Duration,
    /// Concurrent calls one ANI may carry (0 behaves as 1: an idle ANI is always usable). Idle ANIs
    /// are always preferred over busy ones.
    pub max_calls_per_ani: u16,
    /// This many consecutive rejections (cause 21/31) quarantine an ANI; 0 disables the rule.
    pub reject_streak: u32,
    /// A reject rate at or above this over the ANI's last (up to 32) results quarantines it...
    pub reject_rate: f64,
    /// ...once it has at least this many results since it was last (re)admitted.
    pub reject_rate_min_calls: u32,
    /// How long a quarantine lasts; the ANI's history is forgotten when it comes back.
    pub quarantine: Duration,
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy {
            cooldown: Duration::from_secs(10 * 60),
            max_calls_per_ani: 8,
            reject_streak: 3,
            reject_rate: 0.5,
            reject_rate_min_calls: 10,
            quarantine: Duration::from_secs(60 * 60),
        }
    }
}

/// What the caller needs from the ANI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The ANI must end in these digits (a client-supplied flash code, MCN `verification_code`).
    /// Codes of 4 to 6 digits; any other length finds nothing.
    Suffix(Code),
    /// The service generates the code from the ANI: an ANI drawn uniformly at random (so its last
    /// digits are unpredictable), least recently used among those sharing its 4-digit suffix.
    RandomSuffix,
    /// The code does not depend on the ANI: the least recently used ANI overall.
    Any,
}

/// One call's hold on an ANI; hand it back to `release` when the call ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ani: Msisdn,
    index: u32,
}

impl Lease {
    /// The code this ANI carries: its last `len` digits (4..=6), for `Want::RandomSuffix`.
    pub fn code(&self, len: usize) -> Option<Code> {
        Code::from_suffix(self.ani.value(), len).ok()
    }
}

/// How a call through an ANI ended, as far as the ANI's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// Cause 21 (call rejected) or 31 (normal, unspecified): what carriers answer to ANIs they flag.
    Rejected,
    /// Anything else.
    Other,
}

/// ANIs by state; the three counts always sum to `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    pub total: usize,
    /// Not busy and not quarantined.
    pub free: usize,
    /// At least one active call, not quarantined.
    pub busy: usize,
    /// Quarantined (whether or not calls placed before the quarantine are still up).
    pub quarantined: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("a pool needs at least one ANI range")]
    NoRanges,
    #[error("the ANI range {first}-{last} is empty (its first number is above its last)")]
    EmptyRange { first: Msisdn, last: Msisdn },
    #[error("the ANI range {first}-{last} mixes numbers of different lengths")]
    MixedLengths { first: Msisdn, last: Msisdn },
    #[error("the ANI ranges hold {size} numbers; a pool holds at most {MAX_ANIS}")]
    TooLarge { size: u64 },
    #[error("the ANI {0} appears in more than one range")]
    Overlap(Msisdn),
    #[error("bad number in an ANI range: {0}")]
    Number(#[from] NumberError),
}

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

const UNLINKED: Link = Link {
    prev: NIL,
    next: NIL,
};

#[derive(Debug, Clone, Copy)]
struct Ends {
    head: u32,
    tail: u32,
}

const EMPTY: Ends = Ends {
    head: NIL,
    tail: NIL,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Bucket,
    Global,
}

/// One ANI: 48 bytes. Linked in its bucket and the global list exactly when not quarantined.
#[derive(Debug, Clone, Copy)]
struct Slot {
    value: u64,
    bucket: Link,
    global: Link,
    /// Last results, newest in bit 0; 1 = rejected.
    history: u32,
    /// Last pick, in whole seconds since the pool's epoch plus one (0 = never picked, `u32::MAX` =
    /// too late to tell). Lets most picks skip the cool-down lookup.
    stamp: u32,
    /// `AniPool::picks` at its last pick (wrapping): LRU order where no list gives it.
    seq: u32,
    active: u16,
    streak: u16,
    /// Results since (re)admission, saturating.
    results: u16,
    quarantined: bool,
}

impl Slot {
    fn link(&mut self, list: List) -> &mut Link {
        match list {
            List::Bucket => &mut self.bucket,
            List::Global => &mut self.global,
        }
    }

    fn next(&self, list: List) -> u32 {
        match list {
            List::Bucket => self.bucket.next,
            List::Global => self.global.next,
        }
    }

    fn state(&self) -> State {
        if self.quarantined {
            State::Quarantined
        } else if self.active > 0 {
            State::Busy
        } else {
            State::Free
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    Busy,
    Quarantined,
}

fn bucket_of(value: u64) -> usize {
    (value % 10u64.pow(BUCKET_DIGITS)) as usize
}

fn unlink(slots: &mut [Slot], ends: &mut Ends, list: List, i: u32) {
    let Link { prev, next } = *slots[i as usize].link(list);
    if prev == NIL {
        ends.head = next;
    } else {
        slots[prev as usize].link(list).next = next;
    }
    if next == NIL {
        ends.tail = prev;
    } else {
        slots[next as usize].link(list).prev = prev;
    }
    *slots[i as usize].link(list) = UNLINKED;
}

fn push_back(slots: &mut [Slot], ends: &mut Ends, list: List, i: u32) {
    let tail = ends.tail;
    *slots[i as usize].link(list) = Link {
        prev: tail,
        next: NIL,
    };
    if tail == NIL {
        ends.head = i;
    } else {
        slots[tail as usize].link(list).next = i;
    }
    ends.tail = i;
}

fn push_front(slots: &mut [Slot], ends: &mut Ends, list: List, i: u32) {
    let head = ends.head;
    *slots[i as usize].link(list) = Link {
        prev: NIL,
        next: head,
    };
    if head == NIL {
        ends.tail = i;
    } else {
        slots[head as usize].link(list).prev = i;
    }
    ends.head = i;
}

/// The ANIs of one route. Not thread-safe by itself: the engine owns it (or wraps it in a mutex).
pub struct AniPool {
    policy: PoolPolicy,
    /// Sorted by value (ranges are sorted and disjoint), so `contains` is a binary search.
    slots: Vec<Slot>,
    buckets: Vec<Ends>,
    global: Ends,
    busy: usize,
    quarantined: usize,
    /// (quarantine end, ANI index), sorted by end; one entry per quarantined ANI at most.
    quarantine_queue: VecDeque<(Instant, u32)>,
    /// (destination, ANI index) → when the ANI was last picked towards it.
    cooldowns: Cooldowns,
    /// `policy.cooldown` in whole seconds, rounded up.
    cooldown_secs: u64,
    /// The first `now` a pick saw: the origin of `Slot::stamp`.
    epoch: Option<Instant>,
    /// (first index, first value) of each range, sorted: an index's number without touching its
    /// slot.
    segments: Vec<(u32, u64)>,
    /// Picks so far (wrapping), for `Slot::seq`.
    picks: u32,
}

impl fmt::Debug for AniPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AniPool")
            .field("len", &self.slots.len())
            .field("busy", &self.busy)
            .field("quarantined", &self.quarantined)
            .field("cooldowns", &self.cooldowns.len())
            .field("policy", &self.policy)
            .finish()
    }
}

impl AniPool {
    /// Expands the ranges (which must be valid and disjoint) into the pool, every ANI free.
    pub fn new(ranges: &[AniRange], policy: PoolPolicy) -> Result<AniPool, PoolError> {
        if ranges.is_empty() {
            return Err(PoolError::NoRanges);
        }
        let mut size: u64 = 0;
        for range in ranges {
            range.check()?;
            size = size.saturating_add(range.count());
        }
        if size > MAX_ANIS as u64 {
            return Err(PoolError::TooLarge { size });
        }
        let mut sorted = ranges.to_vec();
        sorted.sort_unstable_by_key(|r| r.first.value());
        for pair in sorted.windows(2) {
            if pair[1].first.value() <= pair[0].last.value() {
                return Err(PoolError::Overlap(pair[1].first));
            }
        }

        let mut slots = Vec::with_capacity(size as usize);
        let mut segments = Vec::with_capacity(sorted.len());
        for range in &sorted {
            segments.push((slots.len() as u32, range.first.value()));
            slots.extend(
                (range.first.value()..=range.last.value()).map(|value| Slot {
                    value,
                    bucket: UNLINKED,
                    global: UNLINKED,
                    history: 0,
                    stamp: 0,
                    seq: 0,
                    active: 0,
                    streak: 0,
                    results: 0,
                    quarantined: false,
                }),
            );
        }
        let mut buckets = vec![EMPTY; BUCKETS];
        let mut global = EMPTY;
        for i in 0..slots.len() as u32 {
            let b = bucket_of(slots[i as usize].value);
            push_back(&mut slots, &mut buckets[b], List::Bucket, i);
            push_back(&mut slots, &mut global, List::Global, i);
        }
        let cooldown_secs = policy
            .cooldown
            .as_secs()
            .saturating_add(u64::from(policy.cooldown.subsec_nanos() > 0));
        Ok(AniPool {
            cooldowns: Cooldowns::new(policy.cooldown),
            cooldown_secs,
            epoch: None,
            segments,
            policy,
            slots,
            buckets,
            global,
            busy: 0,
            quarantined: 0,
            quarantine_queue: VecDeque::new(),
            picks: 0,
        })
    }

    pub fn policy(&self) -> &PoolPolicy {
        &self.policy
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn contains(&self, ani: Msisdn) -> bool {
        self.index_of(ani).is_some()
    }

    fn index_of(&self, ani: Msisdn) -> Option<u32> {
        self.slots
            .binary_search_by_key(&ani.value(), |s| s.value)
            .ok()
            .map(|i| i as u32)
    }

    /// Takes an ANI for a call towards `destination`, or `None` if no usable ANI fits `want`.
    /// The ANI becomes the most recently used one and starts cooling down towards `destination`.
    pub fn pick(
        &mut self,
        want: Want,
        destination: Msisdn,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Option<Lease> {
        self.refresh(now);
        let dest = destination.value();
        let index = match want {
            Want::Suffix(code) => {
                let len = code.len();
                if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&len) {
                    return None;
                }
                let value = code.value();
                let head = self.buckets[bucket_of(value)].head;
                if len <= BUCKET_DIGITS as usize {
                    self.walk(head, List::Bucket, None, dest, now)
                } else {
                    let modulus = 10u64.pow(len as u32);
                    if self.segments.len() + self.slots.len() / modulus as usize <= ENUMERATE_CAP {
                        self.pick_enumerated(modulus, value, dest, now)
                    } else {
                        self.walk(head, List::Bucket, Some((modulus, value)), dest, now)
                    }
                }
            }
            Want::RandomSuffix => self.pick_random(dest, now, rng),
            Want::Any => self.walk(self.global.head, List::Global, None, dest, now),
        }?;
        self.take(index, dest, now);
        Some(Lease {
            ani: self.msisdn(index)?,
            index,
        })
    }

    /// Ends a call's hold on its ANI and records how the call went. A lease whose index is out of
    /// range, whose number is not the one at its index, or whose ANI carries no call is ignored.
    /// (A stale lease on an ANI that carries another call cannot be told apart from that call's.)
    pub fn release(&mut self, lease: Lease, result: CallResult, now: Instant) {
        self.refresh(now);
        let i = lease.index as usize;
        match self.slots.get(i) {
            Some(slot) if slot.value == lease.ani.value() && slot.active > 0 => {}
            _ => return,
        }
        let before = self.slots[i].state();
        self.slots[i].active -= 1;
        if !self.slots[i].quarantined && self.record(i, result) {
            self.quarantine(lease.index, now);
        }
        let after = self.slots[i].state();
        self.recount(before, after);
    }

    /// Counts by state. O(1) plus the quarantines that ended since the last `pick`/`release`.
    pub fn stats(&self, now: Instant) -> PoolStats {
        let mut stats = PoolStats {
            total: self.slots.len(),
            free: self.slots.len() - self.busy - self.quarantined,
            busy: self.busy,
            quarantined: self.quarantined,
        };
        // Quarantines that have ended but that no `&mut` call has noticed yet.
        for &(until, i) in &self.quarantine_queue {
            if until > now {
                break;
            }
            stats.quarantined -= 1;
            if self.slots[i as usize].active > 0 {
                stats.busy += 1;
            } else {
                stats.free += 1;
            }
        }
        stats
    }

    /// Publishes `stats` as `callcode_ani_pool{route, state}` gauges.
    pub fn record_metrics(&self, route: &str, now: Instant) {
        let stats = self.stats(now);
        for (state, count) in [
            ("free", stats.free),
            ("busy", stats.busy),
            ("quarantined", stats.quarantined),
        ] {
            metrics::gauge!("callcode_ani_pool", "route" => route.to_owned(), "state" => state)
                .set(count as f64);
        }
    }

    /// Whether `ani` is quarantined as of `now` (false if it is not in the pool).
    pub fn is_quarantined(&self, ani: Msisdn, now: Instant) -> bool {
        let Some(i) = self.index_of(ani) else {
            return false;
        };
        self.slots[i as usize].quarantined
            && !self
                .quarantine_queue
                .iter()
                .take_while(|(until, _)| *until <= now)
                .any(|&(_, q)| q == i)
    }

    /// Calls currently holding `ani` (0 if it is not in the pool).
    pub fn active_calls(&self, ani: Msisdn) -> u16 {
        self.index_of(ani)
            .map_or(0, |i| self.slots[i as usize].active)
    }

    /// Ends due quarantines and drops cool-downs that are out of the window. `pick` and `release`
    /// call it.
    pub fn refresh(&mut self, now: Instant) {
        while let Some(&(until, i)) = self.quarantine_queue.front() {
            if until > now {
                break;
            }
            self.quarantine_queue.pop_front();
            self.readmit(i);
        }
        self.cooldowns.rotate(now);
    }

    fn msisdn(&self, i: u32) -> Option<Msisdn> {
        Msisdn::from_u64(self.slots.get(i as usize)?.value).ok()
    }

    /// Whole seconds from the epoch to `now` (0 before the first pick or if time went backwards).
    fn secs(&self, now: Instant) -> u64 {
        self.epoch
            .map_or(0, |epoch| now.saturating_duration_since(epoch).as_secs())
    }

    fn cooling(&self, dest: u64, i: u32, now: Instant) -> bool {
        let stamp = self.slots[i as usize].stamp;
        // Picked p whole seconds past the epoch means picked before epoch + p + 1 = epoch + stamp;
        // if that is a whole window before `now` (itself at least epoch + secs(now)), nothing
        // recorded for this ANI can still be cooling.
        let surely_cold = stamp == 0
            || (stamp != u32::MAX
                && self.secs(now) >= u64::from(stamp).saturating_add(self.cooldown_secs));
        !surely_cold && self.cooldowns.is_cooling(dest, i, now)
    }

    /// The number at index `i`, from the range table (no slot access: a cache miss saved).
    fn value_at(&self, i: usize) -> u64 {
        let at = self
            .segments
            .partition_point(|&(start, _)| start as usize <= i);
        match at.checked_sub(1).and_then(|s| self.segments.get(s)) {
            Some(&(start, first)) => first + (i - start as usize) as u64,
            None => 0,
        }
    }

    /// From `head`, the first idle ANI not cooling towards `dest` (and ending in `filter.1` modulo
    /// `filter.0`, if given), else the first such busy ANI with room for another call, within
    /// `WALK_CAP` candidates.
    fn walk(
        &self,
        head: u32,
        list: List,
        filter: Option<(u64, u64)>,
        dest: u64,
        now: Instant,
    ) -> Option<u32> {
        let mut cur = head;
        let mut candidates = 0;
        let mut crossed = 0;
        let mut fallback = None;
        while cur != NIL && candidates < WALK_CAP && crossed < FILTER_WALK_CAP {
            let i = cur;
            let slot = &self.slots[i as usize];
            cur = slot.next(list);
            crossed += 1;
            if let Some((modulus, want)) = filter {
                if slot.value % modulus != want {
                    continue;
                }
            }
            candidates += 1;
            if slot.quarantined {
                continue; // never linked while quarantined; defensive
            }
            if slot.active == 0 {
                if !self.cooling(dest, i, now) {
                    return Some(i);
                }
            } else if fallback.is_none()
                && slot.active < self.policy.max_calls_per_ani
                && !self.cooling(dest, i, now)
            {
                fallback = Some(i);
            }
        }
        fallback
    }

    /// Like `walk` for the numbers ending in `want` modulo `modulus`, found from the range table:
    /// the least recently picked usable idle one, else the least recently picked usable busy one.
    /// Only called when they are at most `ENUMERATE_CAP`.
    fn pick_enumerated(&self, modulus: u64, want: u64, dest: u64, now: Instant) -> Option<u32> {
        // (age in picks, index); on equal ages the lower index, as in a fresh bucket list.
        let mut idle: Option<(u32, u32)> = None;
        let mut busy: Option<(u32, u32)> = None;
        for (k, &(start, first)) in self.segments.iter().enumerate() {
            let end = self
                .segments
                .get(k + 1)
                .map_or(self.slots.len() as u32, |&(next, _)| next);
            let last = first + u64::from(end - start) - 1;
            let mut v = first - first % modulus + want;
            if v < first {
                v += modulus;
            }
            while v <= last {
                let i = start + (v - first) as u32;
                v += modulus;
                let slot = &self.slots[i as usize];
                if slot.quarantined {
                    continue;
                }
                let age = self.picks.wrapping_sub(slot.seq);
                let best = if slot.active == 0 {
                    &mut idle
                } else if slot.active < self.policy.max_calls_per_ani {
                    &mut busy
                } else {
                    continue;
                };
                if older_than(*best, age) && !self.cooling(dest, i, now) {
                    *best = Some((age, i));
                }
            }
        }
        idle.or(busy).map(|(_, i)| i)
    }

    fn pick_random(&self, dest: u64, now: Instant, rng: &mut impl Rng) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        for _ in 0..RANDOM_TRIES {
            let drawn = rng.random_range(0..self.slots.len());
            let head = self.buckets[bucket_of(self.value_at(drawn))].head;
            if let Some(i) = self.walk(head, List::Bucket, None, dest, now) {
                return Some(i);
            }
        }
        self.walk(self.global.head, List::Global, None, dest, now)
    }

    fn take(&mut self, i: u32, dest: u64, now: Instant) {
        let epoch = *self.epoch.get_or_insert(now);
        let secs = now.saturating_duration_since(epoch).as_secs();
        self.picks = self.picks.wrapping_add(1);
        let picks = self.picks;
        let slot = &mut self.slots[i as usize];
        let before = slot.state();
        slot.active = slot.active.saturating_add(1);
        // Whole seconds + 1, or "too late to tell" past ~136 years.
        slot.stamp = u32::try_from(secs + 1).unwrap_or(u32::MAX);
        slot.seq = picks;
        let after = slot.state();
        self.recount(before, after);
        let b = bucket_of(self.slots[i as usize].value);
        if self.buckets[b].tail != i {
            unlink(&mut self.slots, &mut self.buckets[b], List::Bucket, i);
            push_back(&mut self.slots, &mut self.buckets[b], List::Bucket, i);
        }
        if self.global.tail != i {
            unlink(&mut self.slots, &mut self.global, List::Global, i);
            push_back(&mut self.slots, &mut self.global, List::Global, i);
        }
        self.cooldowns.insert(dest, i, now);
    }

    /// Adds a result to the ANI's history; true if it now deserves a quarantine.
    fn record(&mut self, i: usize, result: CallResult) -> bool {
        let policy = &self.policy;
        let slot = &mut self.slots[i];
        slot.results = slot.results.saturating_add(1);
        slot.history <<= 1;
        match result {
            CallResult::Other => {
                slot.streak = 0;
                false
            }
            CallResult::Rejected => {
                slot.history |= 1;
                slot.streak = slot.streak.saturating_add(1);
                if policy.reject_streak > 0 && u32::from(slot.streak) >= policy.reject_streak {
                    return true;
                }
                if u32::from(slot.results) < policy.reject_rate_min_calls {
                    return false;
                }
                let window = slot.results.min(HISTORY);
                let mask = if window >= 32 {
                    u32::MAX
                } else {
                    (1u32 << window) - 1
                };
                let rejects = (slot.history & mask).count_ones();
                f64::from(rejects) / f64::from(window) >= policy.reject_rate
            }
        }
    }

    /// Takes the ANI out of rotation until `now + quarantine` (for good if that overflows).
    fn quarantine(&mut self, i: u32, now: Instant) {
        let slot = &mut self.slots[i as usize];
        if slot.quarantined {
            return;
        }
        slot.quarantined = true;
        let b = bucket_of(slot.value);
        unlink(&mut self.slots, &mut self.buckets[b], List::Bucket, i);
        unlink(&mut self.slots, &mut self.global, List::Global, i);
        if let Some(until) = now.checked_add(self.policy.quarantine) {
            let q = &mut self.quarantine_queue;
            match q.back() {
                Some(&(last, _)) if last > until => {
                    // `now` went backwards: keep the queue sorted anyway.
                    let at = q.partition_point(|&(t, _)| t <= until);
                    q.insert(at, (until, i));
                }
                _ => q.push_back((until, i)),
            }
        }
    }

    /// Brings a quarantined ANI back with a clean history, at the front of its lists: it has not
    /// been picked for a whole quarantine.
    fn readmit(&mut self, i: u32) {
        let Some(slot) = self.slots.get_mut(i as usize) else {
            return;
        };
        if !slot.quarantined {
            return;
        }
        let before = slot.state();
        slot.quarantined = false;
        slot.history = 0;
        slot.streak = 0;
        slot.results = 0;
        let after = slot.state();
        let b = bucket_of(slot.value);
        push_front(&mut self.slots, &mut self.buckets[b], List::Bucket, i);
        push_front(&mut self.slots, &mut self.global, List::Global, i);
        self.recount(before, after);
    }

    fn recount(&mut self, before: State, after: State) {
        if before == after {
            return;
        }
        match before {
            State::Free => {}
            State::Busy => self.busy -= 1,
            State::Quarantined => self.quarantined -= 1,
        }
        match after {
            State::Free => {}
            State::Busy => self.busy += 1,
            State::Quarantined => self.quarantined += 1,
        }
    }
}

#[cfg(test)]
mod tests;

/// Whether a candidate of this age beats the best so far (strictly older; ties keep the first).
fn older_than(best: Option<(u32, u32)>, age: u32) -> bool {
    match best {
        None => true,
        Some((best_age, _)) => age > best_age,
    }
}
