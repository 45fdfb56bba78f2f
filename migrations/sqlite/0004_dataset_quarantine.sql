-- Poison datasets are quarantined: every start of a dataset's validation
-- is counted in its row, in the same statement that starts it, and a
-- dataset whose validation has started `--max-validation-starts` times
-- without ending (each start killed the process) fails with
-- `validation_crashed` instead of running again.
ALTER TABLE datasets ADD COLUMN validation_starts INTEGER NOT NULL DEFAULT 0;

-- What a list page shows of a validated dataset (JSON: image, label,
-- split, skipped-file and warning counts), so that a page never reads the
-- whole summary with its skip lists. NULL for rows validated before this
-- migration: their page entry is computed from `summary`.
ALTER TABLE datasets ADD COLUMN counts TEXT;
