// Bring your own body: a module scripted in the test by Debian's PyTorch trains as a learner's body, with
// PyTorch's outputs, fast.ai's head and layer groups, and travels in exports.
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { accuracy, ImageDataLoaders, torchInfo, visionLearner } from '../src/index.js';
import { bodyFeatures } from '../src/hooks.js';
import { exportRoundTrip, makeStripes } from './helpers/fixtures.js';
import { maxRelError, readF32, runPython, tempDir } from './helpers/python.js';

// torchvision's ResNet18 with seeded weights and random BatchNorm statistics, cut as fast.ai cuts it, then
// scripted: body.pt with torchlearn.json saying fast.ai's ResNet split (the second group starts at layer3,
// child 6), plain.pt without it, traced.pt traced; a torch.save checkpoint; and body.pt with its format
// version raised past any LibTorch's, as a newer PyTorch would write it.
const MAKE = `
import sys, json, zipfile, torch, torchvision, numpy as np
out = sys.argv[1]
torch.manual_seed(0)
m = torchvision.models.resnet18()
with torch.no_grad():
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1); mod.running_var.uniform_(0.5, 1.5)
            mod.weight.uniform_(0.5, 1.5); mod.bias.uniform_(-0.1, 0.1)
body = torch.nn.Sequential(*list(m.children())[:-2]).eval()
scripted = torch.jit.script(body)
torch.jit.save(scripted, out + '/body.pt', _extra_files={'torchlearn.json': json.dumps({'groupStarts': ['6.']})})
torch.jit.save(scripted, out + '/plain.pt')
torch.jit.save(torch.jit.trace(body, torch.randn(1, 3, 64, 64)), out + '/traced.pt')
torch.save(body.state_dict(), out + '/checkpoint.pth')
with zipfile.ZipFile(out + '/body.pt') as src, zipfile.ZipFile(out + '/newer.pt', 'w') as dst:
    for info in src.infolist():
        data = src.read(info.filename)
        if info.filename.endswith('/version'): data = b'99\\n'
        dst.writestr(info, data)
x = torch.randn(2, 3, 64, 64)
with torch.no_grad(): y = body(x)
x.numpy().astype(np.float32).tofile(out + '/x.bin')
y.numpy().astype(np.float32).tofile(out + '/y.bin')
print(list(y.shape))
`;

let dir: string;
let dls: ImageDataLoaders;
let yShape: number[];
beforeAll(async () => {
  dir = tempDir();
  yShape = JSON.parse(runPython(MAKE, [dir]).trim());
  await makeStripes(join(dir, 's'), 30, 48, 2);
  dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 40, bs: 16, seed: 1 });
}, 120_000);

describe('a TorchScript body', () => {
  it.each(['body.pt', 'traced.pt'])('%s: the body gives PyTorch\'s outputs for the same input (rel err < 1e-4)', async (file) => {
    const learn = await visionLearner(dls, { torchscript: join(dir, file) }, { verbose: false });
    const out = bodyFeatures(learn, { data: readF32(join(dir, 'x.bin')), shape: [2, 3, 64, 64] });
    expect(out.shape).toEqual(yShape);
    const err = maxRelError(out.data, readF32(join(dir, 'y.bin')));
    console.log(`${file} vs PyTorch: max relative error ${err.toExponential(2)}`);
    expect(err).toBeLessThan(1e-4);
    learn.dispose();
  });

  it("has fast.ai's head on its real channel count, the layer groups its file names, and starts frozen", async () => {
    const learn = await visionLearner(dls, { torchscript: join(dir, 'body.pt') }, { verbose: false });
    expect(learn.arch).toBe('torchscript');
    expect(learn.numGroups).toBe(3);
    const table = learn.net.paramTable();
    const row = (name: string) => table.find((p) => p.name === name)!;
    expect(row('body.5.1.bn2.bias').group).toBe(0);
    expect(row('body.6.0.conv1.weight').group).toBe(1);
    expect(row('head.8.weight').group).toBe(2);
    expect(row('head.2.weight').numel).toBe(2 * yShape[1]);
    // frozen: the body's convolutions do not train, its BatchNorms do (fast.ai's train_bn)
    expect(row('body.6.0.conv1.weight').requiresGrad).toBe(false);
    expect(row('body.1.weight')).toMatchObject({ requiresGrad: true, isNorm: true, noDecay: true });
    learn.dispose();
    const plain = await visionLearner(dls, { torchscript: join(dir, 'plain.pt') }, { verbose: false });
    expect(plain.numGroups).toBe(2);
    plain.dispose();
  });

  it('learns the stripes, exports with its body, and the loaded export predicts the same', async () => {
    const learn = await visionLearner(dls, { torchscript: join(dir, 'plain.pt') }, { pretrained: false, verbose: false, metrics: [accuracy()], seed: 0 });
    await learn.fitOneCycle(4, { lrMax: 5e-3 });
    const acc = learn.recorder.values.at(-1)![2];
    console.log(`TorchScript ResNet18 body on the stripes: accuracy ${acc}`);
    expect(acc).toBeGreaterThanOrEqual(0.9);
    const files = dls.valid.items.slice(0, 6).map((i) => i.path);
    const { arch, errors } = await exportRoundTrip(learn, join(dir, 'export.safetensors'), files);
    expect(arch).toBe('torchscript');
    for (const e of errors) expect(e).toBeLessThan(1e-4);
    learn.dispose();
  }, 300_000);

  it('refuses a file from a newer PyTorch naming both versions, and what is not TorchScript', async () => {
    const max = torchInfo().torchscriptFormat;
    await expect(visionLearner(dls, { torchscript: join(dir, 'newer.pt') })).rejects.toThrow(
      new RegExp(`newer.pt: written by a newer PyTorch \\(TorchScript file format 99\\) than this LibTorch ${torchInfo().torchVersion.replace(/\./g, '\\.')} reads \\(format ${max} at most\\)`),
    );
    await expect(visionLearner(dls, { torchscript: join(dir, 'checkpoint.pth') })).rejects.toThrow(/checkpoint.pth: a torch.save checkpoint or another zip, not TorchScript .*torch.jit.save/);
    await expect(visionLearner(dls, { torchscript: join(dir, 'body.pt') }, { pretrained: 'x.pth' })).rejects.toThrow(/brings its own weights/);
  });
});
