-- The threshold in millicredits, for display and the webhook body.
-- History: 0005.
CREATE OR REPLACE FUNCTION credit_alert_threshold_mc(p_kind TEXT, p_value BIGINT, p_base BIGINT)
RETURNS BIGINT LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_kind = 'absolute' THEN p_value
                ELSE floor(p_base::NUMERIC * p_value / 100)::BIGINT END
$$;
