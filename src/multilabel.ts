// Metrics of multi-label classification, as fast.ai's accuracy_multi and its sklearn-backed PrecisionMulti,
// RecallMulti, F1ScoreMulti and RocAucMulti compute them: functions of (probabilities [n*c], each already a
// sigmoid; targets [n*c] of 0 or 1; c). A label is predicted where its probability exceeds `thresh`.
import { aucOf, f1Of, meanAuc, precisionOf, recallOf, type Metric, type Score } from './metrics.js';

/** How the multi-label scores combine the labels, as sklearn's `average`: 'macro' the unweighted mean over
 * labels, 'weighted' the mean weighted by each label's number of true images, 'micro' every (image, label)
 * pair counted once, 'samples' the mean over images of each image's score. */
export type MultiAverage = 'macro' | 'weighted' | 'micro' | 'samples';
const MULTI_AVERAGES: readonly MultiAverage[] = ['macro', 'weighted', 'micro', 'samples'];

function checkThresh(name: string, thresh: number): number {
  if (!(thresh > 0 && thresh < 1)) throw new Error(`${name}: thresh must be in (0, 1), got ${thresh}`);
  return thresh;
}

/** Per label: true positives, predicted count and true count; per image the same three. */
function counts(probs: Float32Array, targets: Int32Array, c: number, thresh: number) {
  const n = targets.length / c;
  const label = { tp: new Array<number>(c).fill(0), predicted: new Array<number>(c).fill(0), actual: new Array<number>(c).fill(0) };
  const image = { tp: new Array<number>(n).fill(0), predicted: new Array<number>(n).fill(0), actual: new Array<number>(n).fill(0) };
  for (let i = 0; i < n; i++)
    for (let k = 0; k < c; k++) {
      const p = +(probs[i * c + k] > thresh);
      const t = targets[i * c + k];
      label.predicted[k] += p;
      label.actual[k] += t;
      label.tp[k] += p & t;
      image.predicted[i] += p;
      image.actual[i] += t;
      image.tp[i] += p & t;
    }
  return { label, image };
}

// sklearn's zero_division default (a score whose denominator is 0 counts as 0): the scores of src/metrics.ts
function multiAveraged(name: string, score: Score, o: { average?: MultiAverage; thresh?: number }): Metric {
  const average = o.average ?? 'macro';
  if (!MULTI_AVERAGES.includes(average)) throw new Error(`${name}: average must be one of ${MULTI_AVERAGES.map((a) => `'${a}'`).join(', ')}, got '${average}'`);
  const thresh = checkThresh(name, o.thresh ?? 0.5);
  return {
    name,
    better: 'higher',
    multiLabel: true,
    fn: (p, t, c) => {
      const { label, image } = counts(p, t, c, thresh);
      const sum = (a: number[]) => a.reduce((x, y) => x + y, 0);
      if (average === 'micro') return score(sum(label.tp), sum(label.predicted), sum(label.actual));
      if (average === 'samples') return image.tp.length ? sum(image.tp.map((tp, i) => score(tp, image.predicted[i], image.actual[i]))) / image.tp.length : 0;
      const per = label.tp.map((tp, k) => score(tp, label.predicted[k], label.actual[k]));
      if (average === 'macro') return sum(per) / c;
      const total = sum(label.actual);
      return total ? sum(per.map((s, k) => s * label.actual[k])) / total : 0;
    },
  };
}

/** fast.ai's accuracy_multi: the fraction of (image, label) pairs predicted right at `thresh` (default 0.5). */
export function accuracyMulti(o: { thresh?: number } = {}): Metric {
  const thresh = checkThresh('accuracyMulti', o.thresh ?? 0.5);
  return {
    name: 'accuracy_multi',
    better: 'higher',
    multiLabel: true,
    fn: (p, t) => {
      let k = 0;
      t.forEach((y, j) => (k += +(+(p[j] > thresh) === y)));
      return k / t.length;
    },
  };
}
/** fast.ai's PrecisionMulti: sklearn's precision_score on the label matrix (default average 'macro', thresh 0.5). */
export function precisionMulti(o: { average?: MultiAverage; thresh?: number } = {}): Metric {
  return multiAveraged('precision_score', precisionOf, o);
}
/** fast.ai's RecallMulti: sklearn's recall_score on the label matrix (default average 'macro', thresh 0.5). */
export function recallMulti(o: { average?: MultiAverage; thresh?: number } = {}): Metric {
  return multiAveraged('recall_score', recallOf, o);
}
/** fast.ai's F1ScoreMulti: sklearn's f1_score on the label matrix (default average 'macro', thresh 0.5). */
export function f1ScoreMulti(o: { average?: MultiAverage; thresh?: number } = {}): Metric {
  return multiAveraged('f1_score', f1Of, o);
}

/** fast.ai's RocAucMulti: sklearn's roc_auc_score on each label's probability, averaged over labels ('macro',
 * default, or 'weighted' by true images; 'micro' pools every pair). NaN when a label's targets are all 0 or all
 * 1, where sklearn refuses. */
export function rocAucMulti(o: { average?: 'macro' | 'weighted' | 'micro' } = {}): Metric {
  const average = o.average ?? 'macro';
  if (!['macro', 'weighted', 'micro'].includes(average)) throw new Error(`rocAucMulti: average must be 'macro', 'weighted' or 'micro', got '${average}'`);
  return {
    name: 'roc_auc_score',
    better: 'higher',
    multiLabel: true,
    fn: (p, t, c) => {
      if (average === 'micro') return aucOf(p, Array.from(t, (y) => y === 1));
      return meanAuc(p, c, (i, k) => t[i * c + k] === 1, average);
    },
  };
}

/** One label's results on a prediction set. */
export interface LabelReport {
  label: string;
  /** true images */
  support: number;
  /** images predicted to have it (probability > thresh) */
  predicted: number;
  truePositives: number;
  precision: number;
  recall: number;
  f1: number;
  /** ROC AUC of its probability (NaN when its targets are all one value) */
  rocAuc: number;
}

/** Per-label precision, recall, F1, support and ROC AUC (sklearn's classification_report and
 * multilabel_confusion_matrix, per label), at `thresh` (default 0.5). */
export function labelReport(probs: Float32Array, targets: Int32Array, vocab: readonly string[], thresh = 0.5): LabelReport[] {
  checkThresh('labelReport', thresh);
  const c = vocab.length;
  if (targets.length !== probs.length || targets.length % c !== 0) throw new Error(`labelReport: probs and targets must both hold n * ${c} values, got ${probs.length} and ${targets.length}`);
  const n = targets.length / c;
  const { label } = counts(probs, targets, c, thresh);
  return vocab.map((l, k) => ({
    label: l,
    support: label.actual[k],
    predicted: label.predicted[k],
    truePositives: label.tp[k],
    precision: precisionOf(label.tp[k], label.predicted[k], label.actual[k]),
    recall: recallOf(label.tp[k], label.predicted[k], label.actual[k]),
    f1: f1Of(label.tp[k], label.predicted[k], label.actual[k]),
    rocAuc: aucOf(Array.from({ length: n }, (_v, i) => probs[i * c + k]), Array.from({ length: n }, (_v, i) => targets[i * c + k] === 1)),
  }));
}
