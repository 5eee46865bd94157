//! The pure call state machine (`call::machine`): whole calls and single events, with time passed
//! in (no clock reads), so this is the machine's own cost and nothing else.
//!
//! - `machine/flash_call`: new + start + Progress + on_timer at the ring deadline + Hangup → Finished
//!   (4 inputs per call);
//! - `machine/voice_call_repeat`: new + start + Progress + Answered + PromptDone × 10 + Hangup →
//!   Finished (14 inputs per call, a 4-digit code spoken twice);
//! - `machine/event/progress_noop`: one `Progress` to a call already ringing (the cheapest path: a
//!   state check, no transition);
//! - `machine/event/prompt_done`: one `PromptDone` that advances the message and returns the next
//!   `Play` (a 6-digit code spoken twice, 14 prompts; the machine is reset by copy once per message).
//!
//! Throughput is in inputs (start, events and timer expiries) fed to the machine. Target: ≥ 5 M
//! inputs/s on one core.
//!
//! Before criterion runs, a counting global allocator proves that driving 10,000 whole calls through
//! the machine allocates nothing (the process panics otherwise).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use callcode::backend::{CallEvent, Hangup};
use callcode::call::machine::{Action, Actions, CallSpec, Final, Machine, Timings};
use callcode::call::{Code, EndedBy, Method, Outcome};
use criterion::{criterion_group, Criterion, Throughput};

/// `System`, counting every allocation (and reallocation).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::SeqCst)
}

const MS: Duration = Duration::from_millis(1);
const RING: CallEvent = CallEvent::Progress { early_media: false };
const BYE_US: CallEvent = CallEvent::Hangup(Hangup {
    q850: 16,
    sip_status: None,
    ended_by: EndedBy::Us,
});

/// Inputs fed per flash call: start, Progress, timer, Hangup.
const FLASH_INPUTS: u64 = 4;
/// Inputs fed per voice call with repeat: start, Progress, Answered, PromptDone × 10, Hangup.
const VOICE_INPUTS: u64 = 14;

fn spec(method: Method, code: &str, repeat: bool) -> CallSpec {
    CallSpec {
        method,
        code: Code::parse_len(code, code.len()).expect("valid code"),
        repeat,
        check_redirect: true,
        timings: Timings::default(),
        prompt_ms: [500, 510, 520, 530, 540, 550, 560, 570, 580, 590, 900],
    }
}

fn finished(actions: &[Action]) -> Option<Final> {
    match actions {
        [Action::Finished(f)] => Some(*f),
        _ => None,
    }
}

/// A whole flash call: rings, is dropped at the ring deadline, the PBX confirms.
#[inline(never)]
fn flash_call(spec: CallSpec, t0: Instant) -> Option<Final> {
    let mut m = Machine::new(spec);
    let dial = m.start(t0);
    black_box(&dial);
    let ringing = m.on_event(black_box(RING), t0 + 100 * MS);
    black_box(&ringing);
    let ring_end = m.deadline()?;
    let drop = m.on_timer(ring_end);
    black_box(&drop);
    let end = m.on_event(black_box(BYE_US), ring_end + 20 * MS);
    finished(&end)
}

/// A whole voice call: rings, answers, every prompt completes, we hang up, the PBX confirms.
#[inline(never)]
fn voice_call(spec: CallSpec, t0: Instant) -> Option<Final> {
    let mut m = Machine::new(spec);
    black_box(m.start(t0));
    black_box(m.on_event(black_box(RING), t0 + 100 * MS));
    let mut now = t0 + 1000 * MS;
    let mut acts = m.on_event(black_box(CallEvent::Answered), now);
    while let [Action::Play { seq, .. }] = acts.as_slice() {
        now += 600 * MS;
        acts = m.on_event(black_box(CallEvent::PromptDone { seq: *seq }), now);
    }
    if !matches!(acts.as_slice(), [Action::Hangup { .. }]) {
        return None;
    }
    finished(&m.on_event(black_box(BYE_US), now + 20 * MS))
}

/// Drives 10,000 whole calls (half flash, half voice with repeat) and panics unless the allocation
/// count is unchanged across them.
fn assert_no_allocations() {
    let flash = spec(Method::Flash, "4821", false);
    let voice = spec(Method::Voice, "4821", true);
    let t0 = Instant::now();
    const CALLS: u32 = 10_000;
    let mut delivered = 0u32;
    let mut answered = 0u32;
    let mut inputs = 0u64;

    let before = allocations();
    for i in 0..CALLS {
        let at = t0 + Duration::from_millis(u64::from(i));
        if i % 2 == 0 {
            if let Some(f) = flash_call(black_box(flash), at) {
                delivered += u32::from(f.outcome == Outcome::Delivered);
            }
            inputs += FLASH_INPUTS;
        } else {
            if let Some(f) = voice_call(black_box(voice), at) {
                answered += u32::from(f.outcome == Outcome::Answered && f.prompts_played == 10);
            }
            inputs += VOICE_INPUTS;
        }
    }
    let after = allocations();

    let allocated = after - before;
    println!(
        "allocation check: {CALLS} calls, {inputs} inputs fed to the machine, {allocated} \
         allocations ({before} before, {after} after)"
    );
    println!(
        "sizes: Machine {} bytes, Actions (returned per input) {} bytes",
        std::mem::size_of::<Machine>(),
        std::mem::size_of::<Actions>()
    );
    assert_eq!(
        (delivered, answered),
        (CALLS / 2, CALLS / 2),
        "allocation check: the calls did not end as expected"
    );
    assert!(
        allocated == 0,
        "allocation check FAILED: driving {CALLS} calls through the machine allocated \
         {allocated} times; the hot path must not allocate"
    );
}

fn whole_calls(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut g = c.benchmark_group("machine");

    let flash = spec(Method::Flash, "4821", false);
    g.throughput(Throughput::Elements(FLASH_INPUTS));
    g.bench_function("flash_call", |b| {
        b.iter(|| {
            let f = flash_call(black_box(flash), black_box(t0));
            assert!(f.is_some());
            f
        })
    });

    let voice = spec(Method::Voice, "4821", true);
    g.throughput(Throughput::Elements(VOICE_INPUTS));
    g.bench_function("voice_call_repeat", |b| {
        b.iter(|| {
            let f = voice_call(black_box(voice), black_box(t0));
            assert!(f.is_some());
            f
        })
    });
    g.finish();
}

fn single_events(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut g = c.benchmark_group("machine/event");
    g.throughput(Throughput::Elements(1));

    // A flash call already ringing: a repeated Progress changes nothing.
    let mut ringing = Machine::new(spec(Method::Flash, "4821", false));
    ringing.start(t0);
    ringing.on_event(RING, t0);
    g.bench_function("progress_noop", |b| {
        b.iter(|| ringing.on_event(black_box(RING), black_box(t0 + MS)))
    });

    // A long message (6 digits, twice: 14 prompts); each completion yields the next Play. At the
    // end of the message the machine is reset by copying the one that has just answered.
    let mut speaking = Machine::new(spec(Method::Voice, "482193", true));
    speaking.start(t0);
    speaking.on_event(CallEvent::Answered, t0);
    let fresh = speaking.clone();
    let mut m = fresh.clone();
    let mut seq = 0u16;
    let mut now = t0;
    g.bench_function("prompt_done", |b| {
        b.iter(|| {
            now += MS;
            let acts = m.on_event(black_box(CallEvent::PromptDone { seq }), black_box(now));
            match acts.as_slice() {
                [Action::Play { seq: next, .. }] => seq = *next,
                _ => {
                    m = fresh.clone();
                    seq = 0;
                    now = t0;
                }
            }
            acts
        })
    });

    // Cost of the reset alone, to subtract from `prompt_done` if wanted (paid once per 14 events).
    g.bench_function("reset_copy", |b| b.iter(|| black_box(&fresh).clone()));
    g.finish();
}

criterion_group!(benches, whole_calls, single_events);

fn main() {
    // Before criterion allocates anything of its own: only the machine runs inside the window.
    assert_no_allocations();
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
