-- Take every retryable failure of the job, for `retry` to run again: their committed results become void
-- (the voided set, until a new result of theirs is committed) and their counts leave `failed`.
-- KEYS: failed, job, retry, finalize set, voided. ARGV: job id.
-- Returns their indices, then the retry items stored for them (each once, under its first index).
local indices = redis.call('SMEMBERS', KEYS[1])
local items = {}
for _, index in ipairs(indices) do
  local item = redis.call('HGET', KEYS[3], index)
  if item then table.insert(items, item) end
end
if #indices > 0 then
  redis.call('SADD', KEYS[5], unpack(indices))
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', KEYS[3], unpack(indices))
  redis.call('HINCRBY', KEYS[2], 'failed', -#indices)
  redis.call('HDEL', KEYS[2], 'finished', 'cancelled', 'finalized')
  redis.call('SREM', KEYS[4], ARGV[1])
end
return {indices, items}
