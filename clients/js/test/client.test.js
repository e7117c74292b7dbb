// The JS client state machine against a scripted in-process Phoenix peer (ws server): iterators,
// dead-socket detection with a fresh token per connect, fatal join refusals.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import WebSocket, { WebSocketServer } from 'ws';

import { Backoff, HttpError, KhalaClient, State, payloadHash, toWire } from '../src/index.js';
import { waitUntil } from './support/server.js';

const TOPIC = 'runtime.run_summaries';
const reply = (frame, status = 'ok', response = {}) => JSON.stringify([frame[0], frame[1], frame[2], 'phx_reply', { status, response }]);

// onConnect(ws, state), when given, is what a new socket gets before any frame.
async function peer(onFrame, onConnect) {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => server.on('listening', resolve));
  const state = { connections: 0, tokens: [] };
  server.on('connection', (ws, req) => {
    state.connections += 1;
    state.tokens.push(new URL(req.url, 'http://x').searchParams.get('token'));
    ws.on('message', (data) => onFrame(ws, JSON.parse(String(data)), state));
    onConnect?.(ws, state);
  });
  state.url = `http://127.0.0.1:${server.address().port}`;
  state.close = () => new Promise((resolve) => { for (const c of server.clients) c.terminate(); server.close(resolve); });
  return state;
}

const counter = () => { let n = 0; return async () => `token-${++n}`; };

test('states() and events() are async iterators that end at closed', async () => {
  const p = await peer((ws, frame) => ws.send(reply(frame, 'ok', { current_watermarks: [] })));
  const client = new KhalaClient({ url: p.url, WebSocket, tokenProvider: counter(), topics: [TOPIC] });
  const states = [];
  const types = [];
  const watching = Promise.all([
    (async () => { for await (const s of client.states()) states.push(s); })(),
    (async () => { for await (const e of client.events()) types.push(e.type); })(),
  ]);
  client.start();
  await client.waitLive({ timeoutMs: 10000 });
  await client.close();
  await watching;
  await p.close();
  assert.deepEqual(states, [State.CONNECTING, State.JOINED, State.LIVE, State.CLOSED]);
  assert.deepEqual(types, ['state', 'state', 'state', 'state']);
});

test('a silent socket is detected and replaced, with a fresh token each time', async () => {
  const p = await peer((ws, frame) => {
    if (frame[3] === 'phx_join' || frame[3] === 'sync:subscribe') ws.send(reply(frame, 'ok', { current_watermarks: [] }));
    // heartbeats are never answered
  });
  const client = new KhalaClient({
    url: p.url, WebSocket, tokenProvider: counter(), topics: [TOPIC], heartbeatIntervalMs: 100, heartbeatTimeoutMs: 300,
    backoff: new Backoff({ baseMs: 10, capMs: 50 }),
  });
  client.start();
  await waitUntil(() => client.connects >= 3, { timeoutMs: 20000, message: 'three connects' });
  await client.close();
  await p.close();
  assert.ok(client.connects >= 3, `reconnected after dead sockets (${client.connects})`);
  assert.deepEqual(p.tokens.slice(0, 3), ['token-1', 'token-2', 'token-3']);
});

test('reauth_required at join stops the client with a FatalError', async () => {
  const p = await peer((ws, frame) => {
    if (frame[3] === 'phx_join') {
      ws.send(reply(frame, 'error', { code: 'reauth_required', message: 'sign in again' }));
      ws.close(4403);
    }
  });
  let calls = 0;
  const client = new KhalaClient({ url: p.url, WebSocket, tokenProvider: async () => { calls += 1; return 't'; }, topics: [TOPIC] });
  client.start();
  await assert.rejects(client.waitLive({ timeoutMs: 10000 }), (err) => err.name === 'FatalError' && err.code === 'reauth_required');
  assert.equal(calls, 1);
  assert.equal(client.state, State.CLOSED);
  await client.close();
  await p.close();
});

test('an ok subscribe reply followed by a stale_cursor push is recovered (snapshot, then resubscribe from its head)', async () => {
  // Retention pruned the topic between the server's stale check and its first replay page: the
  // server pushes stale_cursor and replies ok. The ok must not be taken for a live subscription.
  const stale = {
    code: 'stale_cursor', message: 'old', full_resync_required: true, reason_codes: ['retention_floor_breach'],
    stale_topics: [{ topic: TOPIC, reason: 'retention_floor_breach', resume_after: 3, retention_floor: 6, head_watermark: 10 }],
  };
  const subscribes = [];
  const p = await peer((ws, frame) => {
    if (frame[3] === 'sync:subscribe') {
      subscribes.push(frame[4]);
      if (subscribes.length === 1) ws.send(JSON.stringify([frame[0], null, 'sync:v1', 'sync:error', stale]));
    }
    ws.send(reply(frame, 'ok', { topics: [TOPIC], current_watermarks: [] }));
  });
  let snapshots = 0;
  const http = {
    async snapshot(topic) {
      snapshots += 1;
      return { topic, documents: [{ doc_key: 'd', doc_version: 1, payload: null, payload_hash: null, watermark: 10 }], headWatermark: 10, streamEpoch: 'epoch' };
    },
  };
  const client = new KhalaClient({ url: p.url, WebSocket, tokenProvider: counter(), topics: [TOPIC], http });
  client.start();
  await client.waitLive({ timeoutMs: 10000 });
  await waitUntil(() => subscribes.length >= 2, { timeoutMs: 10000, message: 'a second subscribe' });
  await client.close();
  await p.close();
  assert.equal(snapshots, 1);
  assert.equal(subscribes.length, 2);
  assert.deepEqual(subscribes[1].resume_after, [{ topic: TOPIC, watermark: 10, stream_epoch: 'epoch' }]);
});

// --- rate-limit hints ------------------------------------------------------------------------
// The fallback backoff here is at most 50 ms, so a delay of at least the hint can only come from it.

function hintedClient(url, options = {}) {
  const client = new KhalaClient({ url, WebSocket, tokenProvider: counter(), topics: [TOPIC], backoff: new Backoff({ baseMs: 10, capMs: 50 }), ...options });
  client.seen = [];
  client.onEvent = (e) => client.seen.push(e);
  return client;
}

const okReply = (ws, frame) => ws.send(reply(frame, 'ok', { current_watermarks: [] }));

// A hinted client on peer `p`, run until live, then closed (the peer too).
async function liveThenClosed(p, options = {}) {
  const client = hintedClient(p.url, options);
  client.start();
  try {
    await client.waitLive({ timeoutMs: 10000 });
  } finally {
    await client.close();
    await p.close();
  }
  return client;
}

// A peer's frame handler that answers every request but refuses the first `event` with `error`;
// and the list of `event` frames it received.
function refusingFirst(event, error) {
  const received = [];
  const onFrame = (ws, frame) => {
    if (frame[3] === event) {
      received.push(frame);
      if (received.length === 1) {
        ws.send(reply(frame, 'error', error));
        return;
      }
    }
    okReply(ws, frame);
  };
  return { onFrame, received };
}

test('a connection flood refusal makes the reconnect wait its retry_after_ms', async () => {
  const refusal = { code: 'rate_limited', message: 'too many requests (connects_per_ip)', limit: 'connects_per_ip', retry_after_ms: 300 };
  const p = await peer(okReply, (ws, state) => {
    if (state.connections > 1) return;
    ws.send(JSON.stringify([null, null, 'phoenix', 'sync:error', refusal])); // what the server does to a flood
    ws.close(4429);
  });
  const client = await liveThenClosed(p);
  const first = client.seen.find((e) => e.type === 'reconnecting');
  assert.equal(first.reason, 'rate_limited');
  assert.equal(first.retryAfterMs, 300);
  assert.ok(first.delayMs >= 300 && first.delayMs < 300 * 1.25, `at least the hint, spread by at most a quarter (${first.delayMs})`);
  assert.equal(p.connections, 2);
});

test('a join refused with rate_limited is asked again on the same socket', async () => {
  const { onFrame, received: joins } = refusingFirst('phx_join', { code: 'rate_limited', message: 'too many requests (connects_per_user)', limit: 'connects_per_user', retry_after_ms: 200 });
  const p = await peer(onFrame);
  const client = await liveThenClosed(p);
  assert.equal(p.connections, 1, 'the socket stays open: no new connection for a refused join');
  assert.equal(joins.length, 2);
  const limited = client.seen.filter((e) => e.type === 'rate_limited');
  assert.equal(limited.length, 1);
  const [{ request, limit, retryAfterMs, attempt, delayMs }] = limited;
  assert.deepEqual({ request, limit, retryAfterMs, attempt }, { request: 'phx_join', limit: 'connects_per_user', retryAfterMs: 200, attempt: 1 });
  assert.ok(delayMs >= 200 && delayMs < 250);
  assert.equal(client.seen.filter((e) => e.type === 'reconnecting').length, 0);
});

test('a subscribe refused for too many requests in flight is asked again', async () => {
  const { onFrame, received: subscribes } = refusingFirst('sync:subscribe', { code: 'rate_limited', message: 'too many requests in flight', retry_after_ms: 150 });
  const p = await peer(onFrame);
  const client = await liveThenClosed(p);
  assert.equal(p.connections, 1);
  assert.equal(subscribes.length, 2);
  const [limited] = client.seen.filter((e) => e.type === 'rate_limited');
  assert.deepEqual([limited.request, limited.limit, limited.retryAfterMs], ['sync:subscribe', null, 150]);
  assert.ok(limited.delayMs >= 150);
});

test('in-place retries are bounded, then the reconnect waits the hint', async () => {
  const joinsPerSocket = {};
  const p = await peer((ws, frame, state) => {
    if (frame[3] === 'phx_join') {
      joinsPerSocket[state.connections] = (joinsPerSocket[state.connections] ?? 0) + 1;
      if (state.connections === 1) {
        ws.send(reply(frame, 'error', { code: 'rate_limited', limit: 'sockets_per_user', retry_after_ms: 100 }));
        return;
      }
    }
    okReply(ws, frame);
  });
  const client = await liveThenClosed(p, { rateLimitAttempts: 3 });
  assert.deepEqual(joinsPerSocket, { 1: 3, 2: 1 });
  assert.deepEqual(client.seen.filter((e) => e.type === 'rate_limited').map((e) => e.attempt), [1, 2]);
  const reconnects = client.seen.filter((e) => e.type === 'reconnecting');
  assert.equal(reconnects.length, 1);
  assert.equal(reconnects[0].reason, 'rate_limited');
  assert.equal(reconnects[0].retryAfterMs, 100);
  assert.ok(reconnects[0].delayMs >= 100);
});

const GOOD_DOCUMENT = { ok: true };

// A peer that answers every request and replays one pointer (hydration required) on subscribe.
function onePointerPeer() {
  const pointer = { topic: TOPIC, doc_key: 'd', doc_version: 1, payload: null, payload_hash: null, watermark: 1, hydration_required: true };
  return peer((ws, frame) => {
    if (frame[3] === 'sync:subscribe') {
      ws.send(JSON.stringify([frame[0], null, 'sync:v1', 'sync:update_batch', { updates: [pointer], replay_complete: true, head_watermarks: [{ topic: TOPIC, watermark: 1 }] }]));
    }
    okReply(ws, frame);
  });
}

// An HTTP API whose first document request throws `error`; later ones return the document.
async function failingOnce(error) {
  const goodHash = toWire(await payloadHash(GOOD_DOCUMENT));
  const http = {
    calls: 0,
    async getDocument(topic, docKey) {
      http.calls += 1;
      if (http.calls === 1) throw error;
      return { doc_key: docKey, doc_version: 1, payload: GOOD_DOCUMENT, payload_hash: goodHash, watermark: 1 };
    },
  };
  return http;
}

test('a hydration answered 429 is retried after its Retry-After', async () => {
  const p = await onePointerPeer();
  const http = await failingOnce(new HttpError('rate_limited', 'too many requests; retry later', { code: 'rate_limited', retry_after: 0.2 }, 429, 200));
  const client = hintedClient(p.url, { http });
  client.start();
  try {
    await client.waitLive({ timeoutMs: 10000 });
    await waitUntil(async () => (await client.watermark(TOPIC)) >= 1, { timeoutMs: 5000, message: 'the pointer applied' });
  } finally {
    await client.close();
    await p.close();
  }
  assert.deepEqual((await client.documents(TOPIC)).get('d').payload, GOOD_DOCUMENT);
  assert.equal(http.calls, 2);
  const limited = client.seen.filter((e) => e.type === 'rate_limited');
  assert.deepEqual(limited.map((e) => [e.request, e.retryAfterMs]), [['hydration', 200]]);
  assert.ok(limited[0].delayMs >= 200);
  assert.deepEqual(client.seen.filter((e) => e.type === 'error'), []);
});

test('a hydration answered 503 floors the reconnect at its Retry-After', async () => {
  const p = await onePointerPeer();
  // The database is down at first: the batch is replayed after a reconnect.
  const http = await failingOnce(new HttpError('database_unavailable', 'the database is unavailable; retry later', { retry_after: 0.3 }, 503, 300));
  const client = hintedClient(p.url, { http });
  client.start();
  try {
    await waitUntil(async () => (await client.watermark(TOPIC)) >= 1, { timeoutMs: 10000, message: 'the pointer applied' });
  } finally {
    await client.close();
    await p.close();
  }
  assert.deepEqual((await client.documents(TOPIC)).get('d').payload, GOOD_DOCUMENT);
  assert.equal(p.connections, 2);
  const reconnects = client.seen.filter((e) => e.type === 'reconnecting');
  assert.deepEqual(reconnects.map((e) => [e.reason, e.retryAfterMs]), [['hydration_failed', 300]]);
  assert.ok(reconnects[0].delayMs >= 300);
});
