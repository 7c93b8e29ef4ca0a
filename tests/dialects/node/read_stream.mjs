// Reads a runrelay chat task stream exactly as an AI SDK client resumes one:
// DefaultChatTransport.reconnectToStream (GET, 204 = nothing to resume, strict chunk
// schema) into readUIMessageStream. Prints the final UI message as one JSON line.
//
//   node read_stream.mjs <stream url> <bearer token>
import { DefaultChatTransport, readUIMessageStream } from "ai";

const [url, token] = process.argv.slice(2);
if (!url) {
  console.error("usage: node read_stream.mjs <stream url> [bearer token]");
  process.exit(2);
}

const errors = [];
const transport = new DefaultChatTransport({
  prepareReconnectToStreamRequest: () => ({
    api: url,
    headers: token ? { Authorization: `Bearer ${token}` } : {},
  }),
});

const stream = await transport.reconnectToStream({ chatId: "runrelay" });
if (stream === null) {
  console.log(JSON.stringify({ status: 204 }));
  process.exit(0);
}

let message = null;
for await (const snapshot of readUIMessageStream({
  stream,
  onError: (error) => errors.push(String(error?.message ?? error)),
  terminateOnError: true,
})) {
  message = snapshot;
}

const parts = message ? message.parts : [];
const text = parts.filter((p) => p.type === "text").map((p) => p.text).join("");
console.log(
  JSON.stringify({
    id: message?.id ?? null,
    text,
    parts: parts.map((p) => ({ type: p.type, state: p.state ?? null })),
    errors,
  }),
);
