// Multi-label classification: fromCsv with labelDelim, binary cross-entropy, the multi-label metrics against
// sklearn's numbers (Debian's python3-sklearn), prediction above a threshold, and the export keeping the task.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  accuracy,
  accuracyMulti,
  ClassificationInterpretation,
  f1ScoreMulti,
  ImageDataLoaders,
  labelReport,
  loadLearner,
  precisionMulti,
  recallMulti,
  rocAucMulti,
  visionLearner,
  type Metric,
  type MultiAverage,
} from '../src/index.js';
import { lossesFromProbs } from '../src/tta.js';
import { makeHalves } from './helpers/fixtures.js';
import { runPython, tempDir } from './helpers/python.js';

// Seeded sigmoid outputs that agree with the multi-hot targets more often than not; some images have no
// label and some labels are rare, so that the averages differ from each other.
function predictions(n: number, c: number, seed: number): { probs: Float32Array; targets: Int32Array } {
  let s = seed;
  const rand = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
  const targets = Int32Array.from({ length: n * c }, (_v, j) => +(rand() < 0.15 + 0.2 * (j % c)));
  const probs = Float32Array.from(targets, (t) => Math.min(0.999, Math.max(0.001, 0.35 * t + 0.65 * rand())));
  return { probs, targets };
}

const SKLEARN = `
import json, sys
import numpy as np
from sklearn.metrics import precision_score, recall_score, f1_score, roc_auc_score, classification_report, multilabel_confusion_matrix
d = json.loads(sys.argv[1])
out = []
for case in d:
    c = case['c']
    p = np.array(case['probs'], dtype=np.float64).reshape(-1, c)
    y = np.array(case['targets']).reshape(-1, c)
    r = {}
    for t in case['threshs']:
        pred = (p > t).astype(int)
        r['acc_%g' % t] = float((pred == y).mean())
        for avg in ['macro', 'weighted', 'micro', 'samples']:
            kw = dict(average=avg, zero_division=0)
            r['precision_%s_%g' % (avg, t)] = precision_score(y, pred, **kw)
            r['recall_%s_%g' % (avg, t)] = recall_score(y, pred, **kw)
            r['f1_%s_%g' % (avg, t)] = f1_score(y, pred, **kw)
        rep = classification_report(y, pred, output_dict=True, zero_division=0)
        r['report_%g' % t] = [[rep[str(k)][m] for m in ('precision', 'recall', 'f1-score', 'support')] for k in range(c)]
        r['mcm_%g' % t] = multilabel_confusion_matrix(y, pred).tolist()
    for avg in ['macro', 'weighted', 'micro']:
        r['auc_' + avg] = roc_auc_score(y, p, average=avg)
    r['auc_each'] = [roc_auc_score(y[:, k], p[:, k]) for k in range(c)]
    out.append(r)
print(json.dumps(out))
`;

describe('multi-label metrics against sklearn', () => {
  const cases = [
    { c: 4, threshs: [0.5, 0.3], ...predictions(157, 4, 7) },
    { c: 3, threshs: [0.5, 0.7], ...predictions(64, 3, 11) },
  ];
  const ref = JSON.parse(runPython(SKLEARN, [JSON.stringify(cases.map((k) => ({ c: k.c, threshs: k.threshs, probs: Array.from(k.probs), targets: Array.from(k.targets) })))])) as Record<
    string,
    number & number[][] & number[][][]
  >[];
  const score = (m: Metric, k: (typeof cases)[number]) => m.fn(k.probs, k.targets, k.c);

  it("accuracyMulti is fast.ai's elementwise accuracy; precision, recall and F1 with every average equal sklearn's (1e-12)", () => {
    cases.forEach((k, i) => {
      for (const thresh of k.threshs) {
        expect(score(accuracyMulti({ thresh }), k)).toBeCloseTo(ref[i][`acc_${thresh}`], 12);
        for (const average of ['macro', 'weighted', 'micro', 'samples'] as MultiAverage[]) {
          expect(score(precisionMulti({ average, thresh }), k), `precision ${average} ${thresh}`).toBeCloseTo(ref[i][`precision_${average}_${thresh}`], 12);
          expect(score(recallMulti({ average, thresh }), k), `recall ${average} ${thresh}`).toBeCloseTo(ref[i][`recall_${average}_${thresh}`], 12);
          expect(score(f1ScoreMulti({ average, thresh }), k), `f1 ${average} ${thresh}`).toBeCloseTo(ref[i][`f1_${average}_${thresh}`], 12);
        }
      }
      // the averages really differ on these data (else the comparison would not tell them apart)
      const f1s = (['macro', 'weighted', 'micro', 'samples'] as const).map((a) => ref[i][`f1_${a}_0.5`]);
      expect(new Set(f1s.map((v) => v.toFixed(6))).size).toBe(4);
    });
  });

  it("rocAucMulti (macro, weighted, micro) and labelReport's per-label figures equal sklearn's (1e-12)", () => {
    cases.forEach((k, i) => {
      for (const average of ['macro', 'weighted', 'micro'] as const) expect(score(rocAucMulti({ average }), k), average).toBeCloseTo(ref[i][`auc_${average}`], 12);
      const vocab = Array.from({ length: k.c }, (_v, j) => `l${j}`);
      for (const thresh of k.threshs) {
        const rep = labelReport(k.probs, k.targets, vocab, thresh);
        rep.forEach((r, j) => {
          const [p, rc, f1, support] = ref[i][`report_${thresh}`][j];
          expect([r.precision, r.recall, r.f1]).toEqual([expect.closeTo(p, 12), expect.closeTo(rc, 12), expect.closeTo(f1, 12)]);
          expect(r.support).toBe(support);
          expect(r.rocAuc).toBeCloseTo(ref[i].auc_each[j] as unknown as number, 12);
          // sklearn's multilabel_confusion_matrix: [[tn, fp], [fn, tp]]
          const [[tn, fp], [fn, tp]] = ref[i][`mcm_${thresh}`][j];
          expect([r.truePositives, r.predicted - r.truePositives, r.support - r.truePositives, k.targets.length / k.c - r.support - (r.predicted - r.truePositives)]).toEqual([tp, fp, fn, tn]);
        });
      }
    });
  });

  it('refuses what cannot be scored: a threshold outside (0, 1), an unknown average, mismatched lengths', () => {
    expect(() => accuracyMulti({ thresh: 1 })).toThrow(/thresh must be in \(0, 1\), got 1/);
    expect(() => precisionMulti({ average: 'binary' as MultiAverage })).toThrow(/average must be one of 'macro', 'weighted', 'micro', 'samples', got 'binary'/);
    expect(() => labelReport(new Float32Array(6), new Int32Array(4), ['a', 'b'])).toThrow(/probs and targets must both hold n \* 2 values, got 6 and 4/);
  });
});

describe('a multi-label learner', () => {
  it('fromCsv with labelDelim trains with binary cross-entropy and learns which halves have stripes; predict gives every label above the threshold; the export keeps the task and threshold', async () => {
    const dir = tempDir();
    const rows = await makeHalves(dir, 60, 48, 3);
    const dls = await ImageDataLoaders.fromCsv(join(dir, 'labels.csv'), { folder: 'images', labelDelim: ' ', validCol: 'is_valid', size: 32, presize: 40, bs: 8, seed: 1 });
    expect(dls.multiLabel).toBe(true);
    expect(dls.vocab).toEqual(['bottom', 'top']);
    expect(dls.valid.n).toBe(12);
    // a third of the images have each label alone, a third both
    expect(dls.train.classCounts(dls.vocab)).toEqual({ bottom: 32, top: 32 });
    const item = dls.valid.items.findIndex((it) => it.labels!.length === 2);
    expect(Array.from(dls.valid.multiHot!.subarray(item * 2, item * 2 + 2))).toEqual([1, 1]);

    // a group split keeps each group on one side (stratified by label set)
    const grouped = await ImageDataLoaders.fromItems(
      rows.map((row, k) => ({ path: join(dir, 'images', row.file), label: row.labels.join(' '), labels: row.labels, patient: `p${k % 12}` })),
      { splitBy: 'patient', validPct: 0.25, size: 32, presize: 40, bs: 8, seed: 1, quiet: true },
    );
    const side = (items: readonly Record<string, unknown>[]) => new Set(items.map((i) => i.patient));
    expect([...side(grouped.train.items)].filter((p) => side(grouped.valid.items).has(p))).toEqual([]);
    expect(grouped.groups).toEqual({ train: 9, valid: 3 });
    expect(grouped.multiLabel).toBe(true);

    // single-label metrics and losses are refused, naming what to use
    await expect(visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, metrics: [accuracy()] })).rejects.toThrow(/accuracy scores one class per image; these data are multi-label: use accuracyMulti\(\)/);
    await expect(visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, lossFunc: { labelSmoothing: 0.1 } })).rejects.toThrow(/for single-label classification/);

    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, metrics: [accuracyMulti(), f1ScoreMulti()], lossFunc: { thresh: 0.4 } });
    expect(learn.decoding).toEqual({ multiLabel: true, thresh: 0.4 });
    const r = await learn.fitOneCycle(6, { lrMax: 5e-3 });
    const [, validLoss, acc] = r.values.at(-1)!;
    expect(acc).toBeGreaterThanOrEqual(0.9); // (chance: 0.5 per label)

    // the native loss is the mean binary cross-entropy of the sigmoid probabilities it returns
    const preds = await learn.getPreds();
    expect(preds.targets.length).toBe(12 * 2);
    const fromProbs = lossesFromProbs(preds.probs, preds.targets, 2, true);
    preds.losses.forEach((l, i) => expect(Math.abs(l - fromProbs[i])).toBeLessThan(1e-4 * Math.max(1, l)));
    expect(Math.abs((validLoss as number) - fromProbs.reduce((a, b) => a + b, 0) / 12)).toBeLessThan(1e-4);

    // predict: every label above the threshold
    const file = join(dir, 'images', rows[2].file); // both halves
    const p = await learn.predict(file);
    expect(p.labels).toEqual(dls.vocab.filter((_v, k) => p.probs[k] > 0.4));
    expect(p.label).toBe(p.labels!.join(';'));
    expect(p.probs.every((v) => v >= 0 && v <= 1)).toBe(true);

    // the export keeps the task and the threshold: the loaded learner predicts the same labels and sigmoids
    const inf = loadLearner(await learn.export(join(dir, 'export.safetensors')));
    expect(inf.decoding).toEqual({ multiLabel: true, thresh: 0.4 });
    const q = await inf.predict(file);
    expect(q.labels).toEqual(p.labels);
    q.probs.forEach((v, k) => expect(Math.abs(v - p.probs[k])).toBeLessThan(1e-5));
    const g = await inf.getPreds(rows.slice(0, 6).map((row) => ({ path: join(dir, 'images', row.file), labels: row.labels })));
    expect(Array.from(g.targets!)).toEqual(rows.slice(0, 6).flatMap((row) => dls.vocab.map((v) => +row.labels.includes(v))));
    inf.dispose();

    // interpretation: per-label results; the single-label views are refused
    const interp = await ClassificationInterpretation.fromLearner(learn);
    const report = interp.labelReport();
    expect(report.map((x) => x.label)).toEqual(['bottom', 'top']);
    expect(report.map((x) => x.support)).toEqual(dls.vocab.map((v) => dls.valid.classCounts(dls.vocab)[v]));
    const cm = interp.labelConfusion();
    expect(cm.top[1][1]).toBe(report[1].truePositives);
    expect(() => interp.confusionMatrix()).toThrow(/multi-label: use labelConfusion\(\) or labelReport\(\)/);
    learn.dispose();
  });
});
