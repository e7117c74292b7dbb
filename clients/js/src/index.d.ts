// Type declarations of @khala/client (hand-written; the package is plain ESM JavaScript).

export type StateName = 'idle' | 'connecting' | 'joined' | 'live' | 'reconnecting' | 'refresh_failed' | 'closed';
export declare const State: Readonly<{
  IDLE: 'idle'; CONNECTING: 'connecting'; JOINED: 'joined'; LIVE: 'live'; RECONNECTING: 'reconnecting';
  /** The socket is open and delivering, but refreshing its token failed (retried until it expires). */
  REFRESH_FAILED: 'refresh_failed'; CLOSED: 'closed';
}>;

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** One cached document (camelCase of the wire's doc_key, doc_version, payload_hash …). */
export interface Document {
  topic: string;
  docKey: string;
  docVersion: number;
  payload: JsonValue | null;
  payloadHash: string | null;
  watermark: number;
  hydrationRequired: boolean;
}

export interface Update extends Document {}

export interface TopicState {
  watermark: number;
  streamEpoch: string | null;
}

/** Persists cursors with the documents they cover; commit() is one atomic step. */
export interface WatermarkStore {
  topicState(topic: string): Promise<TopicState>;
  topics(): Promise<Record<string, TopicState>>;
  get(topic: string, docKey: string): Promise<Document | undefined>;
  documents(topic: string): Promise<Map<string, Document>>;
  /** Upsert documents (never to an older docVersion) and move the cursor to max(current, watermark). */
  commit(topic: string, documents: Document[], watermark: number, streamEpoch?: string | null): Promise<number>;
  /** Replace every document of the topic and set its cursor (the reset after a stale cursor). */
  replaceTopic(topic: string, documents: Document[], watermark: number, streamEpoch: string | null): Promise<void>;
  clearTopic(topic: string): Promise<void>;
  close(): Promise<void>;
}

export declare class MemoryStore implements WatermarkStore {
  constructor();
  topicState(topic: string): Promise<TopicState>;
  topics(): Promise<Record<string, TopicState>>;
  get(topic: string, docKey: string): Promise<Document | undefined>;
  documents(topic: string): Promise<Map<string, Document>>;
  commit(topic: string, documents: Document[], watermark: number, streamEpoch?: string | null): Promise<number>;
  replaceTopic(topic: string, documents: Document[], watermark: number, streamEpoch: string | null): Promise<void>;
  clearTopic(topic: string): Promise<void>;
  close(): Promise<void>;
}

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export declare class LocalStorageStore extends MemoryStore {
  constructor(options?: { storage?: StorageLike; namespace?: string });
}

export declare class IndexedDBStore extends MemoryStore {
  constructor(options?: { indexedDB?: IDBFactory; IDBKeyRange?: typeof IDBKeyRange; name?: string });
}

export interface MergeResult {
  topic: string;
  documents: Document[];
  watermark: number;
  applied: number;
  ignoredOlder: number;
  duplicates: number;
}

export declare function merge(
  topic: string, lastWatermark: number, cachedVersion: (docKey: string) => number | undefined, updates: Update[],
): MergeResult;

export declare class DocumentCache {
  constructor(store?: WatermarkStore);
  store: WatermarkStore;
  plan(topic: string, updates: Update[]): Promise<MergeResult>;
  commit(result: MergeResult, streamEpoch?: string | null): Promise<number>;
  apply(topic: string, updates: Update[], streamEpoch?: string | null): Promise<MergeResult>;
  advance(topic: string, watermark: number, streamEpoch?: string | null): Promise<number>;
  replaceTopic(topic: string, documents: Document[], watermark: number, streamEpoch: string | null): Promise<void>;
  get(topic: string, docKey: string): Promise<Document | undefined>;
  documents(topic: string): Promise<Map<string, Document>>;
  topicState(topic: string): Promise<TopicState>;
}

export declare class Backoff {
  constructor(options?: { baseMs?: number; capMs?: number; random?: () => number; stableAfterMs?: number });
  attempt: number;
  ceiling(attempt?: number): number;
  /** Never less than `retryAfterMs` (the server's hint) when given: spread over [hint, 1.25 × hint). */
  nextDelay(retryAfterMs?: number | null): number;
  reset(): void;
  connected(nowMs: number): void;
  disconnected(nowMs: number): void;
}

export interface Clock {
  now(): number;
  wallNow(): number;
  sleep(ms: number): Promise<void>;
}
export declare const realClock: Clock;
export declare class FakeClock implements Clock {
  constructor(start?: number);
  now(): number;
  wallNow(): number;
  advance(ms: number): void;
  sleep(ms: number): Promise<void>;
  sleeps: number[];
}

export declare class KhalaError extends Error {
  constructor(code: string, message?: string, details?: Record<string, unknown>);
  code: string;
  details: Record<string, unknown>;
}
export declare class FatalError extends KhalaError {}
export declare class AuthError extends FatalError {}
export declare class TransientError extends KhalaError {}
export declare function classify(code: string): 'fatal' | 'auth' | 'transient';

export declare class HttpError extends KhalaError {
  status: number | null;
  /** How long the server asked to wait (429 and 503 `Retry-After`), in ms; null when it did not say. */
  retryAfterMs: number | null;
}

export interface Snapshot {
  topic: string;
  documents: Array<{ doc_key: string; doc_version: number; payload: JsonValue; payload_hash: string; watermark: number }>;
  headWatermark: number;
  streamEpoch: string | null;
}

export declare class HttpApi {
  constructor(url: string, options?: { fetch?: typeof fetch; timeoutMs?: number });
  mintSyncToken(apiToken: string, options?: { scopes?: string[]; ttlSeconds?: number; sessionId?: string | null }): Promise<{ token: string; expires_in: number; scopes: string[]; [key: string]: unknown }>;
  getDocument(topic: string, docKey: string, token: string, freshness?: { minWatermark?: number; streamEpoch?: string | null }): Promise<{ doc_key: string; doc_version: number; payload: JsonValue; payload_hash: string; watermark: number }>;
  listPage(topic: string, token: string, options?: { cursor?: string; limit?: number }): Promise<{ documents: Snapshot['documents']; headWatermark: number; streamEpoch: string | null; nextCursor: string | null }>;
  snapshot(topic: string, token: string, options?: { limit?: number; attempts?: number }): Promise<Snapshot>;
}

export declare class PayloadHashError extends Error {
  code: 'non_finite_number' | 'unsafe_integer' | 'invalid_unicode' | 'not_json';
}
export declare function canonicalJson(payload: unknown): string;
export declare function payloadHash(payload: unknown): Promise<Uint8Array>;
export declare function toWire(digest: Uint8Array): string;
export declare function toText(digest: Uint8Array): string;
export declare function verify(payload: unknown, wireHash: string | null | undefined): Promise<boolean>;

export type KhalaEvent =
  | { type: 'state'; state: StateName; previous: StateName }
  | { type: 'batch'; topic: string; result: MergeResult; headWatermark: number | null; replayComplete: boolean }
  | { type: 'heartbeat'; watermarks: Record<string, number> }
  | { type: 'snapshot'; topic: string; documents: number; headWatermark: number; streamEpoch: string | null }
  | { type: 'stale_cursor'; topics: string[]; payload: Record<string, unknown> }
  /** retryAfterMs: the server's hint when it refused the last attempt with one (delayMs is then at least that). */
  | { type: 'reconnecting'; attempt: number; delayMs: number; reason: string; retryAfterMs: number | null }
  /** The server refused `request` with rate_limited; it is asked again on the same socket in delayMs (at least retryAfterMs). */
  | { type: 'rate_limited'; request: 'phx_join' | 'sync:subscribe' | 'hydration'; limit: string | null; retryAfterMs: number; attempt: number; delayMs: number }
  | { type: 'token_refreshed'; expiresAt: number | null; refreshes: number }
  | { type: 'refresh_failed'; code: string; message: string; attempt: number; expiresInMs: number }
  | { type: 'error'; code: string; message: string; details: Record<string, unknown> };

export interface WebSocketLike {
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number): void;
}

export interface KhalaClientOptions {
  /** Server URL, http(s):// or ws(s)://host[:port]. */
  url: string;
  /**
   * Called on EVERY connect (no argument): must resolve to a fresh sync token. Called with
   * `{ sessionId }` to refresh the open socket's token in band: the token must continue that session.
   */
  tokenProvider: TokenProvider;
  store?: WatermarkStore;
  topics?: string[];
  /** WebSocket constructor: the global one in browsers; in Node pass `ws`'s. */
  WebSocket?: new (url: string) => WebSocketLike;
  fetch?: typeof fetch;
  socketPath?: string;
  connectParams?: Record<string, string | number | undefined>;
  replayBatchSize?: number;
  heartbeatIntervalMs?: number;
  heartbeatTimeoutMs?: number;
  joinTimeoutMs?: number;
  subscribeTimeoutMs?: number;
  /** A second stale cursor for a topic within this window backs off before the next snapshot. */
  staleWindowMs?: number;
  backoff?: Backoff;
  staleBackoff?: Backoff;
  clock?: Clock;
  random?: () => number;
  verifyHashes?: boolean;
  http?: HttpApi;
  onState?: (state: StateName) => void;
  onEvent?: (event: KhalaEvent) => void;
  eventQueueSize?: number;
  /** Refresh the token in band ahead of its exp (default true). */
  tokenRefresh?: boolean;
  /** How many times a join, subscribe or hydration refused with rate_limited is asked in all before the socket is dropped (default 5). */
  rateLimitAttempts?: number;
}

export type TokenProvider = (options?: { sessionId?: string | null }) => Promise<string>;

export interface TokenClaims {
  subject: string | null;
  sessionId: string | null;
  /** epoch seconds */
  issuedAt: number | null;
  expiresAt: number | null;
}
/** The claims of a JWT, read without verification; null when `token` is not one. */
export declare function tokenClaims(token: unknown): TokenClaims | null;
export declare function remainingMs(claims: TokenClaims | null, nowMs: number): number | null;
export declare function refreshDelay(remaining: number, random: () => number, fraction?: readonly [number, number]): number;
export declare const REFRESH_FRACTION: readonly [number, number];
export interface RefreshFailure { code: string; message: string; attempt: number; expiresInMs: number }
/** The in-band refresh schedule of one socket (refresh.js). */
export declare class TokenRefresher {
  constructor(token: string, options: {
    provide: (sessionId: string | null) => Promise<string>;
    send: (token: string) => Promise<unknown>;
    onRefreshed: (token: string, reply: unknown) => void;
    onFailed: (failure: RefreshFailure) => void;
    clock: Clock;
    random: () => number;
    sleep?: (ms: number) => Promise<void>;
    fraction?: readonly [number, number];
    retryBaseMs?: number;
    retryCapMs?: number;
    retryMinMs?: number;
  });
  token: string;
  refreshes: number;
  run(): Promise<void>;
  stop(): void;
}

export declare class KhalaClient {
  constructor(options: KhalaClientOptions);
  readonly state: StateName;
  /** The fatal error that closed the client, if any. */
  readonly error: Error | null;
  readonly cache: DocumentCache;
  topics: string[];
  connects: number;
  connectAttempts: number[];
  headWatermarks: Record<string, number>;
  appliedLog: Array<[string, string, number, number]> | null;
  onState?: (state: StateName) => void;
  onEvent?: (event: KhalaEvent) => void;
  /** Start the connect/retry loop; the promise rejects with a FatalError when retrying cannot help. */
  start(): Promise<void>;
  close(): Promise<void>;
  subscribe(...topics: string[]): Promise<void>;
  unsubscribe(...topics: string[]): Promise<void>;
  events(): AsyncIterableIterator<KhalaEvent>;
  states(): AsyncGenerator<StateName>;
  waitForState(states: StateName | StateName[], options?: { timeoutMs?: number }): Promise<StateName>;
  waitLive(options?: { timeoutMs?: number }): Promise<StateName>;
  hydrate(topic: string, docKey: string, options?: { fallback?: Document }): Promise<Document | null>;
  loadSnapshot(topic: string): Promise<void>;
  documents(topic: string): Promise<Map<string, Document>>;
  watermark(topic: string): Promise<number>;
}

/** Mints a sync token for exactly `scopes` (the subscribed topics) on every call; rejects with FatalError('scopes_not_granted') when granted fewer. */
export declare function apiTokenProvider(
  url: string, apiToken: string, options: { scopes: string[]; fetch?: typeof fetch; http?: HttpApi },
): TokenProvider;
/** Throws FatalError('scopes_not_granted') unless `granted` covers every requested scope. */
export declare function checkGrantedScopes(requested: string[], granted: unknown): void;
/** This package's version (equals package.json's). */
export declare const VERSION: string;
/** The wire protocol this client speaks (the server's `protocol_version`). */
export declare const PROTOCOL_VERSION: string;

export declare namespace protocol {
  const VSN: string;
  const SYNC_CHANNEL: string;
  const DEFAULT_SOCKET_PATH: string;
  function encodeFrame(joinRef: string | null, ref: string | null, topic: string, event: string, payload: unknown): string;
  function decodeFrame(text: string): { joinRef: string | null; ref: string | null; topic: string; event: string; payload: any };
  function socketUrl(url: string, token: string, options?: { path?: string; params?: Record<string, unknown> }): string;
}
