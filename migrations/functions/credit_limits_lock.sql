-- Locks and reads the rate_limits rows with these scope keys or ids, in
-- limit_id order (the one order: after reservation rows, before accounts);
-- NULL when there are none.
-- History: 0013.
CREATE OR REPLACE FUNCTION credit_limits_lock(p_keys TEXT[], p_ids BIGINT[]) RETURNS rate_limits[]
LANGUAGE sql AS $$
    SELECT array_agg(x.l ORDER BY (x.l).limit_id)
      FROM (SELECT l FROM rate_limits l
             WHERE l.scope_key = ANY(p_keys) OR l.limit_id = ANY(p_ids)
             ORDER BY l.limit_id FOR UPDATE OF l) x
$$;
