-- Drop a finalization claim only if that worker holds it.
-- KEYS: finalizing. ARGV: job id, worker.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
