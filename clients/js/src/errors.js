// Client errors and the one table that decides what the retry loop does with a server error:
// fatal codes stop it; auth codes (a rejected token) get one retry with a fresh token; the rest
// are transient (reconnect with backoff). Mirrors clients/python/khala_client/errors.py.

export const FATAL_CODES = new Set([
  'reauth_required', 'upgrade_required', 'invalid_client_build', 'unsupported_protocol_version',
  'unsupported_schema_version', 'unsupported_client_build', 'bad_topic', 'forbidden_topic', 'bad_subscription',
]);

export const AUTH_CODES = new Set([
  'unauthorized', 'unauthenticated', 'missing_token', 'invalid_token_format', 'invalid_token_encoding',
  'unsupported_alg', 'missing_kid', 'unknown_kid', 'invalid_signature', 'invalid_claims', 'token_expired',
  'token_not_yet_valid', 'claim_mismatch',
]);

export class KhalaError extends Error {
  constructor(code, message = '', details = {}) {
    super(message ? `${code}: ${message}` : code);
    this.name = 'KhalaError';
    this.code = code;
    this.details = details ?? {};
  }
}

/** The retry loop stopped: the client cannot make progress without outside action. */
export class FatalError extends KhalaError {
  constructor(...args) { super(...args); this.name = 'FatalError'; }
}

/** The server refused the token twice in a row (the second one freshly minted). */
export class AuthError extends FatalError {
  constructor(...args) { super(...args); this.name = 'AuthError'; }
}

export class TransientError extends KhalaError {
  constructor(...args) { super(...args); this.name = 'TransientError'; }
}

/**
 * The server's hint (ms) of when a refused request may be made again, or null: `retry_after_ms`
 * of a socket refusal (the error's details), `Retry-After` of an HTTP 429 (HttpError.retryAfterMs).
 */
export function retryAfterMs(err) {
  const hint = err?.retryAfterMs ?? err?.details?.retry_after_ms;
  return typeof hint === 'number' && Number.isFinite(hint) && hint > 0 ? hint : null;
}

export function classify(code) {
  if (FATAL_CODES.has(code)) return 'fatal';
  if (AUTH_CODES.has(code)) return 'auth';
  return 'transient';
}
