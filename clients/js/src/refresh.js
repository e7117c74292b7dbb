// In-band token refresh: keep an open socket's session alive past its token's `exp`. Same rules as
// the Python client (clients/python/khala_client/refresh.py).
//
// The server ends a socket's session at its token's `exp` (plus a small grace) with sync:error
// token_expired and close code 4419, unless the client sends `sync:refresh {token}` first with a
// fresh token for the same subject and session. TokenRefresher is that schedule, for one socket:
// - it reads `exp` (and `iat`, `sub`, `oa_session_id`) from the token's JWT claims without
//   verifying them (the server verifies; the client only needs to know when). A token without a
//   readable `exp` schedules nothing;
// - the remaining lifetime is `exp - now` on the client's wall clock, capped by `exp - iat`, so a
//   client clock running behind the server's cannot push the refresh past the real expiry;
// - the refresh fires at a jittered fraction of it, uniform in [0.75, 0.9): ahead of the expiry
//   with room for retries, and spread so the sockets of one deploy do not all ask the token
//   endpoint at the same instant, token after token;
// - it asks the token provider for a token for the current session (`{ sessionId }`); a token for
//   another subject or session is not sent (the server would refuse it and close the socket);
// - a failed attempt (provider threw, token for another session, server refused, no reply) is
//   reported through onFailed and retried with capped, jittered backoff, never later than the
//   expiry. Past it the schedule stops: the server closes with token_expired and the client
//   reconnects with a fresh token through its normal path.
// Time (`clock`, `sleep`) and randomness (`random`) are injected, so tests run it on a fake clock.
import { Backoff } from './backoff.js';
import { FatalError, KhalaError, TransientError } from './errors.js';

export const REFRESH_FRACTION = Object.freeze([0.75, 0.9]);
export const RETRY_BASE_MS = 1000;
export const RETRY_CAP_MS = 30_000;
export const RETRY_MIN_MS = 250; // a provider failing at once must not spin

function decodeSegment(segment) {
  const base64 = segment.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (segment.length % 4)) % 4);
  const binary = atob(base64);
  return JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
}

/** {subject, sessionId, issuedAt, expiresAt} (epoch seconds) of a JWT, or null when it is not one. */
export function tokenClaims(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  let claims;
  try { claims = decodeSegment(parts[1]); } catch { return null; }
  if (!claims || typeof claims !== 'object' || Array.isArray(claims)) return null;
  const number = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
  const text = (v) => (typeof v === 'string' ? v : null);
  return { subject: text(claims.sub), sessionId: text(claims.oa_session_id), issuedAt: number(claims.iat), expiresAt: number(claims.exp) };
}

/** Milliseconds of lifetime left at wall-clock `nowMs`, capped by the token's own exp - iat; null without exp. */
export function remainingMs(claims, nowMs) {
  if (!claims || claims.expiresAt === null) return null;
  let left = claims.expiresAt * 1000 - nowMs;
  if (claims.issuedAt !== null) left = Math.min(left, (claims.expiresAt - claims.issuedAt) * 1000);
  return Math.max(0, left);
}

/** When to refresh a token with `remaining` ms left: a uniform draw in the fraction band. */
export function refreshDelay(remaining, random, [low, high] = REFRESH_FRACTION) {
  return remaining * (low + (high - low) * random());
}

export class TokenRefresher {
  /**
   * provide(sessionId) → a fresh token for that session; send(token) → the server's reply to
   * sync:refresh (rejects with a KhalaError on a refusal); onRefreshed(token, reply) and
   * onFailed({code, message, attempt, expiresInMs}) report each outcome. A FatalError from send
   * (reauth_required: the session was revoked) ends the schedule and rejects run().
   */
  constructor(token, {
    provide, send, onRefreshed, onFailed, clock, random, sleep = (ms) => clock.sleep(ms), fraction = REFRESH_FRACTION,
    retryBaseMs = RETRY_BASE_MS, retryCapMs = RETRY_CAP_MS, retryMinMs = RETRY_MIN_MS,
  }) {
    Object.assign(this, { token, provide, send, onRefreshed, onFailed, clock, random, sleep, fraction, retryBaseMs, retryCapMs, retryMinMs });
    this.refreshes = 0;
    this.stopped = false;
  }

  stop() { this.stopped = true; }

  /** Refresh ahead of every expiry until stop(), or until an expiry passes unrefreshed. */
  async run() {
    while (!this.stopped) {
      const claims = tokenClaims(this.token);
      const remaining = remainingMs(claims, this.clock.wallNow());
      if (remaining === null) return; // not a JWT with exp: nothing to schedule
      const deadline = this.clock.now() + remaining;
      await this.sleep(refreshDelay(remaining, this.random, this.fraction));
      if (this.stopped || !(await this._attemptUntil(claims, deadline))) return;
    }
  }

  async _attemptUntil(claims, deadline) {
    const backoff = new Backoff({ baseMs: this.retryBaseMs, capMs: Math.max(this.retryBaseMs, this.retryCapMs), random: this.random });
    for (let attempt = 1; ; attempt += 1) {
      let token = null;
      try {
        // A provider's FatalError (e.g. scopes_not_granted) is one failed attempt too: the socket
        // still works; a reconnect would meet the same error and stop the client.
        token = await this._freshToken(claims);
      } catch (err) {
        if (this.stopped) return false;
        this._failed(err, attempt, deadline);
      }
      if (token !== null) {
        if (this.stopped) return false;
        try {
          const reply = await this.send(token);
          if (this.stopped) return false;
          this.token = token;
          this.refreshes += 1;
          this.onRefreshed(token, reply);
          return true;
        } catch (err) {
          if (err instanceof FatalError) throw err; // the server ended the session: the socket is over
          if (this.stopped) return false;
          this._failed(err, attempt, deadline);
        }
      }
      const left = deadline - this.clock.now();
      if (left <= 0) return false; // expired: the server closes the socket; the client reconnects
      await this.sleep(Math.min(left, Math.max(this.retryMinMs, backoff.nextDelay())));
      if (this.stopped) return false;
    }
  }

  async _freshToken(claims) {
    let token;
    try {
      token = await this.provide(claims.sessionId);
    } catch (err) {
      if (err instanceof KhalaError) throw err;
      throw new TransientError('token_provider_failed', `tokenProvider threw ${err?.message ?? err}`);
    }
    if (typeof token !== 'string' || !token) throw new TransientError('token_provider_failed', 'tokenProvider returned no token');
    const fresh = tokenClaims(token);
    if (fresh && (fresh.subject !== claims.subject || fresh.sessionId !== claims.sessionId)) {
      // Sent, it would be refused and the socket closed (a socket never changes hands).
      throw new TransientError('session_mismatch',
        `the token provider returned a token for ${fresh.subject} / ${fresh.sessionId}, not this socket's ${claims.subject} / ${claims.sessionId} (does it pass sessionId on?)`);
    }
    return token;
  }

  _failed(err, attempt, deadline) {
    this.onFailed({
      code: err?.code ?? 'refresh_failed', message: err?.message ?? String(err), attempt,
      expiresInMs: Math.max(0, deadline - this.clock.now()),
    });
  }
}
