-- Drop everything previously derived from the files in `staged_files` (a registered frame with
-- source and path), so their new rows replace the old ones within the caller's transaction.
DELETE FROM configs WHERE EXISTS (
    SELECT 1 FROM staged_files AS s WHERE s.source = configs.source AND s.path = configs.path);
DELETE FROM logs WHERE EXISTS (
    SELECT 1 FROM staged_files AS s WHERE s.source = logs.source AND s.path = logs.path);
DELETE FROM targets WHERE EXISTS (
    SELECT 1 FROM staged_files AS s WHERE s.source = targets.source AND s.path = targets.path);
DELETE FROM quarantine WHERE EXISTS (
    SELECT 1 FROM staged_files AS s WHERE s.source = quarantine.source AND s.path = quarantine.path);
DELETE FROM files WHERE EXISTS (
    SELECT 1 FROM staged_files AS s WHERE s.source = files.source AND s.path = files.path);
DELETE FROM runs WHERE EXISTS (
    SELECT 1 FROM staged_files AS s
    WHERE s.source = runs.source AND (s.path = runs.path OR s.path = runs.log_path));
DELETE FROM row_records WHERE EXISTS (
    SELECT 1 FROM staged_files AS s WHERE s.source = row_records.source AND s.path = row_records.path);
