-- Commit a verdict part (verification records a worker wrote to the work folder): drop from the verdicts hash
-- exactly the records it holds that are still there unchanged, and list the part if it took any (else it is
-- never read: another worker moved them first, or the job's results file was written meanwhile).
-- KEYS: verdicts, verdict parts, unflushed verdicts.
-- ARGV: job id, part name, 1 if the records were all the hash held when read (else 0), then (index, record)
-- pairs. Returns how many records the part took.
local moved = 0
for i = 4, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    moved = moved + 1
  end
end
if moved > 0 then redis.call('RPUSH', KEYS[2], ARGV[2]) end
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[1])
elseif ARGV[3] == '1' then
  -- Those left came after the read: the oldest of them is younger than now.
  redis.call('ZADD', KEYS[3], 'XX', redis.call('TIME')[1], ARGV[1])
end
return moved
