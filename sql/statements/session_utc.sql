-- The times the warehouse stamps (`ingested_at`, `quarantined_at`, `applied_at`) are naive
-- TIMESTAMPs: DuckDB casts `current_timestamp` to the session's time zone, which is the
-- machine's, so one warehouse written from two machines (or across a DST change) mixed zones.
-- UTC for every connection.
SET TimeZone = 'UTC';
