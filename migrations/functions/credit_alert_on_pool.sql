-- Trigger function of alert_on_pool_change: a top-up can bring the pool back
-- above its thresholds; let the worker re-arm them.
-- History: 0005.
CREATE OR REPLACE FUNCTION credit_alert_on_pool() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO alert_checks (org_id, threshold_id)
    SELECT a.org_id, a.threshold_id FROM alert_thresholds a WHERE a.org_id = NEW.org_id AND a.user_id IS NULL;
    IF FOUND THEN
        PERFORM pg_notify('credit_alerts', NEW.org_id);
    END IF;
    RETURN NULL;
END $$;
