// Read a runrelay run as a Durable Stream with the official client (@durable-streams/client),
// from the start to the close, through whatever the network does to it.
//
//   node read_run.mjs <stream url> <bearer token> <sse|long-poll> [start offset]
//
// Prints one line per JSON message as it arrives ("item <json>"), "reopen <offset>" each
// time it resumes, then "closed <offset>" when the client reports the stream closed, and
// exits 0. Gives up (exit 1) after 50 resumes.
//
// The client retries failed requests itself (backoff, onError) and SSE responses the
// server ends; a connection reset in the middle of a response body fails the session
// instead, so the reader resumes the way the protocol intends: a new session from the
// last offset the client handed it (each batch carries its Stream-Next-Offset).
import { stream } from "@durable-streams/client"

const [url, token, live] = process.argv.slice(2)
if (!url || !token || !["sse", "long-poll"].includes(live)) {
  console.error("usage: node read_run.mjs <url> <token> <sse|long-poll>")
  process.exit(2)
}

async function session(offset) {
  const res = await stream({
    url,
    offset,
    live,
    json: true,
    headers: { Authorization: `Bearer ${token}` },
    backoffOptions: { initialDelay: 20, maxDelay: 200, multiplier: 2, maxRetries: 1000 },
    onError: (error) => {
      console.error(`client retries after: ${error?.message ?? error}`)
      return {} // {} = retry
    },
  })
  return await new Promise((resolve, reject) => {
    res.subscribeJson(async (batch) => {
      process.stdout.write(batch.items.map((item) => `item ${JSON.stringify(item)}\n`).join(""))
      offset = batch.offset
      if (batch.streamClosed) resolve({ closed: offset })
    })
    // `closed` resolves when the session's network side is done, which can be before the
    // subscriber has had the last batches: a clean end waits for the batch that says
    // closed (a second's grace, then resume as if cut). An error drops what was queued,
    // so `offset` (set with each delivered batch) is exactly where to resume.
    res.closed.then(
      () => setTimeout(() => resolve({ offset }), 1000),
      (error) => resolve({ offset, error }),
    )
  })
}

let offset = process.argv[5] ?? "-1"
for (let resumes = 0; resumes <= 50; resumes++) {
  let result
  try {
    result = await session(offset)
  } catch (error) {
    result = { offset, error }
  }
  if (result.closed) {
    process.stdout.write(`closed ${result.closed}\n`)
    process.exit(0)
  }
  offset = result.offset
  console.error(`session ended (${result.error?.message ?? "no error"}); resuming`)
  process.stdout.write(`reopen ${offset}\n`)
}
console.error("gave up after 50 resumes")
process.exit(1)
