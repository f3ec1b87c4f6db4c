#!/usr/bin/env node
// torchlearn's command line:
//   torchlearn predict model.safetensors images-or-folders... [--json] [--device cpu|cuda]
//   torchlearn serve model.safetensors [--port 8080] [--host 127.0.0.1]
//   torchlearn launch --nproc N script.js [args...]
//   torchlearn info
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const usage = `usage:
  torchlearn predict MODEL.safetensors IMAGE|FOLDER... [--json] [--device auto|cpu|cuda]
  torchlearn serve MODEL.safetensors [--port 8080] [--host 127.0.0.1]
  torchlearn weights list
  torchlearn weights get ARCH [--version IMAGENET1K_V1|IMAGENET1K_V2]
  torchlearn launch --nproc N [--master-port P] SCRIPT.js|COMMAND [ARGS...]
  torchlearn info
  torchlearn --help | --version

  predict   the classes of images with a model written by learn.export()
  serve     an HTTP server for a model: POST /predict, GET /info, /health, and a page at / to try it
  weights   torchvision's ImageNet weights: which exist and which are in PyTorch's hub cache; download one
  launch    a data-parallel run on this machine: N processes with torchrun's variables
  info      the LibTorch this addon runs on, its device and threads`;

const launchUsage = `usage: torchlearn launch --nproc N [--master-port P] [--master-addr A] [--grace S] SCRIPT.js|COMMAND [ARGS...]

  --nproc        processes (ranks) to start: one per GPU, or a few on the CPU
  --master-port  rank 0's store port (default: a free one)
  --master-addr  rank 0's address (default 127.0.0.1)
  --grace        seconds the other ranks get to stop on their own after one fails (default 30)
Each rank runs the script (with this Node when it ends in .js, .mjs or .cjs; otherwise the command as given,
e.g. npx tsx train.ts) with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, as torchrun
sets them; OMP_NUM_THREADS is the cores divided among the ranks unless set. The exit code is the first
failing rank's (128 + the signal's number for a killed one), 0 when every rank succeeds.`;

const predictUsage = `usage: torchlearn predict MODEL.safetensors IMAGE|FOLDER... [--json] [--device auto|cpu|cuda]

  MODEL     an export written by learn.export() (one .safetensors file with the weights, classes and
            image size); a torchvision weight file is not one
  IMAGE     image files; a FOLDER stands for the images in it and in its sub-folders
  --json    one JSON array instead of the table
  --device  'auto' (default: CUDA when LibTorch has it), 'cpu', 'cuda' or 'cuda:N'
A file that cannot be read gets its error in its row; the others are predicted, and the exit code is 1.`;

const serveUsage = `usage: torchlearn serve MODEL.safetensors [--port 8080] [--host 127.0.0.1] [--device auto|cpu|cuda]
                       [--max-batch N] [--max-delay-ms MS] [--max-queue N] [--body-limit BYTES]

  MODEL          an export written by learn.export()
  --port         the port (default 8080; 0 for any free one)
  --host         the address to listen on (default 127.0.0.1; 0.0.0.0 for other machines)
  --max-batch    the most images in one forward pass (default: 64)
  --max-delay-ms how long the first image of a batch waits for others (default 2)
  --max-queue    images waiting past which requests get 503 with Retry-After (default 1024)
  --body-limit   the largest request body in bytes (default 20 MiB): larger ones get 413
POST /predict takes an image's bytes (Content-Type image/*) or a multipart form with one file and answers
JSON: the label, every class's probability and the timing; ?gradcam=1 adds the Grad-CAM as a PNG.
SIGTERM or Ctrl-C finishes the requests in flight, then exits.`;

type Options = NonNullable<Parameters<typeof parseArgs>[0]>['options'];

/** A command's arguments, or the exit code when they are wrong (2, with the usage) or ask for help (0). */
function parseCommand<O extends Options>(name: string, args: string[], options: O, usage: string) {
  try {
    const parsed = parseArgs({ args, allowPositionals: true, options: { ...options, help: { type: 'boolean', short: 'h', default: false } } as O });
    if ((parsed.values as { help?: boolean }).help) {
      console.log(usage);
      return 0;
    }
    return parsed;
  } catch (e) {
    console.error(`torchlearn ${name}: ${(e as Error).message}\n\n${usage}`);
    return 2;
  }
}

function version(): string {
  return JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === '--help' || cmd === '-h' || cmd === 'help') {
    console.log(usage);
    return 0;
  }
  if (cmd === '--version' || cmd === '-v') {
    console.log(version());
    return 0;
  }
  if (cmd === 'info') {
    const { torchInfo } = await import('./info.js');
    const i = torchInfo();
    console.log(`torchlearn ${version()}`);
    console.log(`LibTorch ${i.torchVersion} (${i.torchSource})`);
    console.log(`device: ${i.cuda ? `cuda (${i.deviceCount} x ${i.deviceName ?? 'GPU'}), cuDNN ${i.cudnn ? 'yes' : 'no'}` : 'cpu (this LibTorch has no CUDA)'}`);
    console.log(`threads: ${i.threads}`);
    return 0;
  }
  if (cmd === 'launch') {
    // (the launcher's own options come before the command: everything from the command on is the ranks')
    const opts: Record<string, string> = {};
    let i = 0;
    for (; i < rest.length; i++) {
      const a = rest[i];
      if (a === '--') {
        i++;
        break;
      }
      if (a === '-h' || a === '--help') {
        console.log(launchUsage);
        return 0;
      }
      const m = /^--(nproc|master-port|master-addr|grace)(?:=(.*))?$/.exec(a);
      if (!m) {
        if (a.startsWith('-')) {
          console.error(`torchlearn launch: unknown option ${a}\n\n${launchUsage}`);
          return 2;
        }
        break;
      }
      const v = m[2] ?? rest[++i];
      if (v === undefined) {
        console.error(`torchlearn launch: ${a} needs a value\n\n${launchUsage}`);
        return 2;
      }
      opts[m[1]] = v;
    }
    const command = rest.slice(i);
    const num = (k: string, int: boolean) => {
      if (opts[k] === undefined) return undefined;
      const n = Number(opts[k]);
      if (!(n > 0) || (int && !Number.isInteger(n))) throw new Error(`launch: --${k} must be a positive ${int ? 'integer' : 'number'}, got '${opts[k]}'`);
      return n;
    };
    const nproc = num('nproc', true);
    if (nproc === undefined || command.length === 0) {
      console.error(launchUsage);
      return 2;
    }
    const { launch } = await import('./distributed/launch.js');
    const grace = num('grace', false);
    return launch({ nproc, command, masterPort: num('master-port', true), masterAddr: opts['master-addr'], graceMs: grace === undefined ? undefined : grace * 1000 });
  }
  if (cmd === 'weights') {
    const { ARCHS } = await import('./model.js');
    const { PRETRAINED, WEIGHTS_VERSIONS, cachedWeightFile, hubCacheDir, pretrainedFileName, weightsBaseUrl } = await import('./weights/pretrained.js');
    const [sub, ...args] = rest;
    if (sub === 'list') {
      console.log(`PyTorch's hub cache: ${hubCacheDir()}; downloads from ${weightsBaseUrl()}`);
      console.log(`${'architecture'.padEnd(18)}${'version'.padEnd(16)}${'file'.padEnd(42)}cache`);
      for (const arch of ARCHS)
        for (const v of WEIGHTS_VERSIONS) {
          const file = PRETRAINED[arch][v];
          if (!file) continue;
          const st = statSync(join(hubCacheDir(), file), { throwIfNoEntry: false });
          console.log(`${arch.padEnd(18)}${v.padEnd(16)}${file.padEnd(42)}${st ? `cached (${(st.size / 2 ** 20).toFixed(1)} MiB)` : 'not cached'}`);
        }
      return 0;
    }
    if (sub === 'get') {
      const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { version: { type: 'string', default: 'IMAGENET1K_V1' } } });
      const arch = positionals[0];
      if (!arch || !(ARCHS as readonly string[]).includes(arch)) {
        console.error(`torchlearn weights get: name an architecture: ${ARCHS.join(', ')}`);
        return 2;
      }
      const file = pretrainedFileName(arch as (typeof ARCHS)[number], values.version as 'IMAGENET1K_V1');
      const { ProgressBar } = await import('./learner/progress.js');
      const bar = new ProgressBar(process.stderr, Boolean(process.stderr.isTTY));
      const path = await cachedWeightFile(file, { onProgress: (r, t) => bar.update(file, r, t) });
      bar.clear();
      console.log(path);
      return 0;
    }
    console.error(usage);
    return 2;
  }
  if (cmd === 'serve') {
    const int = { type: 'string' } as const;
    const parsed = parseCommand('serve', rest, { port: int, host: { type: 'string', default: '127.0.0.1' }, device: { type: 'string', default: 'auto' }, 'max-batch': int, 'max-delay-ms': int, 'max-queue': int, 'body-limit': int } as const, serveUsage);
    if (typeof parsed === 'number') return parsed;
    const { values, positionals } = parsed;
    if (positionals.length !== 1) {
      console.error(serveUsage);
      return 2;
    }
    const num = (k: 'port' | 'max-batch' | 'max-delay-ms' | 'max-queue' | 'body-limit') => {
      const v = values[k];
      if (v === undefined) return undefined;
      const n = Number(v);
      if (!Number.isFinite(n) || n < 0) throw new Error(`--${k} must be a non-negative number, got '${v}'`);
      return n;
    };
    const model = positionals[0];
    if (!existsSync(model)) throw new Error(`${model}: no such model file. torchlearn serve needs an export: the .safetensors file that learn.export() writes`);
    const { serve } = await import('./serving/server.js');
    await serve(model, {
      port: num('port') ?? 8080,
      host: values.host,
      device: values.device,
      bodyLimit: num('body-limit'),
      batching: { maxBatch: num('max-batch'), maxDelayMs: num('max-delay-ms'), maxQueue: num('max-queue') },
    });
    return new Promise<number>(() => {}); // until a signal: serve() exits the process when the server has closed
  }
  if (cmd === 'predict') {
    const parsed = parseCommand('predict', rest, { json: { type: 'boolean', default: false }, device: { type: 'string', default: 'auto' } } as const, predictUsage);
    if (typeof parsed === 'number') return parsed;
    const { values, positionals } = parsed;
    const [model, ...args] = positionals;
    if (!model || args.length === 0) {
      console.error(predictUsage);
      return 2;
    }
    if (!existsSync(model))
      throw new Error(`${model}: no such model file. torchlearn predict needs an export: the .safetensors file that learn.export() writes after training (a torchvision weight file is not one)`);
    const { folderItems } = await import('./data/loaders.js');
    const { loadLearner } = await import('./inference.js');
    // a folder stands for its images (those in it and in its sub-folders, as getPreds reads a folder)
    const images = args.flatMap((a) => {
      if (!statSync(a, { throwIfNoEntry: false })?.isDirectory()) return [a];
      const found = folderItems(a).items.map((i) => i.path);
      if (found.length === 0) throw new Error(`${a}: no images in this folder`);
      return found;
    });
    const learn = loadLearner(model, { device: values.device });
    let failed = 0;
    try {
      const preds = await learn.predictEach(images);
      if (values.json) {
        const rows = preds.map((p, i) => {
          if ('error' in p) return { file: images[i], error: p.error };
          return { file: images[i], label: p.label, ...(p.labels ? { labels: p.labels } : {}), index: p.index, probs: Object.fromEntries(learn.vocab.map((v, k) => [v, p.probs[k]])) };
        });
        console.log(JSON.stringify(rows, null, 2));
      } else {
        const w = Math.max(4, ...images.map((f) => f.length));
        console.log(`${'file'.padEnd(w)}  ${'prediction'.padEnd(16)}  ${learn.vocab.map((v) => v.padStart(14)).join('  ')}`);
        preds.forEach((p, i) => {
          if ('error' in p) console.log(`${images[i].padEnd(w)}  ${'error'.padEnd(16)}  ${p.error}`);
          else console.log(`${images[i].padEnd(w)}  ${p.label.padEnd(16)}  ${Array.from(p.probs, (x) => x.toFixed(4).padStart(14)).join('  ')}`);
        });
      }
      failed = preds.filter((p) => 'error' in p).length;
    } finally {
      learn.dispose();
    }
    if (failed) console.error(`torchlearn: ${failed} of ${images.length} image(s) could not be read`);
    return failed ? 1 : 0;
  }
  console.error(cmd === undefined ? usage : `torchlearn: unknown command '${cmd}'\n\n${usage}`);
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    console.error(`torchlearn: ${(e as Error).message}`);
    process.exit(1);
  },
);
