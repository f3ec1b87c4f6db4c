import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';
import { accuracy, ClassificationInterpretation, ImageDataLoaders, precision, recall, visionLearner, type Learner } from '../src/index.js';
import { makeQuadrantPatches, makeStripes, quadrantPatch } from './helpers/fixtures.js';
import { tempDir } from './helpers/python.js';

// Pictures land here so that a person can look at them after the run.
const PICTURES = join(__dirname, '..', 'out', 'test-pictures');
mkdirSync(PICTURES, { recursive: true });

async function pngSize(path: string) {
  const m = await sharp(path).metadata();
  expect(m.format).toBe('png');
  return { width: m.width!, height: m.height! };
}

let learn: Learner;
let dls: ImageDataLoaders;

beforeAll(async () => {
  const dir = tempDir();
  await makeStripes(join(dir, 's'), 30, 48, 9);
  dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 40, bs: 16, seed: 2 });
  learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, metrics: [accuracy(), precision(), recall()], seed: 0 });
  await learn.fitOneCycle(2, { lrMax: 5e-3 });
});

describe('ClassificationInterpretation', () => {
  it('the confusion matrix sums to the validation size and agrees with the predictions', async () => {
    const interp = await ClassificationInterpretation.fromLearner(learn);
    const cm = interp.confusionMatrix();
    expect(cm.flat().reduce((a, b) => a + b, 0)).toBe(dls.valid.n);
    for (let a = 0; a < 2; a++)
      for (let p = 0; p < 2; p++) expect(cm[a][p]).toBe([...interp.targets.keys()].filter((i) => interp.targets[i] === a && interp.preds[i] === p).length);
    const mc = interp.mostConfused();
    for (const [a, p, n] of mc) expect(cm[dls.vocab.indexOf(a)][dls.vocab.indexOf(p)]).toBe(n);
    expect(mc.map((x) => x[2])).toEqual([...mc.map((x) => x[2])].sort((x, y) => y - x));
  });

  it('top losses are sorted and match losses recomputed from the probabilities', async () => {
    const interp = await ClassificationInterpretation.fromLearner(learn);
    const t = interp.topLosses(5);
    expect(t.values).toEqual([...t.values].sort((a, b) => b - a));
    t.indices.forEach((i, k) => {
      const p = interp.probs[i * 2 + interp.targets[i]];
      expect(t.values[k]).toBeCloseTo(-Math.log(p), 3);
      expect(t.paths[k]).toBe(dls.valid.items[i].path);
    });
  });

  it('renders every picture type as a valid PNG of the expected size', async () => {
    const interp = await ClassificationInterpretation.fromLearner(learn);
    const cm = await interp.plotConfusionMatrix(join(PICTURES, 'confusion_matrix.png'));
    expect(await pngSize(join(PICTURES, 'confusion_matrix.png'))).toEqual(cm);
    expect(cm.width).toBeGreaterThan(300);
    await interp.plotConfusionMatrix(join(PICTURES, 'confusion_matrix_normalized.svg'), { normalize: true });
    const tl = await interp.plotTopLosses(4, join(PICTURES, 'top_losses.png'));
    expect(await pngSize(join(PICTURES, 'top_losses.png'))).toEqual(tl);
    expect(tl.width).toBe(2 * (Math.max(160, dls.presize) + 8));
    for (const [name, f] of [
      ['losses.png', () => learn.recorder.plotLosses(join(PICTURES, 'losses.png'))],
      ['schedule.png', () => learn.recorder.plotSched(join(PICTURES, 'schedule.png'))],
      ['metrics.png', () => learn.recorder.plotMetrics(join(PICTURES, 'metrics.png'))],
    ] as const) {
      const s = await f();
      expect(await pngSize(join(PICTURES, name))).toEqual(s);
      expect(s.width).toBeGreaterThan(300);
    }
    const lr = await learn.lrFind({ numIt: 12 });
    const lp = await lr.plot(join(PICTURES, 'lr_find.png'));
    expect(await pngSize(join(PICTURES, 'lr_find.png'))).toEqual(lp);
    const sb = await dls.showBatch({ n: 4, path: join(PICTURES, 'batch.png') });
    expect(await pngSize(join(PICTURES, 'batch.png'))).toEqual(sb);
    // show_results: the first 6 validation images, actual over predicted; as many right as getPreds says
    const sr = await learn.showResults({ n: 6, path: join(PICTURES, 'results.png') });
    expect(await pngSize(join(PICTURES, 'results.png'))).toEqual({ width: sr.width, height: sr.height });
    expect(sr.width).toBe(3 * (Math.max(160, dls.size) + 8));
    expect(sr.shown).toBe(6);
    expect(sr.correct).toBe([0, 1, 2, 3, 4, 5].filter((i) => interp.preds[i] === interp.targets[i]).length);
  });
});

describe('Grad-CAM', () => {
  it('peaks in the one region that carries the class signal', async () => {
    const dir = tempDir();
    const S = 128; // a 4x4 layer4 map: each quadrant is 2x2 cells
    await makeQuadrantPatches(join(dir, 'q'), 32, S, 4);
    const d = await ImageDataLoaders.fromFolder(join(dir, 'q'), { size: S, presize: S, bs: 16, seed: 1, augment: false });
    const l = await visionLearner(d, 'resnet18', { pretrained: false, verbose: false, metrics: [accuracy()], seed: 0 });
    const r = await l.fitOneCycle(8, { lrMax: 5e-3 });
    console.log(`quadrant patches: valid accuracy ${r.values.at(-1)![2]}`);
    for (const q of [0, 1, 2, 3]) {
      const img = quadrantPatch(q, S, 6, q % 2 === 0);
      const cam = await l.gradcamRaw(img, d.vocab.indexOf('patch'));
      expect([cam.h, cam.w]).toEqual([4, 4]);
      const quadrantOf = (cell: number) => Math.floor(Math.floor(cell / 4) / 2) * 2 + Math.floor((cell % 4) / 2);
      const mass = [0, 0, 0, 0];
      cam.map.forEach((v, cell) => (mass[quadrantOf(cell)] += v));
      const peak = cam.map.indexOf(Math.max(...cam.map));
      console.log(`Grad-CAM of 'patch' with the patch in quadrant ${q}: quadrant masses ${mass.map((m) => m.toFixed(2)).join(' ')}, peak cell ${peak}`);
      expect(quadrantOf(peak)).toBe(q);
      expect(mass.indexOf(Math.max(...mass))).toBe(q);
    }
    l.dispose();
  });
});
