-- A source's target rows whose task no config or no log names, per task: the `records` view's
-- joins drop them without a word (a cell misspelt or cased differently in the targets file, or
-- its files not there yet), so the ingest report lists them. Targets of a known task on a day
-- without a log are not counted: a day's log may come later.
SELECT t.task, count(*) AS n
FROM targets AS t
WHERE t.source = $source
  AND (
      NOT EXISTS (SELECT 1 FROM configs AS c WHERE c.source = t.source AND c.task = t.task)
      OR NOT EXISTS (SELECT 1 FROM logs AS l WHERE l.source = t.source AND l.task = t.task)
  )
GROUP BY t.task
ORDER BY t.task;
