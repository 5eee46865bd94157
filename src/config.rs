//! One TOML file → typed configuration. Every key, its default and its meaning are listed in
//! `docs/configuration.md`; keep the two in step.
//!
//! Values are validated while they are deserialised (money, numbers, ranges, durations), so a bad
//! value is reported with its key and line by the TOML parser itself; cross-references (a route
//! naming a backend that does not exist) are checked afterwards and reported with the line of the
//! offending key too. Loading does no I/O beyond reading the one file.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::call::machine::Timings;
use crate::call::Msisdn;
use crate::pool::{AniRange, PoolPolicy};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub timings: TimingsConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub webhooks: Webhooks,
    #[serde(default)]
    pub mcn: Mcn,
    #[serde(default)]
    pub accounts: Vec<Account>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: SocketAddr,
    /// `sqlite://path` (created if missing) or `sqlite::memory:`.
    pub database: String,
    /// Directory holding one sub-directory of prompts per language.
    pub sounds: PathBuf,
    /// How long in-flight calls may run on after SIGTERM/SIGINT before they are cut.
    pub shutdown_grace_secs: u64,
    /// UTC offset of the dates the API shows (`+03:00` for Moscow time, as the providers do).
    pub utc_offset: UtcOffset,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "127.0.0.1:8080".parse().expect("literal address"),
            database: "sqlite://callcode.db".into(),
            sounds: PathBuf::from("sounds"),
            shutdown_grace_secs: 30,
            utc_offset: UtcOffset::default(),
            max_body_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimingsConfig {
    pub flash_ring_ms: u64,
    pub answer_timeout_ms: u64,
    pub prompt_slack_ms: u64,
    pub hangup_timeout_ms: u64,
}

impl Default for TimingsConfig {
    fn default() -> Self {
        let t = Timings::default();
        TimingsConfig {
            flash_ring_ms: t.flash_ring.as_millis() as u64,
            answer_timeout_ms: t.answer_timeout.as_millis() as u64,
            prompt_slack_ms: t.prompt_slack.as_millis() as u64,
            hangup_timeout_ms: t.hangup_timeout.as_millis() as u64,
        }
    }
}

impl TimingsConfig {
    pub fn timings(&self) -> Timings {
        Timings {
            flash_ring: Duration::from_millis(self.flash_ring_ms),
            answer_timeout: Duration::from_millis(self.answer_timeout_ms),
            prompt_slack: Duration::from_millis(self.prompt_slack_ms),
            hangup_timeout: Duration::from_millis(self.hangup_timeout_ms),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    pub cooldown_secs: u64,
    pub max_calls_per_ani: u16,
    pub reject_streak: u32,
    pub reject_rate: f64,
    pub reject_rate_min_calls: u32,
    pub quarantine_secs: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        let p = PoolPolicy::default();
        PoolConfig {
            cooldown_secs: p.cooldown.as_secs(),
            max_calls_per_ani: p.max_calls_per_ani,
            reject_streak: p.reject_streak,
            reject_rate: p.reject_rate,
            reject_rate_min_calls: p.reject_rate_min_calls,
            quarantine_secs: p.quarantine.as_secs(),
        }
    }
}

impl PoolConfig {
    pub fn policy(&self) -> PoolPolicy {
        PoolPolicy {
            cooldown: Duration::from_secs(self.cooldown_secs),
            max_calls_per_ani: self.max_calls_per_ani,
            reject_streak: self.reject_streak,
            reject_rate: self.reject_rate,
            reject_rate_min_calls: self.reject_rate_min_calls,
            quarantine: Duration::from_secs(self.quarantine_secs),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Webhooks {
    /// One delivery attempt may take this long.
    pub timeout_ms: u64,
    /// First retry delay; doubles per attempt, with jitter.
    pub initial_backoff_ms: u64,
    pub max_backoff_secs: u64,
    /// A callback still undelivered after this long is given up (and counted).
    pub max_age_secs: u64,
    /// Deliveries in flight at once.
    pub concurrency: usize,
}

impl Default for Webhooks {
    fn default() -> Self {
        Webhooks {
            timeout_ms: 5000,
            initial_backoff_ms: 1000,
            max_backoff_secs: 600,
            max_age_secs: 24 * 3600,
            concurrency: 32,
        }
    }
}

/// The MCN "Password Call" dialect.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mcn {
    /// With `is_with_redirect`, how long the reply may wait for forwarding to be known.
    pub redirect_wait_ms: u64,
}

impl Default for Mcn {
    fn default() -> Self {
        Mcn {
            redirect_wait_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The account number (the providers' "ЛС"), e.g. `117793`.
    pub id: String,
    pub api_keys: Vec<String>,
    /// Opening balance, used when the account is first created in the store.
    #[serde(default)]
    pub balance: Money,
    #[serde(default = "default_currency")]
    pub currency: String,
    #[serde(default)]
    pub disabled: bool,
    /// Caller numbers of the customer's own that `voice.ani` may name.
    #[serde(default)]
    pub registered_anis: Vec<Msisdn>,
    /// ISO country codes the account may call; `*` for all.
    #[serde(default = "all_countries")]
    pub allowed_countries: Vec<String>,
    /// Numbers never to call for this account.
    #[serde(default)]
    pub spam_list: Vec<Msisdn>,
    /// MCN "Password call" webhook: where every MCN verification's final record is POSTed.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Fields the MCN webhook sends, in this order (see `api::mcn::WEBHOOK_FIELDS`); all of them
    /// when absent.
    #[serde(default)]
    pub webhook_fields: Option<Vec<String>>,
    /// Secret for the `X-Callcode-Signature` header (HMAC-SHA256 of the body) on this account's
    /// callbacks and webhooks; unsigned when absent.
    #[serde(default)]
    pub webhook_secret: Option<String>,
}

fn default_currency() -> String {
    "RUB".into()
}

fn all_countries() -> Vec<String> {
    vec!["*".into()]
}

impl Account {
    pub fn may_call(&self, country: &str) -> bool {
        self.allowed_countries
            .iter()
            .any(|c| c == "*" || c.eq_ignore_ascii_case(country))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    /// ISO country codes of destinations; `*` matches every country no other route names.
    pub countries: Vec<String>,
    pub price: Money,
    pub backend: toml::Spanned<String>,
    /// Caller-number ranges (`first-last`) or single numbers.
    pub anis: toml::Spanned<Vec<AniRange>>,
    /// Language of the voice prompts.
    #[serde(default = "default_language")]
    pub language: String,
}

fn default_language() -> String {
    "en".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: String,
    pub kind: BackendKind,
    #[serde(default)]
    pub settings: toml::Table,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Sandbox,
    Asterisk,
    Freeswitch,
}

/// An amount in hundredths of the currency unit (kopecks, cents). Written as a string or number
/// with at most two decimals: `"0.35"`, `1.5`, `100`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub i64);

impl FromStr for Money {
    type Err = String;
    /// Non-negative amounts only: a negative price would credit the account.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "`{s}` is not an amount like 0.35 (at most 15 digits, two decimals, not negative)"
            )
        };
        let t = s.trim();
        let (units, frac) = t.split_once('.').unwrap_or((t, ""));
        if units.is_empty() || !units.bytes().all(|b| b.is_ascii_digit()) || units.len() > 15 {
            return Err(bad());
        }
        if frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let units: i64 = units.parse().map_err(|_| bad())?;
        let cents: i64 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
        Ok(Money(units * 100 + cents))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", a / 100, a % 100)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            F(f64),
        }
        match Raw::deserialize(d)? {
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::I(i) => i.to_string().parse().map_err(serde::de::Error::custom),
            Raw::F(f) => format!("{f}").parse().map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for Msisdn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}")))
    }
}

impl<'de> Deserialize<'de> for AniRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}")))
    }
}

/// A fixed UTC offset written `+03:00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcOffset(pub chrono::FixedOffset);

impl Default for UtcOffset {
    fn default() -> Self {
        UtcOffset(chrono::FixedOffset::east_opt(0).expect("zero offset"))
    }
}

impl<'de> Deserialize<'de> for UtcOffset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<chrono::FixedOffset>()
            .map(UtcOffset)
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not an offset like +03:00")))
    }
}

/// A configuration error with the key and, where known, the line it is on.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses and cross-checks. The error names the key and the line.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().to_string();
            match e.span() {
                // Quote the offending line itself: it names the key the message is about.
                Some(span) => {
                    let line = line_of(text, span.start);
                    let source = text.lines().nth(line - 1).unwrap_or("").trim();
                    format!("line {line}: `{source}`: {msg}")
                }
                None => msg,
            }
        })?;
        config.validate(text)?;
        Ok(config)
    }

    fn validate(&self, text: &str) -> Result<(), String> {
        let backends: HashSet<&str> = self.backends.iter().map(|b| b.name.as_str()).collect();
        if backends.len() != self.backends.len() {
            return Err(format!(
                "line {}: backends: two backends share a name",
                find_line(text, "[[backends]]")
            ));
        }
        for (i, b) in self.backends.iter().enumerate() {
            use crate::backend::{asterisk, freeswitch, sandbox};
            let checked: Result<(), String> = match b.kind {
                BackendKind::Sandbox => {
                    backend_settings::<sandbox::SandboxSettings>(&b.settings).map(|_| ())
                }
                BackendKind::Asterisk => {
                    backend_settings::<asterisk::AsteriskSettings>(&b.settings)
                        .and_then(|s| s.validate())
                }
                BackendKind::Freeswitch => {
                    backend_settings::<freeswitch::FreeswitchSettings>(&b.settings)
                        .and_then(|s| s.validate())
                }
            };
            if let Err(e) = checked {
                return Err(format!(
                    "line {}: backends[{i}].settings: {e}",
                    nth_line(text, "[backends.settings]", i)
                ));
            }
        }
        let mut names = HashSet::new();
        let mut wildcard = 0;
        for (i, r) in self.routes.iter().enumerate() {
            if !names.insert(r.name.as_str()) {
                return Err(format!(
                    "line {}: routes[{i}].name: route `{}` is defined twice",
                    find_line(text, &format!("\"{}\"", r.name)),
                    r.name
                ));
            }
            if !backends.contains(r.backend.get_ref().as_str()) {
                return Err(format!(
                    "line {}: routes[{i}].backend: no backend is named `{}`",
                    line_of(text, r.backend.span().start),
                    r.backend.get_ref()
                ));
            }
            if r.anis.get_ref().is_empty() {
                return Err(format!(
                    "line {}: routes[{i}].anis: a route needs at least one caller number",
                    find_line(text, &format!("\"{}\"", r.name))
                ));
            }
            if let Err(e) = crate::pool::AniPool::new(r.anis.get_ref(), self.pool.policy()) {
                return Err(format!(
                    "line {}: routes[{i}].anis: {e}",
                    line_of(text, r.anis.span().start)
                ));
            }
            if r.countries.iter().any(|c| c == "*") {
                wildcard += 1;
            }
            if let Some(c) = r
                .countries
                .iter()
                .find(|c| *c != "*" && (c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase())))
            {
                return Err(format!(
                    "line {}: routes[{i}].countries: `{c}` is not an ISO country code like RU",
                    find_line(text, &format!("\"{c}\""))
                ));
            }
        }
        if wildcard > 1 {
            return Err("routes: only one route may list `*` in countries".into());
        }
        let mut keys = HashSet::new();
        let mut ids = HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            if !ids.insert(a.id.as_str()) {
                return Err(format!(
                    "line {}: accounts[{i}].id: account `{}` is defined twice",
                    find_line(text, &format!("\"{}\"", a.id)),
                    a.id
                ));
            }
            if let Some(url) = &a.webhook_url {
                let ok = reqwest::Url::parse(url)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
                if !ok {
                    return Err(format!(
                        "line {}: accounts[{i}].webhook_url: `{url}` is not an http(s) URL",
                        find_line(text, url)
                    ));
                }
            }
            for f in a.webhook_fields.iter().flatten() {
                if !crate::api::mcn::WEBHOOK_FIELDS.contains(&f.as_str()) {
                    return Err(format!(
                        "line {}: accounts[{i}].webhook_fields: unknown field `{f}`; known: {}",
                        find_line(text, &format!("\"{f}\"")),
                        crate::api::mcn::WEBHOOK_FIELDS.join(", ")
                    ));
                }
            }
            for k in &a.api_keys {
                if k.is_empty() || !keys.insert(k.as_str()) {
                    return Err(format!(
                        "line {}: accounts[{i}].api_keys: API keys must be non-empty and unique",
                        find_line(text, "api_keys")
                    ));
                }
            }
        }
        if self.timings.flash_ring_ms == 0 || self.timings.answer_timeout_ms == 0 {
            return Err(format!(
                "line {}: timings: ring and answer times must be above zero",
                find_line(text, "[timings]")
            ));
        }
        Ok(())
    }

    /// The route for a destination country: the one naming it, else the `*` route.
    pub fn route_for(&self, country: &str) -> Option<&Route> {
        self.route_index_for(country).map(|i| &self.routes[i])
    }

    /// Index into `routes` of the route for a destination country.
    pub fn route_index_for(&self, country: &str) -> Option<usize> {
        let named = |r: &Route| r.countries.iter().any(|c| c.eq_ignore_ascii_case(country));
        let wildcard = |r: &Route| r.countries.iter().any(|c| c == "*");
        self.routes
            .iter()
            .position(named)
            .or_else(|| self.routes.iter().position(wildcard))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// A backend's `[backends.settings]` as its kind's settings type; the error is serde's message
/// (it names the key).
pub fn backend_settings<S: serde::de::DeserializeOwned>(table: &toml::Table) -> Result<S, String> {
    S::deserialize(toml::Value::Table(table.clone())).map_err(|e| e.message().trim().to_string())
}

/// The line of the `n`th occurrence of `needle` (the first when there are fewer).
fn nth_line(text: &str, needle: &str, n: usize) -> usize {
    text.match_indices(needle)
        .nth(n)
        .map_or_else(|| find_line(text, needle), |(o, _)| line_of(text, o))
}

fn find_line(text: &str, needle: &str) -> usize {
    text.find(needle).map_or(0, |o| line_of(text, o))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SANDBOX: &str = include_str!("../examples/sandbox.toml");

    #[test]
    fn the_shipped_sandbox_config_loads() {
        let c = Config::parse(SANDBOX).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        let acct = &c.accounts[0];
        assert_eq!(acct.id, "117793");
        assert_eq!(acct.api_keys, vec!["demo-key".to_string()]);
        assert_eq!(acct.balance, Money(10000));
        assert_eq!(acct.registered_anis[0].to_string(), "74959999999");
        assert_eq!(c.route_for("RU").unwrap().name, "ru");
        assert_eq!(c.route_for("RU").unwrap().price, Money(35));
        assert_eq!(c.route_for("DE").unwrap().name, "intl");
        assert_eq!(c.route_for("HU").unwrap().price, Money(150));
    }

    #[test]
    fn money_parses_and_prints() {
        assert_eq!("0.35".parse::<Money>().unwrap(), Money(35));
        assert_eq!("1.5".parse::<Money>().unwrap(), Money(150));
        assert_eq!("100".parse::<Money>().unwrap(), Money(10000));
        assert_eq!(Money(35).to_string(), "0.35");
        assert_eq!(Money(-5).to_string(), "-0.05");
        // Whole numbers go through the same checks as strings: no overflow, no negatives.
        let c: Result<Config, _> = Config::parse(&SANDBOX.replacen(
            "balance = \"100.00\"",
            "balance = 999999999999999999",
            1,
        ));
        assert!(c.is_err());
        let c: Result<Config, _> =
            Config::parse(&SANDBOX.replacen("price = \"0.35\"", "price = -1", 1));
        assert!(c.is_err());
        let c = Config::parse(&SANDBOX.replacen("price = \"0.35\"", "price = 2", 1)).unwrap();
        assert_eq!(c.routes[0].price, Money(200));
        assert_eq!(Money(10000).to_string(), "100.00");
        for bad in [
            "",
            "1.234",
            "abc",
            "1,5",
            ".5",
            "1e3",
            "-0.35",
            "9999999999999999",
        ] {
            assert!(bad.parse::<Money>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_value_names_its_key_and_line() {
        let text = SANDBOX.replacen("price = \"0.35\"", "price = \"0,35\"", 1);
        let err = Config::parse(&text).unwrap_err();
        let line = find_line(&text, "\"0,35\"");
        assert!(err.contains(&format!("line {line}")), "{err}");
        assert!(err.contains("0,35"), "{err}");
    }

    #[test]
    fn an_unknown_key_names_its_line() {
        let text = SANDBOX.replacen("[timings]", "[timings]\nflash_ring = 5", 1);
        let err = Config::parse(&text).unwrap_err();
        let line = find_line(&text, "flash_ring = 5");
        assert!(err.contains(&format!("line {line}")), "{err}");
        assert!(err.contains("flash_ring"), "{err}");
    }

    #[test]
    fn an_unknown_backend_names_the_route_key_and_line() {
        let text = SANDBOX.replacen("backend = \"sandbox\"", "backend = \"nowhere\"", 1);
        let err = Config::parse(&text).unwrap_err();
        let line = find_line(&text, "\"nowhere\"");
        assert!(
            err.contains(&format!("line {line}: routes[0].backend")),
            "{err}"
        );
    }

    #[test]
    fn a_bad_ani_range_names_its_line() {
        let text = SANDBOX.replacen("74951090000-74951099999", "74951099999-7495109", 1);
        let err = Config::parse(&text).unwrap_err();
        let line = find_line(&text, "74951099999-7495109");
        assert!(err.contains(&format!("line {line}")), "{err}");
    }

    #[test]
    fn overlapping_ani_ranges_name_their_line() {
        let text = SANDBOX.replacen(
            "anis = [\"3612340000-3612349999\"]",
            "anis = [\"3612340000-3612349999\", \"3612340005\"]",
            1,
        );
        let err = Config::parse(&text).unwrap_err();
        let line = find_line(&text, "\"3612340005\"");
        assert!(
            err.contains(&format!("line {line}: routes[1].anis")),
            "{err}"
        );
    }

    #[test]
    fn bad_backend_settings_are_caught_by_check_config() {
        let text = SANDBOX.replacen("ring_after_ms = 200", "ring_after = 200", 1);
        let err = Config::parse(&text).unwrap_err();
        assert!(err.contains("backends[0].settings"), "{err}");
        assert!(err.contains("ring_after"), "{err}");
    }

    #[test]
    fn the_shipped_asterisk_config_loads_and_its_settings_are_checked() {
        const ASTERISK: &str = include_str!("../examples/asterisk.toml");
        let c = Config::parse(ASTERISK).unwrap();
        assert_eq!(c.backends[0].kind, BackendKind::Asterisk);
        let s = crate::backend::asterisk::AsteriskSettings::deserialize(toml::Value::Table(
            c.backends[0].settings.clone(),
        ))
        .unwrap();
        assert_eq!(s.servers[0].address.to_string(), "127.0.0.1:5038");
        assert_eq!(
            s.servers[0].auth,
            crate::backend::asterisk::client::AuthMethod::Md5
        );
        assert_eq!(s.servers[0].events, "call,user");
        assert_eq!(s.fastagi.listen.to_string(), "127.0.0.1:4573");

        let text = ASTERISK.replacen("address = ", "adress = ", 1);
        let err = Config::parse(&text).unwrap_err();
        let line = find_line(&text, "[backends.settings]");
        assert!(
            err.contains(&format!("line {line}: backends[0].settings")),
            "{err}"
        );
        assert!(err.contains("adress"), "{err}");
        let text = ASTERISK.replacen("auth = \"md5\"", "auth = \"sha1\"", 1);
        assert!(Config::parse(&text).unwrap_err().contains("sha1"));
        let text = ASTERISK.replacen("\"callcode-out\"", "\"bad context\"", 1);
        let err = Config::parse(&text).unwrap_err();
        assert!(err.contains("flash_context"), "{err}");
        let no_servers = &ASTERISK[..ASTERISK.find("[[backends.settings.servers]]").unwrap()];
        let err = Config::parse(no_servers).unwrap_err();
        assert!(err.contains("at least one Asterisk server"), "{err}");
    }

    #[test]
    fn bad_freeswitch_settings_name_their_key_and_line() {
        let fs = |settings: &str| {
            format!(
                "{SANDBOX}\n[[backends]]\nname = \"fs\"\nkind = \"freeswitch\"\n[backends.settings]\n{settings}\n[[backends.settings.servers]]\naddress = \"127.0.0.1:8021\"\npassword = \"pw\"\n"
            )
        };
        let good = fs("endpoint = \"sofia/gateway/gw/{number}\"\nsounds_dir = \"/s\"");
        Config::parse(&good).unwrap();
        let line = nth_line(&good, "[backends.settings]", 1);
        for (bad, key) in [
            ("endpoint = \"sofia/gateway/gw/{number}\"\nsounds_dir = \"/s\"\nring = 1", "ring"),
            ("endpoint = \"sofia/gateway/gw\"\nsounds_dir = \"/s\"", "{number}"),
            ("sounds_dir = \"/s\"", "endpoint"),
            ("endpoint = \"sofia/gateway/gw/{number}\"\nsounds_dir = \"/s\"\nanswered_calls = \"bridge\"", "bridge"),
        ] {
            let err = Config::parse(&fs(bad)).unwrap_err();
            assert!(err.contains(&format!("line {line}: backends[1].settings")), "{err}");
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn defaults_fill_an_almost_empty_file() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.server.shutdown_grace_secs, 30);
        assert_eq!(c.timings.flash_ring_ms, 4000);
        assert_eq!(c.webhooks.max_age_secs, 86400);
        assert!(c.routes.is_empty());
    }
}
