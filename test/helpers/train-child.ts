// Trains with a checkpoint after every epoch and reports each finished epoch; the reliability test
// kills this process (SIGKILL) in the middle of an epoch.
import { ImageDataLoaders, visionLearner } from '../../src/index.js';

const [data, modelDir] = process.argv.slice(2);
const dls = await ImageDataLoaders.fromFolder(data, { size: 64, presize: 64, bs: 8, seed: 3 });
const learn = await visionLearner(dls, 'resnet18', { pretrained: false, verbose: false, seed: 0, modelDir });
await learn.fitOneCycle(6, {
  checkpoint: 'run',
  checkpointEvery: 2,
  cbs: [{ afterEpoch: (e) => void console.log(`epoch ${e.epoch} done`) }],
});
console.log('finished');
