"""The PyTorch side of `npm run bench`: the same workload as torchlearn's fitOneCycle step, in eager
PyTorch on the same LibTorch (Debian's python3-torch on the CPU, the GPU machine's PyTorch there).

ResNet body + fast.ai head (concat pool, BN, dropout, bias-free linears), AdamW with fast.ai's
betas (0.9, 0.99), eps 1e-5, wd 0.01 (fused on CUDA), a uint8 image cache on the device, per batch:
index, one random affine grid per image (flip, rotate, zoom) + grid_sample to `size`, normalise;
bf16 autocast and channels_last on CUDA. Prints one JSON line per configuration.
--mode chooses how PyTorch runs that step: eager (default); compile or compile-max-autotune (the model under
torch.compile with that mode, the fused AdamW eager; the warm-up steps, which compile forward and backward,
are timed apart as compile_s); cudagraph (the whole step, augmentation, forward, backward and the fused
capturable AdamW, captured as one CUDA graph after warm-up steps on a side stream, replayed each step: what
PyTorch's documentation calls whole-network capture).
--aug full adds the rest of fast.ai's aug_transforms (Warp, Brightness, Contrast, with their probabilities),
done as fast.ai does it on the GPU: the same work as torchlearn's default pipeline.
"""
import argparse, contextlib, json, math, resource, sys, time
import torch, torch.nn as nn, torch.nn.functional as F, torchvision


class ConcatPool(nn.Module):
    def forward(self, x):
        return torch.cat([F.adaptive_max_pool2d(x, 1), F.adaptive_avg_pool2d(x, 1)], 1)


def make_model(arch, nc):
    m = getattr(torchvision.models, arch)()
    # fast.ai's cut: before the pool and classifier (the ResNet families), or `features` (the others)
    body = m.features if hasattr(m, 'features') else nn.Sequential(*list(m.children())[:-2])
    with torch.no_grad():
        nf = body.eval()(torch.zeros(1, 3, 64, 64)).shape[1] * 2
    body.train()
    head = nn.Sequential(ConcatPool(), nn.Flatten(), nn.BatchNorm1d(nf), nn.Dropout(0.25), nn.Linear(nf, 512, bias=False),
                         nn.ReLU(inplace=True), nn.BatchNorm1d(512), nn.Dropout(0.5), nn.Linear(512, nc, bias=False))
    return nn.Sequential(body, head)


def augment(x_u8, size, mean, std):
    b = x_u8.shape[0]
    x = x_u8.permute(0, 3, 1, 2).float().div_(255)
    ang = (torch.rand(b, device=x.device) * 20 - 10) * math.pi / 180
    s = 1 / (1 + torch.rand(b, device=x.device) * 0.1)
    flip = torch.where(torch.rand(b, device=x.device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = flip * torch.cos(ang) * s
    theta[:, 0, 1] = -flip * torch.sin(ang) * s
    theta[:, 1, 0] = torch.sin(ang) * s
    theta[:, 1, 1] = torch.cos(ang) * s
    grid = F.affine_grid(theta, (b, 3, size, size), align_corners=True)
    x = F.grid_sample(x, grid, mode='bilinear', padding_mode='reflection', align_corners=True)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def find_coeffs(p1, p2):  # fast.ai vision/augment.py
    m = []
    for i in range(p1.shape[1]):
        m.append(torch.stack([p2[:, i, 0], p2[:, i, 1], torch.ones_like(p2[:, i, 0]), torch.zeros_like(p2[:, i, 0]), torch.zeros_like(p2[:, i, 0]),
                              torch.zeros_like(p2[:, i, 0]), -p1[:, i, 0] * p2[:, i, 0], -p1[:, i, 0] * p2[:, i, 1]]))
        m.append(torch.stack([torch.zeros_like(p2[:, i, 0]), torch.zeros_like(p2[:, i, 0]), torch.zeros_like(p2[:, i, 0]), p2[:, i, 0], p2[:, i, 1],
                              torch.ones_like(p2[:, i, 0]), -p1[:, i, 1] * p2[:, i, 0], -p1[:, i, 1] * p2[:, i, 1]]))
    A = torch.stack(m).permute(2, 0, 1)
    B = p1.reshape(p1.shape[0], -1, 1)
    return torch.linalg.solve_ex(A, B)[0][..., 0]  # solve_ex: no error check, which would synchronise (and break a CUDA-graph capture)


def apply_perspective(coords, coeffs):  # fast.ai vision/augment.py
    sz = coords.shape
    coords = coords.view(sz[0], -1, 2)
    coeffs = torch.cat([coeffs, coeffs.new_ones(coeffs.shape[0], 1)], dim=1).view(coeffs.shape[0], 3, 3)
    coords1 = coords @ coeffs[..., :2].transpose(1, 2) + coeffs[..., 2].unsqueeze(1)
    coords1[..., 2] = torch.where(coords1[..., 2].abs() < 1e-8, 1e-8, coords1[..., 2])
    coords = coords1 / coords1[..., 2].unsqueeze(-1)
    return coords[..., :2].reshape(*sz)


_CORNERS = {}


def _corners(dev):  # made once per device: a copy from the host may not happen inside a CUDA-graph capture
    if dev not in _CORNERS:
        _CORNERS[dev] = torch.tensor([[-1., -1.], [-1., 1.], [1., -1.], [1., 1.]], device=dev)
    return _CORNERS[dev]


def augment_full(x_u8, size, mean, std, p_affine=0.75, p_lighting=0.75, max_rotate=10.0, max_zoom=1.1, max_warp=0.2, max_lighting=0.2):
    """fast.ai's aug_transforms() as its batch transforms run on the GPU: one affine matrix per image (Flip p 0.5,
    Rotate, Zoom with p_affine), Warp's perspective applied to the affine grid, one grid_sample, then Brightness
    and Contrast composed in logit space (p_lighting)."""
    b, dev = x_u8.shape[0], x_u8.device
    x = x_u8.permute(0, 3, 1, 2).float().div_(255)
    u = lambda lo, hi: torch.rand(b, device=dev) * (hi - lo) + lo
    mask = lambda p: (torch.rand(b, device=dev) < p).float()
    flip = 1 - 2 * mask(0.5)
    ang = u(-max_rotate, max_rotate) * math.pi / 180 * mask(p_affine)
    zm = mask(p_affine)
    s = zm / u(1, max_zoom) + (1 - zm)
    cx, cy = (1 - s) * (2 * u(0, 1) - 1), (1 - s) * (2 * u(0, 1) - 1)
    c, sn = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([flip * c * s, -flip * sn * s, flip * (c * cx - sn * cy)], 1),
                         torch.stack([sn * s, c * s, sn * cx + c * cy], 1)], 1)
    grid = F.affine_grid(theta, (b, 3, size, size), align_corners=True)
    wm = mask(p_affine)
    wx, wy = u(-max_warp, max_warp) * wm, u(-max_warp, max_warp) * wm
    orig = _corners(dev).unsqueeze(0).expand(b, 4, 2)
    targ = torch.stack([torch.stack([-1 - wy, -1 - wx]), torch.stack([-1 + wy, 1 + wx]), torch.stack([1 + wy, -1 + wx]), torch.stack([1 - wy, 1 - wx])]).permute(2, 0, 1)
    grid = apply_perspective(grid, find_coeffs(orig, targ))
    x = F.grid_sample(x, grid, mode='bilinear', padding_mode='reflection', align_corners=True)
    bm, cm = mask(p_lighting), mask(p_lighting)
    br = bm * u(0.5 * (1 - max_lighting), 0.5 * (1 + max_lighting)) + (1 - bm) * 0.5
    ct = torch.exp(u(math.log(1 - max_lighting), -math.log(1 - max_lighting)) * cm)
    x = torch.sigmoid((torch.logit(x, eps=1e-7) + torch.log(br / (1 - br)).view(b, 1, 1, 1)) * ct.view(b, 1, 1, 1))
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def run(arch, device, bs, size, presize, iters, warmup, bf16, frozen, channels_last, profile=False, trace=None, aug='affine', mode='eager', images=0):
    aug_fn = augment_full if aug == 'full' else augment
    torch.manual_seed(0)
    dev = torch.device(device)
    model = make_model(arch, 2).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if frozen:  # fast.ai freeze(): body frozen except its norm layers (train_bn)
        for mod in model[0].modules():
            for p in mod.parameters(recurse=False):
                p.requires_grad_(isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm)))
    params = [p for p in model.parameters() if p.requires_grad]
    kw = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)
    if dev.type == 'cuda':
        kw['fused'] = True
    if mode == 'cudagraph':
        if dev.type != 'cuda':
            raise SystemExit('--mode cudagraph needs a CUDA device')
        kw['capturable'] = True
    opt = torch.optim.AdamW(params, **kw)
    fwd = model
    if mode.startswith('compile'):
        fwd = torch.compile(model, mode='max-autotune' if mode == 'compile-max-autotune' else 'default')
    n = images or bs * 4  # the bench passes torchlearn's dataset size, so that both hold the same image cache
    cache = torch.randint(0, 256, (n, presize, presize, 3), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, 2, (n,), device=dev)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
    model.train()
    if dev.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats()

    # a captured step may not use autocast's weight cache (PyTorch's CUDA-graph notes)
    autocast = lambda: torch.autocast('cuda', dtype=torch.bfloat16, cache_enabled=mode != 'cudagraph') if bf16 else contextlib.nullcontext()

    def step(zero=True):
        idx = torch.randint(0, n, (bs,), device=dev)
        x = aug_fn(cache[idx], size, mean, std)
        with autocast():
            loss = F.cross_entropy(fwd(x).float(), labels[idx])
        if zero:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    t = time.perf_counter()
    if mode == 'cudagraph':
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(warmup, 3)):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)  # backward allocates the gradients inside the graph's pool
        with torch.cuda.graph(graph):
            static_loss = step(zero=False)

        def step(zero=True):
            graph.replay()
            return static_loss
    else:
        for _ in range(warmup):
            step()
    sync()
    setup_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(iters):
        loss = step()
    loss.item()
    if dev.type == 'cuda':
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() if dev.type == 'cuda' else 0
    out = dict(impl='pytorch', mode=mode, threads=torch.get_num_threads(), aug=aug, arch=arch, device=device, bs=bs, size=size, bf16=bf16, frozen=frozen, channels_last=channels_last,
               images_per_s=bs * iters / dt, peak_device_bytes=peak, warmup_s=setup_s,
               peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if profile and mode == 'eager':  # the same phases torchlearn's profile mode times, synchronised between phases
        sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
        acc = dict(data=0.0, forward=0.0, backward=0.0, step=0.0)
        for _ in range(iters):
            sync(); t0 = time.perf_counter()
            idx = torch.randint(0, n, (bs,), device=dev)
            x = aug_fn(cache[idx], size, mean, std); y = labels[idx]
            sync(); t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with (torch.autocast('cuda', dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()):
                loss = F.cross_entropy(model(x).float(), y)
            sync(); t2 = time.perf_counter()
            loss.backward()
            sync(); t3 = time.perf_counter()
            opt.step()
            sync(); t4 = time.perf_counter()
            for k, a, b in (('data', t0, t1), ('forward', t1, t2), ('backward', t2, t3), ('step', t3, t4)):
                acc[k] += b - a
        out['profile_ms'] = {k: round(1000 * v / iters, 2) for k, v in acc.items()}
    if trace:
        try:
            write_trace(trace, dev, iters, step)
        except Exception as e:  # a failing profiler costs the trace, not the measurement
            print(f'trace {trace} failed: {e}', file=sys.stderr)
    return out


def write_trace(path, dev, iters, step):
    """torchlearn's operator table (src/learner/trace.ts) from torch.profiler over `iters` steps: calls and
    total time per operator (CPU side) and kernel (GPU), plus the Chrome trace beside it."""
    from torch.profiler import profile, ProfilerActivity
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == 'cuda' else [])
    with profile(activities=acts) as prof:
        for _ in range(iters):
            step()
        if dev.type == 'cuda':
            torch.cuda.synchronize()
    ops = {}
    for e in prof.events():
        d = 'cuda' if e.device_type == torch.autograd.DeviceType.CUDA else 'cpu'
        o = ops.setdefault((e.name, d), dict(name=e.name, device=d, count=0, totalUs=0.0))
        o['count'] += 1
        o['totalUs'] += e.time_range.elapsed_us()
    chrome = path[:-5] + '.chrome.json' if path.endswith('.json') else path + '.chrome.json'
    try:
        prof.export_chrome_trace(chrome)
    except Exception:
        chrome = None
    table = dict(impl='pytorch', threads=torch.get_num_threads(), torchVersion=torch.__version__, device=str(dev), steps=iters, chromeTrace=chrome,
                 ops=sorted(ops.values(), key=lambda o: -o['totalUs']))
    with open(path, 'w') as f:
        json.dump(table, f, indent=1)


def infer(arch, device, bs, size, iters, bf16, channels_last):
    dev = torch.device(device)
    model = make_model(arch, 2).to(dev).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(bs, 3, size, size, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), (torch.autocast('cuda', dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()):
        for _ in range(2):
            model(x)
        if dev.type == 'cuda':
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(iters):
            y = model(x)
        y.float().sum().item()
    dt = time.perf_counter() - t
    return dict(impl='pytorch', threads=torch.get_num_threads(), kind='inference', arch=arch, device=device, bs=bs, size=size, bf16=bf16, images_per_s=bs * iters / dt)


def infer_host(arch, device, bs, size, presize, iters, bf16, trace=None):
    """What torchlearn's predictImages does: uint8 [bs, presize, presize, 3] images in host memory, copied to
    the device through page-locked memory, resized to size, normalised, forward, softmax, probabilities back."""
    import numpy as np
    dev = torch.device(device)
    model = make_model(arch, 2).to(dev).eval()
    if dev.type == 'cuda':
        model = model.to(memory_format=torch.channels_last)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
    host = np.random.default_rng(0).integers(0, 256, (bs, presize, presize, 3), dtype=np.uint8)

    def once():
        x = torch.from_numpy(host)
        if dev.type == 'cuda':
            x = x.pin_memory().to(dev, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255)
        x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)
        x = (x - mean) / std
        if dev.type == 'cuda':
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), (torch.autocast('cuda', dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()):
            return torch.softmax(model(x).float(), 1).cpu()

    for _ in range(2):
        once()
    t = time.perf_counter()
    for _ in range(iters):
        once()
    dt = time.perf_counter() - t
    if trace:  # one call, as torchlearn's predictImages(..., { trace })
        try:
            write_trace(trace, dev, 1, once)
        except Exception as e:
            print(f'trace {trace} failed: {e}', file=sys.stderr)
    return dict(impl='pytorch', threads=torch.get_num_threads(), kind='inference from host uint8', arch=arch, device=device, bs=bs, size=size, bf16=bf16, images_per_s=bs * iters / dt)


def e2e(arch, device, folder, size, presize, bs, epochs, bf16, channels_last, aug='full', valid_pct=0.2, seed=42):
    """What torchlearn's fitOneCycle on real files does (the bench's end-to-end row): one sub-folder per class,
    every image decoded once (PIL, centre crop to presize) into a uint8 cache on the device, a seeded random
    split, then epochs of shuffled full batches with the augmentation and a validation pass (no augmentation,
    resized to size) after each. Reports the last epoch's training and whole-epoch rates, and the process's
    peak RSS (decoding included)."""
    import os
    import numpy as np
    from PIL import Image, ImageOps
    dev = torch.device(device)
    torch.manual_seed(seed)
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    items = [(os.path.join(folder, c, f), k) for k, c in enumerate(classes) for f in sorted(os.listdir(os.path.join(folder, c)))]
    t = time.perf_counter()
    imgs, labels = [], []
    for p, k in items:
        try:
            imgs.append(np.asarray(ImageOps.fit(Image.open(p).convert('RGB'), (presize, presize), Image.BILINEAR)))
            labels.append(k)
        except Exception:
            pass
    decode_s = time.perf_counter() - t
    cache = torch.from_numpy(np.stack(imgs)).to(dev)
    y_all = torch.tensor(labels, device=dev)
    n = len(imgs)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    nv = int(valid_pct * n)
    valid_idx, train_idx = perm[:nv].to(dev), perm[nv:]
    model = make_model(arch, len(classes)).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    kw = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)
    if dev.type == 'cuda':
        kw['fused'] = True
    opt = torch.optim.AdamW(model.parameters(), **kw)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
    aug_fn = augment_full if aug == 'full' else augment
    ac = lambda: torch.autocast('cuda', dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    nb = len(train_idx) // bs
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        order = train_idx[torch.randperm(len(train_idx))].to(dev)
        for b in range(nb):
            idx = order[b * bs:(b + 1) * bs]
            x = aug_fn(cache[idx], size, mean, std)
            with ac():
                loss = F.cross_entropy(model(x).float(), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        loss.item()
        sync()
        t1 = time.perf_counter()
        model.eval()
        with torch.no_grad(), ac():
            for b in range(0, nv, bs):
                idx = valid_idx[b:b + bs]
                x = F.interpolate(cache[idx].permute(0, 3, 1, 2).float().div_(255), size=(size, size), mode='bilinear', align_corners=False)
                x = ((x - mean) / std).contiguous(memory_format=torch.channels_last) if channels_last else (x - mean) / std
                F.cross_entropy(model(x).float(), y_all[idx]).item()
        sync()
        t2 = time.perf_counter()
    return dict(impl='pytorch', kind='e2e', threads=torch.get_num_threads(), arch=arch, device=device, bs=bs, size=size, bf16=bf16, images=n, decode_s=decode_s,
                images_per_s=nb * bs / (t1 - t0), images_per_s_with_validation=nb * bs / (t2 - t0),
                peak_device_bytes=torch.cuda.max_memory_allocated() if dev.type == 'cuda' else 0,
                peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def latency(arch, device, size, presize, path, iters):
    """One image file to probabilities: PIL decode + centre-crop resize to presize + resize to size +
    normalise + forward, as torchlearn's predict(file) does."""
    from PIL import Image, ImageOps
    import numpy as np
    dev = torch.device(device)
    model = make_model(arch, 2).to(dev).eval()
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)

    def once():
        im = ImageOps.fit(Image.open(path).convert('RGB'), (presize, presize), Image.LANCZOS)
        x = torch.from_numpy(np.asarray(im).copy()).to(dev).permute(2, 0, 1).unsqueeze(0).float().div(255)
        x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=True)
        with torch.no_grad():
            return torch.softmax(model((x - mean) / std), 1).cpu()

    for _ in range(2):
        once()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        once()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return dict(impl='pytorch', threads=torch.get_num_threads(), kind='latency', arch=arch, device=device, size=size, median_ms=1000 * ts[len(ts) // 2])


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--arch', default='resnet50')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--bs', type=int, nargs='+', default=[16])
    ap.add_argument('--size', type=int, default=128)
    ap.add_argument('--presize', type=int, default=160)
    ap.add_argument('--iters', type=int, default=6)
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--threads', type=int, default=0)
    ap.add_argument('--precisions', nargs='+', default=['fp32'])
    ap.add_argument('--frozen', choices=['frozen', 'unfrozen', 'both'], default='both', help='which train-step rows')
    ap.add_argument('--inference', action='store_true')
    ap.add_argument('--inference-host', action='store_true', help='inference from uint8 images in host memory (torchlearn predictImages)')
    ap.add_argument('--latency', default=None)
    ap.add_argument('--profile', action='store_true')
    ap.add_argument('--channels-last', action='store_true', help='channels_last on the CPU too (always on CUDA)')
    ap.add_argument('--aug', choices=['full', 'affine'], default='affine', help="train step's augmentation: fast.ai's whole aug_transforms, or flip/rotate/zoom only")
    ap.add_argument('--images', type=int, default=0, help='images in the uint8 cache on the device (default 4 batches)')
    ap.add_argument('--e2e', default=None, help="a folder of class sub-folders: the end-to-end fit (see e2e)")
    ap.add_argument('--epochs', type=int, default=3)
    ap.add_argument('--mode', choices=['eager', 'compile', 'compile-max-autotune', 'cudagraph'], default='eager', help='how PyTorch runs the train step (see above)')
    ap.add_argument('--trace', default=None, help='write the operator table of the unfrozen step (with --inference-host: of one call) here (see src/learner/trace.ts)')
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = a.device.startswith('cuda')
    if a.e2e:
        print(json.dumps(e2e(a.arch, a.device, a.e2e, a.size, a.presize, a.bs[0], a.epochs, a.precisions[0] == 'bf16', cuda or a.channels_last, a.aug)), flush=True)
        raise SystemExit(0)
    if a.latency:
        print(json.dumps(latency(a.arch, a.device, a.size, a.presize, a.latency, a.iters)), flush=True)
        raise SystemExit(0)
    for bs in a.bs:
        for prec in a.precisions:
            bf16 = prec == 'bf16'
            if a.inference:
                print(json.dumps(infer(a.arch, a.device, bs, a.size, a.iters, bf16, cuda)), flush=True)
                continue
            if a.inference_host:
                print(json.dumps(infer_host(a.arch, a.device, bs, a.size, a.presize, a.iters, bf16, a.trace)), flush=True)
                continue
            for frozen in {'both': (True, False), 'frozen': (True,), 'unfrozen': (False,)}[a.frozen]:
                print(json.dumps(run(a.arch, a.device, bs, a.size, a.presize, a.iters, a.warmup, bf16, frozen, cuda or a.channels_last, a.profile,
                                     None if frozen or not a.trace else a.trace, a.aug, a.mode, a.images)), flush=True)
