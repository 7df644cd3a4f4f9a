-- wrk hook for scripts/soak.sh: each thread counts answers that are 200 with the expected
-- body ("ok") and everything else ("bad"), and rewrites <dir>/wrk-<thread> as "ok bad"
-- every 1000 answers and at once after a bad one, so the soak can sample errors live
-- (the sampled "ok" lags by under 1000 per thread).
-- Arguments (after --): the output directory, the expected body.
local threads = 0

function setup(thread)
    thread:set("id", threads)
    threads = threads + 1
end

function init(args)
    dir = args[1]
    expect = args[2]
    ok, bad, n = 0, 0, 0
end

local function flush()
    -- Write aside, then rename: the sampler never reads a half-written file.
    local tmp = dir .. "/.tmp-wrk-" .. id
    local f = io.open(tmp, "w")
    if f then
        f:write(ok, " ", bad, "\n")
        f:close()
        os.rename(tmp, dir .. "/wrk-" .. id)
    end
end

function response(status, headers, body)
    local good = status == 200 and (expect == nil or body == expect)
    if good then ok = ok + 1 else bad = bad + 1 end
    n = n + 1
    if not good or n % 1000 == 0 then flush() end
end
