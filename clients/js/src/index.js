// Khala JavaScript client: ESM, browsers and Node >= 20 (pass a WebSocket implementation in Node).
export { KhalaClient, State } from './client.js';
export { Backoff } from './backoff.js';
export { DocumentCache, merge } from './cache.js';
export { FakeClock, realClock } from './clock.js';
export { AuthError, FatalError, KhalaError, TransientError, classify } from './errors.js';
export { PayloadHashError, canonicalJson, payloadHash, toText, toWire, verify } from './hashing.js';
export { HttpApi, HttpError, apiTokenProvider, checkGrantedScopes } from './http.js';
export { PROTOCOL_VERSION, VERSION } from './version.js';
export { REFRESH_FRACTION, TokenRefresher, refreshDelay, remainingMs, tokenClaims } from './refresh.js';
export { IndexedDBStore, LocalStorageStore, MemoryStore } from './stores.js';
export * as protocol from './protocol.js';
