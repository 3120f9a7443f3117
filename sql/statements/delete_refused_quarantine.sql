-- Drop the quarantine rows of the files in `refused_files` (a registered frame with source and
-- path): a file refused unread again replaces its row from an earlier run.
DELETE FROM quarantine WHERE EXISTS (
    SELECT 1 FROM refused_files AS r WHERE r.source = quarantine.source AND r.path = quarantine.path);
