// Reference computations with Debian's python3-torch/torchvision (importable only from /usr/bin/python3).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const PYTHON = process.env.TORCHLEARN_REF_PYTHON ?? '/usr/bin/python3';

export function runPython(script: string, args: string[] = []): string {
  return execFileSync(PYTHON, ['-c', script, ...args], { encoding: 'utf8', maxBuffer: 1 << 28 });
}

// Under the run's root (test/helpers/temp-root.ts removes it when the run ends); the system's temp folder
// when a test file runs outside vitest's global setup.
export function tempDir(prefix = 'torchlearn-test-'): string {
  return mkdtempSync(join(process.env.TORCHLEARN_TEST_TMP ?? tmpdir(), prefix));
}

export function readF32(path: string): Float32Array {
  const b = readFileSync(path);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

// max |a - b| over max |b| (at least `floor`, for tensors near zero)
export function maxRelError(a: ArrayLike<number>, b: ArrayLike<number>, floor = 0): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / Math.max(den, floor);
}
