// What a new user relies on: fineTune's schedule, the callback contract, the event loop during a fit, the
// messages for wrong weight files, and the learner refusing what cannot work.
import { cpSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { accuracy, ImageDataLoaders, Learner, metric, Model, precision, saveModel, visionLearner, type BatchInfo } from '../src/index.js';
import { makeStripes } from './helpers/fixtures.js';
import { tempDir } from './helpers/python.js';

let dir: string;
let dls: ImageDataLoaders;
const quiet = { verbose: false };

beforeAll(async () => {
  dir = tempDir();
  await makeStripes(join(dir, 's'), 20, 40, 4);
  dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 32, bs: 8, seed: 3 });
});

describe('fineTune', () => {
  it("gives the frozen stage fast.ai's schedule whatever stage 2's options: first lrs slice(base_lr)/25 = [8e-6, 8e-6, 8e-5]", async () => {
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0 });
    const firstLrs: number[][] = [];
    await learn.fineTune(1, { div: 7, pctStart: 0.5, lrMult: 10, cbs: [{ afterFit: (l) => void firstLrs.push(l.recorder.lrs[0]) }] });
    expect(firstLrs.length).toBe(2); // the callbacks reach both stages
    [8e-6, 8e-6, 8e-5].forEach((v, g) => expect(firstLrs[0][g] / v).toBeCloseTo(1, 9));
    // stage 2: slice(1e-3 / 10, 1e-3) over three groups, divided by the div asked for
    [1e-4, Math.sqrt(1e-4 * 1e-3), 1e-3].forEach((v, g) => expect(firstLrs[1][g] / (v / 7)).toBeCloseTo(1, 9));
    learn.dispose();
  });
});

describe('callbacks', () => {
  it('afterBatch sees every batch once, in order, with the loss the recorder keeps; beforeEpoch/afterEpoch each epoch', async () => {
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0 });
    const seen: BatchInfo[] = [];
    const events: string[] = [];
    await learn.fitOneCycle(2, {
      cbs: [{
        beforeFit: () => void events.push('beforeFit'),
        beforeEpoch: (e) => void events.push(`beforeEpoch ${e.epoch}`),
        afterBatch: (b) => void seen.push(b),
        afterEpoch: (e) => void events.push(`afterEpoch ${e.epoch}`),
        afterFit: () => void events.push('afterFit'),
      }],
    });
    const n = dls.train.length;
    expect(events).toEqual(['beforeFit', 'beforeEpoch 0', 'afterEpoch 0', 'beforeEpoch 1', 'afterEpoch 1', 'afterFit']);
    expect(seen.map((b) => [b.epoch, b.iter])).toEqual([...Array(2 * n).keys()].map((k) => [Math.floor(k / n), k % n]));
    expect(seen.every((b) => b.total === n)).toBe(true);
    // the recorder holds the last epoch; the callback saw the same values
    expect(seen.map((b) => b.loss)).toEqual(Array.from(learn.recorder.rawLosses, (x) => Math.fround(x)));
    expect(seen.map((b) => b.smoothLoss)).toEqual(Array.from(learn.recorder.losses, (x) => Math.fround(x)));
    learn.dispose();
  });

  it('a callback that throws rejects the fit with its error, after the batch in flight; async ones are awaited', async () => {
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0 });
    let calls = 0;
    await expect(learn.fitOneCycle(3, { cbs: [{ afterBatch: () => { calls++; throw new Error('callback failed'); } }] })).rejects.toThrow('callback failed');
    expect(calls).toBe(1); // the first error stops the fit: no more events reach the callbacks
    expect(learn.recorder.values.length).toBe(0); // no epoch finished
    await expect(learn.fit(1, { cbs: [{ afterBatch: async (b) => { if (b.iter === 1) throw new Error('async callback failed'); } }] })).rejects.toThrow('async callback failed');
    await expect(learn.fit(1, { cbs: [{ afterEpoch: () => { throw new Error('epoch callback failed'); } }] })).rejects.toThrow('epoch callback failed');
    // and the learner is usable after each
    const v = await learn.validate();
    expect(Number.isFinite(v.valid_loss)).toBe(true);
    learn.dispose();
  });

  it('an AbortSignal holds across the parts of a checkpointed epoch (checkpointEvery), and lrFind refuses an aborted one', async () => {
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0, modelDir: join(dir, 'models') });
    const ac = new AbortController();
    const r = await learn.fitOneCycle(1, { signal: ac.signal, checkpoint: 'abort', checkpointEvery: 1, cbs: [{ afterBatch: (b) => void (b.iter === 0 && ac.abort()) }] });
    expect(r.stopped).toBe(true);
    // batch 0 trained; at most the part in flight (one batch) after it
    expect(learn.recorder.rawLosses.length).toBeLessThanOrEqual(2);
    expect(learn.recorder.rawLosses.length).toBeLessThan(dls.train.length);
    await expect(learn.lrFind({ signal: ac.signal })).rejects.toThrow(/lrFind: the signal was already aborted/);
    learn.dispose();
  });

  it('saveModel follows the metric\'s own `better`, not its name', async () => {
    // a metric whose name says nothing, lower is better, values 3, 1, 2 by epoch: the best is epoch 1
    let k = 0;
    const values = [3, 1, 2];
    const lines: string[] = [];
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, seed: 0, metrics: [metric('score', () => values[k++], 'lower')], modelDir: join(dir, 'models'), logger: (l) => lines.push(l) });
    await learn.fit(3, { lr: 1e-5, cbs: [saveModel({ monitor: 'score', fname: 'by-score' })] });
    expect(lines.filter((l) => l.startsWith('Better model found')).map((l) => l.match(/epoch (\d)/)![1])).toEqual(['0', '1']);
    learn.dispose();
  });

  it('the event loop keeps running during a fit whose callbacks save (largest timer gap under 100 ms)', async () => {
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0, modelDir: join(dir, 'models') });
    let last = performance.now();
    let worst = 0;
    const timer = setInterval(() => {
      const now = performance.now();
      worst = Math.max(worst, now - last);
      last = now;
    }, 10);
    const saves: Promise<string>[] = [];
    try {
      await learn.fitOneCycle(2, {
        cbs: [{ afterBatch: (b) => void (b.iter % 2 === 0 && saves.push(learn.save(`batch-${b.epoch}-${b.iter}`))), afterEpoch: async (e) => void (await learn.save(`epoch-${e.epoch}`)) }],
      });
      await Promise.all(saves);
    } finally {
      clearInterval(timer);
    }
    expect(saves.length).toBeGreaterThan(2);
    expect(readdirSync(join(dir, 'models')).filter((f) => f.startsWith('batch-')).length).toBe(saves.length);
    console.log(`largest event-loop gap during a fit with saves: ${worst.toFixed(1)} ms`);
    expect(worst).toBeLessThan(100);
    // what would wait for the network on the JavaScript thread refuses during an epoch instead
    let refused = '';
    await learn.fit(1, { lr: 1e-5, cbs: [{ afterBatch: () => { try { learn.freezeTo(1); } catch (e) { refused = (e as Error).message; } } }] });
    expect(refused).toMatch(/freezeTo: a training epoch is running; call it from afterEpoch or after the fit/);
    learn.dispose();
  });
});

describe('the public surface', () => {
  it('the entry exports the library; the covid helpers, the trace tools and the HTTP server are subpath exports; Symbol.dispose frees', async () => {
    const lib: Record<string, unknown> = await import('../src/index.js');
    for (const name of ['readCovidMetadata', 'segregateByLabel', 'compareTraces', 'readTrace', 'torchlearnServe', 'createServer', 'serve', 'hooks']) expect(name in lib, name).toBe(false);
    const covid = await import('../src/datasets/covid.js');
    const bench = await import('../src/bench.js');
    const serving = await import('../src/serving/index.js');
    expect([typeof covid.readCovidMetadata, typeof covid.segregateByLabel, typeof bench.readTrace, typeof serving.torchlearnServe]).toEqual(['function', 'function', 'function', 'function']);
    const pkg = JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8'));
    expect(Object.keys(pkg.exports)).toEqual(['.', './datasets/covid', './bench', './serving']);
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet });
    learn[Symbol.dispose]();
    await expect(learn.validate()).rejects.toThrow(/disposed/);
  });
});

describe('what cannot work is refused up front', () => {
  it("a binary metric on three classes is refused when the learner is made, naming sklearn's averages", async () => {
    const d3 = join(dir, 's3');
    cpSync(join(dir, 's'), d3, { recursive: true });
    cpSync(join(d3, 'horizontal'), join(d3, 'third'), { recursive: true });
    const dls3 = await ImageDataLoaders.fromFolder(d3, { size: 32, presize: 32, bs: 8 });
    await expect(visionLearner(dls3, 'resnet18', { pretrained: false, ...quiet, metrics: [accuracy(), precision()] })).rejects.toThrow(/average 'binary' .* these data have 3\. Pass \{ average: 'macro' \}/);
    const ok = await visionLearner(dls3, 'resnet18', { pretrained: false, ...quiet, metrics: [precision({ average: 'macro' })] });
    ok.dispose();
  });

  it('weights of another architecture: at most 10 keys of each kind with the count, and only options visionLearner takes', async () => {
    const r34 = new Model('resnet34');
    const path = join(dir, 'r34.pth');
    r34.saveWeights(path);
    r34.dispose();
    let msg = '';
    try {
      await visionLearner(dls, 'resnet18', { ...quiet, pretrained: path });
    } catch (e) {
      msg = (e as Error).message;
    }
    expect(msg).toMatch(/r34\.pth does not match this network/);
    const unexpected = msg.match(/unexpected keys \((\d+)\): ([^\n]*)/)!;
    expect(Number(unexpected[1])).toBeGreaterThan(10);
    expect(unexpected[2].split(', ').length).toBe(11); // ten names and "... and N more"
    expect(unexpected[2]).toMatch(new RegExp(`\\.\\.\\. and ${Number(unexpected[1]) - 10} more$`));
    expect(msg).toMatch(/resnet18-f37072fd\.pth for a resnet18/);
    expect(msg).toMatch(/pretrained: false trains from scratch/);
    expect(msg).not.toMatch(/skipClassifier|strict/);
    // Model.loadWeights takes those options, and says so
    const m = new Model('resnet18');
    expect(() => m.loadWeights(path)).toThrow(/skipClassifier: true/);
    m.dispose();
  });

  it('an export or checkpoint given as weights is named for what it is', async () => {
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0, modelDir: join(dir, 'models') });
    const exp = await learn.export(join(dir, 'e.safetensors'));
    const ck = await learn.save('ck');
    learn.dispose();
    await expect(visionLearner(dls, 'resnet18', { ...quiet, pretrained: exp })).rejects.toThrow(/is a torchlearn export \(written by learn\.export\(\) for a resnet18\): load it with loadLearner/);
    await expect(visionLearner(dls, 'resnet18', { ...quiet, pretrained: ck })).rejects.toThrow(/is a torchlearn checkpoint \(written by learn\.save\(\) for a resnet18\): load it with learn\.load/);
    expect(() => new Model('resnet18').loadWeights(exp)).toThrow(/is a torchlearn export/);
  });

  it('training from scratch is said explicitly (pretrained: false) and logs nothing about weights; new Learner() takes a path or false', async () => {
    const lines: string[] = [];
    (await visionLearner(dls, 'resnet34', { pretrained: false, logger: (l) => lines.push(l) })).dispose();
    expect(lines.filter((l) => /scratch|pretrained|weights/.test(l))).toEqual([]);
    expect(() => new Learner(dls, 'resnet18', { ...quiet, pretrained: true })).toThrow(/new Learner\(\) takes the weights' path or false; visionLearner\(\) finds torchvision's weights/);
  });
});
