//! The VoicePassword `send` request against the real server and the sandbox backend: every
//! request variant, every sandbox outcome for flash and voice calls, the callbacks, and the errors.

mod common;

use std::time::{Duration, Instant};

use common::{db_value, sandbox_config, Receiver, Server, FAST};
use serde_json::{json, Value};

fn num(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing or not a string in {v}"))
        .to_string()
}

/// Sends one request with a callback and returns (reply, callback).
async fn call(server: &Server, receiver: &Receiver, mut body: Value) -> (Value, Value) {
    body["callback_url"] = json!(receiver.url());
    let (status, reply) = server.send(body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["result"], "ok", "{reply}");
    let cb = receiver.next(20).await.body;
    assert_eq!(cb["id"], reply["id"], "callback for another request: {cb}");
    (reply, cb)
}

#[tokio::test]
async fn flash_call_with_a_generated_code_replies_like_the_provider_and_calls_back() {
    let server = Server::start(&sandbox_config("", FAST, 5)).await;
    let receiver = Receiver::start(0).await;
    // 0016 rings forever: the flash call is dropped after the ring time, a delivered code.
    let started = Instant::now();
    let (reply, cb) = call(
        &server,
        &receiver,
        json!({"number": "79990000016", "capacity": "4"}),
    )
    .await;
    let keys: Vec<&str> = reply
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["result", "id", "number", "price", "code"]);
    assert_eq!(reply["number"], "79990000016");
    assert_eq!(reply["price"], "0.35");
    let code = num(&reply, "code");
    assert_eq!(code.len(), 4);
    assert!(code.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(cb["state"], "ANSWERED");
    assert_eq!(cb["duration"], "0");
    assert_eq!(cb["price"], "0.35");
    assert_eq!(cb["number"], "79990000016");
    // Every value is a string; the date is YYYY-MM-DD HH:MM:SS.
    for (k, v) in cb.as_object().unwrap() {
        assert!(v.is_string(), "{k} is not a string: {cb}");
    }
    let date = num(&cb, "date");
    assert!(
        chrono::NaiveDateTime::parse_from_str(&date, "%Y-%m-%d %H:%M:%S").is_ok(),
        "{date}"
    );
    // It rang for the configured ring time (600 ms) before the drop.
    assert!(started.elapsed() >= Duration::from_millis(600));

    // The ANI the call came from ends in the code, from the route's range.
    let id: i64 = num(&reply, "id").parse().unwrap();
    let ani = db_value(
        &server.db_path(),
        "SELECT ani FROM verifications WHERE id = ?",
        id,
    )
    .await
    .unwrap();
    assert!(ani.ends_with(&code), "ANI {ani} does not end in {code}");
    assert!(ani.starts_with("7495109"), "{ani}");
    let outcome = db_value(
        &server.db_path(),
        "SELECT outcome FROM verifications WHERE id = ?",
        id,
    )
    .await;
    assert_eq!(outcome.as_deref(), Some("delivered"));
}

#[tokio::test]
async fn generated_codes_take_capacity_digits_of_the_ani() {
    let server = Server::start(&sandbox_config("", FAST, 5)).await;
    for capacity in [4, 5, 6] {
        let (status, reply) = server
            .send(json!({"number": "79990000016", "capacity": capacity}))
            .await;
        assert_eq!(status, 200, "{reply}");
        let code = num(&reply, "code");
        assert_eq!(code.len(), capacity, "{reply}");
        let id: i64 = num(&reply, "id").parse().unwrap();
        let ani = db_value(
            &server.db_path(),
            "SELECT ani FROM verifications WHERE id = ?",
            id,
        )
        .await
        .unwrap();
        assert!(ani.ends_with(&code), "{ani} / {code}");
    }
}

#[tokio::test]
async fn flash_call_with_a_client_code_comes_from_an_ani_ending_in_it() {
    let server = Server::start(&sandbox_config("", FAST, 5)).await;
    let receiver = Receiver::start(0).await;
    let (reply, cb) = call(
        &server,
        &receiver,
        json!({"number": "79990000016", "flashcall": {"code": "0427"}}),
    )
    .await;
    assert_eq!(reply["code"], "0427");
    assert_eq!(cb["state"], "ANSWERED");
    let id: i64 = num(&reply, "id").parse().unwrap();
    let ani = db_value(
        &server.db_path(),
        "SELECT ani FROM verifications WHERE id = ?",
        id,
    )
    .await
    .unwrap();
    assert_eq!(ani, "74951090427");
    // International destinations use the Hungarian route and price.
    let (reply, _) = call(
        &server,
        &receiver,
        json!({"number": "4915112340016", "flashcall": {"code": "5555"}}),
    )
    .await;
    assert_eq!(reply["price"], "1.50");
    let id: i64 = num(&reply, "id").parse().unwrap();
    let ani = db_value(
        &server.db_path(),
        "SELECT ani FROM verifications WHERE id = ?",
        id,
    )
    .await
    .unwrap();
    assert_eq!(ani, "3612345555");
}

/// Every sandbox outcome, for both methods, with the state the provider would report.
#[tokio::test]
async fn every_sandbox_outcome_for_flash_and_voice() {
    let server = Server::start(&sandbox_config("", FAST, 5)).await;
    let receiver = Receiver::start(0).await;
    let cases = [
        // (number, method, expected state, expected stored outcome)
        ("79990000016", "flash", "ANSWERED", "delivered"),
        ("79990000016", "voice", "NO ANSWER", "no_answer"),
        ("79990000017", "flash", "BUSY", "busy"),
        ("79990000017", "voice", "BUSY", "busy"),
        ("79990000021", "flash", "FAIL", "rejected"),
        ("79990000021", "voice", "FAIL", "rejected"),
        ("79990000031", "flash", "FAIL", "rejected_by_operator"),
        ("79990000031", "voice", "FAIL", "rejected_by_operator"),
        ("79990000041", "flash", "FAIL", "billing"),
        ("79990000041", "voice", "FAIL", "billing"),
        ("79990000034", "flash", "FAIL", "route_failure"),
        ("79990000034", "voice", "FAIL", "route_failure"),
        ("79990000181", "flash", "ANSWERED", "answered"),
        ("79990000181", "voice", "ANSWERED", "answered"),
        ("79991234567", "flash", "ANSWERED", "answered"),
        ("79991234567", "voice", "ANSWERED", "answered"),
    ];
    let mut ids = std::collections::HashMap::new();
    for (number, method, state, outcome) in cases {
        let mut body = json!({"number": number, "callback_url": receiver.url()});
        if method == "voice" {
            body["voice"] = json!({"code": "1234"});
        }
        let (status, reply) = server.send(body).await;
        assert_eq!(status, 200, "{reply}");
        ids.insert(num(&reply, "id"), (number, method, state, outcome));
    }
    for r in receiver.collect(cases.len(), 30).await {
        let id = num(&r.body, "id");
        let (number, method, state, outcome) =
            ids.remove(&id).expect("callback for a known id, once");
        assert_eq!(r.body["state"], state, "{number} {method}: {}", r.body);
        assert_eq!(r.body["number"], number);
        let stored = db_value(
            &server.db_path(),
            "SELECT outcome FROM verifications WHERE id = ?",
            id.parse().unwrap(),
        )
        .await;
        assert_eq!(stored.as_deref(), Some(outcome), "{number} {method}");
        if state == "ANSWERED" && method == "voice" {
            let d: u64 = num(&r.body, "duration").parse().unwrap();
            assert!(d >= 2, "a voice call speaks five prompts: {}", r.body);
        }
        assert!(r.headers.get("x-callcode-delivery").is_some());
    }
    assert!(ids.is_empty());
    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains("callcode_calls_finished_total"),
        "{metrics}"
    );
    assert!(metrics.contains("outcome=\"busy\""), "{metrics}");
    assert!(metrics.contains("callcode_ani_pool"), "{metrics}");
}

#[tokio::test]
async fn forwarding_is_recorded_on_the_call_record() {
    let server = Server::start(&sandbox_config("", FAST, 5)).await;
    let receiver = Receiver::start(0).await;
    let (reply, _) = call(
        &server,
        &receiver,
        json!({"number": "79990000181", "voice": {}}),
    )
    .await;
    let id: i64 = num(&reply, "id").parse().unwrap();
    let redirected = server.call_record(id, "redirected").await;
    assert_eq!(redirected.as_deref(), Some("1"));
    let to = server.call_record(id, "redirect_to").await;
    assert_eq!(to.as_deref(), Some("79990009999"));
}

#[tokio::test]
async fn voice_password_speaks_the_code_and_repeat_speaks_it_twice() {
    let server = Server::start(&sandbox_config("", FAST, 5)).await;
    let receiver = Receiver::start(0).await;
    let (reply, cb) = call(
        &server,
        &receiver,
        json!({"number": "79991234567", "voice": {"code": "4821"}}),
    )
    .await;
    assert_eq!(reply["code"], "4821");
    assert_eq!(cb["state"], "ANSWERED");
    let once: i64 = num(&reply, "id").parse().unwrap();
    let (reply, cb) = call(
        &server,
        &receiver,
        json!({"number": "79991234567", "voice": {"code": "4821", "repeat": "1"}}),
    )
    .await;
    assert_eq!(cb["state"], "ANSWERED");
    let twice: i64 = num(&reply, "id").parse().unwrap();
    let played = |id| {
        let db = server.db_path();
        async move {
            db_value(
                &db,
                "SELECT prompts_played FROM call_records WHERE verification_id = ?",
                id,
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(played(once).await, "5");
    assert_eq!(played(twice).await, "10");
    let dur = |id| {
        let db = server.db_path();
        async move {
            db_value(
                &db,
                "SELECT duration_ms FROM verifications WHERE id = ?",
                id,
            )
            .await
            .unwrap()
            .parse::<i64>()
            .unwrap()
        }
    };
    let (d1, d2) = (dur(once).await, dur(twice).await);
    // Real prompt durations: "ваш код" + four digits is about two seconds; twice is double.
    assert!(d1 >= 1500, "{d1}");
    assert!(d2 >= 2 * d1 - 300, "{d1} vs {d2}");
}

#[tokio::test]
async fn voice_without_a_code_speaks_the_anis_last_digits_and_a_registered_ani_is_used() {
    let server = Server::start(&sandbox_config("", FAST, 5)).await;
    let (status, reply) = server
        .send(json!({"number": "79991234567", "voice": {}}))
        .await;
    assert_eq!(status, 200);
    let id: i64 = num(&reply, "id").parse().unwrap();
    let ani = db_value(
        &server.db_path(),
        "SELECT ani FROM verifications WHERE id = ?",
        id,
    )
    .await
    .unwrap();
    assert!(ani.ends_with(&num(&reply, "code")), "{ani} {reply}");

    let (status, reply) = server
        .send(json!({"number": "79991234567", "voice": {"ani": "74959999999", "repeat": 1}}))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["code"], "9999");
    let (status, reply) = server
        .send(json!({"number": "79991234567", "voice": {"code": "1111", "ani": "74959999999"}}))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["code"], "1111");
    let id: i64 = num(&reply, "id").parse().unwrap();
    let ani = db_value(
        &server.db_path(),
        "SELECT ani FROM verifications WHERE id = ?",
        id,
    )
    .await;
    assert_eq!(ani.as_deref(), Some("74959999999"));
}

#[tokio::test]
async fn authentication_by_header_or_security_section() {
    let server = Server::start(&sandbox_config("", FAST, 5)).await;
    let body = json!({"security": {"apiKey": "demo-key"}, "number": "79991234567"}).to_string();
    let (status, reply) = server
        .post_raw("/api/voice-password/send/", None, "application/json", body)
        .await;
    assert_eq!(
        (status.as_u16(), reply["result"].as_str()),
        (200, Some("ok")),
        "{reply}"
    );
    let body = json!({"number": "79991234567"}).to_string();
    for auth in [None, Some("wrong-key"), Some("")] {
        let (status, reply) = server
            .post_raw(
                "/api/voice-password/send/",
                auth,
                "application/json",
                body.clone(),
            )
            .await;
        assert_eq!(status, 401);
        assert_eq!(
            reply,
            json!({"result": "error", "error_code": "authorisation_failed"})
        );
    }
}

async fn expect_error(server: &Server, body: Value, status: u16, code: &str) {
    let (s, reply) = server.send(body.clone()).await;
    assert_eq!(
        reply,
        json!({"result": "error", "error_code": code}),
        "for {body}"
    );
    assert_eq!(s.as_u16(), status, "for {body}");
}

#[tokio::test]
async fn request_errors_use_the_providers_codes() {
    let accounts = r#"
[[accounts]]
id = "200001"
api_keys = ["disabled-key"]
balance = "100.00"
disabled = true

[[accounts]]
id = "200002"
api_keys = ["poor-key"]
balance = "0.50"
allowed_countries = ["RU"]
spam_list = ["79990001111"]
"#;
    let server = Server::start(&sandbox_config(accounts, FAST, 5)).await;
    expect_error(&server, json!({}), 400, "number_is_empty").await;
    expect_error(&server, json!({"number": ""}), 400, "number_is_empty").await;
    expect_error(
        &server,
        json!({"number": "not a number"}),
        400,
        "number_is_empty",
    )
    .await;
    expect_error(&server, json!({"number": ["7999"]}), 400, "number_is_empty").await;
    expect_error(
        &server,
        json!({"number": "999999999999"}),
        400,
        "number_not_valid",
    )
    .await;
    expect_error(&server, json!({"number": "7999"}), 400, "number_not_valid").await;
    expect_error(
        &server,
        json!({"number": "79991234567", "capacity": "3"}),
        400,
        "code_not_valid",
    )
    .await;
    expect_error(
        &server,
        json!({"number": "79991234567", "capacity": "7"}),
        400,
        "code_not_valid",
    )
    .await;
    expect_error(
        &server,
        json!({"number": "79991234567", "capacity": "x"}),
        400,
        "code_not_valid",
    )
    .await;
    expect_error(
        &server,
        json!({"number": "79991234567", "flashcall": {}}),
        400,
        "code_not_valid",
    )
    .await;
    expect_error(
        &server,
        json!({"number": "79991234567", "flashcall": {"code": "12345"}}),
        400,
        "code_not_valid",
    )
    .await;
    expect_error(
        &server,
        json!({"number": "79991234567", "voice": {"code": "12a4"}}),
        400,
        "code_not_valid",
    )
    .await;
    expect_error(
        &server,
        json!({"number": "79991234567", "voice": {"code": "1234"}, "capacity": "6"}),
        400,
        "code_not_valid",
    )
    .await;
    expect_error(
        &server,
        json!({"number": "79991234567", "voice": {"ani": "74950000000"}}),
        400,
        "ani_phone_not_valid",
    )
    .await;
    expect_error(
        &server,
        json!({"number": "79991234567", "voice": {"ani": "abc"}}),
        400,
        "ani_phone_not_valid",
    )
    .await;
    expect_error(
        &server,
        json!({"number": "79991234567", "voice": {}, "flashcall": {"code": "1234"}}),
        400,
        "unknown_request",
    )
    .await;
    expect_error(
        &server,
        json!({"number": "79991234567", "surprise": 1}),
        400,
        "unknown_request",
    )
    .await;
    expect_error(
        &server,
        json!({"number": "79991234567", "callback_url": "ftp://x"}),
        400,
        "unknown_request",
    )
    .await;
    expect_error(
        &server,
        json!({"sms": {"id": "1"}}),
        400,
        "sms_not_supported",
    )
    .await;

    let post = |auth: &'static str, body: Value| {
        let server = &server;
        async move {
            server
                .post_raw(
                    "/api/voice-password/send/",
                    Some(auth),
                    "application/json",
                    body.to_string(),
                )
                .await
        }
    };
    let (s, r) = post("disabled-key", json!({"number": "79991234567"})).await;
    assert_eq!(
        (s.as_u16(), &r),
        (
            403,
            &json!({"result": "error", "error_code": "user_disabled"})
        )
    );
    let (s, r) = post("poor-key", json!({"number": "4915112345678"})).await;
    assert_eq!(
        (s.as_u16(), &r),
        (
            403,
            &json!({"result": "error", "error_code": "number_not_permitted"})
        )
    );
    let (s, r) = post("poor-key", json!({"number": "79990001111"})).await;
    assert_eq!(
        (s.as_u16(), &r),
        (
            403,
            &json!({"result": "error", "error_code": "number_in_spam_list"})
        )
    );
    let (s, r) = post("poor-key", json!({"number": "79991234567"})).await;
    assert_eq!(
        (s.as_u16(), r["result"].as_str()),
        (200, Some("ok")),
        "0.50 covers one call at 0.35"
    );
    let (s, r) = post("poor-key", json!({"number": "79991234567"})).await;
    assert_eq!(
        (s.as_u16(), &r),
        (
            402,
            &json!({"result": "error", "error_code": "not_enough_money"})
        )
    );
}

#[tokio::test]
async fn malformed_requests_get_the_dialects_error_shape_never_a_500() {
    let server = Server::start(&sandbox_config("", FAST, 5)).await;
    let bad_bodies = [
        "",
        "{",
        "[]",
        "null",
        "\"x\"",
        "{\"number\":}",
        "\u{0}\u{1}",
    ];
    for body in bad_bodies {
        let (s, r) = server
            .post_raw(
                "/api/voice-password/send/",
                Some("demo-key"),
                "application/json",
                body.to_string(),
            )
            .await;
        assert_eq!(
            (s.as_u16(), &r),
            (
                400,
                &json!({"result": "error", "error_code": "unknown_request"})
            ),
            "{body:?}"
        );
    }
    let huge = format!("{{\"number\":\"{}\"}}", "7".repeat(200_000));
    // The server refuses the body before reading all of it and closes that connection; use a
    // client of its own so the shared connection pool is not left holding the closed socket.
    let resp = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
        .post(server.url("/api/voice-password/send/"))
        .header("Authorization", "demo-key")
        .header("Content-Type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("a reply to an oversized body");
    let s = resp.status();
    let r: Value = resp.json().await.expect("JSON error body");
    assert_eq!(r["error_code"], "unknown_request");
    assert!(s.is_client_error(), "{s}");
    let (s, r) = server
        .post_raw(
            "/api/voice-password/nothing/",
            Some("demo-key"),
            "application/json",
            "{}".into(),
        )
        .await;
    assert_eq!(
        (s.as_u16(), r["error_code"].as_str()),
        (404, Some("unknown_request"))
    );
    let resp = server
        .http
        .get(server.url("/api/voice-password/send/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["error_code"], "unknown_request");
    let (s, r) = server
        .post_raw(
            "/api/voice-password/send/",
            Some("demo-key"),
            "multipart/form-data; boundary=x",
            "{}".into(),
        )
        .await;
    assert_eq!(
        (s.as_u16(), r["error_code"].as_str()),
        (400, Some("unknown_request"))
    );
    // curl -d sends JSON as form-urlencoded; the provider's clients rely on that working.
    let (s, r) = server
        .post_raw(
            "/api/voice-password/send/",
            Some("demo-key"),
            "application/x-www-form-urlencoded",
            json!({"number": "79991234567"}).to_string(),
        )
        .await;
    assert_eq!((s.as_u16(), r["result"].as_str()), (200, Some("ok")));
}

#[tokio::test]
async fn a_failing_receiver_gets_the_callback_again_with_the_same_delivery_id() {
    let server = Server::start(&sandbox_config("", FAST, 5)).await;
    let receiver = Receiver::start(3).await;
    let (status, reply) = server
        .send(json!({"number": "79990000017", "callback_url": receiver.url()}))
        .await;
    assert_eq!(status, 200);
    let cb = receiver.next(20).await;
    assert_eq!(cb.body["id"], reply["id"]);
    assert_eq!(cb.body["state"], "BUSY");
    assert_eq!(receiver.hits.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert_eq!(cb.headers.get("x-callcode-attempt").unwrap(), "4");
    assert!(receiver.quiet_for(800).await, "no duplicate after a 200");
    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains("callcode_webhook_attempts_total{result=\"failed\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sigterm_lets_calls_finish_within_the_grace_period() {
    let server = Server::start(&sandbox_config("", FAST, 10)).await;
    let receiver = Receiver::start(0).await;
    // A voice call that answers and speaks for about two seconds.
    let (status, reply) = server
        .send(json!({"number": "79991234567", "voice": {"code": "4821"}, "callback_url": receiver.url()}))
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = server.addr;
    let exit = server.terminate().await;
    assert!(exit.success(), "{exit}");
    let cb = receiver.next(5).await;
    assert_eq!(cb.body["id"], reply["id"]);
    assert_eq!(
        cb.body["state"], "ANSWERED",
        "the call finished during the grace period"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn calls_beyond_the_grace_period_are_cancelled_and_reported_after_restart() {
    let server = Server::start(&sandbox_config(
        "",
        FAST.replace("answer_timeout_ms = 2000", "answer_timeout_ms = 60000")
            .as_str(),
        1,
    ))
    .await;
    // The receiver is down while the server stops: the callback must survive in the outbox.
    let receiver = Receiver::start(1_000_000).await;
    let (status, reply) = server
        .send(json!({"number": "79990000016", "voice": {"code": "4821"}, "callback_url": receiver.url()}))
        .await;
    assert_eq!(status, 200);
    let id: i64 = num(&reply, "id").parse().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (dir, config_path) = (server.dir.clone(), server.config_path.clone());
    let db = server.db_path();
    let exit = server.terminate().await;
    assert!(exit.success());
    let outcome = db_value(&db, "SELECT outcome FROM verifications WHERE id = ?", id).await;
    assert_eq!(outcome.as_deref(), Some("cancelled"));
    let pending = db_value(
        &db,
        "SELECT COUNT(*) FROM outbox WHERE verification_id = ? AND delivered_at IS NULL",
        id,
    )
    .await;
    assert_eq!(pending.as_deref(), Some("1"));

    // Restart with a receiver that works, at the same URL's port? A new receiver has a new port,
    // so point the stored callback at it: the outbox row is what gets delivered.
    let good = Receiver::start(0).await;
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query("UPDATE outbox SET url = ?")
            .bind(good.url())
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let _server = Server::start_in(dir, config_path).await;
    let cb = good.next(10).await;
    assert_eq!(cb.body["id"], reply["id"]);
    assert_eq!(cb.body["state"], "CANCEL");
}
