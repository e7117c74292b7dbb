// The local document cache: merge rules over a store (mirrors khala_client/cache.py).
//
// Per topic, in watermark order:
// - an update with watermark <= last (the topic cursor) is a duplicate and is dropped (delivery
//   is at least once across reconnects);
// - otherwise the cursor advances to the update's watermark, whatever happens to the document;
// - the document is replaced when the incoming docVersion is >= the cached one (equal = a
//   reprojection rewrote it) and ignored when it is older.
import { MemoryStore } from './stores.js';

/**
 * Pure: what a batch of updates of one topic does to a cache whose cursor is `lastWatermark`.
 * `cachedVersion(docKey)` returns the cached docVersion or undefined.
 */
export function merge(topic, lastWatermark, cachedVersion, updates) {
  const result = { topic, documents: [], watermark: lastWatermark, applied: 0, ignoredOlder: 0, duplicates: 0 };
  const pending = new Map();
  const ordered = [...updates].sort((a, b) => a.watermark - b.watermark);
  for (const u of ordered) {
    if (u.topic !== topic) throw new Error(`update of topic ${u.topic} merged into ${topic}`);
    if (u.watermark <= result.watermark) {
      result.duplicates += 1;
      continue;
    }
    result.watermark = u.watermark;
    const current = pending.has(u.docKey) ? pending.get(u.docKey).docVersion : cachedVersion(u.docKey);
    if (current !== undefined && current !== null && u.docVersion < current) {
      result.ignoredOlder += 1;
      continue;
    }
    pending.set(u.docKey, {
      topic, docKey: u.docKey, docVersion: u.docVersion, payload: u.payload, payloadHash: u.payloadHash,
      watermark: u.watermark, hydrationRequired: Boolean(u.hydrationRequired),
    });
    result.applied += 1;
  }
  result.documents = [...pending.values()];
  return result;
}

export class DocumentCache {
  constructor(store = new MemoryStore()) {
    this.store = store;
  }

  /** What `updates` would do (nothing is written). */
  async plan(topic, updates) {
    const state = await this.store.topicState(topic);
    const versions = new Map();
    for (const u of updates) {
      if (!versions.has(u.docKey)) {
        const doc = await this.store.get(topic, u.docKey);
        versions.set(u.docKey, doc?.docVersion);
      }
    }
    return merge(topic, state.watermark, (k) => versions.get(k), updates);
  }

  /** Documents and cursor in one atomic store step. */
  commit(result, streamEpoch = null) {
    return this.store.commit(result.topic, result.documents, result.watermark, streamEpoch);
  }

  async apply(topic, updates, streamEpoch = null) {
    const result = await this.plan(topic, updates);
    result.watermark = await this.commit(result, streamEpoch);
    return result;
  }

  advance(topic, watermark, streamEpoch = null) {
    return this.store.commit(topic, [], watermark, streamEpoch);
  }

  replaceTopic(topic, documents, watermark, streamEpoch) {
    return this.store.replaceTopic(topic, documents, watermark, streamEpoch);
  }

  get(topic, docKey) { return this.store.get(topic, docKey); }

  documents(topic) { return this.store.documents(topic); }

  topicState(topic) { return this.store.topicState(topic); }
}
