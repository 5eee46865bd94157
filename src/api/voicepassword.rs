//! The VoicePassword dialect (`../shared/seeds/README.md` §B): `POST /api/voice-password/send/`
//! and its callbacks, a drop-in replacement for the provider's API.
//!
//! This module only translates: JSON in the provider's shape → `engine::VerifyRequest`, engine
//! results and errors → the provider's replies and error codes (one table, `ERRORS`), final reports
//! → the provider's callback JSON. It holds no state and never decides an outcome.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::call::cause::VOICEPASSWORD_RU_IN_PROGRESS;
use crate::call::code::{check_capacity, Code, CLIENT_CODE_LEN};
use crate::call::{Method, Msisdn, Outcome};
use crate::config::Account;
use crate::engine::{CodeChoice, Dialect, Engine, Report, VerifyError, VerifyRequest};
use crate::store::Verification;

pub const NAME: &str = "voicepassword";

/// The provider's error codes with the HTTP status we send them with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VpError {
    UnknownRequest,
    AuthorisationFailed,
    UserDisabled,
    NumberIsEmpty,
    NumberNotValid,
    NumberNotPermitted,
    NumberInSpamList,
    NotEnoughMoney,
    AniPhoneNotValid,
    CodeNotValid,
    IdNotFound,
    DateIsEmpty,
    /// Ours: the request was fine but cannot be served now (pool exhausted, PBX down, shutdown).
    ServiceUnavailable,
    /// Ours: the `sms` request, until the SMS channel exists.
    SmsNotSupported,
}

/// One row per error: code as the provider spells it, HTTP status, and a human explanation.
pub const ERRORS: &[(VpError, &str, u16, &str)] = &[
    (
        VpError::UnknownRequest,
        "unknown_request",
        400,
        "malformed request",
    ),
    (
        VpError::AuthorisationFailed,
        "authorisation_failed",
        401,
        "missing or unknown API key",
    ),
    (
        VpError::UserDisabled,
        "user_disabled",
        403,
        "the account is disabled",
    ),
    (
        VpError::NumberIsEmpty,
        "number_is_empty",
        400,
        "number missing or not a phone number",
    ),
    (
        VpError::NumberNotValid,
        "number_not_valid",
        400,
        "no direction for the number",
    ),
    (
        VpError::NumberNotPermitted,
        "number_not_permitted",
        403,
        "calls to this direction are not permitted",
    ),
    (
        VpError::NumberInSpamList,
        "number_in_spam_list",
        403,
        "the number is in the spam list",
    ),
    (
        VpError::NotEnoughMoney,
        "not_enough_money",
        402,
        "the balance does not cover the price",
    ),
    (
        VpError::AniPhoneNotValid,
        "ani_phone_not_valid",
        400,
        "ani is not registered for the account",
    ),
    (
        VpError::CodeNotValid,
        "code_not_valid",
        400,
        "code or capacity not valid",
    ),
    (
        VpError::IdNotFound,
        "ID_Not_Found",
        404,
        "no request with this id",
    ),
    (VpError::DateIsEmpty, "Date_is_Empty", 400, "date missing"),
    (
        VpError::ServiceUnavailable,
        "service_unavailable",
        503,
        "try again later",
    ),
    (
        VpError::SmsNotSupported,
        "sms_not_supported",
        400,
        "the SMS channel is not available on this server",
    ),
];

impl VpError {
    fn row(self) -> &'static (VpError, &'static str, u16, &'static str) {
        ERRORS
            .iter()
            .find(|r| r.0 == self)
            .expect("every error has a row (tested)")
    }

    pub fn code(self) -> &'static str {
        self.row().1
    }

    pub fn status(self) -> StatusCode {
        StatusCode::from_u16(self.row().2).expect("valid status in the table")
    }

    fn from_verify(e: &VerifyError) -> VpError {
        match e {
            VerifyError::AccountDisabled => VpError::UserDisabled,
            VerifyError::NumberMalformed => VpError::NumberIsEmpty,
            VerifyError::NumberUnknownDirection => VpError::NumberNotValid,
            VerifyError::NumberNotPermitted => VpError::NumberNotPermitted,
            VerifyError::NumberInSpamList => VpError::NumberInSpamList,
            VerifyError::NotEnoughMoney => VpError::NotEnoughMoney,
            VerifyError::AniNotRegistered => VpError::AniPhoneNotValid,
            VerifyError::CodeInvalid | VerifyError::CodeUnavailable => VpError::CodeNotValid,
            VerifyError::PoolExhausted
            | VerifyError::BackendUnavailable
            | VerifyError::ShuttingDown
            | VerifyError::Storage(_) => VpError::ServiceUnavailable,
        }
    }
}

impl IntoResponse for VpError {
    fn into_response(self) -> Response {
        metrics::counter!("callcode_api_errors_total", "dialect" => NAME, "error" => self.code())
            .increment(1);
        let body = json!({"result": "error", "error_code": self.code()});
        (self.status(), axum::Json(body)).into_response()
    }
}

/// Renders callbacks in the provider's shape.
pub struct VoicePassword {
    pub offset: chrono::FixedOffset,
}

impl Dialect for VoicePassword {
    fn name(&self) -> &'static str {
        NAME
    }

    fn callback_body(&self, r: &Report) -> String {
        json!({
            "id": r.verification_id.to_string(),
            "number": r.number,
            "duration": duration_secs(r.duration_ms).to_string(),
            "state": r.outcome.vocabulary().voicepassword,
            "price": r.price.to_string(),
            "date": format_date(r.started_at_ms, self.offset, "%Y-%m-%d %H:%M:%S"),
        })
        .to_string()
    }
}

/// Whole seconds of connection, rounded up: a 300 ms answered call lasted "1".
pub fn duration_secs(ms: i64) -> i64 {
    (ms.max(0) + 999) / 1000
}

pub fn format_date(unix_ms: i64, offset: chrono::FixedOffset, fmt: &str) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .unwrap_or_default()
        .with_timezone(&offset)
        .format(fmt)
        .to_string()
}

/// Shared by the handlers: the body as a JSON object and the authenticated account.
fn authenticate(
    engine: &Engine,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Map<String, Value>, Arc<Account>), VpError> {
    let map = super::json_object(headers, body).ok_or(VpError::UnknownRequest)?;
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim())
        .filter(|v| !v.is_empty());
    let from_body = map
        .get("security")
        .and_then(|s| s.get("apiKey"))
        .and_then(Value::as_str);
    let account = [from_header, from_body]
        .into_iter()
        .flatten()
        .find_map(|k| engine.account_by_key(k))
        .ok_or(VpError::AuthorisationFailed)?;
    if account.disabled {
        return Err(VpError::UserDisabled);
    }
    Ok((map, account))
}

/// A scalar the provider writes either as a string or as a number (`"capacity":"4"` or `4`).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

const SEND_FIELDS: &[&str] = &[
    "security",
    "number",
    "capacity",
    "callback_url",
    "voice",
    "flashcall",
    "sms",
];

/// `POST /api/voice-password/send/`
pub async fn send(
    State(engine): State<Engine>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match send_inner(&engine, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn send_inner(
    engine: &Engine,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, VpError> {
    let (map, account) = authenticate(engine, headers, body)?;
    if map.keys().any(|k| !SEND_FIELDS.contains(&k.as_str())) {
        return Err(VpError::UnknownRequest);
    }
    let voice = map.get("voice");
    let flash = map.get("flashcall");
    if map.contains_key("sms") {
        if voice.is_some() || flash.is_some() {
            return Err(VpError::UnknownRequest);
        }
        return Err(VpError::SmsNotSupported);
    }
    if voice.is_some() && flash.is_some() {
        return Err(VpError::UnknownRequest);
    }
    let number = match map.get("number") {
        None | Some(Value::Null) => return Err(VpError::NumberIsEmpty),
        Some(v) => scalar(v)
            .filter(|s| !s.is_empty())
            .ok_or(VpError::NumberIsEmpty)?,
    };
    let capacity = match map.get("capacity") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let n: usize = scalar(v)
                .and_then(|s| s.parse().ok())
                .ok_or(VpError::CodeNotValid)?;
            check_capacity(n).map_err(|_| VpError::CodeNotValid)?;
            Some(n)
        }
    };
    let callback_url = match map.get("callback_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => {
            let url = reqwest::Url::parse(s.trim()).map_err(|_| VpError::UnknownRequest)?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(VpError::UnknownRequest);
            }
            Some(url.to_string())
        }
        Some(_) => return Err(VpError::UnknownRequest),
    };
    let client_code = |v: Option<&Value>| -> Result<Option<Code>, VpError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let s = scalar(v).ok_or(VpError::CodeNotValid)?;
                Code::parse_client(&s)
                    .map(Some)
                    .map_err(|_| VpError::CodeNotValid)
            }
        }
    };
    // More than four digits only for a flash call whose code we generate.
    if (voice.is_some() || flash.is_some()) && capacity.is_some_and(|c| c != CLIENT_CODE_LEN) {
        return Err(VpError::CodeNotValid);
    }

    let (method, code, ani, repeat) = if let Some(v) = voice {
        let Value::Object(v) = v else {
            return Err(VpError::UnknownRequest);
        };
        if v.keys()
            .any(|k| !["code", "repeat", "ani"].contains(&k.as_str()))
        {
            return Err(VpError::UnknownRequest);
        }
        let code = client_code(v.get("code"))?;
        let repeat = match v.get("repeat") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(r) => match scalar(r).as_deref() {
                Some("0") | Some("") => false,
                Some("1") => true,
                _ => return Err(VpError::UnknownRequest),
            },
        };
        let ani = match v.get("ani") {
            None | Some(Value::Null) => None,
            Some(a) => {
                let s = scalar(a).ok_or(VpError::AniPhoneNotValid)?;
                if s.is_empty() {
                    None
                } else {
                    Some(s.parse::<Msisdn>().map_err(|_| VpError::AniPhoneNotValid)?)
                }
            }
        };
        let choice = match code {
            Some(c) => CodeChoice::Spoken(c),
            None => CodeChoice::AniSuffix {
                len: CLIENT_CODE_LEN,
            },
        };
        (Method::Voice, choice, ani, repeat)
    } else if let Some(f) = flash {
        let Value::Object(f) = f else {
            return Err(VpError::UnknownRequest);
        };
        if f.keys().any(|k| k != "code") {
            return Err(VpError::UnknownRequest);
        }
        let code = client_code(f.get("code"))?.ok_or(VpError::CodeNotValid)?;
        (Method::Flash, CodeChoice::OnAni(code), None, false)
    } else {
        let len = capacity.unwrap_or(CLIENT_CODE_LEN);
        (Method::Flash, CodeChoice::AniSuffix { len }, None, false)
    };

    let accepted = engine
        .verify(VerifyRequest {
            account,
            dialect: NAME,
            number,
            method,
            code,
            ani,
            repeat,
            check_redirect: false,
            callback_url,
            watch_redirect: false,
        })
        .await
        .map_err(|e| VpError::from_verify(&e))?;
    let body = json!({
        "result": "ok",
        "id": accepted.id.to_string(),
        "number": accepted.number.to_string(),
        "price": accepted.price.to_string(),
        "code": accepted.code.to_string(),
    });
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

const GET_FIELDS: &[&str] = &["security", "request", "id", "date"];

/// `POST /api/voice-password/get/`: `balance`, `state` (by id) and `daily` (by date).
pub async fn get(
    State(engine): State<Engine>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match get_inner(&engine, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn get_inner(
    engine: &Engine,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, VpError> {
    let (map, account) = authenticate(engine, headers, body)?;
    if map.keys().any(|k| !GET_FIELDS.contains(&k.as_str())) {
        return Err(VpError::UnknownRequest);
    }
    let offset = engine.config().server.utc_offset.0;
    let store = engine.store();
    let unavailable = |_| VpError::ServiceUnavailable;
    let body = match map.get("request").and_then(Value::as_str) {
        Some("balance") => {
            let (balance, currency) = store.balance(&account.id).await.map_err(unavailable)?;
            json!({"result": "ok", "balance": balance.to_string(), "currency": currency_name(&currency)})
        }
        Some("state") => {
            let id: i64 = map
                .get("id")
                .and_then(scalar)
                .and_then(|s| s.parse().ok())
                .ok_or(VpError::IdNotFound)?;
            let v = store
                .verification(id)
                .await
                .map_err(unavailable)?
                .filter(|v| v.account_id == account.id)
                .ok_or(VpError::IdNotFound)?;
            json!({"result": "ok", "data": statistics_row(&v, offset)})
        }
        Some("daily") => {
            let date = map
                .get("date")
                .and_then(scalar)
                .filter(|d| !d.is_empty())
                .ok_or(VpError::DateIsEmpty)?;
            let day = chrono::NaiveDate::parse_from_str(&date, "%d.%m.%Y")
                .map_err(|_| VpError::DateIsEmpty)?;
            let start = day
                .and_hms_opt(0, 0, 0)
                .and_then(|t| t.and_local_timezone(offset).single())
                .ok_or(VpError::DateIsEmpty)?
                .timestamp_millis();
            let rows = store
                .verifications_between(&account.id, start, start + 86_400_000)
                .await
                .map_err(unavailable)?;
            let data: Vec<Value> = rows.iter().map(|v| statistics_row(v, offset)).collect();
            json!({"result": "ok", "rows": data.len().to_string(), "data": data})
        }
        _ => return Err(VpError::UnknownRequest),
    };
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

/// The provider writes its currency `Rub`.
fn currency_name(code: &str) -> String {
    let mut c = code.to_ascii_lowercase();
    if let Some(first) = c.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    c
}

/// One verification as the statistics show it.
pub fn statistics_row(v: &Verification, offset: chrono::FixedOffset) -> Value {
    let secs = duration_secs(v.duration_ms.unwrap_or(0));
    let state = match v.outcome.as_deref().and_then(Outcome::from_stored) {
        Some(o) if v.state == "final" => o.vocabulary().voicepassword_ru,
        _ => VOICEPASSWORD_RU_IN_PROGRESS,
    };
    let service = match Method::from_stored(&v.method) {
        Some(Method::Flash) => "Flash Call",
        _ => "Voice Password",
    };
    json!({
        "id": v.id.to_string(),
        "number": v.number,
        "date": format_date(v.created_at_ms, offset, "%d.%m.%Y %H:%M:%S"),
        "duration": format!("{:02}:{:02}", secs / 60, secs % 60),
        "price": v.price.to_string(),
        "service": service,
        "state": state,
    })
}

/// Unknown paths and methods under this dialect's prefix.
pub async fn unknown() -> Response {
    let mut r = VpError::UnknownRequest.into_response();
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

pub async fn method_not_allowed() -> Response {
    let mut r = VpError::UnknownRequest.into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Money;

    #[test]
    fn error_rows() {
        let expect = [
            (VpError::UnknownRequest, "unknown_request", 400),
            (VpError::AuthorisationFailed, "authorisation_failed", 401),
            (VpError::UserDisabled, "user_disabled", 403),
            (VpError::NumberIsEmpty, "number_is_empty", 400),
            (VpError::NumberNotValid, "number_not_valid", 400),
            (VpError::NumberNotPermitted, "number_not_permitted", 403),
            (VpError::NumberInSpamList, "number_in_spam_list", 403),
            (VpError::NotEnoughMoney, "not_enough_money", 402),
            (VpError::AniPhoneNotValid, "ani_phone_not_valid", 400),
            (VpError::CodeNotValid, "code_not_valid", 400),
            (VpError::IdNotFound, "ID_Not_Found", 404),
            (VpError::DateIsEmpty, "Date_is_Empty", 400),
            (VpError::ServiceUnavailable, "service_unavailable", 503),
            (VpError::SmsNotSupported, "sms_not_supported", 400),
        ];
        assert_eq!(expect.len(), ERRORS.len());
        for (e, code, status) in expect {
            assert_eq!(e.code(), code);
            assert_eq!(e.status().as_u16(), status, "{code}");
            // Only "try again later" is a 5xx: nothing a client sends can cause one.
            assert!(
                e.status().is_client_error() || e == VpError::ServiceUnavailable,
                "{code}"
            );
        }
    }

    #[test]
    fn callback_has_the_provider_shape_with_string_values() {
        let d = VoicePassword {
            offset: chrono::FixedOffset::east_opt(3 * 3600).unwrap(),
        };
        let r = Report {
            verification_id: 1234,
            call_id: uuid::Uuid::nil(),
            account_id: "117793".into(),
            number: "79999999999".into(),
            ani: "74951091234".into(),
            code: "1234".into(),
            price: Money(35),
            outcome: Outcome::Delivered,
            q850: Some(16),
            sip_status: None,
            redirected: false,
            // 2020-02-02 12:18:48 UTC = 15:18:48 Moscow.
            started_at_ms: 1_580_645_928_000,
            answered_at_ms: None,
            ended_at_ms: 1_580_645_932_000,
            duration_ms: 300,
        };
        let v: Value = serde_json::from_str(&d.callback_body(&r)).unwrap();
        assert_eq!(
            v,
            json!({"id":"1234","number":"79999999999","duration":"1","state":"ANSWERED","price":"0.35","date":"2020-02-02 15:18:48"})
        );
    }

    #[test]
    fn durations_round_up_to_whole_seconds() {
        assert_eq!(duration_secs(0), 0);
        assert_eq!(duration_secs(1), 1);
        assert_eq!(duration_secs(1000), 1);
        assert_eq!(duration_secs(4001), 5);
    }
}
