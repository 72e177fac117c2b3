-- Replace a settled job's lost result parts (missing or corrupt in the work folder) with one part of error
-- records for the items they held, each a retryable failure, so that `retry` runs them again (jobs.repairing).
-- Only if the job has not moved since the caller read it (same settlement generation, still finished).
-- KEYS: job, parts list, failed, retry, finalize set.
-- ARGV: job id, settlement generation, done, failed (counted again from the surviving parts, the lost items
-- among the failures), prompt, completion and cached tokens to take back (the lost parts'), the new part's
-- entry, then a counted list of the lost entries, then (index, retry item) pairs (the item "" when another
-- index carries it).
-- Returns 1, or 0 when the job moved (nothing changed).
if redis.call('HGET', KEYS[1], 'settlements') ~= ARGV[2] or not redis.call('HGET', KEYS[1], 'finished') then
  return 0
end
local lost_n = tonumber(ARGV[9])
for i = 10, 9 + lost_n do redis.call('LREM', KEYS[2], 1, ARGV[i]) end
redis.call('RPUSH', KEYS[2], ARGV[8])
redis.call('HSET', KEYS[1], 'done', ARGV[3], 'failed', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'prompt_tokens', -tonumber(ARGV[5]))
redis.call('HINCRBY', KEYS[1], 'completion_tokens', -tonumber(ARGV[6]))
redis.call('HINCRBY', KEYS[1], 'cached_prompt_tokens', -tonumber(ARGV[7]))
for i = 10 + lost_n, #ARGV, 2 do
  redis.call('SADD', KEYS[3], ARGV[i])
  if ARGV[i + 1] ~= '' then redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1]) end
end
redis.call('HDEL', KEYS[1], 'finalize_error')
return 1
