// One rank of the distributed tests (test/distributed.test.ts), started with torchrun's variables; without
// them, the single process the ranks are compared with. argv: mode, data folder, output prefix, batch size.
//   join    joins the group and exits (the rendezvous errors)
//   parity  one step's gradients of the given batch, then a short fit with BatchNorm in eval, no dropout
//           and no augmentation: files `${out}.grads.${rank}.bin`, `${out}.weights.${rank}.safetensors`;
//           then one step's gradients and the state after it with BatchNorm on batch statistics,
//           syncBatchNorm on and off: `${out}.sbn.*`, `${out}.nosync.*`
//   fit     a fit with everything on (augmentation, dropout, BatchNorm training): weights and the table's
//           values per rank; `epochs` lines on stdout as epochs end
//   graph   the same 3-epoch fit (augmentation, dropout, BatchNorm training) with ordinary steps and with
//           the graph step (without capture on the CPU), each also accumulating 16 samples: weights
//           `${out}.${plain|graph|plain-acc|graph-acc}.${rank}.safetensors` and the graph's steps per epoch
//   full | stop | resume   a 2-epoch fit accumulating 3 batches a step, with a checkpoint in `${out}-models`:
//           whole; stopped after its first epoch (a step half accumulated); resumed from the checkpoint rank 0
//           wrote (weights per rank)
//   hang    rank 1 joins, then blocks its JavaScript thread (its native heartbeat goes on); rank 0 waits
//           in an all-reduce for it
//   nccl1   a world of one joined explicitly with NCCL, a short fit on CUDA with ordinary steps and one with
//           the graph step (test/cuda.test.ts)
import { writeFileSync } from 'node:fs';
import { accuracy, allreduceNumbers, distributedInfo, gradientAccumulation, ImageDataLoaders, initDistributed, numDistrib, rankDistrib, visionLearner, writeWeightFile } from '../../src/index.js';
import { gradients, setBatchNormEval } from '../../src/hooks.js';

const [mode, dir, out, bsArg, epochsArg] = process.argv.slice(2);
const bs = Number(bsArg ?? 8);
const range = (a: number, b: number) => Array.from({ length: b - a }, (_, i) => a + i);

if (mode === 'join') {
  const info = await initDistributed();
  console.log(JSON.stringify(info));
} else if (mode === 'parity') {
  const dls = await ImageDataLoaders.fromFolder(dir, { size: 32, presize: 32, bs, seed: 3, augment: false });
  const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, head: { ps: 0 }, device: 'cpu' });
  setBatchNormEval(learn, true);
  const r = rankDistrib();
  const g = await gradients(learn, range(r * bs, (r + 1) * bs));
  writeFileSync(`${out}.grads.${r}.bin`, Buffer.from(g.buffer, g.byteOffset, g.byteLength));
  await learn.fitOneCycle(2, { lrMax: 1e-3 });
  writeWeightFile(`${out}.weights.${r}.safetensors`, await learn.state(false), {});
  writeFileSync(`${out}.values.${r}.json`, JSON.stringify(learn.recorder.values));
  if (numDistrib() > 1) writeFileSync(`${out}.info.${r}.json`, JSON.stringify(distributedInfo()));
  learn.dispose();
  // then one step's gradients with BatchNorm on batch statistics, syncBatchNorm on and off (no difference in
  // one process), and the state after it (the running statistics it moved)
  for (const sync of [true, false]) {
    const l = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, head: { ps: 0 }, device: 'cpu', syncBatchNorm: sync });
    const gs = await gradients(l, range(r * bs, (r + 1) * bs));
    const tag = sync ? 'sbn' : 'nosync';
    writeFileSync(`${out}.${tag}.grads.${r}.bin`, Buffer.from(gs.buffer, gs.byteOffset, gs.byteLength));
    writeWeightFile(`${out}.${tag}.state.${r}.safetensors`, await l.state(false), {});
    l.dispose();
  }
} else if (mode === 'fit') {
  const dls = await ImageDataLoaders.fromFolder(dir, { size: 32, presize: 40, bs, seed: 3 });
  const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, metrics: [accuracy()], device: 'cpu' });
  const validSizes: number[] = [];
  const { suggestions, losses } = await learn.lrFind({ numIt: 12 });
  await learn.fitOneCycle(Number(epochsArg ?? 3), {
    lrMax: 3e-3,
    cbs: [{ afterEpoch: (e) => void (validSizes.push(e.preds!.targets.length), console.log(`rank ${rankDistrib()} epoch ${e.epoch} done`)) }],
  });
  const r = rankDistrib();
  writeWeightFile(`${out}.weights.${r}.safetensors`, await learn.state(false), {});
  writeFileSync(`${out}.values.${r}.json`, JSON.stringify({ values: learn.recorder.values, names: ['train_loss', 'valid_loss', 'accuracy'], validSizes, validN: dls.valid.n, world: numDistrib(), suggestions, lrFindLosses: losses }));
} else if (mode === 'graph') {
  const dls = await ImageDataLoaders.fromFolder(dir, { size: 32, presize: 40, bs, seed: 3 });
  const steps: Record<string, number[]> = {};
  for (const acc of [false, true])
    for (const cudaGraph of [false, true]) {
      const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, device: 'cpu', cudaGraph });
      await learn.fitOneCycle(3, { lrMax: 3e-3, cbs: acc ? [gradientAccumulation({ nAcc: 16 })] : [] });
      const tag = `${cudaGraph ? 'graph' : 'plain'}${acc ? '-acc' : ''}`;
      writeWeightFile(`${out}.${tag}.${rankDistrib()}.safetensors`, await learn.state(false), {});
      steps[tag] = learn.recorder.graphs.map((g) => g.steps);
      learn.dispose();
    }
  writeFileSync(`${out}.steps.${rankDistrib()}.json`, JSON.stringify(steps));
} else if (mode === 'full' || mode === 'stop' || mode === 'resume') {
  const dls = await ImageDataLoaders.fromFolder(dir, { size: 32, presize: 40, bs, seed: 3 });
  const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, device: 'cpu', modelDir: `${out}-models` });
  await learn.fitOneCycle(2, {
    lrMax: 3e-3,
    ...(mode === 'resume' ? { resume: 'run' } : { checkpoint: 'run' }),
    cbs: [gradientAccumulation({ nAcc: 3 * bs }), ...(mode === 'stop' ? [{ afterEpoch: (e: { epoch: number }) => e.epoch === 0 }] : [])],
  });
  writeWeightFile(`${out}.${mode}.${rankDistrib()}.safetensors`, await learn.state(false), {});
} else if (mode === 'hang') {
  await initDistributed();
  if (rankDistrib() === 1) {
    const end = Date.now() + 120_000;
    while (Date.now() < end); // (hung: the test kills it)
  }
  await allreduceNumbers([1]);
} else if (mode === 'nccl1') {
  await initDistributed({ backend: 'nccl' });
  const dls = await ImageDataLoaders.fromFolder(dir, { size: 32, presize: 40, bs, seed: 3 });
  // ordinary steps (the all-reduces started from backward's hooks), then the graph step (the all-reduce in
  // its tail, after each replay)
  const plain = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, metrics: [accuracy()], device: 'cuda', cudaGraph: false });
  await plain.fitOneCycle(2, { lrMax: 3e-3 });
  const infoPlain = distributedInfo();
  plain.dispose();
  const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, metrics: [accuracy()], device: 'cuda', cudaGraph: true });
  await learn.fitOneCycle(2, { lrMax: 3e-3 });
  console.log(JSON.stringify({ info: infoPlain, values: plain.recorder.values, device: learn.device, infoAfterGraph: distributedInfo(), graphValues: learn.recorder.values, graphs: learn.recorder.graphs }));
} else {
  throw new Error(`dist-worker: unknown mode ${mode}`);
}
