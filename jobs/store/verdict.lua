-- Store an item's verification record; the first wins.
-- KEYS: verdicts, job, verify waiting, finalize set, verify_at.
-- ARGV: index, record (JSON), samples, passed samples, "JOB:INDEX", job id.
redis.call('ZREM', KEYS[3], ARGV[5])
redis.call('HDEL', KEYS[5], ARGV[1])
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'verified', 1)
redis.call('HINCRBY', KEYS[2], 'verified_samples', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'passed_samples', ARGV[4])
settle(KEYS[4], ARGV[6])
return 1
