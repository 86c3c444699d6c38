-- Trigger function of the append-only guards of 0017: the money history
-- (ledger_entries, usage_attribution, pool_top_ups, individual_grants,
-- payment_events; audit_log from 0018) refuses UPDATE, DELETE and TRUNCATE, whoever asks; only a
-- session with session_replication_role = replica (a superuser's escape,
-- never the service's) skips it.
-- History: 0017 (used by 0018 too).
CREATE OR REPLACE FUNCTION history_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
