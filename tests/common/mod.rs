//! Test harness: starts the real `callcode` binary on a loopback port with a temporary database
//! and configuration, and a local HTTP receiver for callbacks. Everything is bounded in time.

#![allow(dead_code)]

pub mod asterisk;
pub mod freeswitch;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use tokio::sync::{mpsc, Mutex};

/// Sandbox timings short enough for tests, long enough to be ordered reliably.
pub const FAST: &str = r#"
[timings]
flash_ring_ms = 600
answer_timeout_ms = 2000
prompt_slack_ms = 1000
hangup_timeout_ms = 1000
"#;

pub fn sandbox_config(extra_accounts: &str, timings: &str, grace_secs: u64) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
sounds = "{sounds}"
shutdown_grace_secs = {grace_secs}
utc_offset = "+03:00"

{timings}

[webhooks]
initial_backoff_ms = 100
max_backoff_secs = 1
timeout_ms = 2000

[[accounts]]
id = "117793"
api_keys = ["demo-key"]
balance = "100.00"
currency = "RUB"
registered_anis = ["74959999999"]

{extra_accounts}

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
ring_after_ms = 100
answer_after_ms = 400
"#,
        sounds = concat!(env!("CARGO_MANIFEST_DIR"), "/sounds"),
    )
}

/// A running server process.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: Arc<tempfile::TempDir>,
    pub config_path: PathBuf,
    pub http: reqwest::Client,
}

impl Server {
    pub async fn start(config: &str) -> Server {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let config_path = dir.path().join("callcode.toml");
        std::fs::write(&config_path, config).expect("write config");
        Server::start_in(dir, config_path).await
    }

    /// Starts (again) on the same directory, database and configuration.
    pub async fn start_in(dir: Arc<tempfile::TempDir>, config_path: PathBuf) -> Server {
        let db = format!("sqlite://{}", dir.path().join("callcode.db").display());
        let mut child = Command::new(env!("CARGO_BIN_EXE_callcode"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .args(["--listen", "127.0.0.1:0", "--db", &db])
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.path().join("server.log"))
                    .expect("log file"),
            ))
            .spawn()
            .expect("spawn callcode");
        let stdout = child.stdout.take().expect("stdout");
        let addr = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(a) = line.strip_prefix("callcode listening on http://") {
                    return a.parse::<SocketAddr>().ok();
                }
            }
            None
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), addr)
            .await
            .expect("server start timed out")
            .expect("reader")
            .unwrap_or_else(|| panic!("server did not start; log: {}", read_log(dir.path())));
        Server {
            child,
            addr,
            dir,
            config_path,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("callcode.db")
    }

    /// One column of a verification's call record.
    pub async fn call_record(&self, verification: i64, column: &str) -> Option<String> {
        db_value(
            &self.db_path(),
            &format!("SELECT {column} FROM call_records WHERE verification_id = ?"),
            verification,
        )
        .await
    }

    /// kill -9: no shutdown of any kind. What is left is what a restart starts from.
    pub fn crash(self) -> Crashed {
        let crashed = Crashed {
            dir: self.dir.clone(),
            config_path: self.config_path.clone(),
            db: self.db_path(),
        };
        drop(self); // Drop sends SIGKILL and reaps the process.
        crashed
    }

    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }

    /// POSTs a JSON body with the demo key in the `Authorization` header.
    pub async fn send(&self, body: Value) -> (StatusCode, Value) {
        self.post_raw(
            "/api/voice-password/send/",
            Some("demo-key"),
            "application/json",
            body.to_string(),
        )
        .await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        auth: Option<&str>,
        content_type: &str,
        body: String,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(self.url(path))
            .header("Content-Type", content_type)
            .body(body);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.expect("request");
        let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
        let text = resp.text().await.expect("body");
        let json =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, json)
    }

    pub async fn get_text(&self, path: &str) -> String {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body")
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let mut child =
            std::mem::replace(&mut self.child, Command::new("true").spawn().expect("true"));
        let status = tokio::task::spawn_blocking(move || child.wait());
        tokio::time::timeout(Duration::from_secs(30), status)
            .await
            .expect("server did not stop within 30 s")
            .expect("join")
            .expect("wait")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

/// One callback as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Value,
    pub headers: HeaderMap,
}

/// A local HTTP receiver for callbacks. It answers 503 to the first `fail_first` requests.
pub struct Receiver {
    pub addr: SocketAddr,
    rx: Mutex<mpsc::UnboundedReceiver<Received>>,
    pub hits: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct ReceiverState {
    tx: mpsc::UnboundedSender<Received>,
    hits: Arc<AtomicUsize>,
    fail_first: usize,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let hits = Arc::new(AtomicUsize::new(0));
        let state = ReceiverState {
            tx,
            hits: hits.clone(),
            fail_first,
        };
        let app = axum::Router::new()
            .route("/cb", post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            rx: Mutex::new(rx),
            hits,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/cb", self.addr)
    }

    /// The next accepted callback, or a panic after `secs`.
    pub async fn next(&self, secs: u64) -> Received {
        let mut rx = self.rx.lock().await;
        tokio::time::timeout(Duration::from_secs(secs), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no callback within {secs} s"))
            .expect("receiver open")
    }

    /// Collects `n` callbacks keyed by their `id`.
    pub async fn collect(&self, n: usize, secs: u64) -> Vec<Received> {
        let mut out = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut rx = self.rx.lock().await;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => out.push(r),
                _ => panic!("got {} of {n} callbacks within {secs} s", out.len()),
            }
        }
        out
    }

    /// Whether another callback arrives within `ms`.
    pub async fn quiet_for(&self, ms: u64) -> bool {
        let mut rx = self.rx.lock().await;
        tokio::time::timeout(Duration::from_millis(ms), rx.recv())
            .await
            .is_err()
    }
}

async fn receive(State(s): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = s.hits.fetch_add(1, Ordering::SeqCst);
    if n < s.fail_first {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = s.tx.send(Received { body, headers });
    StatusCode::OK
}

/// Reads one column of one verification straight from the database file.
pub async fn db_value(db: &Path, sql: &str, id: i64) -> Option<String> {
    use sqlx::{Connection, Row};
    let url = format!("sqlite://{}?mode=ro", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open db");
    let row = sqlx::query(sql)
        .bind(id)
        .fetch_optional(&mut conn)
        .await
        .expect("query")?;
    let v: Option<String> = row
        .try_get::<Option<String>, _>(0)
        .ok()
        .flatten()
        .or_else(|| {
            row.try_get::<Option<i64>, _>(0)
                .ok()
                .flatten()
                .map(|i| i.to_string())
        });
    v
}

/// Runs statements on the database of a stopped server, to stage what a crash leaves behind.
async fn db_execute(db: &Path, statements: &[&str]) {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open db");
    for sql in statements {
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
}

/// A server killed by `Server::crash`: its directory, configuration and database.
pub struct Crashed {
    pub dir: Arc<tempfile::TempDir>,
    pub config_path: PathBuf,
    pub db: PathBuf,
}

impl Crashed {
    /// Starts again on the same directory, database and configuration.
    pub async fn restart(&self) -> Server {
        Server::start_in(self.dir.clone(), self.config_path.clone()).await
    }

    /// Rewinds every verification to the moment between its commit and its dial, as a crash
    /// there leaves it: stored, charged, not dialled, nothing recorded or queued.
    pub async fn rewind_to_undialled(&self) {
        db_execute(
            &self.db,
            &[
                "DELETE FROM outbox",
                "DELETE FROM call_records",
                "UPDATE verifications SET state = 'accepted', outcome = NULL, finished_at = NULL, duration_ms = NULL",
            ],
        )
        .await;
    }

    /// Marks a verification as handed to the PBX, as a crash mid-call leaves it (the dial may not
    /// have been recorded yet when the process was killed).
    pub async fn mark_dialled(&self, verification: i64) {
        let sql = format!("UPDATE verifications SET state = 'dialing' WHERE id = {verification}");
        db_execute(&self.db, &[&sql]).await;
    }
}
