-- Move one unacknowledged delivery out of kombu's unacked hash, back onto its queue unless ARGV[3] is empty.
-- Only if the entry is still the one read: one reaper wins it.
-- KEYS: unacked, unacked_index, queue. ARGV: tag, the entry as read, the message to queue ('' to drop it).
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then redis.call('RPUSH', KEYS[3], ARGV[3]) end
return 1
