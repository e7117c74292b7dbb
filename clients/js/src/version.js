// The package version and the wire protocol it speaks. VERSION equals package.json's "version" and
// the Python client's khala_client/version.py; PROTOCOL_VERSION equals the server's
// sync.protocol.PROTOCOL_VERSION (all checked by tests/test_client_versions.py).
export const VERSION = '0.1.0';
export const PROTOCOL_VERSION = 'khala.ws.v1';
