-- A rendered byte range takes its shard numbers, first-wins: the first commit of range N reserves ARGV[2]
-- numbers after the job's shards so far; a later one (the range rendered again, its task's worker killed) gets
-- the same numbers back. KEYS[1] the job's ranges hash, KEYS[2] the job record; ARGV[1] the range number,
-- ARGV[2] its shard count, ARGV[3] the duplicates folded in it, ARGV[4] its lines that are not requests
-- (--skip-invalid: error records). Returns {base, fresh}; {-1, 0} when the job is gone.
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {-1, 0}
end
local field = 'done:' .. ARGV[1]
local done = redis.call('HGET', KEYS[1], field)
if done then
  return {tonumber(string.match(done, '^(%d+)')), 0}
end
local count = tonumber(ARGV[2])
local base = redis.call('HINCRBY', KEYS[2], 'shards', count) - count
redis.call('HSET', KEYS[1], field, base .. ' ' .. count .. ' ' .. ARGV[3] .. ' ' .. ARGV[4])
return {base, 1}
