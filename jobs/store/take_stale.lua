-- Members of the verify waiting set queued before the cutoff, stamped now and returned, so that of several
-- executors sweeping at once only one queues each again.
-- KEYS: waiting. ARGV: cutoff, now, limit.
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(members) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
end
return members
