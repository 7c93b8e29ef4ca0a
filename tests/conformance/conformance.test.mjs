// The official Durable Streams conformance suite against CONFORMANCE_TEST_URL.
// Run through vitest's own runner: the package's CLI finds no test files when it sits
// in node_modules, so this file calls its programmatic entry point instead.
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.CONFORMANCE_TEST_URL
if (!baseUrl) throw new Error("set CONFORMANCE_TEST_URL to the server's stream root")
runConformanceTests({ baseUrl })
