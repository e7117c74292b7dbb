// The JavaScript client against a REAL Khala server (daphne, PostgreSQL, Redis) started by the
// test through the repo's Python harness (test/support/khala_server.py). Every test ends by
// comparing the cache with the server's read models.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { isDeepStrictEqual } from 'node:util';

import WebSocket from 'ws';

import { HttpApi, KhalaClient, LocalStorageStore, MemoryStore, State, apiTokenProvider } from '../src/index.js';
import { rng } from './support/random.js';
import { startKhala, waitUntil } from './support/server.js';
import { MemoryStorage } from './support/storage.js';

const RUNS = 'runtime.run_summaries';
const WORKERS = 'runtime.codex_worker_summaries';
const NOTES = 'runtime.notifications';
const EVENTS_TOPIC = 'runtime.codex_worker_events';

let khala;
before(async () => { khala = await startKhala(); });
after(async () => { await khala?.stop(); });

function newClient(topics, options = {}) {
  const calls = [];
  const provider = apiTokenProvider(khala.url, khala.api_token, { scopes: [RUNS, WORKERS, NOTES, EVENTS_TOPIC] });
  const client = new KhalaClient({
    url: khala.url,
    WebSocket,
    topics,
    tokenProvider: async () => { calls.push(Date.now()); return provider(); },
    ...options,
  });
  client.tokenCalls = calls;
  client.seen = [];
  client.onEvent = (e) => client.seen.push(e);
  return client;
}

async function cacheState(client, topic) {
  const docs = await client.documents(topic);
  return Object.fromEntries([...docs].map(([k, d]) => [k, [d.docVersion, d.payload]]));
}

async function converged(client, topic) {
  const [expected, head] = await Promise.all([khala.readModels(topic), khala.head(topic)]);
  return isDeepStrictEqual(await cacheState(client, topic), expected) && (await client.watermark(topic)) >= head;
}

const writes = (topic, n, version = 1, prefix = 'd') => Array.from({ length: n }, (_, i) => ({ topic, doc_key: `${prefix}/${i}`, doc_version: version, payload: { i, v: version } }));

test('replay, then live updates, equal the read models', async () => {
  await khala.writeMany(writes(RUNS, 120));
  await khala.writeMany([{ topic: RUNS, doc_key: 'other/1', doc_version: 1, payload: { secret: true }, owner: 'user:999999' }]);
  const client = newClient([RUNS], { replayBatchSize: 25 });
  client.start();
  try {
    await client.waitLive({ timeoutMs: 30000 });
    assert.ok(await converged(client, RUNS));
    assert.equal((await client.documents(RUNS)).has('other/1'), false, 'owner filter');
    await khala.writeMany([{ topic: RUNS, doc_key: 'd/5', doc_version: 2, payload: { i: 5, v: 2 } }, { topic: RUNS, doc_key: 'd/new', doc_version: 1, payload: { new: true } }]);
    await waitUntil(() => converged(client, RUNS), { message: 'live updates' });
    assert.deepEqual(client.seen.filter((e) => e.type === 'error'), []);
    assert.deepEqual(client.seen.filter((e) => e.type === 'state').map((e) => e.state).slice(0, 3), [State.CONNECTING, State.JOINED, State.LIVE]);
  } finally {
    await client.close();
  }
  assert.equal(client.state, State.CLOSED);
  assert.deepEqual(client.seen.filter((e) => e.type === 'error'), [], 'closing is not an error');
});

test('pointer-mode documents are hydrated over HTTP and verified', async () => {
  await khala.topicPolicy(WORKERS, { force_pointer_mode: true });
  await khala.writeMany(writes(WORKERS, 12, 1, 'cw'));
  const client = newClient([WORKERS]);
  client.start();
  try {
    await client.waitLive({ timeoutMs: 30000 });
    await khala.writeMany([{ topic: WORKERS, doc_key: 'cw/live', doc_version: 1, payload: { live: true } }]);
    await waitUntil(() => converged(client, WORKERS), { message: 'pointer docs hydrated' });
    for (const doc of (await client.documents(WORKERS)).values()) assert.equal(doc.hydrationRequired, false);
    assert.deepEqual(client.seen.filter((e) => e.type === 'error'), []);
  } finally {
    await client.close();
  }
});

test('hydrating a pointer states its watermark and epoch, so a lagging replica is not asked', async () => {
  await khala.topicPolicy(WORKERS, { force_pointer_mode: true });
  const urls = [];
  const client = newClient([WORKERS], { fetch: (url, init) => { urls.push(String(url)); return fetch(url, init); } });
  client.start();
  try {
    await client.waitLive({ timeoutMs: 30000 });
    const [watermark] = await khala.writeMany([{ topic: WORKERS, doc_key: 'cw/fresh', doc_version: 1, payload: { fresh: true } }]);
    await waitUntil(() => converged(client, WORKERS), { message: 'the live pointer hydrated' });
    const epoch = (await client.cache.topicState(WORKERS)).streamEpoch;
    assert.ok(epoch);
    const asked = urls.filter((u) => u.includes('/api/sync/v1/doc/') && u.includes('cw/fresh'));
    assert.equal(asked.length, 1, asked.join('\n'));
    const query = new URL(asked[0]).searchParams;
    assert.deepEqual([query.get('min_watermark'), query.get('stream_epoch')], [String(watermark), epoch]);
  } finally {
    await client.close();
  }
});

test('stale cursor: snapshot over HTTP, resume from its head', async () => {
  await khala.writeMany(writes(NOTES, 30, 1, 'n'));
  const storage = new MemoryStorage();
  const first = newClient([NOTES], { store: new LocalStorageStore({ storage }) });
  first.start();
  await first.waitLive({ timeoutMs: 30000 });
  await first.close();
  await khala.topicPolicy(NOTES, { replay_budget_events: 5 });
  await khala.writeMany(writes(NOTES, 20, 2, 'n'));
  const second = newClient([NOTES], { store: new LocalStorageStore({ storage }) });
  second.start();
  try {
    await second.waitLive({ timeoutMs: 30000 });
    assert.ok(await converged(second, NOTES));
    const stale = second.seen.filter((e) => e.type === 'stale_cursor');
    assert.equal(stale.length, 1, 'handled once (push and reply carry the same payload)');
    assert.deepEqual(stale[0].payload.reason_codes, ['replay_budget_exceeded']);
    const snap = second.seen.find((e) => e.type === 'snapshot');
    assert.equal(snap.documents, 30);
  } finally {
    await second.close();
  }
});

test('localStorage store resumes from its cursor without replaying from 0', async () => {
  await khala.writeMany(writes(EVENTS_TOPIC, 50, 1, 'e'));
  const storage = new MemoryStorage();
  const first = newClient([EVENTS_TOPIC], { store: new LocalStorageStore({ storage }) });
  first.start();
  await first.waitLive({ timeoutMs: 30000 });
  const cursor = await first.watermark(EVENTS_TOPIC);
  await first.close();
  await khala.writeMany(writes(EVENTS_TOPIC, 3, 2, 'e'));
  const second = newClient([EVENTS_TOPIC], { store: new LocalStorageStore({ storage }) });
  second.start();
  try {
    await second.waitLive({ timeoutMs: 30000 });
    assert.ok(await converged(second, EVENTS_TOPIC));
    const received = second.seen.filter((e) => e.type === 'batch').flatMap((e) => e.result.documents.map((d) => d.watermark));
    assert.ok(received.length === 3 && received.every((w) => w > cursor), `resumed after ${cursor}: ${received}`);
  } finally {
    await second.close();
  }
});

test('worker restart: clients reconnect with jitter and a fresh token, and converge', async () => {
  const clients = Array.from({ length: 20 }, (_, i) => newClient([RUNS], { random: rng(i + 1), store: new MemoryStore() }));
  try {
    clients.forEach((c) => c.start());
    await Promise.all(clients.map((c) => c.waitLive({ timeoutMs: 30000 })));
    const tokensBefore = clients.map((c) => c.tokenCalls.length);
    const seenBefore = clients.map((c) => c.seen.length);
    await khala.restart();
    await khala.writeMany(writes(RUNS, 10, 3));
    await waitUntil(async () => {
      for (const c of clients) if (c.state !== State.LIVE || !(await converged(c, RUNS))) return false;
      return true;
    }, { timeoutMs: 90000, intervalMs: 100, message: 'all clients live and converged' });
    clients.forEach((c, i) => assert.ok(c.tokenCalls.length > tokensBefore[i], 'a fresh token per connect'));
    // The spread is asserted on the delays the clients CHOSE (their 'reconnecting' events, drawn from
    // each client's injected seeded random), never on wall-clock times; bench/reconnect_jitter.py
    // measures the wall-clock spread.
    const firstDelays = clients.map((c, i) => c.seen.slice(seenBefore[i]).find((e) => e.type === 'reconnecting'))
      .filter((e) => e.attempt === 1).map((e) => e.delayMs);
    assert.ok(firstDelays.length >= 15, `most clients retried at attempt 1 (${firstDelays.length})`);
    assert.ok(firstDelays.every((d) => d >= 0 && d < 500), 'full jitter over [0, base)');
    assert.ok(Math.max(...firstDelays) - Math.min(...firstDelays) > 200, 'reconnects are spread by jitter');
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
});

test('a token the server refuses stops the client after one fresh retry', async () => {
  let calls = 0;
  const client = new KhalaClient({ url: khala.url, WebSocket, topics: [RUNS], tokenProvider: async () => { calls += 1; return 'not.a.jwt'; } });
  client.start();
  await assert.rejects(client.waitForState(State.LIVE, { timeoutMs: 30000 }), (err) => err.name === 'AuthError' && err.code === 'unauthorized');
  assert.equal(calls, 2);
  assert.equal(client.state, State.CLOSED);
  await client.close();
});

test('HttpApi errors carry the server codes', async () => {
  const http = new HttpApi(khala.url);
  await assert.rejects(http.mintSyncToken('wrong'), (err) => err.status === 401);
  const token = (await http.mintSyncToken(khala.api_token, { scopes: [RUNS] })).token;
  await assert.rejects(http.getDocument(RUNS, 'no/such:doc', token), (err) => err.code === 'document_not_found' && err.status === 404);
  await assert.rejects(http.listPage(NOTES, token), (err) => err.code === 'forbidden_topic');
});
