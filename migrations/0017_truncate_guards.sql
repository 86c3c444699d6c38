-- The money history cannot be changed or truncated by the service's own role
-- (issue 17). 0001's row trigger on ledger_entries refuses UPDATE and DELETE
-- but not TRUNCATE (a TRUNCATE fires no row trigger); attribution, top-up,
-- grant and payment-event rows had no guard. No product code updates or
-- deletes them (0015's backfill of usage_attribution.caller ran before this).
-- Statement-level BEFORE TRUNCATE triggers cover TRUNCATE; row-level BEFORE
-- UPDATE OR DELETE triggers cover the rest. The function's current body lives
-- in functions/history_is_append_only.sql.
CREATE OR REPLACE FUNCTION history_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION history_is_append_only();

CREATE TRIGGER attribution_append_only BEFORE UPDATE OR DELETE ON usage_attribution
    FOR EACH ROW EXECUTE FUNCTION history_is_append_only();
CREATE TRIGGER attribution_no_truncate BEFORE TRUNCATE ON usage_attribution
    FOR EACH STATEMENT EXECUTE FUNCTION history_is_append_only();

CREATE TRIGGER top_ups_append_only BEFORE UPDATE OR DELETE ON pool_top_ups
    FOR EACH ROW EXECUTE FUNCTION history_is_append_only();
CREATE TRIGGER top_ups_no_truncate BEFORE TRUNCATE ON pool_top_ups
    FOR EACH STATEMENT EXECUTE FUNCTION history_is_append_only();

CREATE TRIGGER grants_append_only BEFORE UPDATE OR DELETE ON individual_grants
    FOR EACH ROW EXECUTE FUNCTION history_is_append_only();
CREATE TRIGGER grants_no_truncate BEFORE TRUNCATE ON individual_grants
    FOR EACH STATEMENT EXECUTE FUNCTION history_is_append_only();

CREATE TRIGGER payment_events_append_only BEFORE UPDATE OR DELETE ON payment_events
    FOR EACH ROW EXECUTE FUNCTION history_is_append_only();
CREATE TRIGGER payment_events_no_truncate BEFORE TRUNCATE ON payment_events
    FOR EACH STATEMENT EXECUTE FUNCTION history_is_append_only();
