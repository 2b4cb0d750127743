// An independent SSE client for tests/clients.rs: the npm `eventsource` package (a WHATWG
// EventSource for Node) pointed at ringcast. It prints one JSON object per line on stdout for
// everything the test needs to see: each request it makes (with the Last-Event-ID header it
// sends, observed through the package's `fetch` hook), `open`, each `message`, each `error`.
// It runs until its stdin closes (the test drops the pipe or is killed), so it never outlives
// the test.
//
//   node sse-client.mjs URL
import { EventSource } from "eventsource";

const url = process.argv[2];
if (!url) {
  console.error("usage: node sse-client.mjs URL");
  process.exit(2);
}

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const es = new EventSource(url, {
  fetch: (input, init) => {
    const headers = init?.headers ?? {};
    emit({ type: "request", lastEventId: headers["Last-Event-ID"] ?? null });
    return fetch(input, init);
  },
});
es.addEventListener("open", () => emit({ type: "open" }));
es.addEventListener("message", (e) =>
  emit({ type: "message", data: e.data, lastEventId: e.lastEventId }),
);
es.addEventListener("error", (e) =>
  emit({ type: "error", readyState: es.readyState, message: e.message ?? null }),
);

process.stdin.resume();
process.stdin.on("end", () => {
  es.close();
  process.exit(0);
});
process.stdin.on("error", () => process.exit(0));
