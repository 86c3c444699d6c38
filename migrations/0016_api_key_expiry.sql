-- API keys people can manage (issue #15): an optional expiry and the time of last use.
--
-- expires_at: set at creation (CreateApiKey's ttl_seconds or expires_at, at most two years ahead) or NULL
-- for a key that does not expire. VerifyApiKey refuses a key at or past it, exactly like a revoked one.
--
-- last_used_at: when VerifyApiKey last accepted the key, to the minute: it is written only when the stored
-- value is NULL or more than 60 seconds old, so a busy key costs one row write a minute, not one a request.
ALTER TABLE api_keys
    ADD COLUMN expires_at   TIMESTAMPTZ,
    ADD COLUMN last_used_at TIMESTAMPTZ;
