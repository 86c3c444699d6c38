-- Low-balance alerts. An org admin sets thresholds on the org's pool or on a
-- member's allocation (absolute millicredits, or a percent of the pool total /
-- allocation limit). A threshold is crossed when the remaining credits
-- (limit − used; holds are transient and do not count) fall to or below it.
-- Crossing is detected by the transaction of the Commit that crosses — AFTER
-- triggers on allocations — so single commits (credit_commit) and batches
-- (credit_batch) are covered alike; a crossing queues a pending alert event
-- and pg_notify()s the authority's delivery worker, which POSTs the signed
-- webhook with retries (credit_service/alerts.py). Crossing back above the
-- threshold re-arms it (a top-up or a larger allocation does that; an
-- allocation change never fires an alert by itself).
--
-- Cost on the hot path: none for an allocation nobody watches. alert_watch is
-- true only on allocations of an org with a pool threshold or with a threshold
-- on that member, and the trigger's WHEN (evaluated without calling any
-- function) tests it first. The triggers never lock a row that another
-- account's commit could hold: allocation thresholds are only written by
-- transactions holding that allocation's row lock, and pool thresholds are only
-- read here (their state is decided by the worker, see alert_checks).

-- Where an org's alerts go. The secret signs every body (HMAC-SHA256).
CREATE TABLE alert_webhooks (
    org_id      TEXT PRIMARY KEY REFERENCES organizations,
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- user_id NULL: the org's pool (remaining = total − used of all allocations);
-- else that member's allocation (remaining = limit − used).
-- kind 'absolute': value is millicredits; 'percent': value is 0 … 100 of the
-- pool total / allocation limit. state 'armed' waits for a crossing; 'fired'
-- has alerted and waits to be re-armed by the remaining going back above.
CREATE TABLE alert_thresholds (
    org_id        TEXT NOT NULL REFERENCES organizations,
    threshold_id  BIGSERIAL,
    user_id       TEXT REFERENCES users,
    kind          TEXT NOT NULL CHECK (kind IN ('absolute', 'percent')),
    value         BIGINT NOT NULL CHECK (value >= 0),
    state         TEXT NOT NULL DEFAULT 'armed' CHECK (state IN ('armed', 'fired')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    changed_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, threshold_id),
    CHECK (kind = 'absolute' OR value <= 100)
);
CREATE INDEX alert_thresholds_by_target ON alert_thresholds (org_id, user_id);

-- One row per crossing: the alert, and the state of its webhook delivery.
-- status: 'pending' (to send, at next_attempt_at), 'delivered', 'failed'
-- (gave up after the last attempt), 'no_webhook' (none configured).
CREATE TABLE alert_events (
    org_id           TEXT NOT NULL REFERENCES organizations,
    event_id         BIGSERIAL,
    threshold_id     BIGINT NOT NULL,
    user_id          TEXT,
    kind             TEXT NOT NULL,
    value            BIGINT NOT NULL,
    threshold_mc     BIGINT NOT NULL,
    limit_mc         BIGINT NOT NULL,
    remaining_mc     BIGINT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed', 'no_webhook')),
    attempts         INT NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_until      TIMESTAMPTZ,
    last_status_code INT,
    last_error       TEXT NOT NULL DEFAULT '',
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at     TIMESTAMPTZ,
    PRIMARY KEY (org_id, event_id)
);
CREATE INDEX alert_events_due ON alert_events (next_attempt_at) WHERE status = 'pending';
CREATE INDEX alert_events_by_org_time ON alert_events (org_id, created_at);

-- Every delivery attempt of an alert.
CREATE TABLE alert_deliveries (
    org_id        TEXT NOT NULL,
    event_id      BIGINT NOT NULL,
    attempt       INT NOT NULL,
    url           TEXT NOT NULL,
    status_code   INT,
    error         TEXT NOT NULL DEFAULT '',
    duration_ms   INT NOT NULL DEFAULT 0,
    attempted_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, event_id, attempt),
    FOREIGN KEY (org_id, event_id) REFERENCES alert_events
);

-- Pool thresholds to re-evaluate: written by commits (insert only, so no lock
-- is shared between accounts), consumed by the worker, which locks the
-- threshold and decides on committed data, so a crossing fires exactly once.
CREATE TABLE alert_checks (
    check_id      BIGSERIAL PRIMARY KEY,
    org_id        TEXT NOT NULL,
    threshold_id  BIGINT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Set by CreateAlertThreshold / DeleteAlertThreshold (which lock the org's
-- allocations in the hot path's order first) and for new allocations below.
ALTER TABLE allocations ADD COLUMN alert_watch BOOLEAN NOT NULL DEFAULT false;

CREATE FUNCTION credit_alert_watch_new_allocation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.alert_watch := EXISTS (SELECT 1 FROM alert_thresholds t
                                WHERE t.org_id = NEW.org_id AND (t.user_id IS NULL OR t.user_id = NEW.user_id));
    RETURN NEW;
END $$;

CREATE TRIGGER alert_watch_new_allocation BEFORE INSERT ON allocations
    FOR EACH ROW EXECUTE FUNCTION credit_alert_watch_new_allocation();

-- True when `remaining` is at or below the threshold (base: pool total or allocation limit).
CREATE FUNCTION credit_alert_below(p_kind TEXT, p_value BIGINT, p_remaining BIGINT, p_base BIGINT)
RETURNS BOOLEAN LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_kind = 'absolute' THEN p_remaining <= p_value
                ELSE p_remaining::NUMERIC * 100 <= p_base::NUMERIC * p_value END
$$;

-- The threshold in millicredits, for display and the webhook body.
CREATE FUNCTION credit_alert_threshold_mc(p_kind TEXT, p_value BIGINT, p_base BIGINT)
RETURNS BIGINT LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_kind = 'absolute' THEN p_value
                ELSE floor(p_base::NUMERIC * p_value / 100)::BIGINT END
$$;

CREATE FUNCTION credit_alert_on_allocation() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t RECORD;
    v_below BOOLEAN;
    v_total BIGINT;
    v_used BIGINT;
    v_held BIGINT;
    v_notify BOOLEAN := false;
    -- Only a Commit (used changes) fires; a new or changed allocation limit only re-arms.
    v_commit BOOLEAN := CASE WHEN TG_OP = 'UPDATE' THEN OLD.used_mc IS DISTINCT FROM NEW.used_mc ELSE false END;
BEGIN
    -- This member's thresholds. This transaction holds the allocation's row
    -- lock, so commits of the allocation pass here one at a time and the
    -- state flips exactly once per crossing.
    FOR t IN SELECT * FROM alert_thresholds a WHERE a.org_id = NEW.org_id AND a.user_id = NEW.user_id LOOP
        v_below := credit_alert_below(t.kind, t.value, NEW.limit_mc - NEW.used_mc, NEW.limit_mc);
        IF v_below AND t.state = 'armed' AND v_commit THEN
            UPDATE alert_thresholds SET state = 'fired', changed_at = now()
             WHERE org_id = t.org_id AND threshold_id = t.threshold_id;
            INSERT INTO alert_events (org_id, threshold_id, user_id, kind, value, threshold_mc, limit_mc,
                                      remaining_mc)
            VALUES (t.org_id, t.threshold_id, t.user_id, t.kind, t.value,
                    credit_alert_threshold_mc(t.kind, t.value, NEW.limit_mc), NEW.limit_mc,
                    NEW.limit_mc - NEW.used_mc);
            v_notify := true;
        ELSIF NOT v_below AND t.state = 'fired' THEN
            UPDATE alert_thresholds SET state = 'armed', changed_at = now()
             WHERE org_id = t.org_id AND threshold_id = t.threshold_id;
        END IF;
    END LOOP;

    -- The pool's thresholds: other members' commits run concurrently, so this
    -- snapshot may miss some of them. Queue a check for the worker when the
    -- pool is at or below a threshold counting holds (a concurrent commit
    -- charges what it held) or back above one; the worker decides on
    -- committed data.
    PERFORM 1 FROM alert_thresholds a WHERE a.org_id = NEW.org_id AND a.user_id IS NULL LIMIT 1;
    IF FOUND THEN
        SELECT p.total_mc INTO v_total FROM org_pools p WHERE p.org_id = NEW.org_id;
        SELECT coalesce(sum(a.used_mc), 0), coalesce(sum(a.held_mc), 0) INTO v_used, v_held
          FROM allocations a WHERE a.org_id = NEW.org_id;
        FOR t IN SELECT * FROM alert_thresholds a WHERE a.org_id = NEW.org_id AND a.user_id IS NULL LOOP
            IF (t.state = 'armed' AND v_commit AND credit_alert_below(t.kind, t.value, v_total - v_used - v_held, v_total))
               OR (t.state = 'fired' AND NOT credit_alert_below(t.kind, t.value, v_total - v_used, v_total)) THEN
                INSERT INTO alert_checks (org_id, threshold_id) VALUES (t.org_id, t.threshold_id);
                v_notify := true;
            END IF;
        END LOOP;
    END IF;

    IF v_notify THEN
        PERFORM pg_notify('credit_alerts', NEW.org_id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER alert_on_allocation_change AFTER UPDATE ON allocations
    FOR EACH ROW WHEN (NEW.alert_watch AND (OLD.used_mc IS DISTINCT FROM NEW.used_mc
                                            OR OLD.limit_mc IS DISTINCT FROM NEW.limit_mc))
    EXECUTE FUNCTION credit_alert_on_allocation();
CREATE TRIGGER alert_on_allocation_insert AFTER INSERT ON allocations
    FOR EACH ROW WHEN (NEW.alert_watch) EXECUTE FUNCTION credit_alert_on_allocation();

-- A top-up can bring the pool back above its thresholds: let the worker re-arm them.
CREATE FUNCTION credit_alert_on_pool() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO alert_checks (org_id, threshold_id)
    SELECT a.org_id, a.threshold_id FROM alert_thresholds a WHERE a.org_id = NEW.org_id AND a.user_id IS NULL;
    IF FOUND THEN
        PERFORM pg_notify('credit_alerts', NEW.org_id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER alert_on_pool_change AFTER UPDATE ON org_pools
    FOR EACH ROW WHEN (OLD.total_mc IS DISTINCT FROM NEW.total_mc)
    EXECUTE FUNCTION credit_alert_on_pool();
