import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ProtocolError, decodeFrame, encodeFrame, parseUpdate, parseUpdateBatch, parseWatermarks, socketUrl, subscribePayload } from '../src/protocol.js';
import { rng } from './support/random.js';

test('frames round-trip', () => {
  const random = rng(7);
  for (let i = 0; i < 500; i += 1) {
    const payload = { n: Math.floor(random() * 1e6), s: String.fromCharCode(...Array.from({ length: 5 }, () => 32 + Math.floor(random() * 5000))), a: [null, true] };
    const ref = random() < 0.3 ? null : String(i);
    const frame = decodeFrame(encodeFrame(ref, String(i + 1), 'sync:v1', 'sync:subscribe', payload));
    assert.deepEqual(frame, { joinRef: ref, ref: String(i + 1), topic: 'sync:v1', event: 'sync:subscribe', payload });
  }
});

test('non-frames are refused with bad_frame', () => {
  for (const text of ['not json', '{}', '[1,2,3]', '[null,null,"t","e"]', '[1,null,"t","e",{}]', '[null,null,1,"e",{}]', '']) {
    assert.throws(() => decodeFrame(text), (err) => err instanceof ProtocolError && err.code === 'bad_frame', text);
  }
});

test('socket URL carries token and vsn', () => {
  assert.equal(socketUrl('http://127.0.0.1:8000/x', 'a.b.c', { params: { client: 'js', skip: undefined } }),
    'ws://127.0.0.1:8000/sync/socket/websocket?token=a.b.c&vsn=2.0.0&client=js');
  assert.match(socketUrl('https://h', 't'), /^wss:\/\/h\/sync\/socket\/websocket\?/);
  assert.throws(() => socketUrl('ftp://h', 't'), TypeError);
});

const wire = (over = {}) => ({ topic: 't', doc_key: 'k', doc_version: 1, payload: { a: 1 }, payload_hash: 'x', watermark: 3, hydration_required: false, ...over });

test('updates are validated and pointer mode recognised', () => {
  assert.deepEqual(parseUpdate(wire()), { topic: 't', docKey: 'k', docVersion: 1, payload: { a: 1 }, payloadHash: 'x', watermark: 3, hydrationRequired: false });
  assert.equal(parseUpdate(wire({ payload: null, hydration_required: true })).hydrationRequired, true);
  assert.equal(parseUpdate(wire({ payload: null })).hydrationRequired, true);
  for (const over of [{ topic: '' }, { doc_key: 3 }, { doc_version: '1' }, { doc_version: -1 }, { watermark: 0 }, { watermark: 1.5 }, { payload_hash: 5 }]) {
    assert.throws(() => parseUpdate(wire(over)), (err) => err.code === 'bad_update', JSON.stringify(over));
  }
});

test('batches carry the complete-through watermark and epoch', () => {
  const batch = parseUpdateBatch({ updates: [wire()], replay_complete: false, head_watermarks: [{ topic: 't', watermark: 9, stream_epoch: 'e' }] });
  assert.deepEqual(batch.headWatermarks, { t: 9 });
  assert.deepEqual(batch.epochs, { t: 'e' });
  assert.throws(() => parseUpdateBatch({}), (err) => err.code === 'bad_update_batch');
  assert.deepEqual(parseWatermarks({ a: 1 }), { a: 1 });
  assert.throws(() => parseWatermarks([{ topic: 'a', watermark: '1' }]), (err) => err.code === 'bad_watermarks');
});

test('subscribe sends a cursor for every topic', () => {
  assert.deepEqual(subscribePayload(['a', 'b'], { a: { watermark: 5, streamEpoch: 'e1' } }, { replayBatchSize: 50 }), {
    topics: ['a', 'b'],
    resume_after: [{ topic: 'a', watermark: 5, stream_epoch: 'e1' }, { topic: 'b', watermark: 0 }],
    replay_batch_size: 50,
  });
});
