// MixUp and CutMix: the native batch mixing against fast.ai's formulas (callback/mixup.py) computed with
// PyTorch on the same batch, draws and permutation; the soft targets giving fast.ai's mixed loss; the draws'
// distribution; and fits with the callbacks.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { hooks } from '../src/hooks.js';
import { accuracy, cutMix, ImageDataLoaders, manualSeed, mixUp, visionLearner } from '../src/index.js';
import { makeStripes } from './helpers/fixtures.js';
import { runPython, tempDir } from './helpers/python.js';

// fast.ai's MixUp.before_batch / CutMix.before_batch and rand_bbox with the draws given, and its loss
// (lerp of the two targets' losses) against cross-entropy on our soft targets
const FASTAI = String.raw`
import json, sys, torch
import torch.nn.functional as F
c = json.loads(open(sys.argv[1]).read())
n, ch, h, w, k = c['n'], c['c'], c['h'], c['w'], c['classes']
x = torch.tensor(c['x'], dtype=torch.float32).view(n, ch, h, w)
perm = torch.tensor(c['perm'])
y = torch.tensor(c['y'])
onehot = F.one_hot(y, k).float() if c['yIndices'] else y.float().view(n, k)
xb1 = x[perm]
out = {}
if c['kind'] == 'mixup':
    lam = torch.tensor(c['lam'], dtype=torch.float32)
    xm = torch.lerp(xb1, x, lam.view(-1, 1, 1, 1))
    ym = torch.lerp(onehot[perm], onehot, lam.view(-1, 1))
else:
    lam0 = torch.tensor([c['lamDrawn']], dtype=torch.float64)
    cut_rat = torch.sqrt(1. - lam0)
    cut_w = torch.round(w * cut_rat).type(torch.long)
    cut_h = torch.round(h * cut_rat).type(torch.long)
    cx, cy = torch.tensor([c['box'][4]]), torch.tensor([c['box'][5]])
    x1 = torch.clamp(cx - cut_w // 2, 0, w); y1 = torch.clamp(cy - cut_h // 2, 0, h)
    x2 = torch.clamp(cx + cut_w // 2, 0, w); y2 = torch.clamp(cy + cut_h // 2, 0, h)
    out['box'] = [int(x1), int(y1), int(x2), int(y2)]
    xm = x.clone()
    xm[..., int(y1):int(y2), int(x1):int(x2)] = xb1[..., int(y1):int(y2), int(x1):int(x2)]
    lam = torch.full((n,), 1 - int((x2 - x1) * (y2 - y1)) / float(w * h), dtype=torch.float64)
    out['lam'] = float(lam[0])
    ym = torch.lerp(onehot[perm], onehot, lam.float().view(-1, 1))
out['x'] = xm.flatten().tolist()
out['y'] = ym.flatten().tolist()
if c['yIndices']:
    # fast.ai's loss: lerp(loss(pred, y[perm]), loss(pred, y), lam), reduced by the mean; ours: cross-entropy on ym
    pred = torch.randn(n, k, generator=torch.Generator().manual_seed(0))
    fa = torch.lerp(F.cross_entropy(pred, y[perm], reduction='none'), F.cross_entropy(pred, y, reduction='none'), lam.float()).mean()
    out['loss'] = [float(fa), float(F.cross_entropy(pred, torch.tensor(c['ySoft']).view(n, k)))]
print(json.dumps(out))
`;

function batch(n: number, c: number, h: number, w: number, seed: number) {
  let s = seed;
  const rand = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
  return Float32Array.from({ length: n * c * h * w }, () => rand() * 4 - 2);
}

describe('MixUp and CutMix', () => {
  const dir = tempDir();
  const reference = (kind: 'mixup' | 'cutmix', yIndices: boolean, seed: number) => {
    const [n, c, h, w, classes] = [6, 3, 10, 12, 4];
    const x = batch(n, c, h, w, seed);
    const y = yIndices ? Int32Array.from({ length: n }, (_v, i) => (i * 3 + seed) % classes) : Float32Array.from({ length: n * classes }, (_v, j) => +((j * 7 + seed) % 3 === 0));
    const r = hooks.mixBatch({ x, n, c, h, w, y, classes, kind, alpha: kind === 'mixup' ? 0.4 : 1, seed });
    const f = join(dir, `case-${kind}-${seed}.json`);
    writeFileSync(f, JSON.stringify({ kind, n, c, h, w, classes, yIndices, x: Array.from(x), y: Array.from(y), perm: Array.from(r.perm), lam: Array.from(r.lam), lamDrawn: r.lamDrawn, box: Array.from(r.box), ySoft: Array.from(r.y) }));
    return { r, ref: JSON.parse(runPython(FASTAI, [f])) as { x: number[]; y: number[]; box?: number[]; lam?: number; loss?: [number, number] } };
  };
  const worst = (a: ArrayLike<number>, b: ArrayLike<number>) => Array.from(a).reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

  it("MixUp: each image lerped with its partner by its own lam = max(l, 1 - l); targets likewise; cross-entropy on them is fast.ai's mixed loss", () => {
    for (const [yIndices, seed] of [[true, 1], [true, 2], [false, 3]] as const) {
      const { r, ref } = reference('mixup', yIndices, seed);
      expect([...r.perm].sort()).toEqual([0, 1, 2, 3, 4, 5]);
      expect(Math.min(...r.lam)).toBeGreaterThanOrEqual(0.5);
      expect(new Set(Array.from(r.lam)).size).toBe(6); // one draw per image
      expect(worst(r.x, ref.x)).toBeLessThan(1e-6);
      expect(worst(r.y, ref.y)).toBeLessThan(1e-6);
      if (ref.loss) expect(Math.abs(ref.loss[0] - ref.loss[1])).toBeLessThan(1e-6);
    }
  });

  it("CutMix: fast.ai's box from the draw and the centre, pasted from the partner; lam the share left, targets lerped by it", () => {
    for (const [yIndices, seed] of [[true, 4], [true, 5], [false, 6], [true, 7]] as const) {
      const { r, ref } = reference('cutmix', yIndices, seed);
      expect(Array.from(r.box.subarray(0, 4))).toEqual(ref.box);
      expect(r.lam[0]).toBeCloseTo(ref.lam!, 12);
      expect(worst(r.x, ref.x)).toBe(0);
      expect(worst(r.y, ref.y)).toBeLessThan(1e-6);
      if (ref.loss) expect(Math.abs(ref.loss[0] - ref.loss[1])).toBeLessThan(1e-6);
    }
  });

  it('the draws: MixUp lam follows max(l, 1 - l) of Beta(0.4, 0.4) (mean 0.5 + E|l - 0.5|), a seed repeats them', () => {
    const n = 20000;
    const draw = (seed: number) => hooks.mixBatch({ x: new Float32Array(n), n, c: 1, h: 1, w: 1, y: new Int32Array(n), classes: 2, kind: 'mixup', alpha: 0.4, seed });
    const a = draw(11);
    expect(Array.from(draw(11).lam)).toEqual(Array.from(a.lam));
    const mean = a.lam.reduce((s, v) => s + v, 0) / n;
    // PyTorch's Beta(0.4, 0.4) on 400,000 draws, folded the same way
    const ref = Number(runPython('import torch\nl = torch.distributions.Beta(0.4, 0.4).sample((400000,), ).double()\nprint(float(torch.maximum(l, 1 - l).mean()))'));
    // the folded draw's standard deviation is under 0.16: the mean of 20,000 is within 0.004 four times in 10^4
    expect(Math.abs(mean - ref)).toBeLessThan(0.004);
  });

  it('mixUp() and cutMix() fits learn the stripes (the graph step too), and a seed repeats a mixed fit', async () => {
    await makeStripes(join(dir, 's'), 24, 40, 6);
    const dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 32, bs: 8, seed: 4 });
    // device: the learning fits train where the machine trains (CUDA and its captured step on a GPU machine);
    // the comparisons of losses run on the CPU, where a learner repeats fp32 arithmetic exactly (on CUDA each
    // learner autotunes its own cuDNN kernels in bf16, so two runs drift apart)
    const fit = async (cb: ReturnType<typeof mixUp>, epochs: number, cudaGraph?: boolean, device?: 'cpu') => {
      manualSeed(0);
      const l = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, metrics: [accuracy()], cudaGraph, device });
      const r = await l.fitOneCycle(epochs, { lrMax: 5e-3, cbs: [cb] });
      const losses = l.recorder.rawLosses.slice();
      l.dispose();
      return { acc: r.values.at(-1)![2] as number, losses };
    };
    // (mixed batches learn more slowly: twice the epochs a plain fit needs here)
    expect((await fit(mixUp(), 12)).acc).toBeGreaterThanOrEqual(0.9);
    expect((await fit(cutMix(), 12)).acc).toBeGreaterThanOrEqual(0.9);
    // a seed repeats a mixed fit; the graph step (run without capture on the CPU) mixes the same batches;
    // mixing changes the losses
    const m1 = await fit(mixUp(), 1, false, 'cpu');
    expect((await fit(mixUp(), 1, false, 'cpu')).losses).toEqual(m1.losses);
    const g = await fit(mixUp(), 1, true, 'cpu');
    g.losses.forEach((l, i) => expect(Math.abs(l - m1.losses[i])).toBeLessThan(1e-3 * Math.max(1, m1.losses[i])));
    expect((await fit({}, 1, false, 'cpu')).losses).not.toEqual(m1.losses);
    expect(() => mixUp({ alpha: -1 })).toThrow(/alpha must be a positive number, got -1/);
  });
});
