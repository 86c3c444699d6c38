-- The forecast a low-balance alert carries (issue #13, "at this rate, runs out on …"): the burn rate
-- over the 7 days before the alert fired and the run-out time it projects, computed by the delivery
-- worker at the first attempt and kept here, so that every attempt sends the same body.
ALTER TABLE alert_events
    ADD COLUMN burn_rate_mc_per_day BIGINT CHECK (burn_rate_mc_per_day >= 0),
    ADD COLUMN runs_out_at          TIMESTAMPTZ;
