-- Policies and every revision of them. A policy's live state is its row in
-- `policies`; its specs live only in `policy_revisions`, one row per write.
-- Times are RFC 3339 text in UTC.

CREATE TABLE policies (
    name        TEXT PRIMARY KEY NOT NULL,
    -- Latest revision, a deletion included.
    revision    INTEGER NOT NULL CHECK (revision > 0),
    deleted     INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    -- When the live incarnation was created (a name can be reused after a delete).
    create_time TEXT NOT NULL,
    update_time TEXT NOT NULL
) STRICT;

CREATE TABLE policy_revisions (
    name        TEXT NOT NULL REFERENCES policies (name),
    revision    INTEGER NOT NULL CHECK (revision > 0),
    change      TEXT NOT NULL CHECK (change IN ('created', 'updated', 'deleted')),
    -- The spec (protobuf JSON mapping); NULL for a deletion.
    spec        TEXT,
    -- Why the server wrote this revision, when it did so itself.
    reason      TEXT NOT NULL DEFAULT '',
    create_time TEXT NOT NULL,
    -- Creation time of the incarnation this revision belongs to.
    policy_create_time TEXT NOT NULL,
    PRIMARY KEY (name, revision),
    CHECK ((change = 'deleted') = (spec IS NULL))
) STRICT;
