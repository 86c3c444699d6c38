-- Trigger function of ledger_append_only (0001): the ledger is append-only;
-- any UPDATE or DELETE of ledger_entries raises.
-- History: 0001.
CREATE OR REPLACE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only';
END $$;
