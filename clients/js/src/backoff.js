// Reconnect delays: exponential, capped, then FULL jitter ("cap first, then jitter"):
//   ceiling = min(cap, base * 2 ** attempt); delay = random() * ceiling
// Full jitter spreads a reconnect storm uniformly over [0, ceiling). The attempt counter resets
// only after a connection that stayed up `stableAfterMs`, so a server that accepts and drops at
// once cannot pull every client back to the smallest delay in a tight loop.
//
// A refusal that says when to come back (rate_limited with retry_after_ms, an HTTP 429's
// Retry-After) overrides the jitter from below: the wait is at least the hint, spread over
// [hint, hint * (1 + HINT_SPREAD)). Coming back exactly at the hint would put every client refused in
// the same window at the next window's start in lockstep, to be refused again together.

export const HINT_SPREAD = 0.25;

/** A wait of at least `retryAfterMs` (the server's hint), spread by up to HINT_SPREAD. */
export function hintedDelay(retryAfterMs, random) {
  return retryAfterMs * (1 + HINT_SPREAD * random());
}

export class Backoff {
  constructor({ baseMs = 500, capMs = 30_000, random = Math.random, stableAfterMs = 10_000 } = {}) {
    if (!(baseMs > 0) || capMs < baseMs) throw new RangeError('backoff needs 0 < baseMs <= capMs');
    Object.assign(this, { baseMs, capMs, random, stableAfterMs });
    this.attempt = 0;
    this.connectedAt = null;
  }

  ceiling(attempt = this.attempt) {
    return Math.min(this.capMs, this.baseMs * 2 ** Math.min(attempt, 62));
  }

  /**
   * The delay before the next attempt (and count the attempt); never less than the server's
   * `retryAfterMs` hint when the last attempt was refused with one.
   */
  nextDelay(retryAfterMs = null) {
    let delay = this.random() * this.ceiling();
    this.attempt += 1;
    if (retryAfterMs > 0) delay = Math.max(delay, hintedDelay(retryAfterMs, this.random));
    return delay;
  }

  reset() {
    this.attempt = 0;
  }

  connected(nowMs) {
    this.connectedAt = nowMs;
  }

  disconnected(nowMs) {
    if (this.connectedAt !== null && nowMs - this.connectedAt >= this.stableAfterMs) this.reset();
    this.connectedAt = null;
  }
}
