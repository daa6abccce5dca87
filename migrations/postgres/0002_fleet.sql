-- The fleet: a generation counter ordering every policy write (snapshot
-- versions are generations), the agents and replicas the control plane knows
-- of, and aggregated telemetry windows.

-- One row; bumped by every policy write in the write's transaction.
CREATE TABLE config_generation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL CHECK (generation >= 0)
);
INSERT INTO config_generation (id, generation) VALUES (1, 0);

-- The generation of a policy's latest write, and of each revision.
ALTER TABLE policies ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE policy_revisions ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;

-- Control-plane replicas and when each last said it was alive; the agents of
-- a replica that stopped saying so count as disconnected.
CREATE TABLE replicas (
    id             TEXT PRIMARY KEY,
    heartbeat_time TIMESTAMPTZ NOT NULL
);

CREATE TABLE agents (
    agent_id         TEXT PRIMARY KEY,
    hostname         TEXT NOT NULL,
    -- JSON object of label names to values.
    labels           TEXT NOT NULL,
    build_version    TEXT NOT NULL,
    replica          TEXT NOT NULL,
    -- When the agent's current (or last) stream began, Unix microseconds: of
    -- two replicas writing about one agent, the later stream wins.
    session          BIGINT NOT NULL,
    connected        BOOLEAN NOT NULL,
    -- Since when connected (or disconnected).
    since            TIMESTAMPTZ NOT NULL,
    applied_version  BIGINT NOT NULL,
    nack_version     BIGINT NOT NULL,
    nack_reason      TEXT NOT NULL,
    last_report_time TIMESTAMPTZ,
    reports_lost     BIGINT NOT NULL,
    update_time      TIMESTAMPTZ NOT NULL
);

-- Telemetry merged by one replica over one window, for one backend of one
-- policy under one snapshot version. Rows are partial sums: readers add up
-- every row of a key.
CREATE TABLE telemetry_windows (
    id               BIGSERIAL PRIMARY KEY,
    policy           TEXT NOT NULL,
    snapshot_version BIGINT NOT NULL,
    backend          TEXT NOT NULL,
    -- Start of the window, Unix milliseconds.
    window_start     BIGINT NOT NULL,
    replica          TEXT NOT NULL,
    -- Agent reports merged into this row.
    reports          BIGINT NOT NULL,
    -- shepherd.v1.BackendTelemetry, protobuf-encoded.
    data             BYTEA NOT NULL
);
CREATE INDEX telemetry_windows_by_policy ON telemetry_windows (policy, window_start);
