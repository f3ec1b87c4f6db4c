"""Does cuDNN's own BatchNorm API take bf16 data (with fp32 scale, bias and statistics), and how fast is it?

ATen never sends a bf16 BatchNorm to cuDNN (its cudnn_batch_norm wants weights of the input's type), so
PyTorch and torchlearn both run ATen's channels_last kernels under bf16 autocast: 27.3 of 68 ms of a
ResNet50 step at batch 256 on an H100 (docs/bench/h100-run5-kernels.txt). cuDNN's BatchNorm was 1.45x
faster on fp16 data (batchnorm_kernels.py). This calls cudnnBatchNormalizationForwardTrainingEx and
BackwardEx through ctypes on ResNet50's activation shapes, NHWC bf16, with ops BN, BN + ReLU and BN + add +
ReLU (what native/batchnorm_cudnn.cpp calls), checks the
results against PyTorch's batch_norm in fp32 on the same data, and times forward + backward against ATen's
bf16 kernels (and ATen's BatchNorm, add, ReLU) and against cuDNN on fp16 data (whose semi-persistent NHWC
kernels cuDNN documents for fp16 only: a bf16 much slower than fp16 did not get them; the kernel names of
one shape are printed). Where bf16 is refused with a workspace, it is tried without one (the plain
functions' behaviour). The go/no-go check for native/batchnorm_cudnn.cpp.
Run on the GPU machine:  python3 scripts/bench/cudnn_batchnorm_bf16.py"""
import ctypes
import sys

import torch
import torch.nn.functional as F
from batchnorm_kernels import SHAPES, timed  # (scripts/bench/ is the script's own folder, first on sys.path)

if not torch.cuda.is_available():
    sys.exit('cudnn_batchnorm_bf16.py: no CUDA here; run it on the GPU machine')
torch.backends.cudnn.version()  # loads cuDNN


def load_cudnn():
    # the library torch loaded, by soname; else the path /proc/self/maps shows
    for name in ('libcudnn.so.9', 'libcudnn.so.8', 'libcudnn.so'):
        try:
            return ctypes.CDLL(name)
        except OSError:
            pass
    for line in open('/proc/self/maps'):
        if 'libcudnn.so' in line:
            return ctypes.CDLL(line.split()[-1])
    sys.exit('cudnn_batchnorm_bf16.py: cannot find the libcudnn torch uses')


lib = load_cudnn()
lib.cudnnGetErrorString.restype = ctypes.c_char_p
# cuDNN's enums (cudnn_graph.h / cudnn_ops.h, v8 and v9)
FLOAT, HALF, BFLOAT16 = 0, 2, 9
NHWC = 1
SPATIAL_PERSISTENT = 2
OPS_BN, OPS_BN_ACTIVATION, OPS_BN_ADD_ACTIVATION = 0, 1, 2
ACTIVATION_RELU, NOT_PROPAGATE_NAN = 1, 0
V = ctypes.c_void_p
SZ = ctypes.c_size_t


class CudnnError(Exception):
    pass


def check(status, what):
    if status != 0:
        raise CudnnError(f'{what}: {lib.cudnnGetErrorString(status).decode()} ({status})')


handle = V()
check(lib.cudnnCreate(ctypes.byref(handle)), 'cudnnCreate')
check(lib.cudnnSetStream(handle, V(torch.cuda.current_stream().cuda_stream)), 'cudnnSetStream')
act = V()
check(lib.cudnnCreateActivationDescriptor(ctypes.byref(act)), 'cudnnCreateActivationDescriptor')
check(lib.cudnnSetActivationDescriptor(act, ACTIVATION_RELU, NOT_PROPAGATE_NAN, ctypes.c_double(0.0)), 'cudnnSetActivationDescriptor')
ONE, ZERO = ctypes.c_float(1.0), ctypes.c_float(0.0)


def tensor_desc(n, c, h, w, dtype):
    d = V()
    check(lib.cudnnCreateTensorDescriptor(ctypes.byref(d)), 'cudnnCreateTensorDescriptor')
    check(lib.cudnnSetTensor4dDescriptor(d, NHWC, dtype, n, c, h, w), f'cudnnSetTensor4dDescriptor({dtype}, NHWC)')
    p = V()
    check(lib.cudnnCreateTensorDescriptor(ctypes.byref(p)), 'cudnnCreateTensorDescriptor')
    check(lib.cudnnDeriveBNTensorDescriptor(p, d, SPATIAL_PERSISTENT), 'cudnnDeriveBNTensorDescriptor')
    return d, p


def ptr(t):
    return V(t.data_ptr()) if t is not None else V()


class CudnnBN:
    """One shape's descriptors and buffers; forward and backward as cuDNN computes them. workspace=False
    passes none, which makes the Ex functions behave as the plain ones (no semi-persistent NHWC kernel)."""

    def __init__(self, shape, ops, dtype=BFLOAT16, workspace=True):
        n, c, h, w = shape
        self.ops, self.act = ops, (act if ops != OPS_BN else V())
        self.x, self.p = tensor_desc(n, c, h, w, dtype)
        self.z = self.x if ops == OPS_BN_ADD_ACTIVATION else V()  # the residual's descriptor
        ws, rs, bws = SZ(), SZ(), SZ()
        check(lib.cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize(handle, SPATIAL_PERSISTENT, ops, self.x, self.z, self.x, self.p, self.act, ctypes.byref(ws)), 'forward workspace size')
        check(lib.cudnnGetBatchNormalizationTrainingExReserveSpaceSize(handle, SPATIAL_PERSISTENT, ops, self.act, self.x, ctypes.byref(rs)), 'reserve space size')
        check(lib.cudnnGetBatchNormalizationBackwardExWorkspaceSize(handle, SPATIAL_PERSISTENT, ops, self.x, self.x, self.x, self.z, self.x, self.p, self.act, ctypes.byref(bws)), 'backward workspace size')
        self.sizes = (ws.value if workspace else 0, rs.value, bws.value if workspace else 0)
        dev = dict(device='cuda', dtype=torch.uint8)
        self.ws, self.rs, self.bws = (torch.empty(max(s, 1), **dev) for s in self.sizes)
        self.save_mean = torch.empty(c, device='cuda')
        self.save_inv = torch.empty(c, device='cuda')

    def forward(self, x, w, b, rm, rv, z=None, momentum=0.1, eps=1e-5):
        y = torch.empty_like(x)
        check(lib.cudnnBatchNormalizationForwardTrainingEx(
            handle, SPATIAL_PERSISTENT, self.ops, ctypes.byref(ONE), ctypes.byref(ZERO), self.x, ptr(x), self.z, ptr(z), self.x, ptr(y),
            self.p, ptr(w), ptr(b), ctypes.c_double(momentum), ptr(rm), ptr(rv), ctypes.c_double(eps), ptr(self.save_mean), ptr(self.save_inv),
            self.act, ptr(self.ws) if self.sizes[0] else V(), SZ(self.sizes[0]), ptr(self.rs), SZ(self.sizes[1])), 'cudnnBatchNormalizationForwardTrainingEx')
        return y

    def backward(self, x, y, dy, w, b, eps=1e-5):
        dx = torch.empty_like(x)
        dz = torch.empty_like(x) if self.ops == OPS_BN_ADD_ACTIVATION else None
        dw, db = torch.empty_like(w), torch.empty_like(b)
        check(lib.cudnnBatchNormalizationBackwardEx(
            handle, SPATIAL_PERSISTENT, self.ops, ctypes.byref(ONE), ctypes.byref(ZERO), ctypes.byref(ONE), ctypes.byref(ZERO),
            # y and its descriptor only for the fused ReLU (none for BN alone, as ATen's cudnn_batch_norm and
            # torchlearn's native code pass)
            self.x, ptr(x), self.x if self.ops != OPS_BN else V(), ptr(y) if self.ops != OPS_BN else V(), self.x, ptr(dy), self.z, ptr(dz), self.x, ptr(dx), self.p, ptr(w), ptr(b), ptr(dw), ptr(db),
            ctypes.c_double(eps), ptr(self.save_mean), ptr(self.save_inv), self.act, ptr(self.bws) if self.sizes[2] else V(), SZ(self.sizes[2]), ptr(self.rs), SZ(self.sizes[1])),
            'cudnnBatchNormalizationBackwardEx')
        return dx, dw, db, dz


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


print(f'cuDNN {torch.backends.cudnn.version()}, PyTorch {torch.__version__}, {torch.cuda.get_device_name()}')
totals = {}
for ops, label in ((OPS_BN, 'BN'), (OPS_BN_ACTIVATION, 'BN+ReLU'), (OPS_BN_ADD_ACTIVATION, 'BN+add+ReLU')):
    for shape in SHAPES:
        torch.manual_seed(0)
        c = shape[1]
        cl = dict(memory_format=torch.channels_last)
        x = (torch.randn(shape, device='cuda') * 2 + 0.5).to(torch.bfloat16).contiguous(**cl)
        z = torch.randn(shape, device='cuda').to(torch.bfloat16).contiguous(**cl) if ops == OPS_BN_ADD_ACTIVATION else None
        dy = torch.randn(shape, device='cuda').to(torch.bfloat16).contiguous(**cl)
        w, b = torch.rand(c, device='cuda') + 0.5, torch.randn(c, device='cuda') * 0.1
        bn = None
        for workspace in (True, False):  # the semi-persistent NHWC path; else the plain functions' behaviour
            try:
                bn = CudnnBN(shape, ops, BFLOAT16, workspace)
                rm, rv = torch.zeros(c, device='cuda'), torch.ones(c, device='cuda')
                y = bn.forward(x, w, b, rm, rv, z)
                dx, dw, db, dz = bn.backward(x, y, dy, w, b)
                torch.cuda.synchronize()
                break
            except CudnnError as e:
                print(f'{label} {shape}: cuDNN refused bf16 {"with" if workspace else "without"} a workspace: {e}')
                bn = None
        if bn is None:
            continue

        def reference(xx, ww, bb, zz, rmm, rvv):
            yy = F.batch_norm(xx, rmm, rvv, ww, bb, True, 0.1, 1e-5)
            if zz is not None:
                yy = yy + zz
            return F.relu(yy) if ops != OPS_BN else yy

        # the reference: PyTorch's batch_norm (and add, ReLU) in fp32 on the same bf16 values
        xr = x.float().requires_grad_()
        zr = z.float().requires_grad_() if z is not None else None
        wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
        rmr, rvr = torch.zeros(c, device='cuda'), torch.ones(c, device='cuda')
        reference(xr, wr, br, zr, rmr, rvr).backward(dy.float())
        yr = reference(xr.detach(), wr.detach(), br.detach(), zr.detach() if zr is not None else None, rmr.clone(), rvr.clone())
        errs = dict(y=rel(y, yr), dx=rel(dx, xr.grad), dw=rel(dw, wr.grad), db=rel(db, br.grad), running_mean=rel(rm, rmr), running_var=rel(rv, rvr))
        if zr is not None:
            errs['dz'] = rel(dz, zr.grad)

        def ours():
            yy = bn.forward(x, w, b, rm, rv, z)
            bn.backward(x, yy, dy, w, b)

        xa = x.detach().clone().requires_grad_()
        za = z.detach().clone().requires_grad_() if z is not None else None
        wa, ba = w.clone().requires_grad_(), b.clone().requires_grad_()
        rma, rva = torch.zeros(c, device='cuda'), torch.ones(c, device='cuda')

        def aten():
            reference(xa, wa, ba, za, rma, rva).backward(dy)

        # cuDNN on fp16 data of the same shape (its semi-persistent NHWC kernels are documented for fp16): if bf16
        # is much slower, bf16 did not get them
        h16 = CudnnBN(shape, ops, HALF)
        x16, dy16 = x.to(torch.float16), dy.to(torch.float16)
        z16 = z.to(torch.float16) if z is not None else None
        rm16, rv16 = torch.zeros(c, device='cuda'), torch.ones(c, device='cuda')

        def fp16():
            yy = h16.forward(x16, w, b, rm16, rv16, z16)
            h16.backward(x16, yy, dy16, w, b)

        t_c, t_a, t_16 = timed(ours), timed(aten), timed(fp16)
        for impl, t in (('cudnn', t_c), ('aten', t_a), ('cudnn fp16', t_16)):
            totals[(label, impl)] = totals.get((label, impl), 0) + t
        print(f'{label:11} {shape}: cuDNN bf16 {t_c:.3f} ms, ATen bf16 {t_a:.3f} ms forward+backward ({t_a / t_c:.2f}x), cuDNN fp16 {t_16:.3f} ms; '
              f'against fp32 PyTorch: ' + ', '.join(f'{k} {v:.1e}' for k, v in errs.items()) + f'; workspace/reserve bytes {bn.sizes}', flush=True)
        if shape == SHAPES[2]:  # which kernels ran (the persistent ones have 'nhwc' or 'persist' in their names)
            for name, fn in (('bf16', ours), ('fp16', fp16)):
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    fn()
                    torch.cuda.synchronize()
                names = sorted({e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})
                print(f'  kernels, cuDNN {name} {label}: ' + ' | '.join(n[:90] for n in names), flush=True)
for (label, impl), ms in sorted(totals.items()):
    print(f'TOTAL {label} {impl}: {ms:.2f} ms')
