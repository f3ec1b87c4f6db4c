// The variables torchrun (and `torchlearn launch`, Slurm scripts, Kubernetes jobs) set for each process of a
// data-parallel run: which rank this process is, how many there are, and where rank 0's store listens.

/** One process's place in a data-parallel run, as torchrun describes it. */
export interface DistributedEnv {
  /** this process's rank in [0, worldSize) (RANK) */
  rank: number;
  /** how many processes train together (WORLD_SIZE) */
  worldSize: number;
  /** this process's rank on its machine: the GPU it takes (LOCAL_RANK) */
  localRank: number;
  /** rank 0's address (MASTER_ADDR) */
  masterAddr: string;
  /** the port of rank 0's store (MASTER_PORT) */
  masterPort: number;
  /** under torchrun's elastic agent, which hosts the store (TORCHELASTIC_USE_AGENT_STORE=True): the prefix of
   * this attempt's keys, as PyTorch's env:// rendezvous uses them; otherwise absent (rank 0 hosts the store) */
  agentStorePrefix?: string;
}

function integer(env: NodeJS.ProcessEnv, name: string, lo: number, hi: number, fallback?: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') {
    if (fallback !== undefined) return fallback;
    throw new Error(`distributed: ${name} is not set; torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (or run: torchlearn launch --nproc N script.js)`);
  }
  const v = Number(raw);
  if (!Number.isInteger(v) || v < lo || v > hi) throw new Error(`distributed: ${name}=${raw} must be an integer in [${lo}, ${hi}]`);
  return v;
}

/**
 * The run this process belongs to, from torchrun's variables, or null when WORLD_SIZE is not set (a plain,
 * single-process run). A variable that is set but wrong is an error that names it.
 */
export function distributedEnv(env: NodeJS.ProcessEnv = process.env): DistributedEnv | null {
  if (env.WORLD_SIZE === undefined || env.WORLD_SIZE === '') return null;
  const worldSize = integer(env, 'WORLD_SIZE', 1, 1 << 20);
  const rank = integer(env, 'RANK', 0, worldSize - 1);
  const localRank = integer(env, 'LOCAL_RANK', 0, 1 << 16, 0);
  const masterAddr = env.MASTER_ADDR || '127.0.0.1';
  const masterPort = integer(env, 'MASTER_PORT', 1, 65535, 29500);
  const agent = env.TORCHELASTIC_USE_AGENT_STORE === 'True';
  const attempt = agent ? integer(env, 'TORCHELASTIC_RESTART_COUNT', 0, 1 << 20, 0) : 0;
  return { rank, worldSize, localRank, masterAddr, masterPort, ...(agent ? { agentStorePrefix: `/worker/attempt_${attempt}` } : {}) };
}

/** The wait for the other ranks and for each collective, in milliseconds (TORCHLEARN_DIST_TIMEOUT, seconds). */
export function distributedTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.TORCHLEARN_DIST_TIMEOUT;
  if (raw === undefined || raw === '') return 300_000;
  const s = Number(raw);
  if (!(s > 0) || !Number.isFinite(s)) throw new Error(`distributed: TORCHLEARN_DIST_TIMEOUT=${raw} must be a positive number of seconds`);
  return Math.round(s * 1000);
}
