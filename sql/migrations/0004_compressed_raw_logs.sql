-- Raw logs stored compressed: `raw_blob` holds the file's bytes encoded with `raw_codec` (zstd).
-- Rows written before keep their text in `raw_text` with a null codec; both stay readable
-- (regressor.sources.fleet.raw_log_text), and re-ingesting a changed file rewrites its row.
ALTER TABLE logs ALTER COLUMN raw_text DROP NOT NULL;
ALTER TABLE logs ADD COLUMN raw_codec VARCHAR;
ALTER TABLE logs ADD COLUMN raw_blob BLOB;
