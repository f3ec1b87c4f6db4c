// fast.ai's Adam written out in float64 (optimizer.py: weight decay, then the averages, then the debiased
// step with the *current* momentum), on 20 steps of random gradients with a changing beta1 and weight decay:
// what native.fastAdamSteps is compared with, on the CPU (learner.test.ts) and on CUDA (cuda.test.ts).
import type { NamedTensor } from '../../src/binding.js';

export function adamCase() {
  let seed = 7;
  const rand = () => ((seed = (seed * 16807) % 2147483647) / 2147483647) * 2 - 1;
  const shapes = [[4, 3], [5]];
  const noDecay = [false, true]; // a weight, and a norm/bias parameter
  const params = shapes.map((s) => Float64Array.from({ length: s.reduce((a, b) => a * b, 1) }, rand));
  const f32 = (a: Float64Array) => new Uint8Array(Float32Array.from(a).buffer);
  const asTensors = (arrs: Float64Array[]): NamedTensor[] => arrs.map((a, i) => ({ name: `p${i}`, dtype: 'F32' as const, shape: shapes[i], data: f32(a) }));
  const steps = Array.from({ length: 20 }, (_, k) => ({
    grads: params.map((p) => Float64Array.from(p, () => rand())),
    lr: 1e-2 * (1 + k / 10),
    mom: 0.95 - 0.005 * k,
    wd: k % 2 ? 0.1 : 0.01,
  }));
  // the same float32 inputs the native side sees
  const round = (a: Float64Array) => Float64Array.from(Float32Array.from(a));
  const ref = params.map(round);
  const avg = ref.map((p) => new Float64Array(p.length));
  const sqr = ref.map((p) => new Float64Array(p.length));
  steps.forEach((s, k) => {
    const step = k + 1;
    ref.forEach((p, i) => {
      const g = round(s.grads[i]);
      for (let j = 0; j < p.length; j++) {
        if (!noDecay[i]) p[j] *= 1 - s.lr * s.wd;
        avg[i][j] = s.mom * avg[i][j] + (1 - s.mom) * g[j];
        sqr[i][j] = 0.99 * sqr[i][j] + 0.01 * g[j] * g[j];
        const d1 = 1 - s.mom ** step;
        const d2 = 1 - 0.99 ** step;
        p[j] -= ((s.lr / d1) * avg[i][j]) / (Math.sqrt(sqr[i][j] / d2) + 1e-5);
      }
    });
  });
  return {
    /** the same case as plain numbers (float32-rounded), for a Python reference */
    plain: { params: params.map((p) => Array.from(round(p))), noDecay, steps: steps.map((s) => ({ ...s, grads: s.grads.map((g) => Array.from(round(g))) })) },
    /** the reference's result */
    ref,
    /** fastAdamSteps' input: the parameters and the steps, as float32 tensors */
    input: { params: asTensors(params), noDecay, steps: steps.map((s) => ({ ...s, grads: asTensors(s.grads) })) },
    /** the largest absolute difference between fastAdamSteps' result and the reference */
    worst(out: NamedTensor[]): number {
      let w = 0;
      out.forEach((t, i) => {
        const got = new Float32Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.byteLength));
        got.forEach((v, j) => (w = Math.max(w, Math.abs(v - ref[i][j]))));
      });
      return w;
    },
  };
}
