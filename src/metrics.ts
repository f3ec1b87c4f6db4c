// Metrics over a whole prediction set, as fast.ai v2 computes them (sklearn on the concatenated set):
// plain functions of (probabilities [n*c], targets [n], c). The positive class of the binary
// metrics is index 1 of the sorted vocab (covid_positive) unless `posLabel` says otherwise.

export type MetricFn = (probs: Float32Array, targets: Int32Array, numClasses: number) => number;

export interface Metric {
  /** the column name in the results table (fast.ai v2's names) */
  name: string;
  /** 'lower' when smaller is better (losses, error rates); used by saveModel/earlyStopping */
  better?: 'higher' | 'lower';
  fn: MetricFn;
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

function binaryCounts(probs: Float32Array, targets: Int32Array, c: number, pos: number) {
  const pred = argmax(probs, c);
  let tp = 0, fp = 0, fn = 0;
  targets.forEach((t, i) => {
    if (pred[i] === pos && t === pos) tp++;
    else if (pred[i] === pos) fp++;
    else if (t === pos) fn++;
  });
  return { tp, fp, fn };
}

export function accuracy(): Metric {
  return { name: 'accuracy', better: 'higher', fn: (p, t, c) => { const pr = argmax(p, c); let k = 0; t.forEach((y, i) => (k += +(pr[i] === y))); return k / t.length; } };
}
export function errorRate(): Metric {
  const a = accuracy().fn;
  return { name: 'error_rate', better: 'lower', fn: (p, t, c) => 1 - a(p, t, c) };
}
/** sklearn's precision_score(average='binary', pos_label): 0 when nothing is predicted positive. */
export function precision(o: { posLabel?: number } = {}): Metric {
  return { name: 'precision_score', better: 'higher', fn: (p, t, c) => { const { tp, fp } = binaryCounts(p, t, c, o.posLabel ?? 1); return tp + fp ? tp / (tp + fp) : 0; } };
}
export function recall(o: { posLabel?: number } = {}): Metric {
  return { name: 'recall_score', better: 'higher', fn: (p, t, c) => { const { tp, fn } = binaryCounts(p, t, c, o.posLabel ?? 1); return tp + fn ? tp / (tp + fn) : 0; } };
}
export function f1Score(o: { posLabel?: number } = {}): Metric {
  return { name: 'f1_score', better: 'higher', fn: (p, t, c) => { const { tp, fp, fn } = binaryCounts(p, t, c, o.posLabel ?? 1); return tp ? (2 * tp) / (2 * tp + fp + fn) : 0; } };
}
/** ROC AUC of the positive class's probability (fast.ai's RocAucBinary: softmax[:, posLabel]); ties count half. */
export function rocAucBinary(o: { posLabel?: number } = {}): Metric {
  return {
    name: 'roc_auc_score',
    better: 'higher',
    fn: (p, t, c) => {
      const pos = o.posLabel ?? 1;
      const scored = Array.from(t, (y, i) => ({ s: p[i * c + pos], y: y === pos }));
      const nPos = scored.filter((x) => x.y).length;
      const nNeg = scored.length - nPos;
      if (nPos === 0 || nNeg === 0) return NaN;
      // Mann-Whitney U with average ranks for ties
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
    },
  };
}
/** A user metric: any function of (probabilities, targets, numClasses). */
export function metric(name: string, fn: MetricFn, better: 'higher' | 'lower' = 'higher'): Metric {
  return { name, fn, better };
}
