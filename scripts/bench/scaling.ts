// The bench's data-parallel scaling rows on the CPU: 2 ranks x 1 thread (Gloo, `torchlearn launch`) against
// 1 process x 1 thread doing the same per-rank work, and 1 process with every core for reference. Each
// configuration in processes of its own (scripts/bench/scaling-worker.ts), the configurations interleaved
// over `rounds` rounds (a small machine's speed drifts by more than the differences measured); each row is
// the median round, with every round's figure beside it. Images/s over the whole world, and the share of a
// step rank 0 waits for the gradient all-reduces after backward.
import { execFileSync } from 'node:child_process';
import { availableParallelism } from 'node:os';

export interface ScalingConfig {
  arch: string;
  size: number;
  presize: number;
  bs: number;
  iters: number;
  rounds: number;
  log: (line: string) => void;
}

export function scalingBench(rows: Record<string, unknown>[], c: ScalingConfig): void {
  const worker = ['--import', 'tsx', 'scripts/bench/scaling-worker.ts', c.arch, String(c.size), String(c.presize), String(c.bs), String(c.iters)];
  const env = (threads: number) => {
    const e: NodeJS.ProcessEnv = { ...process.env, OMP_NUM_THREADS: String(threads) };
    for (const k of ['TORCHLEARN_THREADS', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT']) delete e[k];
    return e;
  };
  const cores = availableParallelism();
  const configs: { impl: string; args: string[]; threads: number }[] = [
    { impl: 'torchlearn, 1 process x 1 thread', args: worker, threads: 1 },
    { impl: `torchlearn, 2 ranks x 1 thread (Gloo)`, args: ['--import', 'tsx', 'src/cli.ts', 'launch', '--nproc', '2', process.execPath, ...worker], threads: 1 },
  ];
  if (cores > 1) configs.push({ impl: `torchlearn, 1 process x ${cores} threads`, args: worker, threads: cores });
  const runs = configs.map(() => [] as Record<string, number>[]);
  for (let round = 0; round < c.rounds; round++)
    configs.forEach((cfg, k) => {
      try {
        const out = execFileSync(process.execPath, cfg.args, { encoding: 'utf8', env: env(cfg.threads), maxBuffer: 1 << 24 });
        const r = JSON.parse(out.trim().split('\n').filter((l) => l.startsWith('{')).pop()!);
        runs[k].push(r);
        c.log(`round ${round + 1} ${cfg.impl}: ${JSON.stringify(r)}`);
      } catch (e) {
        c.log(`scaling row '${cfg.impl}' failed: ${(e as Error).message.split('\n')[0]}`);
      }
    });
  configs.forEach((cfg, k) => {
    const rs = runs[k].slice().sort((a, b) => a.images_per_s - b.images_per_s);
    if (!rs.length) return;
    const r = rs[(rs.length - 1) >> 1];
    rows.push({
      bench: 'data-parallel scaling', impl: cfg.impl, arch: c.arch, device: 'cpu', bs: c.bs, size: c.size, world: r.world, threads: r.threads,
      images_per_s: r.images_per_s, step_s: r.step_s, allreduce_share: r.allreduce_s / r.step_s, peak_rss_bytes: r.peak_rss_bytes,
      rounds_images_per_s: runs[k].map((q) => q.images_per_s), rounds_allreduce_share: runs[k].map((q) => q.allreduce_s / q.step_s),
    });
  });
}
