#!/usr/bin/env node
// torchlearn's command line:
//   torchlearn predict model.safetensors images-or-folders... [--json] [--device cpu|cuda]
//   torchlearn info
import { statSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { folderItems } from './data/loaders.js';
import { loadLearner } from './inference.js';
import { torchInfo } from './info.js';

const usage = `usage:
  torchlearn predict MODEL.safetensors IMAGE|FOLDER... [--json] [--device auto|cpu|cuda]
  torchlearn info`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === 'info') {
    const i = torchInfo();
    console.log(`LibTorch ${i.torchVersion} (${i.torchSource})`);
    console.log(`device: ${i.cuda ? `cuda (${i.deviceCount} x ${i.deviceName ?? 'GPU'}), cuDNN ${i.cudnn ? 'yes' : 'no'}` : 'cpu (this LibTorch has no CUDA)'}`);
    console.log(`threads: ${i.threads}`);
    return 0;
  }
  if (cmd === 'predict') {
    const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { json: { type: 'boolean', default: false }, device: { type: 'string', default: 'auto' } } });
    const [model, ...args] = positionals;
    if (!model || args.length === 0) {
      console.error(usage);
      return 2;
    }
    // a folder stands for its images (those in it and in its sub-folders, as getPreds reads a folder)
    const images = args.flatMap((a) => {
      if (!statSync(a, { throwIfNoEntry: false })?.isDirectory()) return [a];
      const found = folderItems(a).items.map((i) => i.path);
      if (found.length === 0) throw new Error(`${a}: no images in this folder`);
      return found;
    });
    const learn = loadLearner(model, { device: values.device });
    try {
      const preds = await learn.predictBatch(images);
      if (values.json) {
        console.log(JSON.stringify(preds.map((p, i) => ({ file: images[i], label: p.label, index: p.index, probs: Object.fromEntries(learn.vocab.map((v, k) => [v, p.probs[k]])) })), null, 2));
      } else {
        const w = Math.max(4, ...images.map((f) => f.length));
        console.log(`${'file'.padEnd(w)}  ${'prediction'.padEnd(16)}  ${learn.vocab.map((v) => v.padStart(14)).join('  ')}`);
        preds.forEach((p, i) => console.log(`${images[i].padEnd(w)}  ${p.label.padEnd(16)}  ${Array.from(p.probs, (x) => x.toFixed(4).padStart(14)).join('  ')}`));
      }
    } finally {
      learn.dispose();
    }
    return 0;
  }
  console.error(usage);
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    console.error(`torchlearn: ${(e as Error).message}`);
    process.exit(1);
  },
);
