-- Rate limits (issue #14): per organization, per member in an organization, per
-- API key and per individual user. Each scope has one row holding both its limits
-- and their state, so a Reserve checks and advances them in the same transaction
-- that places its hold (migrations/functions/credit_limits_*.sql):
--
-- * requests and tokens per minute: GCRA (the generic cell rate algorithm), one
--   theoretical arrival time per kind (req_tat_ns, tok_tat_ns, nanoseconds since
--   the epoch). A limit of N per minute admits a burst of N, then one every
--   60 s / N; a refused request learns exactly when it would pass.
-- * max_parallel: open_holds, the holds counted against this row and not yet
--   committed, released or expired.
-- * credits per UTC day / month (members): day_mc / month_mc, the credits held
--   or charged in the current window (day_start / month_start).
--
-- A reservation remembers the rows it was counted against (limit_ids), its
-- estimated tokens and its API key, so Commit, Release and expiry give back
-- exactly what it took, even if the limits changed since. A cleared limit keeps
-- its row (and state); holds placed before a limit existed are not counted.
--
-- Lock order, everywhere: reservation rows, then rate_limits rows by limit_id,
-- then accounts by credit_account_lock_key.

CREATE TABLE rate_limits (
    limit_id             BIGSERIAL PRIMARY KEY,
    scope_key            TEXT NOT NULL UNIQUE,  -- credit_limit_keys(): 'org:<org>', 'member:<org>:<user>', …
    scope                TEXT NOT NULL CHECK (scope IN ('org', 'member', 'key', 'individual')),
    org_id               TEXT REFERENCES organizations,
    user_id              TEXT REFERENCES users,
    key_id               TEXT REFERENCES api_keys,
    rpm                  BIGINT CHECK (rpm BETWEEN 1 AND 1000000),
    tpm                  BIGINT CHECK (tpm BETWEEN 1 AND 1000000000),
    max_parallel         BIGINT CHECK (max_parallel BETWEEN 1 AND 100000),
    credits_per_day_mc   BIGINT CHECK (credits_per_day_mc BETWEEN 1 AND 1000000000000000),
    credits_per_month_mc BIGINT CHECK (credits_per_month_mc BETWEEN 1 AND 1000000000000000),
    req_tat_ns           BIGINT NOT NULL DEFAULT 0,
    tok_tat_ns           BIGINT NOT NULL DEFAULT 0,
    open_holds           BIGINT NOT NULL DEFAULT 0 CHECK (open_holds >= 0),
    day_start            DATE,
    day_mc               BIGINT NOT NULL DEFAULT 0,
    month_start          DATE,
    month_mc             BIGINT NOT NULL DEFAULT 0,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_by           TEXT NOT NULL DEFAULT ''
);
CREATE INDEX rate_limits_by_org ON rate_limits (org_id) WHERE org_id IS NOT NULL;
CREATE INDEX rate_limits_by_user ON rate_limits (user_id) WHERE user_id IS NOT NULL;

ALTER TABLE reservations
    ADD COLUMN api_key_id       TEXT,
    ADD COLUMN estimated_tokens BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN limit_ids        BIGINT[] NOT NULL DEFAULT '{}';

-- The hot-path functions gain arguments and answer columns: their old
-- signatures go, migrations/functions/ defines the new ones.
DROP FUNCTION credit_batch(TEXT[], TEXT[], TEXT[], BYTEA[], TEXT[], TEXT[], BIGINT[], INT[], TEXT[], TEXT[],
                           JSONB[], UUID[], TEXT[]);
DROP FUNCTION credit_reserve_op(TEXT, TEXT, BYTEA, TEXT, TEXT, BIGINT, INT, TEXT, TEXT, JSONB);
DROP FUNCTION credit_commit(TEXT, UUID, BIGINT, JSONB);
