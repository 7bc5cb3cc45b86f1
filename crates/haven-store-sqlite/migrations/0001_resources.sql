-- Resource versions: every version of every resource, append-only.
-- `seq` orders all changes in the store; AUTOINCREMENT guarantees a sequence number is never
-- reused, even after the newest rows are rolled back, so history paging by seq is stable.
CREATE TABLE resource_version (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    resource_type  TEXT    NOT NULL,
    id             TEXT    NOT NULL,
    version        INTEGER NOT NULL CHECK (version > 0),
    last_updated   INTEGER NOT NULL,            -- microseconds since the Unix epoch, UTC
    change_kind    INTEGER NOT NULL CHECK (change_kind BETWEEN 0 AND 3),
    body           BLOB,                        -- NULL exactly for deletions
    CHECK ((change_kind = 3) = (body IS NULL)),
    UNIQUE (resource_type, id, version)
);

CREATE INDEX resource_version_by_type ON resource_version (resource_type, seq);
CREATE INDEX resource_version_by_time ON resource_version (last_updated);

-- The head of each resource: which version is current, so a read is one key lookup.
CREATE TABLE resource (
    resource_type  TEXT    NOT NULL,
    id             TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    seq            INTEGER NOT NULL REFERENCES resource_version (seq),
    PRIMARY KEY (resource_type, id)
) WITHOUT ROWID;
