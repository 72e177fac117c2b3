-- Commit a part of results (jobs.parts), whole or not at all; the first commit of an item wins.
-- KEYS: parts list, job, failed, verify waiting, retry, finalize set, voided, verify_at, then optionally the
-- shard marker (a bitmap of the shard's positions that have a result; gone once the shard finished).
-- ARGV: job id, part name, done, failed, prompt tokens, completion tokens, cached tokens, then four counted
-- lists: positions in the shard; indices whose result awaits verification; (index, retry item) pairs of
-- retryable failures (the item "" when another index carries it); every index of the part.
-- Returns {1} committed, {0} the shard is gone (another copy finished it), or {2, positions...}: those
-- positions already have a result (another copy of the shard stored them first) and nothing changed.
local shard = KEYS[9]
local at = 8
local function list()
  local n = tonumber(ARGV[at])
  local first = at + 1
  at = at + n + 1
  return first, n
end
local pos_first, pos_n = list()
if shard then
  if redis.call('EXISTS', shard) == 0 then return {0} end
  local taken = {2}
  for i = pos_first, pos_first + pos_n - 1 do
    if redis.call('GETBIT', shard, ARGV[i]) == 1 then taken[#taken + 1] = ARGV[i] end
  end
  if #taken > 1 then return taken end
  for i = pos_first, pos_first + pos_n - 1 do redis.call('SETBIT', shard, ARGV[i], 1) end
end
local verify_first, verify_n = list()
local retry_first, retry_n = list()
local index_first, index_n = list()
-- The parts list's entry: the part's name and the tokens it counted (what a lost part's replacement takes back).
if index_n > 0 then redis.call('RPUSH', KEYS[1], ARGV[2] .. ' ' .. ARGV[5] .. ' ' .. ARGV[6] .. ' ' .. ARGV[7]) end
redis.call('HINCRBY', KEYS[2], 'done', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'failed', ARGV[4])
redis.call('HINCRBY', KEYS[2], 'prompt_tokens', ARGV[5])
redis.call('HINCRBY', KEYS[2], 'completion_tokens', ARGV[6])
redis.call('HINCRBY', KEYS[2], 'cached_prompt_tokens', ARGV[7])
if verify_n > 0 then
  local now = redis.call('TIME')[1]
  redis.call('HINCRBY', KEYS[2], 'to_verify', verify_n)
  for i = verify_first, verify_first + verify_n - 1 do
    redis.call('ZADD', KEYS[4], 'NX', now, ARGV[1] .. ':' .. ARGV[i])
    redis.call('HSET', KEYS[8], ARGV[i], ARGV[2])
  end
end
for i = retry_first, retry_first + retry_n - 1, 2 do
  redis.call('SADD', KEYS[3], ARGV[i])
  if ARGV[i + 1] ~= '' then redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1]) end
end
if index_n > 0 and redis.call('EXISTS', KEYS[7]) == 1 then
  for i = index_first, index_first + index_n - 1 do redis.call('SREM', KEYS[7], ARGV[i]) end
end
settle(KEYS[6], ARGV[1])
return {1}
