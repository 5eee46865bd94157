//! API send throughput, in process, against SQLite: the real stack of `callcode serve` (store,
//! sandbox backend, engine loop, webhook worker, axum router with the Prometheus recorder) on a
//! loopback port, driven by a pooled `reqwest` client in the same process.
//!
//! One iteration = a batch of `BATCH` `POST /api/voice-password/send/` (flash call, code generated
//! by the service from the ANI) with `IN_FLIGHT` requests in flight; every reply must be 200 with
//! `"result":"ok"`. Destinations end in `0034`, which the sandbox fails at once (cause 34), so the
//! calls end within milliseconds and the engine also writes each call's end to the store while the
//! benchmark runs, as in production. Destinations come from a global counter (100,000 distinct
//! numbers), so the ANI cool-down per (ANI, destination) never gets in the way.
//!
//! - `api/send_flash/sqlite_file`: the database in a temporary directory (WAL), as deployed.
//!   Target: ≥ 2,000 accepted requests/s on the 2-core benchmark machine.
//! - `api/send_flash/sqlite_memory`: the same against `sqlite::memory:`, to see what the database
//!   file costs.
//! - `api/send_flash_serial/sqlite_file`: one request in flight, for the unloaded latency.
//! - `api/store/accept/sqlite_file`, `api/store/accept_serial/sqlite_file`: `Store::accept` alone
//!   (32 and 1 in flight): the ceiling the store sets for the API.
//! - `api/store/select1_roundtrip`: one bare `SELECT 1` through a one-connection sqlx pool, i.e. the
//!   cost of one statement's round trip to sqlx's connection thread.
//!
//! Client-side latency percentiles of every request sent are printed after each benchmark.
//! Client and server share the machine's cores.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callcode::api;
use callcode::config::{Config, Money};
use callcode::engine::Engine;
use callcode::server::{load_sounds, start_engine};
use callcode::store::{NewVerification, Store};
use callcode::webhook;
use criterion::{Criterion, SamplingMode, Throughput};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

/// Requests per iteration.
const BATCH: usize = 200;
/// Requests in flight at once.
const IN_FLIGHT: usize = 32;
/// Requests per iteration of the serial benchmark.
const SERIAL_BATCH: usize = 50;

/// examples/sandbox.toml with a large balance, a database of our own, the shipped prompts and a
/// sandbox whose failing destinations fail after 1 ms.
fn config_text(database: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
database = "{database}"
sounds = "{sounds}"
shutdown_grace_secs = 1
utc_offset = "+03:00"

[timings]
flash_ring_ms = 50
answer_timeout_ms = 2000
prompt_slack_ms = 100
hangup_timeout_ms = 100

[[accounts]]
id = "117793"
api_keys = ["demo-key"]
balance = "100000000.00"
currency = "RUB"
registered_anis = ["74959999999"]
allowed_countries = ["*"]
spam_list = []

[[routes]]
name = "ru"
countries = ["RU"]
price = "0.35"
backend = "sandbox"
anis = ["74951090000-74951099999"]
language = "ru"

[[routes]]
name = "intl"
countries = ["*"]
price = "1.50"
backend = "sandbox"
anis = ["3612340000-3612349999"]
language = "en"

[[backends]]
name = "sandbox"
kind = "sandbox"
[backends.settings]
ring_after_ms = 1
answer_after_ms = 2
max_call_ms = 10
"#,
        sounds = concat!(env!("CARGO_MANIFEST_DIR"), "/sounds"),
    )
}

/// One running server.
struct Stack {
    addr: SocketAddr,
    engine: Engine,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

/// Builds what `server::serve` builds, without signals, and serves it on a loopback port.
async fn start(memory: bool, prometheus: PrometheusHandle) -> Stack {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = if memory {
        "sqlite::memory:".to_string()
    } else {
        format!("sqlite://{}", dir.path().join("bench.db").display())
    };
    let config = Arc::new(Config::parse(&config_text(&database)).expect("bench config"));
    let sounds = Arc::new(load_sounds(&config).expect("sounds"));
    let store = Store::open(&config.server.database)
        .await
        .expect("open store");

    // Backends, dialects and the engine loop exactly as `serve` starts them.
    let (engine, outbox, _backends) = start_engine(config.clone(), store.clone(), sounds)
        .await
        .expect("engine");

    let stop = CancellationToken::new();
    let worker = webhook::Worker::new(store, config.webhooks, engine.clock(), outbox);
    tokio::spawn(worker.run(stop.clone()));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let app = api::router(engine.clone(), Some(prometheus), 65536);
    let shutdown = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .expect("serve");
    });
    Stack {
        addr,
        engine,
        stop,
        _dir: dir,
    }
}

/// A new destination for every request: 79NNNNN0034 (the sandbox fails *0034 at once).
fn next_body(counter: &AtomicU64) -> String {
    let n = counter.fetch_add(1, Ordering::Relaxed) % 100_000;
    format!(r#"{{"security":{{"apiKey":"demo-key"}},"number":"79{n:05}0034"}}"#)
}

/// Sends `count` requests with `in_flight` at once; panics unless every reply is accepted.
/// Returns the wall time of the batch and appends each request's latency to `latencies`.
async fn batch(
    client: &reqwest::Client,
    url: &Arc<str>,
    counter: &Arc<AtomicU64>,
    count: usize,
    in_flight: usize,
    latencies: &Arc<Mutex<Vec<Duration>>>,
) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight.min(count) {
        let (client, url, counter, next, latencies) = (
            client.clone(),
            url.clone(),
            counter.clone(),
            next.clone(),
            latencies.clone(),
        );
        tasks.spawn(async move {
            let mut mine = Vec::with_capacity(count / in_flight + 1);
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let body = next_body(&counter);
                let t = Instant::now();
                let reply = client
                    .post(&*url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("request");
                let status = reply.status();
                let bytes = reply.bytes().await.expect("reply body");
                mine.push(t.elapsed());
                if status != reqwest::StatusCode::OK || !bytes.starts_with(br#"{"result":"ok""#) {
                    panic!(
                        "request {body} was not accepted: {status} {}",
                        String::from_utf8_lossy(&bytes)
                    );
                }
            }
            latencies.lock().unwrap().extend(mine);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("client task");
    }
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report_latencies(name: &str, latencies: &Mutex<Vec<Duration>>) {
    let mut l = std::mem::take(&mut *latencies.lock().unwrap());
    if l.is_empty() {
        return;
    }
    l.sort_unstable();
    let mean = l.iter().sum::<Duration>() / l.len() as u32;
    println!(
        "{name}: {} requests, latency mean {:.2?} p50 {:.2?} p90 {:.2?} p99 {:.2?} max {:.2?}",
        l.len(),
        mean,
        percentile(&l, 0.50),
        percentile(&l, 0.90),
        percentile(&l, 0.99),
        l[l.len() - 1],
    );
}

fn bench(c: &mut Criterion) {
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime"),
    );
    // As `serve` does: the recorder is process-wide, so it is installed once for every stack.
    let prometheus = rt.block_on(async {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("metrics recorder")
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .expect("client");
    let counter = Arc::new(AtomicU64::new(0));

    let mut g = c.benchmark_group("api");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    let cases: [(&str, bool, usize, usize); 3] = [
        ("send_flash/sqlite_file", false, BATCH, IN_FLIGHT),
        ("send_flash/sqlite_memory", true, BATCH, IN_FLIGHT),
        ("send_flash_serial/sqlite_file", false, SERIAL_BATCH, 1),
    ];
    for (name, memory, count, in_flight) in cases {
        let stack = rt.block_on(start(memory, prometheus.clone()));
        let url: Arc<str> = format!("http://{}/api/voice-password/send/", stack.addr).into();
        let latencies = Arc::new(Mutex::new(Vec::new()));
        g.throughput(Throughput::Elements(count as u64));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += batch(&client, &url, &counter, count, in_flight, &latencies).await;
                    }
                    total
                })
            })
        });
        report_latencies(&format!("api/{name}"), &latencies);
        stop(&rt, stack);
    }
    g.finish();
}

/// Lets the calls in flight end, then stops the stack (the temporary directory goes with it).
fn stop(rt: &Runtime, stack: Stack) {
    rt.block_on(async {
        stack.engine.shutdown(Duration::from_secs(1)).await;
        stack.stop.cancel();
    });
}

/// Runs `count` calls of `f` with `in_flight` at once and returns the wall time.
async fn concurrently<F, Fut>(count: usize, in_flight: usize, f: F) -> Duration
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight.min(count) {
        let (f, next) = (f.clone(), next.clone());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                f().await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    started.elapsed()
}

fn new_verification(n: u64) -> NewVerification {
    NewVerification {
        call_id: format!("00000000-0000-4000-8000-{n:012}"),
        account_id: "117793".into(),
        dialect: "voicepassword",
        method: "flash",
        number: format!("79{:05}0034", n % 100_000),
        country: "RU".into(),
        ani: "74951091234".into(),
        code: "1234".into(),
        repeat: false,
        check_redirect: false,
        route: "ru".into(),
        backend: "sandbox".into(),
        price: Money(35),
        callback_url: None,
        created_at_ms: 1_700_000_000_000 + n as i64,
    }
}

/// Where the time of a request goes: the store alone (no HTTP, no engine, no call ends written),
/// and one bare round trip to an sqlx SQLite connection (`SELECT 1`), each against a database file
/// configured as `Store::open` configures it.
fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = rt.block_on(async {
        let store = Store::open(&url).await.expect("open store");
        store
            .ensure_account("117793", Money(10_000_000_000), "RUB", 0)
            .await
            .expect("account");
        store
    });
    let counter = Arc::new(AtomicU64::new(0));

    let mut g = c.benchmark_group("api/store");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    for (name, count, in_flight) in [
        ("accept/sqlite_file", BATCH, IN_FLIGHT),
        ("accept_serial/sqlite_file", SERIAL_BATCH, 1),
    ] {
        g.throughput(Throughput::Elements(count as u64));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (store, counter) = (store.clone(), counter.clone());
                        total += concurrently(count, in_flight, move || {
                            let (store, counter) = (store.clone(), counter.clone());
                            async move {
                                let n = counter.fetch_add(1, Ordering::Relaxed);
                                store.accept(&new_verification(n)).await.expect("accept");
                            }
                        })
                        .await;
                    }
                    total
                })
            })
        });
    }

    // One connection, configured as the store's writer. (Skipping sqlx's ping on acquire,
    // `test_before_acquire(false)`, was tried and changes nothing measurable.)
    {
        let name = "select1_roundtrip";
        let pool = rt.block_on(async {
            let options = SqliteConnectOptions::from_str(&url)
                .expect("url")
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10));
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .connect_with(options)
                .await
                .expect("pool")
        });
        g.throughput(Throughput::Elements(SERIAL_BATCH as u64));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters * SERIAL_BATCH as u64 {
                        sqlx::query("SELECT 1")
                            .execute(&pool)
                            .await
                            .expect("select");
                    }
                    started.elapsed()
                })
            })
        });
        rt.block_on(pool.close());
    }
    g.finish();
    rt.block_on(store.close());
}

criterion::criterion_group!(benches, bench, store);
criterion::criterion_main!(benches);
