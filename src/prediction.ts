// What training and inference share about predictions and exports: the export's metadata, decoding
// probabilities into labels, and predicting files through a native learner. The Learner (training) and
// InferenceLearner (a loaded export) both import from here, not from each other.
import { readFileSync } from 'node:fs';
import type { NativeLearner } from './binding.js';
import { decodeAll, describeSource, type ImageSource } from './data/images.js';
import type { AugOptions, ResizeMethod } from './data/transforms.js';
import { torchInfo } from './info.js';
import type { Arch } from './model.js';
import { ttaProbs, type TtaOptions } from './tta.js';

/** The format string `learn.export()` writes into the file's metadata. */
export const EXPORT_FORMAT = 'torchlearn-export-v1';

/** The name of the tensor in which an export carries its TorchScript body's file (its bytes). */
export const EXPORTED_TORCHSCRIPT = 'torchscript';

/** What an export records besides the weights. */
export interface ExportInfo {
  /** the architecture, or 'torchscript' (the body's file is the export's `torchscript` tensor) */
  arch: Arch | 'torchscript';
  /** a TorchScript body's layer groups (where they start) */
  groupStarts?: string[];
  vocab: string[];
  size: number;
  presize: number;
  method: ResizeMethod;
  mean: number[];
  std: number[];
  head: { hidden?: number; ps?: number; concatPool?: boolean; linearBias?: boolean };
  augment: AugOptions | null;
  /** multi-label classification, and the probability above which a label is predicted */
  multiLabel?: { thresh: number };
}

/** How probabilities become labels: the most probable class, or (multi-label) every label above `thresh`. */
export type Decoding = { multiLabel: false } | { multiLabel: true; thresh: number };
/** One label per image. */
export const SINGLE_LABEL: Decoding = { multiLabel: false };

/** One image's prediction: the label, its index and every class's probability (multi-label: each label's). */
export interface Prediction {
  /** the predicted class; multi-label: the predicted labels joined by ';' ('' when none is above the threshold) */
  label: string;
  /** the most probable class's index */
  index: number;
  probs: Float32Array;
  /** multi-label: every label whose probability is above the threshold, in vocab order */
  labels?: string[];
}

function packageVersion(): string {
  try {
    return JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version;
  } catch {
    return 'unknown';
  }
}

export function exportMetadata(info: ExportInfo): Record<string, string> {
  return {
    format: EXPORT_FORMAT,
    arch: info.arch,
    vocab: JSON.stringify(info.vocab),
    size: String(info.size),
    presize: String(info.presize),
    method: info.method,
    mean: JSON.stringify(info.mean),
    std: JSON.stringify(info.std),
    head: JSON.stringify(info.head),
    augment: JSON.stringify(info.augment),
    task: info.multiLabel ? 'multi-label' : 'single-label',
    ...(info.multiLabel ? { thresh: String(info.multiLabel.thresh) } : {}),
    ...(info.groupStarts ? { groupStarts: JSON.stringify(info.groupStarts) } : {}),
    torchlearnVersion: packageVersion(),
    torchVersion: torchInfo().torchVersion,
  };
}

/** Decodes image files (or encoded images' bytes) at the presize and runs the native validation transform + model. */
export async function predictFiles(
  nat: NativeLearner,
  files: ImageSource[],
  o: { presize: number; method: ResizeMethod; tta?: TtaOptions },
): Promise<{ probs: Float32Array; numClasses: number; failed: { path: string; reason: string }[]; ok: number[] }> {
  const decoded = await decodeAll(files, o.presize, o.method);
  const failed: { path: string; reason: string }[] = [];
  const ok: number[] = [];
  decoded.forEach((d, i) => (d.ok ? ok.push(i) : failed.push({ path: describeSource(files[i], i), reason: d.reason })));
  const p = o.presize;
  const images = new Uint8Array(ok.length * p * p * 3);
  ok.forEach((i, k) => images.set((decoded[i] as { data: Buffer }).data, k * p * p * 3));
  if (ok.length === 0) return { probs: new Float32Array(0), numClasses: 0, failed, ok };
  const r = await nat.predict(images, ok.length, p);
  // test-time augmentation: the images are decoded once, augmented on the native side for every pass
  const probs = o.tta ? await ttaProbs(r.probs, async () => (await nat.predict(images, ok.length, p, { augment: true })).probs, o.tta) : r.probs;
  return { probs, numClasses: r.numClasses, failed, ok };
}

/** Files to decoded predictions; an unreadable file is an error naming it. */
export async function predictPaths(
  nat: NativeLearner,
  paths: ImageSource[],
  o: { presize: number; method: ResizeMethod },
  vocab: string[],
  how: Decoding = SINGLE_LABEL,
): Promise<Prediction[]> {
  const r = await predictFiles(nat, paths, o);
  if (r.failed.length) throw new Error(`cannot read image ${r.failed[0].path}: ${r.failed[0].reason}`);
  return decode(r.probs, r.numClasses, vocab, how);
}

/** Grad-CAM on one presized uint8 image through a native learner: the map for `classIdx`, or for the predicted
 * class when none is given (the training learner and a loaded export share it). */
export async function gradcamPresized(nat: NativeLearner, image: Uint8Array, presize: number, vocab: string[], classIdx?: number) {
  let cls = classIdx;
  if (cls === undefined) {
    const p = await nat.predict(image, 1, presize);
    cls = decode(p.probs, p.numClasses, vocab)[0].index;
  }
  return { ...(await nat.gradCam(image, presize, cls)), classIdx: cls };
}

export function decode(probs: Float32Array, c: number, vocab: string[], how: Decoding = SINGLE_LABEL): Prediction[] {
  const out: Prediction[] = [];
  for (let i = 0; i < probs.length / c; i++) {
    const row = probs.slice(i * c, (i + 1) * c);
    let k = 0;
    row.forEach((v, j) => (v > row[k] ? (k = j) : 0));
    if (how.multiLabel) {
      const labels = vocab.filter((_v, j) => row[j] > how.thresh);
      out.push({ label: labels.join(';'), index: k, probs: row, labels });
    } else {
      out.push({ label: vocab[k], index: k, probs: row });
    }
  }
  return out;
}
