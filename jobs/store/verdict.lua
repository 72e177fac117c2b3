-- Store an item's verification record; the first wins. The verdicted bitmap says which indices have theirs
-- (their records leave the verdicts hash for verdict parts in the work folder: flush_verdicts.lua); the
-- hash's own check covers records stored by an earlier version, which set no bit.
-- KEYS: verdicts, job, verify waiting, finalize set, verify_at, verdicted, unflushed verdicts.
-- ARGV: index, record (JSON), samples, passed samples, "JOB:INDEX", job id.
redis.call('ZREM', KEYS[3], ARGV[5])
redis.call('HDEL', KEYS[5], ARGV[1])
if redis.call('GETBIT', KEYS[6], ARGV[1]) == 1 then return 0 end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SETBIT', KEYS[6], ARGV[1], 1)
redis.call('ZADD', KEYS[7], 'NX', redis.call('TIME')[1], ARGV[6])
redis.call('HINCRBY', KEYS[2], 'verified', 1)
redis.call('HINCRBY', KEYS[2], 'verified_samples', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'passed_samples', ARGV[4])
settle(KEYS[4], ARGV[6])
return 1
