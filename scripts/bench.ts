// npm run bench: torchlearn beside PyTorch on the same machine, in one run. Prints a table and JSON
// (also written to out/bench.json).
//   --device cpu|cuda   (default: cuda when LibTorch has it)
//   --python PATH       PyTorch for the baseline (default /usr/bin/python3 on the CPU, python3 on CUDA)
//   --quick             fewer iterations
//   --profile           time the phases of each train step (data, forward, backward, optimizer) on both sides
//   --only LIST         some of: decode,augment,inference,train,e2e,serve,scaling (default: all; on CUDA all but
//                       serve, which takes minutes of load testing, and scaling: the plain learner, a world of one
//                       with NCCL and one rank per GPU)
//   --trace DIR         operator tables of the unfrozen train step (and of one batched inference call) on
//                       both sides, written to DIR, and the operators where they differ most printed side by side
//   --graph off|on|both torchlearn's train step with the cudaGraph option off, on, or both (default: both
//                       on CUDA, off on the CPU, where the graph's step runs without capture)
//   --frozen frozen|unfrozen|both  which train-step rows, on both sides (default: both)
//   --bn LIST           torchlearn's training-mode BatchNorm on CUDA in bf16 (src/hooks.ts, setBatchNormKernels), some of
//                       cudnn-fused,aten (or all): cuDNN's with the ReLU and residual add in the same call (the
//                       learner's default, which the rows without --bn run), or ATen's kernels (what PyTorch runs)
//   --adam LIST         torchlearn's Adam step on CUDA, some of foreach,fused (or all): the multi-tensor kernels
//                       (inside the CUDA graph) or PyTorch's fused AdamW kernel (fusedAdam; the learner's
//                       default where LibTorch has it, which the rows without --adam run)
//   --pt LIST           how the PyTorch baseline runs the train step, some of eager,eager-malloc,cudagraph,compile,
//                       compile-max-autotune (default: eager,eager-malloc on the CPU, all but eager-malloc on CUDA):
//                       eager; eager under the glibc malloc settings torchlearn applies to its own process
//                       (TORCHLEARN_MALLOC); the whole step captured as one CUDA graph; the model under
//                       torch.compile (mode default or max-autotune; compile time reported apart)
//   --arch NAME         the architecture of the train-step, e2e and inference rows, on both sides (default resnet50)
//   --pt-timeout S      seconds one PyTorch baseline process may take (default 900; max-autotune compiles for minutes)
//   --decode-workers N  the e2e row's numWorkers (default: the loaders' own, one worker process from 64 images; 0
//                       decodes in the bench's process, whose decoder memory then stays resident through the fit)
//   --aug full|affine|both  the train step's augmentation, the same on both sides: fast.ai's whole
//                       aug_transforms() (default), or flip/rotate/zoom only (the PyTorch reference of ../shared/device)
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { hooks, hostMallocSettings, setBatchNormKernels, type BatchNormKernels } from '../src/hooks.js';
import { augTransforms, imagenetStats, ImageDataLoaders, loadLearner, torchInfo, visionLearner, type Learner } from '../src/index.js';
import { compareTraces, readTrace } from '../src/bench.js';
import { readCovidMetadata } from '../src/datasets/covid.js';
import { decodeAll } from '../src/data/images.js';
import { decodeWorkers } from '../src/data/workers.js';
import { foldBatchNormDefault } from '../src/info.js';
import { checkArch } from '../src/model.js';
import { servingBench } from './bench/serving.js';
import { randomPixels } from './bench/pixels.js';
import { scalingBench } from './bench/scaling.js';

const { values: args } = parseArgs({
  options: {
    device: { type: 'string' },
    python: { type: 'string' },
    quick: { type: 'boolean', default: false },
    data: { type: 'string', default: '../shared/datasets/covid-chestxray' },
    out: { type: 'string', default: 'out/bench.json' },
    images: { type: 'string' },
    bs: { type: 'string' },
    precisions: { type: 'string' },
    iters: { type: 'string' },
    profile: { type: 'boolean', default: false },
    trace: { type: 'string' },
    only: { type: 'string' },
    graph: { type: 'string' },
    frozen: { type: 'string' },
    aug: { type: 'string' },
    bn: { type: 'string' },
    adam: { type: 'string' },
    pt: { type: 'string' },
    'pt-timeout': { type: 'string', default: '900' },
    'decode-workers': { type: 'string' },
    arch: { type: 'string' },
  },
});
const info = torchInfo();
const device = args.device ?? (info.cuda ? 'cuda' : 'cpu');
const cuda = device.startsWith('cuda');
const python = args.python ?? (cuda ? 'python3' : '/usr/bin/python3');
const rows: Record<string, unknown>[] = [];
// PyTorch gets the same CPU threads as torchlearn: its own default follows OpenMP's, which is one thread
// on some machines (this project's among them), and that would make the baseline look twice as slow.
const ptThreads = ['--threads', String(info.threads)];
const log = (s: string) => process.stderr.write(s + '\n');
if (args.trace) mkdirSync(args.trace, { recursive: true });

// Same shapes on both sides. CPU: a ResNet50 at 128 px on 2 cores; GPU: the H100 reference workload.
const cfg = cuda
  ? { arch: 'resnet50', size: 224, presize: 256, bss: [64, 256], iters: args.quick ? 10 : 30, precisions: ['bf16', 'fp32'] }
  : { arch: 'resnet50', size: 128, presize: 160, bss: [16], iters: args.quick ? 3 : 6, precisions: ['fp32'] };
if (args.arch) cfg.arch = checkArch(args.arch);
if (args.bs) cfg.bss = args.bs.split(',').map(Number);
if (args.precisions) cfg.precisions = args.precisions.split(',');
if (args.iters) cfg.iters = Number(args.iters);
const graphArg = args.graph ?? (cuda ? 'both' : 'off');
if (!['off', 'on', 'both'].includes(graphArg)) throw new Error(`--graph must be off, on or both, got '${graphArg}'`);
const graphModes = graphArg === 'both' ? [false, true] : [graphArg === 'on'];
const frozenArg = args.frozen ?? 'both';
if (!['frozen', 'unfrozen', 'both'].includes(frozenArg)) throw new Error(`--frozen must be frozen, unfrozen or both, got '${frozenArg}'`);
const frozenModes = frozenArg === 'both' ? [true, false] : [frozenArg === 'frozen'];
const augArg = args.aug ?? 'full';
if (!['full', 'affine', 'both'].includes(augArg)) throw new Error(`--aug must be full, affine or both, got '${augArg}'`);
const augModes = augArg === 'both' ? ['full', 'affine'] : [augArg];
// left out, each is the learner's own default (undefined here)
const bnModes: (BatchNormKernels | undefined)[] = args.bn ? (args.bn === 'all' ? 'cudnn-fused,aten' : args.bn).split(',') as BatchNormKernels[] : [undefined];
const adamModes: (boolean | undefined)[] = !args.adam ? [undefined] : (args.adam === 'all' ? 'foreach,fused' : args.adam).split(',').map((a) => {
  if (a !== 'foreach' && a !== 'fused') throw new Error(`--adam takes foreach, fused (a comma-separated list) or all, got '${a}'`);
  return a === 'fused';
}).filter((fused) => {
  const why = !cuda ? 'the fused AdamW kernel is for CUDA' : info.fusedAdam ? '' : "this addon was built without PyTorch's fused AdamW kernel (LibTorch 2.1 or later)";
  if (fused && why) log(`--adam fused skipped: ${why}`);
  return !fused || !why;
});
const ptModes = (args.pt ?? (cuda ? 'eager,cudagraph,compile,compile-max-autotune' : 'eager,eager-malloc')).split(',');
for (const m of ptModes) if (!['eager', 'eager-malloc', 'cudagraph', 'compile', 'compile-max-autotune'].includes(m)) throw new Error(`--pt takes eager, eager-malloc, cudagraph, compile, compile-max-autotune (a comma-separated list), got '${m}'`);
const ptName: Record<string, string> = { eager: 'pytorch eager', 'eager-malloc': 'pytorch eager, tuned malloc', cudagraph: 'pytorch eager + CUDA graph', compile: 'pytorch torch.compile (default)', 'compile-max-autotune': 'pytorch torch.compile (max-autotune)' };
// 'eager-malloc': PyTorch under the glibc malloc settings torchlearn applies in its own process
// (native/host_malloc.cpp), given through glibc's variables: what a PyTorch user gets by setting them
const tunedMallocEnv = Object.fromEntries(Object.entries(hostMallocSettings()).map(([k, v]) => [k, String(v)]));
// affine: every image flipped or not, rotated and zoomed (as the PyTorch side's affine-only pipeline); no warp, no lighting
const trainAug = (aug: string) => (aug === 'full' ? augTransforms() : augTransforms({ maxWarp: 0, maxLighting: 0, pAffine: 1 }));
const implName = (graph: boolean) => (graph ? (cuda ? 'torchlearn (CUDA graph)' : 'torchlearn (graph step, no capture)') : 'torchlearn');

// Each torchlearn row's own peak resident memory: Linux resets the process's high-water mark (VmHWM) to the
// current RSS when 5 is written to /proc/self/clear_refs, so a row's peak is not an earlier row's. (The PyTorch
// rows run in processes of their own.) Elsewhere, the process's peak since it started.
const canResetPeak = (() => {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
})();
function rowMemory(): { done: () => { peak_rss_bytes: number; rss_at_start_bytes?: number } } {
  const status = () => readFileSync('/proc/self/status', 'utf8');
  const kb = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+) kB`).exec(status())?.[1] ?? NaN) * 1024;
  if (!canResetPeak) return { done: () => ({ peak_rss_bytes: process.resourceUsage().maxRSS * 1024 }) };
  writeFileSync('/proc/self/clear_refs', '5');
  const start = kb('VmRSS');
  return { done: () => ({ peak_rss_bytes: kb('VmHWM'), rss_at_start_bytes: start }) };
}

function pytorch(extra: string[], env?: Record<string, string>): Record<string, unknown>[] {
  try {
    const out = execFileSync(python, ['scripts/bench/pytorch_train.py', ...ptThreads, '--device', device, '--arch', cfg.arch, '--size', String(cfg.size), '--presize', String(cfg.presize), ...extra], { encoding: 'utf8', maxBuffer: 1 << 24, timeout: Number(args['pt-timeout']) * 1000, killSignal: 'SIGKILL', env: { ...process.env, ...env } });
    return out.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  } catch (e) {
    const err = e as Error & { signal?: string };
    log(`PyTorch baseline (${extra.join(' ')}) failed: ${err.signal === 'SIGKILL' ? `did not finish within --pt-timeout ${args['pt-timeout']} s` : err.message.split('\n')[0]}`);
    return [];
  }
}

async function decodeBench() {
  const csv = join(args.data!, 'metadata.csv');
  if (!existsSync(csv)) return log(`decode bench skipped: no dataset at ${args.data}`);
  const paths = readCovidMetadata(csv).items.map((i) => i.path);
  const presize = 280;
  const t = performance.now();
  const res = await decodeAll(paths, presize, 'crop');
  const s = (performance.now() - t) / 1000;
  const ok = res.filter((r) => r.ok).length;
  rows.push({ bench: 'decode+presize', impl: 'torchlearn (sharp)', images: ok, presize, images_per_s: ok / s });
  try {
    const pil = JSON.parse(execFileSync('/usr/bin/python3', ['scripts/bench/pil_decode.py', String(presize), ...paths], { encoding: 'utf8' }).trim());
    rows.push({ bench: 'decode+presize', impl: 'pillow (1 thread)', images: pil.images, presize, images_per_s: pil.images_per_s });
  } catch {
    log('Pillow baseline unavailable');
  }
}

// One more epoch under LibTorch's profiler; a profiler that fails (no CUPTI, say) costs the trace, not the bench.
async function traced(learn: Learner, path: string) {
  try {
    await learn.fitOneCycle(1, { trace: path });
  } catch (e) {
    log(`trace ${path} failed: ${(e as Error).message.split('\n')[0]}`);
  }
}


async function trainBench() {
  for (const bs of cfg.bss) {
    for (const prec of cfg.precisions) for (const aug of augModes) {
      const n = bs * cfg.iters;
      const p = cfg.presize;
      const images = randomPixels(n * p * p * 3);
      const labels = Int32Array.from({ length: n }, (_, i) => i % 2);
      const dls = ImageDataLoaders.fromArrays(images, labels, ['a', 'b'], { presize: p, size: cfg.size, bs, validPct: 0, augment: trainAug(aug) });
      // PyTorch's baseline first: a bench cut short by its time limit still has the number to compare with
      const ptTrace = args.trace ? ['--trace', join(args.trace, `pytorch-bs${bs}-${prec}-${aug}.json`)] : [];
      // one process per mode, so that each row's peak memory is its own
      for (const mode of ptModes) for (const r of pytorch(['--mode', mode === 'eager-malloc' ? 'eager' : mode, '--images', String(n), '--bs', String(bs), '--iters', String(cfg.iters), '--warmup', cuda ? '5' : '1', '--precisions', prec, '--frozen', frozenArg, '--aug', aug, ...(args.profile ? ['--profile'] : []), ...(mode === 'eager' ? ptTrace : [])], mode === 'eager-malloc' ? tunedMallocEnv : undefined)) {
        if (r.profile_ms) log(`profile pytorch bs ${bs} ${prec} ${r.frozen ? 'frozen' : 'unfrozen'}: ms per step: ${JSON.stringify(r.profile_ms)}`);
        rows.push({ bench: 'train step', ...r, impl: ptName[mode], precision: prec });
        log(JSON.stringify(r));
      }
      for (const frozen of frozenModes) for (const graph of graphModes) for (const batchNorm of bnModes) for (const fusedAdam of adamModes) {
        hooks.cudaMemory(true);
        const memory = rowMemory();
        const learn = await visionLearner(dls, cfg.arch as 'resnet50', { pretrained: false, verbose: false, device, precision: prec as 'fp32' | 'bf16', seed: 0, cudaGraph: graph, fusedAdam });
        if (batchNorm) setBatchNormKernels(learn, batchNorm);
        if (frozen) learn.freeze();
        else learn.unfreeze();
        await learn.fitOneCycle(2); // epoch 0 warms up (cuDNN autotuning, allocator, the graph's capture), epoch 1 is measured
        const s = learn.recorder.trainSeconds[1];
        const graphInfo = graph ? learn.recorder.graphs[1] : undefined;
        if (graphInfo?.error) log(`CUDA graph not captured: ${graphInfo.error.split('\n')[0]}`);
        if (args.profile && !graph) {
          await learn.fitOneCycle(1, { profile: true });
          const p = learn.recorder.profiles[0];
          const per = (x: number) => ((1000 * x) / cfg.iters).toFixed(1);
          log(`profile torchlearn bs ${bs} ${prec} ${frozen ? 'frozen' : 'unfrozen'}: ms per step: data ${per(p.data)}, forward ${per(p.forward)}, backward ${per(p.backward)}, optimizer ${per(p.step)}; channels_last weight ${p.weightChannelsLast}, grad ${p.gradChannelsLast}, input ${p.inputChannelsLast}`);
        }
        if (args.trace && !frozen) await traced(learn, join(args.trace, `torchlearn${graph ? '-graph' : ''}${batchNorm ? `-bn-${batchNorm}` : ''}${fusedAdam ? '-fusedadam' : ''}-bs${bs}-${prec}-${aug}.json`));
        const mem = hooks.cudaMemory();
        const row = {
          bench: 'train step', impl: implName(graph) + (cuda && prec === 'bf16' && batchNorm ? `, ${batchNorm} BatchNorm` : '') + (cuda && fusedAdam !== undefined ? (fusedAdam ? ', fused Adam' : ', foreach Adam') : ''), aug, arch: cfg.arch, device, bs, size: cfg.size, precision: prec, frozen, images_per_s: (bs * cfg.iters) / s,
          peak_device_bytes: mem.peakAllocated, ...memory.done(), ...(graphInfo ? { graph: graphInfo } : {}),
        };
        rows.push(row);
        log(JSON.stringify(row));
        learn.dispose();
      }
      if (args.trace) {
        const ours = join(args.trace, `torchlearn-bs${bs}-${prec}-${aug}.json`);
        const theirs = join(args.trace, `pytorch-bs${bs}-${prec}-${aug}.json`);
        if (existsSync(ours) && existsSync(theirs)) log(`\noperators per unfrozen step, bs ${bs} ${prec}, ${aug} aug (largest differences first):\n${compareTraces(readTrace(ours), readTrace(theirs))}\n`);
      }
    }
  }
}

function augmentBench() {
  const bs = cuda ? 256 : 64;
  const spb = hooks.benchAugment({ device, n: bs * 2, presize: 280, size: 224, bs, iters: cuda ? 50 : 5, aug: augTransforms(), ...imagenetStats });
  rows.push({ bench: 'batch assembly + augmentation', impl: 'torchlearn', device, bs, size: 224, batches_per_s: 1 / spb, images_per_s: bs / spb });
  // what MixUp and CutMix add to a batch, at the train step's batch size and image size (the share of the step:
  // filled in from the train step's row, below); several interleaved rounds, the medians
  const tb = cfg.bss[0];
  const per = (mix: 'none' | 'mixup' | 'cutmix') => hooks.benchAugment({ device, n: tb * 4, presize: cfg.presize, size: cfg.size, bs: tb, iters: cuda ? 50 : 20, aug: augTransforms(), ...imagenetStats, mix });
  const times: Record<string, number[]> = { none: [], mixup: [], cutmix: [] };
  for (let round = 0; round < 5; round++) for (const m of ['none', 'mixup', 'cutmix'] as const) times[m].push(per(m));
  const median = (a: number[]) => a.slice().sort((x, y) => x - y)[a.length >> 1];
  for (const m of ['mixup', 'cutmix'] as const)
    rows.push({ bench: `${m === 'mixup' ? 'MixUp' : 'CutMix'} per batch`, impl: 'torchlearn', device, bs: tb, size: cfg.size, added_ms: 1000 * (median(times[m]) - median(times.none)), pipeline_ms: 1000 * median(times.none) });
}

async function endToEndBench() {
  // fitOneCycle on real image files (one sub-folder per class): decode, cache, and whole epochs
  const bs = cuda ? 256 : 16;
  const memory = rowMemory(); // (decoding included: the whole fitOneCycle's peak, one row per graph mode after the first)
  const t = performance.now();
  const numWorkers = args['decode-workers'] === undefined ? undefined : Number(args['decode-workers']);
  const dls = await ImageDataLoaders.fromFolder(args.images!, { size: cfg.size, presize: cfg.presize, bs, quiet: true, numWorkers });
  const decodeS = (performance.now() - t) / 1000;
  const prec = cuda ? 'bf16' : 'fp32';
  for (const graph of graphModes) {
    hooks.cudaMemory(true);
    const learn = await visionLearner(dls, cfg.arch as 'resnet50', { pretrained: false, verbose: false, device, precision: prec, seed: 0, cudaGraph: graph });
    learn.unfreeze();
    await learn.fitOneCycle(3);
    const nTrain = dls.train.length * bs;
    const row = {
      bench: 'fitOneCycle epoch (real files)', impl: implName(graph), arch: cfg.arch, device, bs, size: cfg.size, precision: prec, frozen: false,
      images: dls.train.n + dls.valid.n, decode_s: decodeS, decode_workers: decodeWorkers(numWorkers, dls.train.n + dls.valid.n + dls.skipped.length),
      images_per_s: nTrain / learn.recorder.trainSeconds[2],
      images_per_s_with_validation: nTrain / learn.recorder.epochSeconds[2],
      peak_device_bytes: hooks.cudaMemory().peakAllocated,
      device_allocated_after_epochs: [hooks.cudaMemory().allocated],
      ...memory.done(),
    };
    rows.push(row);
    log(JSON.stringify(row));
    if (!graph) {
      // PyTorch on the same files and settings, in its own process (decode with PIL, the same split sizes,
      // augmentation and validation)
      for (const mode of ptModes.filter((m) => m === 'eager' || m === 'eager-malloc'))
        for (const r of pytorch(['--e2e', args.images!, '--epochs', '3', '--bs', String(bs), '--precisions', prec, '--aug', 'full'], mode === 'eager-malloc' ? tunedMallocEnv : undefined))
          rows.push({ bench: 'fitOneCycle epoch (real files)', ...r, impl: ptName[mode], precision: prec, frozen: false });
    }
    // one more epoch, traced: beside the bare step's trace, it shows what a whole epoch adds (in the Chrome
    // trace, as gaps on the GPU timeline)
    if (args.trace) await traced(learn, join(args.trace, `torchlearn${graph ? '-graph' : ''}-epoch-bs${bs}-${prec}.json`));
    learn.dispose();
  }
}

async function inferenceBench() {
  // single-image latency (decode included) and batched throughput of an exported classifier (--arch)
  const size = 224;
  const presize = 256;
  const bs = cuda ? 256 : 16;
  const iters = cuda ? 20 : 3;
  const tmp = join('out', 'bench-inference');
  mkdirSync(tmp, { recursive: true });
  const img = join(tmp, 'xray.png');
  const sample = existsSync(join(args.data!, 'metadata.csv')) ? readCovidMetadata(join(args.data!, 'metadata.csv')).items[0].path : null;
  const sharp = (await import('sharp')).default;
  if (sample) await sharp(sample).toFile(img);
  else await sharp({ create: { width: 1024, height: 1024, channels: 3, background: { r: 90, g: 90, b: 90 } } }).png().toFile(img);
  const n = 64;
  const images = randomPixels(n * presize * presize * 3);
  const dls = ImageDataLoaders.fromArrays(images, Int32Array.from({ length: n }, (_, i) => i % 2), ['a', 'b'], { presize, size, bs });
  const learn = await visionLearner(dls, cfg.arch as 'resnet50', { pretrained: false, verbose: false, device, seed: 0 });
  const path = await learn.export(join(tmp, 'export.safetensors'));
  learn.dispose();
  const inf = loadLearner(path, { device, bs });
  for (let i = 0; i < 2; i++) await inf.predict(img);
  const ts: number[] = [];
  for (let i = 0; i < (cuda ? 20 : 5); i++) {
    const t = performance.now();
    await inf.predict(img);
    ts.push(performance.now() - t);
  }
  ts.sort((a, b) => a - b);
  rows.push({ bench: 'predict latency (decode included)', impl: 'torchlearn', arch: cfg.arch, device, size, median_ms: ts[ts.length >> 1] });
  const batch = randomPixels(bs * presize * presize * 3);
  await inf.predictImages(batch, bs);
  const t = performance.now();
  for (let i = 0; i < iters; i++) await inf.predictImages(batch, bs);
  rows.push({ bench: 'inference throughput', impl: 'torchlearn', arch: cfg.arch, device, bs, size, precision: cuda ? 'bf16' : 'fp32', fold_batchnorm: foldBatchNormDefault(device), images_per_s: (bs * iters) / ((performance.now() - t) / 1000) });
  {
    // the other side of the foldBatchNorm default (folded on the CPU, not on CUDA), the same batches
    const fold = !foldBatchNormDefault(device);
    const alt = loadLearner(path, { device, bs, foldBatchNorm: fold });
    await alt.predictImages(batch, bs);
    const ta = performance.now();
    for (let i = 0; i < iters; i++) await alt.predictImages(batch, bs);
    rows.push({ bench: `inference throughput, BatchNorm ${fold ? 'folded' : 'not folded'}`, impl: 'torchlearn', arch: cfg.arch, device, bs, size, precision: cuda ? 'bf16' : 'fp32', fold_batchnorm: fold, images_per_s: (bs * iters) / ((performance.now() - ta) / 1000) });
    alt.dispose();
  }
  // the same work in PyTorch (uint8 images in host memory to probabilities in host memory), and, as a ceiling,
  // PyTorch's forward alone on an input already on the device
  const ptInference = (mode: string, extra: string[] = [], env?: Record<string, string>) =>
    JSON.parse(execFileSync(python, ['scripts/bench/pytorch_train.py', ...ptThreads, '--device', device, '--arch', cfg.arch, '--size', String(size), '--presize', String(presize), mode, '--bs', String(bs), '--iters', String(iters), '--precisions', cuda ? 'bf16' : 'fp32', ...extra], { encoding: 'utf8', env: { ...process.env, ...env } }).trim().split('\n').pop()!);
  const ours = args.trace ? join(args.trace, `torchlearn-inference-bs${bs}.json`) : undefined;
  const theirs = args.trace ? join(args.trace, `pytorch-inference-bs${bs}.json`) : undefined;
  if (ours) {
    try {
      await inf.predictImages(batch, bs, { trace: ours });
    } catch (e) {
      log(`trace ${ours} failed: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  inf.dispose();
  try {
    const latency = (env?: Record<string, string>) =>
      JSON.parse(execFileSync(python, ['scripts/bench/pytorch_train.py', ...ptThreads, '--device', device, '--arch', cfg.arch, '--size', String(size), '--presize', String(presize), '--latency', img, '--iters', cuda ? '20' : '5'], { encoding: 'utf8', env: { ...process.env, ...env } }).trim());
    const lat = latency();
    rows.push({ bench: 'predict latency (decode included)', impl: 'pytorch eager + PIL', arch: cfg.arch, device, size, threads: lat.threads, median_ms: lat.median_ms });
    const host = ptInference('--inference-host', theirs ? ['--trace', theirs] : []);
    if (ours && theirs && existsSync(ours) && existsSync(theirs)) log(`\noperators per predictImages call of ${bs} images (largest differences first):\n${compareTraces(readTrace(ours), readTrace(theirs))}\n`);
    rows.push({ bench: 'inference throughput', impl: 'pytorch eager', arch: cfg.arch, device, bs, size, precision: cuda ? 'bf16' : 'fp32', threads: host.threads, images_per_s: host.images_per_s });
    // (after the plain rows: each torchlearn row's ratio is to the first PyTorch row of its kind)
    if (ptModes.includes('eager-malloc')) {
      const latM = latency(tunedMallocEnv);
      rows.push({ bench: 'predict latency (decode included)', impl: 'pytorch eager + PIL, tuned malloc', arch: cfg.arch, device, size, threads: latM.threads, median_ms: latM.median_ms });
      const hostM = ptInference('--inference-host', [], tunedMallocEnv);
      rows.push({ bench: 'inference throughput', impl: 'pytorch eager, tuned malloc', arch: cfg.arch, device, bs, size, precision: cuda ? 'bf16' : 'fp32', threads: hostM.threads, images_per_s: hostM.images_per_s });
    }
    const thr = ptInference('--inference');
    rows.push({ bench: 'inference, forward only (input on the device)', impl: 'pytorch eager', arch: cfg.arch, device, bs, size, precision: cuda ? 'bf16' : 'fp32', threads: thr.threads, images_per_s: thr.images_per_s });
  } catch (e) {
    log(`PyTorch inference baseline failed: ${(e as Error).message.split('\n')[0]}`);
  }
}

log(`torchlearn bench on ${device} (${info.deviceName ?? `${info.threads} CPU threads`}), LibTorch ${info.torchVersion}`);
const only = new Set((args.only ?? (cuda ? 'decode,augment,inference,train,e2e' : 'decode,augment,inference,train,e2e,serve,scaling')).split(','));
if (!cuda && only.has('decode')) await decodeBench();
if (only.has('augment')) augmentBench();
if (only.has('inference')) await inferenceBench();
if (only.has('train')) await trainBench();
// the end-to-end row needs class folders: --images, or (on this machine) the collection's PA images linked
// into covid_positive / covid_negative folders under out/
if (!args.images && only.has('e2e') && existsSync(join(args.data!, 'metadata.csv'))) {
  const { segregateByLabel } = await import('../src/datasets/covid.js');
  args.images = join('out', 'bench-xray');
  segregateByLabel(readCovidMetadata(join(args.data!, 'metadata.csv')).items, args.images);
}
if (args.images && only.has('e2e')) await endToEndBench();
// data-parallel training, the train rows' work per rank: on the CPU 2 ranks x 1 thread against 1 process x 1
// thread; on CUDA the plain learner, a world of one with NCCL, and one rank per GPU
if (only.has('scaling'))
  await scalingBench(rows, { device: cuda ? 'cuda' : 'cpu', gpus: info.deviceCount, arch: cfg.arch, size: cfg.size, presize: cfg.presize, bs: cfg.bss[0], iters: cfg.iters, rounds: args.quick || cuda ? 1 : 3, log });
if (only.has('serve')) {
  const csv = join(args.data!, 'metadata.csv');
  await servingBench(rows, { device, quick: args.quick!, log, sample: existsSync(csv) ? readCovidMetadata(csv).items[0].path : null });
}

// MixUp's and CutMix's cost as a share of the train step of the same batch and image size (unfrozen, first precision)
for (const r of rows.filter((q) => q.added_ms !== undefined)) {
  const step = rows.find((q) => q.bench === 'train step' && String(q.impl).startsWith('torchlearn') && q.bs === r.bs && q.frozen === false && q.precision === cfg.precisions[0]);
  if (step) r.share_of_step = (r.added_ms as number) / ((1000 * (step.bs as number)) / (step.images_per_s as number));
}

// ratios: torchlearn / pytorch for matching rows
const fmt = (x: unknown) => (typeof x === 'number' ? (x > 100 ? x.toFixed(0) : x.toFixed(2)) : String(x ?? ''));
console.log('\n| bench | impl | config | images/s (or ms) | peak device MB | peak RSS MB | vs PyTorch | vs fastest PyTorch (mode) |');
console.log('|---|---|---|---|---|---|---|---|');
for (const r of rows) {
  const config = r.bench === 'data-parallel scaling' ? `${r.arch} bs ${r.bs} per rank ${r.size}px unfrozen` : r.bench !== 'train step' && r.arch ? `${r.arch} ${r.bs ? `bs ${r.bs} ` : ''}${r.size}px${r.precision ? ` ${r.precision}` : ''}` : r.bench === 'train step' ? `${r.arch} bs ${r.bs} ${r.size}px ${r.precision}${r.frozen ? ' frozen' : ' unfrozen'}${r.aug ? `, ${r.aug} aug` : ''}` : r.bs ? `bs ${r.bs} ${r.size}px` : `${r.images} files to ${r.presize}px`;
  const sameStep = (q: Record<string, unknown>) => q.bench === 'train step' && r.bench === 'train step' && String(q.impl).startsWith('pytorch') && q.bs === r.bs && q.frozen === r.frozen && q.precision === r.precision && q.aug === r.aug;
  const twin = rows.find((q) => sameStep(q) && q.impl === 'pytorch eager');
  const fastest = rows.filter((q) => sameStep(q) && q.impl !== 'pytorch eager').sort((a, b) => (b.images_per_s as number) - (a.images_per_s as number))[0];
  const vsFastest = String(r.impl).startsWith('torchlearn') && fastest ? `${((r.images_per_s as number) / (fastest.images_per_s as number)).toFixed(2)}x (${String(fastest.impl).replace('pytorch ', '')})` : r.warmup_s !== undefined && r.mode !== 'eager' ? `warm-up (compile, capture) ${fmt(r.warmup_s)} s` : '';
  const bare = rows.find((q) => q.bench === 'train step' && q.impl === r.impl && r.bench !== 'train step' && q.bs === r.bs && q.frozen === r.frozen && q.precision === r.precision);
  const inferTwin = r.impl === 'torchlearn' && r.bench !== 'train step' ? rows.find((q) => q !== r && q.bench === r.bench && !String(q.impl).startsWith('torchlearn')) : undefined;
  let ratio = String(r.impl).startsWith('torchlearn') && twin ? `${((r.images_per_s as number) / (twin.images_per_s as number)).toFixed(2)}x` : '';
  const speedup = (x: number) => (x >= 1 ? `${x.toFixed(2)}x faster` : `${(1 / x).toFixed(2)}x slower`);
  if (inferTwin) ratio = r.median_ms !== undefined ? speedup((inferTwin.median_ms as number) / (r.median_ms as number)) : `${((r.images_per_s as number) / (inferTwin.images_per_s as number)).toFixed(2)}x`;
  if (bare && r.images_per_s_with_validation) ratio = `${((r.images_per_s_with_validation as number) / (bare.images_per_s as number) * 100).toFixed(0)}% of bare step (train only: ${((r.images_per_s as number) / (bare.images_per_s as number) * 100).toFixed(0)}%)`;
  const e2eTwin = String(r.impl).startsWith('torchlearn') && r.images_per_s_with_validation ? rows.find((q) => q.bench === r.bench && q.impl === 'pytorch eager' && q.bs === r.bs) : undefined;
  if (e2eTwin) ratio += `; ${((r.images_per_s_with_validation as number) / (e2eTwin.images_per_s_with_validation as number)).toFixed(2)}x PyTorch's epoch`;
  if (r.added_ms !== undefined) ratio = `+${fmt(r.added_ms)} ms a batch (pipeline ${fmt(r.pipeline_ms)} ms)${r.share_of_step !== undefined ? ` = ${((r.share_of_step as number) * 100).toFixed(2)}% of the train step` : ''}`;
  if (r.requests_per_s !== undefined) ratio = `${r.connections} conn: p50 ${r.p50_ms} / p90 ${r.p90_ms} / p99 ${r.p99_ms} ms, ${r.errors} errors`;
  const alone = r.allreduce_share !== undefined ? rows.find((q) => q.bench === r.bench && q.world === 1 && (q.device === 'cuda' ? String(q.impl).includes('plain') : q.threads === 1)) : undefined;
  if (alone && r !== alone) ratio = `${((r.images_per_s as number) / (alone.images_per_s as number)).toFixed(2)}x ${r.device === 'cuda' ? 'the plain learner' : '1 process x 1 thread'}${(r.world as number) > 1 ? `; all-reduce ${((r.allreduce_share as number) * 100).toFixed(1)}% of a step` : ''}`;
  if (r.vs_sequential !== undefined) ratio = `${fmt(r.vs_sequential)}x sequential, ${((r.vs_predict_batch as number) * 100).toFixed(0)}% of predictBatch`;
  const speed = r.added_ms !== undefined ? `${fmt(r.added_ms)} ms` : r.median_ms !== undefined ? `${fmt(r.median_ms)} ms` : r.requests_per_s !== undefined ? `${fmt(r.requests_per_s)} req/s` : fmt(r.images_per_s);
  console.log(`| ${r.bench} | ${r.impl} | ${config} | ${speed} | ${r.peak_device_bytes ? ((r.peak_device_bytes as number) / 2 ** 20).toFixed(0) : ''} | ${r.peak_rss_bytes ? ((r.peak_rss_bytes as number) / 2 ** 20).toFixed(0) : ''} | ${ratio} | ${vsFastest} |`);
}
const result = { date: new Date().toISOString(), device, deviceName: info.deviceName, threads: info.threads, torchVersion: info.torchVersion, rows };
mkdirSync('out', { recursive: true });
writeFileSync(args.out!, JSON.stringify(result, null, 2));
console.log('\n' + JSON.stringify(result));
