// Networks and learners dropped without dispose(), in a fresh process; prints RSS after each (JSON).
import { ImageDataLoaders, resnet50, visionLearner } from '../../src/index.js';

const [data] = process.argv.slice(2);
const dls = await ImageDataLoaders.fromFolder(data, { size: 32, presize: 32, bs: 8, seed: 3, quiet: true });
const rss: number[] = [];
for (let i = 0; i < 40; i++) {
  // 100 MB of weights a time, then a learner (another network, its caches), neither disposed
  const m = resnet50({ numClasses: 2 });
  const l = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false });
  void m;
  void l;
  await new Promise((r) => setImmediate(r)); // a turn of the event loop, where finalizers run
  rss.push(process.memoryUsage().rss);
}
console.log(JSON.stringify(rss));
