import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { hooks, setBatchNormKernels } from '../src/hooks.js';
import { accuracy, DEFAULTS, ImageDataLoaders, lrPerGroup, manualSeed, setNumThreads, torchInfo, visionLearner, writeWeightFile, type Learner, type NamedTensor } from '../src/index.js';
import { adamCase } from './helpers/adam.js';
import { makeStripes } from './helpers/fixtures.js';
import { runPython, tempDir } from './helpers/python.js';

// fast.ai's formulas, written out here as the reference (schedule.py)
const schedCos = (start: number, end: number, pos: number) => start + ((1 + Math.cos(Math.PI * (1 - pos))) * (end - start)) / 2;
const combinedCos = (pct: number, start: number, middle: number, end: number) => (pos: number) =>
  pos < pct ? schedCos(start, middle, pos / pct) : schedCos(middle, end, (pos - pct) / (1 - pct));

let dir: string;
let dls: ImageDataLoaders;
const quiet = { verbose: false };

beforeAll(async () => {
  dir = tempDir();
  await makeStripes(join(dir, 'stripes'), 24, 48);
  dls = await ImageDataLoaders.fromFolder(join(dir, 'stripes'), { size: 32, presize: 40, bs: 8, seed: 3 });
});

async function sameBytes(a: Learner, b: Awaited<ReturnType<Learner['state']>>) {
  const now = await a.state(true);
  expect(now.map((t) => t.name)).toEqual(b.map((t) => t.name));
  now.forEach((t, i) => expect(Buffer.from(t.data).equals(Buffer.from(b[i].data)), t.name).toBe(true));
}

describe('schedules', () => {
  it('slice semantics: number, slice(b), slice(a, b)', () => {
    expect(lrPerGroup(1e-3, 3)).toEqual([1e-3, 1e-3, 1e-3]);
    expect(lrPerGroup([1e-3], 3)).toEqual([1e-4, 1e-4, 1e-3]);
    const s = lrPerGroup([1e-6, 1e-4], 3);
    [1e-6, 1e-5, 1e-4].forEach((v, i) => expect(s[i]).toBeCloseTo(v, 15));
    expect(() => lrPerGroup(-1, 3)).toThrow(/positive/);
  });

  it("fitOneCycle's per-batch lr and momentum equal fast.ai's combined_cos over the whole run (1e-9), and PyTorch's OneCycleLR closely", async () => {
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0 });
    const lrMax: [number, number] = [1e-5, 1e-3];
    await learn.fitOneCycle(2, { lrMax });
    const groups = lrPerGroup(lrMax, 3);
    const n = learn.recorder.lrs.length;
    expect(n).toBe(2 * dls.train.length);
    let worst = 0;
    learn.recorder.lrs.forEach((row, i) => {
      groups.forEach((top, g) => {
        const ref = combinedCos(0.25, top / 25, top, top / 1e5)(i / n);
        worst = Math.max(worst, Math.abs(row[g] - ref) / ref);
      });
      const m = combinedCos(0.25, 0.95, 0.85, 0.95)(i / n);
      expect(Math.abs(learn.recorder.moms[i] - m)).toBeLessThan(1e-12);
    });
    expect(worst).toBeLessThan(1e-9);
    // PyTorch's OneCycleLR as a second reference, over a 1000-batch run of the same native schedule
    // (it places the phase boundary one step earlier: a discretisation difference)
    const steps = 1000;
    const pos = Float64Array.from({ length: steps }, (_, i) => i / steps);
    const ours = hooks.scheduleValues({ kind: 'onecycle', lrMax: [lrMax[1]], div: 25, divFinal: 1e5, pctStart: 0.25, moms: DEFAULTS.moms }, 1, pos);
    const torchLrs = JSON.parse(
      runPython(`import sys, json, torch
n, top = int(sys.argv[1]), float(sys.argv[2])
opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=top)
s = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=top, total_steps=n, pct_start=0.25, div_factor=25, final_div_factor=4000, anneal_strategy='cos', cycle_momentum=False)
out = []
for i in range(n):
    out.append(opt.param_groups[0]['lr']); opt.step(); s.step()
print(json.dumps(out))`, [String(steps), String(lrMax[1])]),
    ) as number[];
    const diff = Math.max(...torchLrs.map((v, i) => Math.abs(v - ours.lrs[i]) / lrMax[1]));
    console.log(`largest difference from PyTorch OneCycleLR over ${steps} batches: ${(diff * 100).toFixed(3)}% of lrMax`);
    expect(torchLrs[0]).toBeCloseTo(ours.lrs[0], 12);
    expect(diff).toBeLessThan(0.01);
    learn.dispose();
  });

  it('flat-cos and constant schedules', () => {
    const pos = Float64Array.from([0, 0.5, 0.74, 0.8, 0.99]);
    const f = hooks.scheduleValues({ kind: 'flatcos', lrMax: [1e-3], divFinal: 1e5, pctStart: 0.75, moms: [0.9, 0.9, 0.9] }, 1, pos);
    pos.forEach((p, i) => expect(f.lrs[i]).toBeCloseTo(combinedCos(0.75, 1e-3, 1e-3, 1e-8)(p), 15));
    const c = hooks.scheduleValues({ kind: 'constant', lrMax: [2e-3, 1e-3], moms: [0.9, 0.9, 0.9] }, 2, pos);
    expect(Array.from(c.lrs.slice(0, 2))).toEqual([2e-3, 1e-3]);
  });
});

describe("fast.ai's Adam", () => {
  it('matches the reference formula to 1e-6 over 20 steps with changing beta1 and weight decay, no decay on norm/bias (fused CPU loop, _foreach kernels, the CUDA-graph step)', () => {
    const c = adamCase();
    // both implementations: the one-pass CPU loop, and the _foreach kernels (what CUDA runs)
    // and the captured step (scalars read from a tensor, computed ahead for the whole run)
    for (const [fused, graph, what] of [[true, false, 'fused CPU loop'], [false, false, '_foreach kernels'], [false, true, 'CUDA-graph step']] as const) {
      const out = hooks.fastAdamSteps({ ...c.input, sqrMom: DEFAULTS.sqrMom, eps: DEFAULTS.eps, fused, graph });
      expect(c.worst(out), what).toBeLessThan(1e-6);
    }
    expect(DEFAULTS.sqrMom).toBe(0.99);
    expect(DEFAULTS.eps).toBe(1e-5);
  });

  it("is PyTorch's AdamW with beta1 = the momentum of each step, term for term (what the fusedAdam option relies on: PyTorch's fused kernel computes AdamW)", () => {
    // torch.optim.AdamW in float64, its betas, lr and weight decay set before every step as fitOneCycle's
    // schedule sets fast.ai's; the norm/bias parameter in a group without weight decay
    const c = adamCase();
    const file = join(tempDir(), 'adam.json');
    writeFileSync(file, JSON.stringify(c.plain));
    const out = JSON.parse(runPython(`import sys, json, torch
case = json.load(open(sys.argv[1]))
ps = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in case['params']]
groups = [{'params': [p], 'weight_decay': 0.0} for p in ps]
opt = torch.optim.AdamW(groups, lr=1.0, betas=(0.9, ${DEFAULTS.sqrMom}), eps=${DEFAULTS.eps}, foreach=False)
for s in case['steps']:
    for p, g, nd, group in zip(ps, s['grads'], case['noDecay'], opt.param_groups):
        p.grad = torch.tensor(g, dtype=torch.float64)
        group.update(lr=s['lr'], betas=(s['mom'], ${DEFAULTS.sqrMom}), weight_decay=0.0 if nd else s['wd'])
    opt.step()
print(json.dumps([p.detach().tolist() for p in ps]))`, [file])) as number[][];
    let worst = 0;
    out.forEach((p, i) => p.forEach((v, j) => (worst = Math.max(worst, Math.abs(v - c.ref[i][j])))));
    console.log(`fast.ai's Adam against torch.optim.AdamW (float64, 20 steps): max difference ${worst.toExponential(2)}`);
    expect(worst).toBeLessThan(1e-12);
  });
});

describe('freeze, unfreeze, lrFind', () => {
  let weights: string;
  beforeAll(() => {
    weights = join(dir, 'r18.pth');
    runPython(`import sys, torch, torchvision
torch.manual_seed(0); torch.save(torchvision.models.resnet18().state_dict(), sys.argv[1])`, [weights]);
  });

  it('pretrained: frozen body except BatchNorm; unfreeze trains everything; a frozen conv is bit-identical after an epoch, a BN weight is not', async () => {
    const learn = await visionLearner(dls, 'resnet18', { ...quiet, pretrained: weights, seed: 0 });
    const all = learn.net.paramTable();
    const trainable = learn.trainableParams().map((p) => p.name);
    const expected = all.filter((p) => p.name.startsWith('head.') || p.isNorm).map((p) => p.name);
    expect(trainable).toEqual(expected);
    expect(trainable).toContain('body.bn1.weight');
    expect(trainable).not.toContain('body.conv1.weight');
    const get = async (name: string) => Buffer.from((await learn.state(false)).find((t) => t.name === `model.${name}`)!.data);
    const conv = await get('body.layer1.0.conv1.weight');
    const bn = await get('body.layer1.0.bn1.weight');
    const headW = await get('head.4.weight');
    await learn.fitOneCycle(1, { lrMax: 1e-2 });
    expect((await get('body.layer1.0.conv1.weight')).equals(conv)).toBe(true);
    expect((await get('body.layer1.0.bn1.weight')).equals(bn)).toBe(false);
    expect((await get('head.4.weight')).equals(headW)).toBe(false);
    learn.unfreeze();
    expect(learn.trainableParams().length).toBe(all.length);
    learn.freezeTo(-2);
    expect(new Set(learn.trainableParams().filter((p) => !learn.net.paramTable().find((q) => q.name === p.name)!.isNorm).map((p) => p.group))).toEqual(new Set([1, 2]));
    learn.dispose();
  });

  it('lrFind leaves weights, optimizer state and random state bit-identical; suggestions lie inside the ramp', async () => {
    const learn = await visionLearner(dls, 'resnet18', { ...quiet, pretrained: weights, seed: 0 });
    await learn.fitOneCycle(1); // so that there is optimizer state to preserve
    const before = (await learn.state(true));
    expect(before.some((t) => t.name.startsWith('opt.'))).toBe(true);
    const r = await learn.lrFind({ numIt: 20, stopDiv: false });
    expect(r.lrs.length).toBe(20);
    expect(r.lrs[0]).toBeCloseTo(1e-7, 20);
    for (let i = 1; i < r.lrs.length; i++) expect(r.lrs[i] / r.lrs[i - 1]).toBeCloseTo((10 / 1e-7) ** (1 / 20), 9);
    for (const v of Object.values(r.suggestions)) {
      expect(v).toBeGreaterThanOrEqual(1e-8);
      expect(v).toBeLessThanOrEqual(10);
    }
    await sameBytes(learn, before);
    const png = join(dir, 'lr.png');
    const size = await r.plot(png);
    expect(size.width).toBeGreaterThan(300);
    learn.dispose();
  });
});

describe('learning', () => {
  it('a ResNet from scratch tells stripes apart: validation accuracy >= 0.95 on the CPU', async () => {
    await makeStripes(join(dir, 'stripes-big'), 50, 48, 11);
    const d = await ImageDataLoaders.fromFolder(join(dir, 'stripes-big'), { size: 32, presize: 40, bs: 16, seed: 5, validPct: 0.2 });
    const learn = await visionLearner(d, 'resnet18', { pretrained: false, ...quiet, metrics: [accuracy()], seed: 0 });
    const r = await learn.fitOneCycle(8, { lrMax: 5e-3 });
    const acc = r.values.at(-1)![2];
    console.log(`stripes: valid accuracy ${acc} after ${r.epochs} epochs (${r.seconds.toFixed(1)} s)`);
    expect(acc).toBeGreaterThanOrEqual(0.95);
    learn.dispose();
  });
});

describe('BatchNorm folded into the convolutions for evaluation (the CPU default)', () => {
  it('predicts what the unfolded network predicts, and follows the weights through training, lrFind and loads', async () => {
    const folded = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0, modelDir: join(dir, 'fold') });
    const plain = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0, foldBatchNorm: false });
    const agree = async (what: string) => {
      const a = await folded.getPreds();
      const b = await plain.getPreds();
      const worst = Math.max(...a.probs.map((p, i) => Math.abs(p - b.probs[i])));
      expect(worst, what).toBeLessThan(1e-5);
      return a.probs;
    };
    const before = await agree('before training');
    // training never folds; the folded copies must follow the new weights (two learners' fits differ, as
    // dropout draws from the global generator, so the unfolded one takes the trained weights by a load)
    await folded.fitOneCycle(1, { lrMax: 5e-3 });
    await plain.load(await folded.save(join(dir, 'fold', 'trained.safetensors')));
    const after = await agree('after an epoch');
    expect(Math.max(...after.map((p, i) => Math.abs(p - before[i])))).toBeGreaterThan(1e-3);
    await folded.lrFind({ numIt: 8 }); // trains, then puts every weight back
    await agree('after lrFind');
    // a load replaces the weights under the folded copies
    await plain.fitOneCycle(1, { lrMax: 5e-3 });
    const ck = await plain.save(join(dir, 'fold', 'other.safetensors'));
    await folded.load(ck);
    await agree('after a load');
    folded.dispose();
    plain.dispose();
  });
});

describe('batchNorm kernels and fusedAdam on the CPU', () => {
  it("change nothing there: cuDNN's BatchNorm is for bf16 CUDA batches (the blocks fall back to ATen's BatchNorm, add and ReLU), the fused AdamW kernel for CUDA", async () => {
    // (the GPU side is test/cuda.test.ts; this runs the default's fallback path, which every CPU fit takes,
    // against ATen's kernels chosen outright)
    const losses: number[][] = [];
    for (const { batchNorm, ...opts } of [{}, { batchNorm: 'aten' as const }, { fusedAdam: true }]) {
      manualSeed(0); // dropout draws from the global generator
      const l = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0, ...opts });
      if (batchNorm) setBatchNormKernels(l, batchNorm);
      await l.fitOneCycle(1, { lrMax: 5e-3 });
      losses.push(l.recorder.rawLosses.slice());
      l.dispose();
    }
    expect(losses[0].length).toBeGreaterThan(0);
    const bad = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet });
    expect(() => setBatchNormKernels(bad, 'fused' as 'aten')).toThrow(/batchNorm must be one of 'aten', 'cudnn-fused', got 'fused'/);
    bad.dispose();
    await expect(visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, fusedAdam: 'yes' as unknown as boolean })).rejects.toThrow(/fusedAdam must be true or false, got "yes"/);
    for (const other of losses.slice(1)) {
      expect(other.length).toBe(losses[0].length);
      expect(Math.max(...other.map((v, i) => Math.abs(v - losses[0][i])))).toBeLessThan(1e-6);
    }
  });
});

describe('native threads', () => {
  it("a learner's epochs all run on one persistent native thread (LibTorch's per-thread caches survive); on the CPU every network shares it", async () => {
    // cuDNN caches its execution plans per thread: a fresh thread per call autotuned every convolution at
    // every epoch and validation on the GPU. On the CPU one thread serves all networks, so that there is one
    // OpenMP team (see cpuWorker in native/common.h). This pins the design down on any machine.
    const a = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0 });
    const b = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 0 });
    await a.fitOneCycle(2, { profile: true });
    const threads = a.recorder.profiles.map((p) => p.thread); // the recorder starts afresh with each fit
    await a.validate();
    await a.fitOneCycle(1, { profile: true });
    threads.push(a.recorder.profiles[0].thread);
    await b.fitOneCycle(1, { profile: true });
    expect(threads.length).toBe(3);
    expect(new Set(threads).size).toBe(1);
    // (on a GPU machine these learners are on CUDA, where each network keeps a thread of its own)
    if (a.device === 'cpu') expect(b.recorder.profiles[0].thread).toBe(threads[0]);
    else expect(b.recorder.profiles[0].thread).not.toBe(threads[0]);
    a.dispose();
    b.dispose();
  });

  it('one OpenMP team: the JavaScript thread runs LibTorch on one thread, the CPU worker on the configured count, which setNumThreads changes', () => {
    const n = torchInfo().threads;
    expect(hooks.threadInfo()).toEqual({ js: 1, cpuWorker: n });
    setNumThreads(1);
    expect(hooks.threadInfo()).toEqual({ js: 1, cpuWorker: 1 });
    expect(torchInfo().threads).toBe(1);
    setNumThreads(n);
    expect(hooks.threadInfo()).toEqual({ js: 1, cpuWorker: n });
  });
});

describe('the captured training step (cudaGraph)', () => {
  it('computes what the ordinary step computes, to float rounding: over fits, a freeze and a new schedule (CPU: the graph step runs without capture)', async () => {
    // The two steps order some float operations differently (their buffers differ too, and OpenBLAS's
    // results differed more than the reference BLAS's here), so the runs drift apart by rounding, and small batches through
    // BatchNorm amplify that from step to step: how far depends on the machine. What holds everywhere: the
    // graph step ends no farther from the ordinary step than the ordinary step ends from itself when its
    // starting weights move by one float rounding (a control run). An optimizer reading another step's
    // scalars ends about 5e-2 of the training's movement apart, far outside both.
    await makeStripes(join(dir, 'stripes64'), 40, 64);
    const small = await ImageDataLoaders.fromFolder(join(dir, 'stripes64'), { size: 64, presize: 72, bs: 16, seed: 3 });
    // one after the other: the seed also resets LibTorch's global generator, which draws the dropout masks
    let init: NamedTensor[] = [];
    const firstFit = new Map<string, number[]>();
    const train = async (cudaGraph: boolean, perturb = false) => {
      const learn = await visionLearner(small, 'resnet18', { pretrained: false, ...quiet, seed: 5, cudaGraph });
      if (!cudaGraph && !perturb) init = await learn.state(false);
      if (perturb) {
        // every weight moved by one float32 rounding, alternately up and down
        const moved = init.map((t) => {
          if (t.dtype !== 'F32') return t;
          const v = Float32Array.from(f32(t), (x, k) => x * (1 + (k % 2 ? 1 : -1) * 2 ** -23));
          return { ...t, data: new Uint8Array(v.buffer) };
        });
        const file = join(dir, 'perturbed.safetensors');
        writeWeightFile(file, moved, { format: 'torchlearn-checkpoint', arch: 'resnet18' });
        await learn.load(file, { withOpt: false });
      }
      await learn.fitOneCycle(2, { lrMax: 1e-4 });
      firstFit.set(cudaGraph ? 'graph' : perturb ? 'control' : 'plain', [...learn.recorder.rawLosses]);
      learn.freeze();
      await learn.fitOneCycle(1, { lrMax: 1e-4 });
      return learn;
    };
    const f32 = (t: NamedTensor) => new Float32Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.byteLength));
    const plain = await train(false);
    const graph = await train(true);
    const control = await train(false, true);
    // the recorder holds the last fit: one epoch after the freeze, 3 warm-up steps then the graph's
    const nIter = graph.recorder.iters[0];
    expect(nIter).toBeGreaterThan(3);
    expect(graph.recorder.graphs).toEqual([{ steps: nIter - 3, captured: false }]);
    expect(plain.recorder.graphs).toEqual([]);
    const distance = async (other: Learner) => {
      const a = plain.recorder.rawLosses;
      const b = other.recorder.rawLosses;
      expect(b.length).toBe(a.length);
      const losses = Math.max(...b.map((l, i) => Math.abs(l - a[i]) / Math.abs(a[i])));
      // the weights: how far the two runs ended apart, against how far training moved them
      const wa = await plain.state(false);
      const wb = await other.state(false);
      let apart = 0, moved = 0, compared = 0;
      wa.forEach((t, i) => {
        if (t.dtype !== 'F32') return;
        expect(wb[i].name).toBe(t.name);
        const x = f32(t), y = f32(wb[i]), z = f32(init[i]);
        for (let k = 0; k < x.length; k++) {
          apart += Math.abs(x[k] - y[k]);
          moved += Math.abs(x[k] - z[k]);
        }
        compared++;
      });
      expect(compared).toBeGreaterThan(50);
      expect(moved).toBeGreaterThan(0);
      return { losses, weights: apart / moved };
    };
    const rel = (x: number[]) => x.map((l, i) => (Math.abs(l - firstFit.get('plain')![i]) / l).toExponential(1)).join(' ');
    console.log(`first fit, per step: graph ${rel(firstFit.get('graph')!)}\ncontrol ${rel(firstFit.get('control')!)}`);
    // The first fit step by step: the 3 warm-up steps are ordinary steps (the same losses through step 3),
    // and the loss after the first graph step is where a step computing something else would show first,
    // before any drift (measured 1e-7 apart with either BLAS).
    const p0 = firstFit.get('plain')!;
    const g0 = firstFit.get('graph')!;
    for (let i = 0; i <= 3; i++) expect(Math.abs(g0[i] - p0[i]) / p0[i], `warm-up step ${i}`).toBeLessThan(1e-6);
    expect(Math.abs(g0[4] - p0[4]) / p0[4], 'after the first graph step').toBeLessThan(1e-5);
    const g = await distance(graph);
    const c = await distance(control);
    const fmt = (d: { losses: number; weights: number }) => `losses ${d.losses.toExponential(2)} apart (relative), weights ${d.weights.toExponential(2)} of training's movement`;
    console.log(`graph step vs ordinary step: ${fmt(g)}\ncontrol (ordinary step, weights moved by one rounding): ${fmt(c)}`);
    // the control drifts too (else this machine rounds identically and the bound below is the floor)
    expect(g.weights).toBeLessThan(Math.max(10 * c.weights, 1e-4));
    expect(g.losses).toBeLessThan(Math.max(10 * c.losses, 1e-4));
    expect(g.weights).toBeLessThan(1e-2);
    plain.dispose();
    graph.dispose();
    control.dispose();
  });

  it("steps every parameter when its warm-up ends at an epoch's end (one batch an epoch: the capture finds the gradients cleared)", async () => {
    await makeStripes(join(dir, 'stripes-one'), 16, 40, 3);
    const one = await ImageDataLoaders.fromFolder(join(dir, 'stripes-one'), { size: 32, presize: 32, bs: 64, seed: 3, augment: false });
    expect(one.train.length).toBe(1);
    const run = async (cudaGraph: boolean) => {
      const learn = await visionLearner(one, 'resnet18', { pretrained: false, ...quiet, seed: 0, cudaGraph, head: { ps: 0 } });
      await learn.fit(6, { lr: 1e-3 });
      const st = await learn.state(true);
      const graphs = learn.recorder.graphs.map((g) => g.steps);
      learn.dispose();
      const steps = st.filter((t) => t.name.endsWith('.step')).map((t) => Number(new BigInt64Array(t.data.slice().buffer)[0]));
      const avgs = st.filter((t) => t.name.endsWith('.grad_avg')).map((t) => new Float32Array(t.data.slice().buffer));
      return { steps, avgs, graphs };
    };
    const plain = await run(false);
    const graph = await run(true);
    expect(graph.graphs).toEqual([0, 0, 0, 1, 1, 1]);
    let num = 0;
    let den = 0;
    graph.avgs.forEach((a, i) => a.forEach((v, k) => ((num += (v - plain.avgs[i][k]) ** 2), (den += plain.avgs[i][k] ** 2))));
    console.log(`one batch an epoch: Adam's steps ${[...new Set(graph.steps)]} with the graph; its gradient average ${Math.sqrt(num / den).toExponential(2)} from the ordinary steps'`);
    expect(new Set(graph.steps)).toEqual(new Set([6])); // (a capture that planned no parameter left them at 3)
    expect(Math.sqrt(num / den)).toBeLessThan(1e-3);
  });

  it('a stopped fit lets its graph go: the next fit warms up again', async () => {
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 2, cudaGraph: true });
    const stop = new AbortController();
    const r = await learn.fitOneCycle(3, { signal: stop.signal, cbs: [{ afterBatch: (e) => { if (e.epoch === 1 && e.iter >= 1) stop.abort(); } }] });
    expect(r.stopped).toBe(true);
    await learn.fitOneCycle(1);
    expect(learn.recorder.graphs.map((g) => g.steps)).toEqual([learn.recorder.iters[0] - 3]);
    learn.dispose();
  });

  it('a fit of several epochs keeps one graph: only the first epoch warms up', async () => {
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, ...quiet, seed: 1, cudaGraph: true });
    await learn.fitOneCycle(3);
    const n = learn.recorder.iters[0];
    expect(learn.recorder.graphs.map((g) => g.steps)).toEqual([n - 3, n, n]);
    learn.dispose();
  });
});
