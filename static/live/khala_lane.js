// The Khala lane of the /live/ page: the JavaScript client (clients/js, served unbundled under
// /static/khala-client/) over the sync:v1 WebSocket. The client owns the protocol (bootstrap over
// HTTP, join, subscribe with stored cursors, replay, live updates, reconnect with full jitter and a
// fresh token each time, stale-cursor recovery); this file only renders its cache.
import { KhalaClient, LocalStorageStore, MemoryStore } from "../khala-client/index.js";

function pageStore(owner) {
  // Cursors and documents survive reloads (one key space per signed-in owner and origin).
  try {
    const probe = "khala:probe";
    window.localStorage.setItem(probe, "1");
    window.localStorage.removeItem(probe);
    return new LocalStorageStore({ namespace: `khala-live:${owner}` });
  } catch {
    return new MemoryStore();
  }
}

export async function startKhalaLane({ config, documents, watermarks, render, setState, mintToken }) {
  let refreshing = null;
  let again = false;

  async function refresh() {
    if (refreshing) { again = true; return refreshing; }
    refreshing = (async () => {
      do {
        again = false;
        for (const topic of config.topics) {
          const docs = await client.cache.documents(topic);
          documents[topic] = new Map([...docs].map(([key, doc]) => [key, doc.payload]).filter(([, payload]) => payload));
          watermarks[topic] = (await client.cache.topicState(topic)).watermark;
        }
        render();
      } while (again);
    })();
    try { await refreshing; } finally { refreshing = null; }
  }

  const client = new KhalaClient({
    url: window.location.origin,
    tokenProvider: mintToken,
    store: pageStore(config.owner),
    topics: config.topics,
    socketPath: config.socket_path,
    connectParams: { client: "khala-web-live" },
    onState: (state) => setState(state),
    onEvent: (event) => {
      if (event.type === "batch" || event.type === "snapshot" || event.type === "heartbeat") refresh();
      else if (event.type === "error") console.warn(`khala: ${event.code}: ${event.message}`);
      else if (event.type === "reconnecting") setState("reconnecting", `${event.reason}, retry in ${Math.round(event.delayMs)} ms`);
    },
  });
  window.khalaLiveClient = client; // for debugging in the browser console
  setState("connecting");
  // No render before the client has something: the server-rendered rows stay until the first
  // snapshot or batch replaces them.
  client.start();
}
