-- Money in (issue #13): credits enter only through a verified payment or an
-- operator's top-up or grant (role mint), and every row that creates them
-- names its source.
--
-- * pool_top_ups.source: 'operator' (TopUpPool) or 'payment' (a paid Stripe
--   Checkout Session, purchase_reference 'stripe:<session id>'); created_by:
--   the operator's token name, or the payment's id. individual_grants.created_by:
--   the operator. Rows written before this migration keep '' (NOT VALID: the
--   check applies to every new row).
-- * purchases: one row per Checkout Session (pending → paid → partially
--   refunded / refunded, or pending → expired). refunded_minor is the largest
--   cumulative amount_refunded seen (Stripe's charge.refunded carries the
--   cumulative figure); refunded_mc the credits taken back for it:
--   floor(credits_mc × refunded_minor / amount_minor), rounded down so that an
--   org is never charged back more than the share it was refunded.
-- * payment_events: every Stripe event id that changed something, so a
--   redelivered event is recognised.
-- * org_pools.overdrawn_mc: a refund takes its credits back from the pool
--   even when they were already allocated or spent; then the pool's
--   allocations exceed its total by overdrawn_mc (= greatest(allocated − total,
--   0), set only by a refund, shrunk by later top-ups and lower allocations)
--   and the purchase is flagged overdrawn. pool_allocations_fit allows exactly
--   that much; nothing else writes overdrawn_mc upwards, so for every other org
--   allocated_mc <= total_mc still holds. total_mc >= 0 stays: refunds never
--   take back more than the purchases added.

ALTER TABLE pool_top_ups
    ADD COLUMN source TEXT NOT NULL DEFAULT 'operator' CHECK (source IN ('operator', 'payment')),
    ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
ALTER TABLE pool_top_ups ADD CONSTRAINT pool_top_ups_name_their_creator CHECK (created_by <> '') NOT VALID;

ALTER TABLE individual_grants ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
ALTER TABLE individual_grants ADD CONSTRAINT individual_grants_name_their_creator CHECK (created_by <> '') NOT VALID;

ALTER TABLE org_pools ADD COLUMN overdrawn_mc BIGINT NOT NULL DEFAULT 0 CHECK (overdrawn_mc >= 0);
ALTER TABLE org_pools DROP CONSTRAINT pool_allocations_fit;
ALTER TABLE org_pools ADD CONSTRAINT pool_allocations_fit CHECK (allocated_mc <= total_mc + overdrawn_mc);

CREATE TABLE purchases (
    session_id      TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES organizations,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'paid', 'partially_refunded', 'refunded',
                                                    'expired')),
    credits_mc      BIGINT NOT NULL CHECK (credits_mc > 0),
    amount_minor    BIGINT NOT NULL CHECK (amount_minor > 0),
    currency        TEXT NOT NULL,
    payment_intent  TEXT,
    refunded_minor  BIGINT NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    refunded_mc     BIGINT NOT NULL DEFAULT 0 CHECK (refunded_mc >= 0 AND refunded_mc <= credits_mc),
    overdrawn       BOOLEAN NOT NULL DEFAULT false,
    created_by      TEXT NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    paid_at         TIMESTAMPTZ,
    CHECK ((status IN ('pending', 'expired')) = (paid_at IS NULL)),
    CHECK (status IN ('partially_refunded', 'refunded') OR refunded_mc = 0)
);
CREATE UNIQUE INDEX purchases_by_payment_intent ON purchases (payment_intent) WHERE payment_intent IS NOT NULL;
CREATE INDEX purchases_by_org_time ON purchases (org_id, created_at DESC);

CREATE TABLE payment_events (
    event_id    TEXT PRIMARY KEY,
    event_type  TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    session_id  TEXT,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
