-- vitrine's records on PostgreSQL: the schema of migrations/sqlite as of
-- its 0003, table for table and column for column. Every integer,
-- timestamp (Unix milliseconds) and flag is BIGINT and every real DOUBLE
-- PRECISION, so that the store decodes them as it does SQLite's INTEGER and
-- REAL (i64, f64); JSON documents are TEXT. Ids are UUID v7 strings, which
-- sort by time: they compare byte by byte (COLLATE "C") whatever the
-- database's locale, as in SQLite.
--
-- Versions are per backend: a later change of the schema adds the next
-- file to each directory.

-- A content-addressed dataset archive, validated in the background.
CREATE TABLE datasets (
    id            TEXT COLLATE "C" PRIMARY KEY,
    sha256        TEXT NOT NULL UNIQUE,   -- of the archive bytes as uploaded
    status        TEXT NOT NULL DEFAULT 'ready'
                  CHECK (status IN ('validating', 'ready', 'failed')),
    format        TEXT,                   -- 'zip' | 'tar' | 'tar.gz' | 'tar.bz2'; NULL until validated
    size_bytes    BIGINT NOT NULL,
    path          TEXT NOT NULL,          -- extracted directory, relative to the data dir
    task          TEXT,                   -- inferred: 'multi_class' | 'multi_label'; NULL until validated
    summary       TEXT,                   -- JSON: counts, sizes, warnings, skipped files; NULL until validated
    progress      TEXT,                   -- JSON while validating: phase, images checked, total, rate, ETA
    error_kind    TEXT,                   -- why it failed: 'bad_request' | 'too_large' | 'unprocessable' | 'internal'
    error_code    TEXT,                   -- the stable code of the refusal
    error_detail  TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT,                 -- NULL: never changed since created
    finished_at   BIGINT                  -- when validation ended (ready or failed)
);
CREATE INDEX datasets_by_status ON datasets (status);

-- A fine-tuning job and its queue state.
CREATE TABLE jobs (
    id                TEXT COLLATE "C" PRIMARY KEY,
    status            TEXT NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    dataset_id        TEXT NOT NULL REFERENCES datasets (id),
    config            TEXT NOT NULL,    -- JSON, as validated
    idempotency_key   TEXT UNIQUE,
    attempts          BIGINT NOT NULL DEFAULT 0,
    max_attempts      BIGINT NOT NULL DEFAULT 3,
    device            TEXT,             -- requested device, NULL: any
    lease_owner       TEXT,             -- worker holding the job while running
    lease_expires_at  BIGINT,
    cancel_requested  BIGINT NOT NULL DEFAULT 0,
    progress          TEXT,             -- JSON: epoch, step, images/s, ETA
    metrics           TEXT NOT NULL DEFAULT '[]',  -- JSON: one entry per epoch
    error             TEXT,
    model_id          TEXT,
    created_at        BIGINT NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX jobs_by_status ON jobs (status, created_at);

-- A trained model: a directory in the Hugging Face layout.
CREATE TABLE models (
    id          TEXT COLLATE "C" PRIMARY KEY,
    job_id      TEXT REFERENCES jobs (id),
    path        TEXT NOT NULL,          -- relative to the data dir
    base_model  TEXT NOT NULL,
    task        TEXT NOT NULL,
    labels      TEXT NOT NULL,          -- JSON array, index = class id
    metrics     TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL
);
CREATE INDEX models_by_created ON models (created_at);

-- Names pinned to a model, e.g. 'production'.
CREATE TABLE model_aliases (
    name        TEXT PRIMARY KEY,
    model_id    TEXT NOT NULL REFERENCES models (id),
    updated_at  BIGINT NOT NULL
);

-- Hyper-parameter sweeps (see migrations/sqlite/0002_sweeps.sql).
CREATE TABLE sweeps (
    id                TEXT COLLATE "C" PRIMARY KEY,
    dataset_id        TEXT NOT NULL REFERENCES datasets (id),
    spec_json         TEXT NOT NULL,           -- the spec as accepted (JSON)
    status            TEXT NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    metric            TEXT NOT NULL,           -- 'accuracy' | 'macro_f1' | 'map'
    max_parallel      BIGINT NOT NULL DEFAULT 1 CHECK (max_parallel >= 1),
    promote_alias     TEXT,
    rungs             TEXT,                    -- JSON array of rung epochs; NULL: no halving
    reduction_factor  BIGINT NOT NULL DEFAULT 3,
    rungs_done        BIGINT NOT NULL DEFAULT 0,
    max_seconds       DOUBLE PRECISION,        -- budget of summed job run time
    cancel_requested  BIGINT NOT NULL DEFAULT 0,
    stop_reason       TEXT,                    -- 'cancelled' | 'budget' when stopped early
    winner_job_id     TEXT REFERENCES jobs (id),
    error             TEXT,
    created_at        BIGINT NOT NULL,
    finished_at       BIGINT,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX sweeps_by_status ON sweeps (status);

ALTER TABLE jobs ADD COLUMN sweep_id TEXT REFERENCES sweeps (id);
ALTER TABLE jobs ADD COLUMN stopped_rung BIGINT;
ALTER TABLE jobs ADD COLUMN error_code TEXT;
CREATE INDEX jobs_by_sweep ON jobs (sweep_id, status);

-- Workers wait on `LISTEN vitrine_jobs` (src/jobs/wake.rs). What may make
-- a job claimable notifies them at commit: a job queued (new or requeued),
-- a running job ending (a sweep's slot frees up for its next candidate),
-- a dataset turning `ready` (the jobs waiting on it). A claim itself
-- (queued -> running) does not. Notifications of one transaction with the
-- same payload are delivered once.
CREATE FUNCTION vitrine_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('vitrine_jobs', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify_insert AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.status = 'queued')
    EXECUTE FUNCTION vitrine_notify_jobs();

CREATE TRIGGER jobs_notify_status AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       AND (NEW.status = 'queued' OR OLD.status = 'running'))
    EXECUTE FUNCTION vitrine_notify_jobs();

CREATE TRIGGER datasets_notify_ready AFTER UPDATE OF status ON datasets
    FOR EACH ROW WHEN (NEW.status = 'ready' AND OLD.status IS DISTINCT FROM 'ready')
    EXECUTE FUNCTION vitrine_notify_jobs();
