-- HMAC-SHA256 signature of the body, computed when the callback is queued (per-account secret).
ALTER TABLE outbox ADD COLUMN signature TEXT;
