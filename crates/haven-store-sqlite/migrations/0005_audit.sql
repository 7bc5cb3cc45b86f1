-- The audit trail (haven_store::audit, haven-audit). Events are written in the same unit of
-- work as the data they describe; the sealer chains them (audit_chain) and signs checkpoints.
-- Every audit table is append-only: the triggers below refuse UPDATE and DELETE.
CREATE TABLE audit_event (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    time    INTEGER NOT NULL,          -- microseconds since the Unix epoch, UTC
    record  BLOB    NOT NULL           -- canonical bytes of haven_audit::AuditRecord
);
CREATE INDEX audit_event_by_time ON audit_event (time);

-- Which patients' data an event concerns: the accounting of disclosures reads by patient.
CREATE TABLE audit_patient (
    patient   TEXT    NOT NULL,
    event_id  INTEGER NOT NULL REFERENCES audit_event (id),
    time      INTEGER NOT NULL,
    PRIMARY KEY (patient, event_id)
) WITHOUT ROWID;

-- The hash chain: gap-free seq from 1. No foreign key to audit_event on purpose: a verifier
-- must be able to report a link whose event row has gone.
CREATE TABLE audit_chain (
    seq       INTEGER PRIMARY KEY CHECK (seq > 0),
    event_id  INTEGER NOT NULL UNIQUE,
    hash      BLOB    NOT NULL
);

CREATE TABLE audit_checkpoint (
    seq        INTEGER PRIMARY KEY,
    hash       BLOB    NOT NULL,
    time       INTEGER NOT NULL,
    key_id     TEXT    NOT NULL,
    signature  BLOB    NOT NULL
);

CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON audit_event
BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END;
CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event
BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END;
CREATE TRIGGER audit_patient_no_update BEFORE UPDATE ON audit_patient
BEGIN SELECT RAISE(ABORT, 'audit_patient is append-only'); END;
CREATE TRIGGER audit_patient_no_delete BEFORE DELETE ON audit_patient
BEGIN SELECT RAISE(ABORT, 'audit_patient is append-only'); END;
CREATE TRIGGER audit_chain_no_update BEFORE UPDATE ON audit_chain
BEGIN SELECT RAISE(ABORT, 'audit_chain is append-only'); END;
CREATE TRIGGER audit_chain_no_delete BEFORE DELETE ON audit_chain
BEGIN SELECT RAISE(ABORT, 'audit_chain is append-only'); END;
CREATE TRIGGER audit_checkpoint_no_update BEFORE UPDATE ON audit_checkpoint
BEGIN SELECT RAISE(ABORT, 'audit_checkpoint is append-only'); END;
CREATE TRIGGER audit_checkpoint_no_delete BEFORE DELETE ON audit_checkpoint
BEGIN SELECT RAISE(ABORT, 'audit_checkpoint is append-only'); END;
