// The CUDA branches of the native sources (guarded by __has_include(<cuda_runtime_api.h>)) compile only
// on a GPU machine, which most sessions never get. Here they are at least syntax-checked: each file is
// compiled with the build's own flags against LibTorch's CUDA headers (Debian's libtorch-dev ships them)
// and a stub of CUDA's runtime API (test/helpers/cuda-stub), and the test fails if the CUDA branch was
// not the one compiled. It checks names and types against this LibTorch's API, not against 2.x's, and
// nothing runs: scripts/gpu-check.sh builds and tests for real.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, it } from 'vitest';
import { torchInfo } from '../src/index.js';
import { tempDir } from './helpers/python.js';

const root = resolve(__dirname, '..');
const commands = join(root, 'build', 'compile_commands.json');
// the macro each file defines when it compiles its CUDA branch (addon.cpp's needs cuBLAS and cuSPARSE
// headers too, and was built on the GPU machine before this check existed)
const branches: [string, string][] = [
  ['native/step_graph.cpp', 'TL_CUDA_GRAPH'],
  ['native/common.cpp', 'TL_HAS_CUDA_HEADERS'],
  ['native/batchnorm_cudnn.cpp', 'TL_CUDNN_BN'],
];
const haveCudaHeaders = existsSync('/usr/include/ATen/cuda/CUDAGraph.h');
const skip = torchInfo().cuda || !existsSync(commands) || !haveCudaHeaders;
if (skip)
  console.log(torchInfo().cuda ? 'CUDA syntax check skipped: this LibTorch has CUDA, the build itself compiled the CUDA branches'
    : `CUDA syntax check skipped: ${existsSync(commands) ? "LibTorch's CUDA headers are not in /usr/include" : 'no build/compile_commands.json (build the addon first)'}`);

const execFileAsync = promisify(execFile);

describe.skipIf(skip)("the native CUDA branches compile against LibTorch's CUDA headers", () => {
  const entries: { file: string; command: string }[] = skip ? [] : JSON.parse(readFileSync(commands, 'utf8'));
  // (concurrently: each parses LibTorch's headers on one core for half a minute)
  for (const [file, macro] of branches) {
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
      const cmd = `${flags} -fsyntax-only -Werror=return-type -I${join(root, 'test/helpers/cuda-stub')} -include ${join(root, 'native/pch.h')} ${wrapper}`;
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
