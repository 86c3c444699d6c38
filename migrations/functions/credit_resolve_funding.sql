-- Funding resolution: explicit org -> the user must be a member; else the
-- default org, else the org joined first; else the individual balance.
-- outcome: 'org' | 'individual' | 'unknown_user' | 'unknown_org' | 'not_member'
-- History: 0002; enable_seqscan = off since 0007.
CREATE OR REPLACE FUNCTION credit_resolve_funding(p_user_id TEXT, p_org_id TEXT,
                                       OUT outcome TEXT, OUT org_id TEXT)
LANGUAGE plpgsql STABLE SET enable_seqscan = off AS $$
BEGIN
    IF p_org_id <> '' THEN
        PERFORM 1 FROM org_members m WHERE m.org_id = p_org_id AND m.user_id = p_user_id;
        IF FOUND THEN
            outcome := 'org'; org_id := p_org_id; RETURN;
        END IF;
        PERFORM 1 FROM users u WHERE u.user_id = p_user_id;
        IF NOT FOUND THEN outcome := 'unknown_user'; RETURN; END IF;
        PERFORM 1 FROM organizations o WHERE o.org_id = p_org_id;
        IF NOT FOUND THEN outcome := 'unknown_org'; RETURN; END IF;
        outcome := 'not_member'; RETURN;
    END IF;
    SELECT m.org_id INTO org_id FROM org_members m
     WHERE m.user_id = p_user_id ORDER BY m.is_default DESC, m.join_seq LIMIT 1;
    IF FOUND THEN outcome := 'org'; RETURN; END IF;
    PERFORM 1 FROM users u WHERE u.user_id = p_user_id;
    IF NOT FOUND THEN outcome := 'unknown_user'; RETURN; END IF;
    outcome := 'individual';
END $$;
