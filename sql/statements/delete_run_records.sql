-- Run records are derived from every run of the source, so they are rebuilt as a whole.
DELETE FROM row_records WHERE source = $source AND line = 0;
