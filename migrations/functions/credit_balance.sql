-- Balance of the resolved account; a member without an allocation, or a user
-- without individual credits, has zeros (never a fallback elsewhere).
-- History: 0002; enable_seqscan = off since 0007.
CREATE OR REPLACE FUNCTION credit_balance(p_user_id TEXT, p_org_id TEXT,
                               OUT outcome TEXT, OUT funding_kind TEXT, OUT org_id TEXT,
                               OUT limit_mc BIGINT, OUT used_mc BIGINT, OUT held_mc BIGINT)
LANGUAGE plpgsql STABLE SET enable_seqscan = off AS $$
BEGIN
    SELECT r.outcome, r.org_id INTO outcome, org_id FROM credit_resolve_funding(p_user_id, p_org_id) r;
    limit_mc := 0; used_mc := 0; held_mc := 0;
    IF outcome = 'org' THEN
        funding_kind := 'org';
        SELECT a.limit_mc, a.used_mc, a.held_mc INTO limit_mc, used_mc, held_mc
          FROM allocations a WHERE a.org_id = credit_balance.org_id AND a.user_id = p_user_id;
    ELSIF outcome = 'individual' THEN
        funding_kind := 'individual';
        SELECT b.limit_mc, b.used_mc, b.held_mc INTO limit_mc, used_mc, held_mc
          FROM individual_balances b WHERE b.user_id = p_user_id;
    ELSE
        RETURN;
    END IF;
    outcome := 'ok';
    limit_mc := coalesce(limit_mc, 0); used_mc := coalesce(used_mc, 0); held_mc := coalesce(held_mc, 0);
END $$;
