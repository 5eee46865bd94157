//! Nothing accepted is lost: kill -9 mid-call, restart, the callback arrives. And random bodies
//! thrown at both dialects never get a 5xx.

mod common;

use std::time::Duration;

use common::{db_value, sandbox_config, Receiver, Server, FAST};
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

#[tokio::test]
async fn kill_9_mid_call_then_restart_delivers_an_interrupted_callback() {
    let timings = FAST.replace("answer_timeout_ms = 2000", "answer_timeout_ms = 60000");
    let server = Server::start(&sandbox_config("", &timings, 5)).await;
    let receiver = Receiver::start(0).await;
    let (status, reply) = server
        .send(json!({"number": "79990000016", "voice": {"code": "4821"}, "callback_url": receiver.url()}))
        .await;
    assert_eq!(status, 200);
    let id: i64 = reply["id"].as_str().unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let crashed = server.crash();
    let db = crashed.db.clone();
    assert_eq!(
        db_value(&db, "SELECT state FROM verifications WHERE id = ?", id)
            .await
            .as_deref(),
        Some("dialing"),
        "accepted and stored before the reply, not finished"
    );
    let _server = crashed.restart().await;
    let cb = receiver.next(15).await.body;
    assert_eq!(cb["id"], reply["id"]);
    assert_eq!(cb["state"], "CANCEL");
    assert_eq!(
        db_value(&db, "SELECT outcome FROM verifications WHERE id = ?", id)
            .await
            .as_deref(),
        Some("interrupted")
    );
    // Charged once: 100.00 - 0.35, not twice.
    let balance = db_value(&db, "SELECT balance FROM accounts WHERE ? = 1", 1).await;
    assert_eq!(balance.as_deref(), Some("9965"));
}

#[tokio::test]
async fn a_verification_stored_but_never_dialled_is_dialled_after_restart() {
    let server = Server::start(&sandbox_config("", FAST, 5)).await;
    let receiver = Receiver::start(0).await;
    let (status, reply) = server
        .send(json!({"number": "79990000017", "voice": {"code": "4821"}, "callback_url": receiver.url()}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(receiver.next(15).await.body["state"], "BUSY");
    let id: i64 = reply["id"].as_str().unwrap().parse().unwrap();
    let crashed = server.crash();
    let db = crashed.db.clone();
    crashed.rewind_to_undialled().await;
    let _server = crashed.restart().await;
    // Dialled again: the sandbox's busy number answers busy, not "interrupted".
    let cb = receiver.next(15).await.body;
    assert_eq!(cb["id"], reply["id"]);
    assert_eq!(cb["state"], "BUSY");
    assert_eq!(
        db_value(&db, "SELECT outcome FROM verifications WHERE id = ?", id)
            .await
            .as_deref(),
        Some("busy")
    );
    let balance = db_value(&db, "SELECT balance FROM accounts WHERE ? = 1", 1).await;
    assert_eq!(balance.as_deref(), Some("9965"), "not charged again");
}

fn random_value(rng: &mut impl Rng, depth: u32) -> Value {
    match rng.random_range(0..if depth > 2 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random_range(-1_000_000i64..100_000_000_000_000)),
        3 => json!(
            [
                "79991234567",
                "0016",
                "1234",
                "",
                "abc",
                "74959999999",
                "4915112340017",
                "7"
            ][rng.random_range(0..8)]
        ),
        4 => json!(rng.random::<f64>()),
        5 => Value::Array(
            (0..rng.random_range(0..3))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Object(random_object(rng, depth + 1)),
    }
}

fn random_object(rng: &mut impl Rng, depth: u32) -> Map<String, Value> {
    const KEYS: &[&str] = &[
        "number",
        "capacity",
        "callback_url",
        "voice",
        "flashcall",
        "sms",
        "security",
        "apiKey",
        "code",
        "repeat",
        "ani",
        "id",
        "request",
        "date",
        "phone_number",
        "verification_code",
        "is_with_redirect",
        "x",
    ];
    (0..rng.random_range(0..5))
        .map(|_| {
            (
                KEYS[rng.random_range(0..KEYS.len())].to_string(),
                random_value(rng, depth),
            )
        })
        .collect()
}

#[tokio::test]
async fn random_bodies_never_get_a_5xx() {
    let rich = r#"
[[accounts]]
id = "500005"
api_keys = ["rich-key"]
balance = "1000000.00"
"#;
    let server = Server::start(&sandbox_config(rich, FAST, 5)).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let paths = [
        ("/api/voice-password/send/", "rich-key"),
        ("/api/voice-password/get/", "rich-key"),
        ("/api/protected/api/auth/passwordcall", "Bearer rich-key"),
    ];
    for i in 0..300 {
        let (path, auth) = paths[i % paths.len()];
        let body = if rng.random_range(0..10) == 0 {
            // Not even JSON.
            (0..rng.random_range(0..40))
                .map(|_| rng.random_range(0u8..=255) as char)
                .collect::<String>()
        } else {
            Value::Object(random_object(&mut rng, 0)).to_string()
        };
        let resp = server
            .http
            .post(server.url(path))
            .header("Authorization", auth)
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(
            !status.is_server_error(),
            "{status} for {path} {body}: {text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert!(v.get("result").is_some() || v.get("ok").is_some(), "{text}");
    }
}
