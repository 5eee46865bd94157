//! Persistence: accounts and balances, verifications, call records and the webhook outbox.
//!
//! SQLite in WAL mode is the embedded default; the schema (`migrations/`) is portable SQL so a
//! PostgreSQL store can follow behind the same methods. Every method is one transaction: a
//! verification and its charge land together or not at all, and a call's final status, its call
//! record and its callback land together. Nothing here knows about HTTP dialects or PBXs.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::config::Money;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unknown account {0}")]
    UnknownAccount(String),
    #[error("balance too low")]
    NotEnoughMoney,
}

/// A verification about to be accepted.
#[derive(Debug, Clone)]
pub struct NewVerification {
    pub call_id: String,
    pub account_id: String,
    pub dialect: &'static str,
    pub method: &'static str,
    pub number: String,
    pub country: String,
    pub ani: String,
    pub code: String,
    pub repeat: bool,
    pub check_redirect: bool,
    pub route: String,
    pub backend: String,
    pub price: Money,
    pub callback_url: Option<String>,
    pub created_at_ms: i64,
}

/// A verification as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub id: i64,
    pub call_id: String,
    pub account_id: String,
    pub dialect: String,
    pub method: String,
    pub number: String,
    pub ani: String,
    pub code: String,
    pub price: Money,
    pub callback_url: Option<String>,
    pub state: String,
    pub outcome: Option<String>,
    pub redirected: bool,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    pub repeat: bool,
    pub check_redirect: bool,
    pub route: String,
}

/// The end of a call: verification status, call record and optional callback, written together.
#[derive(Debug, Clone)]
pub struct Finish {
    pub verification_id: i64,
    pub call_id: String,
    pub backend: String,
    pub ani: String,
    pub destination: String,
    pub outcome: &'static str,
    pub q850: u16,
    pub sip_status: Option<u16>,
    pub ended_by: &'static str,
    pub redirected: bool,
    pub redirect_to: Option<String>,
    pub prompts_played: u16,
    pub hangup_unconfirmed: bool,
    pub started_at_ms: i64,
    pub progress_at_ms: Option<i64>,
    pub answered_at_ms: Option<i64>,
    pub ended_at_ms: i64,
    pub duration_ms: i64,
    pub callback: Option<OutboxItem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub delivery_id: String,
    pub url: String,
    pub body: String,
    /// `sha256=<hex>` of the body under the account's webhook secret, when it has one.
    pub signature: Option<String>,
}

/// A callback due for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    pub id: i64,
    pub delivery_id: String,
    pub url: String,
    pub body: String,
    pub attempts: i64,
    pub created_at_ms: i64,
    pub signature: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Store {
    /// Readers: several connections (WAL lets them run beside the writer).
    read: SqlitePool,
    /// The one writer connection. SQLite admits one writer at a time; queueing writers here, in
    /// the async pool, is fairer and much faster than letting them collide on the database lock
    /// and back off inside SQLite's busy handler.
    write: SqlitePool,
}

const VERIFICATION_COLUMNS: &str = "id, call_id, account_id, dialect, method, number, ani, code, \
     price, callback_url, state, outcome, redirected, created_at, finished_at, duration_ms, \
     repeat_code, check_redirect, route";

impl Store {
    /// Opens (creating if needed) and migrates the database at `url` (`sqlite://path` or
    /// `sqlite::memory:`).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let memory = url.contains(":memory:");
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(if memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            // WAL + NORMAL: a commit survives a process crash (kill -9); only an OS crash or power
            // loss can lose the last transactions before a checkpoint.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if memory {
            // One in-memory database exists per connection: readers and writer share it.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .connect_with(options)
                .await?;
            sqlx::migrate!("./migrations").run(&pool).await?;
            return Ok(Store {
                read: pool.clone(),
                write: pool,
            });
        }
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Store { read, write })
    }

    /// Creates the account with its opening balance if it does not exist yet. An existing
    /// account keeps its balance: the config's balance is only the opening one.
    pub async fn ensure_account(
        &self,
        id: &str,
        opening: Money,
        currency: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO accounts (id, balance, currency, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET currency = excluded.currency",
        )
        .bind(id)
        .bind(opening.0)
        .bind(currency)
        .bind(now_ms)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub async fn balance(&self, account_id: &str) -> Result<(Money, String), StoreError> {
        let row = sqlx::query("SELECT balance, currency FROM accounts WHERE id = ?")
            .bind(account_id)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::UnknownAccount(account_id.to_string()))?;
        Ok((Money(row.get(0)), row.get(1)))
    }

    /// Charges the price and stores the verification in one transaction; the charge is atomic
    /// under concurrent requests (the balance check is part of the UPDATE). Returns the new id.
    pub async fn accept(&self, v: &NewVerification) -> Result<i64, StoreError> {
        let mut tx = self.write.begin().await?;
        let charged =
            sqlx::query("UPDATE accounts SET balance = balance - ? WHERE id = ? AND balance >= ?")
                .bind(v.price.0)
                .bind(&v.account_id)
                .bind(v.price.0)
                .execute(&mut *tx)
                .await?;
        if charged.rows_affected() == 0 {
            let exists = sqlx::query("SELECT 1 FROM accounts WHERE id = ?")
                .bind(&v.account_id)
                .fetch_optional(&mut *tx)
                .await?;
            return Err(match exists {
                Some(_) => StoreError::NotEnoughMoney,
                None => StoreError::UnknownAccount(v.account_id.clone()),
            });
        }
        let id: i64 = sqlx::query(
            "INSERT INTO verifications (call_id, account_id, dialect, method, number, country, ani, \
             code, repeat_code, check_redirect, route, backend, price, callback_url, state, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'accepted', ?) RETURNING id",
        )
        .bind(&v.call_id)
        .bind(&v.account_id)
        .bind(v.dialect)
        .bind(v.method)
        .bind(&v.number)
        .bind(&v.country)
        .bind(&v.ani)
        .bind(&v.code)
        .bind(v.repeat)
        .bind(v.check_redirect)
        .bind(&v.route)
        .bind(&v.backend)
        .bind(v.price.0)
        .bind(&v.callback_url)
        .bind(v.created_at_ms)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        tx.commit().await?;
        Ok(id)
    }

    /// Records a call's end: final status, call record and callback, in one transaction.
    /// Idempotent: a second finish of the same verification changes nothing.
    pub async fn finish(&self, f: &Finish) -> Result<(), StoreError> {
        self.finish_many(std::slice::from_ref(f)).await
    }

    /// Marks verifications whose call was handed to a backend, so recovery after a crash knows
    /// which ones to dial again (`accepted`) and which were cut mid-call (`dialing`).
    pub async fn mark_dialled(&self, ids: &[i64]) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        for id in ids {
            sqlx::query(
                "UPDATE verifications SET state = 'dialing' WHERE id = ? AND state = 'accepted'",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Several call ends in one transaction: the engine batches them so that finishing calls does
    /// not compete statement by statement with accepting new ones on the single writer.
    pub async fn finish_many(&self, items: &[Finish]) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        for f in items {
            finish_in(&mut tx, f).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn verification(&self, id: i64) -> Result<Option<Verification>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {VERIFICATION_COLUMNS} FROM verifications WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| verification_from_row(&r)))
    }

    /// An account's verifications created in `[from_ms, to_ms)`, oldest first.
    pub async fn verifications_between(
        &self,
        account_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<Verification>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {VERIFICATION_COLUMNS} FROM verifications \
             WHERE account_id = ? AND created_at >= ? AND created_at < ? ORDER BY id"
        ))
        .bind(account_id)
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.iter().map(verification_from_row).collect())
    }

    /// Verifications not yet final (for shutdown and recovery).
    pub async fn unfinished(&self) -> Result<Vec<Verification>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {VERIFICATION_COLUMNS} FROM verifications WHERE state <> 'final' ORDER BY id"
        ))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.iter().map(verification_from_row).collect())
    }

    /// Callbacks due now, each leased for `lease_ms` so a concurrent poll does not take it twice.
    pub async fn due_deliveries(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let mut tx = self.write.begin().await?;
        let rows = sqlx::query(
            "SELECT id, delivery_id, url, body, attempts, created_at, signature FROM outbox \
             WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= ? \
             ORDER BY next_attempt_at LIMIT ?",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let due: Vec<DueDelivery> = rows
            .iter()
            .map(|r| DueDelivery {
                id: r.get(0),
                delivery_id: r.get(1),
                url: r.get(2),
                body: r.get(3),
                attempts: r.get(4),
                created_at_ms: r.get(5),
                signature: r.get(6),
            })
            .collect();
        for d in &due {
            sqlx::query("UPDATE outbox SET next_attempt_at = ? WHERE id = ?")
                .bind(now_ms + lease_ms)
                .bind(d.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(due)
    }

    pub async fn delivered(&self, id: i64, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET delivered_at = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?")
            .bind(now_ms)
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// A failed attempt: retry at `next_attempt_ms`, or give up (`None`).
    pub async fn delivery_failed(
        &self,
        id: i64,
        error: &str,
        next_attempt_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        match next_attempt_ms {
            Some(next) => {
                sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?",
                )
                .bind(next)
                .bind(error)
                .bind(id)
                .execute(&self.write)
                .await?
            }
            None => {
                sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, failed_at = ?, last_error = ? WHERE id = ?",
                )
                .bind(now_ms)
                .bind(error)
                .bind(id)
                .execute(&self.write)
                .await?
            }
        };
        Ok(())
    }

    /// Earliest pending delivery time, to sleep until then.
    pub async fn next_delivery_at(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE delivered_at IS NULL AND failed_at IS NULL",
        )
        .fetch_one(&self.read)
        .await?;
        Ok(row.get::<Option<i64>, _>(0))
    }

    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// Records one call's end inside `tx`. Idempotent: a verification already final is left alone.
async fn finish_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    f: &Finish,
) -> Result<(), StoreError> {
    let updated = sqlx::query(
        "UPDATE verifications SET state = 'final', outcome = ?, redirected = ?, finished_at = ?, \
             duration_ms = ? WHERE id = ? AND state <> 'final'",
    )
    .bind(f.outcome)
    .bind(f.redirected)
    .bind(f.ended_at_ms)
    .bind(f.duration_ms)
    .bind(f.verification_id)
    .execute(&mut **tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(());
    }
    sqlx::query(
            "INSERT INTO call_records (call_id, verification_id, backend, ani, destination, started_at, \
             progress_at, answered_at, ended_at, q850, sip_status, ended_by, outcome, redirected, \
             redirect_to, prompts_played, hangup_unconfirmed) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&f.call_id)
        .bind(f.verification_id)
        .bind(&f.backend)
        .bind(&f.ani)
        .bind(&f.destination)
        .bind(f.started_at_ms)
        .bind(f.progress_at_ms)
        .bind(f.answered_at_ms)
        .bind(f.ended_at_ms)
        .bind(i64::from(f.q850))
        .bind(f.sip_status.map(i64::from))
        .bind(f.ended_by)
        .bind(f.outcome)
        .bind(f.redirected)
        .bind(&f.redirect_to)
        .bind(i64::from(f.prompts_played))
        .bind(f.hangup_unconfirmed)
        .execute(&mut **tx)
        .await?;
    if let Some(cb) = &f.callback {
        insert_outbox(tx, Some(f.verification_id), cb, f.ended_at_ms).await?;
    }
    Ok(())
}

async fn insert_outbox(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    verification_id: Option<i64>,
    item: &OutboxItem,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO outbox (delivery_id, verification_id, url, body, created_at, next_attempt_at, signature) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&item.delivery_id)
    .bind(verification_id)
    .bind(&item.url)
    .bind(&item.body)
    .bind(now_ms)
    .bind(now_ms)
    .bind(&item.signature)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn verification_from_row(r: &sqlx::sqlite::SqliteRow) -> Verification {
    Verification {
        id: r.get(0),
        call_id: r.get(1),
        account_id: r.get(2),
        dialect: r.get(3),
        method: r.get(4),
        number: r.get(5),
        ani: r.get(6),
        code: r.get(7),
        price: Money(r.get(8)),
        callback_url: r.get(9),
        state: r.get(10),
        outcome: r.get(11),
        redirected: r.get(12),
        created_at_ms: r.get(13),
        finished_at_ms: r.get(14),
        duration_ms: r.get(15),
        repeat: r.get(16),
        check_redirect: r.get(17),
        route: r.get(18),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_verification(price: i64) -> NewVerification {
        NewVerification {
            call_id: uuid::Uuid::new_v4().to_string(),
            account_id: "117793".into(),
            dialect: "voicepassword",
            method: "flash",
            number: "79990000001".into(),
            country: "RU".into(),
            ani: "74951091234".into(),
            code: "1234".into(),
            repeat: false,
            check_redirect: false,
            route: "ru".into(),
            backend: "sandbox".into(),
            price: Money(price),
            callback_url: Some("http://127.0.0.1:1/cb".into()),
            created_at_ms: 1_700_000_000_000,
        }
    }

    async fn store_with_balance(balance: i64) -> Store {
        let s = Store::open("sqlite::memory:").await.unwrap();
        s.ensure_account("117793", Money(balance), "RUB", 0)
            .await
            .unwrap();
        s
    }

    #[tokio::test]
    async fn accept_charges_and_stores() {
        let s = store_with_balance(100).await;
        let id = s.accept(&new_verification(35)).await.unwrap();
        assert_eq!(s.balance("117793").await.unwrap().0, Money(65));
        let v = s.verification(id).await.unwrap().unwrap();
        assert_eq!(v.state, "accepted");
        s.mark_dialled(&[id]).await.unwrap();
        assert_eq!(s.verification(id).await.unwrap().unwrap().state, "dialing");
        assert_eq!(v.code, "1234");
        assert_eq!(s.unfinished().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn accept_refuses_when_the_balance_cannot_cover_it() {
        let s = store_with_balance(50).await;
        s.accept(&new_verification(35)).await.unwrap();
        assert!(matches!(
            s.accept(&new_verification(35)).await,
            Err(StoreError::NotEnoughMoney)
        ));
        assert_eq!(s.balance("117793").await.unwrap().0, Money(15));
        assert!(matches!(
            s.balance("nobody").await,
            Err(StoreError::UnknownAccount(_))
        ));
    }

    #[tokio::test]
    async fn opening_balance_is_not_reapplied() {
        let s = store_with_balance(100).await;
        s.accept(&new_verification(35)).await.unwrap();
        s.ensure_account("117793", Money(100), "RUB", 0)
            .await
            .unwrap();
        assert_eq!(s.balance("117793").await.unwrap().0, Money(65));
    }

    #[tokio::test]
    async fn concurrent_charges_never_overdraw() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let s = Store::open(&url).await.unwrap();
        s.ensure_account("117793", Money(350), "RUB", 0)
            .await
            .unwrap();
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.accept(&new_verification(35)).await.is_ok() })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap());
        }
        assert_eq!(ok, 10);
        assert_eq!(s.balance("117793").await.unwrap().0, Money(0));
    }

    fn finish_of(id: i64, with_callback: bool) -> Finish {
        Finish {
            verification_id: id,
            call_id: "c".into(),
            backend: "sandbox".into(),
            ani: "74951091234".into(),
            destination: "79990000001".into(),
            outcome: "delivered",
            q850: 16,
            sip_status: None,
            ended_by: "us",
            redirected: false,
            redirect_to: None,
            prompts_played: 0,
            hangup_unconfirmed: false,
            started_at_ms: 1,
            progress_at_ms: Some(2),
            answered_at_ms: None,
            ended_at_ms: 5000,
            duration_ms: 0,
            callback: with_callback.then(|| OutboxItem {
                delivery_id: "d1".into(),
                url: "http://127.0.0.1:1/cb".into(),
                body: "{}".into(),
                signature: None,
            }),
        }
    }

    #[tokio::test]
    async fn finish_writes_status_record_and_callback_once() {
        let s = store_with_balance(100).await;
        let id = s.accept(&new_verification(35)).await.unwrap();
        s.finish(&finish_of(id, true)).await.unwrap();
        s.finish(&finish_of(id, true)).await.unwrap();
        let v = s.verification(id).await.unwrap().unwrap();
        assert_eq!(
            (v.state.as_str(), v.outcome.as_deref()),
            ("final", Some("delivered"))
        );
        let due = s.due_deliveries(10_000, 5_000, 10).await.unwrap();
        assert_eq!(due.len(), 1, "one callback despite two finishes");
        // Leased: a second poll inside the lease gets nothing.
        assert!(s
            .due_deliveries(10_001, 5_000, 10)
            .await
            .unwrap()
            .is_empty());
        s.delivery_failed(due[0].id, "503", Some(20_000), 10_002)
            .await
            .unwrap();
        assert!(s
            .due_deliveries(19_999, 5_000, 10)
            .await
            .unwrap()
            .is_empty());
        let again = s.due_deliveries(20_000, 5_000, 10).await.unwrap();
        assert_eq!(again[0].attempts, 1);
        s.delivered(again[0].id, 20_001).await.unwrap();
        assert_eq!(s.next_delivery_at().await.unwrap(), None);
    }
}
