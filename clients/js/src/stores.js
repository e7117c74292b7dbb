// Where a client keeps its cursors (per-topic watermark + streamEpoch) and the documents they
// cover. The invariant of every store: a topic's watermark is written in the SAME atomic step as
// the documents it covers (one setItem for localStorage, one transaction for IndexedDB), so a
// crash can never leave a cursor past documents that were not stored.
// Watermarks only move forward through commit(); replaceTopic() is the explicit reset used after
// a stale cursor. The docVersion guard is repeated here as a last line of defence.
// Documents: {topic, docKey, docVersion, payload, payloadHash, watermark, hydrationRequired}.

const EMPTY = Object.freeze({ watermark: 0, streamEpoch: null });

function newer(current, doc) {
  return current === undefined || doc.docVersion >= current.docVersion;
}

/** Process-local store (the default): lost on reload, the next start replays from the server. */
export class MemoryStore {
  constructor() {
    this.topicsMap = new Map();
    this.docs = new Map();
  }

  async topicState(topic) { return this.topicsMap.get(topic) ?? EMPTY; }

  async topics() { return Object.fromEntries(this.topicsMap); }

  async get(topic, docKey) { return this.docs.get(topic)?.get(docKey); }

  async documents(topic) { return new Map(this.docs.get(topic) ?? []); }

  async commit(topic, documents, watermark, streamEpoch = null) {
    if (!this.docs.has(topic)) this.docs.set(topic, new Map());
    const docs = this.docs.get(topic);
    for (const doc of documents) if (newer(docs.get(doc.docKey), doc)) docs.set(doc.docKey, doc);
    const state = this.topicsMap.get(topic) ?? EMPTY;
    const next = { watermark: Math.max(state.watermark, watermark), streamEpoch: streamEpoch || state.streamEpoch };
    this.topicsMap.set(topic, next);
    return next.watermark;
  }

  async replaceTopic(topic, documents, watermark, streamEpoch) {
    this.docs.set(topic, new Map(documents.map((d) => [d.docKey, d])));
    this.topicsMap.set(topic, { watermark, streamEpoch: streamEpoch ?? null });
  }

  async clearTopic(topic) { return this.replaceTopic(topic, [], 0, null); }

  async close() {}
}

/**
 * localStorage (or any Storage: getItem/setItem/removeItem). One key per topic holds the cursor
 * AND the documents, so one setItem is the atomic write. Mind the quota (~5 MiB per origin):
 * for large topics use IndexedDBStore. A failed setItem (QuotaExceededError) throws and leaves
 * the previous state in place.
 */
export class LocalStorageStore {
  constructor({ storage = globalThis.localStorage, namespace = 'khala' } = {}) {
    if (!storage) throw new TypeError('LocalStorageStore needs a Storage (globalThis.localStorage or {storage})');
    this.storage = storage;
    this.namespace = namespace;
    this.mirror = new Map(); // parsed topic entries
  }

  key(topic) { return `${this.namespace}:topic:${topic}`; }

  load(topic) {
    if (!this.mirror.has(topic)) {
      const raw = this.storage.getItem(this.key(topic));
      const entry = raw ? JSON.parse(raw) : { watermark: 0, streamEpoch: null, docs: {} };
      this.mirror.set(topic, entry);
    }
    return this.mirror.get(topic);
  }

  write(topic, entry) {
    this.storage.setItem(this.key(topic), JSON.stringify(entry)); // throws on quota: nothing changed
    this.mirror.set(topic, entry);
    const indexKey = `${this.namespace}:topics`;
    const index = JSON.parse(this.storage.getItem(indexKey) ?? '[]');
    if (!index.includes(topic)) this.storage.setItem(indexKey, JSON.stringify([...index, topic]));
  }

  async topicState(topic) {
    const { watermark, streamEpoch } = this.load(topic);
    return { watermark, streamEpoch };
  }

  async topics() {
    const index = JSON.parse(this.storage.getItem(`${this.namespace}:topics`) ?? '[]');
    return Object.fromEntries(await Promise.all(index.map(async (t) => [t, await this.topicState(t)])));
  }

  async get(topic, docKey) { return this.load(topic).docs[docKey]; }

  async documents(topic) { return new Map(Object.entries(this.load(topic).docs)); }

  async commit(topic, documents, watermark, streamEpoch = null) {
    const entry = this.load(topic);
    const docs = { ...entry.docs };
    for (const doc of documents) if (newer(docs[doc.docKey], doc)) docs[doc.docKey] = doc;
    const next = { watermark: Math.max(entry.watermark, watermark), streamEpoch: streamEpoch || entry.streamEpoch, docs };
    this.write(topic, next);
    return next.watermark;
  }

  async replaceTopic(topic, documents, watermark, streamEpoch) {
    this.write(topic, { watermark, streamEpoch: streamEpoch ?? null, docs: Object.fromEntries(documents.map((d) => [d.docKey, d])) });
  }

  async clearTopic(topic) { return this.replaceTopic(topic, [], 0, null); }

  async close() {}
}

const request = (req) => new Promise((resolve, reject) => {
  req.onsuccess = () => resolve(req.result);
  req.onerror = () => reject(req.error);
});

/**
 * IndexedDB: object stores `topics` (cursor per topic) and `documents` ([topic, docKey]).
 * commit() and replaceTopic() are ONE readwrite transaction over both stores.
 */
export class IndexedDBStore {
  constructor({ indexedDB = globalThis.indexedDB, IDBKeyRange = globalThis.IDBKeyRange, name = 'khala' } = {}) {
    if (!indexedDB || !IDBKeyRange) {
      throw new TypeError('IndexedDBStore needs indexedDB and IDBKeyRange (globals in browsers, or pass them)');
    }
    this.idb = indexedDB;
    this.KeyRange = IDBKeyRange;
    this.name = name;
    this.dbPromise = null;
  }

  db() {
    if (!this.dbPromise) {
      const req = this.idb.open(this.name, 1);
      req.onupgradeneeded = () => {
        const db = req.result;
        db.createObjectStore('topics', { keyPath: 'topic' });
        const docs = db.createObjectStore('documents', { keyPath: ['topic', 'docKey'] });
        docs.createIndex('by_topic', 'topic');
      };
      this.dbPromise = request(req);
    }
    return this.dbPromise;
  }

  async topicState(topic) {
    const db = await this.db();
    const row = await request(db.transaction('topics').objectStore('topics').get(topic));
    return row ? { watermark: row.watermark, streamEpoch: row.streamEpoch } : EMPTY;
  }

  async topics() {
    const db = await this.db();
    const rows = await request(db.transaction('topics').objectStore('topics').getAll());
    return Object.fromEntries(rows.map((r) => [r.topic, { watermark: r.watermark, streamEpoch: r.streamEpoch }]));
  }

  async get(topic, docKey) {
    const db = await this.db();
    return (await request(db.transaction('documents').objectStore('documents').get([topic, docKey]))) ?? undefined;
  }

  async documents(topic) {
    const db = await this.db();
    const rows = await request(db.transaction('documents').objectStore('documents').index('by_topic').getAll(topic));
    return new Map(rows.map((d) => [d.docKey, d]));
  }

  /** Callback style inside the transaction: awaiting anything else could let it auto-commit. */
  async commit(topic, documents, watermark, streamEpoch = null) {
    const db = await this.db();
    return new Promise((resolve, reject) => {
      const tx = db.transaction(['topics', 'documents'], 'readwrite');
      const docs = tx.objectStore('documents');
      const topics = tx.objectStore('topics');
      let result = watermark;
      for (const doc of documents) {
        const get = docs.get([topic, doc.docKey]);
        get.onsuccess = () => { if (newer(get.result ?? undefined, doc)) docs.put({ ...doc, topic }); };
      }
      const cur = topics.get(topic);
      cur.onsuccess = () => {
        const state = cur.result ?? { watermark: 0, streamEpoch: null };
        result = Math.max(state.watermark, watermark);
        topics.put({ topic, watermark: result, streamEpoch: streamEpoch || state.streamEpoch });
      };
      tx.oncomplete = () => resolve(result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
    });
  }

  async replaceTopic(topic, documents, watermark, streamEpoch) {
    const db = await this.db();
    return new Promise((resolve, reject) => {
      const tx = db.transaction(['topics', 'documents'], 'readwrite');
      const docs = tx.objectStore('documents');
      // every [topic, docKey]: any string docKey sorts between '' and an array
      docs.delete(this.KeyRange.bound([topic, ''], [topic, []]));
      for (const doc of documents) docs.put({ ...doc, topic });
      tx.objectStore('topics').put({ topic, watermark, streamEpoch: streamEpoch ?? null });
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
    });
  }

  async clearTopic(topic) { return this.replaceTopic(topic, [], 0, null); }

  async close() {
    if (this.dbPromise) (await this.dbPromise).close();
    this.dbPromise = null;
  }
}

