// RFC 8785 JSON canonicalization as a browser ES module, for the import map of the /live/ page:
// the JavaScript client (clients/js/src/hashing.js) imports the `canonicalize` npm package by its
// bare name, and the page serves the client's sources without a bundler. Same algorithm as that
// package (ES2015 JSON.stringify for strings and numbers, keys sorted by UTF-16 code units);
// tests/browser/canonicalize.test.mjs checks it against every vector of
// docs/protocol/fixtures/payload_hash_vectors.v1.json. The client validates values (NaN, unsafe integers, lone
// surrogates) before calling this.
export default function canonicalize(value) {
  if (typeof value === "number" && !Number.isFinite(value)) {
    throw new Error(`${value} is not allowed in canonical JSON`);
  }
  if (value === null || typeof value !== "object") {
    return JSON.stringify(value);
  }
  if (typeof value.toJSON === "function") {
    return canonicalize(value.toJSON());
  }
  if (Array.isArray(value)) {
    const items = value.map((item) => (item === undefined || typeof item === "symbol" ? "null" : canonicalize(item)));
    return `[${items.join(",")}]`;
  }
  const members = [];
  for (const key of Object.keys(value).sort()) {
    const item = value[key];
    if (item === undefined || typeof item === "symbol") continue;
    members.push(`${JSON.stringify(key)}:${canonicalize(item)}`);
  }
  return `{${members.join(",")}}`;
}
