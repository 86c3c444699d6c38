-- Writes the state columns of rate_limits rows back (the caller holds their
-- locks; their limits are left as they are).
-- History: 0013.
CREATE OR REPLACE FUNCTION credit_limits_save(p_rows rate_limits[]) RETURNS VOID
LANGUAGE sql AS $$
    UPDATE rate_limits r
       SET req_tat_ns = n.req_tat_ns, tok_tat_ns = n.tok_tat_ns, open_holds = n.open_holds,
           day_start = n.day_start, day_mc = n.day_mc, month_start = n.month_start, month_mc = n.month_mc
      FROM unnest(p_rows) n
     WHERE r.limit_id = n.limit_id
$$;
