// Metrics over a whole prediction set, as fast.ai v2 computes them (sklearn on the concatenated set):
// plain functions of (probabilities [n*c], targets [n], c). The positive class of the binary
// metrics is index 1 of the sorted vocab (covid_positive) unless `posLabel` says otherwise.

/** A metric computed from the validation probabilities [n, c], targets and class count. */
export type MetricFn = (probs: Float32Array, targets: Int32Array, numClasses: number) => number;

/** A metric shown in the table after each epoch. */
export interface Metric {
  /** the column name in the results table (fast.ai v2's names) */
  name: string;
  /** 'lower' when smaller is better (losses, error rates); used by saveModel/earlyStopping */
  better?: 'higher' | 'lower';
  fn: MetricFn;
  /** Refuses a number of classes the metric cannot score (the learner calls it before training). */
  check?: (numClasses: number) => void;
  /** true: scores multi-label predictions (targets are n * c 0/1 values); false: one class per image; absent: either */
  multiLabel?: boolean;
}

export function argmax(probs: Float32Array, numClasses: number): Int32Array {
  const n = probs.length / numClasses;
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let c = 1; c < numClasses; c++) if (probs[i * numClasses + c] > probs[i * numClasses + best]) best = c;
    out[i] = best;
  }
  return out;
}

/** cm[actual][predicted] */
export function confusionMatrix(probs: Float32Array, targets: Int32Array, numClasses: number): number[][] {
  const cm = Array.from({ length: numClasses }, () => new Array<number>(numClasses).fill(0));
  const pred = argmax(probs, numClasses);
  targets.forEach((t, i) => cm[t][pred[i]]++);
  return cm;
}

/** How precision, recall and F1 combine the classes, as sklearn's `average`: 'binary' scores the positive
 * class alone (two classes only), 'macro' is the unweighted mean over classes, 'weighted' the mean weighted
 * by each class's number of true items, 'micro' counts every item once (for one label per item it equals
 * accuracy). */
export type Average = 'binary' | 'macro' | 'weighted' | 'micro';
const AVERAGES: readonly Average[] = ['binary', 'macro', 'weighted', 'micro'];

/** Per class: true positives, predicted count and true count. */
function classCounts(probs: Float32Array, targets: Int32Array, c: number) {
  const pred = argmax(probs, c);
  const tp = new Array<number>(c).fill(0);
  const predicted = new Array<number>(c).fill(0);
  const actual = new Array<number>(c).fill(0);
  targets.forEach((t, i) => {
    predicted[pred[i]]++;
    actual[t]++;
    if (pred[i] === t) tp[t]++;
  });
  return { tp, predicted, actual };
}

/** A score from a class's (or label's) true positives, predicted count and true count. */
export type Score = (tp: number, predicted: number, actual: number) => number;
// sklearn's zero_division default: a score whose denominator is 0 counts as 0
export const precisionOf: Score = (tp, predicted) => (predicted ? tp / predicted : 0);
export const recallOf: Score = (tp, _predicted, actual) => (actual ? tp / actual : 0);
export const f1Of: Score = (tp, predicted, actual) => (predicted + actual ? (2 * tp) / (predicted + actual) : 0);

function averaged(name: string, score: Score, o: { average?: Average; posLabel?: number }): Metric {
  const average = o.average ?? 'binary';
  if (!AVERAGES.includes(average)) throw new Error(`${name}: average must be one of ${AVERAGES.map((a) => `'${a}'`).join(', ')}, got '${average}'`);
  const pos = o.posLabel ?? 1;
  const check = (c: number) => {
    if (average === 'binary' && c !== 2)
      throw new Error(`${name}: average 'binary' scores one positive class and needs two classes; these data have ${c}. Pass { average: 'macro' }, 'weighted' or 'micro'`);
    if (average === 'binary' && !(Number.isInteger(pos) && pos >= 0 && pos < c)) throw new Error(`${name}: posLabel must be a class index in [0, ${c}), got ${pos}`);
  };
  return {
    name,
    better: 'higher',
    check,
    multiLabel: false,
    fn: (p, t, c) => {
      check(c);
      const { tp, predicted, actual } = classCounts(p, t, c);
      if (average === 'binary') return score(tp[pos], predicted[pos], actual[pos]);
      if (average === 'micro') return score(tp.reduce((a, b) => a + b, 0), t.length, t.length);
      // sklearn averages over the classes present in the targets or the predictions
      const present = [...Array(c).keys()].filter((k) => actual[k] + predicted[k] > 0);
      if (present.length === 0) return 0;
      if (average === 'macro') return present.reduce((a, k) => a + score(tp[k], predicted[k], actual[k]), 0) / present.length;
      const total = present.reduce((a, k) => a + actual[k], 0);
      return total ? present.reduce((a, k) => a + score(tp[k], predicted[k], actual[k]) * actual[k], 0) / total : 0;
    },
  };
}

/** The fraction of images whose most probable class is the target. */
export function accuracy(): Metric {
  return { name: 'accuracy', better: 'higher', multiLabel: false, fn: (p, t, c) => { const pr = argmax(p, c); let k = 0; t.forEach((y, i) => (k += +(pr[i] === y))); return k / t.length; } };
}
/** 1 - accuracy. */
export function errorRate(): Metric {
  const a = accuracy().fn;
  return { name: 'error_rate', better: 'lower', multiLabel: false, fn: (p, t, c) => 1 - a(p, t, c) };
}
/** sklearn's precision_score(average, pos_label); default 'binary' with pos_label 1, as fast.ai's Precision. */
export function precision(o: { average?: Average; posLabel?: number } = {}): Metric {
  return averaged('precision_score', precisionOf, o);
}
/** sklearn's recall_score(average, pos_label); default 'binary' with pos_label 1. */
export function recall(o: { average?: Average; posLabel?: number } = {}): Metric {
  return averaged('recall_score', recallOf, o);
}
/** sklearn's f1_score(average, pos_label); default 'binary' with pos_label 1. */
export function f1Score(o: { average?: Average; posLabel?: number } = {}): Metric {
  return averaged('f1_score', f1Of, o);
}

/** ROC AUC of one score against a yes/no target (Mann-Whitney U with average ranks for ties); NaN when
 * one side is empty. */
export function aucOf(scores: ArrayLike<number>, isPos: ArrayLike<boolean>): number {
  const scored = Array.from(scores, (s, i) => ({ s, y: isPos[i] }));
  const nPos = scored.filter((x) => x.y).length;
  const nNeg = scored.length - nPos;
  if (nPos === 0 || nNeg === 0) return NaN;
  scored.sort((a, b) => a.s - b.s);
  let rankSum = 0;
  for (let i = 0; i < scored.length; ) {
    let j = i;
    while (j + 1 < scored.length && scored[j + 1].s === scored[i].s) j++;
    const avg = (i + j) / 2 + 1;
    for (let k = i; k <= j; k++) if (scored[k].y) rankSum += avg;
    i = j + 1;
  }
  return (rankSum - (nPos * (nPos + 1)) / 2) / (nPos * nNeg);
}

/** ROC AUC of the positive class's probability (fast.ai's RocAucBinary: softmax[:, posLabel]); ties count half. */
export function rocAucBinary(o: { posLabel?: number } = {}): Metric {
  const pos = o.posLabel ?? 1;
  return {
    name: 'roc_auc_score',
    better: 'higher',
    multiLabel: false,
    fn: (p, t, c) => aucOf(Array.from(t, (_y, i) => p[i * c + pos]), Array.from(t, (y) => y === pos)),
  };
}

/** fast.ai's RocAuc: sklearn's roc_auc_score on the probabilities; for two classes the positive class's
 * (index 1), for more one-vs-rest ('ovr') averaged over classes, 'macro' (default) or 'weighted' by
 * each class's number of true items. A class absent from the targets makes it NaN, as sklearn refuses it. */
export function rocAuc(o: { average?: 'macro' | 'weighted' } = {}): Metric {
  const average = o.average ?? 'macro';
  if (average !== 'macro' && average !== 'weighted') throw new Error(`rocAuc: average must be 'macro' or 'weighted', got '${average}'`);
  return {
    name: 'roc_auc_score',
    better: 'higher',
    multiLabel: false,
    fn: (p, t, c) => {
      if (c === 2) return aucOf(Array.from(t, (_y, i) => p[i * c + 1]), Array.from(t, (y) => y === 1));
      return meanAuc(p, c, (i, k) => t[i] === k, average);
    },
  };
}

/** The ROC AUC of each class's (or label's) probability column, averaged over the columns: unweighted, or
 * weighted by each column's number of positives (sklearn's 'macro' and 'weighted'). `isPos(i, k)`: image i is a
 * positive of column k. */
export function meanAuc(probs: Float32Array, c: number, isPos: (i: number, k: number) => boolean, average: 'macro' | 'weighted'): number {
  const n = probs.length / c;
  let sum = 0;
  let weight = 0;
  for (let k = 0; k < c; k++) {
    const pos = Array.from({ length: n }, (_v, i) => isPos(i, k));
    const w = average === 'weighted' ? pos.filter(Boolean).length : 1;
    sum += aucOf(Array.from({ length: n }, (_v, i) => probs[i * c + k]), pos) * w;
    weight += w;
  }
  return sum / weight;
}

/** A user metric: any function of (probabilities, targets, numClasses). */
export function metric(name: string, fn: MetricFn, better: 'higher' | 'lower' = 'higher'): Metric {
  return { name, fn, better };
}
