// The JS client state machine against a scripted in-process Phoenix peer (ws server): iterators,
// dead-socket detection with a fresh token per connect, fatal join refusals.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import WebSocket, { WebSocketServer } from 'ws';

import { Backoff, KhalaClient, State } from '../src/index.js';

const TOPIC = 'runtime.run_summaries';
const reply = (frame, status = 'ok', response = {}) => JSON.stringify([frame[0], frame[1], frame[2], 'phx_reply', { status, response }]);

async function peer(onFrame) {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => server.on('listening', resolve));
  const state = { connections: 0, tokens: [] };
  server.on('connection', (ws, req) => {
    state.connections += 1;
    state.tokens.push(new URL(req.url, 'http://x').searchParams.get('token'));
    ws.on('message', (data) => onFrame(ws, JSON.parse(String(data)), state));
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
  const deadline = Date.now() + 20000;
  while (client.connects < 3 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
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
  const deadline = Date.now() + 10000;
  while (subscribes.length < 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  await client.close();
  await p.close();
  assert.equal(snapshots, 1);
  assert.equal(subscribes.length, 2);
  assert.deepEqual(subscribes[1].resume_after, [{ topic: TOPIC, watermark: 10, stream_epoch: 'epoch' }]);
});
