-- wrk script: every request embeds one sentence of the workload file, in turn.
-- Prints latency percentiles and requests/s as one JSON line at the end.
local sentences = {}
local next_index = 1

function init(args)
  local path = args[1] or os.getenv("BENCH_SENTENCES")
  for line in io.lines(path) do
    if #line > 0 then
      local escaped = line:gsub('\\', '\\\\'):gsub('"', '\\"')
      table.insert(sentences, escaped)
    end
  end
end

function request()
  local sentence = sentences[next_index]
  next_index = next_index % #sentences + 1
  local body = '{"input":["' .. sentence .. '"]}'
  return wrk.format("POST", "/v1/embeddings", { ["Content-Type"] = "application/json" }, body)
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    '{"requests":%d,"errors":%d,"sentences_per_s":%.1f,"p50_ms":%.2f,"p95_ms":%.2f,"p99_ms":%.2f}\n',
    summary.requests, errors, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
