// apiTokenProvider asks for exactly the subscribed topics and refuses a token that grants fewer.
// The token endpoint is a fake fetch here (what it answers is the point); the quickstart in the
// README runs the same provider against a real server (tests/docs).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { FatalError, HttpError, KhalaClient, State, apiTokenProvider } from '../src/index.js';

function tokenEndpoint(answer) {
  const requests = [];
  const fetch = async (url, init) => {
    requests.push({ url, body: JSON.parse(init.body), auth: init.headers.Authorization });
    const { status = 200, body } = answer(requests.at(-1).body);
    return { ok: status < 400, status, text: async () => JSON.stringify(body) };
  };
  return { fetch, requests };
}

const grantAsked = (body) => ({ body: { data: { token: 'a.b.c', expires_in: 60, scopes: body.scopes } } });

test('requests exactly the given scopes, de-duplicated, on every call', async () => {
  const endpoint = tokenEndpoint(grantAsked);
  const provide = apiTokenProvider('http://khala.test', 'api-tok', { scopes: ['runtime.run_summaries', 'runtime.notifications', 'runtime.run_summaries'], fetch: endpoint.fetch });
  assert.equal(await provide(), 'a.b.c');
  assert.equal(await provide(), 'a.b.c');
  assert.equal(endpoint.requests.length, 2);
  assert.deepEqual(endpoint.requests[0].body, { scopes: ['runtime.run_summaries', 'runtime.notifications'] });
  assert.equal(endpoint.requests[0].url, 'http://khala.test/api/sync/token');
  assert.equal(endpoint.requests[0].auth, 'Token api-tok');
});

test('a refresh asks the token endpoint to continue the socket\'s session', async () => {
  const endpoint = tokenEndpoint(grantAsked);
  const provide = apiTokenProvider('http://khala.test', 'api-tok', { scopes: ['runtime.run_summaries'], fetch: endpoint.fetch });
  await provide();
  await provide({ sessionId: 'sess_open_socket' });
  assert.deepEqual(endpoint.requests.map((r) => r.body.session_id), [undefined, 'sess_open_socket']);
});

test('scopes are required: without them the server would grant its default topic', () => {
  for (const scopes of [undefined, [], [''], 'runtime.run_summaries']) {
    assert.throws(() => apiTokenProvider('http://khala.test', 'api-tok', { scopes, fetch: async () => {} }), TypeError);
  }
});

test('a token granting fewer scopes than requested is refused with scopes_not_granted', async () => {
  const endpoint = tokenEndpoint(() => ({ body: { data: { token: 'a.b.c', scopes: ['runtime.codex_worker_summaries'] } } }));
  const provide = apiTokenProvider('http://khala.test', 'api-tok', { scopes: ['runtime.run_summaries'], fetch: endpoint.fetch });
  await assert.rejects(provide(), (err) => err instanceof FatalError && err.code === 'scopes_not_granted'
    && err.details.missing.join() === 'runtime.run_summaries' && /missing: runtime\.run_summaries/.test(err.message));
  const noScopes = apiTokenProvider('http://khala.test', 'api-tok', { scopes: ['runtime.run_summaries'], fetch: tokenEndpoint(() => ({ body: { data: { token: 'a.b.c' } } })).fetch });
  await assert.rejects(noScopes(), (err) => err.code === 'scopes_not_granted');
});

test('invalid_scope is fatal; other HTTP errors keep their transient class', async () => {
  const refused = tokenEndpoint(() => ({ status: 422, body: { error: { code: 'invalid_scope', message: 'scope(s) not allowed: x' } } }));
  await assert.rejects(apiTokenProvider('http://khala.test', 't', { scopes: ['x'], fetch: refused.fetch })(),
    (err) => err instanceof FatalError && err.code === 'invalid_scope');
  const down = tokenEndpoint(() => ({ status: 503, body: { error: { code: 'token_issuer_unavailable', message: 'no key' } } }));
  await assert.rejects(apiTokenProvider('http://khala.test', 't', { scopes: ['x'], fetch: down.fetch })(),
    (err) => err instanceof HttpError && !(err instanceof FatalError) && err.code === 'token_issuer_unavailable');
});

test('a client whose provider is granted fewer scopes stops before opening a socket', async () => {
  const endpoint = tokenEndpoint(() => ({ body: { data: { token: 'a.b.c', scopes: [] } } }));
  let sockets = 0;
  class NoSocket { constructor() { sockets += 1; throw new Error('no socket expected'); } }
  const client = new KhalaClient({
    url: 'http://khala.test',
    topics: ['runtime.run_summaries'],
    tokenProvider: apiTokenProvider('http://khala.test', 't', { scopes: ['runtime.run_summaries'], fetch: endpoint.fetch }),
    WebSocket: NoSocket,
    fetch: endpoint.fetch,
  });
  client.start();
  await assert.rejects(client.waitLive({ timeoutMs: 5000 }), (err) => err.code === 'scopes_not_granted');
  assert.equal(client.state, State.CLOSED);
  assert.equal(sockets, 0);
  await client.close();
});
