// 50 back-to-back fit / predict / dispose cycles in a fresh process; prints RSS after each cycle (JSON).
import sharp from 'sharp';
import { ImageDataLoaders, visionLearner } from '../../src/index.js';
import { native } from '../../src/binding.js';

// libvips keeps up to 50 MB of decoded operations in its own cache: not ours to measure
sharp.cache(false);

const [data] = process.argv.slice(2);
const dls = await ImageDataLoaders.fromFolder(data, { size: 32, presize: 32, bs: 16, seed: 3, quiet: true });
const files = dls.valid.items.slice(0, 4).map((i) => i.path);
const rss: number[] = [];
for (let i = 0; i < 50; i++) {
  const l = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false });
  await l.fit(1);
  await l.predictBatch(files);
  l.dispose();
  // a full collection first, so that what is measured is what stays alive, not what V8 has yet to collect;
  // then the memory the allocator keeps for the next step goes back (native/host_malloc.h), as it would
  // after a second idle
  (globalThis as { gc?: () => void }).gc?.();
  await native.releaseHostMemory();
  rss.push(process.memoryUsage().rss);
}
console.log(JSON.stringify(rss));
