// The TensorBoard callback's event file, read back by an independent reader: Debian's python3-protobuf with
// TensorBoard's message definitions (event.proto, summary.proto, tensor.proto: the fields read here, with
// TensorBoard's numbers) and a CRC-32C of its own, checking every record's framing.
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { accuracy, ImageDataLoaders, tensorBoard, visionLearner } from '../src/index.js';
import { makeStripes } from './helpers/fixtures.js';
import { runPython, tempDir } from './helpers/python.js';

const READER = String.raw`
import json, struct, sys
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

def crc32c(data):
    crc = 0xffffffff
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82f63b78 if crc & 1 else 0)
    return crc ^ 0xffffffff

def masked(crc):
    return ((((crc >> 15) | (crc << 17)) & 0xffffffff) + 0xa282ead8) & 0xffffffff

F = descriptor_pb2.FieldDescriptorProto
fdp = descriptor_pb2.FileDescriptorProto(name='tb.proto', package='tb', syntax='proto3')
def message(name, fields):
    m = fdp.message_type.add(name=name)
    for fname, number, ftype, label, type_name in fields:
        f = m.field.add(name=fname, number=number, type=ftype, label=label)
        if type_name: f.type_name = '.tb.' + type_name
O, R = F.LABEL_OPTIONAL, F.LABEL_REPEATED
message('Event', [('wall_time', 1, F.TYPE_DOUBLE, O, None), ('step', 2, F.TYPE_INT64, O, None), ('file_version', 3, F.TYPE_STRING, O, None),
                  ('graph_def', 4, F.TYPE_BYTES, O, None), ('summary', 5, F.TYPE_MESSAGE, O, 'Summary')])
message('Summary', [('value', 1, F.TYPE_MESSAGE, R, 'Value')])
message('Value', [('tag', 1, F.TYPE_STRING, O, None), ('simple_value', 2, F.TYPE_FLOAT, O, None), ('image', 4, F.TYPE_MESSAGE, O, 'Image'),
                  ('node_name', 7, F.TYPE_STRING, O, None), ('tensor', 8, F.TYPE_MESSAGE, O, 'TensorProto'), ('metadata', 9, F.TYPE_MESSAGE, O, 'SummaryMetadata')])
message('Image', [('height', 1, F.TYPE_INT32, O, None), ('width', 2, F.TYPE_INT32, O, None), ('colorspace', 3, F.TYPE_INT32, O, None),
                  ('encoded_image_string', 4, F.TYPE_BYTES, O, None)])
message('TensorProto', [('dtype', 1, F.TYPE_INT32, O, None), ('tensor_shape', 2, F.TYPE_MESSAGE, O, 'TensorShapeProto'), ('string_val', 8, F.TYPE_BYTES, R, None)])
message('TensorShapeProto', [('dim', 2, F.TYPE_MESSAGE, R, 'Dim')])
message('Dim', [('size', 1, F.TYPE_INT64, O, None)])
message('SummaryMetadata', [('plugin_data', 1, F.TYPE_MESSAGE, O, 'PluginData')])
message('PluginData', [('plugin_name', 1, F.TYPE_STRING, O, None), ('content', 2, F.TYPE_BYTES, O, None)])
pool = descriptor_pool.DescriptorPool()
pool.Add(fdp)
desc = pool.FindMessageTypeByName('tb.Event')
Event = message_factory.GetMessageClass(desc) if hasattr(message_factory, 'GetMessageClass') else message_factory.MessageFactory(pool).GetPrototype(desc)

data = open(sys.argv[1], 'rb').read()
pos, events, tail = 0, [], None
while pos < len(data):
    if len(data) - pos < 12:
        tail = 'truncated header'; break
    header = data[pos:pos + 8]
    (n,) = struct.unpack('<Q', header)
    (hcrc,) = struct.unpack('<I', data[pos + 8:pos + 12])
    assert hcrc == masked(crc32c(header)), 'length CRC at %d' % pos
    if len(data) - pos < 12 + n + 4:
        tail = 'truncated record'; break
    body = data[pos + 12:pos + 12 + n]
    (dcrc,) = struct.unpack('<I', data[pos + 12 + n:pos + 16 + n])
    assert dcrc == masked(crc32c(body)), 'data CRC at %d' % pos
    e = Event()
    e.ParseFromString(body)
    out = {'step': e.step, 'wall_time': e.wall_time}
    if e.file_version: out['file_version'] = e.file_version
    vals = []
    for v in e.summary.value:
        x = {'tag': v.tag}
        if v.HasField('image'):
            x['image'] = {'w': v.image.width, 'h': v.image.height, 'png': v.image.encoded_image_string[:8] == b'\x89PNG\r\n\x1a\n', 'bytes': len(v.image.encoded_image_string)}
        elif v.HasField('tensor'):
            x['text'] = [s.decode('utf8') for s in v.tensor.string_val]
            x['dtype'] = v.tensor.dtype
            x['plugin'] = v.metadata.plugin_data.plugin_name
        else:
            x['value'] = v.simple_value
        vals.append(x)
    out['values'] = vals
    events.append(out)
    pos += 16 + n
print(json.dumps({'events': events, 'tail': tail}))
`;

interface Read {
  events: { step: number; wall_time: number; file_version?: string; values: { tag: string; value?: number; image?: { w: number; h: number; png: boolean; bytes: number }; text?: string[]; dtype?: number; plugin?: string }[] }[];
  tail: string | null;
}

describe('tensorBoard', () => {
  it("writes a fit as TensorBoard's event file: framed records with valid CRCs, per-batch losses and learning rates, per-epoch metrics, images and the settings; a cut file reads up to its last whole record", async () => {
    const dir = tempDir();
    await makeStripes(join(dir, 's'), 16, 40, 9);
    const dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 32, bs: 8, seed: 2 });
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, metrics: [accuracy()] });
    const tb = tensorBoard({ logDir: join(dir, 'runs') });
    await learn.fitOneCycle(2, { cbs: [tb] });
    const nb = dls.train.length;
    expect(tb.path).toBeUndefined(); // closed after the fit
    const files = (await import('node:fs')).readdirSync(join(dir, 'runs'));
    expect(files).toHaveLength(1);
    expect(files[0]).toMatch(/^events\.out\.tfevents\.\d+\./);
    const file = join(dir, 'runs', files[0]);
    const r = JSON.parse(runPython(READER, [file])) as Read;
    expect(r.tail).toBeNull();
    expect(r.events[0].file_version).toBe('brain.Event:2');
    const byTag = (tag: string) => r.events.flatMap((e) => e.values.filter((v) => v.tag === tag).map((v) => ({ step: e.step, ...v })));
    // per batch: the recorder's raw losses and learning rates (float32 in the file), at steps 1..2 * nb
    const losses = byTag('train_loss');
    expect(losses.map((x) => x.step)).toEqual(Array.from({ length: 2 * nb }, (_v, i) => i + 1));
    expect(losses.map((x) => x.value)).toEqual(learn.recorder.rawLosses.map((l) => Math.fround(l)));
    expect(byTag('smooth_loss')).toHaveLength(2 * nb);
    for (let g = 0; g < learn.numGroups; g++) expect(byTag(`lr/group${g}`).map((x) => x.value)).toEqual(learn.recorder.lrs.map((l) => Math.fround(l[g])));
    // per epoch, at the epoch's last batch: the validation loss and the metric, as in the table
    expect(byTag('valid_loss').map((x) => [x.step, x.value])).toEqual(learn.recorder.values.map((v, e) => [(e + 1) * nb, Math.fround(v[1])]));
    expect(byTag('accuracy').map((x) => x.value)).toEqual(learn.recorder.values.map((v) => Math.fround(v[2])));
    // pictures and settings
    const [batch] = byTag('show_batch');
    expect(batch.step).toBe(0);
    expect(batch.image).toMatchObject({ png: true });
    expect(batch.image!.w * batch.image!.h).toBeGreaterThan(0);
    const [cm] = byTag('confusion_matrix');
    expect(cm.step).toBe(2 * nb);
    expect(cm.image!.png).toBe(true);
    const [settings] = byTag('settings');
    expect(settings.plugin).toBe('text');
    expect(settings.dtype).toBe(7); // DT_STRING
    expect(JSON.parse(settings.text![0].replace(/```/g, ''))).toMatchObject({ arch: 'resnet18', bs: 8, size: 32, vocab: ['horizontal', 'vertical'] });
    // a run killed while writing leaves the records before the last one readable
    const cut = join(dir, 'cut.tfevents');
    copyFileSync(file, cut);
    const bytes = readFileSync(cut);
    writeFileSync(cut, bytes.subarray(0, bytes.length - 7));
    const c = JSON.parse(runPython(READER, [cut])) as Read;
    expect(c.tail).toBe('truncated record');
    expect(c.events).toHaveLength(r.events.length - 1);
    learn.dispose();
    expect(() => tensorBoard({ logDir: '' })).toThrow(/logDir must be a folder path/);
  });

  it('a fit resumed from a checkpoint continues the steps of the one that was interrupted', async () => {
    const dir = tempDir();
    await makeStripes(join(dir, 's'), 16, 40, 9);
    const dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 32, bs: 8, seed: 2 });
    const nb = dls.train.length;
    const first = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, modelDir: join(dir, 'models') });
    const tb1 = tensorBoard({ logDir: join(dir, 'runs'), images: false });
    // stopped after its first epoch, as a killed run would have left it
    await first.fitOneCycle(3, { checkpoint: 'run', cbs: [tb1, { afterEpoch: () => true }] });
    first.dispose();
    const resumed = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 1, modelDir: join(dir, 'models') });
    const tb2 = tensorBoard({ logDir: join(dir, 'runs'), images: false });
    const seenPath: string[] = [];
    await resumed.fitOneCycle(3, { resume: 'run', cbs: [tb2, { afterEpoch: () => void seenPath.push(tb2.path!) }] });
    const r = JSON.parse(runPython(READER, [seenPath[0]])) as Read;
    const byTag = (tag: string) => r.events.flatMap((e) => e.values.filter((v) => v.tag === tag).map((v) => ({ step: e.step, ...v })));
    const after = Array.from({ length: 2 * nb }, (_v, i) => nb + i + 1); // epochs 2 and 3
    expect(byTag('train_loss').map((x) => x.step)).toEqual(after);
    expect(byTag('lr/group0').map((x) => x.step)).toEqual(after);
    expect(byTag('lr/group0').map((x) => x.value)).toEqual(resumed.recorder.lrs.map((l) => Math.fround(l[0])));
    expect(byTag('valid_loss').map((x) => x.step)).toEqual([2 * nb, 3 * nb]);
    resumed.dispose();
  });
});
