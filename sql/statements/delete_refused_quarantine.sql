-- Drop the source's quarantine rows of files refused unread (their reason ends with $marker):
-- each run writes afresh the refusals it finds, so a file readable again keeps no such row.
DELETE FROM quarantine WHERE source = $source AND ends_with(reason, $marker);
