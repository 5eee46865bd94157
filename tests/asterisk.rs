//! The Asterisk backend end to end: the real binary, its HTTP API (VoicePassword and MCN dialects),
//! and a test Asterisk (`common::asterisk`) replaying the captured AMI streams and driving
//! callcode's FastAGI port as Asterisk does. One test per outcome of the issue's list.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::asterisk::Peer;
use common::{db_value, Receiver, Server, FAST};
use serde_json::{json, Value};

const SECRET: &str = "s3cr3t";

/// A free loopback port for callcode's FastAGI listener.
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn config(servers: &[(SocketAddr, &str, &str)], fastagi: SocketAddr, accounts: &str) -> String {
    let servers: String = servers
        .iter()
        .map(|(addr, auth, secret)| {
            format!(
                "[[backends.settings.servers]]\naddress = \"{addr}\"\nusername = \"callcode\"\nsecret = \"{secret}\"\nauth = \"{auth}\"\n"
            )
        })
        .collect();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
sounds = "{sounds}"
shutdown_grace_secs = 2
utc_offset = "+03:00"

{FAST}

[webhooks]
initial_backoff_ms = 100
max_backoff_secs = 1
timeout_ms = 2000

[[accounts]]
id = "117793"
api_keys = ["demo-key"]
balance = "100.00"

{accounts}

[[routes]]
name = "ru"
countries = ["RU"]
price = "0.35"
backend = "asterisk"
anis = ["74951090000-74951099999"]
language = "ru"

[[backends]]
name = "asterisk"
kind = "asterisk"
[backends.settings]
sounds_dir = "/var/lib/asterisk/sounds/callcode"
keepalive_ms = 1000
reconnect_initial_ms = 100
reconnect_max_ms = 400
lost_after_ms = 5000
[backends.settings.fastagi]
listen = "{fastagi}"
{servers}
"#,
        sounds = concat!(env!("CARGO_MANIFEST_DIR"), "/sounds"),
    )
}

struct Rig {
    server: Server,
    peer: Peer,
    receiver: Receiver,
}

async fn rig_with(auth: &str, accounts: &str) -> Rig {
    let fastagi = free_port();
    let peer = Peer::start(SECRET, fastagi).await;
    let receiver = Receiver::start(0).await;
    let server = Server::start(&config(&[(peer.addr, auth, SECRET)], fastagi, accounts)).await;
    wait_logged_in(&peer, 1).await;
    Rig {
        server,
        peer,
        receiver,
    }
}

async fn rig() -> Rig {
    rig_with("plain", "").await
}

async fn wait_logged_in(peer: &Peer, n: usize) {
    for _ in 0..200 {
        if peer.logins() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("callcode did not log in {n} time(s) within 5 s");
}

fn text(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
        .to_string()
}

/// A VoicePassword request and its callback.
async fn send(rig: &Rig, mut body: Value) -> (i64, Value) {
    body["callback_url"] = json!(rig.receiver.url());
    let (status, reply) = rig.server.send(body).await;
    assert_eq!(status, 200, "{reply}; log:\n{}", rig.server.log());
    assert_eq!(reply["result"], "ok", "{reply}");
    let id: i64 = text(&reply, "id").parse().unwrap();
    let cb = rig.receiver.next(20).await.body;
    assert_eq!(text(&cb, "id"), id.to_string(), "{cb}");
    (id, cb)
}

async fn record(rig: &Rig, id: i64, column: &str) -> Option<String> {
    rig.server.call_record(id, column).await
}

async fn outcome(rig: &Rig, id: i64) -> String {
    record(rig, id, "outcome").await.unwrap_or_default()
}

fn field<'a>(action: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    action
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The Originate callcode sent for a call to `number`.
fn originate_for(peer: &Peer, number: &str) -> Vec<(String, String)> {
    peer.actions("Originate")
        .into_iter()
        .find(|a| {
            field(a, "Channel")
                .first()
                .is_some_and(|c| c.contains(number))
        })
        .unwrap_or_else(|| panic!("no Originate for {number}"))
}

#[tokio::test]
async fn flash_call_rings_and_is_dropped_by_ami_hangup_of_our_channel_id() {
    let rig = rig().await;
    let (id, cb) = send(
        &rig,
        json!({"number": "79990000178", "flashcall": {"code": "4821"}}),
    )
    .await;
    assert_eq!(cb["state"], "ANSWERED", "{cb}");
    assert_eq!(outcome(&rig, id).await, "delivered");
    assert_eq!(record(&rig, id, "ended_by").await.as_deref(), Some("us"));
    assert_eq!(record(&rig, id, "q850").await.as_deref(), Some("16"));

    let o = originate_for(&rig.peer, "79990000178");
    let call_id = record(&rig, id, "call_id").await.unwrap();
    assert_eq!(field(&o, "Channel"), ["Local/79990000178@callcode-out"]);
    assert_eq!(field(&o, "Context"), ["callcode-hold"]);
    assert_eq!(field(&o, "Async"), ["true"]);
    assert_eq!(
        field(&o, "CallerID"),
        ["74951094821"],
        "the ANI ends in the code"
    );
    assert_eq!(field(&o, "ChannelId"), [call_id.as_str()]);
    assert_eq!(
        field(&o, "OtherChannelId"),
        [format!("{call_id}-2").as_str()]
    );
    assert_eq!(
        field(&o, "Variable"),
        [format!("VERIFICATION_ID={id}").as_str()]
    );
    // answer_timeout (2 s) + 5 s: the PBX's own limit stays behind the machine's.
    assert_eq!(field(&o, "Timeout"), ["7000"]);
    let hangups = rig.peer.actions("Hangup");
    assert_eq!(hangups.len(), 1, "{hangups:?}");
    assert_eq!(field(&hangups[0], "Channel"), [call_id.as_str()]);
    assert_eq!(field(&hangups[0], "Cause"), ["16"]);
    // The login asked for the classes callcode follows.
    let login = &rig.peer.actions("Login")[0];
    assert_eq!(field(login, "Events"), ["call,user"]);
}

#[tokio::test]
async fn voice_password_with_repeat_is_spoken_over_fastagi_then_hung_up_through_it() {
    let rig = rig().await;
    let (id, cb) = send(
        &rig,
        json!({"number": "79990000171", "voice": {"code": "4821", "repeat": "1"}}),
    )
    .await;
    assert_eq!(cb["state"], "ANSWERED", "{cb}");
    assert_eq!(outcome(&rig, id).await, "answered");
    assert_eq!(
        record(&rig, id, "prompts_played").await.as_deref(),
        Some("10")
    );
    assert_eq!(record(&rig, id, "ended_by").await.as_deref(), Some("us"));
    let o = originate_for(&rig.peer, "79990000171");
    assert_eq!(
        field(&o, "Channel"),
        ["Local/79990000171@callcode-voice-out"]
    );

    let commands = rig.peer.agi_commands(&id.to_string());
    let files: Vec<String> = commands
        .iter()
        .filter(|c| c.starts_with("STREAM FILE "))
        .map(|c| c.split_whitespace().nth(2).unwrap_or("").to_string())
        .collect();
    let round = ["your_code_is", "4", "8", "2", "1"]
        .map(|s| format!("/var/lib/asterisk/sounds/callcode/ru/{s}"));
    let expected: Vec<String> = round.iter().chain(round.iter()).cloned().collect();
    assert_eq!(files, expected, "{commands:?}");
    assert_eq!(
        commands.last().map(String::as_str),
        Some("HANGUP"),
        "hung up through FastAGI: {commands:?}"
    );
    assert!(
        rig.peer.actions("Hangup").is_empty(),
        "no AMI hang-up needed"
    );
}

#[tokio::test]
async fn hang_up_during_playback_ends_cleanly_with_the_far_ends_cause() {
    let rig = rig().await;
    let (id, cb) = send(
        &rig,
        json!({"number": "79990000172", "voice": {"code": "4821"}}),
    )
    .await;
    assert_eq!(cb["state"], "ANSWERED", "{cb}");
    assert_eq!(
        record(&rig, id, "ended_by").await.as_deref(),
        Some("remote")
    );
    assert_eq!(record(&rig, id, "q850").await.as_deref(), Some("16"));
    assert_eq!(
        record(&rig, id, "prompts_played").await.as_deref(),
        Some("1")
    );
    let commands = rig.peer.agi_commands(&id.to_string());
    let streams = commands
        .iter()
        .filter(|c| c.starts_with("STREAM FILE"))
        .count();
    assert_eq!(streams, 2, "nothing played after the hang-up: {commands:?}");
    assert!(rig.peer.actions("Hangup").is_empty());
}

#[tokio::test]
async fn busy_rejected_unallocated_and_unreachable_report_their_causes() {
    let rig = rig().await;
    let cases = [
        // number, method, state, outcome, q850, sip
        ("79990000486", "flash", "BUSY", "busy", "17", Some("486")),
        ("79990001486", "voice", "BUSY", "busy", "17", Some("486")),
        (
            "79990000403",
            "flash",
            "FAIL",
            "rejected",
            "21",
            Some("403"),
        ),
        (
            "79990000603",
            "voice",
            "FAIL",
            "rejected",
            "21",
            Some("603"),
        ),
        (
            "79990000404",
            "flash",
            "FAIL",
            "invalid_number",
            "1",
            Some("404"),
        ),
        // No channel at all: the number was never dialled, a route failure (calls.rs).
        ("79990000000", "flash", "FAIL", "route_failure", "47", None),
    ];
    for (number, method, state, want, q850, sip) in cases {
        let mut body = json!({"number": number});
        if method == "voice" {
            body["voice"] = json!({"code": "1234"});
        }
        let (id, cb) = send(&rig, body).await;
        assert_eq!(cb["state"], state, "{number}: {cb}");
        assert_eq!(outcome(&rig, id).await, want, "{number}");
        assert_eq!(
            record(&rig, id, "q850").await.as_deref(),
            Some(q850),
            "{number}"
        );
        assert_eq!(
            record(&rig, id, "sip_status").await.as_deref(),
            sip,
            "{number}"
        );
        let by = if sip.is_some() { "remote" } else { "local" };
        assert_eq!(
            record(&rig, id, "ended_by").await.as_deref(),
            Some(by),
            "{number}"
        );
    }
    assert!(
        rig.peer.actions("Hangup").is_empty(),
        "the far end ended every call"
    );
}

#[tokio::test]
async fn voice_not_answered_is_cancelled_with_cause_19() {
    let rig = rig().await;
    let (id, cb) = send(
        &rig,
        json!({"number": "79990000178", "voice": {"code": "1234"}}),
    )
    .await;
    assert_eq!(cb["state"], "NO ANSWER", "{cb}");
    assert_eq!(outcome(&rig, id).await, "no_answer");
    let hangups = rig.peer.actions("Hangup");
    assert_eq!(field(&hangups[0], "Cause"), ["19"]);
}

fn mcn_account(url: &str) -> String {
    format!(
        r#"
[[accounts]]
id = "400004"
api_keys = ["mcn-token"]
balance = "10.00"
webhook_url = "{url}"
"#
    )
}

#[tokio::test]
async fn forwarding_by_181_and_302_is_caught_while_ringing_and_the_guard_drops_the_call() {
    let receiver = Receiver::start(0).await;
    let fastagi = free_port();
    let peer = Peer::start(SECRET, fastagi).await;
    let server = Server::start(&config(
        &[(peer.addr, "plain", SECRET)],
        fastagi,
        &mcn_account(&receiver.url()),
    ))
    .await;
    wait_logged_in(&peer, 1).await;
    for (number, to) in [
        ("79990000181", "15550001000"),
        ("79990000302", "15550003333"),
    ] {
        let (s, r) = server
            .post_raw(
                "/api/protected/api/auth/passwordcall",
                Some("Bearer mcn-token"),
                "application/json",
                json!({"phone_number": number, "is_with_redirect": true}).to_string(),
            )
            .await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["is_redirect"], true, "{number}: {r}");
        let cb = receiver.next(20).await.body;
        assert_eq!(cb["final_status"], "CANCEL", "{number}: {cb}");
        assert_eq!(cb["reason"], "redirected", "{number}: {cb}");
        assert_eq!(cb["duration"], 0, "dropped before the answer: {cb}");
        let hangup = peer
            .actions("Hangup")
            .into_iter()
            .find(|h| {
                let o = originate_for(&peer, number);
                field(h, "Channel") == field(&o, "ChannelId")
            })
            .unwrap_or_else(|| panic!("{number}: no AMI hang-up"));
        assert_eq!(field(&hangup, "Cause"), ["16"]);
        let stored = db_value(
            &server.db_path(),
            "SELECT redirect_to FROM call_records WHERE destination = ?",
            number.parse::<i64>().unwrap(),
        )
        .await;
        assert_eq!(stored.as_deref(), Some(to), "{number}");
    }
}

#[tokio::test]
async fn forwarding_without_the_guard_is_recorded_and_the_call_goes_on() {
    let rig = rig().await;
    let (id, cb) = send(
        &rig,
        json!({"number": "79990000181", "voice": {"code": "1234"}}),
    )
    .await;
    assert_eq!(cb["state"], "ANSWERED", "{cb}");
    assert_eq!(record(&rig, id, "redirected").await.as_deref(), Some("1"));
    assert_eq!(
        record(&rig, id, "redirect_to").await.as_deref(),
        Some("15550001000")
    );
}

/// A flash call the callee answers before the ring time is up (the 181 capture: it rings at
/// +0.81 s, answers at +1.82 s, compressed ten times by the peer; no redirect guard asked): the
/// answer is seen, the call is dropped at once with cause 16 by our ChannelId, and the outcome is
/// `answered`, not `delivered`.
#[tokio::test]
async fn a_flash_call_answered_before_the_ring_time_is_dropped_at_once_and_counts_as_answered() {
    let rig = rig().await;
    let (id, cb) = send(
        &rig,
        json!({"number": "79990000181", "flashcall": {"code": "3333"}}),
    )
    .await;
    assert_eq!(outcome(&rig, id).await, "answered", "{cb}");
    assert!(
        record(&rig, id, "answered_at").await.is_some(),
        "no answer time"
    );
    assert_eq!(record(&rig, id, "q850").await.as_deref(), Some("16"));
    let call_id = record(&rig, id, "call_id").await.unwrap();
    let hangups = rig.peer.actions("Hangup");
    assert_eq!(hangups.len(), 1, "{hangups:?}");
    assert_eq!(field(&hangups[0], "Channel"), [call_id.as_str()]);
    assert_eq!(field(&hangups[0], "Cause"), ["16"]);
}

#[tokio::test]
async fn ami_socket_cut_mid_call_reconnects_and_reconciles() {
    let rig = rig().await;
    // 179: the call still rings after the reconnect and is dropped as usual.
    let (id, cb) = send(
        &rig,
        json!({"number": "79990000179", "flashcall": {"code": "1111"}}),
    )
    .await;
    assert_eq!(cb["state"], "ANSWERED", "{cb}");
    assert_eq!(outcome(&rig, id).await, "delivered");
    assert!(rig.peer.logins() >= 2, "logged in again");
    assert!(rig.peer.actions("CoreShowChannels").len() >= 2);
    let hangups = rig.peer.actions("Hangup");
    assert_eq!(hangups.len(), 1, "dropped once, on the new connection");

    // 180: the call ended while the socket was down: it is reported lost (interrupted).
    let logins = rig.peer.logins();
    let (id, cb) = send(
        &rig,
        json!({"number": "79990000180", "voice": {"code": "2222"}}),
    )
    .await;
    assert_eq!(outcome(&rig, id).await, "interrupted", "{cb}");
    assert!(rig.peer.logins() > logins);

    // An idle connection is kept alive with Ping (keepalive_ms = 1000 here).
    for _ in 0..100 {
        if !rig.peer.actions("Ping").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!rig.peer.actions("Ping").is_empty(), "no keep-alive Ping");
}

#[tokio::test]
async fn three_interleaved_calls_are_each_followed_to_their_own_end() {
    let rig = rig().await;
    let bodies = [
        json!({"number": "79990000171", "voice": {"code": "5678"}, "callback_url": rig.receiver.url()}),
        json!({"number": "79990000486", "flashcall": {"code": "1486"}, "callback_url": rig.receiver.url()}),
        json!({"number": "79990000178", "flashcall": {"code": "1178"}, "callback_url": rig.receiver.url()}),
    ];
    let mut ids = std::collections::HashMap::new();
    for (body, want) in bodies.into_iter().zip(["answered", "busy", "delivered"]) {
        let (status, reply) = rig.server.send(body).await;
        assert_eq!(status, 200, "{reply}");
        ids.insert(text(&reply, "id"), want);
    }
    for cb in rig.receiver.collect(3, 20).await {
        let id = text(&cb.body, "id");
        let want = ids.remove(&id).expect("one callback per call");
        assert_eq!(
            outcome(&rig, id.parse().unwrap()).await,
            want,
            "{}",
            cb.body
        );
    }
    assert!(rig.receiver.quiet_for(300).await, "no call reported twice");
}

#[tokio::test]
async fn md5_login_never_sends_the_secret() {
    let rig = rig_with("md5", "").await;
    let (id, _) = send(
        &rig,
        json!({"number": "79990000486", "flashcall": {"code": "1234"}}),
    )
    .await;
    assert_eq!(outcome(&rig, id).await, "busy");
    let login = &rig.peer.actions("Login")[0];
    assert_eq!(field(login, "AuthType"), ["MD5"]);
    assert!(field(login, "Secret").is_empty());
    assert_eq!(rig.peer.actions("Challenge").len(), 1);
}

#[tokio::test]
async fn a_wrong_secret_leaves_the_backend_unavailable() {
    let fastagi = free_port();
    let peer = Peer::start(SECRET, fastagi).await;
    let server = Server::start(&config(&[(peer.addr, "plain", "wrong")], fastagi, "")).await;
    for _ in 0..100 {
        if !peer.actions("Login").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!peer.actions("Login").is_empty());
    assert_eq!(peer.logins(), 0);
    let (status, reply) = server.send(json!({"number": "79990000178"})).await;
    assert_ne!(reply["result"], "ok", "{status} {reply}");
    assert!(peer.actions("Originate").is_empty());
}

#[tokio::test]
async fn calls_spread_over_the_connected_servers_and_skip_a_dead_one() {
    let fastagi = free_port();
    let a = Peer::start(SECRET, fastagi).await;
    let b = Peer::start(SECRET, fastagi).await;
    let dead = free_port();
    let receiver = Receiver::start(0).await;
    let server = Server::start(&config(
        &[
            (a.addr, "plain", SECRET),
            (dead, "plain", SECRET),
            (b.addr, "plain", SECRET),
        ],
        fastagi,
        "",
    ))
    .await;
    wait_logged_in(&a, 1).await;
    wait_logged_in(&b, 1).await;
    for (number, code) in [("79990000178", "1001"), ("79990001178", "1002")] {
        let (status, reply) = server
            .send(json!({"number": number, "flashcall": {"code": code}, "callback_url": receiver.url()}))
            .await;
        assert_eq!(status, 200, "{reply}");
    }
    for cb in receiver.collect(2, 20).await {
        assert_eq!(cb.body["state"], "ANSWERED", "{}", cb.body);
    }
    assert_eq!(a.actions("Originate").len(), 1);
    assert_eq!(b.actions("Originate").len(), 1);
}

#[tokio::test]
async fn a_fastagi_session_for_no_live_call_is_hung_up() {
    let rig = rig().await;
    assert_eq!(rig.peer.stray_agi("999999").await, ["HANGUP"]);
    assert_eq!(rig.peer.stray_agi("not-a-number").await, ["HANGUP"]);
}

#[tokio::test]
async fn calls_of_an_asterisk_that_stays_away_are_lost() {
    let fastagi = free_port();
    let peer = Peer::start(SECRET, fastagi).await;
    let receiver = Receiver::start(0).await;
    let settings = config(&[(peer.addr, "plain", SECRET)], fastagi, "")
        .replace("lost_after_ms = 5000", "lost_after_ms = 300");
    let server = Server::start(&settings).await;
    wait_logged_in(&peer, 1).await;
    let (status, reply) = server
        .send(json!({"number": "79990000178", "voice": {"code": "1234"}, "callback_url": receiver.url()}))
        .await;
    assert_eq!(status, 200, "{reply}");
    for _ in 0..100 {
        if !peer.actions("Originate").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peer.go_away();
    let cb = receiver.next(20).await.body;
    let id: i64 = text(&reply, "id").parse().unwrap();
    let outcome = server.call_record(id, "outcome").await;
    assert_eq!(outcome.as_deref(), Some("interrupted"), "{cb}");
    // With no server left the backend takes no new calls.
    let (_, reply) = server.send(json!({"number": "79990000486"})).await;
    assert_ne!(reply["result"], "ok", "{reply}");
}

fn check_config(path: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callcode"))
        .arg("check-config")
        .arg(path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run callcode");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn check_config_accepts_the_shipped_asterisk_example_and_names_a_bad_setting() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/asterisk.toml");
    let (ok, output) = check_config(&example);
    assert!(ok, "{output}");
    let text = std::fs::read_to_string(&example).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("[backends.settings]"))
        .unwrap()
        + 1;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    for (from, to, key) in [
        ("keepalive_ms = 10000", "keepalive = 10000", "keepalive"),
        ("auth = \"md5\"", "auth = \"sha\"", "sha"),
        ("# or \"plain\"", "\nevents = \"call\"", "events"),
    ] {
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        let (ok, output) = check_config(&path);
        assert!(!ok, "{from} -> {to}");
        assert!(
            output.contains(&format!("line {line}: backends[0].settings")),
            "{output}"
        );
        assert!(output.contains(key), "{output}");
    }
}

#[tokio::test]
async fn shutdown_logs_off_and_closes_the_fastagi_listener() {
    let fastagi = free_port();
    let peer = Peer::start(SECRET, fastagi).await;
    let server = Server::start(&config(&[(peer.addr, "plain", SECRET)], fastagi, "")).await;
    wait_logged_in(&peer, 1).await;
    assert!(
        std::net::TcpStream::connect(fastagi).is_ok(),
        "FastAGI listening"
    );
    // Serving a request means the signal handlers are in place.
    server.get_text("/metrics").await;
    let dir = server.dir.clone();
    let status = server.terminate().await;
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    assert!(status.success(), "{status:?}");
    for _ in 0..100 {
        if !peer.actions("Logoff").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(peer.actions("Logoff").len(), 1, "{log}");
    assert!(
        std::net::TcpStream::connect(fastagi).is_err(),
        "FastAGI closed"
    );
}

/// The dialplan lines of one context of an `extensions.conf`, comments and blanks dropped.
fn context_lines(conf: &str, context: &str) -> Vec<String> {
    let mut inside = false;
    let mut lines = vec![];
    for line in conf.lines() {
        let line = line.split(';').next().unwrap_or_default().trim();
        if line.starts_with('[') {
            inside = line == format!("[{context}]");
            continue;
        }
        if inside && !line.is_empty() {
            lines.push(line.to_string());
        }
    }
    lines
}

/// The shipped `dialplan/asterisk/` files against the dialplan captured working on Asterisk 22
/// (`callcode-path/conf/extensions-callcode.conf`) and the settings callcode logs in and
/// originates with: same context names, the same forwarding sub, the variable made inheritable
/// before the voice `Dial()`, a single-destination `Dial()` without `i`/`I`, the AMI user's
/// classes.
#[test]
fn the_shipped_dialplan_keeps_what_the_captured_one_needed() {
    let root = env!("CARGO_MANIFEST_DIR");
    let shipped =
        std::fs::read_to_string(format!("{root}/dialplan/asterisk/extensions.conf")).unwrap();
    let captured = std::fs::read_to_string(format!(
        "{root}/tests/fixtures/asterisk/callcode-path/conf/extensions-callcode.conf"
    ))
    .unwrap();
    let defaults = callcode::backend::asterisk::AsteriskSettings::default();
    for context in [
        defaults.flash_context.as_str(),
        defaults.voice_context.as_str(),
        defaults.hold_context.as_str(),
        "callcode-redirect",
        "callcode-voice",
    ] {
        assert!(
            !context_lines(&shipped, context).is_empty(),
            "context {context} missing"
        );
    }
    assert_eq!(
        context_lines(&shipped, "callcode-redirect"),
        context_lines(&captured, "callcode-redirect"),
        "the UserEvent callcode parses"
    );
    assert_eq!(
        context_lines(&shipped, "callcode-hold"),
        context_lines(&captured, "callcode-hold")
    );
    for context in [&defaults.flash_context, &defaults.voice_context] {
        let lines = context_lines(&shipped, context);
        let at = |needle: &str| lines.iter().position(|l| l.contains(needle));
        let sub = at("Set(REDIRECTING_SEND_SUB=callcode-redirect,s,1)").expect(context);
        let dial = at("n,Dial(").expect(context);
        assert!(sub < dial, "{context}: the sub must be set before Dial()");
        assert!(
            lines[0].starts_with("exten => _X.,1,"),
            "{context}: {lines:?}"
        );
        let args = lines[dial].split_once("Dial(").unwrap().1;
        let mut parts = args.trim_end_matches(')').splitn(3, ',');
        assert!(
            !parts.next().unwrap().contains('&'),
            "{context}: one destination only"
        );
        let _timeout = parts.next();
        let options = parts.next().unwrap_or("");
        let options = options.split('(').next().unwrap_or("");
        assert!(
            !options.contains('i') && !options.contains('I'),
            "{context}: Dial option i/I hides forwarding"
        );
        for l in &lines {
            assert!(
                l.starts_with("exten => ") || l.starts_with("same => "),
                "{l}"
            );
        }
    }
    let voice = context_lines(&shipped, &defaults.voice_context);
    let inherit = voice
        .iter()
        .position(|l| l.contains("Set(_VERIFICATION_ID=${VERIFICATION_ID})"))
        .expect("VERIFICATION_ID made inheritable");
    let dial = voice
        .iter()
        .position(|l| l.contains("U(callcode-voice)"))
        .unwrap();
    assert!(inherit < dial);
    let agi = context_lines(&shipped, "callcode-voice").join("\n");
    let listen = callcode::backend::asterisk::fastagi::FastAgiSettings::default().listen;
    assert!(
        agi.contains(&format!("AGI(agi://{listen}/voice,${{VERIFICATION_ID}})")),
        "{agi}"
    );

    let manager =
        std::fs::read_to_string(format!("{root}/dialplan/asterisk/manager.conf")).unwrap();
    let value = |key: &str| {
        manager
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix('='))
            .map(|v| v.trim().split(',').map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    for class in ["call", "user"] {
        assert!(value("read").iter().any(|c| c == class), "read {class}");
    }
    // Originate: originate (or call); Hangup: call; CoreShowChannels: reporting
    // (the classes each action is registered with in main/manager.c).
    for class in ["originate", "call", "reporting"] {
        assert!(value("write").iter().any(|c| c == class), "write {class}");
    }
}

/// A call cut by a crash is not left ringing on Asterisk: at the restart callcode hangs its
/// `;1` channel up by our ChannelId once AMI is logged in, and reports it interrupted.
#[tokio::test]
async fn a_call_cut_by_a_crash_is_hung_up_on_asterisk_at_the_restart() {
    let Rig {
        server,
        peer,
        receiver,
    } = rig().await;
    // 178 rings until callcode hangs it up.
    let (status, reply) = server
        .send(json!({"number": "79990000178", "voice": {"code": "4821"}, "callback_url": receiver.url()}))
        .await;
    assert_eq!(status, 200, "{reply}");
    for _ in 0..200 {
        if !peer.actions("Originate").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(peer.actions("Originate").len(), 1);
    let crashed = server.crash();
    let db = crashed.db.clone();
    let id: i64 = text(&reply, "id").parse().unwrap();
    let call_id = db_value(&db, "SELECT call_id FROM verifications WHERE id = ?", id)
        .await
        .unwrap();
    crashed.mark_dialled(id).await;
    assert!(
        peer.actions("Hangup").is_empty(),
        "not hung up before the crash"
    );
    let _server = crashed.restart().await;
    let mut hangups = vec![];
    for _ in 0..200 {
        hangups = peer.actions("Hangup");
        if !hangups.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(hangups.len(), 1, "{hangups:?}");
    assert_eq!(field(&hangups[0], "Channel"), [call_id.as_str()]);
    assert_eq!(field(&hangups[0], "Cause"), ["16"]);
    assert_eq!(
        field(&hangups[0], "ActionID"),
        [format!("release-{call_id}").as_str()]
    );
    let cb = receiver.next(20).await.body;
    assert_eq!(text(&cb, "id"), id.to_string(), "{cb}");
    assert_eq!(
        db_value(&db, "SELECT outcome FROM verifications WHERE id = ?", id)
            .await
            .as_deref(),
        Some("interrupted")
    );
}
