//! The orchestrator: request → route → ANI → store → backend → machine → store → webhook.
//!
//! `Engine::verify` runs on the API's tasks: it validates a dialect-neutral request, picks the
//! route and the ANI, charges the account and stores the verification (before any reply), then
//! hands the call to the engine loop. The loop is one task that owns every live call's pure
//! `Machine`, feeds it backend events and timer expiries, and executes the actions it returns.
//! The loop never awaits the database or a PBX: commands are queued to backends, and final
//! records are written by tracked background tasks.
//!
//! The engine knows no HTTP dialect: a dialect registers a `Dialect` that renders callbacks.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Span};

use crate::backend::{Backend, BackendEvent, CallEvent, Command, Hangup, Originate};
use crate::call::machine::{Action, CallSpec, Final, Timings};
use crate::call::number::{parse_destination, NumberError};
use crate::call::{CallId, Code, EndedBy, Machine, Method, Msisdn, Outcome};
use crate::config::{Account, Config, Money};
use crate::pool::{AniPool, AniRange, CallResult, Lease, Want};
use crate::sounds::Sounds;
use crate::store::{Finish, NewVerification, OutboxItem, Store, StoreError};

/// Q.850 38, "network out of order": what a call gets when its backend cannot take it.
const BACKEND_DOWN_CAUSE: u16 = 38;

/// Why a verification was refused. Each dialect maps these to its own error vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the account is disabled")]
    AccountDisabled,
    #[error("the number is empty or malformed")]
    NumberMalformed,
    #[error("no direction can be determined for the number")]
    NumberUnknownDirection,
    #[error("calls to this direction are not permitted")]
    NumberNotPermitted,
    #[error("the number is in the spam list")]
    NumberInSpamList,
    #[error("the balance does not cover the price")]
    NotEnoughMoney,
    #[error("the caller number is not registered for the account")]
    AniNotRegistered,
    #[error("the code is not valid")]
    CodeInvalid,
    #[error("no caller number in the pool can carry this code")]
    CodeUnavailable,
    #[error("every caller number of the route is busy, cooling down or quarantined")]
    PoolExhausted,
    #[error("the route's backend is not available")]
    BackendUnavailable,
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("storage failure: {0}")]
    Storage(String),
}

/// How the code is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeChoice {
    /// The code is the last `len` digits of the ANI (flash call with a generated code, or voice
    /// without a code).
    AniSuffix { len: usize },
    /// The client's code, carried by the ANI: the ANI must end in it (flash call with a client
    /// code; MCN password call with `verification_code`).
    OnAni(Code),
    /// The client's code, only spoken: any ANI (voice password with `voice.code`).
    Spoken(Code),
}

/// A dialect-neutral verification request.
#[derive(Debug, Clone)]
pub struct VerifyRequest {
    pub account: Arc<Account>,
    pub dialect: &'static str,
    pub number: String,
    pub method: Method,
    pub code: CodeChoice,
    /// Caller number of the customer's own (must be registered); `None` → from the route's pool.
    pub ani: Option<Msisdn>,
    pub repeat: bool,
    pub check_redirect: bool,
    pub callback_url: Option<String>,
    /// Report in `Accepted::redirect` once forwarding is known (MCN's `is_redirect`).
    pub watch_redirect: bool,
}

/// What the dialect replies with.
#[derive(Debug)]
pub struct Accepted {
    pub id: i64,
    pub call_id: CallId,
    pub number: Msisdn,
    pub ani: Msisdn,
    pub code: Code,
    pub price: Money,
    /// With `watch_redirect`: resolves to whether the call is forwarded, once that is known (first
    /// provisional answer, forwarding signal, answer or end of call).
    pub redirect: Option<oneshot::Receiver<bool>>,
}

/// The end of a verification, for a dialect to render as its callback.
#[derive(Debug, Clone)]
pub struct Report {
    pub verification_id: i64,
    pub call_id: CallId,
    pub account_id: String,
    pub number: String,
    pub ani: String,
    pub code: String,
    pub price: Money,
    pub outcome: Outcome,
    pub q850: Option<u16>,
    pub sip_status: Option<u16>,
    pub redirected: bool,
    pub started_at_ms: i64,
    pub answered_at_ms: Option<i64>,
    pub ended_at_ms: i64,
    pub duration_ms: i64,
}

/// An API dialect, as far as the engine needs it: how its callbacks look.
pub trait Dialect: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn callback_body(&self, report: &Report) -> String;
}

/// Converts the machine's monotonic instants to wall-clock milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_unix_ms: i64,
}

impl Clock {
    pub fn new() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            base: Instant::now(),
            base_unix_ms: unix.as_millis() as i64,
        }
    }

    pub fn unix_ms(&self, at: Instant) -> i64 {
        match at.checked_duration_since(self.base) {
            Some(d) => self.base_unix_ms + d.as_millis() as i64,
            None => self.base_unix_ms - self.base.duration_since(at).as_millis() as i64,
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.unix_ms(Instant::now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

struct RouteState {
    name: String,
    price: Money,
    backend: Arc<dyn Backend>,
    language: Arc<str>,
    prompt_ms: [u32; 11],
    anis: Vec<AniRange>,
    pool: Mutex<AniPool>,
}

/// A call the loop is about to start.
struct NewCall {
    call_id: CallId,
    verification_id: i64,
    account_id: String,
    route: usize,
    lease: Option<Lease>,
    destination: Msisdn,
    ani: Msisdn,
    code: Code,
    price: Money,
    dialect: &'static str,
    callback_url: Option<String>,
    spec: CallSpec,
    redirect_watch: Option<oneshot::Sender<bool>>,
}

struct LiveCall {
    machine: Machine,
    info: NewCall,
    span: Span,
}

enum Control {
    Start(Box<NewCall>),
    Shutdown {
        grace: Duration,
        done: oneshot::Sender<()>,
    },
}

/// Shared by the API tasks and the loop.
struct Shared {
    config: Arc<Config>,
    store: Store,
    clock: Clock,
    /// Indexed like `config.routes`.
    routes: Vec<RouteState>,
    accounts: Vec<Arc<Account>>,
    dialects: HashMap<&'static str, Arc<dyn Dialect>>,
    accepting: AtomicBool,
    control: mpsc::Sender<Control>,
    /// Woken when a callback is queued.
    outbox: Arc<Notify>,
    writes: TaskTracker,
}

#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

/// Everything the engine is built from.
pub struct EngineParts {
    pub config: Arc<Config>,
    pub store: Store,
    pub sounds: Arc<Sounds>,
    pub backends: HashMap<String, Arc<dyn Backend>>,
    pub events: mpsc::Receiver<BackendEvent>,
    pub dialects: Vec<Arc<dyn Dialect>>,
    pub outbox: Arc<Notify>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("route {route}: {message}")]
    Route { route: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Engine {
    /// Builds the routes and their pools, creates the configured accounts, and starts the loop.
    pub async fn start(parts: EngineParts) -> Result<Engine, EngineError> {
        let config = parts.config;
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let err = |message: String| EngineError::Route {
                route: r.name.clone(),
                message,
            };
            let backend = parts
                .backends
                .get(r.backend.get_ref())
                .cloned()
                .ok_or_else(|| err(format!("no backend named {}", r.backend.get_ref())))?;
            let language = parts
                .sounds
                .language(&r.language)
                .ok_or_else(|| err(format!("no prompts for language {}", r.language)))?;
            let pool = AniPool::new(r.anis.get_ref(), config.pool.policy())
                .map_err(|e| err(e.to_string()))?;
            routes.push(RouteState {
                name: r.name.clone(),
                price: r.price,
                backend,
                language: language.name.clone(),
                prompt_ms: language.durations_ms(),
                anis: r.anis.get_ref().clone(),
                pool: Mutex::new(pool),
            });
        }
        let clock = Clock::new();
        for a in &config.accounts {
            parts
                .store
                .ensure_account(&a.id, a.balance, &a.currency, clock.now_ms())
                .await?;
        }
        let (control_tx, control_rx) = mpsc::channel(4096);
        let shared = Arc::new(Shared {
            config: config.clone(),
            store: parts.store,
            clock,
            routes,
            accounts: config.accounts.iter().cloned().map(Arc::new).collect(),
            dialects: parts.dialects.into_iter().map(|d| (d.name(), d)).collect(),
            accepting: AtomicBool::new(true),
            control: control_tx,
            outbox: parts.outbox,
            writes: TaskTracker::new(),
        });
        let engine = Engine { shared };
        let (records_tx, records_rx) = mpsc::unbounded_channel();
        engine
            .shared
            .writes
            .spawn(write_records(engine.shared.clone(), records_rx));
        let run = Loop {
            shared: engine.shared.clone(),
            records: records_tx,
            timings: config.timings.timings(),
            calls: HashMap::new(),
            timers: BinaryHeap::new(),
            shutdown: None,
        };
        tokio::spawn(run.run(control_rx, parts.events));
        engine.recover().await?;
        Ok(engine)
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn clock(&self) -> Clock {
        self.shared.clock
    }

    /// The account holding this API key.
    pub fn account_by_key(&self, key: &str) -> Option<Arc<Account>> {
        // Accounts are few and keys short; a linear scan beats keeping a second index in step.
        self.shared
            .accounts
            .iter()
            .find(|a| {
                a.api_keys
                    .iter()
                    .any(|k| constant_time_eq(k.as_bytes(), key.as_bytes()))
            })
            .cloned()
    }

    /// Validates, routes, picks the ANI, charges and stores the verification, then starts the
    /// call. Returns only once the verification is durable.
    pub async fn verify(&self, req: VerifyRequest) -> Result<Accepted, VerifyError> {
        let s = &self.shared;
        if !s.accepting.load(Ordering::Acquire) {
            return Err(VerifyError::ShuttingDown);
        }
        let account = &req.account;
        if account.disabled {
            return Err(VerifyError::AccountDisabled);
        }
        let destination = parse_destination(&req.number).map_err(|e| match e {
            NumberError::Malformed => VerifyError::NumberMalformed,
            NumberError::Length(_) | NumberError::UnknownCountry => {
                VerifyError::NumberUnknownDirection
            }
        })?;
        let country = destination.country_code();
        if account.spam_list.contains(&destination.number) {
            return Err(VerifyError::NumberInSpamList);
        }
        if !account.may_call(country) {
            return Err(VerifyError::NumberNotPermitted);
        }
        let route_index = s
            .config
            .route_index_for(country)
            .ok_or(VerifyError::NumberNotPermitted)?;
        let route = &s.routes[route_index];
        if !route.backend.is_available() {
            return Err(VerifyError::BackendUnavailable);
        }
        if let Some(ani) = req.ani {
            if !account.registered_anis.contains(&ani) {
                return Err(VerifyError::AniNotRegistered);
            }
        }

        // ANI and code.
        let now = Instant::now();
        let (ani, lease, code) = match (req.ani, req.code) {
            (Some(ani), CodeChoice::Spoken(code)) => (ani, None, code),
            (Some(ani), CodeChoice::OnAni(code)) => {
                if ani.suffix(code.len() as u32) != code.value() {
                    return Err(VerifyError::CodeInvalid);
                }
                (ani, None, code)
            }
            (Some(ani), CodeChoice::AniSuffix { len }) => {
                let code =
                    Code::from_suffix(ani.value(), len).map_err(|_| VerifyError::CodeInvalid)?;
                (ani, None, code)
            }
            (None, choice) => {
                let want = match choice {
                    CodeChoice::OnAni(code) => Want::Suffix(code),
                    CodeChoice::Spoken(_) => Want::Any,
                    CodeChoice::AniSuffix { .. } => Want::RandomSuffix,
                };
                let lease = {
                    let mut pool = route.pool.lock().unwrap_or_else(|e| e.into_inner());
                    let picked = pool.pick(want, destination.number, now, &mut rand::rng());
                    match picked {
                        Some(l) => l,
                        None => match want {
                            Want::Suffix(code) if !ranges_have_suffix(&route.anis, code) => {
                                return Err(VerifyError::CodeUnavailable)
                            }
                            _ => return Err(VerifyError::PoolExhausted),
                        },
                    }
                };
                let code = match choice {
                    CodeChoice::OnAni(code) | CodeChoice::Spoken(code) => code,
                    CodeChoice::AniSuffix { len } => match lease.code(len) {
                        Some(c) => c,
                        None => {
                            self.release(route_index, lease, CallResult::Other);
                            return Err(VerifyError::CodeInvalid);
                        }
                    },
                };
                (lease.ani, Some(lease), code)
            }
        };

        let call_id = uuid::Uuid::new_v4();
        let new = NewVerification {
            call_id: call_id.to_string(),
            account_id: account.id.clone(),
            dialect: req.dialect,
            method: req.method.as_str(),
            number: destination.number.to_string(),
            country: country.to_string(),
            ani: ani.to_string(),
            code: code.to_string(),
            repeat: req.repeat,
            check_redirect: req.check_redirect,
            route: route.name.clone(),
            backend: route.backend.name().to_string(),
            price: route.price,
            callback_url: req.callback_url.clone(),
            created_at_ms: s.clock.unix_ms(now),
        };
        let id = match s.store.accept(&new).await {
            Ok(id) => id,
            Err(e) => {
                if let Some(lease) = lease {
                    self.release(route_index, lease, CallResult::Other);
                }
                return Err(match e {
                    StoreError::NotEnoughMoney => VerifyError::NotEnoughMoney,
                    other => {
                        warn!(error = %other, "could not store a verification");
                        VerifyError::Storage(other.to_string())
                    }
                });
            }
        };
        metrics::counter!("callcode_verifications_accepted_total", "dialect" => req.dialect, "method" => req.method.as_str()).increment(1);

        let (redirect_tx, redirect_rx) = if req.watch_redirect {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let call = NewCall {
            redirect_watch: redirect_tx,
            call_id,
            verification_id: id,
            account_id: account.id.clone(),
            route: route_index,
            lease,
            destination: destination.number,
            ani,
            code,
            price: route.price,
            dialect: req.dialect,
            callback_url: req.callback_url,
            spec: CallSpec {
                method: req.method,
                code,
                repeat: req.repeat,
                check_redirect: req.check_redirect,
                timings: s.config.timings.timings(),
                prompt_ms: route.prompt_ms,
            },
        };
        if s.control
            .send(Control::Start(Box::new(call)))
            .await
            .is_err()
        {
            // The loop is gone (shutdown raced us): the verification is stored and will be
            // finished by recovery at the next start.
            warn!(id, "engine loop stopped before the call could start");
        }
        Ok(Accepted {
            id,
            call_id,
            number: destination.number,
            ani,
            code,
            price: route.price,
            redirect: redirect_rx,
        })
    }

    fn release(&self, route: usize, lease: Lease, result: CallResult) {
        let mut pool = self.shared.routes[route]
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pool.release(lease, result, Instant::now());
    }

    /// Publishes pool gauges (called by the metrics endpoint).
    pub fn record_pool_metrics(&self) {
        let now = Instant::now();
        for r in &self.shared.routes {
            let pool = r.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.record_metrics(&r.name, now);
        }
    }

    /// Stops accepting, lets calls run on for `grace`, cancels the rest and waits until every
    /// record is written.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.accepting.store(false, Ordering::Release);
        let (done_tx, done_rx) = oneshot::channel();
        if self
            .shared
            .control
            .send(Control::Shutdown {
                grace,
                done: done_tx,
            })
            .await
            .is_ok()
        {
            let _ = done_rx.await;
        }
        self.shared.writes.close();
        self.shared.writes.wait().await;
    }

    /// Verifications left unfinished by a previous run: the calls are gone with that process, so
    /// each gets a final status saying it was interrupted, and its callback.
    async fn recover(&self) -> Result<(), StoreError> {
        let s = &self.shared;
        let mut redial = Vec::new();
        let mut release = Vec::new();
        for v in s.store.unfinished().await? {
            if v.state == "accepted" {
                // Stored but never handed to a backend: place the call now.
                match self.rebuild(&v) {
                    Some(call) => {
                        warn!(id = v.id, "verification accepted before a crash and never dialled; dialling it now");
                        redial.push(call);
                        continue;
                    }
                    None => warn!(
                        id = v.id,
                        "cannot rebuild an undialled verification; closing it"
                    ),
                }
            }
            if v.state != "accepted" {
                // Handed to a PBX before the crash: its channel may still ring or sit parked.
                let route = self.route_named(&v.route);
                if let (Some(route), Ok(call)) = (route, v.call_id.parse::<CallId>()) {
                    release.push((route, call));
                }
            }
            let now_ms = s.clock.now_ms();
            let report = Report {
                verification_id: v.id,
                call_id: v.call_id.parse().unwrap_or_default(),
                account_id: v.account_id.clone(),
                number: v.number.clone(),
                ani: v.ani.clone(),
                code: v.code.clone(),
                price: v.price,
                outcome: Outcome::Interrupted,
                q850: None,
                sip_status: None,
                redirected: v.redirected,
                started_at_ms: v.created_at_ms,
                answered_at_ms: None,
                ended_at_ms: now_ms,
                duration_ms: 0,
            };
            let callback = callback_item(s, v.dialect.as_str(), v.callback_url.as_deref(), &report);
            s.store
                .finish(&Finish {
                    verification_id: v.id,
                    call_id: v.call_id.clone(),
                    backend: String::new(),
                    ani: v.ani.clone(),
                    destination: v.number.clone(),
                    outcome: Outcome::Interrupted.as_str(),
                    q850: 0,
                    sip_status: None,
                    ended_by: "local",
                    redirected: v.redirected,
                    redirect_to: None,
                    prompts_played: 0,
                    hangup_unconfirmed: true,
                    started_at_ms: v.created_at_ms,
                    progress_at_ms: None,
                    answered_at_ms: None,
                    ended_at_ms: now_ms,
                    duration_ms: 0,
                    callback,
                })
                .await?;
            warn!(
                id = v.id,
                "verification interrupted by the previous shutdown or crash"
            );
        }
        s.outbox.notify_one();
        if !redial.is_empty() || !release.is_empty() {
            tokio::spawn(resume_when_connected(s.clone(), release, redial));
        }
        Ok(())
    }

    /// Index of the configured route a stored verification names (routes may have changed
    /// since it was stored).
    fn route_named(&self, name: &str) -> Option<usize> {
        self.shared
            .config
            .routes
            .iter()
            .position(|r| r.name == name)
    }

    /// The call of a stored verification, for recovery. `None` if the configuration no longer
    /// has its route or the row is unreadable.
    fn rebuild(&self, v: &crate::store::Verification) -> Option<NewCall> {
        let s = &self.shared;
        let route_index = self.route_named(&v.route)?;
        let route = &s.routes[route_index];
        let code = Code::parse_len(&v.code, v.code.len()).ok()?;
        let dialect = s.dialects.keys().copied().find(|d| *d == v.dialect)?;
        Some(NewCall {
            call_id: v.call_id.parse().ok()?,
            verification_id: v.id,
            account_id: v.account_id.clone(),
            route: route_index,
            lease: None,
            destination: v.number.parse().ok()?,
            ani: v.ani.parse().ok()?,
            code,
            price: v.price,
            dialect,
            callback_url: v.callback_url.clone(),
            spec: CallSpec {
                method: Method::from_stored(&v.method)?,
                code,
                repeat: v.repeat,
                check_redirect: v.check_redirect,
                timings: s.config.timings.timings(),
                prompt_ms: route.prompt_ms,
            },
            redirect_watch: None,
        })
    }
}

fn callback_item(
    shared: &Shared,
    dialect: &str,
    url: Option<&str>,
    report: &Report,
) -> Option<OutboxItem> {
    let url = url?;
    let d = shared.dialects.get(dialect)?;
    let body = d.callback_body(report);
    let signature = shared
        .accounts
        .iter()
        .find(|a| a.id == report.account_id)
        .and_then(|a| a.webhook_secret.as_deref())
        .map(|secret| crate::webhook::sign(secret, &body));
    Some(OutboxItem {
        delivery_id: uuid::Uuid::new_v4().to_string(),
        url: url.to_string(),
        body,
        signature,
    })
}

/// Whether any number of the ranges ends in `code`. The pool answers "none usable" both when no
/// ANI carries the code and when all that do are busy; this tells the two apart, in O(ranges).
fn ranges_have_suffix(ranges: &[AniRange], code: Code) -> bool {
    let m = 10u64.pow(code.len() as u32);
    ranges.iter().any(|r| {
        let (first, last) = (r.first.value(), r.last.value());
        let mut x = first - first % m + code.value();
        if x < first {
            x += m;
        }
        x <= last
    })
}

/// Writes call ends in batches (one transaction for whatever queued up meanwhile), retrying
/// failures: a record and its callback must not be lost.
/// What the loop asks the record writer to store.
enum Record {
    /// The call was handed to its backend.
    Dialled(i64),
    Finished(Box<Finish>),
}

async fn write_records(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Record>) {
    let mut batch = Vec::with_capacity(256);
    let mut dialled = Vec::with_capacity(256);
    let mut finished = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        for r in batch.drain(..) {
            match r {
                Record::Dialled(id) => dialled.push(id),
                Record::Finished(f) => finished.push(*f),
            }
        }
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match shared.store.mark_dialled(&dialled).await {
                Ok(()) => shared.store.finish_many(&finished).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => break,
                Err(e) if attempt < 20 => {
                    warn!(attempt, error = %e, records = finished.len(), "could not store call records; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    warn!(error = %e, "giving up storing call records; recovery will finish them at the next start");
                    break;
                }
            }
        }
        if finished.iter().any(|f| f.callback.is_some()) {
            shared.outbox.notify_one();
        }
        dialled.clear();
        finished.clear();
    }
}

/// How long recovery waits for a PBX backend to connect before dialling anyway (the call then
/// fails with `BACKEND_DOWN_CAUSE`, as a new request would be refused).
const RECOVERY_CONNECT_WAIT: Duration = Duration::from_secs(30);

/// What recovery found, done once each route's backend is connected (at start a PBX connection
/// takes a moment to come up; acting before it would fail what a second later goes through):
/// channels of calls cut by the crash are released, so none rings on or stays parked, then the
/// undialled verifications are dialled. A call left in `accepted` (the loop gone) is dialled at
/// the next start.
async fn resume_when_connected(
    shared: Arc<Shared>,
    release: Vec<(usize, CallId)>,
    redial: Vec<NewCall>,
) {
    let give_up = Instant::now() + RECOVERY_CONNECT_WAIT;
    let connected = |route: usize| {
        let backend = shared.routes[route].backend.clone();
        async move {
            while !backend.is_available() && Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            backend
        }
    };
    for (route, call) in release {
        let backend = connected(route).await;
        if let Err(e) = backend.submit(Command::Release { call }) {
            warn!(%call, error = %e, "could not release the channel of an interrupted call");
        }
    }
    for call in redial {
        connected(call.route).await;
        if shared
            .control
            .send(Control::Start(Box::new(call)))
            .await
            .is_err()
        {
            return;
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The engine loop's state. Only the loop touches it.
struct Loop {
    shared: Arc<Shared>,
    /// To the record writer; dropped with the loop, which lets the writer drain and stop.
    records: mpsc::UnboundedSender<Record>,
    timings: Timings,
    calls: HashMap<CallId, LiveCall>,
    timers: BinaryHeap<Reverse<(Instant, CallId)>>,
    shutdown: Option<ShutdownState>,
}

struct ShutdownState {
    cancel_at: Instant,
    abandon_at: Option<Instant>,
    done: oneshot::Sender<()>,
}

impl Loop {
    async fn run(
        mut self,
        mut control: mpsc::Receiver<Control>,
        mut events: mpsc::Receiver<BackendEvent>,
    ) {
        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
            let wake = match (&self.shutdown, next_timer) {
                (Some(s), Some(t)) => Some(t.min(s.abandon_at.unwrap_or(s.cancel_at))),
                (Some(s), None) => Some(s.abandon_at.unwrap_or(s.cancel_at)),
                (None, t) => t,
            };
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = control.recv() => match msg {
                    Some(Control::Start(call)) => self.start(*call),
                    Some(Control::Shutdown { grace, done }) => {
                        info!(calls = self.calls.len(), ?grace, "shutting down: waiting for calls in flight");
                        self.shutdown = Some(ShutdownState { cancel_at: Instant::now() + grace, abandon_at: None, done });
                    }
                    None => {}
                },
                Some(ev) = events.recv() => self.event(ev),
                _ = sleep => self.timers_due(Instant::now()),
            }
            if self.shutdown_step() {
                break;
            }
        }
        // Calls queued behind the shutdown are stored but were never dialled: close them as
        // cancelled so each still gets its final status and callback.
        control.close();
        while let Ok(Control::Start(call)) = control.try_recv() {
            let mut live = LiveCall {
                machine: Machine::new(call.spec),
                span: Span::none(),
                info: *call,
            };
            let acts = live.machine.cancel(Outcome::Cancelled, Instant::now());
            for a in acts {
                if let Action::Finished(f) = a {
                    self.finished(&live, f);
                }
            }
        }
        info!("engine loop stopped");
    }

    /// Advances shutdown; true once the loop may stop.
    fn shutdown_step(&mut self) -> bool {
        let Some(s) = &mut self.shutdown else {
            return false;
        };
        let now = Instant::now();
        if s.abandon_at.is_none() && (self.calls.is_empty() || now >= s.cancel_at) {
            if !self.calls.is_empty() {
                info!(
                    calls = self.calls.len(),
                    "grace period over: cancelling the remaining calls"
                );
            }
            s.abandon_at = Some(now + self.timings.hangup_timeout.min(Duration::from_secs(3)));
            let ids: Vec<CallId> = self.calls.keys().copied().collect();
            for id in ids {
                self.drive(id, |m, now| m.cancel(Outcome::Cancelled, now));
            }
        }
        let s = self.shutdown.as_ref().expect("set above");
        if let Some(at) = s.abandon_at {
            if !self.calls.is_empty() && now >= at {
                let ids: Vec<CallId> = self.calls.keys().copied().collect();
                for id in ids {
                    self.drive(id, |m, now| m.abandon(Outcome::Cancelled, now));
                }
            }
            if self.calls.is_empty() {
                let s = self.shutdown.take().expect("set above");
                let _ = s.done.send(());
                return true;
            }
        }
        false
    }

    fn start(&mut self, call: NewCall) {
        let span = info_span!("verification", id = call.verification_id, call = %call.call_id);
        let id = call.call_id;
        let live = LiveCall {
            machine: Machine::new(call.spec),
            info: call,
            span,
        };
        self.calls.insert(id, live);
        metrics::gauge!("callcode_calls_active").set(self.calls.len() as f64);
        self.drive(id, |m, now| m.start(now));
        if self.shutdown.is_some() {
            self.drive(id, |m, now| m.cancel(Outcome::Cancelled, now));
        }
    }

    fn event(&mut self, ev: BackendEvent) {
        if !self.calls.contains_key(&ev.call) {
            debug!(call = %ev.call, event = ?ev.event, "event for an unknown or finished call");
            return;
        }
        self.drive(ev.call, |m, now| m.on_event(ev.event, now));
    }

    fn timers_due(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.calls.get(&id).and_then(|c| c.machine.deadline()) == Some(at) {
                self.drive(id, |m, now| m.on_timer(now));
            }
        }
    }

    /// Runs one machine step and executes its actions, feeding synchronous failures back in.
    fn drive(
        &mut self,
        id: CallId,
        step: impl FnOnce(&mut Machine, Instant) -> crate::call::machine::Actions,
    ) {
        let now = Instant::now();
        let Some(live) = self.calls.get_mut(&id) else {
            return;
        };
        let before = live.machine.deadline();
        let actions = step(&mut live.machine, now);
        let after = live.machine.deadline();
        if live.machine.redirect_known() {
            if let Some(tx) = live.info.redirect_watch.take() {
                let _ = tx.send(live.machine.redirected());
            }
        }
        if let Some(at) = after {
            if Some(at) != before {
                self.timers.push(Reverse((at, id)));
            }
        }
        for action in actions {
            self.execute(id, action);
        }
    }

    fn execute(&mut self, id: CallId, action: Action) {
        let Some(live) = self.calls.get(&id) else {
            return;
        };
        let _enter = live.span.enter();
        let route = &self.shared.routes[live.info.route];
        let command = match action {
            Action::Dial => {
                debug!(to = %live.info.destination, ani = %live.info.ani, method = ?live.info.spec.method, "dialling");
                Command::Originate(Originate {
                    call: id,
                    verification_id: live.info.verification_id,
                    destination: live.info.destination,
                    ani: live.info.ani,
                    method: live.info.spec.method,
                    language: route.language.clone(),
                    pbx_timeout: self.timings.answer_timeout + Duration::from_secs(5),
                })
            }
            Action::Play { seq, prompt } => Command::Play {
                call: id,
                seq,
                prompt,
            },
            Action::Hangup { q850 } => Command::Hangup { call: id, q850 },
            Action::Finished(f) => {
                drop(_enter);
                let live = self.calls.remove(&id).expect("checked above");
                metrics::gauge!("callcode_calls_active").set(self.calls.len() as f64);
                self.finished(&live, f);
                return;
            }
        };
        let is_originate = matches!(command, Command::Originate(_));
        if let Err(e) = route.backend.submit(command) {
            warn!(error = %e, "backend refused a command");
            drop(_enter);
            if is_originate {
                let failed = CallEvent::Hangup(Hangup {
                    q850: BACKEND_DOWN_CAUSE,
                    sip_status: None,
                    ended_by: EndedBy::Local,
                });
                self.drive(id, |m, now| m.on_event(failed, now));
            } else {
                self.drive(id, |m, now| m.abandon(Outcome::Interrupted, now));
            }
        } else if is_originate {
            let _ = self
                .records
                .send(Record::Dialled(live.info.verification_id));
        }
    }

    fn finished(&self, live: &LiveCall, f: Final) {
        let info = &live.info;
        let _enter = live.span.enter();
        let clock = self.shared.clock;
        let route = &self.shared.routes[info.route];
        if let Some(lease) = info.lease.clone() {
            let result = match f.outcome {
                Outcome::Rejected | Outcome::RejectedByOperator => CallResult::Rejected,
                _ => CallResult::Other,
            };
            let mut pool = route.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.release(lease, result, f.ended_at);
        }
        let duration_ms = f.billable().as_millis() as i64;
        let report = Report {
            verification_id: info.verification_id,
            call_id: info.call_id,
            account_id: info.account_id.clone(),
            number: info.destination.to_string(),
            ani: info.ani.to_string(),
            code: info.code.to_string(),
            price: info.price,
            outcome: f.outcome,
            q850: Some(f.q850),
            sip_status: f.sip_status,
            redirected: f.redirected,
            started_at_ms: clock.unix_ms(f.started_at),
            answered_at_ms: f.answered_at.map(|a| clock.unix_ms(a)),
            ended_at_ms: clock.unix_ms(f.ended_at),
            duration_ms,
        };
        info!(
            outcome = f.outcome.as_str(),
            q850 = f.q850,
            redirected = f.redirected,
            duration_ms,
            "call finished"
        );
        metrics::counter!("callcode_calls_finished_total", "outcome" => f.outcome.as_str(), "route" => route.name.clone()).increment(1);
        metrics::histogram!("callcode_call_seconds", "method" => info.spec.method.as_str()).record(
            f.ended_at
                .saturating_duration_since(f.started_at)
                .as_secs_f64(),
        );
        let callback = callback_item(
            &self.shared,
            info.dialect,
            info.callback_url.as_deref(),
            &report,
        );
        let finish = Finish {
            verification_id: info.verification_id,
            call_id: info.call_id.to_string(),
            backend: route.backend.name().to_string(),
            ani: report.ani.clone(),
            destination: report.number.clone(),
            outcome: f.outcome.as_str(),
            q850: f.q850,
            sip_status: f.sip_status,
            ended_by: match f.ended_by {
                EndedBy::Us => "us",
                EndedBy::Remote => "remote",
                EndedBy::Local => "local",
            },
            redirected: f.redirected,
            redirect_to: f.redirect_to.map(|m| m.to_string()),
            prompts_played: f.prompts_played,
            hangup_unconfirmed: f.hangup_unconfirmed,
            started_at_ms: report.started_at_ms,
            progress_at_ms: f.progress_at.map(|p| clock.unix_ms(p)),
            answered_at_ms: report.answered_at_ms,
            ended_at_ms: report.ended_at_ms,
            duration_ms,
            callback,
        };
        if self
            .records
            .send(Record::Finished(Box::new(finish)))
            .is_err()
        {
            warn!("the record writer stopped; recovery will finish this call at the next start");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_availability_over_ranges() {
        let r: AniRange = "74951090000-74951099999".parse().unwrap();
        let code = |s: &str| Code::parse_len(s, s.len()).unwrap();
        assert!(ranges_have_suffix(&[r], code("1234")));
        assert!(ranges_have_suffix(&[r], code("091234")));
        assert!(!ranges_have_suffix(&[r], code("101234")));
        let one: AniRange = "74959999999".parse().unwrap();
        assert!(ranges_have_suffix(&[one], code("9999")));
        assert!(!ranges_have_suffix(&[one], code("9998")));
        let narrow: AniRange = "3612340100-3612340199".parse().unwrap();
        assert!(ranges_have_suffix(&[narrow], code("0150")));
        assert!(!ranges_have_suffix(&[narrow], code("0250")));
        assert!(ranges_have_suffix(&[one, narrow], code("0199")));
    }

    #[test]
    fn clock_converts_instants_both_ways() {
        let c = Clock::new();
        let later = c.base + Duration::from_millis(1500);
        assert_eq!(c.unix_ms(later) - c.base_unix_ms, 1500);
        if let Some(earlier) = c.base.checked_sub(Duration::from_millis(250)) {
            assert_eq!(c.base_unix_ms - c.unix_ms(earlier), 250);
        }
    }

    #[test]
    fn api_keys_compare_exactly() {
        assert!(constant_time_eq(b"demo-key", b"demo-key"));
        assert!(!constant_time_eq(b"demo-key", b"demo-kez"));
        assert!(!constant_time_eq(b"demo-key", b"demo-key2"));
    }
}
