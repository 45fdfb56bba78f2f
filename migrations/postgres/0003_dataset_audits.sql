-- The audits of a dataset (label errors, duplicates, leakage, outliers,
-- class balance): one row per run, the newest is the dataset's audit.
-- `findings` is the JSON document, `csv` one row per image. As
-- migrations/sqlite/0008.
CREATE TABLE dataset_audits (
    id          TEXT COLLATE "C" PRIMARY KEY,
    dataset_id  TEXT COLLATE "C" NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    status      TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    base_model  TEXT NOT NULL,
    progress    TEXT,
    findings    TEXT,
    csv         TEXT,
    error       TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT,
    finished_at BIGINT
);
CREATE INDEX dataset_audits_by_dataset ON dataset_audits (dataset_id, id);
