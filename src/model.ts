// torchvision's networks as TypeScript objects: build, load/save weights, run forward off the main thread.
import { native, type LoadReport, type NamedTensor, type NativeNet } from './binding.js';
import { readWeightFile, writeWeightFile } from './weights/index.js';
import { PRETRAINED } from './weights/pretrained.js';

/** Every architecture torchlearn builds, with torchvision's names, `state_dict` keys and outputs; by family, then size. */
export const ARCHS = [
  'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152',
  'resnext50_32x4d', 'resnext101_32x8d', 'resnext101_64x4d', 'wide_resnet50_2', 'wide_resnet101_2',
  'densenet121', 'densenet161', 'densenet169', 'densenet201',
  'efficientnet_b0', 'efficientnet_b1', 'efficientnet_b2', 'efficientnet_b3', 'efficientnet_b4', 'efficientnet_b5', 'efficientnet_b6', 'efficientnet_b7',
  'convnext_tiny', 'convnext_small', 'convnext_base', 'convnext_large',
] as const;
/** An architecture name (torchvision's). */
export type Arch = (typeof ARCHS)[number];

/** The families of architectures: what they share is in `archInfo`. */
export type ArchFamily = 'resnet' | 'resnext' | 'wide_resnet' | 'densenet' | 'efficientnet' | 'convnext';

/** What torchlearn knows of an architecture beyond its weights. */
export interface ArchInfo {
  family: ArchFamily;
  /** the prefix of torchvision's classifier keys, which fast.ai's body drops ('fc.' or 'classifier.') */
  classifier: 'fc.' | 'classifier.';
  /** the image size torchvision evaluates its ImageNet weights at (the centre crop of their transforms) */
  size: number;
}

/** torchvision's evaluation crops of the EfficientNets, which grow with the network (B0 224 ... B7 600). */
const EFFICIENTNET_SIZES: Readonly<Record<string, number>> = { b0: 224, b1: 240, b2: 288, b3: 300, b4: 380, b5: 456, b6: 528, b7: 600 };

/** An architecture's family, classifier prefix and torchvision's evaluation size. */
export function archInfo(arch: Arch): ArchInfo {
  checkArch(arch);
  const family: ArchFamily = arch.startsWith('resnext')
    ? 'resnext'
    : arch.startsWith('wide_resnet')
      ? 'wide_resnet'
      : arch.startsWith('resnet')
        ? 'resnet'
        : arch.startsWith('densenet')
          ? 'densenet'
          : arch.startsWith('efficientnet')
            ? 'efficientnet'
            : 'convnext';
  const classifier = family === 'resnet' || family === 'resnext' || family === 'wide_resnet' ? 'fc.' : 'classifier.';
  const size = family === 'efficientnet' ? EFFICIENTNET_SIZES[arch.slice('efficientnet_'.length)] : 224;
  return { family, classifier, size };
}

/**
 * torchvision's weights as its networks load them today. The DenseNet files keep the names of 2017
 * ('denselayer1.norm.1.weight' for 'denselayer1.norm1.weight'), which torchvision renames as it loads them
 * (densenet.py, _load_state_dict); and files older than BatchNorm's num_batches_tracked (PyTorch 0.4) lack
 * it, which PyTorch's BatchNorm then starts at 0. torchlearn does both; other tensors are returned as they are.
 */
export function torchvisionStateDict(tensors: NamedTensor[]): NamedTensor[] {
  const legacy = /^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$/;
  const out = tensors.map((t) => {
    const m = legacy.exec(t.name);
    return m ? { ...t, name: m[1] + m[2] } : t;
  });
  const names = new Set(out.map((t) => t.name));
  for (const t of [...out]) {
    if (!t.name.endsWith('.running_mean')) continue;
    const counter = `${t.name.slice(0, -'running_mean'.length)}num_batches_tracked`;
    if (!names.has(counter)) out.push({ name: counter, dtype: 'I64', shape: [], data: new Uint8Array(8) });
  }
  return out;
}

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
  /** Ignore the classifier (`fc.*`, or `classifier.*` outside the ResNet families) of the file: transfer learning to another number of classes. */
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

/** The native network of a model, for src/hooks.ts (the tests' train-mode forward); not exported by the package. */
export let nativeNetOf: (model: Model) => NativeNet;

/** A torchvision network with torchvision's exact parameter names and outputs. */
export class Model {
  static {
    nativeNetOf = (model) => model.#h.net;
  }
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
    return this.#h.net.loadStateDict(torchvisionStateDict(file.tensors), {
      strict: opts.strict ?? true,
      skipPrefixes: opts.skipClassifier ? [archInfo(this.arch).classifier] : [],
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
export interface ModelOptions {
  numClasses?: number;
}
/** The options of the ResNet constructors (the same as every network's). */
export type ResNetOptions = ModelOptions;
const build = (arch: Arch) => (o: ModelOptions = {}) => new Model(arch, o.numClasses);

/** torchvision's ResNet18: `state_dict` keys and outputs as `torchvision.models.resnet18`. */
export const resnet18 = build('resnet18');
/** torchvision's ResNet34. */
export const resnet34 = build('resnet34');
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
export const resnet50 = build('resnet50');
/** torchvision's ResNet101. */
export const resnet101 = build('resnet101');
/** torchvision's ResNet152. */
export const resnet152 = build('resnet152');
/** torchvision's ResNeXt50 32x4d (32 groups of 4 channels in the first stage's 3x3 convolution). */
export const resnext50_32x4d = build('resnext50_32x4d');
/** torchvision's ResNeXt101 32x8d. */
export const resnext101_32x8d = build('resnext101_32x8d');
/** torchvision's ResNeXt101 64x4d. */
export const resnext101_64x4d = build('resnext101_64x4d');
/** torchvision's Wide ResNet50-2 (bottlenecks twice as wide). */
export const wide_resnet50_2 = build('wide_resnet50_2');
/** torchvision's Wide ResNet101-2. */
export const wide_resnet101_2 = build('wide_resnet101_2');
/**
 * torchvision's DenseNet121: CheXNet's network, and the usual one for chest X-rays.
 *
 * @example
 * ```ts
 * const model = densenet121({ numClasses: 1000 });
 * model.loadWeights('densenet121-a639ec97.pth');
 * ```
 */
export const densenet121 = build('densenet121');
/** torchvision's DenseNet161. */
export const densenet161 = build('densenet161');
/** torchvision's DenseNet169. */
export const densenet169 = build('densenet169');
/** torchvision's DenseNet201. */
export const densenet201 = build('densenet201');
/** torchvision's EfficientNet-B0 (evaluated at 224 pixels). */
export const efficientnet_b0 = build('efficientnet_b0');
/** torchvision's EfficientNet-B1 (240 pixels). */
export const efficientnet_b1 = build('efficientnet_b1');
/** torchvision's EfficientNet-B2 (288 pixels). */
export const efficientnet_b2 = build('efficientnet_b2');
/** torchvision's EfficientNet-B3 (300 pixels). */
export const efficientnet_b3 = build('efficientnet_b3');
/** torchvision's EfficientNet-B4 (380 pixels). */
export const efficientnet_b4 = build('efficientnet_b4');
/** torchvision's EfficientNet-B5 (456 pixels). */
export const efficientnet_b5 = build('efficientnet_b5');
/** torchvision's EfficientNet-B6 (528 pixels). */
export const efficientnet_b6 = build('efficientnet_b6');
/** torchvision's EfficientNet-B7 (600 pixels). */
export const efficientnet_b7 = build('efficientnet_b7');
/** torchvision's ConvNeXt-Tiny. */
export const convnext_tiny = build('convnext_tiny');
/** torchvision's ConvNeXt-Small. */
export const convnext_small = build('convnext_small');
/** torchvision's ConvNeXt-Base. */
export const convnext_base = build('convnext_base');
/** torchvision's ConvNeXt-Large. */
export const convnext_large = build('convnext_large');
