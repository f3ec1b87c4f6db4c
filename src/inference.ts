// A trained classifier as one file, and a fast predictor: export / loadLearner / predict /
// predictBatch / getPreds. The file is .safetensors: weights, plus in its metadata everything needed to
// predict; no pickles, nothing executed on load.
import { rmSync } from 'node:fs';
import { native, type NativeLearner, type NamedTensor } from './binding.js';
import type { ImageSource } from './data/images.js';
import { folderItems } from './data/loaders.js';
import { foldBatchNormDefault, resolveDevice, usesBf16 } from './info.js';
import { checkArch, NetHandle } from './model.js';
import { chromeTracePath, writeNativeTrace } from './learner/trace.js';
import { lossesFromProbs, type TtaOptions } from './tta.js';
import { DATA_DEFAULTS, type ResizeMethod } from './data/transforms.js';
import { readWeightFile } from './weights/index.js';
import { parseTorchScript } from './torchscript.js';
import { decode, EXPORTED_TORCHSCRIPT, EXPORT_FORMAT, gradcamPresized, predictFiles, predictPaths, SINGLE_LABEL, type Decoding, type ExportInfo, type Prediction } from './prediction.js';
import { decodeImage, describeSource } from './data/images.js';
import { PredictBatcher, type BatchingOptions, type PredictTiming } from './serving/batcher.js';

/** A prediction with where its time went (`InferenceLearner.predict`). */
export interface TimedPrediction extends Prediction {
  timing: PredictTiming;
}

export { EXPORT_FORMAT, type ExportInfo, type Prediction } from './prediction.js';

function parseThresh(s: string | undefined): number {
  const t = Number(s);
  if (!(t > 0 && t < 1)) throw new Error(`thresh must be a number in (0, 1), got ${JSON.stringify(s)}`);
  return t;
}

function parseExport(path: string, meta: Record<string, string>): ExportInfo {
  if (meta.format !== EXPORT_FORMAT) {
    throw new Error(
      `${path} is not a torchlearn export (format '${meta.format ?? 'none'}'). ` +
        (meta.format === 'torchlearn-checkpoint' ? 'It is a checkpoint from learn.save(): load it with learn.load(), or write an export with learn.export().' : 'Write one with learn.export(path).'),
    );
  }
  try {
    return {
      arch: meta.arch === 'torchscript' ? 'torchscript' : checkArch(meta.arch),
      groupStarts: meta.groupStarts ? JSON.parse(meta.groupStarts) : undefined,
      vocab: JSON.parse(meta.vocab),
      size: Number(meta.size),
      presize: Number(meta.presize),
      method: meta.method as ResizeMethod,
      mean: JSON.parse(meta.mean),
      std: JSON.parse(meta.std),
      head: JSON.parse(meta.head),
      augment: JSON.parse(meta.augment),
      // (exports before multi-label existed have no task: one label per image)
      multiLabel: meta.task === 'multi-label' ? { thresh: parseThresh(meta.thresh) } : undefined,
    };
  } catch (e) {
    throw new Error(`${path}: damaged export metadata (${(e as Error).message})`);
  }
}

/** A loaded export: predicts, nothing else (fast.ai's load_learner). */
export class InferenceLearner {
  readonly info: ExportInfo;
  readonly device: string;
  #h: NetHandle;
  #nat: NativeLearner | null;
  /** how concurrent predict() calls are batched */
  readonly batcher: PredictBatcher;

  constructor(info: ExportInfo, tensors: NamedTensor[], device: string, source: string, o: Omit<LoadLearnerOptions, 'device'> = {}) {
    this.info = info;
    this.device = device;
    // a TorchScript body: its file, carried by the export, checked as when it was first read
    const scriptTensor = tensors.find((t) => t.name === EXPORTED_TORCHSCRIPT);
    if (info.arch === 'torchscript' && !scriptTensor) throw new Error(`${source}: damaged export (a TorchScript learner's export without its body's file)`);
    const script = info.arch === 'torchscript' ? parseTorchScript(Buffer.from(scriptTensor!.data), source) : null;
    const net = new native.Net({
      arch: info.arch, kind: 'fastai', numClasses: info.vocab.length, head: info.head,
      ...(script ? { torchscript: script.bytes, source, groupStarts: info.groupStarts ?? [] } : {}),
    });
    this.#h = new NetHandle(net, 'this learner');
    const weights = tensors.filter((t) => t.name !== EXPORTED_TORCHSCRIPT);
    net.loadStateDict(weights.map((t) => ({ ...t, name: t.name.replace(/^model\./, '') })), { strict: true, source });
    this.#nat = new native.Learner(net, { device });
    this.#nat.setOptions({ multiLabel: Boolean(info.multiLabel), size: info.size, bs: o.bs ?? DATA_DEFAULTS.bs, mean: info.mean, std: info.std, aug: info.augment, bf16: device.startsWith('cuda') && usesBf16(device, o.precision), foldBatchNorm: o.foldBatchNorm ?? foldBatchNormDefault(device) });
    this.batcher = new PredictBatcher((images, n) => this.nat.predict(images, n, info.presize), {
      presize: info.presize,
      method: info.method,
      defaultBatch: o.bs ?? DATA_DEFAULTS.bs,
      defaultOverlap: device.startsWith('cuda'),
      ...o.batching,
    });
  }

  /** The class names, in the order of the probabilities. */
  get vocab(): string[] {
    return this.info.vocab;
  }

  /** How predictions become labels: the most probable class, or (a multi-label export) every label above its threshold. */
  get decoding(): Decoding {
    return this.info.multiLabel ? { multiLabel: true, thresh: this.info.multiLabel.thresh } : SINGLE_LABEL;
  }

  private get nat(): NativeLearner {
    if (!this.#nat) throw new Error('this learner was disposed: load it again');
    return this.#nat;
  }

  /**
   * fast.ai's predict: (decoded label, index, probabilities) for one image file, or an encoded image's bytes.
   * Calls made at once are batched (`batcher`, the `batching` option of loadLearner): each decodes its image in
   * parallel, then they share forward passes; an unreadable image fails its own call only.
   */
  async predict(image: ImageSource): Promise<TimedPrediction> {
    void this.nat; // (disposed: fail now, not in the batch)
    const { probs, timing } = await this.batcher.predict(image);
    return { ...decode(probs, probs.length, this.vocab, this.decoding)[0], timing };
  }

  /** Grad-CAM (fast.ai v1) for one image: the map of the body's last stage for `classIdx` (default: the
   * predicted class), its size, the probabilities, and the image as the network saw it (presize RGB). */
  async gradcam(image: ImageSource, o: { classIdx?: number } = {}): Promise<{ map: Float32Array; h: number; w: number; probs: Float32Array; classIdx: number; rgb: Uint8Array; size: number }> {
    const c = o.classIdx;
    const n = this.vocab.length;
    if (c !== undefined && !(Number.isInteger(c) && c >= 0 && c < n)) throw new Error(`gradcam: classIdx must be a class index in [0, ${n}), got ${c}`);
    const p = this.info.presize;
    const d = await decodeImage(image, p, this.info.method);
    if (!d.ok) throw new Error(`cannot read image ${describeSource(image)}: ${d.reason}`);
    return { ...(await gradcamPresized(this.nat, d.data, p, this.vocab, c)), rgb: d.data, size: p };
  }

  /** Decodes in parallel and predicts in batches; an unreadable file is an error naming it. */
  async predictBatch(paths: ImageSource[]): Promise<Prediction[]> {
    return predictPaths(this.nat, paths, { presize: this.info.presize, method: this.info.method }, this.vocab, this.decoding);
  }

  /** Like predictBatch, but an unreadable file does not fail the call: each entry is that file's
   * prediction or the reason it could not be read (the command line's folder predictions). */
  async predictEach(paths: ImageSource[]): Promise<(Prediction | { error: string })[]> {
    const r = await predictFiles(this.nat, paths, { presize: this.info.presize, method: this.info.method });
    const preds = decode(r.probs, r.numClasses, this.vocab, this.decoding);
    const out: (Prediction | { error: string })[] = [];
    let f = 0;
    let k = 0;
    for (let i = 0; i < paths.length; i++) {
      if (r.ok[k] === i) out.push(preds[k++]);
      else out.push({ error: r.failed[f++].reason });
    }
    return out;
  }

  /** Predictions for images already decoded and presized: uint8 [n, presize, presize, 3] (video frames, buffers).
   * The native side reads `images` off the main thread: do not change it until the Promise settles.
   * `trace`: write this call's operator table there (and the Chrome trace beside it where LibTorch has
   * Kineto), as `fit(..., { trace })` does for training; the bench compares it with PyTorch's. */
  async predictImages(images: Uint8Array, n: number, o: { trace?: string } = {}): Promise<Prediction[]> {
    if (o.trace) rmSync(chromeTracePath(o.trace), { force: true }); // not an old one mistaken for this call's
    const r = await this.nat.predict(images, n, this.info.presize, o.trace ? { trace: chromeTracePath(o.trace) } : undefined);
    if (o.trace && r.ops) writeNativeTrace(o.trace, this.device, 1, r.ops);
    return decode(r.probs, r.numClasses, this.vocab, this.decoding);
  }

  /** Probabilities for a list of files or a folder, and, when every item is labelled, targets and per-item
   * losses. A folder: its class sub-folders are labelled by their names (as `fromFolder` reads them), the
   * images lying in it are unlabelled (see `folderItems`). `tta`: fast.ai's test-time augmentation with the
   * training transforms recorded in the export (`true` for its defaults, n 4 and beta 0.25). */
  async getPreds(
    itemsOrFolder: { path: string; label?: string; labels?: string[] }[] | string,
    o: { tta?: TtaOptions | boolean } = {},
  ): Promise<{ probs: Float32Array; numClasses: number; targets?: Int32Array; losses?: Float32Array; skipped: { path: string; reason: string }[] }> {
    const items: { path: string; label?: string; labels?: string[] }[] = typeof itemsOrFolder === 'string' ? folderItems(itemsOrFolder).items : itemsOrFolder;
    if (items.length === 0) throw new Error(`getPreds: no images${typeof itemsOrFolder === 'string' ? ` in ${itemsOrFolder}` : ' (the item list is empty)'}`);
    const tta = o.tta === true ? {} : o.tta || undefined;
    const r = await predictFiles(this.nat, items.map((i) => i.path), { presize: this.info.presize, method: this.info.method, tta });
    const multi = Boolean(this.info.multiLabel);
    const labelled = items.every((i) => (multi ? i.labels !== undefined : i.label !== undefined));
    if (!labelled) return { probs: r.probs, numClasses: r.numClasses, skipped: r.failed };
    if (multi) {
      // targets: n * c values of 0/1 (the metrics of src/multilabel.ts take them so)
      const targets = Int32Array.from(
        r.ok.flatMap((i) => {
          const ls = items[i].labels!;
          for (const l of ls) if (!this.vocab.includes(l)) throw new Error(`label '${l}' of ${items[i].path} is not in the vocab [${this.vocab.join(', ')}]`);
          return this.vocab.map((v) => +ls.includes(v));
        }),
      );
      return { probs: r.probs, numClasses: r.numClasses, targets, losses: lossesFromProbs(r.probs, targets, r.numClasses, true), skipped: r.failed };
    }
    const targets = Int32Array.from(r.ok, (i) => {
      const t = this.vocab.indexOf(items[i].label!);
      if (t < 0) throw new Error(`label '${items[i].label}' of ${items[i].path} is not in the vocab [${this.vocab.join(', ')}]`);
      return t;
    });
    return { probs: r.probs, numClasses: r.numClasses, targets, losses: lossesFromProbs(r.probs, targets, r.numClasses), skipped: r.failed };
  }

  /** Frees the network's native memory now; later calls throw. */
  dispose(): void {
    this.#nat?.dispose();
    this.#nat = null;
    this.#h.dispose();
  }

  /** `dispose()`, for `using inf = loadLearner(...)`. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** fast.ai's load_learner: an export written by learn.export(), on `device` ('auto' = CUDA when present). */
export interface LoadLearnerOptions {
  /** 'cpu', 'cuda', 'cuda:N' (default: CUDA when LibTorch has it) */
  device?: string;
  /** images per forward pass in predictBatch/predictImages/getPreds (default 64; fast.ai's test_dl bs) */
  bs?: number;
  /** default: 'bf16' (autocast) on CUDA, as the training learner; 'fp32' always on the CPU */
  precision?: 'bf16' | 'fp32';
  /** each BatchNorm of the body folded into its convolution (default: on the CPU, off on CUDA; see visionLearner) */
  foldBatchNorm?: boolean;
  /** how concurrent predict() calls are batched (default: batches of up to `bs`, a 2 ms window) */
  batching?: BatchingOptions;
}

/**
 * Loads a learner exported with `learn.export()` for prediction: the network, its classes and preprocessing.
 *
 * @example
 * ```ts
 * const inf = loadLearner('export.safetensors');
 * const { label, probs } = await inf.predict('xray.jpg');
 * ```
 */
export function loadLearner(path: string, o: LoadLearnerOptions = {}): InferenceLearner {
  if (o.bs !== undefined && !(Number.isInteger(o.bs) && o.bs > 0)) throw new Error(`loadLearner: bs must be a positive integer, got ${o.bs}`);
  if (o.precision !== undefined && !['bf16', 'fp32'].includes(o.precision)) throw new Error(`loadLearner: precision must be 'bf16' or 'fp32', got '${o.precision}'`);
  const f = readWeightFile(path);
  if (f.format !== 'safetensors') throw new Error(`${path}: an export is a .safetensors file written by learn.export()`);
  return new InferenceLearner(parseExport(path, f.metadata), f.tensors, resolveDevice(o.device), path, o);
}
