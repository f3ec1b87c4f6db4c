// The metrics against sklearn's numbers (Debian's python3-sklearn) on the same predictions.
import { describe, expect, it } from 'vitest';
import { accuracy, f1Score, precision, recall, rocAuc, rocAucBinary, type Average, type Metric } from '../src/index.js';
import { runPython } from './helpers/python.js';

// Seeded predictions: probabilities that agree with the targets more often than not, so that every
// score is away from 0 and 1.
function predictions(n: number, c: number, seed: number): { probs: Float32Array; targets: Int32Array } {
  let s = seed;
  const rand = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
  const targets = Int32Array.from({ length: n }, () => Math.floor(rand() * c));
  const probs = new Float32Array(n * c);
  for (let i = 0; i < n; i++) {
    const row = Array.from({ length: c }, (_, k) => rand() + (k === targets[i] && rand() < 0.6 ? 1 : 0));
    const sum = row.reduce((a, b) => a + b, 0);
    row.forEach((v, k) => (probs[i * c + k] = v / sum));
  }
  return { probs, targets };
}

const SKLEARN = `
import json, sys
import numpy as np
from sklearn.metrics import precision_score, recall_score, f1_score, roc_auc_score, accuracy_score
d = json.loads(sys.stdin.read() if len(sys.argv) < 2 else sys.argv[1])
out = []
for case in d:
    p = np.array(case['probs'], dtype=np.float64).reshape(-1, case['c'])
    y = np.array(case['targets'])
    pred = p.argmax(1)
    r = {'accuracy': accuracy_score(y, pred)}
    for avg in case['averages']:
        kw = dict(average=avg, zero_division=0)
        r['precision_' + avg] = precision_score(y, pred, **kw)
        r['recall_' + avg] = recall_score(y, pred, **kw)
        r['f1_' + avg] = f1_score(y, pred, **kw)
    if case['c'] == 2:
        r['auc'] = roc_auc_score(y, p[:, 1])
    else:
        r['auc_macro'] = roc_auc_score(y, p, multi_class='ovr', average='macro')
        r['auc_weighted'] = roc_auc_score(y, p, multi_class='ovr', average='weighted')
    out.append(r)
print(json.dumps(out))
`;

describe('metrics against sklearn', () => {
  const cases = [
    { c: 2, ...predictions(203, 2, 7), averages: ['binary', 'macro', 'weighted', 'micro'] as Average[] },
    { c: 3, ...predictions(301, 3, 11), averages: ['macro', 'weighted', 'micro'] as Average[] },
    { c: 5, ...predictions(157, 5, 5), averages: ['macro', 'weighted', 'micro'] as Average[] },
  ];
  const ref = JSON.parse(
    runPython(SKLEARN, [JSON.stringify(cases.map((k) => ({ c: k.c, probs: Array.from(k.probs), targets: Array.from(k.targets), averages: k.averages })))]),
  ) as Record<string, number>[];
  const score = (m: Metric, k: (typeof cases)[number]) => m.fn(k.probs, k.targets, k.c);

  it('precision, recall and F1 with every average equal sklearn (1e-12); binary, two classes only', () => {
    cases.forEach((k, i) => {
      expect(score(accuracy(), k)).toBeCloseTo(ref[i].accuracy, 12);
      for (const average of k.averages) {
        expect(Math.abs(score(precision({ average }), k) - ref[i][`precision_${average}`]), `precision ${average} c=${k.c}`).toBeLessThan(1e-12);
        expect(Math.abs(score(recall({ average }), k) - ref[i][`recall_${average}`]), `recall ${average} c=${k.c}`).toBeLessThan(1e-12);
        expect(Math.abs(score(f1Score({ average }), k) - ref[i][`f1_${average}`]), `f1 ${average} c=${k.c}`).toBeLessThan(1e-12);
      }
    });
    // the default is sklearn's: 'binary', which scores class 1 of two, and refuses more classes, naming the options
    expect(score(precision(), cases[0])).toBe(score(precision({ average: 'binary' }), cases[0]));
    expect(() => score(precision(), cases[1])).toThrow(/precision_score: average 'binary' scores one positive class and needs two classes; these data have 3\. Pass \{ average: 'macro' \}, 'weighted' or 'micro'/);
    expect(() => precision().check!(3)).toThrow(/needs two classes/);
    expect(() => f1Score({ average: 'samples' as Average })).toThrow(/f1_score: average must be one of 'binary', 'macro', 'weighted', 'micro', got 'samples'/);
  });

  it('ROC AUC: the positive class for two classes, one-vs-rest (macro, weighted) for more, as sklearn', () => {
    expect(Math.abs(score(rocAucBinary(), cases[0]) - ref[0].auc)).toBeLessThan(1e-12);
    expect(Math.abs(score(rocAuc(), cases[0]) - ref[0].auc)).toBeLessThan(1e-12);
    for (const i of [1, 2]) {
      expect(Math.abs(score(rocAuc(), cases[i]) - ref[i].auc_macro), `c=${cases[i].c}`).toBeLessThan(1e-12);
      expect(Math.abs(score(rocAuc({ average: 'weighted' }), cases[i]) - ref[i].auc_weighted), `c=${cases[i].c}`).toBeLessThan(1e-12);
    }
  });
});
