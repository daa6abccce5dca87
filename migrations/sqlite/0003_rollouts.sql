-- Rollouts and their events. A rollout's state is kept as the protobuf JSON
-- of shepherd.v1.Rollout; the columns beside it are what queries select on.

CREATE TABLE rollouts (
    policy      TEXT NOT NULL,
    number      INTEGER NOT NULL CHECK (number > 0),
    -- Running, paused or rolling back.
    active      INTEGER NOT NULL CHECK (active IN (0, 1)),
    -- Events so far: every write names the sequence it read.
    sequence    INTEGER NOT NULL,
    body        TEXT NOT NULL,
    create_time TEXT NOT NULL,
    update_time TEXT NOT NULL,
    PRIMARY KEY (policy, number)
) STRICT;
-- At most one active rollout per policy.
CREATE UNIQUE INDEX rollouts_one_active ON rollouts (policy) WHERE active;
CREATE INDEX rollouts_by_time ON rollouts (create_time);

CREATE TABLE rollout_events (
    policy   TEXT NOT NULL,
    number   INTEGER NOT NULL,
    sequence INTEGER NOT NULL CHECK (sequence > 0),
    -- shepherd.v1.RolloutEvent, protobuf JSON.
    body     TEXT NOT NULL,
    PRIMARY KEY (policy, number, sequence),
    FOREIGN KEY (policy, number) REFERENCES rollouts (policy, number)
) STRICT;
