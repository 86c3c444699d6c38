-- The money model of the credit authority. Amounts are millicredits (BIGINT).
--
-- Accounts that can be spent from are member allocations (org_id, user_id)
-- and individual balances (user_id). Each caches limit, used and held; the
-- ledger holds every movement, and the cached columns always equal the sums
-- of their ledger entries. An organization's pool caches its total (sum of
-- top-ups) and allocated (sum of member allocation limits); it is never
-- written on the hot path.
--
-- Every org-scoped table carries org_id in its primary key, so it can be
-- distributed by org (Citus) when one primary is not enough.

CREATE TABLE users (
    user_id       TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL DEFAULT '',
    email         TEXT NOT NULL DEFAULT '',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE organizations (
    org_id      TEXT PRIMARY KEY,
    name        TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE SEQUENCE member_join_seq;

CREATE TABLE org_members (
    org_id      TEXT NOT NULL REFERENCES organizations,
    user_id     TEXT NOT NULL REFERENCES users,
    role        TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    is_default  BOOLEAN NOT NULL DEFAULT false,
    joined_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    join_seq    BIGINT NOT NULL DEFAULT nextval('member_join_seq'),
    PRIMARY KEY (org_id, user_id)
);
-- Funding resolution: a user's orgs, default first, then in joining order.
CREATE INDEX org_members_by_user ON org_members (user_id, is_default DESC, join_seq);
CREATE UNIQUE INDEX org_members_one_default ON org_members (user_id) WHERE is_default;

CREATE TABLE org_pools (
    org_id        TEXT PRIMARY KEY REFERENCES organizations,
    total_mc      BIGINT NOT NULL DEFAULT 0 CHECK (total_mc >= 0),
    allocated_mc  BIGINT NOT NULL DEFAULT 0 CHECK (allocated_mc >= 0),
    CONSTRAINT pool_allocations_fit CHECK (allocated_mc <= total_mc)
);

CREATE TABLE pool_top_ups (
    org_id              TEXT NOT NULL REFERENCES organizations,
    top_up_id           BIGSERIAL,
    amount_mc           BIGINT NOT NULL CHECK (amount_mc > 0),
    purchase_reference  TEXT NOT NULL,
    purchase_amount     NUMERIC(20, 4),
    purchase_currency   TEXT NOT NULL DEFAULT '',
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, top_up_id),
    UNIQUE (org_id, purchase_reference)
);

-- A member's cap inside the pool. used + held <= limit except after flagged
-- overruns and late commits.
CREATE TABLE allocations (
    org_id      TEXT NOT NULL REFERENCES organizations,
    user_id     TEXT NOT NULL REFERENCES users,
    limit_mc    BIGINT NOT NULL DEFAULT 0 CHECK (limit_mc >= 0),
    used_mc     BIGINT NOT NULL DEFAULT 0 CHECK (used_mc >= 0),
    held_mc     BIGINT NOT NULL DEFAULT 0 CHECK (held_mc >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);

-- Credits of a user who belongs to no organization.
CREATE TABLE individual_balances (
    user_id     TEXT PRIMARY KEY REFERENCES users,
    limit_mc    BIGINT NOT NULL DEFAULT 0 CHECK (limit_mc >= 0),
    used_mc     BIGINT NOT NULL DEFAULT 0 CHECK (used_mc >= 0),
    held_mc     BIGINT NOT NULL DEFAULT 0 CHECK (held_mc >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE individual_grants (
    user_id     TEXT NOT NULL REFERENCES users,
    grant_id    BIGSERIAL,
    amount_mc   BIGINT NOT NULL CHECK (amount_mc > 0),
    reference   TEXT,
    reason      TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, grant_id),
    UNIQUE (user_id, reference)
);

-- A hold, and its outcome. (caller, request_id) is the idempotency record of
-- Reserve; request_hash fingerprints the arguments it was made with.
CREATE TABLE reservations (
    reservation_id  UUID PRIMARY KEY,
    caller          TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    request_hash    BYTEA NOT NULL,
    user_id         TEXT NOT NULL REFERENCES users,
    funding_kind    TEXT NOT NULL CHECK (funding_kind IN ('org', 'individual')),
    org_id          TEXT REFERENCES organizations,
    amount_mc       BIGINT NOT NULL CHECK (amount_mc > 0),
    status          TEXT NOT NULL DEFAULT 'held'
                    CHECK (status IN ('held', 'committed', 'released', 'expired')),
    service_type    TEXT NOT NULL DEFAULT '',
    service_name    TEXT NOT NULL DEFAULT '',
    metadata        JSONB NOT NULL DEFAULT '{}',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at      TIMESTAMPTZ NOT NULL,
    finalized_at    TIMESTAMPTZ,
    charged_mc      BIGINT CHECK (charged_mc >= 0),
    overrun         BOOLEAN NOT NULL DEFAULT false,
    late            BOOLEAN NOT NULL DEFAULT false,
    release_reason  TEXT NOT NULL DEFAULT '',
    UNIQUE (caller, request_id),
    CHECK ((funding_kind = 'org') = (org_id IS NOT NULL)),
    CHECK ((status = 'committed') = (charged_mc IS NOT NULL))
);
-- The sweeper's work list.
CREATE INDEX reservations_open_by_expiry ON reservations (expires_at) WHERE status = 'held';

-- One row per committed reservation: who spent what, where, on which model.
CREATE TABLE usage_attribution (
    attribution_id    BIGSERIAL PRIMARY KEY,
    reservation_id    UUID NOT NULL UNIQUE REFERENCES reservations,
    org_id            TEXT REFERENCES organizations,
    user_id           TEXT NOT NULL REFERENCES users,
    funding_kind      TEXT NOT NULL CHECK (funding_kind IN ('org', 'individual')),
    service_type      TEXT NOT NULL,
    service_name      TEXT NOT NULL,
    credits_used      BIGINT NOT NULL CHECK (credits_used >= 0),
    request_id        TEXT NOT NULL,
    request_metadata  JSONB NOT NULL DEFAULT '{}',
    overrun           BOOLEAN NOT NULL DEFAULT false,
    late              BOOLEAN NOT NULL DEFAULT false,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX usage_by_org_time ON usage_attribution (org_id, created_at);
CREATE INDEX usage_by_user_time ON usage_attribution (user_id, created_at);

-- Append-only record of every movement. account is 'pool' (org_id),
-- 'allocation' (org_id, user_id) or 'individual' (user_id).
CREATE TABLE ledger_entries (
    entry_id        BIGSERIAL PRIMARY KEY,
    account         TEXT NOT NULL CHECK (account IN ('pool', 'allocation', 'individual')),
    org_id          TEXT REFERENCES organizations,
    user_id         TEXT REFERENCES users,
    kind            TEXT NOT NULL CHECK (kind IN ('top_up', 'allocation', 'grant', 'hold',
                                                  'release', 'expiry', 'charge', 'adjustment')),
    delta_limit_mc  BIGINT NOT NULL DEFAULT 0,
    delta_used_mc   BIGINT NOT NULL DEFAULT 0,
    delta_held_mc   BIGINT NOT NULL DEFAULT 0,
    reservation_id  UUID REFERENCES reservations,
    note            TEXT NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((account = 'pool') = (user_id IS NULL)),
    CHECK ((account = 'individual') = (org_id IS NULL))
);
CREATE INDEX ledger_by_account ON ledger_entries (account, org_id, user_id);
CREATE INDEX ledger_by_reservation ON ledger_entries (reservation_id) WHERE reservation_id IS NOT NULL;

CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only';
END $$;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();

-- API keys: only a SHA-256 of the secret is stored.
CREATE TABLE api_keys (
    key_id      TEXT PRIMARY KEY,
    secret_hash BYTEA NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users,
    org_id      TEXT REFERENCES organizations,
    kind        TEXT NOT NULL CHECK (kind IN ('user', 'service')),
    name        TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ,
    CHECK (kind = 'user' OR org_id IS NOT NULL)
);
CREATE INDEX api_keys_by_user ON api_keys (user_id);
CREATE INDEX api_keys_by_org ON api_keys (org_id) WHERE org_id IS NOT NULL;
