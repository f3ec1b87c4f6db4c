// The only module that touches the compiled addon: it loads it, checks that it matches these
// sources, and declares its typed surface. Every other file imports from here.
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread } from 'node:worker_threads';
import type { AugOptions } from './data/transforms.js';
import type { ImageStore } from './data/store.js';

/** A tensor element type, named as in .safetensors files. */
export type DType = 'F32' | 'F64' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

/** A tensor crossing the boundary: raw little-endian bytes, C order. */
export interface NamedTensor {
  name: string;
  dtype: DType;
  shape: number[];
  data: Uint8Array;
}

/** The kernels of training-mode BatchNorm on bf16 CUDA batches (native/resnet.h, TrainBn): a bench and test
 * setting (src/hooks.ts), not a learner option. */
export type BatchNormKernels = 'aten' | 'cudnn-fused';

/** The LibTorch the addon was built against, and the devices it sees (`torchInfo()`). */
export interface TorchInfo {
  torchVersion: string;
  torchSource: string;
  cuda: boolean;
  cudnn: boolean;
  deviceCount: number;
  deviceName?: string;
  threads: number;
  /** this LibTorch has PyTorch's fused AdamW kernel (2.1 or later): the learner option fusedAdam */
  fusedAdam: boolean;
  /** the newest TorchScript file format (the `version` record of a torch.jit.save file) this LibTorch loads */
  torchscriptFormat: number;
  /**
   * The C library's allocator: 'tuned' (glibc kept from giving memory back on every free while work runs;
   * docs/design.md, "Host memory"), or 'system' with the reason (TORCHLEARN_MALLOC=system, glibc's own
   * MALLOC_* or GLIBC_TUNABLES variables set, or not glibc).
   */
  hostMalloc: string;
}

/** What loading a weight file matched: keys missing from the file, keys the network does not have, keys whose shapes differ, and the number loaded. */
export interface LoadReport {
  missing: string[];
  unexpected: string[];
  mismatched: string[];
  loaded: number;
}

export interface ParamRow {
  name: string;
  group: number;
  isNorm: boolean;
  noDecay: boolean;
  requiresGrad: boolean;
  numel: number;
}

export interface NativeNet {
  numParams(): number;
  numGroups(): number;
  stateDictKeys(): string[];
  stateDict(): NamedTensor[];
  loadStateDict(t: NamedTensor[], o: { strict: boolean; skipPrefixes?: string[]; source?: string; hint?: string }): LoadReport;
  forward(data: Float32Array, shape: number[]): Promise<{ data: Float32Array; shape: number[] }>;
  to(device: string): NativeNet;
  setTraining(on: boolean): NativeNet;
  isTraining(): boolean;
  device(): string;
  paramTable(): ParamRow[];
  dispose(): void;
}

export interface NativeSchedule {
  kind: 'onecycle' | 'constant' | 'flatcos' | 'exp';
  lrMax: number[];
  lrEnd?: number[];
  div?: number;
  divFinal?: number;
  pctStart?: number;
  moms?: [number, number, number];
}

export interface NativeEpochResult {
  losses: Float32Array;
  smoothLosses: Float32Array;
  lrs: Float64Array;
  moms: Float64Array;
  smoothVal: number;
  smoothCount: number;
  nIter: number;
  done: number;
  stopped: boolean;
  seconds: number;
  /** the learner's random state when the epoch started (to train the rest of it later) */
  epochRng: Uint8Array;
  /** with { profile: true }: seconds per phase (device synchronised between phases) and layout checks */
  profile?: {
    data: number; forward: number; backward: number; step: number; weightChannelsLast: boolean; gradChannelsLast: boolean; inputChannelsLast: boolean;
    /** the native thread that ran the epoch: one persistent thread, shared by CPU networks, a CUDA network's own */
    thread: string;
  };
  /** with { trace }: every operator (cpu) and kernel (cuda) LibTorch's profiler saw */
  ops?: { name: string; device: 'cpu' | 'cuda'; count: number; totalUs: number }[];
  /** with the cudaGraph option: steps the graph took (the rest were ordinary: warm-up), whether it was
   * captured (CUDA) or ran eagerly (CPU), and why a capture failed */
  graph?: { steps: number; captured: boolean; error?: string };
}

export interface NativePreds {
  probs: Float32Array;
  numClasses: number;
  targets?: Int32Array;
  losses?: Float32Array;
  seconds: number;
  /** with a trace: the call's operator table */
  ops?: { name: string; device: 'cpu' | 'cuda'; count: number; totalUs: number }[];
}

/** The augmentation's settings as the addon takes them: the public AugOptions (src/data/transforms.ts). */
export type NativeAugOptions = AugOptions;

export interface NativeLearnerOptions {
  bs?: number;
  size?: number;
  aug?: NativeAugOptions | null;
  wd?: number;
  trainBn?: boolean;
  bf16?: boolean;
  labelSmoothing?: number;
  /** binary cross-entropy on multi-hot labels and sigmoid probabilities; fixed once data is set */
  multiLabel?: boolean;
  /** clip the gradients' global 2-norm to this before each optimizer step (0: off) */
  maxGradNorm?: number;
  /** MixUp or CutMix of every training batch (native/mixup.h); alpha of Beta(alpha, alpha) */
  mix?: { kind: 'none' | 'mixup' | 'cutmix'; alpha?: number };
  /** gradient accumulation over this many samples (0: off) */
  nAcc?: number;
  /** the tests' hook: BatchNorm layers in eval mode during training */
  batchNormEval?: boolean;
  /** training-mode BatchNorms synchronised over the ranks of a distributed run */
  syncBatchNorm?: boolean;
  classWeights?: Float32Array | null;
  mean?: number[];
  std?: number[];
  seed?: number;
  sqrMom?: number;
  eps?: number;
  cudaGraph?: boolean;
  foldBatchNorm?: boolean;
  batchNorm?: BatchNormKernels;
  fusedAdam?: boolean;
}

export interface NativeLearner {
  /** labels: class indices, or (multi-label) a Uint8Array of n * classes 0/1 values */
  setData(split: 'train' | 'valid', images: ImageStore | Uint8Array, labels: Int32Array | Uint8Array, presize: number): void;
  setOptions(o: NativeLearnerOptions): void;
  freezeTo(n: number): void;
  /** the tests' hook: one step's gradients (all-reduced on several ranks) for the given training images, no optimizer step */
  gradients(indices: Int32Array): Promise<Float32Array>;
  trainEpoch(o: {
    schedule: NativeSchedule;
    epoch: number;
    nEpochs: number;
    smoothVal: number;
    smoothCount: number;
    profile?: boolean;
    trace?: string;
    startBatch?: number;
    endBatch?: number;
    epochRng?: Uint8Array;
    /** the batches [from, from + losses.length) of the epoch, in order: every batch once */
    onProgress?: (e: { epoch: number; from: number; total: number; losses: Float32Array; smoothLosses: Float32Array }) => void;
  }): Promise<NativeEpochResult>;
  validate(o: {
    split: 'train' | 'valid';
    augment: boolean;
    onProgress?: (e: { iter: number; total: number }) => void;
  }): Promise<NativePreds & { targets: Int32Array; losses: Float32Array }>;
  lrFind(o: {
    startLr: number[];
    endLr: number[];
    numIt: number;
    stopDiv: boolean;
    mom: number;
    onProgress?: (e: { iter: number; total: number; smoothLoss: number; lr: number }) => void;
  }): Promise<{ lrs: Float64Array; losses: Float64Array }>;
  predict(images: ImageStore | Uint8Array, n: number, presize: number, o?: { augment?: boolean; trace?: string }): Promise<NativePreds>;
  gradCam(image: Uint8Array, presize: number, classIdx: number): Promise<{ map: Float32Array; h: number; w: number; probs: Float32Array }>;
  getState(withOpt: boolean): Promise<NamedTensor[]>;
  setState(t: NamedTensor[], withOpt: boolean): Promise<void>;
  requestStop(): void;
  dispose(): void;
}

interface Addon {
  abiVersion: number;
  prepareExit(): void;
  torchInfo(): TorchInfo;
  setNumThreads(n: number): void;
  manualSeed(seed: number): void;
  /** joins c10d's process group (native/distributed.cpp); once per process */
  distInit(o: { rank: number; worldSize: number; masterAddr: string; masterPort: number; timeoutMs: number; backend: string; agentStorePrefix?: string }): Promise<void>;
  distInfo(): { compiled: boolean; nccl: boolean; rank: number; worldSize: number; backend: string; gradSeconds: number; gradReduces: number; bucketsDuringBackward: number; buckets: number };
  distAllreduce(values: Float64Array, op: 'sum' | 'max'): Promise<Float64Array>;
  distShutdown(): void;
  /** sets the C library's allocator for tensor work (native/host_malloc.h); returns what is in force */
  tuneHostMalloc(mode: 'tuned' | 'system'): string;
  /** gives the memory the allocator keeps back to the system (a fit's start; native/host_malloc.h) */
  releaseHostMemory(): Promise<void>;
  /** the architecture names the addon builds (src/model.ts ARCHS, checked against it by the tests) */
  architectures(): string[];
  /** the tests' and the bench's entry points, typed in src/hooks.ts */
  hooks: unknown;
  augmentImages(
    images: Uint8Array,
    n: number,
    presize: number,
    size: number,
    o: { params?: Float64Array; aug?: NativeAugOptions | null; seed?: number },
  ): Uint8Array;
  Net: new (o: {
    /** a TorchScript body (arch 'torchscript'): the file's bytes, its name for messages, where fast.ai's later layer groups start */
    torchscript?: Uint8Array;
    source?: string;
    groupStarts?: string[];
    arch: string;
    kind: 'torchvision' | 'fastai';
    numClasses: number;
    head?: { hidden?: number; ps?: number; concatPool?: boolean; linearBias?: boolean };
  }) => NativeNet;
  Learner: new (net: NativeNet, o: { device: string; seed?: number; channelsLast?: boolean }) => NativeLearner;
  ImageStore: new (n: number, presize: number) => ImageStore;
}

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..');
const addonPath = process.env.TORCHLEARN_ADDON ?? join(packageRoot, 'build', 'Release', 'torchlearn.node');
const expectedAbi = Number(readFileSync(join(packageRoot, 'native', 'ABI_VERSION'), 'utf8').trim());
const rebuild = 'npm run build:native';

function loadAddon(): Addon {
  const require = createRequire(import.meta.url);
  if (!existsSync(addonPath)) {
    throw new Error(
      `torchlearn: the native addon is not built (looked for ${addonPath}).\n` +
        `Possible solutions:\n` +
        `  - build it: ${rebuild}  (needs cmake, g++ and LibTorch: sudo apt-get install libtorch-dev)\n` +
        `  - or run the setup of the README: bash scripts/setup.sh`,
    );
  }
  let addon: Addon;
  try {
    addon = require(addonPath) as Addon;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const msg = String(err.message);
    const hint = /lib(torch|c10)[^ ]*\.so/.test(msg)
      ? `  - a LibTorch library could not be found: reinstall it (sudo apt-get install libtorch-dev) or rebuild against the one you have: ${rebuild}`
      : `  - rebuild the addon for this machine and Node.js ${process.version}: ${rebuild}`;
    throw new Error(
      `torchlearn: the native addon at ${addonPath} could not be loaded on ${process.platform}-${process.arch} (${err.code ?? 'error'}):\n  ${msg}\n` +
        `Possible solutions:\n${hint}`,
    );
  }
  if (addon.abiVersion !== expectedAbi) {
    throw new Error(
      `torchlearn: the native addon is stale (built for interface version ${addon.abiVersion}, these sources need ${expectedAbi}).\n` +
        `Rebuild it: ${rebuild}`,
    );
  }
  // As the process exits, before any native exit handler: stop the native loops and let the workers leave
  // LibTorch (its objects are destroyed next). The main thread's exit only: a worker thread's ending is not
  // the process's.
  if (isMainThread) process.once('exit', () => addon.prepareExit());
  // TORCHLEARN_MALLOC: 'tuned' (the default) or 'system' (glibc's defaults; native/host_malloc.cpp says why
  // the default differs)
  const mallocMode = process.env.TORCHLEARN_MALLOC || 'tuned';
  if (mallocMode !== 'tuned' && mallocMode !== 'system') {
    throw new Error(`torchlearn: TORCHLEARN_MALLOC=${mallocMode}: use 'tuned' (the default) or 'system' (the C library's own settings)`);
  }
  if (isMainThread) addon.tuneHostMalloc(mallocMode);
  // TORCHLEARN_THREADS, else OMP_NUM_THREADS (which PyTorch reads, and torchrun and `torchlearn launch` set
  // for each rank), else every core
  const threadsVar = process.env.TORCHLEARN_THREADS ? 'TORCHLEARN_THREADS' : process.env.OMP_NUM_THREADS ? 'OMP_NUM_THREADS' : null;
  if (threadsVar) {
    const threads = process.env[threadsVar];
    try {
      addon.setNumThreads(Number(threads));
    } catch (e) {
      throw new Error(`torchlearn: ${threadsVar}=${threads}: ${(e as Error).message}`);
    }
  }
  return addon;
}

export const native: Addon = loadAddon();
