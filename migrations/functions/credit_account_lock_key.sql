-- The one order for locking accounts: the UTF-8 bytes of (funding kind, org,
-- user) joined by NUL bytes, compared bytewise — the tuple order whatever the
-- database's collation. Used by credit_batch, credit_expire_holds and the
-- alert-threshold changes.
-- History: 0009.
CREATE OR REPLACE FUNCTION credit_account_lock_key(p_funding_kind TEXT, p_org_id TEXT, p_user_id TEXT)
RETURNS BYTEA LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT convert_to(coalesce(p_funding_kind, ''), 'UTF8') || '\x00'::BYTEA
           || convert_to(coalesce(p_org_id, ''), 'UTF8') || '\x00'::BYTEA
           || convert_to(coalesce(p_user_id, ''), 'UTF8')
$$;
