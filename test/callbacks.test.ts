import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { accuracy, csvLogger, earlyStopping, gradientAccumulation, gradientClip, ImageDataLoaders, lrPerGroup, manualSeed, saveModel, visionLearner } from '../src/index.js';
import { setBatchNormEval } from '../src/hooks.js';
import { makeStripes } from './helpers/fixtures.js';
import { maxRelError, readF32, runPython, tempDir } from './helpers/python.js';

let dir: string;
let dls: ImageDataLoaders;
const quiet = { verbose: false };

beforeAll(async () => {
  dir = tempDir();
  await makeStripes(join(dir, 's'), 20, 40, 4);
  dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 32, bs: 8, seed: 3 });
});

describe('callbacks', () => {
  it('afterBatch and afterEpoch see every batch and epoch; the table is fast.ai\'s', async () => {
    const lines: string[] = [];
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, metrics: [accuracy()], seed: 0, logger: (l) => lines.push(l) });
    const batches: number[] = [];
    const epochs: number[] = [];
    await learn.fitOneCycle(2, { cbs: [{ afterBatch: (b) => void batches.push(b.iter), afterEpoch: (e) => void epochs.push(e.epoch) }] });
    expect(epochs).toEqual([0, 1]);
    expect(batches.length).toBe(2 * dls.train.length);
    const header = lines.find((l) => l.startsWith('epoch'))!;
    expect(header).toBe('epoch     train_loss  valid_loss  accuracy  time    ');
    const row = lines[lines.indexOf(header) + 1];
    expect(row).toMatch(/^0\s+\d\.\d{6}\s+\d\.\d{6}\s+\d\.\d{6}\s+\d\d:\d\d\s*$/);
    // every value starts under its column name, as fastprogress prints it
    const cols = ['train_loss', 'valid_loss', 'accuracy', 'time'].map((n) => header.indexOf(n));
    const starts = [...row.matchAll(/\S+/g)].slice(1).map((m) => m.index);
    expect(starts).toEqual(cols);
    learn.dispose();
  });

  it('saveModel keeps the best epoch by the monitored value and loads it at the end; earlyStopping stops', async () => {
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, metrics: [accuracy()], seed: 0, modelDir: join(dir, 'models') });
    const seen: number[] = [];
    const r = await learn.fitOneCycle(3, { cbs: [saveModel({ monitor: 'valid_loss', fname: 'best' }), { afterEpoch: (e) => void seen.push(e.values.valid_loss) }] });
    expect(r.epochs).toBe(3);
    const best = Math.min(...seen);
    const now = (await learn.validate()).valid_loss;
    expect(now).toBeCloseTo(best, 5);
    // a metric that never improves stops after `patience` epochs
    const r2 = await learn.fit(5, { lr: 1e-7, cbs: [earlyStopping({ monitor: 'accuracy', patience: 1, minDelta: 0.5 })] });
    expect(r2.epochs).toBe(2);
    await expect(learn.fit(1, { cbs: [earlyStopping({ monitor: 'nope' })] })).rejects.toThrow(/'nope' is not a column/);
    learn.dispose();
  });

  it("csvLogger writes fast.ai's history.csv: a header, then one line per epoch as it ends; append adds to it", async () => {
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, metrics: [accuracy()], seed: 0 });
    const fname = join(dir, 'history.csv');
    const lines = () => readFileSync(fname, 'utf8').trimEnd().split('\n');
    const seenAtEpochEnd: number[] = [];
    await learn.fitOneCycle(2, { cbs: [csvLogger({ fname }), { afterEpoch: () => void seenAtEpochEnd.push(lines().length) }] });
    expect(seenAtEpochEnd).toEqual([2, 3]); // each epoch's line is on disk when the epoch ends
    expect(lines()[0]).toBe('epoch,train_loss,valid_loss,accuracy,time');
    lines().slice(1).forEach((l, e) => {
      const [epoch, ...rest] = l.split(',');
      expect(Number(epoch)).toBe(e);
      rest.slice(0, 3).forEach((v, k) => expect(Number(v)).toBe(learn.recorder.values[e][k]));
      expect(rest[3]).toMatch(/^\d\d:\d\d$/);
    });
    await learn.fit(1, { cbs: [csvLogger({ fname, append: true })] });
    expect(lines().length).toBe(4);
    expect(lines().filter((l) => l.startsWith('epoch')).length).toBe(1);
    await learn.fit(1, { cbs: [csvLogger({ fname })] }); // without append: a new file
    expect(lines().length).toBe(2);
    learn.dispose();
  });

  it('gradientAccumulation: bs 8 accumulating 32 samples trains to the weights of bs 32 (BatchNorm in eval, no dropout), the schedule counting optimizer steps', async () => {
    // no augmentation (its draws are per batch), the same seed: the same 32 images in the same order
    const weights = async (bs: number, nAcc?: number, cudaGraph = false) => {
      const d = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 32, bs, seed: 3, augment: false });
      // (on the CPU on every machine: fp32 arithmetic repeated exactly; test/cuda.test.ts compares CUDA's graph step)
      const l = await visionLearner(d, 'resnet18', { pretrained: false, ...quiet, seed: 0, head: { ps: 0 }, cudaGraph, device: 'cpu' });
      setBatchNormEval(l, true);
      await l.fitOneCycle(2, { lrMax: 1e-3, cbs: nAcc ? [gradientAccumulation({ nAcc })] : [] });
      const lrs = l.recorder.lrs.map((r) => r.at(-1)!);
      const w = (await l.state(false)).filter((t) => t.dtype === 'F32').map((t) => ({ name: t.name, v: new Float32Array(t.data.slice().buffer) }));
      const graphs = l.recorder.graphs;
      l.dispose();
      return { w, lrs, graphs };
    };
    const big = await weights(32);
    const small = await weights(8, 32);
    // The graph step (run without capture on the CPU): its tail adds each batch's gradients to sums of its
    // own. With 24 samples (3 batches) a step, sums are handed over mid-step from the ordinary warm-up steps
    // to the graph's and carried across the epoch's end: the same arithmetic as ordinary accumulation.
    const eager24 = await weights(8, 24);
    const graphed = await weights(8, 24, true);
    expect(graphed.graphs.map((g) => g.steps)).toEqual([1, 4]); // 3 ordinary warm-up steps, then the graph's
    let graphWorst = 0;
    eager24.w.forEach((t, i) => (graphWorst = Math.max(graphWorst, maxRelError(graphed.w[i].v, t.v, 1e-3))));
    expect(graphWorst).toBeLessThan(1e-6);
    expect(graphed.lrs).toEqual(eager24.lrs);
    expect(big.lrs.length).toBe(2);
    expect(small.lrs.length).toBe(8);
    // each group of 4 batches runs at the learning rate of its optimizer step, the big batch's
    for (let k = 0; k < 8; k++) expect(small.lrs[k]).toBeCloseTo(big.lrs[Math.floor(k / 4)], 12);
    // Euclidean over every weight (body and head), and the largest difference within any one tensor over its
    // largest value: Adam divides each step by the root of its squared gradients, so a parameter whose
    // gradients are near zero (BatchNorm biases starting at 0) turns rounding into most of its tiny update;
    // a wrong accumulation (a missing or doubled scale) moves the weights by the size of the training itself
    let worst = 0;
    let num = 0;
    let den = 0;
    let bodyMoved = 0;
    const start = await weights(32, 1 << 20); // never steps: the initial weights
    big.w.forEach((t, i) => {
      worst = Math.max(worst, maxRelError(small.w[i].v, t.v, 1e-3));
      if (t.name.includes('.body.')) bodyMoved = Math.max(bodyMoved, maxRelError(start.w[i].v, t.v, 1e-3));
      for (let k = 0; k < t.v.length; k++) {
        num += (small.w[i].v[k] - t.v[k]) ** 2;
        den += t.v[k] ** 2;
      }
    });
    const rel = Math.sqrt(num / den);
    console.log(`gradient accumulation vs one big batch: ${rel.toExponential(2)} relative over all weights, at most ${worst.toExponential(2)} within a tensor (training moved the body's weights by up to ${bodyMoved.toExponential(2)})`);
    expect(bodyMoved).toBeGreaterThan(1e-3); // (the body trains: BatchNorm held in eval does not cut its gradients)
    expect(rel).toBeLessThan(1e-5);
    expect(worst).toBeLessThan(1e-3);
  });

  it("gradientClip scales the gradients as PyTorch's clip_grad_norm_ does, before the optimizer step, for that fit only", async () => {
    // one batch an epoch (the 32 training images at once) and learning rate 1e-12: one optimizer step whose
    // gradient average (fast.ai's Adam with dampening: (1 - mom) * gradient, mom 0.9 in fit) is saved with the state
    const one = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 32, bs: 32, seed: 3 });
    expect(one.train.length).toBe(1);
    const gradients = async (cbs: Parameters<typeof gradientClip>[0][] | null) => {
      manualSeed(0); // dropout draws from the global generator
      // (on the CPU on every machine: two learners' gradients compared to 1e-5; on CUDA each would autotune its
      // own bf16 kernels. test/cuda.test.ts checks the clip inside the captured step)
      const l = await visionLearner(one, 'resnet18', { pretrained: false, ...quiet, seed: 0, device: 'cpu' });
      await l.fit(1, { lr: 1e-12, cbs: cbs ? cbs.map((o) => gradientClip(o)) : [] });
      const st = (await l.state(true)).filter((t) => t.name.endsWith('.grad_avg'));
      l.dispose();
      return st.map((t) => Float32Array.from(new Float32Array(t.data.slice().buffer), (v) => v / 0.1));
    };
    const plain = await gradients(null);
    const norm = Math.sqrt(plain.reduce((a, g) => a + g.reduce((b, v) => b + v * v, 0), 0));
    expect(norm).toBeGreaterThan(0);
    const maxNorm = norm / 4;
    const clipped = await gradients([{ maxNorm }]);
    // PyTorch's clip_grad_norm_ on the unclipped gradients
    const f = join(dir, 'grads.f32');
    writeFileSync(f, Buffer.concat(plain.map((g) => Buffer.from(g.buffer, g.byteOffset, g.byteLength))));
    runPython(
      `import sys, numpy as np, torch
flat = torch.from_numpy(np.fromfile(sys.argv[1], dtype=np.float32))
sizes = [int(x) for x in sys.argv[3].split(',')]
ps = [torch.nn.Parameter(torch.zeros(n)) for n in sizes]
for p, g in zip(ps, flat.split(sizes)): p.grad = g.clone()
total = torch.nn.utils.clip_grad_norm_(ps, float(sys.argv[2]))
torch.cat([p.grad for p in ps]).numpy().tofile(sys.argv[1] + '.out')
print(float(total))`,
      [f, String(maxNorm), plain.map((g) => g.length).join(',')],
    );
    const ref = readF32(`${f}.out`);
    let k = 0;
    let worst = 0;
    for (const g of clipped) for (const v of g) worst = Math.max(worst, Math.abs(v - ref[k++]));
    expect(k).toBe(ref.length);
    // (relative to the clipped norm, maxNorm: a clip by the wrong norm or a missing clip is off by O(1))
    expect(worst / maxNorm).toBeLessThan(1e-5);
    // above the norm it changes nothing
    const loose = await gradients([{ maxNorm: norm * 4 }]);
    let looseWorst = 0;
    loose.forEach((g, i) => g.forEach((v, j) => (looseWorst = Math.max(looseWorst, Math.abs(v - plain[i][j])))));
    expect(looseWorst / norm).toBeLessThanOrEqual(1e-6);
    expect(() => gradientClip({ maxNorm: 0 })).toThrow(/maxNorm must be a positive number, got 0/);
  });

  it('an AbortSignal stops after the current batch, leaving a usable learner', async () => {
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0 });
    const ac = new AbortController();
    const r = await learn.fitOneCycle(5, { signal: ac.signal, cbs: [{ afterBatch: (b) => void (b.iter === 1 && ac.abort()) }] });
    expect(r.stopped).toBe(true);
    expect(r.epochs).toBe(0);
    expect(learn.recorder.losses.length).toBeLessThan(dls.train.length);
    const v = await learn.validate();
    expect(Number.isFinite(v.valid_loss)).toBe(true);
    learn.dispose();
  });

  it('fineTune: one frozen cycle at slice(base_lr) with pct_start 0.99, then slice(base_lr/2/100, base_lr/2)', async () => {
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0 });
    await learn.fineTune(1, { baseLr: 2e-3 });
    expect(learn.frozenTo).toBe(0);
    const peak = learn.recorder.lrs.reduce((a, r) => (r[2] > a[2] ? r : a));
    lrPerGroup([1e-5, 1e-3], 3).forEach((v, g) => expect(peak[g]).toBeLessThanOrEqual(v * (1 + 1e-9)));
    expect(peak[2]).toBeGreaterThan(1e-3 * 0.9);
    learn.dispose();
  });

  it('class weights and label smoothing change the loss', async () => {
    const base = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0 });
    const weighted = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0, lossFunc: { classWeights: [1, 5], labelSmoothing: 0.1 } });
    const a = (await base.validate()).valid_loss;
    const b = (await weighted.validate()).valid_loss;
    expect(a).not.toBeCloseTo(b, 3);
    await expect(visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, lossFunc: { classWeights: [1] } })).rejects.toThrow(/needs 2 values/);
    base.dispose();
    weighted.dispose();
  });
});
