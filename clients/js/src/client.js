// KhalaClient: one WebSocket to a Khala server, a local document cache, and the rules that keep
// the cache equal to the server's read models across disconnects. Same semantics as the Python
// client (clients/python/khala_client/client.py); the wire contract is
// docs/protocol/OA_SYNC_WS_MAPPING.md.
//
//   idle ─start()─► connecting ─join ok─► joined ─subscribe ok─► live
//                                                                 │ socket lost / dead / closed
//                      reconnecting ◄─────────────────────────────┘
//                         │ backoff (full jitter), FRESH token, join, subscribe → joined → live
//   live ─refresh failed─► refresh_failed ─refreshed─► live   (the socket stays open throughout)
//   any state ─close() or a fatal error─► closed
//
// The token is refreshed in band ahead of its `exp` (refresh.js TokenRefresher: at a jittered
// 0.75–0.9 of its remaining lifetime, tokenProvider({ sessionId }) then sync:refresh); subscriptions
// and cursors are untouched. A failed refresh is the `refresh_failed` state (the socket still
// delivers), retried until the expiry; past it the server closes with token_expired and the client
// reconnects with a fresh token like after any close.
//
// What this client guarantees, each against a way a sync client silently breaks: the join REPLY
// is awaited (join errors surface), Phoenix and sync:heartbeat heartbeats are sent and a silent
// socket is detected, phx_close/phx_error are handled, a stale cursor is handled once (push +
// reply dedupe) and recovered by snapshot instead of silently replaying from 0, reconnects use
// full jitter.
//
// A refusal that says when to come back is obeyed, never undercut by the jitter (a client that
// returns early in a reconnect storm is refused again, and counts against the limit once more). A
// connection flood (a rate_limited push on `phoenix`, then close 4429) makes the next reconnect wait
// at least its retry_after_ms; a join or subscribe refused with rate_limited leaves the socket open,
// so it is asked again on the same socket after retry_after_ms (`rateLimitAttempts` times in all,
// then the socket is dropped and the reconnect waits the hint too); a hydration answered 429 is
// retried after its Retry-After the same way. Each hinted wait is spread over [hint, 1.25 × hint)
// (backoff.js hintedDelay) and reported as a `rate_limited` event (in place) or as the
// `reconnecting` event's retryAfterMs.
//
// Ordering: every frame goes through one queue processed in socket order (replay batches come
// before the subscribe reply; a heartbeat's watermark means "all sent up to here"), so cursors
// only move in socket order. Heartbeat replies are resolved on arrival (liveness must not wait
// behind a slow hydration fetch).
import { Backoff, hintedDelay } from './backoff.js';
import { DocumentCache } from './cache.js';
import { realClock } from './clock.js';
import { AuthError, FatalError, KhalaError, TransientError, classify, retryAfterMs } from './errors.js';
import { verify } from './hashing.js';
import { HttpApi } from './http.js';
import * as protocol from './protocol.js';
import { TokenRefresher } from './refresh.js';

const { EVENTS, SYNC_CHANNEL, PHOENIX_TOPIC } = protocol;

export const State = Object.freeze({
  IDLE: 'idle',
  CONNECTING: 'connecting',
  JOINED: 'joined',
  LIVE: 'live',
  RECONNECTING: 'reconnecting',
  REFRESH_FAILED: 'refresh_failed', // the socket is open and delivering, but refreshing its token failed (retried until it expires)
  CLOSED: 'closed',
});

// Close codes of the error table (docs/protocol/OA_SYNC_WS_MAPPING.md §7), used when the socket closed without a frame
// saying why.
const CLOSE_CODES = {
  4401: 'unauthorized', 4403: 'reauth_required', 4426: 'upgrade_required', 4400: 'malformed_frame',
  4413: 'payload_too_large', 4408: 'heartbeat_timeout', 4008: 'slow_consumer', 4500: 'internal',
  4419: 'token_expired', 4429: 'rate_limited', // 4429: a connection flood refused at connect (outside the table)
};

function closeError(code, reason) {
  const name = CLOSE_CODES[code] ?? 'socket_closed';
  const message = `socket closed (code ${code}${reason ? `, ${reason}` : ''})`;
  return classify(name) === 'fatal' ? new FatalError(name, message, { closeCode: code }) : new TransientError(name, message, { closeCode: code });
}

const END = Symbol('end-of-stream');

class Connection {
  constructor(ws, token) {
    this.ws = ws;
    this.token = token; // the token the server holds for this socket (join, then each refresh)
    this.live = false; // subscribed: the state to return to after a failed refresh recovers
    this.refreshFailing = false;
    this.refs = 0;
    this.joinRef = null;
    this.pending = new Map();
    this.livenessRefs = new Set();
    this.error = null;
    this.queue = [];
    this.draining = false;
    this.heartbeatIntervalMs = 15_000;
    this.lastReceived = 0;
    this.closed = new Promise((resolve) => { this.resolveClosed = resolve; });
  }

  fail(err) {
    if (this.error === null) this.error = err;
    for (const { reject } of this.pending.values()) reject(this.error);
    this.pending.clear();
    this.resolveClosed();
  }

  send(topic, event, payload, { liveness = false } = {}) {
    if (this.error) return Promise.reject(this.error);
    const ref = String(++this.refs);
    let joinRef = this.joinRef;
    if (event === EVENTS.JOIN) { this.joinRef = ref; joinRef = ref; } else if (topic === PHOENIX_TOPIC) joinRef = null;
    const promise = new Promise((resolve, reject) => this.pending.set(ref, { resolve, reject }));
    if (liveness) this.livenessRefs.add(ref);
    try {
      this.ws.send(protocol.encodeFrame(joinRef, ref, topic, event, payload));
    } catch (err) {
      this.fail(new TransientError('socket_closed', `send failed: ${err.message}`));
    }
    return promise;
  }

  resolve(frame) {
    const entry = frame.ref ? this.pending.get(frame.ref) : undefined;
    if (!entry) return;
    this.pending.delete(frame.ref);
    try {
      entry.resolve(protocol.replyStatus(frame.payload));
    } catch (err) {
      entry.reject(new TransientError(err.code ?? 'bad_reply', err.message));
    }
  }
}

export class KhalaClient {
  /**
   * @param {object} options see index.d.ts (KhalaClientOptions)
   */
  constructor({
    url, tokenProvider, store, topics = [], WebSocket = globalThis.WebSocket, fetch = globalThis.fetch,
    socketPath = protocol.DEFAULT_SOCKET_PATH, connectParams = {}, replayBatchSize, heartbeatIntervalMs = 15_000,
    heartbeatTimeoutMs = 10_000, joinTimeoutMs = 15_000, subscribeTimeoutMs = 120_000, staleWindowMs = 30_000,
    backoff, staleBackoff, clock = realClock, random = Math.random, verifyHashes = true, http, onState, onEvent,
    eventQueueSize = 10_000, tokenRefresh = true, rateLimitAttempts = 5,
  } = {}) {
    if (!url || typeof tokenProvider !== 'function') throw new TypeError('KhalaClient needs {url, tokenProvider}');
    if (!(Number.isInteger(rateLimitAttempts) && rateLimitAttempts >= 1)) throw new RangeError('rateLimitAttempts must be an integer >= 1');
    if (!WebSocket) throw new TypeError('KhalaClient needs a WebSocket implementation (browsers have one; in Node pass {WebSocket} from "ws")');
    Object.assign(this, {
      url, tokenProvider, WebSocket, socketPath, connectParams, replayBatchSize, heartbeatIntervalMs, heartbeatTimeoutMs,
      joinTimeoutMs, subscribeTimeoutMs, staleWindowMs, clock, random, verifyHashes, onState, onEvent, eventQueueSize,
      tokenRefresh, rateLimitAttempts,
    });
    this.cache = new DocumentCache(store);
    this.topics = [...new Set(topics)];
    this.backoff = backoff ?? new Backoff({ random });
    this.staleBackoff = staleBackoff ?? new Backoff({ baseMs: 1000, capMs: 60_000, random });
    this.http = http ?? new HttpApi(url, { fetch });
    this.state = State.IDLE;
    this.error = null;
    this.connects = 0;
    this.connectAttempts = [];
    this.headWatermarks = {};
    this.appliedLog = null; // set to [] to record [topic, docKey, docVersion, watermark]
    this._subscribers = new Set();
    this._stateWaiters = new Set();
    this._timers = new Set();
    this._conn = null;
    this._run = null;
    this._closing = false;
    this._token = null;
    this._lastSnapshotAt = new Map();
    this._subscribing = 0;
    this._stalePushes = []; // stale_cursor pushes received while subscribing
  }

  // --- observation --------------------------------------------------------------------------

  _emit(event) {
    if (this.onEvent) {
      try { this.onEvent(event); } catch (err) { console.error('khala: onEvent callback failed', err); }
    }
    for (const sub of this._subscribers) sub.push(event);
  }

  _setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    if (this.onState) {
      try { this.onState(state); } catch (err) { console.error('khala: onState callback failed', err); }
    }
    this._emit({ type: 'state', state, previous });
    for (const waiter of [...this._stateWaiters]) waiter();
  }

  /** Every event from now on, until the client closes (a slow reader loses the oldest events). */
  events() {
    const client = this;
    const buffer = [];
    let wake = null;
    let done = this.state === State.CLOSED;
    const sub = {
      dropped: 0,
      push(event) {
        if (buffer.length >= client.eventQueueSize) { buffer.shift(); sub.dropped += 1; }
        buffer.push(event);
        if (event.type === 'state' && event.state === State.CLOSED) done = true;
        if (wake) { wake(); wake = null; }
      },
    };
    this._subscribers.add(sub);
    return {
      [Symbol.asyncIterator]() { return this; },
      async next() {
        while (buffer.length === 0) {
          if (done) { client._subscribers.delete(sub); return { done: true, value: undefined }; }
          await new Promise((resolve) => { wake = resolve; });
        }
        return { done: false, value: buffer.shift() };
      },
      async return() {
        client._subscribers.delete(sub);
        return { done: true, value: undefined };
      },
    };
  }

  /** Every state change from now on, `closed` last. */
  async* states() {
    for await (const event of this.events()) if (event.type === 'state') yield event.state;
  }

  /** Resolve when the state is one of `states`; reject with the fatal error if it closes instead. */
  waitForState(states, { timeoutMs } = {}) {
    const wanted = new Set(Array.isArray(states) ? states : [states]);
    return new Promise((resolve, reject) => {
      let timer = null;
      const check = () => {
        if (wanted.has(this.state)) { cleanup(); resolve(this.state); return; }
        if (this.state === State.CLOSED) { cleanup(); reject(this.error ?? new TransientError('closed', 'client closed')); }
      };
      const cleanup = () => { this._stateWaiters.delete(check); if (timer) clearTimeout(timer); };
      this._stateWaiters.add(check);
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => { cleanup(); reject(new TransientError('timeout', `state not in ${[...wanted]} after ${timeoutMs} ms (is ${this.state})`)); }, timeoutMs);
      }
      check();
    });
  }

  waitLive(options) { return this.waitForState(State.LIVE, options); }

  // --- timers (all cancellable, so close() leaves nothing behind) -----------------------------

  _sleep(ms) {
    return new Promise((resolve) => {
      const t = { resolve };
      t.handle = setTimeout(() => { this._timers.delete(t); resolve(); }, Math.max(0, ms));
      this._timers.add(t);
    });
  }

  _withTimeout(promise, ms, makeError) {
    let t;
    const timeout = new Promise((_, reject) => {
      t = { resolve: () => {} };
      t.handle = setTimeout(() => { this._timers.delete(t); reject(makeError()); }, ms);
      this._timers.add(t);
    });
    return Promise.race([promise, timeout]).finally(() => { clearTimeout(t.handle); this._timers.delete(t); });
  }

  // --- lifecycle ------------------------------------------------------------------------------

  /** Start the connect/retry loop in the background; returns its promise (rejects on a fatal error). */
  start() {
    if (!this._run) {
      this._run = this.run();
      this._run.catch(() => {}); // surfaced through waitForState/close/this.error
    }
    return this._run;
  }

  async close() {
    this._closing = true;
    if (this._conn) this._conn.fail(new TransientError('client_closed', 'closed by the application'));
    for (const t of this._timers) { clearTimeout(t.handle); t.resolve(); }
    this._timers.clear();
    if (this._run) await this._run.catch(() => {});
    this._finish();
  }

  _finish() {
    if (this.state !== State.CLOSED) this._setState(State.CLOSED);
  }

  async run() {
    let authFailures = 0;
    try {
      while (!this._closing) {
        this._setState(this.connects === 0 ? State.CONNECTING : State.RECONNECTING);
        const joinsBefore = this.connects;
        let reason = 'socket_closed';
        let hint = null;
        try {
          await this._session();
        } catch (err) {
          if (this._closing) break;
          if (err instanceof FatalError) throw err;
          reason = err.code ?? err.name ?? 'connection_failed';
          hint = retryAfterMs(err);
          if (this.connects > joinsBefore) authFailures = 0;
          this._emit({ type: 'error', code: err.code ?? 'connection_failed', message: err.message, details: err.details ?? {} });
          if (err instanceof KhalaError && classify(err.code) === 'auth') {
            authFailures += 1;
            if (authFailures >= 2) throw new AuthError(err.code, `token refused twice in a row: ${err.message}`, err.details);
            continue; // one immediate retry with a fresh token
          }
        }
        if (this.connects > joinsBefore) authFailures = 0;
        if (this._closing) break;
        const delay = this.backoff.nextDelay(hint);
        this._setState(State.RECONNECTING);
        this._emit({ type: 'reconnecting', attempt: this.backoff.attempt, delayMs: delay, reason, retryAfterMs: hint });
        await this._sleep(delay);
      }
    } catch (err) {
      this.error = err;
      this._emit({ type: 'error', code: err.code, message: err.message, details: err.details ?? {} });
      throw err;
    } finally {
      this._conn = null;
      this._finish();
    }
  }

  // --- one connection -------------------------------------------------------------------------

  async _freshToken() {
    let token;
    try {
      token = await this.tokenProvider();
    } catch (err) {
      if (err instanceof KhalaError) throw err;
      throw new TransientError('token_provider_failed', `tokenProvider threw ${err?.message ?? err}`); // retried with backoff
    }
    if (typeof token !== 'string' || !token) throw new FatalError('token_provider_failed', 'tokenProvider returned no token');
    this._token = token;
    return token;
  }

  _open(url) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new this.WebSocket(url);
      } catch (err) {
        reject(new TransientError('connection_failed', err.message));
        return;
      }
      const timer = setTimeout(() => { try { ws.close(); } catch { /* ignore */ } reject(new TransientError('connect_timeout', `no open within ${this.joinTimeoutMs} ms`)); }, this.joinTimeoutMs);
      ws.onopen = () => {
        clearTimeout(timer);
        // Frames that came with the handshake (a refusal pushed at once, then the close) are
        // dispatched right after this event, before _session can attach its handlers: keep them.
        const early = [];
        ws.onmessage = (e) => early.push(['message', e]);
        ws.onclose = (e) => early.push(['close', e]);
        resolve({ ws, early });
      };
      ws.onerror = () => {};
      ws.onclose = (e) => { clearTimeout(timer); reject(new TransientError('connection_failed', `socket closed before open (code ${e?.code})`)); };
    });
  }

  async _session() {
    this.connectAttempts.push(this.clock.now()); // the attempt starts with fetching its token
    const token = await this._freshToken();
    const url = protocol.socketUrl(this.url, token, { path: this.socketPath, params: this.connectParams });
    const { ws, early } = await this._open(url);
    const conn = new Connection(ws, token);
    conn.lastReceived = this.clock.now();
    this._conn = conn;
    ws.onmessage = (e) => this._onMessage(conn, e.data);
    ws.onclose = (e) => this._enqueue(conn, { [END]: closeError(e?.code, e?.reason) });
    for (const [kind, e] of early) {
      if (kind === 'message') ws.onmessage(e);
      else ws.onclose(e);
    }
    ws.onerror = () => {};
    this.backoff.connected(this.clock.now());
    const heartbeat = { stop: false };
    let refresher = null;
    try {
      await this._join(conn);
      this.connects += 1;
      this._setState(State.JOINED);
      this._heartbeatLoop(conn, heartbeat);
      if (this.tokenRefresh) refresher = this._refreshLoop(conn);
      if (this.topics.length) await this._subscribe(conn, [...this.topics]);
      conn.live = true;
      if (!conn.error) this._setState(conn.refreshFailing ? State.REFRESH_FAILED : State.LIVE);
      await conn.closed;
      throw conn.error ?? new TransientError('socket_closed', 'connection closed');
    } finally {
      heartbeat.stop = true;
      refresher?.stop();
      conn.fail(new TransientError('socket_closed', 'connection closed'));
      try { ws.close(1000); } catch { /* already closed */ }
      this.backoff.disconnected(this.clock.now());
      if (this._conn === conn) this._conn = null;
    }
  }

  // --- in-band token refresh ------------------------------------------------------------------

  /** Start the refresh schedule of `conn`; returns the TokenRefresher (stop() it when the socket ends). */
  _refreshLoop(conn) {
    const refresher = new TokenRefresher(conn.token, {
      provide: (sessionId) => this.tokenProvider({ sessionId }),
      send: (token) => this._request(conn, SYNC_CHANNEL, EVENTS.REFRESH, { token }, this.joinTimeoutMs),
      onRefreshed: (token, reply) => {
        conn.token = token;
        this._token = token;
        conn.refreshFailing = false;
        this._emit({ type: 'token_refreshed', expiresAt: reply?.expires_at ?? null, refreshes: refresher.refreshes });
        if (this.state === State.REFRESH_FAILED) this._setState(conn.live ? State.LIVE : State.JOINED);
      },
      onFailed: ({ code, message, attempt, expiresInMs }) => {
        if (conn.error || this._conn !== conn) return; // the socket is over: the reconnect says so
        conn.refreshFailing = true;
        this._emit({ type: 'refresh_failed', code, message, attempt, expiresInMs });
        this._setState(State.REFRESH_FAILED);
      },
      clock: this.clock,
      random: this.random,
      // a fake clock drives the schedule in tests; real time goes through the cancellable timers
      sleep: (ms) => (this.clock === realClock ? this._sleep(ms) : this.clock.sleep(ms).then(() => this._sleep(0))),
    });
    refresher.run().catch((err) => conn.fail(err instanceof KhalaError ? err : new TransientError('refresh_failed', String(err))));
    return refresher;
  }

  async _request(conn, topic, event, payload, timeoutMs, { liveness = false } = {}) {
    const reply = conn.send(topic, event, payload, { liveness });
    const [status, response] = await this._withTimeout(reply, timeoutMs, () => (liveness
      ? new TransientError('heartbeat_timeout', `no reply to ${event} within ${timeoutMs} ms`)
      : new TransientError('reply_timeout', `no reply to ${event} within ${timeoutMs} ms`)));
    if (status !== 'ok') {
      const code = protocol.errorCode(response);
      const message = response?.message ?? '';
      if (classify(code) === 'fatal') throw new FatalError(code, message, response);
      throw new TransientError(code, message, response);
    }
    return response;
  }

  /**
   * _request on sync:v1, asked again on the same socket while the server refuses it with
   * rate_limited and a retry_after_ms (an admission limit, or too many requests in flight; the
   * socket stays open). After `rateLimitAttempts` refusals, or when the socket itself ended, the
   * refusal is thrown: the reconnect then waits at least its hint.
   */
  async _admittedRequest(conn, event, payload, timeoutMs) {
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await this._request(conn, SYNC_CHANNEL, event, payload, timeoutMs);
      } catch (err) {
        const hint = retryAfterMs(err);
        if (err.code !== 'rate_limited' || hint === null || conn.error || attempt >= this.rateLimitAttempts) throw err;
        await this._waitOut(event, err, hint, attempt);
        if (conn.error) throw conn.error;
      }
    }
  }

  /** Report a rate_limited refusal of `request` and wait at least its hint. */
  async _waitOut(request, err, hint, attempt) {
    const delayMs = hintedDelay(hint, this.random);
    const limit = typeof err.details?.limit === 'string' ? err.details.limit : null;
    this._emit({ type: 'rate_limited', request, limit, retryAfterMs: hint, attempt, delayMs });
    await this._sleep(delayMs);
  }

  async _join(conn) {
    const response = await this._admittedRequest(conn, EVENTS.JOIN, { frames: false }, this.joinTimeoutMs);
    conn.heartbeatIntervalMs = this.heartbeatIntervalMs;
    const serverTimeout = response?.heartbeat_timeout_ms;
    // at least three heartbeats per server idle timeout, so one lost reply never idles us out
    if (Number.isInteger(serverTimeout) && serverTimeout > 0) conn.heartbeatIntervalMs = Math.min(this.heartbeatIntervalMs, serverTimeout / 3);
  }

  _onMessage(conn, data) {
    conn.lastReceived = this.clock.now();
    let frame;
    try {
      frame = protocol.decodeFrame(typeof data === 'string' ? data : String(data));
    } catch (err) {
      this._emit({ type: 'error', code: err.code ?? 'bad_frame', message: err.message, details: {} });
      return;
    }
    if (frame.event === EVENTS.REPLY && conn.livenessRefs.has(frame.ref)) {
      conn.livenessRefs.delete(frame.ref);
      conn.resolve(frame);
      if (frame.topic === PHOENIX_TOPIC) return; // sync:heartbeat replies also carry watermarks: keep them in order
    }
    this._enqueue(conn, frame);
  }

  _enqueue(conn, item) {
    conn.queue.push(item);
    if (!conn.draining) this._drain(conn);
  }

  async _drain(conn) {
    conn.draining = true;
    try {
      let handled = 0;
      while (conn.queue.length) {
        const item = conn.queue.shift();
        if (item[END]) { conn.fail(item[END]); return; }
        if (conn.error) return;
        await this._handle(conn, item);
        // awaiting settled promises only runs microtasks: give timers and socket events a turn
        // now and then so a long replay cannot starve heartbeats
        handled += 1;
        if (handled % 20 === 0) await new Promise((resolve) => setTimeout(resolve, 0));
      }
    } catch (err) {
      conn.fail(err instanceof KhalaError ? err : new TransientError('client_error', String(err?.stack ?? err)));
    } finally {
      conn.draining = false;
    }
  }

  async _handle(conn, frame) {
    const { event, payload } = frame;
    if (frame.topic === PHOENIX_TOPIC) {
      if (event === EVENTS.REPLY) conn.resolve(frame);
      else if (event === EVENTS.SYNC_ERROR) {
        // A refusal of the socket itself (a connection flood: rate_limited with retry_after_ms);
        // the close follows. It names the reason before the close code does and carries the hint
        // the reconnect must wait for.
        const details = payload && typeof payload === 'object' ? payload : {};
        conn.fail(new TransientError(protocol.errorCode(details), String(details.message ?? ''), details));
      }
      return;
    }
    if (frame.topic !== SYNC_CHANNEL) return;
    if (event === EVENTS.REPLY) {
      if (payload?.status === 'ok' && payload.response && typeof payload.response === 'object') {
        for (const key of ['current_watermarks', 'watermarks']) {
          if (key in payload.response) await this._advance(payload.response[key]);
        }
      }
      conn.resolve(frame);
    } else if (event === EVENTS.UPDATE_BATCH) {
      let batch;
      try {
        batch = protocol.parseUpdateBatch(payload);
      } catch (err) {
        this._emit({ type: 'error', code: err.code, message: err.message, details: { payload } });
        return;
      }
      await this._applyBatch(batch);
    } else if (event === EVENTS.SYNC_HEARTBEAT) {
      const raw = payload?.watermarks;
      let watermarks;
      try {
        watermarks = protocol.parseWatermarks(raw);
      } catch (err) {
        this._emit({ type: 'error', code: err.code, message: err.message, details: {} });
        return;
      }
      await this._advance(raw);
      for (const entry of Array.isArray(raw) ? raw : []) {
        if (Number.isInteger(entry?.head_watermark)) this.headWatermarks[entry.topic] = entry.head_watermark;
      }
      this._emit({ type: 'heartbeat', watermarks });
    } else if (event === EVENTS.SYNC_ERROR) {
      this._handleSyncError(conn, payload && typeof payload === 'object' ? payload : {});
    } else if (event === EVENTS.ERROR || event === EVENTS.CLOSE) {
      conn.fail(new TransientError('channel_closed', `server sent ${event} on ${frame.topic}`, payload));
    }
    // sync:frame and unknown events are ignored (the legacy events carry the same data)
  }

  _handleSyncError(conn, payload) {
    const code = protocol.errorCode(payload);
    const message = String(payload.message ?? '');
    if (code === 'stale_cursor') {
      if (this._subscribing) {
        // Usually the subscribe's error reply carries the same payload; but a topic can go stale
        // after the server's check (retention pruned it before the first replay page) and then the
        // reply is ok and this push is the only notice. _subscribe settles it once the reply is in.
        this._stalePushes.push(payload);
        return;
      }
      // a live topic went stale (epoch change, pruned while behind): recover without blocking the queue
      this._recoverStale(payload)
        .then(() => this._subscribe(conn, (payload.stale_topics ?? []).map((t) => t?.topic).filter((t) => this.topics.includes(t))))
        .catch((err) => conn.fail(err));
      return;
    }
    const kind = classify(code);
    if (kind === 'fatal') conn.fail(new FatalError(code, message, payload));
    else if (kind === 'auth' || payload.action === 'disconnect' || code === 'slow_consumer' || code === 'heartbeat_timeout') {
      conn.fail(new TransientError(code, message, payload));
    } else this._emit({ type: 'error', code, message, details: payload });
  }

  /** Move cursors forward to what the server says it has sent us (called in socket order). */
  async _advance(raw) {
    let watermarks;
    try { watermarks = protocol.parseWatermarks(raw); } catch { return; }
    const epochs = protocol.parseEpochs(raw);
    for (const [topic, watermark] of Object.entries(watermarks)) {
      if (!this.topics.includes(topic)) continue;
      const state = await this.cache.topicState(topic);
      const epoch = epochs[topic];
      if (epoch && state.streamEpoch && epoch !== state.streamEpoch) continue; // another history: the server flags it
      if (watermark > state.watermark || (epoch && !state.streamEpoch)) await this.cache.advance(topic, watermark, epoch ?? null);
    }
  }

  // --- applying updates -----------------------------------------------------------------------

  async _applyBatch(batch) {
    const byTopic = new Map();
    for (const u of batch.updates) {
      if (!byTopic.has(u.topic)) byTopic.set(u.topic, []);
      byTopic.get(u.topic).push(u);
    }
    // a batch without updates still moves the cursor (rows this socket may not see)
    for (const topic of Object.keys(batch.headWatermarks)) if (!byTopic.has(topic)) byTopic.set(topic, []);
    for (const [topic, updates] of byTopic) {
      const result = await this.cache.plan(topic, updates);
      const completed = [];
      for (const doc of result.documents) {
        const done = await this._complete(doc);
        if (done) completed.push(done);
      }
      result.documents = completed;
      // headWatermarks[topic] is the position through which this socket is complete
      // (topic-wide, past rows we may not see): stored atomically with the documents.
      const completeThrough = batch.headWatermarks[topic] ?? 0;
      const epoch = batch.epochs[topic] ?? null;
      const stored = (await this.cache.topicState(topic)).streamEpoch;
      if (completeThrough > result.watermark && !(epoch && stored && epoch !== stored)) result.watermark = completeThrough;
      result.watermark = await this.cache.commit(result, stored ? null : epoch);
      if (this.appliedLog) for (const d of result.documents) this.appliedLog.push([d.topic, d.docKey, d.docVersion, d.watermark]);
      this._emit({ type: 'batch', topic, result, headWatermark: batch.headWatermarks[topic] ?? null, replayComplete: batch.replayComplete });
    }
  }

  async _complete(doc) {
    if (!doc.hydrationRequired) {
      if (!this.verifyHashes || await verify(doc.payload, doc.payloadHash)) return doc;
      this._emit({
        type: 'error', code: 'payload_hash_mismatch',
        message: `${doc.topic} ${doc.docKey}@${doc.docVersion}: payload does not match payload_hash; refetching`,
        details: { topic: doc.topic, docKey: doc.docKey, docVersion: doc.docVersion, watermark: doc.watermark },
      });
    }
    return this.hydrate(doc.topic, doc.docKey, { fallback: doc });
  }

  /** Run call(token); on a rejected token, once more with a fresh token. A 429 is asked again after its Retry-After, rateLimitAttempts times in all. */
  async _httpWithToken(call) {
    for (let attempt = 1; ; attempt += 1) {
      try {
        const token = this._token ?? await this._freshToken();
        try {
          return await call(token);
        } catch (err) {
          if (err.status === 401 && classify(err.code) === 'auth') return await call(await this._freshToken());
          throw err;
        }
      } catch (err) {
        const hint = retryAfterMs(err);
        if (err.status !== 429 || hint === null || attempt >= this.rateLimitAttempts || this._closing) throw err;
        await this._waitOut('hydration', err, hint, attempt);
      }
    }
  }

  /** Fetch one document over HTTP (hydration_required, or a corrupt payload), verifying its hash. */
  async hydrate(topic, docKey, { fallback } = {}) {
    let data;
    try {
      // The pointer's watermark and epoch let the server read a replica that has that write.
      const epoch = fallback ? (await this.cache.topicState(topic)).streamEpoch : null;
      const freshness = epoch ? { minWatermark: fallback.watermark, streamEpoch: epoch } : {};
      data = await this._httpWithToken((token) => this.http.getDocument(topic, docKey, token, freshness));
    } catch (err) {
      this._emit({ type: 'error', code: 'hydration_failed', message: `${topic} ${docKey}: ${err.code} ${err.message}`, details: { topic, docKey, httpCode: err.code } });
      if (err.code === 'http_unreachable' || (err.status ?? 0) >= 500 || err.status === 429) {
        // The batch is not committed: the reconnect replays it (after the hint, if any).
        const hint = retryAfterMs(err);
        throw new TransientError('hydration_failed', err.message, hint === null ? {} : { retry_after_ms: hint });
      }
      return fallback?.hydrationRequired ? fallback : null; // e.g. document_not_found: keep the pointer entry
    }
    const doc = {
      topic, docKey: data.doc_key ?? docKey, docVersion: data.doc_version, payload: data.payload ?? null,
      payloadHash: data.payload_hash ?? null, watermark: data.watermark ?? fallback?.watermark ?? 0, hydrationRequired: false,
    };
    if (this.verifyHashes && !(await verify(doc.payload, doc.payloadHash))) {
      this._emit({ type: 'error', code: 'payload_hash_mismatch', message: `${topic} ${docKey}: hydrated payload does not match its payload_hash`, details: { topic, docKey } });
      return null;
    }
    if (fallback && doc.docVersion < fallback.docVersion) return null;
    return doc;
  }

  // --- subscriptions --------------------------------------------------------------------------

  async subscribe(...topics) {
    const added = topics.filter((t) => !this.topics.includes(t));
    this.topics.push(...added);
    const conn = this._conn;
    if (added.length && conn && this._socketUsable()) await this._subscribe(conn, added);
  }

  async unsubscribe(...topics) {
    this.topics = this.topics.filter((t) => !topics.includes(t));
    const conn = this._conn;
    if (conn && this._socketUsable()) {
      await this._request(conn, SYNC_CHANNEL, EVENTS.UNSUBSCRIBE, { topics }, this.joinTimeoutMs);
    }
  }

  _socketUsable() {
    return this.state === State.JOINED || this.state === State.LIVE || this.state === State.REFRESH_FAILED;
  }

  /** Subscribe with each topic's stored cursor (0 when none); on stale_cursor snapshot and retry. */
  async _subscribe(conn, topics) {
    for (;;) {
      if (!topics.length) return;
      const cursors = {};
      for (const t of topics) cursors[t] = await this.cache.topicState(t);
      const payload = protocol.subscribePayload(topics, cursors, { replayBatchSize: this.replayBatchSize });
      this._subscribing += 1;
      let pushed;
      try {
        await this._admittedRequest(conn, EVENTS.SUBSCRIBE, payload, this.subscribeTimeoutMs);
        pushed = this._takeStalePushes(topics);
      } catch (err) {
        if (err.code !== 'stale_cursor') throw err;
        this._takeStalePushes(topics); // the push that came with this error reply
        await this._recoverStale(err.details ?? {});
        continue; // resubscribe from the snapshot's head
      } finally {
        this._subscribing -= 1;
      }
      if (!pushed.length) return;
      // ok reply, then (or just before it) a stale_cursor push: recover those topics from a
      // snapshot and resubscribe them; the others are live already.
      const stale = [];
      for (const stalePayload of pushed) {
        await this._recoverStale(stalePayload);
        for (const t of stalePayload.stale_topics ?? []) if (topics.includes(t?.topic) && !stale.includes(t.topic)) stale.push(t.topic);
      }
      topics = stale;
    }
  }

  /** Remove and return the stale_cursor pushes (received while subscribing) about `topics`. */
  _takeStalePushes(topics) {
    const mine = [];
    const others = [];
    for (const payload of this._stalePushes) {
      const named = (payload.stale_topics ?? []).map((t) => t?.topic);
      (named.some((t) => topics.includes(t)) ? mine : others).push(payload);
    }
    this._stalePushes = others;
    return mine;
  }

  async _recoverStale(payload) {
    const stale = (payload.stale_topics ?? []).map((t) => t?.topic).filter((t) => typeof t === 'string');
    if (!stale.length) throw new TransientError('stale_cursor', 'stale_cursor without stale_topics', payload);
    this._emit({ type: 'stale_cursor', topics: stale, payload });
    for (const topic of stale) {
      const last = this._lastSnapshotAt.get(topic);
      if (last !== undefined && this.clock.now() - last < this.staleWindowMs) {
        // A second stale cursor right after a snapshot: back off instead of re-downloading in a loop.
        await this._sleep(this.staleBackoff.nextDelay());
      } else {
        this.staleBackoff.reset();
      }
      await this.loadSnapshot(topic);
      this._lastSnapshotAt.set(topic, this.clock.now());
    }
  }

  /** Replace `topic`'s cache with the server's snapshot and resume from the first page's head. */
  async loadSnapshot(topic) {
    const snapshot = await this._httpWithToken((token) => this.http.snapshot(topic, token));
    const documents = [];
    for (const item of snapshot.documents) {
      const doc = {
        topic, docKey: item.doc_key, docVersion: item.doc_version, payload: item.payload ?? null,
        payloadHash: item.payload_hash ?? null, watermark: item.watermark ?? 0, hydrationRequired: item.payload == null,
      };
      if (this.verifyHashes && !doc.hydrationRequired && !(await verify(doc.payload, doc.payloadHash))) {
        this._emit({ type: 'error', code: 'payload_hash_mismatch', message: `${topic} ${doc.docKey}: snapshot payload does not match its payload_hash`, details: { topic, docKey: doc.docKey } });
        continue;
      }
      documents.push(doc);
    }
    await this.cache.replaceTopic(topic, documents, snapshot.headWatermark, snapshot.streamEpoch);
    if (this.appliedLog) this.appliedLog.push([topic, '*snapshot*', 0, snapshot.headWatermark]);
    this._emit({ type: 'snapshot', topic, documents: documents.length, headWatermark: snapshot.headWatermark, streamEpoch: snapshot.streamEpoch });
  }

  // --- heartbeats -----------------------------------------------------------------------------

  /** Phoenix heartbeat + sync:heartbeat every ~interval (jittered); no reply → dead socket. */
  async _heartbeatLoop(conn, control) {
    try {
      while (!control.stop && !conn.error) {
        await this._sleep(conn.heartbeatIntervalMs * (0.75 + 0.25 * this.random()));
        if (control.stop || conn.error) return;
        const replies = Promise.all([
          conn.send(PHOENIX_TOPIC, EVENTS.HEARTBEAT, {}, { liveness: true }),
          conn.send(SYNC_CHANNEL, EVENTS.SYNC_HEARTBEAT, {}, { liveness: true }),
        ]);
        for (;;) {
          try {
            await this._withTimeout(replies, this.heartbeatTimeoutMs, () => new TransientError('heartbeat_timeout', `nothing received for ${this.heartbeatTimeoutMs} ms after a heartbeat`));
            break;
          } catch (err) {
            // Dead = nothing at all arrived for a whole timeout; frames still arriving mean the
            // replies are queued behind them (a busy client, not a dead socket).
            if (err.code !== 'heartbeat_timeout' || this.clock.now() - conn.lastReceived >= this.heartbeatTimeoutMs) throw err;
          }
        }
      }
    } catch (err) {
      conn.fail(err instanceof KhalaError ? err : new TransientError('heartbeat_failed', String(err)));
    }
  }

  // --- convenience ----------------------------------------------------------------------------

  documents(topic) { return this.cache.documents(topic); }

  async watermark(topic) { return (await this.cache.topicState(topic)).watermark; }
}
