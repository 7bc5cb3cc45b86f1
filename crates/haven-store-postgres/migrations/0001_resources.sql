-- Resource versions: every version of every resource, append-only.
-- Same schema and version number as the SQLite migration 0001; types are PostgreSQL's.
CREATE TABLE resource_version (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resource_type  TEXT     NOT NULL,
    id             TEXT     NOT NULL,
    version        BIGINT   NOT NULL CHECK (version > 0),
    last_updated   BIGINT   NOT NULL,            -- microseconds since the Unix epoch, UTC
    change_kind    SMALLINT NOT NULL CHECK (change_kind BETWEEN 0 AND 3),
    body           BYTEA,                        -- NULL exactly for deletions
    CHECK ((change_kind = 3) = (body IS NULL)),
    UNIQUE (resource_type, id, version)
);

CREATE INDEX resource_version_by_type ON resource_version (resource_type, seq);
CREATE INDEX resource_version_by_time ON resource_version (last_updated);

-- The head of each resource: which version is current, so a read is one key lookup.
CREATE TABLE resource (
    resource_type  TEXT   NOT NULL,
    id             TEXT   NOT NULL,
    version        BIGINT NOT NULL,
    seq            BIGINT NOT NULL REFERENCES resource_version (seq),
    PRIMARY KEY (resource_type, id)
);
