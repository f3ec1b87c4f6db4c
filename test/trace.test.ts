import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ImageDataLoaders, visionLearner } from '../src/index.js';
import { compareTraces, readTrace } from '../src/bench.js';
import { makeStripes } from './helpers/fixtures.js';
import { PYTHON, tempDir } from './helpers/python.js';

let dir: string;
let dls: ImageDataLoaders;

beforeAll(async () => {
  dir = tempDir();
  await makeStripes(join(dir, 's'), 12, 24, 2);
  dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 64, presize: 80, bs: 4, seed: 3, validPct: 0.25 });
});

const perStep = (t: ReturnType<typeof readTrace>, name: string) => (t.ops.find((o) => o.name === name && o.device === 'cpu')?.count ?? 0) / t.steps;

describe('operator traces', () => {
  it("fit({ trace }) counts the operators of each step, as torch.profiler does for PyTorch's own step", async () => {
    const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0 });
    learn.unfreeze();
    const path = join(dir, 'torchlearn.json');
    await learn.fitOneCycle(2, { trace: path });
    const ours = readTrace(path);
    // the first epoch only: every batch of it, none of the second
    expect(ours.steps).toBe(dls.train.length);
    // resnet18: 20 convolutions (stem, 16 in the blocks, 3 downsamples), each once forward and once backward
    expect(perStep(ours, 'aten::conv2d')).toBe(20);
    expect(perStep(ours, 'aten::convolution_backward')).toBe(20);
    // 20 BatchNorm2d in the body and 2 BatchNorm1d in the head
    expect(perStep(ours, 'aten::batch_norm')).toBe(22);
    learn.dispose();

    // The bench's PyTorch baseline, the same network and head, traced the same way.
    const theirsPath = join(dir, 'pytorch.json');
    execFileSync(PYTHON, ['scripts/bench/pytorch_train.py', '--arch', 'resnet18', '--bs', '4', '--size', '64', '--presize', '80', '--iters', '2', '--warmup', '1', '--trace', theirsPath], { encoding: 'utf8' });
    const theirs = readTrace(theirsPath);
    expect(theirs.steps).toBe(2);
    for (const op of ['aten::conv2d', 'aten::convolution_backward', 'aten::batch_norm']) expect(perStep(theirs, op)).toBe(perStep(ours, op));
    const table = compareTraces(ours, theirs);
    expect(table.split('\n')[0]).toBe('| operator | device | calls/step torchlearn | calls/step pytorch | ms/step torchlearn | ms/step pytorch |');
    expect(table.split('\n').length).toBe(2 + 30);
  });
});
