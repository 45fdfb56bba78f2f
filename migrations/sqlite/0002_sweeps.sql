-- Hyper-parameter sweeps: a set of candidate jobs on one dataset, ranked on
-- one validation metric, optionally pruned by successive halving, whose
-- winner may be promoted to an alias. Timestamps are Unix milliseconds.
CREATE TABLE sweeps (
    id                TEXT PRIMARY KEY,        -- UUID v7
    dataset_id        TEXT NOT NULL REFERENCES datasets (id),
    spec_json         TEXT NOT NULL,           -- the spec as accepted (JSON)
    status            TEXT NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    metric            TEXT NOT NULL,           -- 'accuracy' | 'macro_f1' | 'map'
    max_parallel      INTEGER NOT NULL DEFAULT 1 CHECK (max_parallel >= 1),
    promote_alias     TEXT,
    -- Successive halving: rung epochs (JSON array, ascending; NULL: none),
    -- the reduction factor, and how many rungs have been decided so far.
    rungs             TEXT,
    reduction_factor  INTEGER NOT NULL DEFAULT 3,
    rungs_done        INTEGER NOT NULL DEFAULT 0,
    max_seconds       REAL,                    -- budget of summed job run time
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    stop_reason       TEXT,                    -- 'cancelled' | 'budget' when stopped early
    winner_job_id     TEXT REFERENCES jobs (id),
    error             TEXT,
    created_at        INTEGER NOT NULL,
    finished_at       INTEGER,
    updated_at        INTEGER NOT NULL
);
CREATE INDEX sweeps_by_status ON sweeps (status);

-- A job may be a sweep's candidate; `stopped_rung` is the rung (an epoch
-- number of the sweep's `rungs`) at which successive halving stopped it.
ALTER TABLE jobs ADD COLUMN sweep_id TEXT REFERENCES sweeps (id);
ALTER TABLE jobs ADD COLUMN stopped_rung INTEGER;
CREATE INDEX jobs_by_sweep ON jobs (sweep_id, status);
