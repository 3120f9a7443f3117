-- Forget only the stored state of the files in `staged_files` (a registered frame with source
-- and path), so the next ingest reads them again; their rows stay until it replaces them.
DELETE FROM files WHERE EXISTS (
    SELECT 1 FROM staged_files AS s WHERE s.source = files.source AND s.path = files.path);
