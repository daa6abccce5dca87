-- Policies and every revision of them. A policy's live state is its row in
-- `policies`; its specs live only in `policy_revisions`, one row per write.

CREATE TABLE policies (
    name        TEXT PRIMARY KEY,
    -- Latest revision, a deletion included.
    revision    BIGINT NOT NULL CHECK (revision > 0),
    deleted     BOOLEAN NOT NULL DEFAULT FALSE,
    -- When the live incarnation was created (a name can be reused after a delete).
    create_time TIMESTAMPTZ NOT NULL,
    update_time TIMESTAMPTZ NOT NULL
);

CREATE TABLE policy_revisions (
    name        TEXT NOT NULL REFERENCES policies (name),
    revision    BIGINT NOT NULL CHECK (revision > 0),
    change      TEXT NOT NULL CHECK (change IN ('created', 'updated', 'deleted')),
    -- The spec (protobuf JSON mapping); NULL for a deletion.
    spec        JSONB,
    -- Why the server wrote this revision, when it did so itself.
    reason      TEXT NOT NULL DEFAULT '',
    create_time TIMESTAMPTZ NOT NULL,
    -- Creation time of the incarnation this revision belongs to.
    policy_create_time TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (name, revision),
    CHECK ((change = 'deleted') = (spec IS NULL))
);
