-- The fleet: a generation counter ordering every policy write (snapshot
-- versions are generations), the agents and replicas the control plane knows
-- of, and aggregated telemetry windows. Times are RFC 3339 text in UTC.

-- One row; bumped by every policy write in the write's transaction.
CREATE TABLE config_generation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL CHECK (generation >= 0)
) STRICT;
INSERT INTO config_generation (id, generation) VALUES (1, 0);

-- The generation of a policy's latest write, and of each revision.
ALTER TABLE policies ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE policy_revisions ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;

-- Control-plane replicas and when each last said it was alive.
CREATE TABLE replicas (
    id             TEXT PRIMARY KEY NOT NULL,
    heartbeat_time TEXT NOT NULL
) STRICT;

CREATE TABLE agents (
    agent_id         TEXT PRIMARY KEY NOT NULL,
    hostname         TEXT NOT NULL,
    -- JSON object of label names to values.
    labels           TEXT NOT NULL,
    build_version    TEXT NOT NULL,
    replica          TEXT NOT NULL,
    -- When the agent's current (or last) stream began, Unix microseconds: of
    -- two replicas writing about one agent, the later stream wins.
    session          INTEGER NOT NULL,
    connected        INTEGER NOT NULL CHECK (connected IN (0, 1)),
    -- Since when connected (or disconnected).
    since            TEXT NOT NULL,
    applied_version  INTEGER NOT NULL,
    nack_version     INTEGER NOT NULL,
    nack_reason      TEXT NOT NULL,
    last_report_time TEXT,
    reports_lost     INTEGER NOT NULL,
    update_time      TEXT NOT NULL
) STRICT;

-- Telemetry merged by one replica over one window, for one backend of one
-- policy under one snapshot version. Rows are partial sums: readers add up
-- every row of a key.
CREATE TABLE telemetry_windows (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    policy           TEXT NOT NULL,
    snapshot_version INTEGER NOT NULL,
    backend          TEXT NOT NULL,
    -- Start of the window, Unix milliseconds.
    window_start     INTEGER NOT NULL,
    replica          TEXT NOT NULL,
    -- Agent reports merged into this row.
    reports          INTEGER NOT NULL,
    -- shepherd.v1.BackendTelemetry, protobuf-encoded.
    data             BLOB NOT NULL
) STRICT;
CREATE INDEX telemetry_windows_by_policy ON telemetry_windows (policy, window_start);
