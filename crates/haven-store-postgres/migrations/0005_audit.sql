-- The audit trail (haven_store::audit, haven-audit); same tables as SQLite migration 0005.
-- Events are written in the same transaction as the data they describe; the sealer chains
-- them in (txid, id) order below the visibility horizon, like history (migration 0004).
-- Append-only: triggers refuse UPDATE, DELETE and TRUNCATE. In production the application role
-- is also granted only SELECT and INSERT on these tables (`haven db grant`, docs/AUDIT.md), so
-- it cannot drop the triggers either; only the schema owner can.
CREATE TABLE audit_event (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid    BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    time    BIGINT NOT NULL,           -- microseconds since the Unix epoch, UTC
    record  BYTEA  NOT NULL            -- canonical bytes of haven_audit::AuditRecord
);
CREATE INDEX audit_event_by_tx ON audit_event (txid, id);
CREATE INDEX audit_event_by_time ON audit_event (time);

CREATE TABLE audit_patient (
    patient   TEXT   NOT NULL,
    event_id  BIGINT NOT NULL REFERENCES audit_event (id),
    time      BIGINT NOT NULL,
    PRIMARY KEY (patient, event_id)
);

-- No foreign key to audit_event on purpose: a verifier must be able to report a link whose
-- event row has gone.
CREATE TABLE audit_chain (
    seq       BIGINT PRIMARY KEY CHECK (seq > 0),
    event_id  BIGINT NOT NULL UNIQUE,
    hash      BYTEA  NOT NULL
);

CREATE TABLE audit_checkpoint (
    seq        BIGINT PRIMARY KEY,
    hash       BYTEA  NOT NULL,
    time       BIGINT NOT NULL,
    key_id     TEXT   NOT NULL,
    signature  BYTEA  NOT NULL
);

CREATE FUNCTION haven_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION haven_audit_append_only();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event
    FOR EACH STATEMENT EXECUTE FUNCTION haven_audit_append_only();
CREATE TRIGGER audit_patient_append_only BEFORE UPDATE OR DELETE ON audit_patient
    FOR EACH ROW EXECUTE FUNCTION haven_audit_append_only();
CREATE TRIGGER audit_patient_no_truncate BEFORE TRUNCATE ON audit_patient
    FOR EACH STATEMENT EXECUTE FUNCTION haven_audit_append_only();
CREATE TRIGGER audit_chain_append_only BEFORE UPDATE OR DELETE ON audit_chain
    FOR EACH ROW EXECUTE FUNCTION haven_audit_append_only();
CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain
    FOR EACH STATEMENT EXECUTE FUNCTION haven_audit_append_only();
CREATE TRIGGER audit_checkpoint_append_only BEFORE UPDATE OR DELETE ON audit_checkpoint
    FOR EACH ROW EXECUTE FUNCTION haven_audit_append_only();
CREATE TRIGGER audit_checkpoint_no_truncate BEFORE TRUNCATE ON audit_checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION haven_audit_append_only();
