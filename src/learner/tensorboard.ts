// fast.ai's TensorBoardCallback: a fit's losses, learning rates, metrics, pictures and settings as a
// TensorBoard event file. The file is TensorFlow's record format (each record: its length as a little-endian
// uint64, that length's masked CRC-32C, the bytes, their masked CRC-32C) holding `Event` protocol buffers
// (TensorBoard's event.proto and summary.proto, the fields used here declared below with their numbers).
// protobufjs encodes them and @node-rs/crc32 computes CRC-32C. Each record goes to the file in one write, so
// a run that is killed leaves every record before the last one readable.
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { isMainProcess } from '../distributed/group.js';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32c } from '@node-rs/crc32';
import protobuf from 'protobufjs';
import type { Callback, EpochInfo } from './callbacks.js';
import { confusionMatrix } from '../metrics.js';
import { confusionSpec, renderChart } from '../plot/charts.js';
import type { Learner } from './learner.js';

// TensorBoard's messages, only the fields written here (numbers as in tensorboard/compat/proto/*.proto)
const root = protobuf.Root.fromJSON({
  nested: {
    Event: { fields: { wallTime: { type: 'double', id: 1 }, step: { type: 'int64', id: 2 }, fileVersion: { type: 'string', id: 3 }, summary: { type: 'Summary', id: 5 } } },
    Summary: { fields: { value: { rule: 'repeated', type: 'Value', id: 1 } } },
    Value: {
      fields: {
        tag: { type: 'string', id: 1 },
        simpleValue: { type: 'float', id: 2 },
        image: { type: 'Image', id: 4 },
        tensor: { type: 'TensorProto', id: 8 },
        metadata: { type: 'SummaryMetadata', id: 9 },
      },
    },
    Image: { fields: { height: { type: 'int32', id: 1 }, width: { type: 'int32', id: 2 }, colorspace: { type: 'int32', id: 3 }, encodedImageString: { type: 'bytes', id: 4 } } },
    TensorProto: { fields: { dtype: { type: 'int32', id: 1 }, tensorShape: { type: 'TensorShapeProto', id: 2 }, stringVal: { rule: 'repeated', type: 'bytes', id: 8 } } },
    TensorShapeProto: { fields: { dim: { rule: 'repeated', type: 'Dim', id: 2 } } },
    Dim: { fields: { size: { type: 'int64', id: 1 } } },
    SummaryMetadata: { fields: { pluginData: { type: 'PluginData', id: 1 } } },
    PluginData: { fields: { pluginName: { type: 'string', id: 1 }, content: { type: 'bytes', id: 2 } } },
  },
});
const EventMsg = root.lookupType('Event');
const DT_STRING = 7;

function maskedCrc(data: Uint8Array): number {
  const c = crc32c(Buffer.from(data.buffer, data.byteOffset, data.byteLength)) >>> 0;
  return ((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

/** TensorFlow's record framing of one serialized message. */
export function frameRecord(data: Uint8Array): Buffer {
  const out = Buffer.alloc(8 + 4 + data.length + 4);
  out.writeBigUInt64LE(BigInt(data.length), 0);
  out.writeUInt32LE(maskedCrc(out.subarray(0, 8)), 8);
  out.set(data, 12);
  out.writeUInt32LE(maskedCrc(data), 12 + data.length);
  return out;
}

/** A TensorBoard event file being written: scalars, PNG images and text, each an `Event` at a step. */
export class EventWriter {
  readonly path: string;
  #fd: number | null;
  #unsynced = 0;

  constructor(logDir: string) {
    mkdirSync(logDir, { recursive: true });
    // TensorBoard reads every file whose name contains 'tfevents'; this is the name PyTorch's SummaryWriter uses
    this.path = join(logDir, `events.out.tfevents.${Math.floor(Date.now() / 1000)}.${hostname()}.${process.pid}.${Math.floor(Math.random() * 1e6)}`);
    this.#fd = openSync(this.path, 'a');
    this.#write({ wallTime: Date.now() / 1000, fileVersion: 'brain.Event:2' });
  }

  #write(event: Record<string, unknown>): void {
    if (this.#fd === null) throw new Error(`${this.path}: the event file is closed`);
    const err = EventMsg.verify(event);
    if (err) throw new Error(`TensorBoard event: ${err}`);
    writeSync(this.#fd, frameRecord(EventMsg.encode(EventMsg.create(event)).finish()));
    // on disk every 50 records and at close: a killed run loses at most those
    if (++this.#unsynced >= 50) this.flush();
  }

  #value(step: number, value: Record<string, unknown>): void {
    this.#write({ wallTime: Date.now() / 1000, step, summary: { value: [value] } });
  }

  /** A number at `step` (TensorBoard's scalars). */
  scalar(tag: string, value: number, step: number): void {
    this.#value(step, { tag, simpleValue: value });
  }

  /** An encoded PNG of the given size at `step` (TensorBoard's images). */
  image(tag: string, png: Uint8Array, width: number, height: number, step: number): void {
    this.#value(step, { tag, image: { height, width, colorspace: 4, encodedImageString: png } });
  }

  /** Markdown text at `step` (TensorBoard's text plugin: a string tensor with the plugin's name). */
  text(tag: string, markdown: string, step: number): void {
    this.#value(step, {
      tag,
      metadata: { pluginData: { pluginName: 'text', content: new Uint8Array(0) } },
      tensor: { dtype: DT_STRING, tensorShape: { dim: [] }, stringVal: [Buffer.from(markdown, 'utf8')] },
    });
  }

  flush(): void {
    if (this.#fd !== null) fsyncSync(this.#fd);
    this.#unsynced = 0;
  }

  close(): void {
    if (this.#fd === null) return;
    this.flush();
    closeSync(this.#fd);
    this.#fd = null;
  }
}

/**
 * fast.ai's TensorBoardCallback: writes a fit to a TensorBoard event file in `logDir` (`tensorboard --logdir
 * DIR` shows it). Per batch the training loss (raw and smoothed) and each layer group's learning rate; per
 * epoch the validation loss and the metrics; the run's settings as text; with `images` (default true) a
 * `showBatch` grid before training and, after it, the confusion matrix (one label per image) of the last
 * epoch's validation pass. Steps count training batches, continuing across the fits this callback sees; a
 * fit resumed from a checkpoint continues the steps where the interrupted one stopped.
 */
export function tensorBoard(o: { logDir: string; images?: boolean }): Callback & { readonly path: string | undefined } {
  if (typeof o?.logDir !== 'string' || o.logDir === '') throw new Error('tensorBoard: logDir must be a folder path');
  const images = o.images ?? true;
  let w: EventWriter | null = null;
  let base = 0; // steps of earlier fits
  // this fit's batches, in order, as steps: its position (epoch * batches an epoch + batch + 1) after base, so
  // that a resumed fit, which starts later in its schedule, continues the interrupted one's steps
  let steps: number[] = [];
  let lrsWritten = 0; // of this fit's recorder.lrs
  const last = () => steps[steps.length - 1] ?? base;
  let lastPreds: EpochInfo['preds']; // the last epoch's validation pass
  const png = async (draw: (path: string) => Promise<{ width: number; height: number }>) => {
    const p = join(tmpdir(), `torchlearn-tb-${process.pid}-${Math.random().toString(36).slice(2)}.png`);
    try {
      const { width, height } = await draw(p);
      return { data: readFileSync(p), width, height };
    } finally {
      rmSync(p, { force: true });
    }
  };
  return {
    get path() {
      return w?.path;
    },
    async beforeFit(learn: Learner) {
      if (!isMainProcess()) return; // (in a distributed run rank 0 alone writes)
      w ??= new EventWriter(o.logDir);
      steps = [];
      lrsWritten = 0;
      const d = learn.dls;
      const settings = { arch: learn.arch, device: learn.device, precision: learn.bf16 ? 'bf16' : 'fp32', bs: learn.bs, size: d.size, presize: d.presize, wd: learn.wd, multiLabel: learn.multiLabel, vocab: d.vocab, train: d.train.n, valid: d.valid.n };
      w.text('settings', '```\n' + JSON.stringify(settings, null, 2) + '\n```', base);
      if (images) {
        const g = await png((path) => d.showBatch({ path }));
        w.image('show_batch', g.data, g.width, g.height, base);
      }
      w.flush();
    },
    afterBatch(info) {
      if (!w) return;
      const step = base + info.epoch * info.total + info.iter + 1;
      steps.push(step);
      w.scalar('train_loss', info.loss, step);
      w.scalar('smooth_loss', info.smoothLoss, step);
    },
    afterEpoch(info, learn: Learner) {
      if (!w) return;
      // the epoch's learning rates, per batch and group (the recorder has them once the epoch is done)
      const lrs = learn.recorder.lrs;
      // (afterBatch saw each batch once, in the recorder's order)
      for (let k = lrsWritten; k < lrs.length && k < steps.length; k++) lrs[k].forEach((lr, g) => w!.scalar(`lr/group${g}`, lr, steps[k]));
      lrsWritten = Math.min(lrs.length, steps.length);
      lastPreds = info.preds;
      for (const [name, v] of Object.entries(info.values)) if (name !== 'train_loss' && Number.isFinite(v)) w.scalar(name, v, last());
      w.flush();
    },
    async afterFit(learn: Learner) {
      if (!w) return;
      if (images && !learn.multiLabel && lastPreds) {
        // from the last epoch's validation pass (the fit is still running: no new pass can start)
        const p = lastPreds;
        const g = await png((path) => renderChart(confusionSpec(learn.dls.vocab, confusionMatrix(p.probs, p.targets, p.numClasses)), path));
        w.image('confusion_matrix', g.data, g.width, g.height, last());
      }
      lastPreds = undefined;
      base = last();
      w.close();
      w = null;
    },
  };
}
