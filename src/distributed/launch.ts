// `torchlearn launch`: torchrun's single-machine launch for Node scripts. One process per rank with
// torchrun's variables, rank 0's store on a free local port, and exit codes passed through: the first rank
// to fail decides the launcher's code, and the others are stopped if they do not stop on their own.
import { spawn, type ChildProcess } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { createServer } from 'node:net';
import { constants } from 'node:os';

/** What `launch` starts (`torchlearn launch` on the command line). */
export interface LaunchOptions {
  /** processes to start (ranks 0..nproc-1) */
  nproc: number;
  /** the command each rank runs; a first word ending in .js, .mjs or .cjs runs with this Node */
  command: string[];
  /** rank 0's store (default 127.0.0.1 and a free port) */
  masterAddr?: string;
  masterPort?: number;
  /** after a rank fails, how long the others get to stop on their own before SIGTERM (default 30 s) */
  graceMs?: number;
  /** the environment the ranks start from (default process.env) */
  env?: NodeJS.ProcessEnv;
  /** where the launcher's own lines go (default stderr) */
  log?: (line: string) => void;
}

/** A free TCP port on the loopback interface (the OS picks it; free when this returns). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** The exit code a shell gives a process killed by a signal: 128 + its number. */
function signalCode(signal: NodeJS.Signals): number {
  return 128 + ((constants.signals as Record<string, number>)[signal] ?? 0);
}

/**
 * Starts `nproc` ranks of `command` and resolves with the run's exit code: 0 when every rank exits 0,
 * otherwise the first failing rank's (128 + signal for a killed one). Threads: unless OMP_NUM_THREADS or
 * TORCHLEARN_THREADS is set, each rank gets the machine's cores divided among the ranks.
 */
export async function launch(o: LaunchOptions): Promise<number> {
  if (!Number.isInteger(o.nproc) || o.nproc < 1) throw new Error(`launch: --nproc must be a positive integer, got ${o.nproc}`);
  if (!o.command.length) throw new Error('launch: give the script to run (torchlearn launch --nproc 2 train.js [args])');
  const log = o.log ?? ((l: string) => process.stderr.write(l + '\n'));
  const base = o.env ?? process.env;
  const masterAddr = o.masterAddr ?? '127.0.0.1';
  const masterPort = o.masterPort ?? (await freePort());
  const graceMs = o.graceMs ?? 30_000;
  const [first, ...rest] = o.command;
  const [file, args] = /\.(c|m)?js$/.test(first) ? [process.execPath, [first, ...rest]] : [first, rest];
  const threads = String(Math.max(1, Math.floor(availableParallelism() / o.nproc)));
  const children: ChildProcess[] = [];
  let failure: { rank: number; code: number } | null = null;
  let stopTimer: NodeJS.Timeout | undefined;
  let killTimer: NodeJS.Timeout | undefined;
  const live = () => children.filter((c) => c.exitCode === null && c.signalCode === null);
  const stopOthers = () => {
    for (const c of live()) c.kill('SIGTERM');
    killTimer = setTimeout(() => live().forEach((c) => c.kill('SIGKILL')), 5000);
    killTimer.unref();
  };
  const forward = (sig: NodeJS.Signals) => () => live().forEach((c) => c.kill(sig));
  const onInt = forward('SIGINT');
  const onTerm = forward('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  try {
    const exits = Array.from({ length: o.nproc }, (_, rank) => {
      const env: NodeJS.ProcessEnv = {
        ...base,
        RANK: String(rank), LOCAL_RANK: String(rank), WORLD_SIZE: String(o.nproc), LOCAL_WORLD_SIZE: String(o.nproc), GROUP_RANK: '0',
        MASTER_ADDR: masterAddr, MASTER_PORT: String(masterPort),
      };
      if (!base.OMP_NUM_THREADS && !base.TORCHLEARN_THREADS) env.OMP_NUM_THREADS = threads;
      const child = spawn(file, args, { stdio: 'inherit', env });
      children.push(child);
      return new Promise<void>((resolve) => {
        const done = (code: number | null, signal: NodeJS.Signals | null) => {
          const c = signal ? signalCode(signal) : (code ?? 1);
          if (c !== 0 && !failure) {
            failure = { rank, code: c };
            log(`torchlearn launch: rank ${rank} (pid ${child.pid}) ${signal ? `was killed by ${signal}` : `exited with code ${code}`}; ` +
              `the other ranks get ${graceMs / 1000} s to stop on their own`);
            stopTimer = setTimeout(stopOthers, graceMs);
            stopTimer.unref();
          }
          resolve();
        };
        child.once('error', (e) => {
          log(`torchlearn launch: rank ${rank} could not start ${file}: ${e.message}`);
          done(127, null);
        });
        child.once('exit', done);
      });
    });
    await Promise.all(exits);
  } finally {
    clearTimeout(stopTimer);
    clearTimeout(killTimer);
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
  return (failure as { code: number } | null)?.code ?? 0;
}
