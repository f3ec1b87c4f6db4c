// Decoding a data set in child processes (fast.ai's and PyTorch's num_workers). Two reasons, neither of them
// speed (sharp already decodes on several threads):
// - memory: what the decoders keep once a data set is decoded (libvips's per-thread buffers and caches, the C
//   allocator's per-thread arenas) is not ours to free, and in this process it would stay resident through
//   training; in a child it goes when the child exits;
// - safety: images from outside are hostile until checked, and a file that crashes a decoding library costs
//   that file (skipped and counted, as any unreadable image), not the process and the work in it.
import { fork, type ChildProcess } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { DecodeJob, DecodeMessage } from './decode-worker.js';
import { decodeAll, type Decoded, type DecodeFailure } from './images.js';
import type { ResizeMethod } from './transforms.js';

/** From this many images, a data set is decoded in a worker process unless `numWorkers` says otherwise. */
export const DECODE_IN_WORKERS_FROM = 64;

/** How many decoder crashes one worker's share may cost before the decode is abandoned as a whole. */
const MAX_CRASHES = 16;

/** The `numWorkers` to use for `n` images: the request (checked), or 1 from DECODE_IN_WORKERS_FROM images, else 0. */
export function decodeWorkers(requested: number | undefined, n: number): number {
  if (requested === undefined) return n >= DECODE_IN_WORKERS_FROM ? 1 : 0;
  const most = Math.max(1, availableParallelism());
  if (!Number.isInteger(requested) || requested < 0 || requested > most)
    throw new Error(`numWorkers must be an integer from 0 (decode in this process) to ${most} (this machine's cores), got ${requested}`);
  return requested;
}

/**
 * Decodes `paths` at `presize` in `numWorkers` child processes (0: in this process), each taking every
 * numWorkers-th file; results in the order of `paths`, failures as `DecodeFailure`s. A worker that dies
 * mid-way is replaced by one that decodes the rest one file at a time, so that the file it dies on is known:
 * that file is reported as a failure and the rest continue. If no worker can be started, decoding falls back to
 * this process (with a warning unless `quiet`).
 */
export async function decodeFiles(
  paths: string[],
  presize: number,
  method: ResizeMethod,
  o: { numWorkers: number; onProgress?: (done: number, total: number) => void; quiet?: boolean },
): Promise<(Decoded | DecodeFailure)[]> {
  if (o.numWorkers === 0 || paths.length === 0) return decodeAll(paths, presize, method, o.onProgress);
  const out = new Array<Decoded | DecodeFailure>(paths.length);
  let done = 0;
  const report = (i: number, r: Decoded | DecodeFailure) => {
    out[i] = r;
    o.onProgress?.(++done, paths.length);
  };
  const w = Math.min(o.numWorkers, paths.length);
  const shares = Array.from({ length: w }, (_, k) => paths.map((_, i) => i).filter((i) => i % w === k));
  const ends = await Promise.allSettled(shares.map((share) => decodeShare(share, paths, presize, method, report)));
  const failed = ends.filter((e): e is PromiseRejectedResult => e.status === 'rejected').map((e) => e.reason as Error);
  const other = failed.find((e) => !(e instanceof WorkerStartError));
  if (other) throw other;
  if (failed.length > 0) {
    if (!o.quiet) console.warn(`torchlearn: ${failed[0].message}; decoding in this process instead`);
    const rest = paths.map((_, i) => i).filter((i) => out[i] === undefined);
    const decoded = await decodeAll(
      rest.map((i) => paths[i]),
      presize,
      method,
    );
    rest.forEach((i, k) => report(i, decoded[k]));
  }
  return out;
}

class WorkerStartError extends Error {}

async function decodeShare(share: number[], paths: string[], presize: number, method: ResizeMethod, report: (i: number, r: Decoded | DecodeFailure) => void) {
  let pending = share;
  let oneAtATime = false;
  let crashes = 0;
  while (pending.length > 0) {
    const got = new Set<number>();
    const run = await runWorker({ paths: pending.map((i) => paths[i]), presize, method, inflight: oneAtATime ? 1 : 2 * availableParallelism(), announce: oneAtATime }, (m) => {
      got.add(m.i);
      report(pending[m.i], m.ok ? { ok: true, data: Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength) } : { ok: false, reason: m.reason });
    });
    const left = pending.filter((_, j) => !got.has(j));
    if (left.length === 0) return;
    if (oneAtATime && run.begun !== null && !got.has(run.begun)) {
      // decoding one file at a time, the worker died on this one
      report(pending[run.begun], { ok: false, reason: `the decoder process died on this file (${run.how})` });
      if (++crashes > MAX_CRASHES) throw new Error(`decoding stopped: the decoder process died ${crashes} times (last on ${paths[pending[run.begun]]}, ${run.how})`);
      pending = left.filter((i) => i !== pending[run.begun!]);
    } else if (run.startFailed || (oneAtATime && run.begun === null)) {
      throw new WorkerStartError(`a decoding worker process did not start (${run.how})`);
    } else pending = left;
    oneAtATime = true;
  }
}

interface WorkerRun {
  /** the index (in the job) of the last file the worker announced, or null */
  begun: number | null;
  /** how it ended: 'exit code N', 'SIGSEGV', or the spawn error */
  how: string;
  /** it never ran: the process could not be created */
  startFailed: boolean;
}

function runWorker(job: DecodeJob, onResult: (m: Extract<DecodeMessage, { i: number }>) => void): Promise<WorkerRun> {
  return new Promise((resolve) => {
    let child: ChildProcess;
    let begun: number | null = null;
    let received = 0;
    let spawnError: Error | null = null;
    try {
      child = fork(workerEntry.path, [], { execArgv: workerEntry.execArgv, serialization: 'advanced', stdio: ['ignore', 'inherit', 'pipe', 'ipc'] });
    } catch (e) {
      return resolve({ begun: null, how: (e as Error).message, startFailed: true });
    }
    // what the worker writes to stderr: passed on when it ends well, its first line in `how` when it does not
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (t: string) => {
      if (stderr.length < 16384) stderr += t;
    });
    child.on('message', (m: DecodeMessage) => {
      if ('ready' in m)
        child.send(job, (e) => {
          if (e) spawnError ??= e;
        });
      else if ('begin' in m) begun = m.begin;
      else {
        onResult(m);
        // every result in: the worker is done (disconnecting ends it)
        if (++received === job.paths.length) child.disconnect();
      }
    });
    // done once the process has exited and its channel is closed (the last message read): 'close' does not
    // come for a forked child whose stdio is inherited
    let ended: [number | null, NodeJS.Signals | null] | null = null;
    let disconnected = false;
    const settle = () => {
      if (!(ended && disconnected)) return;
      const [code, signal] = ended;
      const clean = code === 0 && received === job.paths.length;
      if (clean && stderr) process.stderr.write(stderr);
      // Node prints an uncaught error's source line first: the error itself says more
      const lines = stderr.split('\n').filter((l) => l.trim() !== '');
      const said = lines.find((l) => /^\w*Error\b/.test(l)) ?? lines[0];
      const how = spawnError ? spawnError.message : (signal ?? `exit code ${code}`) + (said && !clean ? `: ${said.trim().slice(0, 300)}` : '');
      resolve({ begun, how, startFailed: spawnError !== null && received === 0 && begun === null });
    };
    child.on('error', (e) => {
      spawnError ??= e;
      // a process that could not be created sends neither event
      if (child.pid === undefined) {
        ended ??= [null, null];
        disconnected = true;
        settle();
      }
    });
    child.on('exit', (code, signal) => ((ended = [code, signal]), settle()));
    child.on('disconnect', () => ((disconnected = true), settle()));
  });
}

// The worker's entry: the compiled decode-worker.js beside this file, or, running from the TypeScript sources
// (tests, tsx), decode-worker.ts under tsx's loader.
const workerEntry = (() => {
  const self = fileURLToPath(import.meta.url);
  if (!self.endsWith('.ts')) return { path: self.replace(/workers\.js$/, 'decode-worker.js'), execArgv: [] as string[] };
  return { path: self.replace(/workers\.ts$/, 'decode-worker.ts'), execArgv: ['--import', pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href] };
})();
