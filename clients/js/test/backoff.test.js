import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Backoff, HINT_SPREAD } from '../src/backoff.js';
import { rng } from './support/random.js';

test('ceilings double until the cap', () => {
  const b = new Backoff({ baseMs: 500, capMs: 4000, random: () => 0.999999 });
  assert.deepEqual(Array.from({ length: 7 }, () => Math.round(b.nextDelay())), [500, 1000, 2000, 4000, 4000, 4000, 4000]);
});

test('cap first, then full jitter', () => {
  const b = new Backoff({ baseMs: 1000, capMs: 8000, random: () => 0.25 });
  assert.deepEqual(Array.from({ length: 6 }, () => b.nextDelay()), [250, 500, 1000, 2000, 2000, 2000]);
  const zero = new Backoff({ random: () => 0 });
  assert.equal(zero.nextDelay(), 0);
});

test('delays always lie in [0, ceiling)', () => {
  const random = rng(3);
  for (let i = 0; i < 1000; i += 1) {
    const b = new Backoff({ baseMs: 1 + random() * 1000, capMs: 2000 + random() * 60000, random });
    b.attempt = Math.floor(random() * 200);
    const ceiling = b.ceiling();
    const d = b.nextDelay();
    assert.ok(d >= 0 && d < ceiling, `${d} vs ${ceiling}`);
  }
});

test('a storm of clients is spread', () => {
  const delays = Array.from({ length: 200 }, (_, seed) => new Backoff({ baseMs: 500, random: rng(seed + 1) }).nextDelay());
  assert.ok(Math.max(...delays) - Math.min(...delays) > 400);
  assert.ok(new Set(delays.map((d) => Math.round(d))).size > 150);
});

test('resets only after a stable connection', () => {
  const b = new Backoff({ baseMs: 1000, random: () => 0.5, stableAfterMs: 10000 });
  for (let i = 0; i < 4; i += 1) b.nextDelay();
  b.connected(100_000); b.disconnected(103_000);
  assert.equal(b.attempt, 4);
  b.connected(200_000); b.disconnected(215_000);
  assert.equal(b.attempt, 0);
  assert.throws(() => new Backoff({ baseMs: 0 }), RangeError);
});

test('a server hint is a floor, spread by at most a quarter, and still counts as an attempt', () => {
  const random = rng(7);
  for (let i = 0; i < 1000; i += 1) {
    const r = random();
    const b = new Backoff({ baseMs: 500, capMs: 30_000, random: () => r });
    b.attempt = Math.floor(random() * 20);
    const own = r * b.ceiling();
    const attempt = b.attempt;
    const hint = 1 + random() * 3_600_000;
    const d = b.nextDelay(hint);
    assert.ok(d >= hint && d >= own, `${d} vs hint ${hint}, own ${own}`);
    assert.ok(d < Math.max(own, hint * (1 + HINT_SPREAD)) + 1e-6);
    assert.equal(b.attempt, attempt + 1);
  }
});

test('hinted delays of many clients do not return in lockstep', () => {
  const delays = Array.from({ length: 200 }, (_, seed) => new Backoff({ random: rng(seed + 1) }).nextDelay(10_000));
  assert.ok(Math.min(...delays) >= 10_000 && Math.max(...delays) < 12_500);
  assert.ok(new Set(delays.map((d) => Math.round(d / 10))).size > 100);
});
