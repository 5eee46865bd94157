//! The VoicePassword statistics request (`/api/voice-password/get/`): balance, state, daily.

mod common;

use common::{sandbox_config, Receiver, Server, FAST};
use serde_json::{json, Value};

async fn get(server: &Server, auth: &str, body: Value) -> (u16, Value) {
    let (s, v) = server
        .post_raw(
            "/api/voice-password/get/",
            Some(auth),
            "application/json",
            body.to_string(),
        )
        .await;
    (s.as_u16(), v)
}

const OTHER: &str = r#"
[[accounts]]
id = "300003"
api_keys = ["other-key"]
balance = "7.5"
"#;

#[tokio::test]
async fn balance_is_charged_per_accepted_call() {
    let server = Server::start(&sandbox_config(OTHER, FAST, 5)).await;
    assert_eq!(
        get(&server, "demo-key", json!({"request": "balance"})).await,
        (
            200,
            json!({"result": "ok", "balance": "100.00", "currency": "Rub"})
        )
    );
    for number in ["79991234567", "4915112345678"] {
        let (s, r) = server.send(json!({"number": number})).await;
        assert_eq!(s, 200, "{r}");
    }
    // 100.00 - 0.35 (Russia) - 1.50 (Germany)
    let (_, r) = get(&server, "demo-key", json!({"request": "balance"})).await;
    assert_eq!(r["balance"], "98.15");
    let (_, r) = get(&server, "other-key", json!({"request": "balance"})).await;
    assert_eq!(r["balance"], "7.50");
}

#[tokio::test]
async fn state_shows_dialling_then_the_russian_outcome() {
    let server = Server::start(&sandbox_config(OTHER, FAST, 5)).await;
    let receiver = Receiver::start(0).await;
    let (_, busy) = server
        .send(json!({"number": "79990000017", "voice": {"code": "1234"}, "callback_url": receiver.url()}))
        .await;
    let id = busy["id"].as_str().unwrap().to_string();
    let (s, r) = get(&server, "demo-key", json!({"request": "state", "id": id})).await;
    assert_eq!(s, 200);
    assert_eq!(r["data"]["state"], "Дозвон", "{r}");
    receiver.next(10).await;
    let (_, r) = get(
        &server,
        "demo-key",
        json!({"request": "state", "id": id.parse::<i64>().unwrap()}),
    )
    .await;
    let data = &r["data"];
    assert_eq!(data["state"], "Занято");
    assert_eq!(data["id"], id.as_str());
    assert_eq!(data["number"], "79990000017");
    assert_eq!(data["duration"], "00:00");
    assert_eq!(data["price"], "0.35");
    assert_eq!(data["service"], "Voice Password");
    let date = data["date"].as_str().unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(date, "%d.%m.%Y %H:%M:%S").is_ok(),
        "{date}"
    );

    let (_, ok) = server
        .send(json!({"number": "79991234567", "voice": {"code": "1234"}, "callback_url": receiver.url()}))
        .await;
    receiver.next(15).await;
    let (_, r) = get(
        &server,
        "demo-key",
        json!({"request": "state", "id": ok["id"]}),
    )
    .await;
    assert_eq!(r["data"]["state"], "Успешно");
    let duration = r["data"]["duration"].as_str().unwrap();
    assert!(
        duration.starts_with("00:0") && duration != "00:00",
        "{duration}"
    );

    // Unknown ids, missing ids and other accounts' ids are all "not found".
    for body in [
        json!({"request": "state", "id": "999999"}),
        json!({"request": "state"}),
        json!({"request": "state", "id": "x"}),
    ] {
        assert_eq!(
            get(&server, "demo-key", body).await,
            (
                404,
                json!({"result": "error", "error_code": "ID_Not_Found"})
            )
        );
    }
    assert_eq!(
        get(&server, "other-key", json!({"request": "state", "id": id})).await,
        (
            404,
            json!({"result": "error", "error_code": "ID_Not_Found"})
        )
    );
}

#[tokio::test]
async fn daily_lists_the_days_verifications() {
    let server = Server::start(&sandbox_config(OTHER, FAST, 5)).await;
    for number in ["79990000016", "79990000017"] {
        server.send(json!({"number": number})).await;
    }
    server
        .post_raw(
            "/api/voice-password/send/",
            Some("other-key"),
            "application/json",
            json!({"number": "79991234567"}).to_string(),
        )
        .await;
    let today = (chrono::Utc::now() + chrono::Duration::hours(3))
        .format("%d.%m.%Y")
        .to_string();
    let (s, r) = get(
        &server,
        "demo-key",
        json!({"request": "daily", "date": today}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(r["rows"], "2", "{r}");
    let numbers: Vec<&str> = r["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["number"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, ["79990000016", "79990000017"]);
    assert_eq!(r["data"][0]["service"], "Flash Call");
    let (_, r) = get(
        &server,
        "demo-key",
        json!({"request": "daily", "date": "01.01.2001"}),
    )
    .await;
    assert_eq!(r, json!({"result": "ok", "rows": "0", "data": []}));
    for body in [
        json!({"request": "daily"}),
        json!({"request": "daily", "date": ""}),
        json!({"request": "daily", "date": "2020-09-11"}),
    ] {
        assert_eq!(
            get(&server, "demo-key", body).await,
            (
                400,
                json!({"result": "error", "error_code": "Date_is_Empty"})
            )
        );
    }
}

#[tokio::test]
async fn get_errors() {
    let server = Server::start(&sandbox_config(OTHER, FAST, 5)).await;
    assert_eq!(
        get(&server, "demo-key", json!({"request": "weekly"})).await,
        (
            400,
            json!({"result": "error", "error_code": "unknown_request"})
        )
    );
    assert_eq!(
        get(&server, "demo-key", json!({})).await,
        (
            400,
            json!({"result": "error", "error_code": "unknown_request"})
        )
    );
    assert_eq!(
        get(&server, "bad-key", json!({"request": "balance"})).await,
        (
            401,
            json!({"result": "error", "error_code": "authorisation_failed"})
        )
    );
    let (s, r) = server
        .post_raw(
            "/api/voice-password/get/",
            None,
            "application/json",
            json!({"security": {"apiKey": "demo-key"}, "request": "balance"}).to_string(),
        )
        .await;
    assert_eq!((s.as_u16(), r["result"].as_str()), (200, Some("ok")));
}
