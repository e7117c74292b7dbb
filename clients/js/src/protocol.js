// Phoenix Channels v2 framing and the sync:v1 message shapes, as pure functions (no I/O).
// A v2 frame is the JSON array [join_ref, ref, topic, event, payload]; see
// docs/protocol/OA_SYNC_WS_MAPPING.md for every event.

export const VSN = '2.0.0';
export const SYNC_CHANNEL = 'sync:v1';
export const PHOENIX_TOPIC = 'phoenix';
export const DEFAULT_SOCKET_PATH = '/sync/socket/websocket';

export const EVENTS = Object.freeze({
  JOIN: 'phx_join',
  LEAVE: 'phx_leave',
  REPLY: 'phx_reply',
  ERROR: 'phx_error',
  CLOSE: 'phx_close',
  HEARTBEAT: 'heartbeat',
  SUBSCRIBE: 'sync:subscribe',
  UNSUBSCRIBE: 'sync:unsubscribe',
  UPDATE_BATCH: 'sync:update_batch',
  SYNC_HEARTBEAT: 'sync:heartbeat',
  SYNC_ERROR: 'sync:error',
  SYNC_FRAME: 'sync:frame',
  REFRESH: 'sync:refresh',
});

/** A frame or message the client cannot interpret; `code` is stable. */
export class ProtocolError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'ProtocolError';
    this.code = code;
  }
}

export function encodeFrame(joinRef, ref, topic, event, payload) {
  return JSON.stringify([joinRef ?? null, ref ?? null, topic, event, payload]);
}

export function decodeFrame(text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new ProtocolError('bad_frame', `frame is not JSON: ${err.message}`);
  }
  if (!Array.isArray(data) || data.length !== 5) {
    throw new ProtocolError('bad_frame', 'frame must be a 5-element array [join_ref, ref, topic, event, payload]');
  }
  const [joinRef, ref, topic, event, payload] = data;
  for (const [name, value] of [['join_ref', joinRef], ['ref', ref]]) {
    if (value !== null && typeof value !== 'string') throw new ProtocolError('bad_frame', `${name} must be a string or null`);
  }
  if (typeof topic !== 'string' || typeof event !== 'string') {
    throw new ProtocolError('bad_frame', 'topic and event must be strings');
  }
  return { joinRef, ref, topic, event, payload };
}

export function replyStatus(payload) {
  if (!payload || typeof payload !== 'object' || typeof payload.status !== 'string') {
    throw new ProtocolError('bad_reply', 'phx_reply payload must be {status, response}');
  }
  return [payload.status, payload.response];
}

/** `scheme://host[:port]` over HTTP(S) for a server URL given as http(s):// or ws(s)://. */
export function httpBase(url) {
  const parsed = new URL(url);
  const scheme = { 'ws:': 'http:', 'wss:': 'https:' }[parsed.protocol] ?? parsed.protocol;
  if (scheme !== 'http:' && scheme !== 'https:') {
    throw new TypeError(`server URL must be http(s):// or ws(s)://host[:port], got ${url}`);
  }
  return `${scheme}//${parsed.host}`;
}

export function socketUrl(url, token, { path = DEFAULT_SOCKET_PATH, params = {} } = {}) {
  const base = new URL(httpBase(url));
  const wsScheme = base.protocol === 'https:' ? 'wss:' : 'ws:';
  const query = new URLSearchParams({ token, vsn: VSN });
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) query.set(key, String(value));
  }
  return `${wsScheme}//${base.host}${path}?${query}`;
}

const isInt = (v) => Number.isSafeInteger(v);

/** Validate one wire update; returns the camelCase form. */
export function parseUpdate(raw) {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new ProtocolError('bad_update', 'update must be an object');
  const { topic, doc_key: docKey, doc_version: docVersion, watermark } = raw;
  if (typeof topic !== 'string' || !topic || typeof docKey !== 'string' || !docKey) {
    throw new ProtocolError('bad_update', 'update needs non-empty string topic and doc_key');
  }
  if (!isInt(docVersion) || docVersion < 0 || !isInt(watermark) || watermark < 1) {
    throw new ProtocolError('bad_update', 'update needs integer doc_version >= 0 and watermark >= 1');
  }
  const payloadHash = raw.payload_hash ?? null;
  if (payloadHash !== null && typeof payloadHash !== 'string') {
    throw new ProtocolError('bad_update', 'payload_hash must be a base64 string or null');
  }
  const payload = raw.payload === undefined ? null : raw.payload;
  return { topic, docKey, docVersion, payload, payloadHash, watermark, hydrationRequired: Boolean(raw.hydration_required) || payload === null };
}

/** [{topic, watermark}] (or a {topic: watermark} map) → {topic: watermark}. */
export function parseWatermarks(raw) {
  if (raw === null || raw === undefined) return {};
  const items = Array.isArray(raw) ? raw
    : typeof raw === 'object' ? Object.entries(raw).map(([topic, watermark]) => ({ topic, watermark }))
      : null;
  if (items === null) throw new ProtocolError('bad_watermarks', 'watermarks must be a list of {topic, watermark}');
  const out = {};
  for (const item of items) {
    if (!item || typeof item.topic !== 'string' || !isInt(item.watermark)) {
      throw new ProtocolError('bad_watermarks', 'each watermark entry needs a string topic and an integer watermark');
    }
    out[item.topic] = item.watermark;
  }
  return out;
}

/** {topic: stream_epoch} from a list of {topic, watermark, stream_epoch} entries. */
export function parseEpochs(raw) {
  const out = {};
  if (!Array.isArray(raw)) return out;
  for (const e of raw) {
    if (e && typeof e.topic === 'string' && typeof e.stream_epoch === 'string') out[e.topic] = e.stream_epoch;
  }
  return out;
}

export function parseUpdateBatch(payload) {
  if (!payload || typeof payload !== 'object' || !Array.isArray(payload.updates)) {
    throw new ProtocolError('bad_update_batch', 'sync:update_batch payload needs an updates list');
  }
  return {
    updates: payload.updates.map(parseUpdate),
    replayComplete: Boolean(payload.replay_complete),
    headWatermarks: parseWatermarks(payload.head_watermarks),
    epochs: parseEpochs(payload.head_watermarks),
  };
}

/**
 * The sync:subscribe payload. Every topic is sent with a cursor (0 when none): the server then
 * says whether history was pruned instead of silently replaying only the retained window.
 */
export function subscribePayload(topics, cursors, { replayBatchSize, requestId } = {}) {
  const payload = {
    topics: [...topics],
    resume_after: topics.map((topic) => {
      const { watermark = 0, streamEpoch = null } = cursors[topic] ?? {};
      return streamEpoch ? { topic, watermark, stream_epoch: streamEpoch } : { topic, watermark };
    }),
  };
  if (replayBatchSize) payload.replay_batch_size = replayBatchSize;
  if (requestId) payload.request_id = requestId;
  return payload;
}

export function errorCode(payload, fallback = 'unknown_error') {
  if (payload && typeof payload === 'object') {
    for (const key of ['code', 'reason']) {
      if (typeof payload[key] === 'string' && payload[key]) return payload[key];
    }
  }
  return fallback;
}
