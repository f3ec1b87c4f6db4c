// Callbacks around the epoch loop: user hooks, saveModel (best by a monitored value, loaded at the
// end) and earlyStopping, with fast.ai's monitor/comparison rules, and csvLogger.
import { appendFileSync, existsSync, rmSync, statSync } from 'node:fs';
import { isMainProcess } from '../distributed/group.js';
import type { Learner } from './learner.js';
import { formatTime } from './progress.js';

/** What `afterEpoch` receives: the epoch's losses and metrics. */
export interface EpochInfo {
  epoch: number;
  /** name -> value for every column of the results table (train_loss, valid_loss, metrics) */
  values: Record<string, number>;
  /** the epoch's wall time, as the table's time column */
  seconds: number;
  /** the validation pass the metrics were computed from (absent without validation data): probabilities
   * [n * numClasses] and targets (class indices; multi-label, n * numClasses values of 0/1) */
  preds?: { probs: Float32Array; targets: Int32Array; numClasses: number };
}

/** What `afterBatch` receives: the batch's position and loss. */
export interface BatchInfo {
  epoch: number;
  /** the batch's index in the epoch, from 0 (fast.ai's `iter`) */
  iter: number;
  /** batches in the epoch (fast.ai's `n_iter`) */
  total: number;
  /** this batch's loss */
  loss: number;
  /** fast.ai's smoothed training loss after this batch */
  smoothLoss: number;
}

/**
 * fast.ai's callback events. Every event runs on the JavaScript thread, in order; `afterBatch` runs once
 * for every training batch, on the CPU and on CUDA alike (on CUDA in groups, a little after the batches
 * ran, since reading a loss waits for the device). A callback that throws (or rejects) stops the fit after
 * the batch in flight, and the fit rejects with that error. An async `afterBatch` does not hold training
 * up: the fit waits for it at the end of the epoch.
 */
export interface Callback {
  /** Once before the first epoch. */
  beforeFit?(learn: Learner): void | Promise<void>;
  /** Before each epoch. */
  beforeEpoch?(info: { epoch: number; nEpochs: number }, learn: Learner): void | Promise<void>;
  /** After every training batch, in order, with its loss (on CUDA a little later, in groups). */
  afterBatch?(info: BatchInfo, learn: Learner): void | Promise<void>;
  /** return true to stop training after this epoch */
  afterEpoch?(info: EpochInfo, learn: Learner): boolean | void | Promise<boolean | void>;
  /** Once after the last epoch, also when the fit stopped early. */
  afterFit?(learn: Learner): void | Promise<void>;
}

/** Whether smaller values of a results-table column are better: `comp` when given, else the metric's own
 * `better`, else the losses are lower-is-better and any other column higher-is-better. */
function lowerIsBetter(monitor: string, learn: Learner, comp?: 'lower' | 'higher'): boolean {
  if (comp) return comp === 'lower';
  const m = learn.metrics.find((x) => x.name === monitor);
  if (m?.better) return m.better === 'lower';
  return monitor === 'train_loss' || monitor === 'valid_loss';
}

/** Saves the model whenever `monitor` improves, and loads the best one when the fit ends. Which way is
 * better: `comp`, else the metric's `better` (losses: lower). */
export function saveModel(o: { monitor?: string; comp?: 'lower' | 'higher'; minDelta?: number; fname?: string } = {}): Callback {
  const monitor = o.monitor ?? 'valid_loss';
  const fname = o.fname ?? 'model';
  let lower = true;
  let best = Infinity;
  let saved = false;
  return {
    beforeFit(learn) {
      lower = lowerIsBetter(monitor, learn, o.comp);
      best = lower ? Infinity : -Infinity;
      saved = false;
    },
    async afterEpoch(info, learn) {
      const v = info.values[monitor];
      if (v === undefined) throw new Error(`saveModel: '${monitor}' is not a column of the results table (${Object.keys(info.values).join(', ')})`);
      const d = o.minDelta ?? 0;
      if (lower ? v < best - d : v > best + d) {
        best = v;
        await learn.save(fname);
        saved = true;
        learn.log(`Better model found at epoch ${info.epoch} with ${monitor} value: ${v}.`);
      }
    },
    async afterFit(learn) {
      if (saved) await learn.load(fname);
    },
  };
}

/** Stops when `monitor` has not improved for `patience` epochs (fast.ai v2: wait >= patience). */
export function earlyStopping(o: { monitor?: string; comp?: 'lower' | 'higher'; minDelta?: number; patience?: number } = {}): Callback {
  const monitor = o.monitor ?? 'valid_loss';
  const patience = o.patience ?? 1;
  let lower = true;
  let best = Infinity;
  let wait = 0;
  return {
    beforeFit(learn) {
      lower = lowerIsBetter(monitor, learn, o.comp);
      best = lower ? Infinity : -Infinity;
      wait = 0;
    },
    afterEpoch(info, learn) {
      const v = info.values[monitor];
      if (v === undefined) throw new Error(`earlyStopping: '${monitor}' is not a column of the results table`);
      const d = o.minDelta ?? 0;
      if (lower ? v < best - d : v > best + d) {
        best = v;
        wait = 0;
        return false;
      }
      wait++;
      if (wait >= patience) {
        learn.log(`No improvement since epoch ${info.epoch - wait}: early stopping`);
        return true;
      }
      return false;
    },
  };
}

/**
 * fast.ai's CSVLogger: the results table as CSV (epoch, train_loss, valid_loss, metrics..., time), a header
 * when the fit starts (unless `append` and the file has one), and one line appended as each epoch ends, so an
 * interrupted fit keeps the epochs it finished. `fname` is relative to the working directory.
 */
export function csvLogger(o: { fname?: string; append?: boolean } = {}): Callback {
  const fname = o.fname ?? 'history.csv';
  // (in a distributed run rank 0 alone writes)
  return {
    beforeFit() {
      if (!o.append && isMainProcess()) rmSync(fname, { force: true });
    },
    afterEpoch(info) {
      if (!isMainProcess()) return;
      if (!existsSync(fname) || statSync(fname).size === 0) appendFileSync(fname, ['epoch', ...Object.keys(info.values), 'time'].join(',') + '\n');
      const row = [String(info.epoch), ...Object.values(info.values).map((v) => (Number.isFinite(v) ? String(v) : '')), formatTime(info.seconds)];
      appendFileSync(fname, row.join(',') + '\n');
    },
  };
}

/**
 * fast.ai's GradientClip: before each optimizer step of the fit, the gradients are scaled so that their global
 * 2-norm is at most `maxNorm` (default 1), as PyTorch's clip_grad_norm_ does (done natively after backward,
 * inside the captured step on CUDA). For the fit whose callbacks include it.
 */
export function gradientClip(o: { maxNorm?: number } = {}): Callback {
  const maxNorm = o.maxNorm ?? 1;
  if (!(maxNorm > 0 && Number.isFinite(maxNorm))) throw new Error(`gradientClip: maxNorm must be a positive number, got ${maxNorm}`);
  return {
    beforeFit: (learn) => learn.setMaxGradNorm(maxNorm),
  };
}

/**
 * fast.ai's GradientAccumulation: the optimizer steps once `nAcc` samples (default 32) have been seen, each
 * batch's gradient scaled by its size / nAcc and added up, so that small batches train as one batch of nAcc
 * would (BatchNorm aside, which still sees the small batches). The one-cycle schedule counts optimizer steps;
 * the losses shown are each batch's own. On CUDA the steps run without the captured graph. For the fit whose
 * callbacks include it.
 */
export function gradientAccumulation(o: { nAcc?: number } = {}): Callback {
  const nAcc = o.nAcc ?? 32;
  if (!(Number.isInteger(nAcc) && nAcc >= 1)) throw new Error(`gradientAccumulation: nAcc must be a positive whole number of samples, got ${nAcc}`);
  return { beforeFit: (learn) => learn.setAccumulation(nAcc) };
}

function mixing(name: string, kind: 'mixup' | 'cutmix', alpha: number): Callback {
  if (!(alpha > 0 && Number.isFinite(alpha))) throw new Error(`${name}: alpha must be a positive number, got ${alpha}`);
  return { beforeFit: (learn) => learn.setMix(kind, alpha) };
}

/**
 * fast.ai's MixUp: every training batch is mixed with a shuffled copy of itself, each image i as
 * lam_i * x_i + (1 - lam_i) * x_partner with lam_i = max(l, 1 - l), l ~ Beta(alpha, alpha) (default 0.4), and
 * the loss is the same mix of the two targets' losses (done natively, after the augmentation, with the
 * learner's seeded generator). For the fit whose callbacks include it.
 */
export function mixUp(o: { alpha?: number } = {}): Callback {
  return mixing('mixUp', 'mixup', o.alpha ?? 0.4);
}

/**
 * fast.ai's CutMix: in every training batch a box (its share of the image 1 - lam, lam ~ Beta(alpha, alpha),
 * default alpha 1, centred anywhere) is pasted from a shuffled copy of the batch, and the loss mixes the two
 * targets' losses by the areas. For the fit whose callbacks include it.
 */
export function cutMix(o: { alpha?: number } = {}): Callback {
  return mixing('cutMix', 'cutmix', o.alpha ?? 1);
}
