-- callcode schema. Portable SQL (SQLite and PostgreSQL): integers for money (hundredths) and times
-- (Unix milliseconds), TEXT for identifiers, no engine-specific types.

CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    balance     BIGINT NOT NULL,
    currency    TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE verifications (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id         TEXT NOT NULL UNIQUE,
    account_id      TEXT NOT NULL REFERENCES accounts(id),
    dialect         TEXT NOT NULL,
    method          TEXT NOT NULL,
    number          TEXT NOT NULL,
    country         TEXT NOT NULL,
    ani             TEXT NOT NULL,
    code            TEXT NOT NULL,
    repeat_code     INTEGER NOT NULL,
    check_redirect  INTEGER NOT NULL,
    route           TEXT NOT NULL,
    backend         TEXT NOT NULL,
    price           BIGINT NOT NULL,
    callback_url    TEXT,
    state           TEXT NOT NULL,
    outcome         TEXT,
    redirected      INTEGER NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    finished_at     BIGINT,
    duration_ms     BIGINT
);

CREATE INDEX verifications_account_created ON verifications (account_id, created_at);
CREATE INDEX verifications_unfinished ON verifications (state) WHERE state <> 'final';

CREATE TABLE call_records (
    call_id          TEXT PRIMARY KEY,
    verification_id  BIGINT NOT NULL REFERENCES verifications(id),
    backend          TEXT NOT NULL,
    ani              TEXT NOT NULL,
    destination      TEXT NOT NULL,
    started_at       BIGINT NOT NULL,
    progress_at      BIGINT,
    answered_at      BIGINT,
    ended_at         BIGINT NOT NULL,
    q850             INTEGER NOT NULL,
    sip_status       INTEGER,
    ended_by         TEXT NOT NULL,
    outcome          TEXT NOT NULL,
    redirected       INTEGER NOT NULL,
    redirect_to      TEXT,
    prompts_played   INTEGER NOT NULL,
    hangup_unconfirmed INTEGER NOT NULL
);

CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id      TEXT NOT NULL UNIQUE,
    verification_id  BIGINT REFERENCES verifications(id),
    url              TEXT NOT NULL,
    body             TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    next_attempt_at  BIGINT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    delivered_at     BIGINT,
    failed_at        BIGINT,
    last_error       TEXT
);

CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL AND failed_at IS NULL;
