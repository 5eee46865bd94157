//! FastAGI sessions per second on loopback: the real `FastAgiServer` and, in the same process, a
//! load generator that behaves like Asterisk by replaying `agi-voice-vid-voice-44dd` (the
//! captured voice call of callcode's dialplan): it connects, sends the environment block in its
//! two captured reads with a per-session `agi_arg_1`, answers each command at once with the
//! captured reply (the `GET VARIABLE` reply echoing that session's id), sends `HANGUP` after the
//! `HANGUP` reply and waits for the server to close. Every command the server sends is checked
//! byte for byte against the capture.
//!
//! The server side runs the voice script callcode runs: `GET VARIABLE VERIFICATION_ID` (checked
//! against `agi_arg_1`), `CHANNEL STATUS`, five `STREAM FILE`s, `HANGUP`: 8 round trips plus
//! connect, environment block and close per session.
//!
//! - `fastagi/sessions/in_flight_64`: `SESSIONS` sessions per iteration, 64 at once.
//!   Target: ≥ 10,000 sessions/s on the 2-core benchmark machine.
//! - `fastagi/sessions/in_flight_1`: one at a time, for the unloaded cost of a session.
//!
//! Server and generator run in two tokio runtimes (2 worker threads each, as Asterisk is another
//! process) and share the machine's cores. After each benchmark the CPU time each side used per
//! session is printed (per-thread user + system time from /proc), which does not depend on what
//! else the machine is running.

#[path = "../tests/support/agi_transcript.rs"]
mod agi_transcript;

#[path = "../tests/support/agi_peer.rs"]
mod agi_peer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agi_transcript::{load, Chunk};
use callcode::backend::asterisk::agi::AgiCommand;
use callcode::backend::asterisk::fastagi::{AgiSession, FastAgiServer, FastAgiSettings};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

const TRANSCRIPT: &str = "callcode-path/agi-voice-vid-voice-44dd";
const CAPTURED_ID: &str = "vid-voice-44dd";
/// Sessions per iteration.
const SESSIONS: usize = 2_000;

/// The server-side script; returns false if anything differed from a clean voice call.
async fn voice_script(mut session: AgiSession) -> bool {
    let expected_id = session.env.arg(1).map(str::to_owned);
    let Ok(id) = session
        .command(AgiCommand::GetVariable("VERIFICATION_ID"))
        .await
    else {
        return false;
    };
    if id.data != expected_id {
        return false;
    }
    if session.command(AgiCommand::ChannelStatus).await.is_err() {
        return false;
    }
    for file in ["silence/1", "digits/4", "digits/8", "digits/2", "digits/1"] {
        if session.stream_file(file).await.is_err() {
            return false;
        }
    }
    session.hangup().await.is_ok()
}

struct Bench {
    /// callcode's side: the FastAGI server and the voice scripts.
    _server_rt: Runtime,
    /// Asterisk's side: the load generator.
    load_rt: Runtime,
    addr: SocketAddr,
    template: Arc<Vec<Chunk>>,
    failed_scripts: Arc<AtomicUsize>,
    _server: FastAgiServer,
}

const SERVER_THREAD: &str = "agi-server";
const LOAD_THREAD: &str = "agi-load";

fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

fn setup() -> Bench {
    let server_rt = runtime(SERVER_THREAD);
    let failed_scripts = Arc::new(AtomicUsize::new(0));
    let (server, addr) = server_rt.block_on(async {
        let (tx, mut rx) = mpsc::channel::<AgiSession>(1024);
        let settings = FastAgiSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_connections: 4096,
            command_timeout_ms: 10_000,
        };
        let server = FastAgiServer::bind(settings, tx).await.unwrap();
        let addr = server.local_addr();
        let failed = failed_scripts.clone();
        tokio::spawn(async move {
            while let Some(session) = rx.recv().await {
                let failed = failed.clone();
                tokio::spawn(async move {
                    if !voice_script(session).await {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        (server, addr)
    });
    Bench {
        _server_rt: server_rt,
        load_rt: runtime(LOAD_THREAD),
        addr,
        template: Arc::new(load(TRANSCRIPT).chunks),
        failed_scripts,
        _server: server,
    }
}

/// Runs `sessions` Asterisk-like sessions, `in_flight` at once; panics on any deviation.
async fn run_sessions(bench: &Bench, sessions: usize, in_flight: usize, first_id: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let next = next.clone();
        let template = bench.template.clone();
        let addr = bench.addr;
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= sessions {
                    break;
                }
                let id = format!("vid-bench-{:08}", first_id + n);
                let chunks = agi_peer::substitute(&template, CAPTURED_ID, &id);
                let replayed = agi_peer::replay(addr, &chunks).await.expect("replay");
                assert_eq!(replayed.mismatch, None);
                assert!(replayed.server_closed);
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
}

/// CPU time (user + system) used so far by this process's threads whose name starts with
/// `prefix`, from /proc (Linux). Kernel work done on a thread's behalf, such as delivering its
/// loopback segments to the other side, counts for that thread.
fn thread_cpu(prefix: &str) -> Duration {
    let ticks_per_s = 100; // USER_HZ, fixed at 100 on Linux
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // Fields after the `(comm)`: state is field 3, utime 14 and stime 15.
        let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split(' ').collect();
        for i in [11, 12] {
            ticks += fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_millis(ticks * 1000 / ticks_per_s)
}

fn sessions(c: &mut Criterion) {
    let bench = setup();
    let mut group = c.benchmark_group("fastagi/sessions");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    let ids = AtomicUsize::new(0);
    for (name, in_flight, per_iter) in [("in_flight_64", 64, SESSIONS), ("in_flight_1", 1, 200)] {
        group.throughput(Throughput::Elements(per_iter as u64));
        let first = ids.load(Ordering::Relaxed);
        let (server_cpu, load_cpu) = (thread_cpu(SERVER_THREAD), thread_cpu(LOAD_THREAD));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let first_id = ids.fetch_add(per_iter, Ordering::Relaxed);
                    let start = Instant::now();
                    bench
                        .load_rt
                        .block_on(run_sessions(&bench, per_iter, in_flight, first_id));
                    total += start.elapsed();
                }
                total
            })
        });
        let done = (ids.load(Ordering::Relaxed) - first) as f64;
        let per_session = |cpu: Duration| cpu.as_secs_f64() * 1e6 / done;
        let server = per_session(thread_cpu(SERVER_THREAD) - server_cpu);
        let load = per_session(thread_cpu(LOAD_THREAD) - load_cpu);
        println!(
            "fastagi/sessions/{name}: {done} sessions; CPU per session: server {server:.1} µs, \
             load generator {load:.1} µs (user + system, 10 ms ticks)"
        );
    }
    group.finish();
    assert_eq!(
        bench.failed_scripts.load(Ordering::Relaxed),
        0,
        "voice scripts that failed"
    );
}

criterion_group!(benches, sessions);
criterion_main!(benches);
