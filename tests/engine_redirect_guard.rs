//! The redirect guard through the real engine and sandbox backend (the VoicePassword dialect has
//! no redirect check; the engine API is what dialects that do, like MCN, call).

mod common;

use std::sync::Arc;
use std::time::Duration;

use callcode::call::{Code, Method};
use callcode::config::Config;
use callcode::engine::{CodeChoice, Engine, VerifyRequest};
use callcode::server::{load_sounds, start_engine};
use callcode::store::Store;

async fn engine() -> Engine {
    let text = common::sandbox_config("", common::FAST, 1);
    let config = Arc::new(Config::parse(&text).expect("config"));
    let store = Store::open("sqlite::memory:").await.expect("store");
    let sounds = Arc::new(load_sounds(&config).expect("sounds"));
    start_engine(config, store, sounds).await.expect("engine").0
}

fn request(engine: &Engine, number: &str, method: Method, check_redirect: bool) -> VerifyRequest {
    // One ANI per 4-digit suffix, cooling down per destination: a code per method.
    let code = if method == Method::Flash {
        "1234"
    } else {
        "5678"
    };
    VerifyRequest {
        account: engine.account_by_key("demo-key").expect("demo account"),
        dialect: "voicepassword",
        number: number.into(),
        method,
        code: CodeChoice::OnAni(Code::parse_client(code).unwrap()),
        ani: None,
        repeat: false,
        check_redirect,
        callback_url: None,
        watch_redirect: true,
    }
}

async fn final_outcome(engine: &Engine, id: i64) -> String {
    for _ in 0..200 {
        let v = engine.store().verification(id).await.unwrap().unwrap();
        if v.state == "final" {
            return v.outcome.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("verification {id} did not finish in 10 s");
}

#[tokio::test]
async fn forwarded_calls_are_dropped_before_the_code_when_the_check_is_asked() {
    let engine = engine().await;
    for method in [Method::Flash, Method::Voice] {
        let a = engine
            .verify(request(&engine, "79990000181", method, true))
            .await
            .unwrap();
        assert_eq!(
            final_outcome(&engine, a.id).await,
            "redirected",
            "{method:?}"
        );
        let v = engine.store().verification(a.id).await.unwrap().unwrap();
        assert!(v.redirected);
        // Dropped on the forwarding signal, before the far end answered: nothing was spoken.
        assert_eq!(v.duration_ms, Some(0), "{method:?}");
    }
}

#[tokio::test]
async fn without_the_check_a_forwarded_call_goes_on_and_is_recorded() {
    let engine = engine().await;
    let a = engine
        .verify(request(&engine, "79990000181", Method::Voice, false))
        .await
        .unwrap();
    assert_eq!(final_outcome(&engine, a.id).await, "answered");
    let v = engine.store().verification(a.id).await.unwrap().unwrap();
    assert!(v.redirected);
    assert!(v.duration_ms.unwrap() > 1000, "the code was spoken: {v:?}");
}

#[tokio::test]
async fn a_guarded_call_that_is_not_forwarded_is_unaffected() {
    let engine = engine().await;
    let a = engine
        .verify(request(&engine, "79991234567", Method::Voice, true))
        .await
        .unwrap();
    assert_eq!(final_outcome(&engine, a.id).await, "answered");
    let v = engine.store().verification(a.id).await.unwrap().unwrap();
    assert!(!v.redirected);
}
