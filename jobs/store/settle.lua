-- The settle condition, shared by the scripts that store results and verdicts (KEYS[2] is the job). A job that
-- settles gets its `finished` time (once per settlement; `retry` unsettles it), a new `settlements`
-- generation and, with an output folder, a place in the finalize set (jobs.finalize); the job's channel hears
-- "settled" (a waiting `submit --wait` wakes at once).
local function settle(finalize, job_id)
  local c = redis.call('HMGET', KEYS[2], 'total', 'done', 'failed', 'to_verify', 'verified')
  if c[1] and tonumber(c[2] or 0) + tonumber(c[3] or 0) >= tonumber(c[1])
      and tonumber(c[5] or 0) >= tonumber(c[4] or 0) then
    if redis.call('HSETNX', KEYS[2], 'finished', redis.call('TIME')[1]) == 1 then
      redis.call('HINCRBY', KEYS[2], 'settlements', 1)
      if redis.call('HEXISTS', KEYS[2], 'output_url') == 1 then redis.call('SADD', finalize, job_id) end
      redis.call('PUBLISH', KEYS[2] .. ':events', 'settled')
    end
  end
end
