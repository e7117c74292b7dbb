// In-band token refresh against a REAL Khala server (daphne, PostgreSQL, Redis; started through
// test/support/khala_server.py) whose tokens live 3 s and whose sockets close 0.5 s after exp unless
// refreshed: the client refreshes three times on ONE socket, which keeps receiving live updates.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import WebSocket from 'ws';

import { KhalaClient, State, apiTokenProvider, tokenClaims } from '../src/index.js';
import { startKhala, waitUntil } from './support/server.js';

const RUNS = 'runtime.run_summaries';
const TTL = 3; // seconds

let khala;
before(async () => {
  khala = await startKhala({ settings: { TOKEN_TTL_SECONDS: TTL, TOKEN_TTL_MIN_SECONDS: 1, SESSION_EXPIRY_GRACE_SECONDS: 0.5 } });
});
after(async () => { await khala?.stop(); });

test('the socket stays open across three token lifetimes, receiving live updates', async () => {
  const seen = [];
  const client = new KhalaClient({
    url: khala.url, WebSocket, topics: [RUNS],
    tokenProvider: apiTokenProvider(khala.url, khala.api_token, { scopes: [RUNS] }),
    onEvent: (e) => seen.push(e),
  });
  client.start();
  try {
    await client.waitLive({ timeoutMs: 30000 });
    const first = tokenClaims(client._token);
    for (let round = 0; round < 3; round += 1) {
      await waitUntil(() => seen.filter((e) => e.type === 'token_refreshed').length > round, { timeoutMs: TTL * 3000, message: `refresh ${round + 1}` });
      const [watermark] = await khala.writeMany([{ topic: RUNS, doc_key: `refresh/${round}`, doc_version: 1, payload: { round } }]);
      await waitUntil(async () => (await client.watermark(RUNS)) >= watermark, { message: `a live update after refresh ${round + 1}` });
    }
    assert.ok(Date.now() / 1000 > first.expiresAt + 0.5, "the first token's session deadline has passed");
    assert.equal(client.connects, 1);
    assert.equal(client.state, State.LIVE);
    assert.deepEqual(seen.filter((e) => e.type === 'reconnecting' || e.type === 'refresh_failed' || e.type === 'error'), []);
    assert.equal(tokenClaims(client._token).sessionId, first.sessionId);
    assert.deepEqual([...(await client.documents(RUNS)).keys()].sort(), ['refresh/0', 'refresh/1', 'refresh/2']);
  } finally {
    await client.close();
  }
});
