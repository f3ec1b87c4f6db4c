// The CUDA branches of the native sources (guarded by __has_include(<cuda_runtime_api.h>)) compile only
// on a GPU machine, which most sessions never get. Here they are at least syntax-checked: each file is
// compiled with the build's own flags against LibTorch's CUDA headers (Debian's libtorch-dev ships them)
// and a stub of CUDA's runtime API (test/helpers/cuda-stub), and the test fails if the CUDA branch was
// not the one compiled. It checks names and types against this LibTorch's API, not against 2.x's, and
// nothing runs: scripts/gpu-check.sh builds and tests for real.
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { torchInfo } from '../src/index.js';
import { tempDir } from './helpers/python.js';

const root = resolve(__dirname, '..');
const commands = join(root, 'build', 'compile_commands.json');
// the macro each file defines when it compiles its CUDA branch (addon.cpp's needs cuBLAS and cuSPARSE
// headers too, and was built on the GPU machine before this check existed)
const branches: [string, string, string?][] = [
  ['native/step_graph.cpp', 'TL_CUDA_GRAPH'],
  ['native/common.cpp', 'TL_HAS_CUDA_HEADERS'],
  ['native/batchnorm_cudnn.cpp', 'TL_CUDNN_BN'],
  ['native/batchnorm_fused.cpp', 'TL_FUSED_BN', '-DTL_BN_KERNELS=1'], // (CMakeLists.txt defines it where it builds the kernels)
];
const haveCudaHeaders = existsSync('/usr/include/ATen/cuda/CUDAGraph.h');
const skip = torchInfo().cuda || !existsSync(commands) || !haveCudaHeaders;
if (skip)
  console.log(torchInfo().cuda ? 'CUDA syntax check skipped: this LibTorch has CUDA, the build itself compiled the CUDA branches'
    : `CUDA syntax check skipped: ${existsSync(commands) ? "LibTorch's CUDA headers are not in /usr/include" : 'no build/compile_commands.json (build the addon first)'}`);

// torchlearn's own kernels (native/cuda/*.cu) are plain CUDA: nvcc compiles them here without LibTorch, for
// the GPUs the build targets (CMakeLists.txt), where the machine has nvcc (this project's machines do).
const nvcc = (() => {
  try {
    return execFileSync('bash', ['-c', 'command -v nvcc'], { encoding: 'utf8' }).trim();
  } catch {
    return '';
  }
})();
if (!nvcc) console.log('CUDA kernel compile check skipped: no nvcc on this machine');
describe.skipIf(!nvcc)('the CUDA kernels compile with nvcc', () => {
  for (const file of readdirSync(join(root, 'native/cuda')).filter((f) => f.endsWith('.cu'))) {
    it(`native/cuda/${file}`, () => {
      const out = join(tempDir(), `${file}.o`);
      let err = '';
      try {
        execFileSync(nvcc, ['-std=c++17', '--extended-lambda', '-c', '-gencode=arch=compute_80,code=sm_80', '-gencode=arch=compute_90,code=sm_90', '-Xcompiler', '-fPIC',
          `-I${join(root, 'native')}`, join(root, 'native/cuda', file), '-o', out], { stdio: 'pipe' });
      } catch (e) {
        err = String((e as { stderr?: Buffer }).stderr ?? e);
      }
      expect(err.split('\n').filter((l) => /error|warning/.test(l)).slice(0, 10).join('\n')).toBe('');
      expect(existsSync(out)).toBe(true);
    });
  }
  it("native/cuda/bn_act.cu, run emulated on the CPU (every thread of the grid a launch would use): BatchNorm's statistics, forward and backward against the formulas in double, every output written", () => {
    // (this caught the forward kernel reading its 16-byte vectors through a pointer of another type, which
    // the host compiler at -O2 took as licence to drop x from the result)
    const exe = join(tempDir(), 'bn_act_check');
    execFileSync(nvcc, ['-std=c++17', '--extended-lambda', '-O2', `-I${join(root, 'native')}`, join(root, 'test/helpers/bn_act_check.cu'), join(root, 'native/cuda/bn_act.cu'), '-o', exe], { stdio: 'pipe' });
    let out = '';
    try {
      out = execFileSync(exe, { encoding: 'utf8' });
    } catch (e) {
      out = String((e as { stdout?: string }).stdout ?? e);
    }
    console.log(out.trim().split('\n').filter((l) => /rows  3137|OK|FAIL/.test(l)).join('\n'));
    expect(out).toMatch(/^OK 24 cases$/m);
  });
});

const execFileAsync = promisify(execFile);

describe.skipIf(skip)("the native CUDA branches compile against LibTorch's CUDA headers", () => {
  const entries: { file: string; command: string }[] = skip ? [] : JSON.parse(readFileSync(commands, 'utf8'));
  // (concurrently: each parses LibTorch's headers on one core for half a minute)
  for (const [file, macro, defines = ''] of branches) {
    it.concurrent(file, async ({ expect }) => {
      const entry = entries.find((e) => resolve(e.file) === join(root, file));
      expect(entry, `${file} in compile_commands.json`).toBeDefined();
      // the build's command, without its output, input and precompiled header
      const flags = entry!.command
        .replace(/\s-o\s+\S+/, '')
        .replace(/\s-c\s+\S+/, '')
        .replace(/\s-include\s+\S*cmake_pch\S*/, '')
        .replace('-Winvalid-pch', '');
      const wrapper = join(tempDir(), 'check.cpp');
      writeFileSync(wrapper, `#include "${join(root, file)}"\n#ifndef ${macro}\n#error "the CUDA branch of ${file} was not compiled"\n#endif\n`);
      const cmd = `${flags} ${defines} -fsyntax-only -Werror=return-type -I${join(root, 'test/helpers/cuda-stub')} -include ${join(root, 'native/pch.h')} ${wrapper}`;
      let out = '';
      try {
        await execFileAsync('bash', ['-c', cmd], { cwd: join(root, 'build'), maxBuffer: 1 << 26 });
      } catch (e) {
        out = String((e as { stderr?: string }).stderr ?? e);
      }
      expect(out.split('\n').filter((l) => /error/.test(l)).slice(0, 10).join('\n')).toBe('');
    });
  }
});
