-- Platform credentials (issue #15): bearer tokens for platforms that call the
-- authority directly, kept in the database instead of the static token list
-- (CREDIT_AUTH_TOKENS stays the operator's bootstrap). Created, listed, rotated
-- and revoked through CreditAdmin (role mint); every authority process sees a
-- change within its cache window (CREDIT_PLATFORM_CACHE_SECONDS).
--
-- A credential is scoped: it acts only for the organizations it names
-- (platform_credential_orgs) and, when `individuals`, for users' individual
-- balances; its roles are spend and/or read. Its caller name, which
-- reservations are scoped to, is 'platform:' || name; names are never reused
-- (a revoked credential keeps its row), so the name identifies the credential
-- in every reservation and attribution row it made.
--
-- Only a SHA-256 of each secret is stored. A rotation adds a secret and gives
-- the one before a valid_until (the grace period); the current secret has none.

CREATE TABLE platform_credentials (
    name         TEXT PRIMARY KEY,
    individuals  BOOLEAN NOT NULL DEFAULT false,
    roles        TEXT[] NOT NULL CHECK (cardinality(roles) > 0 AND roles <@ ARRAY['spend', 'read']),
    created_by   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    rotated_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);

CREATE TABLE platform_credential_orgs (
    name    TEXT NOT NULL REFERENCES platform_credentials,
    org_id  TEXT NOT NULL REFERENCES organizations,
    PRIMARY KEY (name, org_id)
);

CREATE TABLE platform_secrets (
    secret_hash  BYTEA PRIMARY KEY,
    name         TEXT NOT NULL REFERENCES platform_credentials,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    valid_until  TIMESTAMPTZ  -- NULL: the current secret; set when a rotation replaced it
);
CREATE INDEX platform_secrets_by_name ON platform_secrets (name);

-- Which caller made each charge (the reservation's caller: a static token's name,
-- or 'platform:<name>'), copied by credit_commit / credit_batch.
ALTER TABLE usage_attribution ADD COLUMN caller TEXT NOT NULL DEFAULT '';
UPDATE usage_attribution u SET caller = r.caller FROM reservations r WHERE r.reservation_id = u.reservation_id;
