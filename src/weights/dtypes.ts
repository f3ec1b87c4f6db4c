import type { DType } from '../binding.js';

/** Bytes per element of each safetensors dtype name (the names the native side uses too). */
export const DTYPE_SIZE: Record<DType, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
};

export function numel(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}
