-- The audits of a dataset (label errors, duplicates, leakage, outliers,
-- class balance): one row per run, the newest is the dataset's audit.
-- `findings` is the JSON document, `csv` one row per image.
CREATE TABLE dataset_audits (
    id          TEXT PRIMARY KEY,
    dataset_id  TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    status      TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    base_model  TEXT NOT NULL,
    progress    TEXT,
    findings    TEXT,
    csv         TEXT,
    error       TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER,
    finished_at INTEGER
);
CREATE INDEX dataset_audits_by_dataset ON dataset_audits (dataset_id, id);
