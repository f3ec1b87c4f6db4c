"""Training-mode BatchNorm (forward + backward) on ResNet50's activation shapes at batch 256, channels_last,
2-byte data: ATen's own kernels against cuDNN's. ATen hands bf16 batches to its own kernels only; an fp16
batch with fp32 weights goes to cuDNN when cuDNN is enabled, so fp16 stands in for what cuDNN would do with
bf16 (same bytes moved). Run on the GPU machine:  python3 scripts/bench/batchnorm_kernels.py"""
import time

import torch
import torch.nn.functional as F

torch.backends.cudnn.benchmark = True
# one of each activation shape a ResNet50 BatchNorm sees at 224 px (stem, then layer1..layer4)
SHAPES = [(256, 64, 112, 112), (256, 64, 56, 56), (256, 256, 56, 56), (256, 128, 28, 28), (256, 512, 28, 28),
          (256, 256, 14, 14), (256, 1024, 14, 14), (256, 2048, 7, 7)]


def timed(fn, iters=20):
    """Milliseconds per call of fn, after 3 warm-up calls, the device synchronised at both ends."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters * 1000


def run(dtype, cudnn):
    torch.backends.cudnn.enabled = cudnn
    total = 0.0
    for s in SHAPES:
        x = torch.randn(s, device='cuda', dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
        w = torch.ones(s[1], device='cuda', requires_grad=True)
        b = torch.zeros(s[1], device='cuda', requires_grad=True)
        rm, rv = torch.zeros(s[1], device='cuda'), torch.ones(s[1], device='cuda')
        g = torch.randn_like(x)
        ms = timed(lambda: F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5).backward(g))
        total += ms
        print(f'{str(dtype):15} cudnn={cudnn!s:5} {s}: {ms:.3f} ms forward+backward', flush=True)
    print(f'TOTAL {dtype} cudnn={cudnn}: {total:.2f} ms', flush=True)


if __name__ == '__main__':
    run(torch.bfloat16, True)   # what PyTorch and torchlearn run under bf16 autocast: ATen's kernels
    run(torch.float16, True)    # cuDNN's
    run(torch.float16, False)   # ATen's kernels on the same fp16 data
