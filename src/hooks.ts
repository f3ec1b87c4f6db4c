// The addon's entry points for the tests and the bench, not for the library: native internals run on given
// inputs (the optimizer step, the schedule, the batch pipeline), thread and device-memory readings, and the
// BatchNorm kernel variants the GPU bench compares. Not exported from the package.
import { native, type BatchNormKernels, type NamedTensor, type NativeAugOptions, type NativeLearner, type NativeNet, type NativeSchedule } from './binding.js';
import { nativeLearnerOf, type Learner } from './learner/learner.js';
import { nativeNetOf, type Model } from './model.js';

interface Hooks {
  /** LibTorch's CPU thread count on the JavaScript thread (kept at one) and on the CPU worker */
  threadInfo(): { js: number; cpuWorker: number };
  /** FastAdam's step exactly as training runs it, on given tensors (for the comparison with the formula) */
  fastAdamSteps(o: {
    params: NamedTensor[];
    noDecay: boolean[];
    sqrMom: number;
    eps: number;
    fused?: boolean;
    graph?: boolean;
    device?: string;
    steps: { grads: NamedTensor[]; lr: number; mom: number; wd: number }[];
  }): NamedTensor[];
  /** a schedule's learning rates ([position][group]) and momentums at the given positions of training */
  scheduleValues(s: NativeSchedule, groups: number, positions: Float64Array): { lrs: Float64Array; moms: Float64Array };
  /** device 0's allocator readings in bytes (zeros without CUDA); resetPeak starts a new peak */
  cudaMemory(resetPeak?: boolean): { allocated: number; reserved: number; peakAllocated: number };
  /** the per-image augmentation draws of training, [n * 15] (native/augment.h lists the columns) */
  drawAugParams(n: number, aug: NativeAugOptions, seed: number): Float64Array;
  /** seconds per batch of the batch pipeline (index, draw, augment, normalise) on `device` */
  /**
   * one training-mode BatchNorm (+ residual add + ReLU) of a bf16 channels_last CUDA batch on the given kernels,
   * forward and backward, against float64 from the same inputs: each quantity's relative error (Euclidean and
   * of the largest value), and the autograd node that made the output (native/batchnorm_check.cpp)
   */
  batchNormCheck(o: { kernels: BatchNormKernels; n: number; c: number; h: number; w: number; relu?: boolean; residual?: boolean; seed?: number }): {
    gradFn: string;
  } & Record<'y' | 'dx' | 'dweight' | 'dbias' | 'runningMean' | 'runningVar', BatchNormError> & { dresidual?: BatchNormError };
  /** the training pipeline's MixUp / CutMix on a given batch [n, c, h, w] with its draws (native/mixup.cpp) */
  mixBatch(o: { x: Float32Array; n: number; c: number; h: number; w: number; y: Int32Array | Float32Array; classes: number; kind: 'mixup' | 'cutmix'; alpha: number; seed: number }): {
    x: Float32Array;
    /** soft targets [n * classes] */
    y: Float32Array;
    lam: Float64Array;
    perm: Int32Array;
    /** CutMix: x1, y1, x2, y2 of the box and its centre cx, cy */
    box: Float64Array;
    /** CutMix: the Beta draw the box was cut from */
    lamDrawn: number;
  };
  benchAugment(o: {
    device: string;
    n: number;
    presize: number;
    size: number;
    bs: number;
    iters: number;
    aug: NativeAugOptions;
    mean: readonly number[];
    std: readonly number[];
    /** MixUp or CutMix after the pipeline, as a fit with the callback does (fast.ai's default alpha) */
    mix?: 'none' | 'mixup' | 'cutmix';
  }): number;
}

/** relative errors against float64: Euclidean over the tensor, and the largest difference over the largest value */
export interface BatchNormError {
  rel: number;
  max: number;
}

export const hooks = native.hooks as Hooks;

/**
 * One training-mode forward of a model without gradients (BatchNorm on batch statistics, updating the
 * running ones; dropout and stochastic depth drawn after manual_seed(seed)): the logits, for the
 * comparison with torchvision's train mode.
 */
export function trainForward(model: Model, o: { data: Float32Array; shape: number[]; seed: number }): Float32Array {
  return (native.hooks as { trainForward(net: NativeNet, o: object): Float32Array }).trainForward(nativeNetOf(model), o);
}

/** Keeps a learner's BatchNorm layers in eval mode during training (running statistics used, none updated), so
 * that a step's gradients do not depend on how the samples are split into batches. */
export function setBatchNormEval(learn: Learner, on: boolean): void {
  nativeLearnerOf(learn).setOptions({ batchNormEval: on });
}

/** One step's gradients for the given training images (averaged over the ranks in a distributed run), every
 * trainable parameter's flattened in parameter order; no optimizer step. */
export function gradients(learn: Learner, indices: number[]): Promise<Float32Array> {
  return nativeLearnerOf(learn).gradients(Int32Array.from(indices));
}

/** The body's eval-mode output for a batch (what fast.ai's head takes), without gradients. */
export function bodyFeatures(learn: Learner, o: { data: Float32Array; shape: number[] }): { data: Float32Array; shape: number[] } {
  return (native.hooks as { bodyFeatures(net: NativeNet, o: object): { data: Float32Array; shape: number[] } }).bodyFeatures(learn.net, o);
}

/** The glibc malloc settings torchlearn applies by default, as glibc's variables name them (the bench runs a
 * PyTorch row under them too). */
export function hostMallocSettings(): Record<string, number> {
  return (native.hooks as { hostMallocSettings(): Record<string, number> }).hostMallocSettings();
}

/** Sets the kernels of a learner's training-mode BatchNorm on bf16 CUDA batches: 'cudnn-fused' (the default) or ATen's. */
export function setBatchNormKernels(learn: Learner, kernels: BatchNormKernels): void {
  const nat: NativeLearner = nativeLearnerOf(learn);
  nat.setOptions({ batchNorm: kernels });
}

export type { BatchNormKernels };
