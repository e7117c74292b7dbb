// Reconnect delays: exponential, capped, then FULL jitter ("cap first, then jitter"):
//   ceiling = min(cap, base * 2 ** attempt); delay = random() * ceiling
// Full jitter spreads a reconnect storm uniformly over [0, ceiling). The attempt counter resets
// only after a connection that stayed up `stableAfterMs`, so a server that accepts and drops at
// once cannot pull every client back to the smallest delay in a tight loop.

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

  /** The delay before the next attempt (and count the attempt). */
  nextDelay() {
    const delay = this.random() * this.ceiling();
    this.attempt += 1;
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
