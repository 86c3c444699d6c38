-- The rate_limits rows (scope_key) that apply to a request funded by this
-- account, made with this API key (or none): the organization's and the
-- member's for an allocation, the user's for an individual balance, the key's.
-- A space separates the parts: no id contains one.
-- History: 0013.
CREATE OR REPLACE FUNCTION credit_limit_keys(p_funding_kind TEXT, p_org_id TEXT, p_user_id TEXT, p_key_id TEXT)
RETURNS TEXT[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_remove(ARRAY[
        CASE WHEN p_funding_kind = 'org' THEN 'org ' || p_org_id END,
        CASE WHEN p_funding_kind = 'org' THEN 'member ' || p_org_id || ' ' || p_user_id END,
        CASE WHEN p_funding_kind = 'individual' THEN 'individual ' || p_user_id END,
        CASE WHEN coalesce(p_key_id, '') <> '' THEN 'key ' || p_key_id END], NULL)
$$;
