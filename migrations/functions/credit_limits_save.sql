-- Writes the state columns of rate_limits rows back (the caller holds their
-- locks; their limits are left as they are). One UPDATE by primary key per
-- row, a plan PL/pgSQL keeps for the session.
-- History: 0013; PL/pgSQL 0014.
CREATE OR REPLACE FUNCTION credit_limits_save(p_rows rate_limits[]) RETURNS VOID
LANGUAGE plpgsql AS $$
DECLARE
    n rate_limits;
BEGIN
    FOREACH n IN ARRAY p_rows LOOP
        UPDATE rate_limits r
           SET req_tat_ns = n.req_tat_ns, tok_tat_ns = n.tok_tat_ns, open_holds = n.open_holds,
               day_start = n.day_start, day_mc = n.day_mc, month_start = n.month_start, month_mc = n.month_mc
         WHERE r.limit_id = n.limit_id;
    END LOOP;
END $$;
