// Time as an injectable dependency (heartbeats, dead-socket detection, backoff, stale window).

export const realClock = Object.freeze({
  now: () => (globalThis.performance ? performance.now() : Date.now()),
  wallNow: () => Date.now(),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms))),
});

/** Virtual time for tests: `sleep` advances the clock instead of waiting. */
export class FakeClock {
  constructor(start = 1_000_000) {
    this.t = start;
    this.sleeps = [];
  }

  now() { return this.t; }

  wallNow() { return this.t; }

  advance(ms) { this.t += ms; }

  async sleep(ms) {
    this.sleeps.push(ms);
    this.t += Math.max(0, ms);
    await Promise.resolve();
  }
}
