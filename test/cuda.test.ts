// CUDA checks: they run where LibTorch has CUDA (scripts/gpu-check.sh on the GPU machine) and are
// skipped here with the reason printed.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { hooks, setBatchNormEval, setBatchNormKernels, type BatchNormKernels } from '../src/hooks.js';
import { accuracy, DEFAULTS, gradientAccumulation, gradientClip, ImageDataLoaders, loadLearner, readWeightFile, resnet50, torchInfo, visionLearner, type Arch, type Prediction } from '../src/index.js';
import { readTrace } from '../src/bench.js';
import { adamCase } from './helpers/adam.js';
import { finiteWeights, makeStripes } from './helpers/fixtures.js';
import { maxRelError, tempDir } from './helpers/python.js';

const cuda = torchInfo().cuda;
// what a learner that learns reaches on the stripes' 20 validation images after 6-8 epochs: two learners of
// the same options and seed ended at 0.9 and 1 in one H200 call (the cudaGraph and fusedAdam tests of
// docs/bench/h200-run9-cuda-tests.log; each autotunes its own bf16 convolutions, so their runs drift apart),
// while one that does not learn stays near 0.5
const STRIPES_ACCURACY = 0.9;

function worstDiff(a: Prediction[], b: Prediction[]): number {
  let worst = 0;
  a.forEach((p, i) => p.probs.forEach((v, k) => (worst = Math.max(worst, Math.abs(v - b[i].probs[k])))));
  return worst;
}
// The largest difference between the validation probabilities of a checkpoint loaded on the CPU and on CUDA
// in fp32
async function cpuVsCudaFp32(dls: ImageDataLoaders, arch: Arch, ckpt: string): Promise<number> {
  const onCpu = await visionLearner(dls, arch, { pretrained: false, verbose: false, device: 'cpu' });
  const onGpu = await visionLearner(dls, arch, { pretrained: false, verbose: false, device: 'cuda', precision: 'fp32' });
  await onCpu.load(ckpt);
  await onGpu.load(ckpt);
  const a = await onCpu.getPreds();
  const b = await onGpu.getPreds();
  let worst = 0;
  a.probs.forEach((p, i) => (worst = Math.max(worst, Math.abs(p - b.probs[i]))));
  onCpu.dispose();
  onGpu.dispose();
  return worst;
}
if (!cuda) console.log('CUDA tests skipped: this LibTorch has no CUDA (they run in scripts/gpu-check.sh on a GPU machine)');

describe.skipIf(!cuda)('CUDA', () => {
  it('afterBatch sees every batch once, in order, with the losses the recorder keeps, as on the CPU (the graph step too)', async () => {
    const dir = tempDir();
    await makeStripes(join(dir, 's'), 40, 48, 3);
    // 64 training images at batch 2: 32 batches an epoch, past the 25 after which a CUDA epoch reads its losses
    const dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 40, bs: 2, seed: 1, validPct: 0.2 });
    for (const cudaGraph of [false, true]) {
      const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, device: 'cuda', cudaGraph });
      const seen: [number, number, number][] = [];
      await learn.fitOneCycle(2, { cbs: [{ afterBatch: (b) => void seen.push([b.epoch, b.iter, b.loss]) }] });
      const n = dls.train.length;
      expect(n).toBeGreaterThan(25);
      expect(seen.map(([e, i]) => [e, i])).toEqual([...Array(2 * n).keys()].map((k) => [Math.floor(k / n), k % n]));
      // the recorder keeps the whole fit's losses
      expect(seen.map(([, , l]) => l)).toEqual(Array.from(learn.recorder.rawLosses, (x) => Math.fround(x)));
      learn.dispose();
    }
  });

  it('resnet50 forward on CUDA matches the CPU', async () => {
    const m = resnet50({ numClasses: 10 });
    const x = Float32Array.from({ length: 2 * 3 * 96 * 96 }, (_, i) => Math.sin(i));
    const cpu = await m.forward(x, [2, 3, 96, 96]);
    m.to('cuda');
    expect(m.device).toBe('cuda:0');
    const gpu = await m.forward(x, [2, 3, 96, 96]);
    const err = maxRelError(gpu.data, cpu.data);
    console.log(`resnet50 CUDA vs CPU: max relative error ${err.toExponential(2)} (cuDNN may use TF32)`);
    expect(err).toBeLessThan(5e-3);
    m.dispose();
  });

  it('trains on CUDA (bf16 autocast, channels_last): learns the stripes; fp32 CPU and CUDA predictions of the same weights agree', async () => {
    const dir = tempDir();
    await makeStripes(join(dir, 's'), 50, 48, 11);
    const dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 40, bs: 16, seed: 5 });
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, metrics: [accuracy()], seed: 0, device: 'cuda' });
    expect(learn.bf16).toBe(true);
    const r = await learn.fitOneCycle(8, { lrMax: 5e-3 });
    console.log(`CUDA stripes accuracy ${r.values.at(-1)![2]}`);
    expect(r.values.at(-1)![2]).toBeGreaterThanOrEqual(STRIPES_ACCURACY);
    const worst = await cpuVsCudaFp32(dls, 'resnet18', await learn.save(join(dir, 'ck.safetensors')));
    console.log(`CPU vs CUDA fp32 probabilities: max abs difference ${worst.toExponential(2)}`);
    expect(worst).toBeLessThan(1e-2);
    learn.dispose();
  });

  it('every family beyond ResNet trains on CUDA (bf16, channels_last, the captured step), and fp32 CUDA predictions of the trained weights agree with the CPU', async () => {
    const dir = tempDir();
    await makeStripes(join(dir, 's'), 24, 48, 7);
    const dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 40, bs: 8, seed: 2 });
    for (const arch of ['resnext50_32x4d', 'densenet121', 'efficientnet_b0', 'convnext_tiny'] as const) {
      const learn = await visionLearner(dls, arch, { pretrained: false, verbose: false, seed: 0, device: 'cuda' });
      learn.unfreeze();
      const firstConv = async () => {
        const t = (await learn.state(false)).find((x) => x.name.startsWith('model.') && x.shape.length === 4)!;
        return new Float32Array(t.data.slice().buffer);
      };
      const before = await firstConv();
      await learn.fitOneCycle(2, { lrMax: 1e-3 });
      const losses = Array.from(learn.recorder.rawLosses);
      expect(losses.length, arch).toBeGreaterThan(0);
      expect(losses.every(Number.isFinite), `${arch}: losses ${losses.join(' ')}`).toBe(true);
      expect(maxRelError(await firstConv(), before), `${arch}: the first convolution moved`).toBeGreaterThan(0);
      expect(await finiteWeights(learn), arch).toBe(true);
      const worst = await cpuVsCudaFp32(dls, arch, await learn.save(join(dir, `${arch}.safetensors`)));
      console.log(`${arch} on CUDA: losses ${losses[0].toFixed(3)} .. ${losses.at(-1)!.toFixed(3)}; CPU vs CUDA fp32 probabilities: max abs difference ${worst.toExponential(2)}`);
      expect(worst, arch).toBeLessThan(1e-2); // (cuDNN may use TF32, as in the ResNet test above)
      learn.dispose();
    }
  });

  it('device memory does not grow across epochs', async () => {
    const p = 72;
    const n = 256;
    const images = Uint8Array.from({ length: n * p * p * 3 }, (_, i) => (i * 2654435761) >>> 24);
    const dls = ImageDataLoaders.fromArrays(images, Int32Array.from({ length: n }, (_, i) => i % 2), ['a', 'b'], { presize: p, size: 64, bs: 32 });
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, device: 'cuda', seed: 0 });
    await learn.fitOneCycle(2);
    const after2 = hooks.cudaMemory().allocated;
    await learn.fitOneCycle(3);
    const after5 = hooks.cudaMemory().allocated;
    console.log(`CUDA allocated after 2 epochs ${(after2 / 2 ** 20).toFixed(1)} MB, after 5 more ${(after5 / 2 ** 20).toFixed(1)} MB`);
    expect(after5).toBeLessThanOrEqual(after2 * 1.05 + 2 ** 20);
    learn.dispose();
  });

  it('a loaded export predicts on CUDA what the trained learner predicts there, and close to what the CPU predicts from it', async () => {
    const dir = tempDir();
    await makeStripes(join(dir, 's'), 24, 48, 4);
    const dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 40, bs: 8, seed: 1 });
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, device: 'cuda', seed: 0 });
    await learn.fitOneCycle(2, { lrMax: 5e-3 });
    const path = await learn.export(join(dir, 'export.safetensors'));
    const files = dls.valid.items.map((i) => i.path);
    const trained = await learn.predictBatch(files);
    const onGpu = loadLearner(path, { device: 'cuda' });
    const onGpu32 = loadLearner(path, { device: 'cuda', precision: 'fp32' });
    const onCpu = loadLearner(path, { device: 'cpu' });
    // BatchNorm folded into the convolutions is off by default on CUDA; asked for, it must predict the same
    const folded32 = loadLearner(path, { device: 'cuda', precision: 'fp32', foldBatchNorm: true });
    const g = await onGpu.predictBatch(files);
    const g32 = await onGpu32.predictBatch(files);
    const f32 = await folded32.predictBatch(files);
    const c = await onCpu.predictBatch(files);
    const same = worstDiff(trained, g);
    const fp32 = worstDiff(g32, c);
    const across = worstDiff(g, c);
    const fold = worstDiff(f32, g32);
    console.log(`export on CUDA vs the trained learner (both bf16): max abs difference ${same.toExponential(2)}; ` +
      `CUDA fp32 vs CPU fp32: ${fp32.toExponential(2)}; CUDA bf16 vs CPU fp32: ${across.toExponential(2)}; ` +
      `CUDA fp32 folded vs not: ${fold.toExponential(2)}`);
    expect(g.map((p) => p.label)).toEqual(trained.map((p) => p.label));
    // Same weights and precision, but each learner's thread autotunes its own cuDNN kernels, which round to
    // bf16 at other points (2.3e-3 measured on an H100); a wrong weight or normalisation moves far more.
    expect(same).toBeLessThan(1e-2);
    expect(fp32).toBeLessThan(1e-3); // fp32 (cuDNN may use TF32) against the CPU
    expect(across).toBeLessThan(2e-2); // bf16 autocast on the GPU against fp32 on the CPU
    expect(fold).toBeLessThan(1e-3); // folded weights round differently; cuDNN may use TF32 on both
    for (const l of [learn, onGpu, onGpu32, onCpu, folded32]) l.dispose();
  });

  it('50 fit / predict / dispose cycles on CUDA keep device memory flat', async () => {
    const dir = tempDir();
    await makeStripes(join(dir, 's'), 12, 24, 6);
    const dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 32, bs: 8, seed: 3 });
    const files = dls.valid.items.slice(0, 4).map((i) => i.path);
    const before = hooks.cudaMemory().allocated;
    const after: number[] = [];
    for (let i = 0; i < 50; i++) {
      const l = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, device: 'cuda' });
      await l.fit(1);
      await l.predictBatch(files);
      l.dispose();
      after.push(hooks.cudaMemory().allocated);
    }
    console.log(`CUDA allocated before ${(before / 2 ** 20).toFixed(1)} MB; after cycles 1, 25, 50: ${[after[0], after[24], after[49]].map((b) => (b / 2 ** 20).toFixed(1)).join(', ')} MB`);
    // resnet18's weights and Adam state are 135 MB a cycle: a leak of any of it shows at once. The first
    // cycles may keep what LibTorch holds for good (cuBLAS workspaces, per handle), so the floor is cycle 5.
    expect(after[49]).toBeLessThanOrEqual(after[4] + 2 ** 20);
    expect(after[49] - before).toBeLessThan(64 * 2 ** 20);
  });

  it('cudaGraph: the step is captured after 3 warm-up steps, replayed for the rest of the fit, learns the stripes like the ordinary step, and its memory goes with the fit', async () => {
    const dir = tempDir();
    await makeStripes(join(dir, 's'), 50, 48, 11);
    const dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 40, bs: 16, seed: 5 });
    const run = async (cudaGraph: boolean, precision: 'bf16' | 'fp32' = 'bf16', lrMax = 5e-3, epochs = 6) => {
      const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, metrics: [accuracy()], seed: 0, device: 'cuda', cudaGraph, precision });
      const before = hooks.cudaMemory().allocated;
      const r = await learn.fitOneCycle(epochs, { lrMax });
      const after = hooks.cudaMemory().allocated;
      return { learn, r, before, after, losses: learn.recorder.rawLosses.slice(), graphs: learn.recorder.graphs.slice() };
    };
    // the captured step computes what the ordinary step computes, each replay on its own batch: fp32 at
    // learning rate 1e-12 (too small to move an fp32 weight), so that both runs keep the same weights and
    // each step's loss depends on its batch alone (batch losses differ by 3x). With a learning rate, two
    // runs drift apart chaotically from the first steps, graph or not: each learner autotunes its own cuDNN
    // kernels, which round differently, and Adam's normalised step amplifies that (an H100 run at lr 1e-4
    // had the ordinary warm-up steps 0.25% apart by step 3, 10% by step 9; at 1e-12 the losses agreed to
    // 4 decimals). That the replayed optimizer step trains is checked in bf16 below.
    const plain32 = await run(false, 'fp32', 1e-12, 2);
    const graph32 = await run(true, 'fp32', 1e-12, 2);
    const rel = graph32.losses.map((l, i) => Math.abs(l - plain32.losses[i]) / plain32.losses[i]);
    console.log(`cudaGraph fp32, lr 1e-12: ${JSON.stringify(graph32.graphs)}; losses ${graph32.losses.map((l) => l.toFixed(4))} vs ${plain32.losses.map((l) => l.toFixed(4))}`);
    expect(graph32.graphs.every((g) => g.captured)).toBe(true);
    expect(graph32.losses.length).toBe(plain32.losses.length);
    expect(Math.max(...rel)).toBeLessThan(1e-2); // cuDNN may use TF32, with kernels chosen per learner
    expect(Math.max(...plain32.losses) - Math.min(...plain32.losses)).toBeGreaterThan(0.1);
    for (const r of [plain32, graph32]) r.learn.dispose();
    // bf16 at a learning rate that learns: the two runs drift apart from the first steps (bf16 and each
    // learner's own cuDNN kernels; two ordinary runs do too), so what is compared is what they learn
    const plain = await run(false);
    const graph = await run(true);
    const n = graph.learn.recorder.iters[0];
    console.log(`cudaGraph: ${JSON.stringify(graph.graphs)}; accuracy ${graph.r.values.at(-1)![2]} (ordinary steps ${plain.r.values.at(-1)![2]}); ` +
      `allocated before/after the fit ${(graph.before / 2 ** 20).toFixed(1)} / ${(graph.after / 2 ** 20).toFixed(1)} MB (ordinary steps ${(plain.before / 2 ** 20).toFixed(1)} / ${(plain.after / 2 ** 20).toFixed(1)} MB)`);
    expect(graph.graphs[0]).toEqual({ steps: n - 3, captured: true });
    expect(graph.graphs.slice(1).map((g) => g.steps)).toEqual([n, n, n, n, n]);
    expect(graph.r.values.at(-1)![2]).toBeGreaterThanOrEqual(STRIPES_ACCURACY);
    // the graph and its memory pool are dropped at the end of the fit: a second fit (captured again) ends
    // where the first ended. (Against the ordinary steps, the first H100 run found 63 MB more held after the
    // graph's first fit, a one-time cost of its own stream, we believe cuBLAS's per-stream workspaces;
    // capture streams are lent and reused since. That figure is logged, not asserted.)
    await graph.learn.fitOneCycle(2, { lrMax: 5e-3 });
    const again = hooks.cudaMemory().allocated;
    console.log(`cudaGraph: allocated after a second fit ${(again / 2 ** 20).toFixed(1)} MB (after the first ${(graph.after / 2 ** 20).toFixed(1)} MB); ` +
      `held after the first fit beyond the ordinary steps: ${((graph.after - graph.before - (plain.after - plain.before)) / 2 ** 20).toFixed(1)} MB`);
    expect(graph.learn.recorder.graphs.map((g) => g.steps)).toEqual([n - 3, n]);
    expect(again).toBeLessThanOrEqual(graph.after + 2 ** 20);
    plain.learn.dispose();
    graph.learn.dispose();
  });

  it("cuDNN's BatchNorm (the default for bf16 training: alone, and fused with the ReLU and the residual add) against ATen's in a whole network: losses and running statistics as near ATen's as two ATen learners are, the path taken, and it learns", async () => {
    const dir = tempDir();
    await makeStripes(join(dir, 's'), 50, 48, 11);
    const dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 40, bs: 16, seed: 5 });
    let k = 0;
    const run = async (batchNorm: BatchNormKernels) => {
      const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, device: 'cuda', cudaGraph: false });
      setBatchNormKernels(learn, batchNorm);
      const trace = join(dir, `bn-${batchNorm}-${k}.json`);
      // learning rate 1e-12: the weights stay as made, so each batch's loss and statistics can be compared, and
      // Adam's gradient average (saved with the optimizer's state) is the same weighting of the same batches'
      // gradients in every run
      await learn.fitOneCycle(1, { lrMax: 1e-12, trace });
      // ATen BatchNorm and in-place ReLU calls over the traced epoch
      const calls = (name: string) => readTrace(trace).ops.filter((o) => o.name === name).reduce((n, o) => n + o.count, 0);
      const state = readWeightFile(await learn.save(join(dir, `bn-${batchNorm}-${k++}.safetensors`))).tensors;
      const stats = state.filter((t) => /running_(mean|var)$/.test(t.name));
      // the body's gradients (convolutions' weights, BatchNorms' weights and biases): a wrong residual gradient
      // would show most in the early layers, a wrong BatchNorm backward in its own parameters' gradients
      const grads = state.filter((t) => /^opt\.body\..*\.grad_avg$/.test(t.name));
      const r = { losses: learn.recorder.rawLosses.slice(), bn: calls('aten::batch_norm'), relu: calls('aten::relu_'), stats, grads };
      learn.dispose();
      return r;
    };
    type Run = Awaited<ReturnType<typeof run>>;
    const f32 = (t: { data: Uint8Array }) => new Float32Array(t.data.slice().buffer);
    // how far a run is from another: the worst loss (relative), running statistic (of its tensor's largest)
    // and gradient tensor (|a - b| / |b|, Euclidean)
    const apart = (x: Run, ref: Run) => {
      expect(x.stats.map((t) => t.name)).toEqual(ref.stats.map((t) => t.name));
      expect(x.grads.map((t) => t.name)).toEqual(ref.grads.map((t) => t.name));
      const stats = Math.max(...x.stats.map((t, i) => maxRelError(f32(t), f32(ref.stats[i]), 1e-3)));
      let grads = 0;
      x.grads.forEach((t, i) => {
        const a = f32(t);
        const b = f32(ref.grads[i]);
        let d = 0;
        let n = 0;
        a.forEach((v, j) => ((d += (v - b[j]) ** 2), (n += b[j] ** 2)));
        grads = Math.max(grads, Math.sqrt(d / Math.max(n, 1e-30)));
      });
      return { loss: Math.max(...x.losses.map((l, i) => Math.abs(l - ref.losses[i]) / ref.losses[i])), stats, grads };
    };
    const show = (e: ReturnType<typeof apart>) => `losses ${e.loss.toExponential(2)}, running statistics ${e.stats.toExponential(2)}, gradients ${e.grads.toExponential(2)}`;
    // the yardstick: two learners on ATen's kernels, each autotuning its own bf16 convolutions, which round
    // differently
    const aten = await run('aten');
    const aten2 = await run('aten');
    expect(aten.stats.length).toBeGreaterThanOrEqual(2 * 20); // resnet18's 20 BatchNorms (and the head's)
    expect(aten.grads.length).toBe(60); // the body's 20 convolutions (3 of them downsamples) and 20 BatchNorms' two
    const noise = apart(aten2, aten);
    console.log(`batchNorm 'aten' twice: ${show(noise)}`);
    const cud = await run('cudnn-fused');
    const err = apart(cud, aten);
    // and it trains: the stripes learnt through cuDNN's backward (the learner's default kernels)
    const trained = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, device: 'cuda', metrics: [accuracy()] });
    const acc = (await trained.fitOneCycle(6, { lrMax: 5e-3 })).values.at(-1)![2] as number;
    trained.dispose();
    console.log(`batchNorm 'cudnn-fused' vs ATen, bf16: ${show(err)}; ATen batch_norm / relu_ calls in the traced epoch ` +
      `${cud.bn} / ${cud.relu} against ${aten.bn} / ${aten.relu}; stripes accuracy ${acc}`);
    // the path taken: only the head's two 1-d BatchNorms stay ATen's (20 more a step otherwise; a path that
    // refused would leave the counts equal), and the body's 17 ReLUs run inside cuDNN's calls
    expect(cud.bn).toBeLessThan(aten.bn / 5);
    expect(cud.relu).toBeLessThan(aten.relu / 5);
    // within 3 times what two ATen learners differ by, or floors a little above the H200's figures (losses
    // 4.1e-2 from ATen, statistics 1.7e-2): a biased running variance would be 1/15 off at layer4 (16 values
    // per channel), a wrong momentum further
    expect(err.loss).toBeLessThan(Math.max(3 * noise.loss, 6e-2));
    expect(err.stats).toBeLessThan(Math.max(3 * noise.stats, 2.5e-2));
    // gradients: a whole network amplifies rounding, so this is a coarse check (a residual's gradient left out
    // or doubled is O(1)); their correctness is the layer check's below, against float64. Measured on the H200:
    // ATen twice 0.12, cuDNN's BatchNorm alone 0.12 to 0.19, cuDNN's fused calls (which round the block's
    // output once where ATen rounds it twice) 0.48
    expect(err.grads).toBeLessThan(0.75);
    expect(acc).toBeGreaterThanOrEqual(STRIPES_ACCURACY);
  });

  it("batchNormCheck: cuDNN's BatchNorm, one layer forward and backward (alone, with the ReLU, with the residual add and the ReLU), is as near float64 as ATen's kernels are", () => {
    // ResNet's shapes (a stem, a block's BatchNorm + ReLU, a block's end with the residual, a downsample's
    // BatchNorm alone) and a small one, where a running variance without Bessel's correction would be 1.6% off
    const configs = [
      { n: 16, c: 64, h: 56, w: 56, relu: true, residual: false },
      { n: 16, c: 256, h: 14, w: 14, relu: true, residual: true },
      { n: 16, c: 512, h: 7, w: 7, relu: false, residual: false },
      { n: 8, c: 2048, h: 7, w: 7, relu: true, residual: true },
      { n: 4, c: 64, h: 4, w: 4, relu: true, residual: true },
    ];
    const modes = ['cudnn-fused'] as const;
    const bf16Out = ['y', 'dx', 'dresidual'] as const;
    const fp32Out = ['dweight', 'dbias', 'runningMean', 'runningVar'] as const;
    const checks: { label: string; q: string; got: number; aten: number; floor: number }[] = [];
    const paths: { label: string; gradFn: string; atenFn: string }[] = [];
    configs.forEach((cfg, k) => {
      const aten = hooks.batchNormCheck({ kernels: 'aten', ...cfg, seed: k });
      console.log(`batchNormCheck ${JSON.stringify(cfg)} 'aten' (${aten.gradFn}): ` + [...bf16Out, ...fp32Out].filter((q) => aten[q]).map((q) => `${q} ${aten[q]!.rel.toExponential(2)}`).join(', '));
      for (const mode of modes) {
        const r = hooks.batchNormCheck({ kernels: mode, ...cfg, seed: k });
        const label = `${mode} ${cfg.n}x${cfg.c}x${cfg.h}x${cfg.w}${cfg.relu ? ' relu' : ''}${cfg.residual ? ' residual' : ''}`;
        console.log(`batchNormCheck ${label} (${r.gradFn}): ` + [...bf16Out, ...fp32Out].filter((q) => r[q]).map((q) => `${q} ${r[q]!.rel.toExponential(2)} (ATen ${aten[q]!.rel.toExponential(2)})`).join(', '));
        paths.push({ label, gradFn: r.gradFn, atenFn: aten.gradFn });
        // bf16 results: at most twice ATen's error, or about one bf16 rounding (2^-9 relative, rms) when
        // ATen's is smaller; fp32 results (the parameters' gradients, the running statistics): twice ATen's or
        // 1e-5, far below what a wrong formula gives (a biased running variance: 1.6e-3 in the small config)
        for (const q of bf16Out) if (r[q]) checks.push({ label, q, got: r[q]!.rel, aten: aten[q]!.rel, floor: 2 ** -9 });
        for (const q of fp32Out) checks.push({ label, q, got: r[q].rel, aten: aten[q].rel, floor: 1e-5 });
      }
    });
    for (const p of paths) expect(p.gradFn, `${p.label}: its own kernels ran`).not.toBe(p.atenFn);
    for (const c of checks) expect(c.got, `${c.label}: ${c.q} (ATen's ${c.aten.toExponential(2)})`).toBeLessThanOrEqual(Math.max(2 * c.aten, c.floor));
  });

  it("fusedAdam: PyTorch's fused AdamW kernel computes fast.ai's Adam (the reference formula, on CUDA), replaces the _foreach kernels, and trains after each CUDA-graph replay", async () => {
    expect(torchInfo().fusedAdam).toBe(true); // LibTorch 2.1 or later, as on the GPU machine
    const c = adamCase();
    for (const [fused, graph, what] of [[false, false, '_foreach kernels'], [false, true, 'CUDA-graph step (scalars from a tensor)'], [true, false, 'fused AdamW kernel']] as const) {
      const worst = c.worst(hooks.fastAdamSteps({ ...c.input, sqrMom: DEFAULTS.sqrMom, eps: DEFAULTS.eps, fused, graph, device: 'cuda' }));
      console.log(`fast.ai's Adam on CUDA, ${what}: 20 steps within ${worst.toExponential(2)} of the reference`);
      // (the CPU paths meet 1e-6: learner.test.ts; a kernel's own operation order may round a little differently)
      expect(worst, what).toBeLessThan(3e-6);
    }
    const dir = tempDir();
    await makeStripes(join(dir, 's'), 50, 48, 11);
    const dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 40, bs: 16, seed: 5 });
    // the path taken, in ordinary steps: the fused kernel once per bucket and step, no _foreach arithmetic
    const traced = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, device: 'cuda', cudaGraph: false, fusedAdam: true });
    traced.unfreeze();
    const trace = join(dir, 'fused-adam.json');
    await traced.fitOneCycle(1, { lrMax: 1e-3, trace });
    const calls = (name: string) => readTrace(trace).ops.filter((o) => o.name === name).reduce((n, o) => n + o.count, 0);
    const steps = traced.recorder.rawLosses.length;
    console.log(`fusedAdam: ${calls('aten::_fused_adamw_')} fused AdamW calls and ${calls('aten::_foreach_sqrt')} _foreach_sqrt calls in ${steps} steps`);
    expect(calls('aten::_fused_adamw_')).toBeGreaterThanOrEqual(steps);
    expect(calls('aten::_foreach_sqrt')).toBe(0);
    traced.dispose();
    // with the graph (forward and backward captured, the fused step after each replay) it learns the stripes
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, metrics: [accuracy()], seed: 0, device: 'cuda', fusedAdam: true });
    const r = await learn.fitOneCycle(6, { lrMax: 5e-3 });
    console.log(`fusedAdam with cudaGraph: ${JSON.stringify(learn.recorder.graphs)}; stripes accuracy ${r.values.at(-1)![2]}`);
    expect(learn.recorder.graphs.every((g) => g.captured)).toBe(true);
    expect(r.values.at(-1)![2]).toBeGreaterThanOrEqual(STRIPES_ACCURACY);
    learn.dispose();
  });

  it("NCCL: a world of one on the GPU trains with its gradients all-reduced through c10d's ProcessGroupNCCL", async () => {
    const dir = tempDir();
    await makeStripes(join(dir, 's'), 24, 48);
    const { spawnSync } = await import('node:child_process');
    const { freePort } = await import('../src/distributed/launch.js');
    const env = { ...process.env, RANK: '0', LOCAL_RANK: '0', WORLD_SIZE: '1', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(await freePort()) };
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(__dirname, 'helpers', 'dist-worker.ts'), 'nccl1', join(dir, 's'), join(dir, 'out'), '8'], { cwd: join(__dirname, '..'), env, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(out.info.backend).toBe('nccl');
    expect(out.info.gradReduces).toBeGreaterThanOrEqual(2 * 4); // (every step of 2 epochs of 4 or more batches)
    expect(out.values.flat().every(Number.isFinite)).toBe(true);
    // the graph step: forward and backward replayed, the all-reduce after each replay, every step's
    console.log(`NCCL with the graph step: ${JSON.stringify(out.graphs)}; gradient all-reduces ${out.info.gradReduces} then ${out.infoAfterGraph.gradReduces}`);
    expect(out.graphs.every((g: { captured: boolean; error?: string }) => g.captured && !g.error)).toBe(true);
    expect(out.infoAfterGraph.gradReduces - out.info.gradReduces).toBeGreaterThanOrEqual(2 * 4);
    expect(out.graphValues.flat().every(Number.isFinite)).toBe(true);
  });

  it('gradient accumulation with the graph step: sums kept beside the graph, weights as near the ordinary steps as two ordinary learners are', async () => {
    const dir = tempDir();
    await makeStripes(join(dir, 's'), 50, 48, 11);
    // no augmentation, BatchNorm in eval, no dropout: the same batches; fp32
    const dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 40, bs: 8, seed: 5, augment: false });
    const run = async (cudaGraph: boolean, nAcc: number) => {
      const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, device: 'cuda', cudaGraph, precision: 'fp32', head: { ps: 0 } });
      setBatchNormEval(learn, true);
      await learn.fitOneCycle(2, { lrMax: 1e-3, cbs: [gradientAccumulation({ nAcc })] });
      const w = (await learn.state(false)).filter((t) => t.dtype === 'F32').map((t) => new Float32Array(t.data.slice().buffer));
      const graphs = learn.recorder.graphs.slice();
      learn.dispose();
      return { w, graphs };
    };
    const rel = (a: Float32Array[], b: Float32Array[]) => {
      let num = 0;
      let den = 0;
      b.forEach((t, i) => t.forEach((v, k) => ((num += (a[i][k] - v) ** 2), (den += v ** 2))));
      return Math.sqrt(num / den);
    };
    const plainA = await run(false, 32);
    const plainB = await run(false, 32);
    const graph = await run(true, 32);
    const other = await run(false, 16); // a different accumulation: what a wrong sum would look like
    const dPlain = rel(plainB.w, plainA.w);
    const dGraph = rel(graph.w, plainA.w);
    const dOther = rel(other.w, plainA.w);
    console.log(`accumulation with the graph step: ${JSON.stringify(graph.graphs)}; weights ${dGraph.toExponential(2)} from ordinary steps (two ordinary learners ${dPlain.toExponential(2)}, nAcc 16 instead of 32 ${dOther.toExponential(2)})`);
    expect(graph.graphs.filter((g) => g.steps > 0).every((g) => g.captured && !g.error)).toBe(true);
    expect(graph.graphs.reduce((n, g) => n + g.steps, 0)).toBeGreaterThan(5);
    const bound = Math.max(3 * dPlain, 1e-4);
    expect(dGraph).toBeLessThanOrEqual(bound);
    expect(dOther).toBeGreaterThan(bound); // (the comparison can fail: on the CPU nAcc 16 lands 2e-2 away)
  });

  it("gradientClip with the graph step (the clip captured with Adam, or in the tail with fusedAdam): every step's gradient clipped to maxNorm", async () => {
    const dir = tempDir();
    await makeStripes(join(dir, 's'), 16, 40, 3);
    // one batch an epoch (every training image), no augmentation, no dropout, learning rate 1e-12 (the weights
    // stay): every step's gradient is the same batch's, and fast.ai's gradient average after n steps of
    // momentum 0.9 is (1 - 0.9^n) times it, whatever kernels round it
    const one = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 32, bs: 64, seed: 3, augment: false });
    expect(one.train.length).toBe(1);
    const avgNorm = async (epochs: number, fusedAdam: boolean, maxNorm?: number) => {
      const l = await visionLearner(one, 'resnet18', { pretrained: false, verbose: false, seed: 0, device: 'cuda', precision: 'fp32', head: { ps: 0 }, fusedAdam });
      await l.fit(epochs, { lr: 1e-12, cbs: maxNorm ? [gradientClip({ maxNorm })] : [] });
      const st = (await l.state(true)).filter((t) => t.name.endsWith('.grad_avg'));
      const graphs = l.recorder.graphs.slice();
      l.dispose();
      let sq = 0;
      for (const t of st) for (const v of new Float32Array(t.data.slice().buffer)) sq += v * v;
      return { norm: Math.sqrt(sq) / (1 - 0.9 ** epochs), graphs };
    };
    const plain = await avgNorm(1, false);
    const maxNorm = plain.norm / 4;
    for (const fusedAdam of [false, true]) {
      const clipped = await avgNorm(6, fusedAdam, maxNorm); // 3 ordinary warm-up steps, then 3 graph steps
      console.log(`gradientClip with the graph step (fusedAdam ${fusedAdam}): ${JSON.stringify(clipped.graphs)}; gradient norm ${clipped.norm.toExponential(4)} for maxNorm ${maxNorm.toExponential(4)} (unclipped ${plain.norm.toExponential(4)})`);
      expect(clipped.graphs.reduce((n, g) => n + g.steps, 0)).toBe(3);
      expect(clipped.graphs.filter((g) => g.steps > 0).every((g) => g.captured && !g.error)).toBe(true);
      expect(Math.abs(clipped.norm - maxNorm) / maxNorm).toBeLessThan(1e-3);
    }
  });

  it('out of memory names the batch size, and the learner goes on with a smaller batch', async () => {
    const p = 224;
    const n = 6144;
    const images = new Uint8Array(n * p * p * 3);
    const dls = ImageDataLoaders.fromArrays(images, Int32Array.from({ length: n }, (_, i) => i % 2), ['a', 'b'], { presize: p, size: 224, bs: n, validPct: 0 });
    const learn = await visionLearner(dls, 'resnet152', { pretrained: false, verbose: false, device: 'cuda', precision: 'fp32' });
    learn.unfreeze();
    await expect(learn.fitOneCycle(1)).rejects.toThrow(/out of memory at batch size 6144[\s\S]*learn\.bs = 3072/);
    learn.bs = 32;
    learn.freeze();
    const r = await learn.lrFind({ numIt: 6, stopDiv: false });
    expect(r.lrs.length).toBe(6);
    learn.dispose();
  });
});
