// One process of the bench's data-parallel scaling rows (scripts/bench/scaling.ts): the train step of the
// bench's train rows (uniform random pixels, fast.ai's augmentation, unfrozen) alone, or as one rank of a
// launch. Epoch 0 warms up, epoch 1 is timed; rank 0 prints one JSON line. argv: arch, size, presize, bs,
// iters, device; TORCHLEARN_BENCH_JOIN=nccl|gloo joins a world of one explicitly (the overhead row).
import { augTransforms, distributedInfo, ImageDataLoaders, initDistributed, numDistrib, rankDistrib, torchInfo, visionLearner } from '../../src/index.js';
import { hooks } from '../../src/hooks.js';
import { checkArch } from '../../src/model.js';
import { randomPixels } from './pixels.js';

const [arch, size, presize, bs, iters, device = 'cpu'] = process.argv.slice(2);
const join = process.env.TORCHLEARN_BENCH_JOIN;
if (join === 'nccl' || join === 'gloo') await initDistributed({ backend: join });
const p = Number(presize);
const world = Number(process.env.WORLD_SIZE ?? 1);
// every rank gets bs * iters images of its own: iters steps an epoch at every world size
const n = Number(bs) * Number(iters) * world;
const labels = Int32Array.from({ length: n }, (_, i) => i % 2);
const dls = ImageDataLoaders.fromArrays(randomPixels(n * p * p * 3), labels, ['a', 'b'], { presize: p, size: Number(size), bs: Number(bs), validPct: 0, augment: augTransforms() });
const learn = await visionLearner(dls, checkArch(arch), { pretrained: false, verbose: false, device, seed: 0 });
learn.unfreeze();
const reduced: number[] = [];
hooks.cudaMemory(true);
await learn.fitOneCycle(2, { cbs: [{ afterEpoch: () => void reduced.push(distributedInfo()?.gradSeconds ?? 0) }] });
const s = learn.recorder.trainSeconds[1];
if (rankDistrib() === 0)
  console.log(JSON.stringify({
    world: numDistrib(), threads: torchInfo().threads, device: learn.device, graph: learn.recorder.graphs.length > 0, images_per_s: n / s, step_s: s / Number(iters),
    allreduce_s: (reduced[1] - reduced[0]) / Number(iters), peak_rss_bytes: process.resourceUsage().maxRSS * 1024, peak_device_bytes: hooks.cudaMemory().peakAllocated,
  }));
