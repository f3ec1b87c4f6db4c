// This process's membership of a data-parallel run: joining c10d's process group (native/distributed.cpp),
// and fast.ai's helpers for asking which rank this is.
import { native } from '../binding.js';
import { distributedEnv, distributedTimeoutMs, type DistributedEnv } from './env.js';

/** c10d's process group: Gloo (CPU tensors, and CUDA through the host) or NCCL (CUDA). */
export type DistributedBackend = 'gloo' | 'nccl';

/** How `initDistributed` joins the run (every field has a default from the environment). */
export interface InitDistributedOptions {
  /** 'gloo' (CPU tensors; the default on the CPU) or 'nccl' (CUDA; the default on CUDA when LibTorch has it).
   * TORCHLEARN_DIST_BACKEND overrides the default. */
  backend?: DistributedBackend;
  /** the wait for the other ranks and for each collective (default TORCHLEARN_DIST_TIMEOUT seconds, else 300 s) */
  timeoutMs?: number;
  /** the variables to read (default process.env) */
  env?: NodeJS.ProcessEnv;
}

export interface DistributedInfo extends DistributedEnv {
  backend: DistributedBackend;
  /** seconds this rank has waited for gradient all-reduces after backward, and in how many steps */
  gradSeconds: number;
  gradReduces: number;
  /** gradient buckets whose all-reduce started while backward ran, and all buckets */
  bucketsDuringBackward: number;
  buckets: number;
}

let joining: Promise<void> | null = null;
let joined: (DistributedEnv & { backend: DistributedBackend }) | null = null;

/**
 * Joins the data-parallel run that torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
 * MASTER_PORT) describe: rank 0 hosts a TCPStore, every rank connects and the process group forms once all
 * WORLD_SIZE ranks have come. Once per process; later calls wait for the first. `visionLearner` calls it
 * when WORLD_SIZE is set, so a script needs no change to run under torchrun or `torchlearn launch`.
 */
export async function initDistributed(o: InitDistributedOptions = {}): Promise<DistributedInfo> {
  if (!joining) {
    const env = distributedEnv(o.env ?? process.env);
    if (!env) throw new Error('initDistributed: WORLD_SIZE is not set: start the script with torchrun or `torchlearn launch --nproc N script.js`');
    const fromEnv = (o.env ?? process.env).TORCHLEARN_DIST_BACKEND;
    if (fromEnv && fromEnv !== 'gloo' && fromEnv !== 'nccl') throw new Error(`distributed: TORCHLEARN_DIST_BACKEND=${fromEnv} must be 'gloo' or 'nccl'`);
    const backend: DistributedBackend = o.backend ?? (fromEnv as DistributedBackend | undefined) ?? 'gloo';
    if (backend !== 'gloo' && backend !== 'nccl') throw new Error(`initDistributed: backend must be 'gloo' or 'nccl', got ${JSON.stringify(backend)}`);
    const timeoutMs = o.timeoutMs ?? distributedTimeoutMs(o.env ?? process.env);
    if (!(Number.isInteger(timeoutMs) && timeoutMs > 0)) throw new Error(`initDistributed: timeoutMs must be a positive integer, got ${timeoutMs}`);
    joining = native.distInit({ ...env, timeoutMs, backend }).then(() => {
      joined = { ...env, backend };
    });
    joining.catch(() => {}); // (the caller gets the error; a later call gets it again)
  }
  await joining;
  return distributedInfo()!;
}

/** This process's run: its rank, the world size, the backend and the time spent in gradient all-reduces;
 * null before initDistributed (or without WORLD_SIZE). */
export function distributedInfo(): DistributedInfo | null {
  if (!joined) return null;
  const s = native.distInfo();
  return { ...joined, gradSeconds: s.gradSeconds, gradReduces: s.gradReduces, bucketsDuringBackward: s.bucketsDuringBackward, buckets: s.buckets };
}

/** fast.ai's rank_distrib: this process's rank (0 when not distributed). */
export function rankDistrib(): number {
  return joined?.rank ?? 0;
}

/** fast.ai's num_distrib: how many processes train together (1 when not distributed). */
export function numDistrib(): number {
  return joined?.worldSize ?? 1;
}

/** Rank 0, or a process not in a distributed run: the one that prints, saves checkpoints and exports. */
export function isMainProcess(): boolean {
  return rankDistrib() === 0;
}

/** The element-wise sum or maximum of a few numbers over the ranks (the numbers themselves without a run). */
export async function allreduceNumbers(values: number[], op: 'sum' | 'max' = 'sum'): Promise<number[]> {
  if (numDistrib() <= 1) return values.slice();
  return Array.from(await native.distAllreduce(Float64Array.from(values), op));
}

/** Joins the run when WORLD_SIZE asks for more than one process and this one has not joined yet. */
export async function joinIfLaunched(device: string): Promise<void> {
  const env = distributedEnv();
  if (!env || env.worldSize <= 1 || joined) return;
  const nccl = device.startsWith('cuda') && native.distInfo().nccl && !process.env.TORCHLEARN_DIST_BACKEND;
  await initDistributed({ backend: nccl ? 'nccl' : undefined });
}

/** For constructors that cannot wait: a launched process that has not joined gets told how. */
export function requireJoinedIfLaunched(what: string): void {
  const env = distributedEnv();
  if (env && env.worldSize > 1 && !joined)
    throw new Error(`${what}: WORLD_SIZE=${env.worldSize} is set, so this process is one rank of a distributed run: call \`await initDistributed()\` first (visionLearner does it for you)`);
}
