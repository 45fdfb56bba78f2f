-- vitrine's records. Timestamps are Unix milliseconds (INTEGER); JSON
-- documents are TEXT. Ids are UUID v7 strings, so they sort by time.

-- An uploaded, validated, content-addressed dataset archive.
CREATE TABLE datasets (
    id          TEXT PRIMARY KEY,
    sha256      TEXT NOT NULL UNIQUE,   -- of the archive bytes as uploaded
    format      TEXT NOT NULL,          -- 'zip' | 'tar.gz'
    size_bytes  INTEGER NOT NULL,
    path        TEXT NOT NULL,          -- extracted directory, relative to the data dir
    task        TEXT NOT NULL,          -- inferred: 'multi_class' | 'multi_label'
    summary     TEXT NOT NULL,          -- JSON: counts, sizes, warnings, skipped files
    created_at  INTEGER NOT NULL
);

-- A fine-tuning job and its queue state.
CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    status            TEXT NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    dataset_id        TEXT NOT NULL REFERENCES datasets (id),
    config            TEXT NOT NULL,    -- JSON, as validated
    idempotency_key   TEXT UNIQUE,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL DEFAULT 3,
    device            TEXT,             -- requested device, NULL: any
    lease_owner       TEXT,             -- worker holding the job while running
    lease_expires_at  INTEGER,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    progress          TEXT,             -- JSON: epoch, step, images/s, ETA
    metrics           TEXT NOT NULL DEFAULT '[]',  -- JSON: one entry per epoch
    error             TEXT,
    model_id          TEXT,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    updated_at        INTEGER NOT NULL
);
CREATE INDEX jobs_by_status ON jobs (status, created_at);

-- A trained model: a directory in the Hugging Face layout.
CREATE TABLE models (
    id          TEXT PRIMARY KEY,
    job_id      TEXT REFERENCES jobs (id),
    path        TEXT NOT NULL,          -- relative to the data dir
    base_model  TEXT NOT NULL,
    task        TEXT NOT NULL,
    labels      TEXT NOT NULL,          -- JSON array, index = class id
    metrics     TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL
);
CREATE INDEX models_by_created ON models (created_at);

-- Names pinned to a model, e.g. 'production'.
CREATE TABLE model_aliases (
    name        TEXT PRIMARY KEY,
    model_id    TEXT NOT NULL REFERENCES models (id),
    updated_at  INTEGER NOT NULL
);
