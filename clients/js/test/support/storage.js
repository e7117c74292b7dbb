// A Web Storage (localStorage) stand-in for Node: the same four methods, plus a switch that makes
// the next setItem throw like a full quota does in browsers.
export class MemoryStorage {
  constructor() {
    this.map = new Map();
    this.failNext = false;
  }

  getItem(key) { return this.map.has(key) ? this.map.get(key) : null; }

  setItem(key, value) {
    if (this.failNext) {
      this.failNext = false;
      const err = new Error('The quota has been exceeded.');
      err.name = 'QuotaExceededError';
      throw err;
    }
    this.map.set(key, String(value));
  }

  removeItem(key) { this.map.delete(key); }

  clear() { this.map.clear(); }
}
