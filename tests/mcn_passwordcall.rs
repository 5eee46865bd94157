//! The MCN "Password Call" dialect against the real server and sandbox: reply shape, code on the
//! caller number, the redirect check, errors, and the account webhook with a custom field list.

mod common;

use common::{sandbox_config, Receiver, Server, FAST};
use serde_json::{json, Value};

async fn passwordcall(server: &Server, token: Option<&str>, body: Value) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let (s, v) = server
        .post_raw(
            "/api/protected/api/auth/passwordcall",
            auth.as_deref(),
            "application/json",
            body.to_string(),
        )
        .await;
    (s.as_u16(), v)
}

fn account_with_webhook(url: &str) -> String {
    format!(
        r#"
[[accounts]]
id = "400004"
api_keys = ["mcn-token"]
balance = "10.00"
webhook_url = "{url}"
webhook_secret = "s3cret"
webhook_fields = ["verification_call_uuid", "q931_status", "final_status", "reason", "caller_number", "phone_number", "duration"]
"#
    )
}

#[tokio::test]
async fn password_call_with_a_code_comes_from_an_ani_ending_in_it_and_reports_by_webhook() {
    let receiver = Receiver::start(0).await;
    let server = Server::start(&sandbox_config(
        &account_with_webhook(&receiver.url()),
        FAST,
        5,
    ))
    .await;
    let (s, r) = passwordcall(
        &server,
        Some("mcn-token"),
        json!({"phone_number": "79991234567", "verification_code": "1251"}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["ok"], true);
    assert_eq!(r["caller_number"], "74951091251");
    assert_eq!(r["verification_code"], "1251");
    assert_eq!(r["is_redirect"], false);
    let uuid = r["verification_uuid"].as_str().unwrap();
    let (hex, account) = uuid.split_once('_').unwrap();
    assert_eq!(account, "400004");
    assert_eq!(hex.len(), 12);
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));

    let received = receiver.next(15).await;
    let cb = received.body;
    // Signed with the account's secret: HMAC-SHA256 over the exact body.
    let signature = received
        .headers
        .get("x-callcode-signature")
        .expect("signed")
        .to_str()
        .unwrap();
    assert_eq!(
        signature,
        callcode::webhook::sign("s3cret", &cb.to_string())
    );
    assert_ne!(signature, callcode::webhook::sign("other", &cb.to_string()));
    let keys: Vec<&str> = cb.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "verification_call_uuid",
            "q931_status",
            "final_status",
            "reason",
            "caller_number",
            "phone_number",
            "duration"
        ]
    );
    assert_eq!(cb["verification_call_uuid"], uuid);
    assert_eq!(cb["final_status"], "ANSWER");
    assert_eq!(cb["q931_status"], 16);
    assert_eq!(cb["caller_number"], "74951091251");
    assert!(cb["duration"].as_i64().unwrap() >= 1, "{cb}");
}

#[tokio::test]
async fn password_call_outcomes_in_the_webhook() {
    let receiver = Receiver::start(0).await;
    let server = Server::start(&sandbox_config(
        &account_with_webhook(&receiver.url()),
        FAST,
        5,
    ))
    .await;
    let (s, r) = passwordcall(
        &server,
        Some("mcn-token"),
        json!({"phone_number": "79990000017"}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let code = r["verification_code"].as_str().unwrap();
    assert!(r["caller_number"].as_str().unwrap().ends_with(code));
    let cb = receiver.next(15).await.body;
    assert_eq!(
        (cb["q931_status"].as_i64(), cb["final_status"].as_str()),
        (Some(17), Some("CANCEL"))
    );
    passwordcall(
        &server,
        Some("mcn-token"),
        json!({"phone_number": "79990000031"}),
    )
    .await;
    let cb = receiver.next(15).await.body;
    assert_eq!(
        (cb["q931_status"].as_i64(), cb["reason"].as_str()),
        (Some(31), Some("rejected"))
    );
}

#[tokio::test]
async fn is_with_redirect_waits_for_forwarding_and_drops_a_forwarded_call() {
    let receiver = Receiver::start(0).await;
    let server = Server::start(&sandbox_config(
        &account_with_webhook(&receiver.url()),
        FAST,
        5,
    ))
    .await;
    let (s, r) = passwordcall(
        &server,
        Some("mcn-token"),
        json!({"phone_number": "79990000181", "is_with_redirect": true}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["is_redirect"], true);
    let cb = receiver.next(15).await.body;
    assert_eq!(cb["final_status"], "CANCEL");
    assert_eq!(cb["reason"], "redirected");
    assert_eq!(cb["duration"], 0, "no code was spoken");

    let (_, r) = passwordcall(
        &server,
        Some("mcn-token"),
        json!({"phone_number": "79991234567", "is_with_redirect": true}),
    )
    .await;
    assert_eq!(r["is_redirect"], false);
    assert_eq!(receiver.next(15).await.body["final_status"], "ANSWER");
}

#[tokio::test]
async fn password_call_errors() {
    let server = Server::start(&sandbox_config(
        &account_with_webhook("http://127.0.0.1:9/cb"),
        FAST,
        5,
    ))
    .await;
    let err = |code: &str| code.to_string();
    let cases: Vec<(Option<&str>, Value, u16, String)> = vec![
        (
            None,
            json!({"phone_number": "79991234567"}),
            401,
            err("unauthorized"),
        ),
        (
            Some("nope"),
            json!({"phone_number": "79991234567"}),
            401,
            err("unauthorized"),
        ),
        (
            Some("mcn-token"),
            json!({}),
            400,
            err("invalid_phone_number"),
        ),
        (
            Some("mcn-token"),
            json!({"phone_number": "+7 999"}),
            400,
            err("invalid_phone_number"),
        ),
        (
            Some("mcn-token"),
            json!({"phone_number": "999999999999"}),
            400,
            err("unknown_direction"),
        ),
        (
            Some("mcn-token"),
            json!({"phone_number": "79991234567", "verification_code": "12"}),
            400,
            err("invalid_verification_code"),
        ),
        (
            Some("mcn-token"),
            json!({"phone_number": "79991234567", "is_with_redirect": "maybe"}),
            400,
            err("bad_request"),
        ),
        (
            Some("mcn-token"),
            json!({"phone_number": "79991234567", "extra": 1}),
            400,
            err("bad_request"),
        ),
    ];
    for (token, body, status, code) in cases {
        let (s, r) = passwordcall(&server, token, body.clone()).await;
        assert_eq!(
            (s, r["ok"].as_bool(), r["error"].as_str()),
            (status, Some(false), Some(code.as_str())),
            "{body}"
        );
        assert!(r["message"].is_string());
    }
    let (s, r) = server
        .post_raw(
            "/api/protected/api/auth/passwordcall",
            Some("Bearer mcn-token"),
            "application/json",
            "{".into(),
        )
        .await;
    assert_eq!(
        (s.as_u16(), r["error"].as_str()),
        (400, Some("bad_request"))
    );
    let (s, r) = server
        .post_raw(
            "/api/protected/nothing",
            Some("Bearer mcn-token"),
            "application/json",
            "{}".into(),
        )
        .await;
    assert_eq!((s.as_u16(), r["error"].as_str()), (404, Some("not_found")));
    // 10.00 covers 28 calls at 0.35; the 29th is refused.
    for _ in 0..28 {
        let (s, r) = passwordcall(
            &server,
            Some("mcn-token"),
            json!({"phone_number": "79990000041"}),
        )
        .await;
        assert_eq!(s, 200, "{r}");
    }
    let (s, r) = passwordcall(
        &server,
        Some("mcn-token"),
        json!({"phone_number": "79990000041"}),
    )
    .await;
    assert_eq!((s, r["error"].as_str()), (402, Some("insufficient_funds")));
}

#[tokio::test]
async fn account_and_direction_errors() {
    let accounts = r#"
[[accounts]]
id = "400005"
api_keys = ["off-token"]
disabled = true

[[accounts]]
id = "400006"
api_keys = ["ru-token"]
balance = "10.00"
allowed_countries = ["RU"]
spam_list = ["79990002222"]
"#;
    let server = Server::start(&sandbox_config(accounts, FAST, 5)).await;
    let cases = [
        ("off-token", "79991234567", 403, "account_disabled"),
        ("ru-token", "4915112345678", 403, "direction_not_permitted"),
        ("ru-token", "79990002222", 403, "number_in_spam_list"),
    ];
    for (token, number, status, code) in cases {
        let (s, r) = passwordcall(&server, Some(token), json!({"phone_number": number})).await;
        assert_eq!(
            (s, r["ok"].as_bool(), r["error"].as_str()),
            (status, Some(false), Some(code)),
            "{number}"
        );
    }
    let resp = server
        .http
        .get(server.url("/api/protected/api/auth/passwordcall"))
        .header("Authorization", "Bearer ru-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let r: Value = resp.json().await.unwrap();
    assert_eq!(
        (r["ok"].as_bool(), r["error"].as_str()),
        (Some(false), Some("method_not_allowed"))
    );
}
