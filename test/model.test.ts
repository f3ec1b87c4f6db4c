import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readWeightFile, resnet18, resnet34, resnet50, resnet101, resnet152, torchInfo, writeWeightFile, Model } from '../src/index.js';
import { maxRelError, readF32, runPython, tempDir } from './helpers/python.js';

const REF = `
import sys, torch, torchvision, numpy as np
arch, out, nc = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
m = getattr(torchvision.models, arch)(num_classes=nc)
# random BatchNorm statistics and affine parameters, so that eval mode is really exercised
with torch.no_grad():
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1); mod.running_var.uniform_(0.5, 1.5)
            mod.weight.uniform_(0.5, 1.5); mod.bias.uniform_(-0.1, 0.1)
            mod.num_batches_tracked.fill_(7)
m.eval()
torch.save(m.state_dict(), out + '/w.pth')
x = torch.randn(2, 3, 64, 80)
with torch.no_grad(): y = m(x)
x.numpy().astype(np.float32).tofile(out + '/x.bin')
y.numpy().astype(np.float32).tofile(out + '/y.bin')
print(sum(p.numel() for p in m.parameters()), len(m.state_dict()))
print('\\n'.join(m.state_dict().keys()))
`;

describe('torchvision-compatible ResNets', () => {
  it('reports LibTorch and a thread count of every core', () => {
    const info = torchInfo();
    expect(info.torchVersion).toMatch(/^\d+\.\d+\.\d+$/);
    expect(info.threads).toBeGreaterThanOrEqual(1);
    expect(typeof info.cuda).toBe('boolean');
  });

  it('resnet50 has 25,557,032 parameters and torchvision key names', () => {
    const m = resnet50({ numClasses: 1000 });
    expect(m.numParams()).toBe(25_557_032);
    const keys = m.stateDictKeys();
    expect(keys.slice(0, 6)).toEqual(['conv1.weight', 'bn1.weight', 'bn1.bias', 'bn1.running_mean', 'bn1.running_var', 'bn1.num_batches_tracked']);
    expect(keys).toContain('layer1.0.downsample.1.weight');
    expect(keys.at(-1)).toBe('fc.bias');
    m.dispose();
  });

  it.each([
    ['resnet18', resnet18, 11_689_512],
    ['resnet34', resnet34, 21_797_672],
    ['resnet101', resnet101, 44_549_160],
    ['resnet152', resnet152, 60_192_808],
  ] as const)('%s has torchvision parameter count', (_n, f, count) => {
    const m = f();
    expect(m.numParams()).toBe(count);
    m.dispose();
  });

  it('resnet50 matches torchvision: same keys in the same order, same eval output (rel err < 1e-4)', async () => {
    const dir = tempDir();
    const lines = runPython(REF, ['resnet50', dir, '1000']).trim().split('\n');
    const [params, nKeys] = lines[0].split(' ').map(Number);
    const m = resnet50();
    expect(m.numParams()).toBe(params);
    expect(m.stateDictKeys()).toEqual(lines.slice(1, 1 + nKeys));
    const report = m.loadWeights(join(dir, 'w.pth'));
    expect(report.loaded).toBe(nKeys);
    const x = readF32(join(dir, 'x.bin'));
    const y = readF32(join(dir, 'y.bin'));
    const out = await m.forward(x, [2, 3, 64, 80]);
    expect(out.shape).toEqual([2, 1000]);
    const err = maxRelError(out.data, y);
    console.log(`resnet50 vs torchvision: max relative error ${err.toExponential(2)}`);
    expect(err).toBeLessThan(1e-4);
    m.dispose();
  });

  it('round-trips weights through .safetensors and .pth (and torch.load reads our .pth)', async () => {
    const dir = tempDir();
    runPython(REF, ['resnet18', dir, '10']);
    const a = new Model('resnet18', 10);
    a.loadWeights(join(dir, 'w.pth'));
    a.saveWeights(join(dir, 'ours.safetensors'));
    a.saveWeights(join(dir, 'ours.pth'));
    const x = readF32(join(dir, 'x.bin'));
    const ya = await a.forward(x, [2, 3, 64, 80]);
    for (const f of ['ours.safetensors', 'ours.pth']) {
      const b = resnet18({ numClasses: 10 });
      b.loadWeights(join(dir, f));
      const yb = await b.forward(x, [2, 3, 64, 80]);
      expect(Array.from(yb.data)).toEqual(Array.from(ya.data));
      b.dispose();
    }
    // PyTorch itself loads what we wrote, with the same numbers
    const check = runPython(
      `import sys, torch, torchvision, numpy as np
m = torchvision.models.resnet18(num_classes=10); m.load_state_dict(torch.load(sys.argv[1])); m.eval()
x = torch.from_numpy(np.fromfile(sys.argv[2], dtype=np.float32).reshape(2,3,64,80))
with torch.no_grad(): print(float((m(x) - torch.from_numpy(np.fromfile(sys.argv[3], dtype=np.float32).reshape(2,10))).abs().max()))`,
      [join(dir, 'ours.pth'), join(dir, 'x.bin'), join(dir, 'y.bin')],
    );
    expect(Number(check)).toBeLessThan(1e-4);
    a.dispose();
  });

  it('transfer learning: an ImageNet checkpoint loads into 2 classes with skipClassifier, strict otherwise fails naming keys', () => {
    const dir = tempDir();
    runPython(REF, ['resnet18', dir, '1000']);
    const m = resnet18({ numClasses: 2 });
    expect(() => m.loadWeights(join(dir, 'w.pth'))).toThrow(/fc\.weight \(file \[1000, 512\], model \[2, 512\]\)/);
    const r = m.loadWeights(join(dir, 'w.pth'), { skipClassifier: true });
    expect(r.missing).toEqual([]);
    expect(r.loaded).toBe(m.stateDictKeys().length - 2);
    m.dispose();
  });

  it('gives clear errors for bad files, other architectures, bad shapes, missing CUDA, disposed models', async () => {
    const dir = tempDir();
    runPython(REF, ['resnet18', dir, '1000']);
    const m = resnet50();
    expect(() => m.loadWeights(join(dir, 'nope.pth'))).toThrow(/nope\.pth: weight file not found/);
    writeFileSync(join(dir, 'text.pth'), 'hello world, not weights');
    expect(() => m.loadWeights(join(dir, 'text.pth'))).toThrow(/text\.pth: not a weight file/);
    const full = readFileSync(join(dir, 'w.pth'));
    writeFileSync(join(dir, 'cut.pth'), full.subarray(0, full.length >> 1));
    expect(() => m.loadWeights(join(dir, 'cut.pth'))).toThrow(/cut\.pth.*(truncated|zip)/);
    expect(() => m.loadWeights(join(dir, 'w.pth'))).toThrow(/w\.pth does not match this network[\s\S]*missing keys[\s\S]*another architecture/);
    writeFileSync(join(dir, 'legacy.pth'), Buffer.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc]));
    expect(() => m.loadWeights(join(dir, 'legacy.pth'))).toThrow(/legacy\.pth: cannot read the pickle \(it ends early: truncated file\?\)/);
    // a .safetensors whose header length ends in the byte 0x80 (the opcode a legacy .pth starts with) is
    // still read as .safetensors: the format is told by the '{' after the length, not by the first byte
    const t = [{ name: 'w', dtype: 'F32' as const, shape: [2], data: new Uint8Array(8) }];
    let pad = '';
    while (true) {
      writeWeightFile(join(dir, 'x.safetensors'), t, { pad });
      if (readFileSync(join(dir, 'x.safetensors'))[0] === 0x80) break;
      pad += 'x';
    }
    expect(readWeightFile(join(dir, 'x.safetensors'))).toMatchObject({ format: 'safetensors', metadata: { pad } });
    await expect(m.forward(new Float32Array(10), [1, 3, 64, 64])).rejects.toThrow(/forward: input has 10 values but shape \[1,3,64,64\] needs 12288/);
    await expect(m.forward(new Float32Array(64 * 64), [1, 1, 64, 64])).rejects.toThrow(/\[batch, 3, height, width\]/);
    if (!torchInfo().cuda) expect(() => m.to('cuda')).toThrow(/no usable CUDA[\s\S]*'cpu'/);
    m.dispose();
    expect(() => m.numParams()).toThrow(/disposed/);
    await expect(async () => m.forward(new Float32Array(3 * 64 * 64), [1, 3, 64, 64])).rejects.toThrow(/disposed/);
  });

  it('runs forward off the main thread: the event loop keeps turning', async () => {
    const m = resnet50();
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    await m.forward(new Float32Array(4 * 3 * 128 * 128).fill(0.5), [4, 3, 128, 128]);
    clearInterval(timer);
    expect(ticks).toBeGreaterThan(3);
    m.dispose();
  });
});
