// Callbacks around the epoch loop: user hooks, saveModel (best by a monitored value, loaded at the
// end) and earlyStopping, with fast.ai's monitor/comparison rules, and csvLogger.
import { appendFileSync, existsSync, rmSync, statSync } from 'node:fs';
import type { Learner } from './learner.js';
import { formatTime } from './progress.js';

export interface EpochInfo {
  epoch: number;
  /** name -> value for every column of the results table (train_loss, valid_loss, metrics) */
  values: Record<string, number>;
  /** the epoch's wall time, as the table's time column */
  seconds: number;
}

export interface BatchInfo {
  epoch: number;
  iter: number;
  total: number;
  smoothLoss: number;
}

export interface Callback {
  beforeFit?(learn: Learner): void | Promise<void>;
  onBatchEnd?(info: BatchInfo): void;
  /** return true to stop training after this epoch */
  onEpochEnd?(info: EpochInfo, learn: Learner): boolean | void | Promise<boolean | void>;
  afterFit?(learn: Learner): void | Promise<void>;
}

function lowerIsBetter(monitor: string, comp?: 'lower' | 'higher'): boolean {
  if (comp) return comp === 'lower';
  return /loss|error/.test(monitor); // fast.ai's mode='auto'
}

/** Saves the model whenever `monitor` improves, and loads the best one when the fit ends. */
export function saveModel(o: { monitor?: string; comp?: 'lower' | 'higher'; minDelta?: number; fname?: string } = {}): Callback {
  const monitor = o.monitor ?? 'valid_loss';
  const lower = lowerIsBetter(monitor, o.comp);
  const fname = o.fname ?? 'model';
  let best = lower ? Infinity : -Infinity;
  let saved = false;
  return {
    beforeFit() {
      best = lower ? Infinity : -Infinity;
      saved = false;
    },
    async onEpochEnd(info, learn) {
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
  const lower = lowerIsBetter(monitor, o.comp);
  const patience = o.patience ?? 1;
  let best = lower ? Infinity : -Infinity;
  let wait = 0;
  return {
    beforeFit() {
      best = lower ? Infinity : -Infinity;
      wait = 0;
    },
    onEpochEnd(info, learn) {
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
  return {
    beforeFit() {
      if (!o.append) rmSync(fname, { force: true });
    },
    onEpochEnd(info) {
      if (!existsSync(fname) || statSync(fname).size === 0) appendFileSync(fname, ['epoch', ...Object.keys(info.values), 'time'].join(',') + '\n');
      const row = [String(info.epoch), ...Object.values(info.values).map((v) => (Number.isFinite(v) ? String(v) : '')), formatTime(info.seconds)];
      appendFileSync(fname, row.join(',') + '\n');
    },
  };
}
