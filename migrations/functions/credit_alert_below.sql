-- True when `remaining` is at or below the threshold (base: pool total or allocation limit).
-- History: 0005.
CREATE OR REPLACE FUNCTION credit_alert_below(p_kind TEXT, p_value BIGINT, p_remaining BIGINT, p_base BIGINT)
RETURNS BOOLEAN LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_kind = 'absolute' THEN p_remaining <= p_value
                ELSE p_remaining::NUMERIC * 100 <= p_base::NUMERIC * p_value END
$$;
