-- Moves an account's used and held by the given deltas; returns available,
-- or NULL (nothing written) when used would pass the largest account total,
-- 2^62 - 1 millicredits.
-- History: 0002; the bound since 0010.
CREATE OR REPLACE FUNCTION credit_apply_to_account(p_funding_kind TEXT, p_org_id TEXT, p_user_id TEXT,
                                                   p_delta_used BIGINT, p_delta_held BIGINT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_available BIGINT;
BEGIN
    IF p_funding_kind = 'org' THEN
        UPDATE allocations a SET used_mc = a.used_mc + p_delta_used, held_mc = a.held_mc + p_delta_held,
                                 updated_at = now()
         WHERE a.org_id = p_org_id AND a.user_id = p_user_id
           AND a.used_mc <= 4611686018427387903 - greatest(p_delta_used, 0)
        RETURNING a.limit_mc - a.used_mc - a.held_mc INTO v_available;
    ELSE
        UPDATE individual_balances b SET used_mc = b.used_mc + p_delta_used, held_mc = b.held_mc + p_delta_held,
                                         updated_at = now()
         WHERE b.user_id = p_user_id
           AND b.used_mc <= 4611686018427387903 - greatest(p_delta_used, 0)
        RETURNING b.limit_mc - b.used_mc - b.held_mc INTO v_available;
    END IF;
    RETURN v_available;
END $$;
