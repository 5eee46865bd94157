//! Callback delivery from the durable outbox: at-least-once, with exponential backoff and jitter,
//! for a bounded time.
//!
//! Callbacks are written to the outbox in the same transaction as the call's final status (see
//! `store`), so a crash loses none; this worker only reads due rows, POSTs them and records the
//! attempt. Each request carries a stable `X-Callcode-Delivery` id so receivers can drop
//! duplicates. It knows nothing about dialects: the body was rendered when the call ended.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Webhooks;
use crate::engine::Clock;
use crate::store::{DueDelivery, Store};

/// Header carrying the delivery id, identical on every retry of the same callback.
pub const DELIVERY_HEADER: &str = "X-Callcode-Delivery";
/// Header carrying `sha256=<hex HMAC-SHA256 of the body>` for accounts with a webhook secret.
pub const SIGNATURE_HEADER: &str = "X-Callcode-Signature";

/// The signature header's value for `body` under `secret`.
pub fn sign(secret: &str, body: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Header carrying the attempt number (1 for the first).
pub const ATTEMPT_HEADER: &str = "X-Callcode-Attempt";

pub struct Worker {
    store: Store,
    http: reqwest::Client,
    settings: Webhooks,
    clock: Clock,
    wake: Arc<Notify>,
}

/// Delay before retry number `attempt` (1-based): `initial · 2^(attempt-1)`, capped, with ±20 %
/// jitter so a receiver that comes back is not hit by every sender at once.
pub fn backoff(settings: &Webhooks, attempt: u32, rng: &mut impl Rng) -> Duration {
    let base = settings.initial_backoff_ms.max(1) as f64
        * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
    let capped = base.min(settings.max_backoff_secs as f64 * 1000.0);
    let jitter = rng.random_range(0.8..=1.2);
    Duration::from_millis((capped * jitter) as u64)
}

impl Worker {
    pub fn new(store: Store, settings: Webhooks, clock: Clock, wake: Arc<Notify>) -> Worker {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .user_agent(concat!("callcode/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds with static settings");
        Worker {
            store,
            http,
            settings,
            clock,
            wake,
        }
    }

    /// Runs until `stop` is cancelled, then lets deliveries in flight finish.
    pub async fn run(self, stop: CancellationToken) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.settings.concurrency.max(1)));
        let lease_ms = (this.settings.timeout_ms as i64) * 2 + 1000;
        loop {
            let now = this.clock.now_ms();
            let due = match this.store.due_deliveries(now, lease_ms, 256).await {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "cannot read the webhook outbox");
                    Vec::new()
                }
            };
            let got = due.len();
            for d in due {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let this = this.clone();
                tokio::spawn(async move {
                    this.deliver(d).await;
                    drop(permit);
                });
            }
            if got == 256 {
                continue;
            }
            let sleep_ms = match this.store.next_delivery_at().await {
                Ok(Some(at)) => (at - this.clock.now_ms()).clamp(10, 1000),
                _ => 1000,
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = this.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64)) => {}
            }
        }
        // Let in-flight deliveries end (each is bounded by the request timeout).
        let _ = permits
            .acquire_many(this.settings.concurrency.max(1) as u32)
            .await;
        info!("webhook worker stopped");
    }

    async fn deliver(&self, d: DueDelivery) {
        let attempt = d.attempts + 1;
        let mut request = self.http.post(&d.url);
        if let Some(sig) = &d.signature {
            request = request.header(SIGNATURE_HEADER, sig);
        }
        let result = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(DELIVERY_HEADER, &d.delivery_id)
            .header(ATTEMPT_HEADER, attempt.to_string())
            .body(d.body.clone())
            .send()
            .await;
        let now = self.clock.now_ms();
        let error = match result {
            Ok(resp) if resp.status().is_success() => {
                metrics::counter!("callcode_webhook_attempts_total", "result" => "delivered")
                    .increment(1);
                debug!(delivery = %d.delivery_id, attempt, "callback delivered");
                if let Err(e) = self.store.delivered(d.id, now).await {
                    warn!(error = %e, "callback delivered but not marked; it may be sent again");
                }
                return;
            }
            Ok(resp) => format!("HTTP {}", resp.status().as_u16()),
            Err(e) => format!("{e}"),
        };
        metrics::counter!("callcode_webhook_attempts_total", "result" => "failed").increment(1);
        let expired = now - d.created_at_ms >= (self.settings.max_age_secs as i64) * 1000;
        let next = (!expired).then(|| {
            now + backoff(&self.settings, attempt as u32, &mut rand::rng()).as_millis() as i64
        });
        if next.is_none() {
            metrics::counter!("callcode_webhook_given_up_total").increment(1);
            warn!(delivery = %d.delivery_id, url = %d.url, attempt, %error, "callback given up");
        } else {
            debug!(delivery = %d.delivery_id, attempt, %error, "callback failed; will retry");
        }
        if let Err(e) = self.store.delivery_failed(d.id, &error, next, now).await {
            warn!(error = %e, "cannot record a failed callback attempt");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", "what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let s = Webhooks {
            initial_backoff_ms: 1000,
            max_backoff_secs: 60,
            ..Webhooks::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        for (attempt, base) in [(1u32, 1000u64), (2, 2000), (3, 4000), (6, 32000)] {
            let d = backoff(&s, attempt, &mut rng).as_millis() as u64;
            assert!(
                d >= base * 8 / 10 && d <= base * 12 / 10,
                "attempt {attempt}: {d}"
            );
        }
        for attempt in [7, 20, 1000] {
            let d = backoff(&s, attempt, &mut rng).as_millis() as u64;
            assert!((48_000..=72_000).contains(&d), "attempt {attempt}: {d}");
        }
    }
}
