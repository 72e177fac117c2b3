-- Commit a job's results file (jobs.finalize): only the writer that holds the claim, and only if the job has
-- not been unsettled (`retry`) since the writer read it. The job's channel hears "finalized".
-- KEYS: finalizing, job, finalize set, then the keys to delete (attempt counters, verdicts and verdict parts,
-- shard markers).
-- ARGV: job id, worker, settlement generation read before writing, results file URL, time.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], 'settlements') ~= ARGV[3] or not redis.call('HGET', KEYS[2], 'finished') then
  return 0
end
redis.call('HSET', KEYS[2], 'results_file', ARGV[4], 'finalized', ARGV[5])
redis.call('HDEL', KEYS[2], 'finalize_error')
redis.call('SREM', KEYS[3], ARGV[1])
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('PUBLISH', KEYS[2] .. ':events', 'finalized')
return 1
