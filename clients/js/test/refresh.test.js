// The in-band refresh schedule (src/refresh.js) on a fake clock with a scripted random: when it
// fires (a jittered fraction of the remaining lifetime), what it asks the provider for (the socket's
// session), how a failure is retried until the expiry, and how the client surfaces it as a state
// (against a scripted in-process peer). The real server's side is in refresh_integration.test.js.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import WebSocket, { WebSocketServer } from 'ws';

import { FakeClock, FatalError, KhalaClient, REFRESH_FRACTION, State, TokenRefresher, TransientError, refreshDelay, remainingMs, tokenClaims } from '../src/index.js';
import { rng } from './support/random.js';
import { waitUntil } from './support/server.js';

const SUBJECT = 'user:7';
const SESSION = 'sess_abc';

const b64url = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
function jwt({ exp, iat, sub = SUBJECT, session = SESSION }) {
  const claims = { sub, oa_session_id: session, exp };
  if (iat !== undefined) claims.iat = iat;
  return `${b64url({ alg: 'HS256', kid: 'k' })}.${b64url(claims)}.c2ln`;
}
const nowS = (clock) => clock.wallNow() / 1000;

/** The refresher's collaborators, answering from lists of outcomes (undefined = a fresh token / ok). */
function script(clock, { ttl = 100, provided = [], replies = [] } = {}) {
  const s = { asked: [], sent: [], refreshed: [], failures: [] };
  s.provide = async (sessionId) => {
    s.asked.push(sessionId);
    const outcome = provided.shift();
    if (outcome instanceof Error) throw outcome;
    if (typeof outcome === 'string') return outcome;
    return jwt({ exp: nowS(clock) + ttl, iat: nowS(clock), session: sessionId });
  };
  s.send = async (token) => {
    s.sent.push([clock.now(), token]);
    const outcome = replies.shift();
    if (outcome instanceof Error) throw outcome;
    return { expires_at: tokenClaims(token).expiresAt };
  };
  s.refresher = (token, random = () => 0.5) => new TokenRefresher(token, {
    provide: s.provide, send: s.send, clock, random,
    // virtual time, then one turn of the event loop (a FakeClock sleep alone is only a microtask)
    sleep: async (ms) => { await clock.sleep(ms); await new Promise((resolve) => setImmediate(resolve)); },
    onRefreshed: (t) => s.refreshed.push([clock.now(), t]),
    onFailed: (f) => s.failures.push(f),
  });
  return s;
}

/** Run until `predicate()` holds (fake time: each sleep returns at once); then stop. */
async function runUntil(refresher, predicate, limit = 500) {
  let done = false;
  const running = refresher.run().finally(() => { done = true; });
  for (let i = 0; i < limit && !done && !predicate(); i += 1) await new Promise((resolve) => setImmediate(resolve));
  refresher.stop();
  const finished = done;
  await running;
  return finished;
}

test('claims are read without verification; the lifetime is capped by exp - iat', () => {
  const claims = tokenClaims(jwt({ exp: 1_700_000_300, iat: 1_700_000_000 }));
  assert.deepEqual(claims, { subject: SUBJECT, sessionId: SESSION, issuedAt: 1_700_000_000, expiresAt: 1_700_000_300 });
  assert.equal(remainingMs(claims, 1_700_000_100_000), 200_000);
  assert.equal(remainingMs(claims, 1_699_999_000_000), 300_000); // a client clock running behind
  assert.equal(remainingMs(claims, 1_700_000_400_000), 0);
  for (const opaque of ['', 'not-a-jwt', 'a.b', 'a.!!!.c', `a.${Buffer.from('[1]').toString('base64url')}.c`, null]) {
    assert.equal(tokenClaims(opaque), null);
  }
});

test('the refresh fires within the jitter band', () => {
  assert.equal(refreshDelay(100, () => 0), 75);
  assert.ok(Math.abs(refreshDelay(100, () => 0.999999) - 90) < 1e-3);
  const [low, high] = REFRESH_FRACTION;
  const draws = Array.from({ length: 500 }, (_, seed) => refreshDelay(100, rng(seed)));
  assert.ok(draws.every((d) => d >= 100 * low && d < 100 * high));
  assert.ok(Math.max(...draws) - Math.min(...draws) > 10, 'spread over the band, not one instant');
});

test('refreshes ahead of each expiry, for the same session', async () => {
  const clock = new FakeClock(1_700_000_000_000);
  const s = script(clock);
  const draws = [0, 0.999, 0.5];
  const refresher = s.refresher(jwt({ exp: nowS(clock) + 100, iat: nowS(clock) }), () => draws.shift() ?? 0.5);
  const start = clock.now();
  await runUntil(refresher, () => s.refreshed.length === 3);
  const times = s.refreshed.map(([t]) => t - start);
  const expected = [75_000, 75_000 + 89_985, 75_000 + 89_985 + 82_500];
  times.forEach((t, i) => assert.ok(Math.abs(t - expected[i]) < 1e-6, `${times} vs ${expected}`));
  assert.deepEqual(s.asked, [SESSION, SESSION, SESSION]);
  assert.deepEqual(s.failures, []);
  assert.equal(refresher.refreshes, 3);
});

test('a failed attempt is reported and retried before the expiry', async () => {
  const clock = new FakeClock(1_700_000_000_000);
  const s = script(clock, {
    provided: [new Error('token backend down')],
    replies: [new TransientError('unauthorized', 'sync token rejected', { reason: 'invalid_signature' })],
  });
  const refresher = s.refresher(jwt({ exp: nowS(clock) + 100, iat: nowS(clock) }), () => 0);
  const start = clock.now();
  await runUntil(refresher, () => s.refreshed.length > 0);
  assert.deepEqual(s.failures.map((f) => [f.code, f.attempt]), [['token_provider_failed', 1], ['unauthorized', 2]]);
  assert.ok(s.failures.every((f) => f.expiresInMs > 0 && f.expiresInMs <= 25_000));
  const at = s.refreshed[0][0] - start;
  assert.ok(at > 75_000 && at < 100_000, `refreshed at ${at}`);
  assert.equal(s.sent.length, 2, "the provider's failure sent nothing");
});

test('a token for another session is never sent', async () => {
  const clock = new FakeClock(1_700_000_000_000);
  const s = script(clock, { provided: [jwt({ exp: nowS(clock) + 100, iat: nowS(clock), session: 'sess_other' })] });
  await runUntil(s.refresher(jwt({ exp: nowS(clock) + 100, iat: nowS(clock) })), () => s.refreshed.length > 0);
  assert.equal(s.failures[0].code, 'session_mismatch');
  assert.deepEqual(s.sent.map(([, t]) => tokenClaims(t).sessionId), [SESSION]);
});

test('retries stop at the expiry', async () => {
  const clock = new FakeClock(1_700_000_000_000);
  const s = script(clock, { provided: Array.from({ length: 1000 }, () => new Error('down')) });
  const refresher = s.refresher(jwt({ exp: nowS(clock) + 100, iat: nowS(clock) }), () => 0.9);
  const start = clock.now();
  assert.ok(await runUntil(refresher, () => false, 3000), 'the schedule ends once the token has expired');
  assert.ok(Math.abs(clock.now() - start - 100_000) < 1e-6, 'the last attempt at the expiry itself');
  assert.equal(s.failures.at(-1).expiresInMs, 0);
  assert.ok(s.failures.length > 3);
  assert.equal(s.sent.length, 0);
});

test('a fatal refusal ends the schedule', async () => {
  const clock = new FakeClock(1_700_000_000_000);
  const s = script(clock, { replies: [new FatalError('reauth_required', 'revoked')] });
  await assert.rejects(s.refresher(jwt({ exp: nowS(clock) + 100, iat: nowS(clock) })).run(), (err) => err.code === 'reauth_required');
  assert.deepEqual(s.failures, []);
});

test('a token without exp schedules nothing', async () => {
  const clock = new FakeClock();
  const s = script(clock);
  await s.refresher('opaque-token').run();
  assert.deepEqual(clock.sleeps, []);
  assert.deepEqual(s.asked, []);
});

// --- the client: sync:refresh on the open socket, refresh_failed as a state ---------------------

const reply = (frame, status = 'ok', response = {}) => JSON.stringify([frame[0], frame[1], frame[2], 'phx_reply', { status, response }]);

test('the client refreshes in band and surfaces a failed refresh as a state', async () => {
  // Tokens live 2 s; the peer refuses the first refresh. The client goes refresh_failed, retries on
  // the same socket, goes back to live, and never reconnects.
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => server.on('listening', resolve));
  const frames = [];
  let connections = 0;
  server.on('connection', (ws) => {
    connections += 1;
    ws.on('message', (data) => {
      const frame = JSON.parse(String(data));
      frames.push(frame);
      const refreshes = frames.filter((f) => f[3] === 'sync:refresh').length;
      if (frame[3] === 'sync:refresh' && refreshes === 1) {
        ws.send(reply(frame, 'error', { code: 'unauthorized', message: 'sync token rejected', reason: 'invalid_signature' }));
      } else ws.send(reply(frame, 'ok', { current_watermarks: [] }));
    });
  });
  const asked = [];
  const tokenProvider = async ({ sessionId } = {}) => {
    asked.push(sessionId ?? null);
    const now = Math.floor(Date.now() / 1000);
    return jwt({ exp: now + 2, iat: now, session: sessionId ?? 'sess_first' });
  };
  const client = new KhalaClient({ url: `http://127.0.0.1:${server.address().port}`, WebSocket, tokenProvider, topics: ['runtime.run_summaries'], random: () => 0 });
  const events = [];
  client.onEvent = (e) => events.push(e);
  client.start();
  await waitUntil(() => events.filter((e) => e.type === 'token_refreshed').length >= 2, { timeoutMs: 20000, message: 'two refreshes' });
  await client.close();
  await new Promise((resolve) => { for (const c of server.clients) c.terminate(); server.close(resolve); });
  const states = events.filter((e) => e.type === 'state').map((e) => e.state);
  assert.deepEqual(states.slice(0, 5), [State.CONNECTING, State.JOINED, State.LIVE, State.REFRESH_FAILED, State.LIVE]);
  const failed = events.filter((e) => e.type === 'refresh_failed');
  assert.equal(failed[0].code, 'unauthorized');
  assert.equal(failed[0].attempt, 1);
  assert.equal(events.filter((e) => e.type === 'token_refreshed').length, 2);
  assert.equal(client.connects, 1);
  assert.equal(connections, 1);
  assert.deepEqual(asked.slice(0, 3), [null, 'sess_first', 'sess_first']);
  assert.ok(frames.filter((f) => f[3] === 'sync:refresh').every((f) => tokenClaims(f[4].token).sessionId === 'sess_first'));
});
