import { native, type TorchInfo } from './binding.js';

export type { TorchInfo };

/** LibTorch's version, where it came from, CUDA/cuDNN availability and the CPU thread count. */
export function torchInfo(): TorchInfo {
  return native.torchInfo();
}

/** LibTorch's CPU threads (default: every core; the TORCHLEARN_THREADS environment variable also sets it). */
export function setNumThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new Error(`setNumThreads: threads must be a positive integer, got ${n}`);
  native.setNumThreads(n);
}

/** Seeds LibTorch's global generator (weight initialisation, dropout). */
export function manualSeed(seed: number): void {
  native.manualSeed(seed);
}

/** 'auto' is CUDA when LibTorch has it, otherwise the CPU. */
export function resolveDevice(device: string | undefined): string {
  if (!device || device === 'auto') return native.torchInfo().cuda ? 'cuda' : 'cpu';
  return device;
}

/**
 * Whether eval-mode forwards fold each BatchNorm of the body into its convolution (native/resnet.h, ConvBn):
 * on by default on the CPU, where oneDNN adds the bias inside the convolution (a 16-image ResNet50 pass
 * skips 53 BatchNorm passes); off on CUDA, where ATen's convolution adds a bias as a separate pass, so
 * folding would only trade one pass for another (unmeasured there).
 */
export function foldBatchNormDefault(device: string): boolean {
  return !device.startsWith('cuda');
}

/** The bf16 policy, for training and inference alike, in one place: 'auto' is bf16 autocast on CUDA (tensor
 * cores, half the memory traffic) and fp32 on the CPU (where the learner refuses 'bf16'). */
export function usesBf16(device: string, precision: 'auto' | 'fp32' | 'bf16' = 'auto'): boolean {
  return precision === 'bf16' || (precision === 'auto' && device.startsWith('cuda'));
}
