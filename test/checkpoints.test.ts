// Checkpoints: atomic writes, resume after a kill, resume in the middle of an epoch, save/load round trips.
// Trajectories are compared bit for bit here: the same process, the same BLAS and the same thread count
// repeat a computation exactly (run under OpenBLAS and under the reference BLAS by scripts/test.sh).
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { gradientAccumulation, ImageDataLoaders, readWeightFile, visionLearner, writeWeightFile } from '../src/index.js';
import { finiteWeights, stripesLoaders } from './helpers/fixtures.js';
import { tempDir } from './helpers/python.js';

const ROOT = join(__dirname, '..');
let dir: string;
let dls: ImageDataLoaders;
const quiet = { verbose: false };

beforeAll(async () => {
  dir = tempDir();
  dls = await stripesLoaders(dir);
});

const finite = finiteWeights;

describe('checkpoints and resume', () => {
  it('SIGKILL in the middle of an epoch: the last checkpoint is intact and the fit resumes with the same schedule', async () => {
    const models = join(dir, 'models-kill');
    // node --import tsx (not the tsx CLI, which runs the script in a grandchild that SIGKILL would miss)
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'test', 'helpers', 'train-child.ts'), join(dir, 's'), models], { cwd: ROOT });
    let out = '';
    let first = 0;
    let killed = false;
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d) => {
        out += d;
        // kill half-way through the epoch after 'epoch 1 done' (epochs take as long as the one before)
        const t = (out.match(/epoch (\d) done/g) ?? []).length;
        if (t === 1) first = Date.now();
        if (t === 2 && !killed) {
          killed = true;
          setTimeout(() => { child.kill('SIGKILL'); resolve(); }, Math.max(1, (Date.now() - first) / 2));
        }
      });
      child.on('exit', () => (out.includes('finished') ? reject(new Error('the child finished before it was killed')) : resolve()));
    });
    await new Promise((r) => child.once('close', r));
    expect(out).not.toContain('finished');
    const ck = readWeightFile(join(models, 'run.safetensors')); // never half-written: it parses
    const fit = JSON.parse(ck.metadata.fit);
    expect(fit.epochsDone).toBeGreaterThanOrEqual(1);
    expect(fit.nEpoch).toBe(6);
    console.log(`killed; the last checkpoint is at epoch ${fit.epochsDone}, batch ${fit.batchesDone}`);
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0, modelDir: models });
    const r = await learn.fitOneCycle(6, { resume: 'run' });
    expect(r.epochs).toBe(6 - fit.epochsDone);
    // the schedule goes on where it stopped: the first resumed batch is at position epochsDone/6
    const n = dls.train.length;
    const pos = (fit.epochsDone * n + fit.batchesDone) / (6 * n);
    const top = 1e-3;
    const schedCos = (a: number, b: number, p: number) => a + ((1 + Math.cos(Math.PI * (1 - p))) * (b - a)) / 2;
    const expected = pos < 0.25 ? schedCos(top / 25, top, pos / 0.25) : schedCos(top, top / 1e5, (pos - 0.25) / 0.75);
    expect(learn.recorder.lrs[0][2]).toBeGreaterThan(0);
    expect(Math.abs(learn.recorder.lrs[0][2] - expected) / expected).toBeLessThan(1e-6);
    expect(await finite(learn)).toBe(true);
    expect(JSON.parse(readWeightFile(join(models, 'run.safetensors')).metadata.fit).epochsDone).toBe(6);
    await expect(learn.fitOneCycle(3, { resume: 'run' })).rejects.toThrow(/fit of 6 epochs; this call asks for onecycle over 3/);
    learn.dispose();
  });

  it('resuming in the middle of an epoch gives bit-identical weights to an uninterrupted run (CPU)', async () => {
    const a = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0, modelDir: join(dir, 'ma') });
    await a.fitOneCycle(2, { checkpoint: 'x', checkpointEvery: 2 });
    const b = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0, modelDir: join(dir, 'mb') });
    const ac = new AbortController();
    const rb = await b.fitOneCycle(2, { checkpoint: 'x', checkpointEvery: 2, signal: ac.signal, cbs: [{ afterBatch: (e) => void (e.epoch === 1 && e.iter === 2 && ac.abort()) }] });
    expect(rb.stopped).toBe(true);
    b.dispose();
    const fit = JSON.parse(readWeightFile(join(dir, 'mb', 'x.safetensors')).metadata.fit);
    expect(fit.epochsDone).toBe(1);
    expect(fit.batchesDone).toBeGreaterThan(0);
    const c = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 9, modelDir: join(dir, 'mb') });
    await c.fitOneCycle(2, { resume: 'x', checkpointEvery: 2 });
    const sa = (await a.state(false));
    const sc = (await c.state(false));
    expect(sc.map((t) => t.name)).toEqual(sa.map((t) => t.name));
    sc.forEach((t, i) => expect(Buffer.from(t.data).equals(Buffer.from(sa[i].data)), t.name).toBe(true));
    a.dispose();
    c.dispose();
  });

  it('accumulating gradients, a fit stopped with a step half accumulated resumes to the weights of the fit that ran through', async () => {
    // 4 batches an epoch, an optimizer step every 3: the first epoch ends with one batch's gradients waiting
    // for the next epoch's step, and the checkpoint written then must carry them
    const cbs = () => [gradientAccumulation({ nAcc: 24 })];
    const a = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0, modelDir: join(dir, 'acc-a') });
    await a.fitOneCycle(2, { cbs: cbs() });
    const b = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0, modelDir: join(dir, 'acc-b') });
    const rb = await b.fitOneCycle(2, { checkpoint: 'x', cbs: [...cbs(), { afterEpoch: () => true }] });
    expect(rb.epochs).toBe(1);
    b.dispose();
    const saved = readWeightFile(join(dir, 'acc-b', 'x.safetensors')).tensors;
    expect(saved.some((t) => t.name.startsWith('grad.'))).toBe(true);
    const c = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 9, modelDir: join(dir, 'acc-b') });
    await c.fitOneCycle(2, { resume: 'x', cbs: cbs() });
    const sa = await a.state(false);
    const sc = await c.state(false);
    sc.forEach((t, i) => expect(Buffer.from(t.data).equals(Buffer.from(sa[i].data)), t.name).toBe(true));
    // the fit that ran through ends with two batches waiting, which its state holds; a learner that has none
    // writes none, and loading that clears the waiting ones
    const grads = (ts: { name: string }[]) => ts.filter((t) => t.name.startsWith('grad.')).length;
    const fresh = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 1, modelDir: join(dir, 'acc-a') });
    await fresh.save('none');
    fresh.dispose();
    expect(grads(readWeightFile(join(dir, 'acc-a', 'none.safetensors')).tensors)).toBe(0);
    expect(grads(await a.state(true))).toBeGreaterThan(0);
    await a.load('none');
    expect(grads(await a.state(true))).toBe(0);
    // a waiting gradient that does not fit the network is refused, naming it, and changes nothing
    const f = readWeightFile(join(dir, 'acc-b', 'x.safetensors'));
    const k = f.tensors.findIndex((t) => t.name.startsWith('grad.'));
    const bad = f.tensors.map((t, i) => (i === k ? { ...t, shape: [t.data.byteLength / 4], data: t.data } : t));
    writeWeightFile(join(dir, 'acc-a', 'bad.safetensors'), bad, f.metadata);
    const before = await a.state(true);
    await expect(a.load('bad')).rejects.toThrow(new RegExp(`waiting gradient of '${f.tensors[k].name.slice(5).replace(/\./g, '\\.')}' is not a finite float tensor of the parameter's shape`));
    const after = await a.state(true);
    after.forEach((t, i) => expect(Buffer.from(t.data).equals(Buffer.from(before[i].data)), t.name).toBe(true));
    a.dispose();
    c.dispose();
  });

  it('save and load round-trip the model and optimizer state exactly', async () => {
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0, modelDir: join(dir, 'm2') });
    await learn.fitOneCycle(1);
    const before = (await learn.state(true));
    await learn.save('a');
    await learn.fitOneCycle(1);
    await learn.load('a');
    const after = (await learn.state(true));
    expect(after.map((t) => t.name)).toEqual(before.map((t) => t.name));
    after.forEach((t, i) => expect(Buffer.from(t.data).equals(Buffer.from(before[i].data)), t.name).toBe(true));
    await expect(learn.load('nope')).rejects.toThrow(/no such checkpoint/);
    learn.dispose();
  });
});

