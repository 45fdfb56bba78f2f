-- Datasets are validated in the background: a row exists from the moment
-- the upload is stored (`validating`), and becomes `ready` or `failed`.
-- `format`, `task` and `summary` are known only once validated, so they
-- become nullable; SQLite cannot drop a NOT NULL, so the table is rebuilt.
--
-- sqlx runs this in a transaction, where `PRAGMA foreign_keys` cannot be
-- turned off; with foreign keys deferred, dropping the table counts the
-- rows of `jobs` and `sweeps` that point at it as violations, and inserting
-- the same ids into the new `datasets` takes them back before the commit
-- checks them. Existing rows were validated before: they are `ready`.
PRAGMA defer_foreign_keys = ON;

CREATE TEMP TABLE datasets_before_0003 AS SELECT * FROM datasets;
DROP TABLE datasets;

CREATE TABLE datasets (
    id            TEXT PRIMARY KEY,
    sha256        TEXT NOT NULL UNIQUE,   -- of the archive bytes as uploaded
    status        TEXT NOT NULL DEFAULT 'ready'
                  CHECK (status IN ('validating', 'ready', 'failed')),
    format        TEXT,                   -- 'zip' | 'tar' | 'tar.gz' | 'tar.bz2'; NULL until validated
    size_bytes    INTEGER NOT NULL,
    path          TEXT NOT NULL,          -- extracted directory, relative to the data dir
    task          TEXT,                   -- inferred: 'multi_class' | 'multi_label'; NULL until validated
    summary       TEXT,                   -- JSON: counts, sizes, warnings, skipped files; NULL until validated
    progress      TEXT,                   -- JSON while validating: phase, images checked, total, rate, ETA
    error_kind    TEXT,                   -- why it failed: 'bad_request' | 'too_large' | 'unprocessable' | 'internal'
    error_code    TEXT,                   -- the stable code of the refusal
    error_detail  TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER,                -- NULL: never changed since created
    finished_at   INTEGER                 -- when validation ended (ready or failed)
);
CREATE INDEX datasets_by_status ON datasets (status);

INSERT INTO datasets (id, sha256, status, format, size_bytes, path, task, summary,
                      created_at, updated_at, finished_at)
SELECT id, sha256, 'ready', format, size_bytes, path, task, summary,
       created_at, created_at, created_at
FROM datasets_before_0003;
DROP TABLE datasets_before_0003;

-- A job that waited for its dataset fails with the dataset's refusal: its
-- stable code is kept apart from the message.
ALTER TABLE jobs ADD COLUMN error_code TEXT;
