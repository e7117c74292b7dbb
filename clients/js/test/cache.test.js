// Merge rules over every store, with randomized at-least-once deliveries (seeded).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { IDBKeyRange, indexedDB } from 'fake-indexeddb';

import { DocumentCache, IndexedDBStore, LocalStorageStore, MemoryStore, merge } from '../src/index.js';
import { rng } from './support/random.js';
import { MemoryStorage } from './support/storage.js';

const upd = (watermark, docKey = 'k', docVersion = 1, payload) => ({ topic: 't', docKey, docVersion, payload: payload ?? { v: docVersion, wm: watermark }, payloadHash: null, watermark, hydrationRequired: false });

let dbCounter = 0;
const STORES = {
  memory: () => new MemoryStore(),
  localStorage: () => new LocalStorageStore({ storage: new MemoryStorage() }),
  indexedDB: () => new IndexedDBStore({ indexedDB, IDBKeyRange, name: `khala-test-${dbCounter++}` }),
};

for (const [name, make] of Object.entries(STORES)) {
  test(`${name}: older version ignored, cursor advances anyway`, async () => {
    const cache = new DocumentCache(make());
    await cache.apply('t', [upd(5, 'k', 9)]);
    const result = await cache.apply('t', [upd(10, 'k', 8)]);
    assert.equal(result.ignoredOlder, 1);
    assert.equal((await cache.get('t', 'k')).docVersion, 9);
    assert.equal((await cache.topicState('t')).watermark, 10);
  });

  test(`${name}: equal version replaces, duplicates dropped`, async () => {
    const cache = new DocumentCache(make());
    await cache.apply('t', [upd(1, 'k', 3, { old: true })]);
    await cache.apply('t', [upd(2, 'k', 3, { new: true })]);
    assert.deepEqual((await cache.get('t', 'k')).payload, { new: true });
    const dup = await cache.apply('t', [upd(2, 'k', 3, { dup: 1 }), upd(1, 'k', 99)]);
    assert.equal(dup.duplicates, 2);
    assert.deepEqual((await cache.get('t', 'k')).payload, { new: true });
  });

  test(`${name}: watermarks only move forward; replaceTopic resets`, async () => {
    const store = make();
    assert.equal(await store.commit('t', [], 10, 'e1'), 10);
    assert.equal(await store.commit('t', [], 3), 10);
    assert.deepEqual(await store.topicState('t'), { watermark: 10, streamEpoch: 'e1' });
    await store.commit('t', [upd(4, 'a')], 11);
    await store.commit('u', [{ ...upd(1, 'x'), topic: 'u' }], 1);
    await store.replaceTopic('t', [upd(7, 'c', 2)], 7, 'e2');
    assert.deepEqual([...(await store.documents('t')).keys()], ['c']);
    assert.deepEqual(await store.topicState('t'), { watermark: 7, streamEpoch: 'e2' });
    assert.deepEqual([...(await store.documents('u')).keys()], ['x']);
    assert.deepEqual(Object.keys(await store.topics()).sort(), ['t', 'u']);
    await store.close();
  });

  test(`${name}: any at-least-once delivery converges`, async () => {
    const random = rng(11);
    for (let round = 0; round < 25; round += 1) {
      const journal = Array.from({ length: 1 + Math.floor(random() * 40) }, (_, i) => upd(i + 1, 'abcde'[Math.floor(random() * 5)], Math.floor(random() * 7)));
      const cache = new DocumentCache(make());
      let end = 0;
      while (end < journal.length) {
        const start = Math.floor(random() * (end + 1)); // a reconnect resumes at or before what it has
        const stop = end + 1 + Math.floor(random() * (journal.length - end));
        const segment = journal.slice(start, stop);
        for (let i = 0; i < segment.length;) {
          const size = 1 + Math.floor(random() * 5);
          await cache.apply('t', segment.slice(i, i + size));
          i += size;
        }
        end = stop;
      }
      const expected = new Map();
      for (const u of journal) if (!expected.has(u.docKey) || u.docVersion >= expected.get(u.docKey).docVersion) expected.set(u.docKey, u);
      const got = await cache.documents('t');
      assert.deepEqual(new Map([...got].map(([k, d]) => [k, [d.docVersion, d.watermark]])), new Map([...expected].map(([k, u]) => [k, [u.docVersion, u.watermark]])));
      assert.equal((await cache.topicState('t')).watermark, journal.length);
    }
  });
}

test('merge refuses other topics', () => {
  assert.throws(() => merge('t', 0, () => undefined, [{ ...upd(1), topic: 'x' }]));
});

test('localStorage: one setItem per commit, and a failed write changes nothing', async () => {
  const storage = new MemoryStorage();
  const store = new LocalStorageStore({ storage });
  await store.commit('t', [upd(1, 'a')], 1);
  storage.failNext = true; // QuotaExceededError
  await assert.rejects(store.commit('t', [upd(2, 'b')], 2));
  assert.equal((await store.topicState('t')).watermark, 1);
  assert.deepEqual([...(await store.documents('t')).keys()], ['a']);
  const reopened = new LocalStorageStore({ storage });
  assert.deepEqual([...(await reopened.documents('t')).keys()], ['a']);
});

test('indexedDB: survives reopening and rolls back a failed transaction', async () => {
  const name = `khala-reopen-${dbCounter++}`;
  const store = new IndexedDBStore({ indexedDB, IDBKeyRange, name });
  await store.commit('t', [upd(3, 'a', 2, { nested: { x: [1, 'é'] } })], 3, 'ep');
  // a document that cannot be stored (a function is not cloneable) aborts the whole transaction
  await assert.rejects(store.commit('t', [upd(4, 'b'), { ...upd(5, 'c'), payload: () => 1 }], 5));
  await store.close();
  const reopened = new IndexedDBStore({ indexedDB, IDBKeyRange, name });
  assert.deepEqual(await reopened.topicState('t'), { watermark: 3, streamEpoch: 'ep' });
  assert.deepEqual([...(await reopened.documents('t')).keys()], ['a']);
  assert.deepEqual((await reopened.get('t', 'a')).payload, { nested: { x: [1, 'é'] } });
  await reopened.close();
});
