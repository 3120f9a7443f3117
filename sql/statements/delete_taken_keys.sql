-- Drop the rows of `taken_keys` (a registered frame of path and record_key): keys a file listed
-- before theirs took over (the table adapter quarantines them as repeats in the same transaction).
DELETE FROM row_records WHERE source = $source AND EXISTS (
    SELECT 1 FROM taken_keys AS t
    WHERE t.path = row_records.path AND t.record_key = row_records.record_key);
