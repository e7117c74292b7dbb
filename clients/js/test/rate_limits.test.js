// The JS client against a REAL server's admission limits (test/support/khala_server.py): the
// refusal's hint reaches the client's retry (and the app, as the `reconnecting` event's retryAfterMs
// or a `rate_limited` event) instead of the client coming back on its own jitter and being refused
// again. Each limit is one per hour in a key space of this run only: the second request is refused
// and its hint is beyond the test, so seeing the client wait for it is deterministic (the waits and
// the retries that follow them are covered with short hints against a scripted peer in
// client.test.js).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';

import WebSocket from 'ws';

import { KhalaClient, State, apiTokenProvider } from '../src/index.js';
import { startKhala, waitUntil } from './support/server.js';

const RUNS = 'runtime.run_summaries';
const WORKERS = 'runtime.codex_worker_summaries';
const HOUR = 3600;

async function withServer(settings, body) {
  const channelPrefix = `${process.env.KHALA_CHANNEL_PREFIX ?? 'khala'}_rl${randomBytes(4).toString('hex')}`;
  const khala = await startKhala({ settings, channelPrefix });
  const clients = [];
  const newClient = (topics) => {
    const client = new KhalaClient({
      url: khala.url, WebSocket, topics, tokenProvider: apiTokenProvider(khala.url, khala.api_token, { scopes: topics }),
    });
    client.seen = [];
    client.onEvent = (e) => client.seen.push(e);
    clients.push(client);
    return client;
  };
  try {
    await body(khala, newClient);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await khala.stop();
  }
}

test('a connection flood refusal floors the reconnect delay at its retry_after_ms', async () => {
  await withServer({ LIMIT_CONNECTS_PER_IP: [1, HOUR] }, async (khala, newClient) => {
    const first = newClient([RUNS]);
    first.start();
    await first.waitLive({ timeoutMs: 30000 });
    const second = newClient([RUNS]); // same address: a rate_limited push, then close 4429
    second.start();
    const reconnect = await waitUntil(() => second.seen.find((e) => e.type === 'reconnecting'), { message: 'the refused client schedules its reconnect' });
    assert.equal(reconnect.reason, 'rate_limited');
    assert.ok(reconnect.retryAfterMs > 0 && reconnect.delayMs >= reconnect.retryAfterMs, JSON.stringify(reconnect));
    assert.equal(second.state, State.RECONNECTING);
    assert.equal(second.connectAttempts.length, 1);
  });
});

test('a hydration answered 429 waits its Retry-After', async () => {
  await withServer({ LIMIT_HYDRATIONS_PER_TOKEN: [1, HOUR] }, async (khala, newClient) => {
    await khala.topicPolicy(WORKERS, { force_pointer_mode: true });
    await khala.writeMany([0, 1].map((i) => ({ topic: WORKERS, doc_key: `cw/${i}`, doc_version: 1, payload: { i } })));
    const client = newClient([WORKERS]);
    client.start();
    const refusal = await waitUntil(() => client.seen.find((e) => e.type === 'rate_limited'), { message: 'the second hydration waits for its Retry-After' });
    assert.equal(refusal.request, 'hydration');
    assert.ok(refusal.retryAfterMs > 0 && refusal.delayMs >= refusal.retryAfterMs, JSON.stringify(refusal));
    // the pointer is not given up on (and the cursor does not pass it) while the client waits
    assert.deepEqual(client.seen.filter((e) => e.type === 'error'), []);
    assert.equal(await client.watermark(WORKERS), 0);
  });
});
