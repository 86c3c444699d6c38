-- Trigger function of alert_watch_new_allocation: a new allocation is watched
-- when its org has a pool threshold or one for its member.
-- History: 0005.
CREATE OR REPLACE FUNCTION credit_alert_watch_new_allocation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.alert_watch := EXISTS (SELECT 1 FROM alert_thresholds t
                                WHERE t.org_id = NEW.org_id AND (t.user_id IS NULL OR t.user_id = NEW.user_id));
    RETURN NEW;
END $$;
