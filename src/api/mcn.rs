//! The MCN "Password Call" dialect (`../shared/seeds/README.md` §A):
//! `POST /api/protected/api/auth/passwordcall` and the account's "Password call" webhook.
//!
//! A password call is a voice call: the code is spoken on answer, and with `verification_code`
//! the caller number also ends in it. With `is_with_redirect` the reply waits (bounded) until
//! forwarding is known, and a forwarded call is dropped before the code is spoken. This module
//! only translates between the provider's JSON and the engine; errors come from one table.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::api::voicepassword::{duration_secs, format_date};
use crate::call::code::{Code, CLIENT_CODE_LEN};
use crate::call::Method;
use crate::config::Account;
use crate::engine::{CodeChoice, Dialect, Engine, Report, VerifyError, VerifyRequest};

pub const NAME: &str = "mcn";

/// Every field the webhook can carry, in its default order.
pub const WEBHOOK_FIELDS: &[&str] = &[
    "verification_call_uuid",
    "phone_number",
    "caller_number",
    "verification_code",
    "q931_status",
    "final_status",
    "reason",
    "is_redirect",
    "call_start",
    "answer_time",
    "end_time",
    "duration",
    "price",
    "account",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McnError {
    BadRequest,
    Unauthorized,
    AccountDisabled,
    InvalidPhoneNumber,
    UnknownDirection,
    DirectionNotPermitted,
    NumberInSpamList,
    InsufficientFunds,
    InvalidVerificationCode,
    NotFound,
    MethodNotAllowed,
    ServiceUnavailable,
}

/// One row per error: `error` value, HTTP status, message.
pub const ERRORS: &[(McnError, &str, u16, &str)] = &[
    (
        McnError::BadRequest,
        "bad_request",
        400,
        "the body must be a JSON object with phone_number",
    ),
    (
        McnError::Unauthorized,
        "unauthorized",
        401,
        "missing or unknown bearer token",
    ),
    (
        McnError::AccountDisabled,
        "account_disabled",
        403,
        "the account is disabled",
    ),
    (
        McnError::InvalidPhoneNumber,
        "invalid_phone_number",
        400,
        "phone_number must be digits",
    ),
    (
        McnError::UnknownDirection,
        "unknown_direction",
        400,
        "no destination country for the number",
    ),
    (
        McnError::DirectionNotPermitted,
        "direction_not_permitted",
        403,
        "calls to this country are not permitted",
    ),
    (
        McnError::NumberInSpamList,
        "number_in_spam_list",
        403,
        "the number is in the account's spam list",
    ),
    (
        McnError::InsufficientFunds,
        "insufficient_funds",
        402,
        "the balance does not cover the price",
    ),
    (
        McnError::InvalidVerificationCode,
        "invalid_verification_code",
        400,
        "verification_code must be 4 digits a caller number can end in",
    ),
    (McnError::NotFound, "not_found", 404, "no such endpoint"),
    (
        McnError::MethodNotAllowed,
        "method_not_allowed",
        405,
        "use POST",
    ),
    (
        McnError::ServiceUnavailable,
        "service_unavailable",
        503,
        "try again later",
    ),
];

impl McnError {
    fn row(self) -> &'static (McnError, &'static str, u16, &'static str) {
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

    fn from_verify(e: &VerifyError) -> McnError {
        match e {
            VerifyError::AccountDisabled => McnError::AccountDisabled,
            VerifyError::NumberMalformed => McnError::InvalidPhoneNumber,
            VerifyError::NumberUnknownDirection => McnError::UnknownDirection,
            VerifyError::NumberNotPermitted => McnError::DirectionNotPermitted,
            VerifyError::NumberInSpamList => McnError::NumberInSpamList,
            VerifyError::NotEnoughMoney => McnError::InsufficientFunds,
            VerifyError::AniNotRegistered
            | VerifyError::CodeInvalid
            | VerifyError::CodeUnavailable => McnError::InvalidVerificationCode,
            VerifyError::PoolExhausted
            | VerifyError::BackendUnavailable
            | VerifyError::ShuttingDown
            | VerifyError::Storage(_) => McnError::ServiceUnavailable,
        }
    }
}

impl IntoResponse for McnError {
    fn into_response(self) -> Response {
        metrics::counter!("callcode_api_errors_total", "dialect" => NAME, "error" => self.code())
            .increment(1);
        let body = json!({"ok": false, "error": self.code(), "message": self.row().3});
        (self.status(), axum::Json(body)).into_response()
    }
}

/// `<12 hex of the call id>_<account number>`: links the API call to its CDR.
pub fn verification_uuid(call_id: &uuid::Uuid, account_id: &str) -> String {
    let hex = call_id.simple().to_string();
    format!("{}_{account_id}", &hex[..12])
}

/// Renders the account webhook with the account's field list.
pub struct McnDialect {
    pub offset: chrono::FixedOffset,
    pub accounts: Vec<Account>,
}

impl Dialect for McnDialect {
    fn name(&self) -> &'static str {
        NAME
    }

    fn callback_body(&self, r: &Report) -> String {
        let fields: Vec<&str> = self
            .accounts
            .iter()
            .find(|a| a.id == r.account_id)
            .and_then(|a| a.webhook_fields.as_ref())
            .map(|f| f.iter().map(String::as_str).collect())
            .unwrap_or_else(|| WEBHOOK_FIELDS.to_vec());
        let date = |ms: i64| format_date(ms, self.offset, "%Y-%m-%d %H:%M:%S");
        let vocabulary = r.outcome.vocabulary();
        let mut out = Map::new();
        for f in fields {
            let v = match f {
                "verification_call_uuid" => json!(verification_uuid(&r.call_id, &r.account_id)),
                "phone_number" => json!(r.number),
                "caller_number" => json!(r.ani),
                "verification_code" => json!(r.code),
                "q931_status" => json!(r.q850),
                "final_status" => json!(vocabulary.mcn_final_status),
                "reason" => json!(vocabulary.mcn_reason),
                "is_redirect" => json!(r.redirected),
                "call_start" => json!(date(r.started_at_ms)),
                "answer_time" => json!(r.answered_at_ms.map(date)),
                "end_time" => json!(date(r.ended_at_ms)),
                "duration" => json!(duration_secs(r.duration_ms)),
                "price" => json!(r.price.to_string()),
                "account" => json!(r.account_id),
                _ => continue,
            };
            out.insert(f.to_string(), v);
        }
        Value::Object(out).to_string()
    }
}

const FIELDS: &[&str] = &["phone_number", "verification_code", "is_with_redirect"];

/// `POST /api/protected/api/auth/passwordcall`
pub async fn passwordcall(
    State(engine): State<Engine>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match passwordcall_inner(&engine, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn passwordcall_inner(
    engine: &Engine,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, McnError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(McnError::Unauthorized)?;
    let account = engine.account_by_key(token).ok_or(McnError::Unauthorized)?;
    if account.disabled {
        return Err(McnError::AccountDisabled);
    }
    let map = super::json_object(headers, body).ok_or(McnError::BadRequest)?;
    if map.keys().any(|k| !FIELDS.contains(&k.as_str())) {
        return Err(McnError::BadRequest);
    }
    let number = match map.get("phone_number") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(McnError::InvalidPhoneNumber),
    };
    if !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(McnError::InvalidPhoneNumber);
    }
    let code = match map.get("verification_code") {
        None | Some(Value::Null) => CodeChoice::AniSuffix {
            len: CLIENT_CODE_LEN,
        },
        Some(Value::String(s)) => CodeChoice::OnAni(
            Code::parse_client(s.trim()).map_err(|_| McnError::InvalidVerificationCode)?,
        ),
        Some(Value::Number(n)) => CodeChoice::OnAni(
            Code::parse_client(&n.to_string()).map_err(|_| McnError::InvalidVerificationCode)?,
        ),
        Some(_) => return Err(McnError::InvalidVerificationCode),
    };
    let with_redirect = match map.get("is_with_redirect") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s == "true" || s == "1" => true,
        Some(Value::String(s)) if s == "false" || s == "0" => false,
        Some(Value::Number(n)) if n.as_u64() == Some(1) => true,
        Some(Value::Number(n)) if n.as_u64() == Some(0) => false,
        Some(_) => return Err(McnError::BadRequest),
    };
    let accepted = engine
        .verify(VerifyRequest {
            callback_url: account.webhook_url.clone(),
            account: account.clone(),
            dialect: NAME,
            number,
            method: Method::Voice,
            code,
            ani: None,
            repeat: false,
            check_redirect: with_redirect,
            watch_redirect: with_redirect,
        })
        .await
        .map_err(|e| McnError::from_verify(&e))?;
    let is_redirect = match accepted.redirect {
        Some(rx) => {
            let wait = std::time::Duration::from_millis(engine.config().mcn.redirect_wait_ms);
            matches!(tokio::time::timeout(wait, rx).await, Ok(Ok(true)))
        }
        None => false,
    };
    let body = json!({
        "ok": true,
        "caller_number": accepted.ani.to_string(),
        "verification_code": accepted.code.to_string(),
        "verification_uuid": verification_uuid(&accepted.call_id, &account.id),
        "is_redirect": is_redirect,
    });
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

pub async fn method_not_allowed() -> Response {
    McnError::MethodNotAllowed.into_response()
}

pub async fn unknown() -> Response {
    McnError::NotFound.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::Outcome;
    use crate::config::Money;

    #[test]
    fn error_rows() {
        let expect = [
            (McnError::BadRequest, "bad_request", 400),
            (McnError::Unauthorized, "unauthorized", 401),
            (McnError::AccountDisabled, "account_disabled", 403),
            (McnError::InvalidPhoneNumber, "invalid_phone_number", 400),
            (McnError::UnknownDirection, "unknown_direction", 400),
            (
                McnError::DirectionNotPermitted,
                "direction_not_permitted",
                403,
            ),
            (McnError::NumberInSpamList, "number_in_spam_list", 403),
            (McnError::InsufficientFunds, "insufficient_funds", 402),
            (
                McnError::InvalidVerificationCode,
                "invalid_verification_code",
                400,
            ),
            (McnError::NotFound, "not_found", 404),
            (McnError::MethodNotAllowed, "method_not_allowed", 405),
            (McnError::ServiceUnavailable, "service_unavailable", 503),
        ];
        assert_eq!(expect.len(), ERRORS.len());
        for (e, code, status) in expect {
            assert_eq!((e.code(), e.status().as_u16()), (code, status));
        }
    }

    #[test]
    fn verification_uuid_is_12_hex_and_the_account() {
        let id = uuid::Uuid::parse_str("da59bda0-a1bb-4c4d-9e9f-000000000000").unwrap();
        assert_eq!(verification_uuid(&id, "117793"), "da59bda0a1bb_117793");
    }

    fn report(outcome: Outcome) -> Report {
        Report {
            verification_id: 7,
            call_id: uuid::Uuid::parse_str("da59bda0-a1bb-4c4d-9e9f-000000000000").unwrap(),
            account_id: "117793".into(),
            number: "79777777777".into(),
            ani: "74951091251".into(),
            code: "1251".into(),
            price: Money(35),
            outcome,
            q850: Some(17),
            sip_status: Some(486),
            redirected: false,
            started_at_ms: 1_580_645_928_000,
            answered_at_ms: None,
            ended_at_ms: 1_580_645_931_000,
            duration_ms: 0,
        }
    }

    fn account(fields: Option<Vec<&str>>) -> Account {
        let mut a: Account = toml::from_str("id = \"117793\"\napi_keys = [\"k\"]").unwrap();
        a.webhook_fields = fields.map(|f| f.into_iter().map(String::from).collect());
        a
    }

    #[test]
    fn webhook_sends_the_configured_fields_in_order() {
        let d = McnDialect {
            offset: chrono::FixedOffset::east_opt(3 * 3600).unwrap(),
            accounts: vec![account(Some(vec![
                "final_status",
                "q931_status",
                "verification_call_uuid",
            ]))],
        };
        let body: Value = serde_json::from_str(&d.callback_body(&report(Outcome::Busy))).unwrap();
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["final_status", "q931_status", "verification_call_uuid"]
        );
        assert_eq!(body["final_status"], "CANCEL");
        assert_eq!(body["q931_status"], 17);
        assert_eq!(body["verification_call_uuid"], "da59bda0a1bb_117793");
    }

    #[test]
    fn webhook_defaults_to_every_field() {
        let d = McnDialect {
            offset: chrono::FixedOffset::east_opt(3 * 3600).unwrap(),
            accounts: vec![account(None)],
        };
        let body: Value =
            serde_json::from_str(&d.callback_body(&report(Outcome::Unreachable))).unwrap();
        assert_eq!(body.as_object().unwrap().len(), WEBHOOK_FIELDS.len());
        assert_eq!(body["reason"], "unreachable");
        assert_eq!(body["call_start"], "2020-02-02 15:18:48");
        assert_eq!(body["answer_time"], Value::Null);
        assert_eq!(body["phone_number"], "79777777777");
    }
}
