-- Trigger function of alert_on_allocation_change / _insert: fires or re-arms
-- the member's thresholds and queues checks of the pool's for the alert worker.
-- History: 0005.
CREATE OR REPLACE FUNCTION credit_alert_on_allocation() RETURNS trigger LANGUAGE plpgsql AS $$
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
