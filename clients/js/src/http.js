// The HTTP side of the protocol: sync-token minting and hydration (one document, snapshot pages).
// Errors are HttpError with the server's stable `code` ({"error": {"code", "message"}}) or a
// transport code (http_unreachable, bad_response).
//
// apiTokenProvider is the tokenProvider for scripts and services holding an API token: it asks for
// exactly the topics the client subscribes to (least privilege) and refuses, on the client, a
// token that grants fewer.
import { FatalError, KhalaError } from './errors.js';
import { httpBase } from './protocol.js';

/** `retryAfterMs`: how long the server asked to wait (429 and 503 `Retry-After`), else null. */
export class HttpError extends KhalaError {
  constructor(code, message = '', details = {}, status = null, retryAfterMs = null) {
    super(code, message, details);
    this.name = 'HttpError';
    this.status = status;
    this.retryAfterMs = retryAfterMs;
  }
}

// Retry-After in seconds (Khala never sends the HTTP-date form), else the body's retry_after.
function retryAfterMs(header, err) {
  for (const value of [header, err?.retry_after]) {
    const seconds = value === null || value === undefined || value === '' ? NaN : Number(value);
    if (Number.isFinite(seconds) && seconds > 0) return seconds * 1000;
  }
  return null;
}

export class HttpApi {
  constructor(url, { fetch = globalThis.fetch, timeoutMs = 15_000 } = {}) {
    if (!fetch) throw new TypeError('HttpApi needs fetch (global in browsers and Node >= 18, or pass {fetch})');
    this.base = httpBase(url);
    this.fetch = fetch;
    this.timeoutMs = timeoutMs;
  }

  async request(method, path, { headers = {}, json } = {}) {
    const init = { method, headers: { Accept: 'application/json', ...headers } };
    if (json !== undefined) {
      init.body = JSON.stringify(json);
      init.headers['Content-Type'] = 'application/json';
    }
    if (typeof AbortSignal !== 'undefined' && AbortSignal.timeout) init.signal = AbortSignal.timeout(this.timeoutMs);
    let response;
    try {
      response = await this.fetch(this.base + path, init);
    } catch (err) {
      throw new HttpError('http_unreachable', `${method} ${path}: ${err.message}`);
    }
    const text = await response.text();
    let data;
    try {
      data = JSON.parse(text);
    } catch {
      throw new HttpError(response.ok ? 'bad_response' : `http_${response.status}`, `${method} ${path}: response is not JSON`, {}, response.status);
    }
    if (!response.ok) {
      const err = data && typeof data === 'object' ? data.error : null;
      const hint = retryAfterMs(response.headers?.get?.('Retry-After'), err);
      if (err && typeof err.code === 'string') throw new HttpError(err.code, String(err.message ?? ''), err, response.status, hint);
      throw new HttpError(`http_${response.status}`, text.slice(0, 200), {}, response.status, hint);
    }
    return data;
  }

  /**
   * POST /api/sync/token with `Authorization: Token <api token>`; resolves to the `data` object.
   * `sessionId` continues that session (a token for sync:refresh on an open socket); without it
   * the server starts a new one.
   */
  async mintSyncToken(apiToken, { scopes, ttlSeconds, sessionId } = {}) {
    const body = {};
    if (scopes?.length) body.scopes = [...scopes];
    if (ttlSeconds !== undefined) body.ttl_seconds = ttlSeconds;
    if (sessionId) body.session_id = sessionId;
    const data = await this.request('POST', '/api/sync/token', { headers: { Authorization: `Token ${apiToken}` }, json: body });
    const inner = data?.data ?? data;
    if (!inner || typeof inner.token !== 'string') throw new HttpError('bad_response', 'token response has no token');
    return inner;
  }

  /**
   * GET /api/sync/v1/doc/<topic>/<doc_key> → {doc_key, doc_version, payload, payload_hash, watermark}.
   * `minWatermark` and `streamEpoch` (together): the watermark of the update that pointed here and
   * its epoch. They let the server answer from a read replica that has that write (never an older
   * version of the document); without them it reads its primary.
   */
  async getDocument(topic, docKey, token, { minWatermark, streamEpoch } = {}) {
    const key = docKey.split('/').map((part) => encodeURIComponent(part).replace(/%3A/gi, ':')).join('/');
    const fresh = Number.isInteger(minWatermark) && streamEpoch
      ? `?${new URLSearchParams({ min_watermark: String(minWatermark), stream_epoch: streamEpoch })}` : '';
    const data = await this.request('GET', `/api/sync/v1/doc/${encodeURIComponent(topic)}/${key}${fresh}`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    if (!data || typeof data.doc_version !== 'number') throw new HttpError('bad_response', 'document response lacks doc_version');
    return data;
  }

  async listPage(topic, token, { cursor, limit } = {}) {
    const query = new URLSearchParams();
    if (cursor) query.set('cursor', cursor);
    if (limit) query.set('limit', String(limit));
    const qs = query.toString();
    const data = await this.request('GET', `/api/sync/v1/list/${encodeURIComponent(topic)}${qs ? `?${qs}` : ''}`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    if (!data || !Array.isArray(data.documents) || typeof data.head_watermark !== 'number') {
      throw new HttpError('bad_response', 'list response needs documents and head_watermark');
    }
    return { documents: data.documents, headWatermark: data.head_watermark, streamEpoch: data.stream_epoch ?? null, nextCursor: data.next_cursor ?? null };
  }

  /**
   * Every page of `topic`; resume from the FIRST page's headWatermark (each page is its own
   * snapshot: a write after page 1 is either on a later page or replayed after page 1's head).
   * On 409 stream_epoch_changed start again, at most `attempts` times.
   */
  async snapshot(topic, token, { limit = 1000, attempts = 3 } = {}) {
    for (let attempt = 0; ; attempt += 1) {
      try {
        let page = await this.listPage(topic, token, { limit });
        const first = page;
        const documents = [...page.documents];
        while (page.nextCursor) {
          page = await this.listPage(topic, token, { cursor: page.nextCursor, limit });
          documents.push(...page.documents);
        }
        return { topic, documents, headWatermark: first.headWatermark, streamEpoch: first.streamEpoch };
      } catch (err) {
        if (err.code === 'stream_epoch_changed' && attempt + 1 < attempts) continue;
        throw err;
      }
    }
  }
}

/**
 * A tokenProvider that mints a fresh sync token from an API token on every call. Called with
 * `{ sessionId }` (the client does so to refresh an open socket's token in band), it asks the token
 * endpoint to continue that session.
 *
 * `scopes` are the topics the client subscribes to (pass the same list as `topics`). The server's
 * default scope is some other topic, so a provider without scopes would yield a token the join
 * refuses (forbidden_topic); hence they are required. Each minted token's granted `scopes` are
 * checked: fewer than requested rejects with FatalError('scopes_not_granted'), and a scope the
 * server will not grant (invalid_scope) is fatal too, because asking again cannot change the answer.
 */
export function apiTokenProvider(url, apiToken, { scopes, fetch, http } = {}) {
  if (!Array.isArray(scopes) || scopes.length === 0 || !scopes.every((s) => typeof s === 'string' && s.trim())) {
    throw new TypeError('apiTokenProvider needs {scopes}: a non-empty list of the topics the client subscribes to');
  }
  const requested = [...new Set(scopes.map((s) => s.trim()))];
  const api = http ?? new HttpApi(url, { fetch });
  return async ({ sessionId } = {}) => {
    let data;
    try {
      data = await api.mintSyncToken(apiToken, { scopes: requested, sessionId });
    } catch (err) {
      if (err instanceof HttpError && err.code === 'invalid_scope') throw new FatalError(err.code, err.message, err.details);
      throw err;
    }
    checkGrantedScopes(requested, data.scopes);
    return data.token;
  };
}

/** Throws FatalError('scopes_not_granted') unless `granted` covers every requested scope. */
export function checkGrantedScopes(requested, granted) {
  const grantedSet = new Set(Array.isArray(granted) ? granted : []);
  const missing = requested.filter((scope) => !grantedSet.has(scope));
  if (missing.length) {
    const shown = [...grantedSet].sort();
    throw new FatalError(
      'scopes_not_granted',
      `requested scopes ${requested.join(', ')} but the token grants ${shown.join(', ') || 'none'}; missing: ${missing.join(', ')}`,
      { requested: [...requested], granted: shown, missing },
    );
  }
}
