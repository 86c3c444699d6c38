-- What a finalized reservation gives back to one rate_limits row it was
-- counted against. p_event: 'commit' (p_tokens the real count, NULL: the
-- estimate stands; p_charged_mc the charge), 'release' or 'expiry'.
-- p_was_held: the hold was still open (a late Commit after expiry finds it
-- gone). Tokens: the estimate is corrected to the real count at Commit (an
-- over-estimate frees tokens, an under-estimate is charged to the window, at
-- most ten minutes ahead) and given back in full at Release; an expired hold
-- keeps them. Credits of the day/month window the Reserve was counted in move
-- by charge − hold at Commit and give the hold back at Release and expiry.
-- History: 0013.
CREATE OR REPLACE FUNCTION credit_limit_finish(l rate_limits, p_event TEXT, p_was_held BOOLEAN,
                                               p_reserved_at TIMESTAMPTZ, p_hold_mc BIGINT, p_charged_mc BIGINT,
                                               p_estimated_tokens BIGINT, p_tokens BIGINT, p_now TIMESTAMPTZ)
RETURNS rate_limits LANGUAGE plpgsql STABLE AS $$
DECLARE
    now_ns BIGINT := (extract(epoch FROM p_now) * 1000000000)::BIGINT;
    t BIGINT;
    delta_tokens BIGINT := CASE p_event WHEN 'commit' THEN coalesce(p_tokens, p_estimated_tokens) - p_estimated_tokens
                                        WHEN 'release' THEN -p_estimated_tokens ELSE 0 END;
    delta_mc BIGINT := CASE WHEN p_event = 'commit' THEN p_charged_mc - CASE WHEN p_was_held THEN p_hold_mc ELSE 0 END
                            WHEN p_was_held THEN -p_hold_mc ELSE 0 END;
BEGIN
    IF p_was_held THEN
        l.open_holds := greatest(l.open_holds - 1, 0);
    END IF;
    IF l.tpm IS NOT NULL AND delta_tokens <> 0 THEN
        t := credit_limit_interval_ns(l.tpm);
        l.tok_tat_ns := CASE WHEN delta_tokens > 0
            THEN least(greatest(l.tok_tat_ns, now_ns)::NUMERIC + delta_tokens::NUMERIC * t,
                       now_ns + 600000000000 + l.tpm * t)::BIGINT
            ELSE greatest(l.tok_tat_ns::NUMERIC + delta_tokens::NUMERIC * t, 0)::BIGINT END;
    END IF;
    IF l.day_start = (p_reserved_at AT TIME ZONE 'UTC')::DATE THEN
        l.day_mc := greatest(l.day_mc + delta_mc, 0);
    END IF;
    IF l.month_start = date_trunc('month', p_reserved_at AT TIME ZONE 'UTC')::DATE THEN
        l.month_mc := greatest(l.month_mc + delta_mc, 0);
    END IF;
    RETURN l;
END $$;
