// torchvision's ResNets as TypeScript objects: build, load/save weights, run forward off the main thread.
import { native, type LoadReport, type NativeNet } from './binding.js';
import { readWeightFile, writeWeightFile } from './weights/index.js';
import { PRETRAINED } from './weights/pretrained.js';

/** The architectures torchlearn builds, with torchvision's names and `state_dict` keys. */
export type Arch = 'resnet18' | 'resnet34' | 'resnet50' | 'resnet101' | 'resnet152';
/** Every architecture name, in order of size. */
export const ARCHS: readonly Arch[] = ['resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152'];

/** torchvision's ImageNet weight file for each architecture (IMAGENET1K_V1), as torch.hub names it in its cache. */
export const TORCHVISION_WEIGHTS: Readonly<Record<Arch, string>> = Object.fromEntries(
  ARCHS.map((a) => [a, PRETRAINED[a].IMAGENET1K_V1!]),
) as Record<Arch, string>;

/** What a weight file is, when it is one of ours rather than torchvision weights; null otherwise. */
export function torchlearnFileKind(path: string, metadata: Record<string, string>): string | null {
  if (metadata.format === 'torchlearn-checkpoint') return `${path} is a torchlearn checkpoint (written by learn.save()${metadata.arch ? ` for a ${metadata.arch}` : ''}): load it with learn.load('${path}')`;
  if (metadata.format?.startsWith('torchlearn-export')) return `${path} is a torchlearn export (written by learn.export()${metadata.arch ? ` for a ${metadata.arch}` : ''}): load it with loadLearner('${path}')`;
  return null;
}

/** Options of `Model.loadWeights`. */
export interface LoadWeightsOptions {
  /** Every key must match (default true); otherwise loads what matches and reports the rest. */
  strict?: boolean;
  /** Ignore the classifier (`fc.*`) of the file: transfer learning to another number of classes. */
  skipClassifier?: boolean;
}

export function checkArch(arch: string): Arch {
  if (!(ARCHS as readonly string[]).includes(arch)) throw new Error(`unknown architecture '${arch}': use one of ${ARCHS.join(', ')}`);
  return arch as Arch;
}

/** A native network with a dispose-once guard shared by Model and Learner. */
export class NetHandle {
  #net: NativeNet | null;
  constructor(net: NativeNet, readonly what: string) {
    this.#net = net;
  }
  get net(): NativeNet {
    if (!this.#net) throw new Error(`${this.what} was disposed: create a new one`);
    return this.#net;
  }
  get disposed(): boolean {
    return this.#net === null;
  }
  dispose(): void {
    this.#net?.dispose();
    this.#net = null;
  }
}

/** A torchvision ResNet with torchvision's exact parameter names. */
export class Model {
  readonly arch: Arch;
  readonly numClasses: number;
  readonly #h: NetHandle;

  constructor(arch: Arch, numClasses = 1000) {
    this.arch = checkArch(arch);
    if (!Number.isInteger(numClasses) || numClasses < 1) throw new Error(`numClasses must be a positive integer, got ${numClasses}`);
    this.numClasses = numClasses;
    this.#h = new NetHandle(new native.Net({ arch, kind: 'torchvision', numClasses }), `this ${arch}`);
  }

  /** The number of parameters (weights, biases, BatchNorm scales), as `sum(p.numel() for p in model.parameters())`. */
  numParams(): number {
    return this.#h.net.numParams();
  }

  /** The `state_dict` keys in torchvision's order. */
  stateDictKeys(): string[] {
    return this.#h.net.stateDictKeys();
  }

  /** Loads a torchvision `.pth` or a `.safetensors` file by parameter name. */
  loadWeights(path: string, opts: LoadWeightsOptions = {}): LoadReport {
    const file = readWeightFile(path);
    const ours = torchlearnFileKind(path, file.metadata);
    if (ours) throw new Error(`${ours}; Model.loadWeights takes torchvision weights (${TORCHVISION_WEIGHTS[this.arch]} for a ${this.arch}) or a file from saveWeights()`);
    return this.#h.net.loadStateDict(file.tensors, {
      strict: opts.strict ?? true,
      skipPrefixes: opts.skipClassifier ? ['fc.'] : [],
      source: path,
      hint: `Is it a weight file for another architecture (this is a ${this.arch})? For transfer learning to another number of classes, load with { skipClassifier: true }; { strict: false } loads what matches.`,
    });
  }

  /** Writes `.safetensors`, or `.pth` (loadable by torch.load / torchvision) by extension; atomically. */
  saveWeights(path: string): void {
    writeWeightFile(path, this.#h.net.stateDict(), { format: 'pt', arch: this.arch });
  }

  /** Eval-mode forward pass on a [batch, 3, H, W] float tensor, on a native thread. */
  async forward(input: Float32Array, shape: number[]): Promise<{ data: Float32Array; shape: number[] }> {
    return this.#h.net.forward(input, shape);
  }

  /** Moves the network to a device (`'cpu'`, `'cuda'`, `'cuda:1'`); returns it. */
  to(device: 'cpu' | 'cuda' | `cuda:${number}` | string): this {
    this.#h.net.to(device);
    return this;
  }

  /** The device the network is on. */
  get device(): string {
    return this.#h.net.device();
  }

  /** Training mode (BatchNorm uses batch statistics, dropout is on), as `module.train()`. */
  train(): this {
    this.#h.net.setTraining(true);
    return this;
  }

  /** Evaluation mode, as `module.eval()`. */
  eval(): this {
    this.#h.net.setTraining(false);
    return this;
  }

  /** Whether the network is in training mode. */
  get training(): boolean {
    return this.#h.net.isTraining();
  }

  /** Frees the network's native memory now; later calls throw. */
  dispose(): void {
    this.#h.dispose();
  }

  /** `dispose()`, for `using model = resnet18()`. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Options of the network constructors. */
export interface ResNetOptions {
  numClasses?: number;
}
/** torchvision's ResNet18: `state_dict` keys and outputs as `torchvision.models.resnet18`. */
export const resnet18 = (o: ResNetOptions = {}) => new Model('resnet18', o.numClasses);
/** torchvision's ResNet34. */
export const resnet34 = (o: ResNetOptions = {}) => new Model('resnet34', o.numClasses);
/**
 * torchvision's ResNet50 (v1.5: the stride in the 3x3 convolution).
 *
 * @example
 * ```ts
 * const model = resnet50({ numClasses: 1000 });
 * model.loadWeights('resnet50-0676ba61.pth');
 * const { data } = await model.forward(pixels, [1, 3, 224, 224]);
 * ```
 */
export const resnet50 = (o: ResNetOptions = {}) => new Model('resnet50', o.numClasses);
/** torchvision's ResNet101. */
export const resnet101 = (o: ResNetOptions = {}) => new Model('resnet101', o.numClasses);
/** torchvision's ResNet152. */
export const resnet152 = (o: ResNetOptions = {}) => new Model('resnet152', o.numClasses);
