// The Node reference server (@durable-streams/server), in memory, for `scripts/conformance --compare`
// and bench/dstreams.py.
// Usage: node [--expose-gc] reference-server.mjs PORT [MEMORY_PORT] ; prints "listening <url>" once it serves.
// With MEMORY_PORT, GET http://127.0.0.1:MEMORY_PORT/ answers process.memoryUsage() as JSON, taken
// after a full garbage collection when node runs with --expose-gc ("gc": true says it did), so
// that the bench measures the live heap rather than whatever V8 has not collected yet.
import { createServer } from "node:http"
import { DurableStreamTestServer } from "@durable-streams/server"

const port = Number(process.argv[2] ?? 4437)
const memoryPort = process.argv[3]
const server = new DurableStreamTestServer({ port, host: "127.0.0.1" })
await server.start()
let memory
if (memoryPort) {
  memory = createServer((req, res) => {
    const gc = typeof globalThis.gc === "function"
    if (gc) {
      globalThis.gc()
      globalThis.gc() // a second pass frees what the first one's finalizers released
    }
    res.writeHead(200, { "content-type": "application/json" })
    res.end(JSON.stringify({ ...process.memoryUsage(), gc }))
  })
  await new Promise((resolve) => memory.listen(Number(memoryPort), "127.0.0.1", resolve))
}
console.log(`listening http://127.0.0.1:${port}`)
const stop = async () => {
  memory?.close()
  await server.stop()
  process.exit(0)
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
