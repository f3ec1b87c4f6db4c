// fast.ai's Learner for vision: the hub that owns the network, the data, the optimizer state and
// the training loop's JavaScript half (epochs, metrics, callbacks, the table). Each batch runs in
// C++ on a native thread; this file only orchestrates.
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { native, type NativeEpochResult, type NativeLearner, type NativeNet, type NativeSchedule, type NamedTensor } from '../binding.js';
import { TestSet, type ImageDataLoaders } from '../data/loaders.js';
import { decodeAll, type ImageSource } from '../data/images.js';
import { foldBatchNormDefault, manualSeed, resolveDevice, torchInfo, usesBf16 } from '../info.js';
import { archInfo, checkArch, NetHandle, torchlearnFileKind, torchvisionStateDict, TORCHVISION_WEIGHTS, type Arch } from '../model.js';
import { isTorchScriptBody, readTorchScript, type ScriptSpec, type TorchScriptBody } from '../torchscript.js';
import { cachedWeightFile, hubCacheDir, pretrainedFileName, weightsBaseUrl, WEIGHTS_VERSIONS, type WeightsVersion } from '../weights/pretrained.js';
import { lrFindSpec, renderChart } from '../plot/charts.js';
import { writeGrid } from '../plot/grid.js';
import { readWeightFile, writeWeightFileAsync } from '../weights/index.js';
import { decode, EXPORTED_TORCHSCRIPT, exportMetadata, gradcamPresized, predictPaths, type Decoding, type Prediction } from '../prediction.js';
import type { Metric } from '../metrics.js';
import type { BatchInfo, Callback, EpochInfo } from './callbacks.js';
import { suggest, type Suggestions } from './lrfind.js';
import { formatTime, formatValue, ProgressBar, ResultsTable } from './progress.js';
import { Recorder } from './recorder.js';
import { lrPerGroup, type LrSpec } from './schedule.js';
import { chromeTracePath, writeNativeTrace } from './trace.js';
import { lossesFromProbs, ttaProbs, type TtaOptions } from '../tta.js';
import { distributedEnv } from '../distributed/env.js';
import { allreduceNumbers, isMainProcess, joinIfLaunched, numDistrib, requireJoinedIfLaunched } from '../distributed/group.js';

/** The loss: cross-entropy with these options; for multi-label loaders, binary cross-entropy on each label
 * (fast.ai's BCEWithLogitsLossFlat), which takes `thresh` only. */
export interface LossOptions {
  /** per-class weights of the cross-entropy (e.g. inverse class frequency for imbalance) */
  classWeights?: number[];
  labelSmoothing?: number;
  /** multi-label: the probability above which predict() gives a label (fast.ai's BCEWithLogitsLossFlat thresh, default 0.5) */
  thresh?: number;
}

/** Options of `visionLearner` and `new Learner`. */
export interface VisionLearnerOptions {
  /**
   * The body's starting weights, as fast.ai's `pretrained`: `true` (the default) is torchvision's ImageNet
   * weights for the architecture, version `'IMAGENET1K_V1'` (fast.ai's), or the version named
   * (`'IMAGENET1K_V2'` where torchvision has one): from PyTorch's hub cache, else downloaded into it
   * (src/weights/pretrained.ts). A path loads that torchvision file (.pth or .safetensors); `false` trains
   * from scratch. `new Learner()` takes a path or `false` only: `visionLearner()` resolves the rest.
   */
  pretrained?: boolean | WeightsVersion | string | null;
  metrics?: Metric[];
  /** decoupled weight decay (fast.ai: 0.01), not applied to BatchNorm parameters and biases */
  wd?: number;
  lossFunc?: LossOptions;
  /** BatchNorm layers of frozen groups keep training (fast.ai's train_bn, default true) */
  trainBn?: boolean;
  /** 'auto' (default) = CUDA when LibTorch has it, else the CPU */
  device?: string;
  /** 'auto' (default) = bf16 autocast on CUDA, fp32 on the CPU */
  precision?: 'auto' | 'fp32' | 'bf16';
  seed?: number;
  /** keep weights and batches in channels_last (NHWC) memory order (default: on CUDA only) */
  channelsLast?: boolean;
  /** capture the training step (forward, backward, optimizer) as one CUDA graph after 3 warm-up steps and
   * replay it for every batch (default: on CUDA, where it saves the host's kernel launches; off on the CPU,
   * where the same step would run without capture). Accumulating gradients, on several ranks and with
   * fusedAdam, the graph holds the forward and backward, and the rest of the step follows each replay;
   * with syncBatchNorm on several ranks the steps are ordinary. Measured gains: docs/performance.md */
  cudaGraph?: boolean;
  /** in a distributed run, BatchNorm in training normalises with the statistics of every rank's batch
   * (PyTorch's SyncBatchNorm), for small batches per device; slower: an all-reduce per BatchNorm, forward
   * and backward. Default false (each rank's own batch, as DDP without convert_sync_batchnorm) */
  syncBatchNorm?: boolean;
  /** validation and prediction run each BatchNorm of the body folded into its convolution (same results to
   * float rounding; default: on the CPU, where it is faster, off on CUDA); training is never folded */
  foldBatchNorm?: boolean;
  /** fast.ai's Adam step on CUDA through PyTorch's fused AdamW kernel (the same formula, one pass over the
   * parameters instead of about a dozen; with cudaGraph the graph then holds the forward and backward, and
   * the step follows each replay, since fitOneCycle changes the momentum every step). Default: on where
   * LibTorch has the kernel (2.1 or later: torchInfo().fusedAdam); no effect on the CPU */
  fusedAdam?: boolean;
  /** where save/load put checkpoints (default 'models') */
  modelDir?: string;
  /** the head: hidden units (512), dropout ps (0.5), concat pooling (true), biased linears (false = fast.ai v2) */
  head?: { hidden?: number; ps?: number; concatPool?: boolean; linearBias?: boolean };
  /** print the table and progress (default true) */
  verbose?: boolean;
  /** where log lines go (default console.log) */
  logger?: (line: string) => void;
}

/** Options of every fit (`fit`, `fitOneCycle`, `fitFlatCos`, `fineTune`). */
export interface FitOptions {
  wd?: number;
  cbs?: Callback[];
  signal?: AbortSignal;
  /** save a checkpoint under this name after every epoch, recording where the fit is (for `resume`) */
  checkpoint?: string;
  /** also save it every this many batches inside an epoch */
  checkpointEvery?: number;
  /** continue an interrupted fit from its checkpoint: same schedule, from the first unfinished epoch */
  resume?: string;
  /** time each phase of the step (data, forward, backward, optimizer) with the device synchronised between them: slower; results in recorder.profiles */
  profile?: boolean;
  /** write a Chrome trace (chrome://tracing, Perfetto) of the fit's first epoch to this path: every LibTorch
   * operator, and every CUDA kernel on a GPU, as torch.profiler records them */
  trace?: string;
}

/** Where a fit is, stored in its checkpoints. */
interface FitState {
  schedule: NativeSchedule;
  nEpoch: number;
  epochsDone: number;
  /** batches of epoch `epochsDone` already trained */
  batchesDone: number;
  smoothVal: number;
  smoothCount: number;
}

/** A checkpoint's fit state, checked field by field: a file is not trusted to hold what we wrote. */
function parseFitState(text: string, path: string): FitState {
  const bad = (what: string) => new Error(`resume: ${path}: damaged fit state (${what}); start the fit again without resume, or use another checkpoint`);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw bad('not JSON');
  }
  const f = v as Partial<FitState>;
  const count = (x: unknown) => typeof x === 'number' && Number.isInteger(x) && x >= 0;
  if (typeof f !== 'object' || f === null) throw bad('not an object');
  if (!count(f.nEpoch) || f.nEpoch! < 1) throw bad(`nEpoch ${JSON.stringify(f.nEpoch)}`);
  if (!count(f.epochsDone) || f.epochsDone! > f.nEpoch!) throw bad(`epochsDone ${JSON.stringify(f.epochsDone)}`);
  if (!count(f.batchesDone)) throw bad(`batchesDone ${JSON.stringify(f.batchesDone)}`);
  if (typeof f.smoothVal !== 'number' || !Number.isFinite(f.smoothVal)) throw bad(`smoothVal ${JSON.stringify(f.smoothVal)}`);
  if (!count(f.smoothCount)) throw bad(`smoothCount ${JSON.stringify(f.smoothCount)}`);
  const s = f.schedule;
  if (typeof s !== 'object' || s === null || !['onecycle', 'constant', 'flatcos', 'exp'].includes(s.kind) || !Array.isArray(s.lrMax) || !s.lrMax.every((x) => typeof x === 'number' && x >= 0))
    throw bad('schedule');
  return f as FitState;
}

/** Options of `fitOneCycle`, with fast.ai's defaults (`DEFAULTS`). */
export interface OneCycleOptions extends FitOptions {
  /** a number, [max] (slice(max)) or [min, max] (slice(min, max)); default 1e-3 */
  lrMax?: LrSpec;
  div?: number;
  divFinal?: number;
  pctStart?: number;
  moms?: [number, number, number];
}

/** What a fit returns: the epochs trained and whether it stopped early. */
export interface FitResult {
  epochs: number;
  stopped: boolean;
  /** per epoch: train_loss, valid_loss, metrics */
  values: number[][];
  names: string[];
  seconds: number;
}

/** What `lrFind` returns: the learning rates tried, the smoothed losses, fast.ai's four suggestions and the plot. */
export interface LrFindResult {
  lrs: number[];
  losses: number[];
  suggestions: Suggestions;
  /** Draws loss against learning rate (log scale) to a PNG, as fast.ai's `plot_lr_find`. */
  plot(path: string): Promise<{ width: number; height: number }>;
}

/** Predictions on a data set: probabilities [n, c] row by row, and targets and per-item losses when labels exist. */
export interface Preds {
  probs: Float32Array;
  numClasses: number;
  targets: Int32Array;
  losses: Float32Array;
}

/** Predictions on a test set (`getPreds({ dl })`): targets and per-item losses when it is labelled. */
export interface TestPreds {
  probs: Float32Array;
  numClasses: number;
  targets?: Int32Array;
  /** -log p(target), per item (the cross-entropy without label smoothing or class weights) */
  losses?: Float32Array;
}

/** fast.ai's defaults that are not about data. */
export const DEFAULTS = {
  lr: 1e-3,
  wd: 0.01,
  moms: [0.95, 0.85, 0.95] as [number, number, number],
  adamMom: 0.9,
  sqrMom: 0.99,
  eps: 1e-5,
  div: 25,
  divFinal: 1e5,
  pctStart: 0.25,
};

/** The native half of a learner, for src/hooks.ts (the tests' and the bench's settings); not exported by the package. */
export let nativeLearnerOf: (learn: Learner) => NativeLearner;

/**
 * fast.ai's Learner for vision: the network (body + head), the data, the optimizer state and the training loop.
 * Made by `visionLearner`; every long call returns a Promise and runs on a native thread.
 *
 * @example
 * ```ts
 * const learn = await visionLearner(dls, 'resnet50', { metrics: [errorRate()] });
 * await learn.fitOneCycle(4);
 * learn.unfreeze();
 * const { suggestions } = await learn.lrFind();
 * await learn.fitOneCycle(2, { lrMax: [suggestions.valley / 10, suggestions.valley] });
 * await learn.export('export.safetensors');
 * ```
 */
export class Learner {
  static {
    nativeLearnerOf = (learn) => learn.nat;
  }
  /** the architecture's name, or 'torchscript' for a body from PyTorch */
  readonly arch: Arch | 'torchscript';
  #script: ScriptSpec | null = null;
  #dls: ImageDataLoaders;
  readonly metrics: Metric[];
  readonly device: string;
  readonly bf16: boolean;
  /** each image has a set of labels (the loaders' multiLabel): binary cross-entropy, sigmoid probabilities */
  readonly multiLabel: boolean;
  readonly modelDir: string;
  readonly recorder = new Recorder();
  readonly pretrained: boolean;
  /** the training step is captured as a CUDA graph (the cudaGraph option; on the CPU it runs without capture) */
  readonly cudaGraph: boolean;
  wd: number;
  #h: NetHandle;
  #native: NativeLearner | null;
  #frozenTo = 0;
  #verbose: boolean;
  #logger: (line: string) => void;
  #lossOpts: LossOptions;
  #busy = false;
  /** a native training epoch is in flight: the network is the worker's until it ends */
  #inEpoch = false;
  #bs: number;
  #head: NonNullable<VisionLearnerOptions['head']>;

  constructor(dls: ImageDataLoaders, arch: Arch | TorchScriptBody, opts: VisionLearnerOptions = {}) {
    if (isTorchScriptBody(arch)) {
      this.#script = readTorchScript(arch.torchscript);
      this.arch = 'torchscript';
      if (typeof opts.pretrained === 'string')
        throw new Error(`pretrained: a TorchScript body brings its own weights (${arch.torchscript}); pretrained is true (freeze the body first, the default) or false`);
    } else {
      this.arch = checkArch(arch);
    }
    this.#dls = dls;
    this.metrics = opts.metrics ?? [];
    this.wd = opts.wd ?? DEFAULTS.wd;
    if (!(this.wd >= 0)) throw new Error(`wd must be >= 0, got ${this.wd}`);
    requireJoinedIfLaunched('new Learner');
    this.device = distributedDevice(resolveDevice(opts.device ?? dls.device));
    if (opts.syncBatchNorm !== undefined && typeof opts.syncBatchNorm !== 'boolean') throw new Error(`syncBatchNorm must be true or false, got ${JSON.stringify(opts.syncBatchNorm)}`);
    if (opts.syncBatchNorm && isTorchScriptBody(arch))
      throw new Error("syncBatchNorm: a TorchScript body's BatchNorms run inside TorchScript, where they cannot be synchronised; leave the option off for this body");
    const precision = opts.precision ?? 'auto';
    this.bf16 = usesBf16(this.device, precision);
    if (this.bf16 && !this.device.startsWith('cuda')) throw new Error("precision 'bf16' is for CUDA; on the CPU use 'fp32' (or 'auto')");
    if (opts.fusedAdam !== undefined && typeof opts.fusedAdam !== 'boolean') throw new Error(`fusedAdam must be true or false, got ${JSON.stringify(opts.fusedAdam)}`);
    if (opts.fusedAdam && this.device.startsWith('cuda') && !torchInfo().fusedAdam)
      throw new Error(`fusedAdam: this addon was built without PyTorch's fused AdamW kernel (it needs LibTorch 2.1 or later; built against ${torchInfo().torchVersion}); leave the option off for the multi-tensor Adam`);
    this.modelDir = opts.modelDir ?? 'models';
    // (in a distributed run rank 0 alone prints, as in fast.ai)
    this.#verbose = (opts.verbose ?? true) && isMainProcess();
    this.#logger = opts.logger ?? ((l) => console.log(l));
    this.#lossOpts = opts.lossFunc ?? {};
    this.multiLabel = dls.multiLabel;
    const thresh = this.#lossOpts.thresh;
    if (thresh !== undefined && !(thresh > 0 && thresh < 1)) throw new Error(`lossFunc.thresh must be in (0, 1), got ${thresh}`);
    if (thresh !== undefined && !this.multiLabel) throw new Error('lossFunc.thresh is for multi-label data (fromCsv / fromTable with labelDelim)');
    if (this.multiLabel && (this.#lossOpts.classWeights || this.#lossOpts.labelSmoothing))
      throw new Error('lossFunc.classWeights and labelSmoothing are for single-label classification; multi-label data train with binary cross-entropy, which takes neither');
    for (const m of this.metrics) {
      if (m.multiLabel === false && this.multiLabel)
        throw new Error(`the metric ${m.name} scores one class per image; these data are multi-label: use accuracyMulti(), precisionMulti(), recallMulti(), f1ScoreMulti() or rocAucMulti()`);
      if (m.multiLabel === true && !this.multiLabel) throw new Error(`the metric ${m.name} is for multi-label data; these data have one class per image`);
    }
    this.#bs = dls.bs;
    this.#head = opts.head ?? {};
    if (opts.seed !== undefined) manualSeed(opts.seed);
    const script = this.#script;
    const net = new native.Net({
      arch: this.arch, kind: 'fastai', numClasses: dls.c, head: opts.head,
      ...(script ? { torchscript: script.bytes, source: script.source, groupStarts: script.groupStarts } : {}),
    });
    this.#h = new NetHandle(net, 'this learner');
    this.pretrained = Boolean(opts.pretrained);
    this.cudaGraph = opts.cudaGraph ?? this.device.startsWith('cuda');
    for (const m of this.metrics) m.check?.(dls.c);
    const name = this.arch;
    if (name !== 'torchscript') {
      if (opts.pretrained === true || (typeof opts.pretrained === 'string' && (WEIGHTS_VERSIONS as readonly string[]).includes(opts.pretrained)))
        throw new Error(`new Learner() takes the weights' path or false; visionLearner() finds torchvision's weights (pretrained: ${JSON.stringify(opts.pretrained)}): const learn = await visionLearner(dls, '${name}')`);
      if (opts.pretrained) loadBody(net, opts.pretrained, name);
    }
    this.#native = new native.Learner(net, { device: this.device, seed: opts.seed ?? dls.seed, channelsLast: opts.channelsLast });
    const cw = this.#lossOpts.classWeights;
    if (cw && cw.length !== dls.c) throw new Error(`lossFunc.classWeights needs ${dls.c} values (one per class), got ${cw.length}`);
    this.#native.setOptions({
      multiLabel: this.multiLabel,
      bs: dls.bs,
      size: dls.size,
      aug: dls.augment,
      wd: this.wd,
      trainBn: opts.trainBn ?? true,
      bf16: this.bf16,
      labelSmoothing: this.#lossOpts.labelSmoothing ?? 0,
      classWeights: cw ? Float32Array.from(cw) : null,
      mean: dls.normalize.mean,
      std: dls.normalize.std,
      sqrMom: DEFAULTS.sqrMom,
      eps: DEFAULTS.eps,
      cudaGraph: this.cudaGraph,
      syncBatchNorm: opts.syncBatchNorm ?? false,
      foldBatchNorm: opts.foldBatchNorm ?? foldBatchNormDefault(this.device),
      fusedAdam: opts.fusedAdam ?? (this.device.startsWith('cuda') && torchInfo().fusedAdam),
    });
    this.#native.setData('train', dls.train.store, dls.train.multiHot ?? dls.train.labels, dls.presize);
    if (dls.valid.n) this.#native.setData('valid', dls.valid.store, dls.valid.multiHot ?? dls.valid.labels, dls.presize);
    if (this.pretrained) this.freeze();
    else this.#native.freezeTo(0);
  }

  /** the layer groups of discriminative learning rates and freezeTo (fast.ai's splitter: body's early
   * layers, body's late layers, head) */
  get numGroups(): number {
    return this.#h.net.numGroups();
  }

  private get nat(): NativeLearner {
    if (!this.#native) throw new Error('this learner was disposed: create a new one');
    return this.#native;
  }

  /** @internal */
  get net(): NativeNet {
    return this.#h.net;
  }

  /** Prints a line through the learner's logger (nothing when `verbose` is false). */
  log(line: string): void {
    if (this.#verbose) this.#logger(line);
  }

  // --- freezing ---------------------------------------------------------------------------------
  /** Groups [:n] frozen except their BatchNorm layers; [n:] train. Clears the optimizer state. */
  freezeTo(n: number): void {
    if (!Number.isInteger(n)) throw new Error(`freezeTo: n must be an integer, got ${n}`);
    this.#refuseInEpoch('freezeTo');
    this.nat.freezeTo(n);
    this.#frozenTo = n >= 0 ? n : this.numGroups + n;
  }
  /** Freezes every group but the head (`freezeTo(-1)`), as fast.ai's `freeze`. */
  freeze(): void {
    this.freezeTo(-1);
  }
  /** Makes every group trainable (`freezeTo(0)`). */
  unfreeze(): void {
    this.freezeTo(0);
  }
  /** The parameters that get gradients now. */
  trainableParams(): { name: string; group: number; numel: number }[] {
    return this.#h.net.paramTable().filter((p) => p.requiresGrad).map(({ name, group, numel }) => ({ name, group, numel }));
  }
  /** The first trainable layer group. */
  get frozenTo(): number {
    return this.#frozenTo;
  }

  // --- training ---------------------------------------------------------------------------------
  /**
   * fast.ai's fit_one_cycle: cosine warm-up to lrMax over pctStart, then cosine annealing to lrMax/divFinal,
   * the momentum the other way round. Shows fast.ai's table; returns when the last epoch ends.
   *
   * @example
   * ```ts
   * await learn.fitOneCycle(4, { lrMax: 1e-3, cbs: [saveModel({ monitor: 'valid_loss' })], checkpoint: 'run' });
   * ```
   */
  async fitOneCycle(nEpoch: number, o: OneCycleOptions = {}): Promise<FitResult> {
    return this.#fit(nEpoch, {
      kind: 'onecycle',
      lrMax: lrPerGroup(o.lrMax ?? DEFAULTS.lr, this.numGroups),
      div: o.div ?? DEFAULTS.div,
      divFinal: o.divFinal ?? DEFAULTS.divFinal,
      pctStart: o.pctStart ?? DEFAULTS.pctStart,
      moms: o.moms ?? DEFAULTS.moms,
    }, o);
  }

  /** Constant learning rate (fast.ai's fit), Adam's default momentum. */
  async fit(nEpoch: number, o: FitOptions & { lr?: LrSpec } = {}): Promise<FitResult> {
    const m = DEFAULTS.adamMom;
    return this.#fit(nEpoch, { kind: 'constant', lrMax: lrPerGroup(o.lr ?? DEFAULTS.lr, this.numGroups, 'lr'), moms: [m, m, m] }, o);
  }

  /** fast.ai's fit_flat_cos: flat at lr until pctStart (0.75), then cosine to lr/divFinal. */
  async fitFlatCos(nEpoch: number, o: FitOptions & { lr?: LrSpec; divFinal?: number; pctStart?: number } = {}): Promise<FitResult> {
    const m = DEFAULTS.adamMom;
    return this.#fit(nEpoch, {
      kind: 'flatcos',
      lrMax: lrPerGroup(o.lr ?? DEFAULTS.lr, this.numGroups, 'lr'),
      divFinal: o.divFinal ?? DEFAULTS.divFinal,
      pctStart: o.pctStart ?? 0.75,
      moms: [m, m, m],
    }, o);
  }

  /** fast.ai's fine_tune: one frozen cycle, then unfreeze and a discriminative cycle. */
  async fineTune(epochs: number, o: FitOptions & { baseLr?: number; freezeEpochs?: number; lrMult?: number; pctStart?: number; div?: number } = {}): Promise<FitResult> {
    // As fast.ai's fine_tune: only the fit options (callbacks, wd, ...) reach the frozen stage; its schedule
    // is fitOneCycle's own (div 25) at slice(baseLr) with pctStart 0.99, and the stage-2 options are stage 2's.
    const { baseLr: base = 2e-3, freezeEpochs = 1, lrMult = 100, pctStart = 0.3, div = 5, ...fitOpts } = o;
    this.freeze();
    await this.fitOneCycle(freezeEpochs, { ...fitOpts, lrMax: [base], pctStart: 0.99 });
    const baseLr = base / 2;
    this.unfreeze();
    return this.fitOneCycle(epochs, { ...fitOpts, lrMax: [baseLr / lrMult, baseLr], pctStart, div });
  }

  async #fit(nEpoch: number, schedule: NativeSchedule, o: FitOptions): Promise<FitResult> {
    if (!Number.isInteger(nEpoch) || nEpoch < 1) throw new Error(`the number of epochs must be a positive integer, got ${nEpoch}`);
    const wd = o.wd ?? this.wd;
    if (!(wd >= 0)) throw new Error(`wd must be >= 0, got ${wd}`);
    if (o.checkpointEvery !== undefined && !(Number.isInteger(o.checkpointEvery) && o.checkpointEvery > 0))
      throw new Error(`checkpointEvery must be a positive number of batches, got ${o.checkpointEvery}`);
    this.#enter();
    try {
      return await this.#fitLoop(nEpoch, schedule, o, wd);
    } catch (e) {
      throw this.#explain(e);
    } finally {
      this.#busy = false;
    }
  }

  async #fitLoop(nEpoch: number, schedule: NativeSchedule, o: FitOptions, wd: number): Promise<FitResult> {
    let startEpoch = 0;
    let startBatch = 0;
    let epochRng: Uint8Array | undefined;
    let smoothVal = 0;
    let smoothCount = 0;
    if (o.resume) {
      const st = await this.#loadFitState(o.resume);
      if (st.nEpoch !== nEpoch || st.schedule.kind !== schedule.kind)
        throw new Error(`resume: the checkpoint '${o.resume}' is from a ${st.schedule.kind} fit of ${st.nEpoch} epochs; this call asks for ${schedule.kind} over ${nEpoch}`);
      ({ schedule, epochsDone: startEpoch, smoothVal, smoothCount, epochRng } = st);
      startBatch = st.batchesDone;
      // (in a distributed run, batches of this rank's shard: DistributedSampler's ceil(n / world) images)
      const nIter = Math.max(1, Math.floor(Math.ceil(this.dls.train.n / numDistrib()) / this.#bs));
      if (startBatch >= nIter) throw new Error(`resume: ${o.resume}: damaged fit state (batchesDone ${startBatch}, but an epoch has ${nIter} batches at batch size ${this.#bs})`);
      this.log(`resuming from '${o.resume}' at epoch ${startEpoch} of ${nEpoch}${startBatch ? `, batch ${startBatch}` : ''}`);
    }
    // what earlier work freed (decoding, inference) and the allocator kept goes back before the fit builds
    // its own peak (docs/design.md, "Host memory")
    await native.releaseHostMemory();
    const checkpoint = o.checkpoint ?? o.resume;
    const nat = this.nat;
    const cbs = o.cbs ?? [];
    const names = ['train_loss', 'valid_loss', ...this.metrics.map((m) => m.name)];
    this.recorder.reset(names);
    const table = new ResultsTable((l) => this.log(l));
    const bar = new ProgressBar(process.stdout, this.#verbose && Boolean(process.stdout.isTTY));
    // A callback's error stops the fit after the batch in flight, and the fit rejects with it.
    let cbError: { error: unknown } | null = null;
    const fail = (error: unknown) => {
      if (!cbError) cbError = { error };
      nat.requestStop();
    };
    const rethrow = () => {
      if (cbError) throw cbError.error;
    };
    let batchChain: Promise<void> = Promise.resolve();
    const onAbort = () => nat.requestStop();
    o.signal?.addEventListener('abort', onAbort);
    const t0 = Date.now();
    let stopped = false;
    let epochs = 0;
    let graphWarned = false;
    try {
      // (unclipped and unmixed unless a callback says so this fit)
      nat.setOptions({ wd, maxGradNorm: 0, mix: { kind: 'none' }, nAcc: 0 });
      if (this.#verbose) this.log(this.#deviceLine());
      for (const cb of cbs) await cb.beforeFit?.(this);
      table.header(['epoch', ...names, 'time']);
      let traceTo = o.trace;
      if (traceTo) rmSync(chromeTracePath(traceTo), { force: true }); // not an old one mistaken for this run's
      for (let epoch = startEpoch; epoch < nEpoch; epoch++) {
        if (o.signal?.aborted) {
          stopped = true;
          break;
        }
        for (const cb of cbs) await cb.beforeEpoch?.({ epoch, nEpochs: nEpoch }, this);
        const te = Date.now();
        // One epoch, in parts of checkpointEvery batches when asked (a checkpoint after each part).
        let from = epoch === startEpoch ? startBatch : 0;
        let rng = epoch === startEpoch && from > 0 ? epochRng : undefined;
        let nIter = 0;
        let trainSeconds = 0;
        let epochStopped = false;
        let lastSmooth = NaN;
        do {
          // (each part starts with the stop flag cleared: an abort or a callback's error that came before it still counts)
          if (o.signal?.aborted || cbError) {
            epochStopped = true;
            break;
          }
          this.#inEpoch = true;
          let r: NativeEpochResult;
          try {
            r = await nat.trainEpoch({
              schedule, epoch, nEpochs: nEpoch, smoothVal, smoothCount, profile: o.profile,
              trace: traceTo ? chromeTracePath(traceTo) : undefined,
              startBatch: from, endBatch: o.checkpointEvery ? from + o.checkpointEvery : undefined, epochRng: rng,
              onProgress: (e) => {
                const last = e.from + e.losses.length;
                bar.update(`epoch ${epoch + 1}/${nEpoch} train`, last, e.total, `loss ${e.smoothLosses[e.smoothLosses.length - 1].toFixed(4)}`);
                for (let k = 0; k < e.losses.length; k++) {
                  const info: BatchInfo = { epoch, iter: e.from + k, total: e.total, loss: e.losses[k], smoothLoss: e.smoothLosses[k] };
                  for (const cb of cbs) {
                    if (!cb.afterBatch || cbError) continue;
                    try {
                      const p = cb.afterBatch(info, this);
                      if (p && typeof (p as Promise<void>).then === 'function') batchChain = batchChain.then(() => p).catch(fail);
                    } catch (err) {
                      fail(err);
                    }
                  }
                }
              },
            });
          } finally {
            this.#inEpoch = false;
          }
          await batchChain;
          rethrow();
          if (traceTo && r.ops) {
            writeNativeTrace(traceTo, this.device, r.moms.length, r.ops);
            this.log(`trace of ${r.moms.length} steps written to ${traceTo}`);
          }
          traceTo = undefined; // the first part only
          smoothVal = r.smoothVal;
          smoothCount = r.smoothCount;
          rng = r.epochRng;
          nIter = r.nIter;
          trainSeconds += r.seconds;
          const g = this.numGroups;
          const trained = r.moms.length;
          for (let i = 0; i < trained; i++) this.recorder.lrs.push(Array.from(r.lrs.subarray(i * g, (i + 1) * g)));
          this.recorder.moms.push(...Array.from(r.moms));
          this.recorder.losses.push(...r.smoothLosses);
          this.recorder.rawLosses.push(...r.losses);
          if (r.smoothLosses.length) lastSmooth = r.smoothLosses[r.smoothLosses.length - 1];
          if (r.profile) this.recorder.profiles.push(r.profile);
          if (r.graph) {
            this.recorder.graphs.push(r.graph);
            if (r.graph.error && !graphWarned) {
              graphWarned = true;
              this.log(`torchlearn: the CUDA graph could not be captured, training goes on with ordinary steps (${r.graph.error.split('\n')[0]})`);
            }
          }
          if (r.stopped) {
            epochStopped = true;
            this.log(`stopped after batch ${r.done} of epoch ${epoch}`);
            break;
          }
          from = r.done;
          if (checkpoint && from < nIter) await this.#save(checkpoint, true, { schedule, nEpoch, epochsDone: epoch, batchesDone: from, smoothVal, smoothCount }, rng);
        } while (from < nIter);
        this.recorder.iters.push(this.recorder.losses.length);
        this.recorder.trainSeconds.push(trainSeconds);
        if (epochStopped) {
          bar.clear();
          stopped = true;
          break;
        }
        const trainLoss = lastSmooth;
        const v = this.dls.valid.n ? await this.#validateRaw((e) => bar.update(`epoch ${epoch + 1}/${nEpoch} valid`, e.iter, e.total)) : null;
        bar.clear();
        const values = [trainLoss, v ? v.loss : NaN, ...this.metrics.map((m) => (v ? m.fn(v.probs, v.targets, v.numClasses) : NaN))];
        this.recorder.values.push(values);
        const seconds = (Date.now() - te) / 1000;
        this.recorder.epochSeconds.push(seconds);
        table.row([String(epoch), ...values.map(formatValue), formatTime(seconds)]);
        epochs++;
        const info: EpochInfo = {
          epoch,
          values: Object.fromEntries(names.map((n, i) => [n, values[i]])),
          seconds,
          ...(v ? { preds: { probs: v.probs, targets: v.targets, numClasses: v.numClasses } } : {}),
        };
        if (checkpoint) await this.#save(checkpoint, true, { schedule, nEpoch, epochsDone: epoch + 1, batchesDone: 0, smoothVal, smoothCount });
        let stop = false;
        for (const cb of cbs) if (await cb.afterEpoch?.(info, this)) stop = true;
        if (stop) break;
      }
      rethrow();
      for (const cb of cbs) await cb.afterFit?.(this);
    } finally {
      o.signal?.removeEventListener('abort', onAbort);
      // what the callbacks turned on ends with the fit, however it ends (lrFind and validation after it run plain)
      if (this.#native) nat.setOptions({ maxGradNorm: 0, mix: { kind: 'none' }, nAcc: 0 });
    }
    return { epochs, stopped, values: this.recorder.values, names, seconds: (Date.now() - t0) / 1000 };
  }

  /** Out-of-memory errors name the batch size and suggest a smaller one; the learner stays usable. */
  #explain(e: unknown): unknown {
    const msg = e instanceof Error ? e.message : String(e);
    if (/out of memory/i.test(msg)) {
      return new Error(
        `out of memory at batch size ${this.#bs} (image size ${this.dls.size}) on ${this.device}. ` +
          `Try a smaller batch: learn.bs = ${Math.max(1, this.#bs >> 1)}; the cached device memory was released and the learner can go on.\n(${msg.split('\n')[0]})`,
      );
    }
    return e;
  }

  /** The data the learner trains and validates on. */
  get dls(): ImageDataLoaders {
    return this.#dls;
  }
  /**
   * Other loaders of the same classes: fast.ai's progressive resizing (train at 128, then `learn.dls =` loaders
   * at 224 and train on). The new images replace the cached ones on the device; the batch size, image size,
   * augmentation and normalisation become the new loaders'; the weights and optimizer state stay.
   */
  set dls(d: ImageDataLoaders) {
    this.#refuseInEpoch('learn.dls =');
    if (this.#busy) throw new Error('learn.dls =: a fit, lrFind or validation is running: await it first');
    if (d.vocab.length !== this.#dls.vocab.length || d.vocab.some((v, i) => v !== this.#dls.vocab[i]))
      throw new Error(`learn.dls =: the new loaders' classes [${d.vocab.join(', ')}] are not the learner's [${this.#dls.vocab.join(', ')}]`);
    if (d.multiLabel !== this.multiLabel) throw new Error(`learn.dls =: the new loaders are ${d.multiLabel ? '' : 'not '}multi-label and the learner's are ${this.multiLabel ? '' : 'not'}`);
    this.nat.setOptions({ bs: d.bs, size: d.size, aug: d.augment, mean: d.normalize.mean, std: d.normalize.std });
    this.nat.setData('train', d.train.store, d.train.multiHot ?? d.train.labels, d.presize);
    this.nat.setData('valid', d.valid.store, d.valid.multiHot ?? d.valid.labels, d.presize);
    this.#dls = d;
    this.#bs = d.bs;
  }

  /** @internal Clips the gradients' global norm to `maxNorm` before each optimizer step (0: off); the
   * gradientClip callback sets it for a fit. */
  setMaxGradNorm(maxNorm: number): void {
    this.#refuseInEpoch('setMaxGradNorm');
    this.nat.setOptions({ maxGradNorm: maxNorm });
  }

  /** @internal Gradient accumulation over `nAcc` samples for the fit (the gradientAccumulation callback sets it; 0: off). */
  setAccumulation(nAcc: number): void {
    this.#refuseInEpoch('setAccumulation');
    this.nat.setOptions({ nAcc });
  }

  /** @internal MixUp or CutMix of every training batch of the fit (the mixUp and cutMix callbacks set it). */
  setMix(kind: 'none' | 'mixup' | 'cutmix', alpha?: number): void {
    this.#refuseInEpoch('setMix');
    this.nat.setOptions({ mix: { kind, alpha } });
  }

  /** How predictions become labels: the most probable class, or (multi-label) every label above lossFunc.thresh. */
  get decoding(): Decoding {
    return this.multiLabel ? { multiLabel: true, thresh: this.#lossOpts.thresh ?? 0.5 } : { multiLabel: false };
  }

  /** The batch size used by fit, lrFind and validation (defaults to the DataLoaders'). */
  get bs(): number {
    return this.#bs;
  }
  /** Sets the batch size of the next fit or validation (the data stay cached). */
  set bs(v: number) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`bs must be a positive integer, got ${v}`);
    this.nat.setOptions({ bs: v });
    this.#bs = v;
  }

  #deviceLine(): string {
    const info = torchInfo();
    const dev = this.device.startsWith('cuda') ? `${this.device} (${info.deviceName ?? 'CUDA'})` : `cpu (${info.threads} threads)`;
    const graph = this.cudaGraph ? (this.device.startsWith('cuda') ? ', the step as a CUDA graph' : ', the graph step without capture (CPU)') : '';
    return `torchlearn: training ${this.arch} on ${dev}, ${this.bf16 ? 'bf16 autocast' : 'fp32'}${graph}, LibTorch ${info.torchVersion}${info.cuda ? '' : ', no CUDA in this LibTorch'}`;
  }

  /** The network belongs to the native worker while an epoch trains; calls that would wait for it on the
   * JavaScript thread refuse instead (from afterBatch, say), rather than freeze the event loop. */
  #refuseInEpoch(what: string): void {
    if (this.#inEpoch) throw new Error(`${what}: a training epoch is running; call it from afterEpoch or after the fit (or use fit's { checkpoint, checkpointEvery } to save during an epoch)`);
  }

  #enter(): void {
    this.nat; // throws when disposed
    if (this.#busy) throw new Error('this learner is already running a fit, lrFind or validation: await it first');
    this.#busy = true;
  }

  async #validateRaw(onProgress?: (e: { iter: number; total: number }) => void, augment = false) {
    const r = await this.nat.validate({ split: 'valid', augment, onProgress });
    let sum = 0;
    let weight = 0;
    const cw = this.#lossOpts.classWeights;
    r.losses.forEach((l, i) => {
      sum += l;
      weight += cw ? cw[r.targets[i]] : 1;
    });
    return { ...r, loss: sum / weight };
  }

  async #testPreds(dl: TestSet): Promise<TestPreds> {
    if (!(dl instanceof TestSet)) throw new Error('getPreds: dl must come from dls.testDl(...)');
    if (dl.presize !== this.dls.presize) throw new Error(`getPreds: this test set was decoded at ${dl.presize} px, the learner's loaders at ${this.dls.presize}: make it again with learn.dls.testDl(...)`);
    this.#enter();
    try {
      const r = await this.nat.predict(dl.store, dl.n, dl.presize);
      if (!dl.labelled) return { probs: r.probs, numClasses: r.numClasses };
      return { probs: r.probs, numClasses: r.numClasses, targets: dl.targets, losses: lossesFromProbs(r.probs, dl.targets, r.numClasses, this.multiLabel) };
    } finally {
      this.#busy = false;
    }
  }

  /** The validation loss and metrics, as in the table; with `{ dl }`, on a labelled test set (its loss being the
   * mean of -log p(target)). */
  async validate(o: { dl?: TestSet } = {}): Promise<Record<string, number>> {
    if (o.dl) {
      if (!o.dl.labelled) throw new Error('validate: this test set has no labels (give every item a label of the vocab)');
      const r = (await this.#testPreds(o.dl)) as Required<TestPreds>;
      const loss = r.losses.reduce((a, b) => a + b, 0) / r.losses.length;
      return Object.fromEntries([['valid_loss', loss], ...this.metrics.map((m) => [m.name, m.fn(r.probs, r.targets, r.numClasses)])]);
    }
    this.#enter();
    try {
      const v = await this.#validateRaw();
      return Object.fromEntries([['valid_loss', v.loss], ...this.metrics.map((m) => [m.name, m.fn(v.probs, v.targets, v.numClasses)])]);
    } finally {
      this.#busy = false;
    }
  }

  /** Probabilities, targets and per-item losses on the validation set (or the training set, unaugmented), or
   * on a test set (`dls.testDl(...)`: targets and losses when it is labelled). */
  async getPreds(o?: { split?: 'train' | 'valid'; augment?: boolean }): Promise<Preds>;
  async getPreds(o: { dl: TestSet }): Promise<TestPreds>;
  async getPreds(o: { split?: 'train' | 'valid'; augment?: boolean; dl?: TestSet } = {}): Promise<Preds | TestPreds> {
    if (o.dl) return this.#testPreds(o.dl);
    this.#enter();
    try {
      const r = await this.nat.validate({ split: o.split ?? 'valid', augment: o.augment ?? false });
      return { probs: r.probs, numClasses: r.numClasses, targets: r.targets, losses: r.losses };
    } finally {
      this.#busy = false;
    }
  }

  /** fast.ai v2's tta on the validation set: n passes with the training transforms, averaged, then lerp with the plain pass (src/tta.ts). */
  async tta(o: TtaOptions = {}): Promise<Preds> {
    const plain = await this.getPreds();
    const probs = await ttaProbs(plain.probs, async () => (await this.getPreds({ augment: true })).probs, o);
    return { probs, numClasses: plain.numClasses, targets: plain.targets, losses: lossesFromProbs(probs, plain.targets, plain.numClasses, this.multiLabel) };
  }

  /**
   * fast.ai's lr_find: exponential ramp from startLr to endLr over numIt batches; the weights, optimizer and
   * random state are restored after.
   *
   * @example
   * ```ts
   * const r = await learn.lrFind();
   * await r.plot('lr_find.png');
   * console.log(r.suggestions.valley);
   * ```
   */
  async lrFind(o: { startLr?: number; endLr?: number; numIt?: number; stopDiv?: boolean; signal?: AbortSignal } = {}): Promise<LrFindResult> {
    const startLr = o.startLr ?? 1e-7;
    const endLr = o.endLr ?? 10;
    const numIt = o.numIt ?? 100;
    if (!(startLr > 0) || !(endLr > startLr)) throw new Error(`lrFind: need 0 < startLr < endLr, got ${startLr} and ${endLr}`);
    if (!Number.isInteger(numIt) || numIt < 6) throw new Error(`lrFind: numIt must be an integer >= 6, got ${numIt}`);
    if (o.signal?.aborted) throw new Error('lrFind: the signal was already aborted; nothing was run');
    this.#enter();
    const nat = this.nat;
    const bar = new ProgressBar(process.stdout, this.#verbose && Boolean(process.stdout.isTTY));
    const onAbort = () => nat.requestStop();
    o.signal?.addEventListener('abort', onAbort);
    try {
      const g = this.numGroups;
      const r = await nat.lrFind({
        startLr: new Array(g).fill(startLr),
        endLr: new Array(g).fill(endLr),
        numIt,
        stopDiv: o.stopDiv ?? true,
        mom: DEFAULTS.adamMom,
        onProgress: (e) => bar.update('lr_find', e.iter, e.total, `loss ${e.smoothLoss.toFixed(4)}`),
      });
      bar.clear();
      const lrs = Array.from(r.lrs);
      const losses = Array.from(r.losses);
      const suggestions = suggest(lrs, losses, numIt);
      return { lrs, losses, suggestions, plot: (path: string) => renderChart(lrFindSpec(lrs, losses, { ...suggestions }), path) };
    } catch (e) {
      throw this.#explain(e);
    } finally {
      o.signal?.removeEventListener('abort', onAbort);
      this.#busy = false;
    }
  }

  // --- checkpoints -------------------------------------------------------------------------------
  #checkpointPath(name: string): string {
    return name.endsWith('.safetensors') || name.includes('/') ? name : join(this.modelDir, `${name}.safetensors`);
  }

  /**
   * Model, optimizer and random state in one .safetensors file, written atomically (temp file, fsync,
   * rename), so that a crash never leaves a damaged checkpoint in place.
   */
  async save(name: string, o: { withOpt?: boolean } = {}): Promise<string> {
    return this.#save(name, o.withOpt ?? true);
  }

  async #save(name: string, withOpt: boolean, fit?: FitState, epochRng?: Uint8Array): Promise<string> {
    const path = this.#checkpointPath(name);
    // in a distributed run rank 0 alone writes (every rank holds the same weights), as fast.ai's save
    if (!isMainProcess()) return path;
    const tensors = await this.nat.getState(withOpt);
    if (epochRng) tensors.push({ name: 'rng.epochStart', dtype: 'U8', shape: [epochRng.length], data: epochRng });
    const meta: Record<string, string> = {
      format: 'torchlearn-checkpoint',
      arch: this.arch,
      vocab: JSON.stringify(this.dls.vocab),
      frozenTo: String(this.#frozenTo),
    };
    if (fit) meta.fit = JSON.stringify(fit);
    await writeWeightFileAsync(path, tensors, meta);
    return path;
  }

  async #loadFitState(name: string): Promise<FitState & { epochRng?: Uint8Array }> {
    const path = this.#checkpointPath(name);
    if (!existsSync(path)) throw new Error(`resume: ${path}: no such checkpoint (fit with { checkpoint: '${name}' } writes one after every epoch)`);
    const f = readWeightFile(path);
    if (!f.metadata.fit) throw new Error(`resume: ${path} was not written during a fit (it has no fit state); use learn.load()`);
    const fit = parseFitState(f.metadata.fit, path);
    const epochRng = f.tensors.find((t) => t.name === 'rng.epochStart')?.data;
    if (fit.batchesDone > 0 && !epochRng) throw new Error(`resume: ${path} stops inside epoch ${fit.epochsDone} but holds no random state for it (rng.epochStart): the file is damaged`);
    this.#applyFrozenTo(f.metadata.frozenTo, path);
    await this.nat.setState(f.tensors, true);
    return { ...fit, epochRng: epochRng ? Uint8Array.from(epochRng) : undefined };
  }

  /** Loads a checkpoint written by `save(name)` (the weights, and the optimizer state unless `withOpt` is false). */
  async load(name: string, o: { withOpt?: boolean } = {}): Promise<void> {
    const path = this.#checkpointPath(name);
    if (!existsSync(path)) throw new Error(`${path}: no such checkpoint (learn.save('${name}') writes it)`);
    const f = readWeightFile(path);
    if (f.metadata.arch && f.metadata.arch !== this.arch) throw new Error(`${path} is a ${f.metadata.arch} checkpoint; this learner is a ${this.arch}`);
    this.#refuseInEpoch('load');
    this.#applyFrozenTo(f.metadata.frozenTo, path);
    await this.nat.setState(f.tensors, o.withOpt ?? true);
  }

  /**
   * One .safetensors file with the weights and what prediction needs (architecture, head, vocab,
   * image size, resize method, normalisation, versions); load it with loadLearner().
   */
  async export(path = 'export.safetensors'): Promise<string> {
    if (!isMainProcess()) return path; // (rank 0 alone writes, as fast.ai's export)
    const d = this.dls;
    const tensors = await this.nat.getState(false);
    // a TorchScript body travels in the export: loadLearner builds the network from it
    const script = this.#script;
    if (script) tensors.push({ name: EXPORTED_TORCHSCRIPT, dtype: 'U8', shape: [script.bytes.length], data: script.bytes });
    await writeWeightFileAsync(
      path,
      tensors,
      exportMetadata({
        arch: this.arch, vocab: d.vocab, size: d.size, presize: d.presize, method: d.method, mean: d.normalize.mean, std: d.normalize.std, head: this.#head, augment: d.augment,
        multiLabel: this.decoding.multiLabel ? { thresh: this.decoding.thresh } : undefined,
        groupStarts: script ? script.groupStarts : undefined,
      }),
    );
    return path;
  }

  /** fast.ai's predict on an image file, or an encoded image's bytes: { label, index, probs }. */
  async predict(image: ImageSource): Promise<Prediction> {
    return (await this.predictBatch([image]))[0];
  }

  /** Predicts several images (paths or encoded bytes) as batches. */
  async predictBatch(paths: ImageSource[]): Promise<Prediction[]> {
    this.#enter();
    try {
      return await predictPaths(this.nat, paths, { presize: this.dls.presize, method: this.dls.method }, this.dls.vocab, this.decoding);
    } finally {
      this.#busy = false;
    }
  }

  /**
   * fast.ai's show_results: the first `n` validation images as the model sees them, each titled with its
   * actual label over the predicted one, green when they agree and red when not; a PNG at `path`.
   */
  async showResults(o: { n?: number; path: string }): Promise<{ width: number; height: number; correct: number; shown: number }> {
    const valid = this.dls.valid;
    const n = Math.min(o.n ?? 9, valid.n);
    if (n === 0) throw new Error('showResults: the validation set is empty');
    const p = this.dls.presize;
    const s = this.dls.size;
    const imgs = valid.store.read(0, n);
    this.#enter();
    let preds: Prediction[];
    try {
      const r = await this.nat.predict(imgs, n, p);
      preds = decode(r.probs, r.numClasses, this.dls.vocab, this.decoding);
    } finally {
      this.#busy = false;
    }
    const shown = native.augmentImages(imgs, n, p, s, {});
    let correct = 0;
    const tiles = preds.map((pred, i) => {
      const actual = valid.multiHot ? this.dls.vocab.filter((_v, k) => valid.multiHot![i * this.dls.c + k]).join(';') : this.dls.vocab[valid.labels[i]];
      if (actual === pred.label) correct++;
      return { rgb: shown.subarray(i * s * s * 3, (i + 1) * s * s * 3), size: s, title: `${actual}\n${pred.label}`, titleColor: actual === pred.label ? '#1a7f37' : '#c62828' };
    });
    return { ...(await writeGrid(tiles, o.path)), correct, shown: n };
  }

  /** Grad-CAM for one image file (fast.ai v1): the map of layer4 for `classIdx` (default: the predicted class). */
  async gradcam(path: string, o: { classIdx?: number } = {}): Promise<{ map: Float32Array; h: number; w: number; probs: Float32Array; classIdx: number }> {
    const c = o.classIdx;
    if (c !== undefined && !(Number.isInteger(c) && c >= 0 && c < this.dls.c)) throw new Error(`gradcam: classIdx must be a class index in [0, ${this.dls.c}), got ${c}`);
    const [d] = await decodeAll([path], this.dls.presize, this.dls.method);
    if (!d.ok) throw new Error(`cannot read image ${path}: ${d.reason}`);
    return this.gradcamRaw(d.data, o.classIdx);
  }

  /** @internal Grad-CAM on a presized uint8 image. */
  async gradcamRaw(image: Uint8Array, classIdx?: number) {
    this.#enter();
    try {
      return await gradcamPresized(this.nat, image, this.dls.presize, this.dls.vocab, classIdx);
    } finally {
      this.#busy = false;
    }
  }

  /** @internal the state tensors (model.*, opt.*, rng.*) */
  async state(withOpt: boolean): Promise<NamedTensor[]> {
    return this.nat.getState(withOpt);
  }

  /** A checkpoint's frozenTo, checked: it comes from a file. */
  #applyFrozenTo(v: string | undefined, path: string): void {
    if (v === undefined) return;
    const n = Number(v);
    if (!Number.isInteger(n) || n < -this.numGroups || n > this.numGroups) throw new Error(`${path}: damaged checkpoint (frozenTo '${v}' is not a layer group index)`);
    this.freezeTo(n);
  }

  /** Frees the learner's native memory (network, caches, optimizer state) now; later calls throw. */
  dispose(): void {
    this.#native?.dispose();
    this.#native = null;
    this.#h.dispose();
  }

  /** `dispose()`, for `using learn = ...`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** Waits for what runs to stop, then disposes: `await using learn = ...`. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }
}

/** Loads torchvision weights into the body (the file's classifier, fc.* or classifier.*, is not used). */
function loadBody(net: NativeNet, path: string, arch: Arch): void {
  if (typeof path !== 'string') throw new Error(`pretrained must be the path of a torchvision weight file (or false), got ${JSON.stringify(path)}`);
  const file = readWeightFile(path);
  const ours = torchlearnFileKind(path, file.metadata);
  if (ours) throw new Error(`pretrained: ${ours}. pretrained takes torchvision's ImageNet weights (${TORCHVISION_WEIGHTS[arch]} for a ${arch})`);
  const classifier = archInfo(arch).classifier;
  const tensors = torchvisionStateDict(file.tensors)
    .filter((t) => !t.name.startsWith(classifier))
    .map((t) => ({ ...t, name: `body.${t.name}` }));
  net.loadStateDict(tensors, {
    strict: true,
    skipPrefixes: ['head.'],
    source: path,
    hint: `pretrained takes torchvision's ImageNet weights for the learner's architecture (${TORCHVISION_WEIGHTS[arch]} for a ${arch}); is this file for another one? pretrained: false trains from scratch.`,
  });
}

/**
 * fast.ai's vision_learner: a torchvision network's body (any name of `ARCHS`, cut and split as fast.ai's
 * model_meta does) or a TorchScript body from PyTorch (`{ torchscript: 'body.pt' }`), fast.ai's head on it,
 * frozen when pretrained. Asynchronous, as it may download torchvision's weights (`pretrained`, default true).
 *
 * @example
 * ```ts
 * const learn = await visionLearner(dls, 'resnet50', { metrics: [errorRate()] });
 * await learn.fineTune(2);
 * ```
 */
export async function visionLearner(dls: ImageDataLoaders, arch: Arch | TorchScriptBody, opts: VisionLearnerOptions = {}): Promise<Learner> {
  // a TorchScript body brings its weights: pretrained (default true) only says whether it starts frozen
  if (isTorchScriptBody(arch)) await joinIfLaunched(resolveDevice(opts.device ?? dls.device));
  if (isTorchScriptBody(arch)) return new Learner(dls, arch, { ...opts, pretrained: opts.pretrained ?? true });
  checkArch(arch);
  await joinIfLaunched(resolveDevice(opts.device ?? dls.device));
  const p = opts.pretrained ?? true;
  let path: string | false = false;
  if (p === true || (typeof p === 'string' && (WEIGHTS_VERSIONS as readonly string[]).includes(p))) {
    const file = pretrainedFileName(arch, p === true ? 'IMAGENET1K_V1' : (p as WeightsVersion));
    const verbose = opts.verbose ?? true;
    const bar = new ProgressBar(process.stdout, verbose && Boolean(process.stdout.isTTY));
    const log = opts.logger ?? ((l: string) => console.log(l));
    let announced = false;
    // in a distributed run rank 0 downloads first and the others then find the file in the cache (fast.ai's rank0_first)
    if (numDistrib() > 1 && !isMainProcess()) await allreduceNumbers([0]);
    path = await cachedWeightFile(file, {
      onProgress: (received, total) => {
        if (!announced && verbose) log(`torchlearn: downloading ${weightsBaseUrl()}${file} to ${hubCacheDir()}`);
        announced = true;
        bar.update(file, received, total);
      },
    });
    bar.clear();
    if (numDistrib() > 1 && isMainProcess()) await allreduceNumbers([0]);
  } else if (typeof p === 'string') {
    path = p;
  }
  return new Learner(dls, arch, { ...opts, pretrained: path });
}

/** In a distributed run on CUDA, each rank takes the GPU of its LOCAL_RANK (an explicit 'cuda:N' stays). */
function distributedDevice(device: string): string {
  const env = distributedEnv();
  return device === 'cuda' && env && env.worldSize > 1 ? `cuda:${env.localRank}` : device;
}
