-- The audit log (issue 17): one immutable record per administrative action,
-- whichever door it came through (gRPC, the console through the REST
-- service, creditctl). Written in the same transaction as the change it
-- records (credit_service/storage/audit.py), so a change without its record,
-- or a record of a change that rolled back, cannot exist.
--
-- actor        who authenticated: a static token's name or 'platform:<name>'
-- actor_kind   'token' | 'platform'
-- on_behalf_of the person the authenticated caller says it acts for (the
--              console's signed-in user, creditctl's OS user); a claim of
--              the actor, recorded as such
-- action       the CreditAdmin RPC
-- target_kind, org_id, target_id  what was changed
-- before, after  the target's administrative fields in that transaction
--              (never a secret, a secret's digest or a balance's used/held)
-- source       the caller's address as the authority saw it (gRPC peer)
-- forwarded_for  the client address the caller reports (the REST service:
--              the browser's or creditctl's address)
CREATE TABLE audit_log (
    audit_id      BIGSERIAL PRIMARY KEY,
    at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor         TEXT NOT NULL,
    actor_kind    TEXT NOT NULL CHECK (actor_kind IN ('token', 'platform')),
    on_behalf_of  TEXT NOT NULL DEFAULT '',
    action        TEXT NOT NULL,
    target_kind   TEXT NOT NULL,
    org_id        TEXT,
    target_id     TEXT NOT NULL DEFAULT '',
    before        JSONB,
    after         JSONB,
    request_id    TEXT NOT NULL DEFAULT '',
    source        TEXT NOT NULL DEFAULT '',
    forwarded_for TEXT NOT NULL DEFAULT ''
);
-- An org's records, newest first (the console, CreditAdmin with org_id).
CREATE INDEX audit_log_by_org ON audit_log (org_id, audit_id DESC);
CREATE INDEX audit_log_by_time ON audit_log (at);

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION history_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION history_is_append_only();
