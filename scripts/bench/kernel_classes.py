"""GPU kernel time of a Chrome trace (LibTorch's or torch.profiler's, as `npm run bench -- --trace DIR`
writes them), by kind of kernel: where a training step's device time goes, on both sides.
  python3 scripts/bench/kernel_classes.py out/trace/torchlearn-bs256-bf16-full.chrome.json out/trace/pytorch-bs256-bf16-full.chrome.json
Prints milliseconds per traced step (the traced epoch's steps, given by --steps, default 10)."""
import argparse
import collections
import json

# first match wins; names as cuDNN, cuBLAS and ATen give their kernels
CLASSES = [
    ('convolution/matmul', ('xmma', 'cudnn', 'implicit', 'conv', 'nvjet', 'gemm', 'cutlass')),
    ('batchnorm', ('batch_norm', 'batchnorm')),
    ('optimizer', ('foreach', 'multi_tensor', 'adam')),
    ('augmentation (grid, resize)', ('grid_sampler', 'affine', 'upsample')),
    ('relu (forward clamp, backward threshold)', ('threshold', 'clamp', 'relu')),
    ('pooling', ('max_pool', 'maxpool', 'avg_pool', 'adaptive')),
    ('other elementwise (residual add, casts, ...)', ('elementwise', 'vectorized', 'unrolled')),
    ('reductions', ('reduce',)),
]


def kind(name: str) -> str:
    n = name.lower()
    for label, keys in CLASSES:
        if any(k in n for k in keys):
            return label
    return 'other'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('traces', nargs='+')
    ap.add_argument('--steps', type=int, default=10)
    a = ap.parse_args()
    for path in a.traces:
        d = json.load(open(path))
        events = d['traceEvents'] if isinstance(d, dict) else d
        per = collections.Counter()
        for e in events:
            if e.get('cat') in ('kernel', 'gpu_memcpy', 'gpu_memset') and 'dur' in e:
                per[kind(e['name']) if e['cat'] == 'kernel' else 'memcpy/memset'] += e['dur']
        total = sum(per.values())
        print(f'{path}: {total / 1000 / a.steps:.1f} ms of kernels per step')
        for label, us in per.most_common():
            print(f'  {label:46} {us / 1000 / a.steps:6.2f} ms  {100 * us / total:4.1f}%')


if __name__ == '__main__':
    main()
