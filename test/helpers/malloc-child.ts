// The host allocator's mode (torchInfo().hostMalloc), and with 'fit': RSS right after a short fit and after
// two idle seconds (the CPU worker gives kept memory back once idle; native/host_malloc.h). Prints JSON.
import { readFileSync } from 'node:fs';
import { ImageDataLoaders, torchInfo, visionLearner } from '../../src/index.js';

const rssMB = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) / 1024;
const out: Record<string, unknown> = { hostMalloc: torchInfo().hostMalloc };
if (process.argv[2] === 'fit') {
  const n = 64;
  const p = 64;
  const images = new Uint8Array(n * p * p * 3);
  for (let i = 0; i < images.length; i++) images[i] = (i * 2654435761) >>> 24;
  const dls = ImageDataLoaders.fromArrays(images, Int32Array.from({ length: n }, (_, i) => i % 2), ['a', 'b'], { presize: p, size: p, bs: 16, validPct: 0.25 });
  const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, device: 'cpu', seed: 0 });
  await learn.fitOneCycle(1);
  out.afterFit = rssMB();
  await new Promise((r) => setTimeout(r, 2500));
  out.afterIdle = rssMB();
  learn.dispose();
}
console.log(JSON.stringify(out));
