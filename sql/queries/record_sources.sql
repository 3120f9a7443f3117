-- The sources the warehouse holds records of (to name them when another was asked for).
SELECT DISTINCT source FROM records ORDER BY source;
