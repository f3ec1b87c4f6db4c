// The architectures beyond the ResNets, each against Debian's torchvision at run time: the same state_dict
// keys in the same order and parameter counts, the same eval outputs and train-mode outputs (BatchNorm
// statistics, dropout and stochastic depth drawn after the same seed), fast.ai's cut and layer groups, and
// torchvision's weight files in the pretrained registry.
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { accuracy, archInfo, ARCHS, ImageDataLoaders, Model, readWeightFile, visionLearner, type Arch } from '../src/index.js';
import { native } from '../src/binding.js';
import { trainForward } from '../src/hooks.js';
import { PRETRAINED } from '../src/weights/pretrained.js';
import { exportRoundTrip, makeStripes } from './helpers/fixtures.js';
import { maxRelError, readF32, runPython, tempDir } from './helpers/python.js';

const NEW_ARCHS = ARCHS.filter((a) => !/^resnet\d/.test(a));

// Keys, parameter counts and the body's output channels of every architecture, built without initialising
// (torch.nn.init made a no-op) so that the largest ones take no time; and the registry's reference.
const STRUCTURE = `
import sys, json, torch, torchvision
for f in ['kaiming_normal_', 'kaiming_uniform_', 'normal_', 'trunc_normal_', 'uniform_', 'constant_', 'ones_', 'zeros_']:
    setattr(torch.nn.init, f, lambda t, *a, **k: t)
out = {}
for arch in sys.argv[1].split(','):
    m = getattr(torchvision.models, arch)(num_classes=10)
    body = m.features if hasattr(m, 'features') else torch.nn.Sequential(*list(m.children())[:-2])
    sd = m.state_dict()
    weights = {}
    for w in torchvision.models.get_model_weights(arch):
        weights[w.name] = {'file': w.url.rsplit('/', 1)[1], 'crop': w.transforms().crop_size[0]}
    out[arch] = {'params': sum(p.numel() for p in m.parameters()), 'keys': list(sd.keys()), 'weights': weights,
                 'nf': [mod for mod in body.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.BatchNorm2d))][-1].weight.shape[0]}
print(json.dumps(out))
`;

// Seeded weights with random BatchNorm statistics, LayerNorm affines and layer scales (ConvNeXt's start at
// 1e-6, which would hide every block), an eval output, then a train-mode output after manual_seed(5) and
// the running means it leaves. DenseNet's file is written as torchvision publishes it: the legacy (pre-1.6)
// format with the 2017 key names and no num_batches_tracked.
const OUTPUTS = `
import sys, re, torch, torchvision, numpy as np
arch, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
m = getattr(torchvision.models, arch)(num_classes=10)
with torch.no_grad():
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1); mod.running_var.uniform_(0.5, 1.5)
            mod.weight.uniform_(0.5, 1.5); mod.bias.uniform_(-0.1, 0.1); mod.num_batches_tracked.fill_(7)
        if isinstance(mod, torch.nn.LayerNorm):
            mod.weight.uniform_(0.5, 1.5); mod.bias.uniform_(-0.1, 0.1)
        if hasattr(mod, 'layer_scale'):
            mod.layer_scale.uniform_(0.05, 0.2)
sd = m.state_dict()
if arch.startswith('densenet'):
    legacy = {re.sub(r'(denselayer\\d+\\.(?:norm|relu|conv))([12])\\.', r'\\1.\\2.', k): v for k, v in sd.items() if not k.endswith('num_batches_tracked')}
    torch.save(legacy, out + '/w.pth', _use_new_zipfile_serialization=False)
else:
    torch.save(sd, out + '/w.pth')
x = torch.randn(2, 3, 64, 64)
m.eval()
with torch.no_grad(): y = m(x)
m.train(); torch.manual_seed(5)
with torch.no_grad(): yt = m(x)
means = [mod.running_mean.flatten() for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
rm = torch.cat(means) if means else torch.zeros(1)
for name, t in [('x', x), ('y', y), ('yt', yt), ('rm', rm)]: t.numpy().astype(np.float32).tofile(out + '/' + name + '.bin')
print(len(means))
`;

interface Structure {
  params: number;
  keys: string[];
  nf: number;
  weights: Record<string, { file: string; crop: number }>;
}

let ref: Record<string, Structure>;
beforeAll(() => {
  ref = JSON.parse(runPython(STRUCTURE, [NEW_ARCHS.join(',')]));
}, 120_000);

describe('architectures beyond the ResNets', () => {
  it('the addon builds exactly the architectures the TypeScript side lists', () => {
    expect(native.architectures()).toEqual([...ARCHS]);
    expect(() => new Model('vgg16' as Arch)).toThrow(/unknown architecture 'vgg16': use one of resnet18, .*convnext_large/);
  });

  it.each(NEW_ARCHS)('%s: torchvision keys in torchvision order, and its parameter count', (arch) => {
    const m = new Model(arch, 10);
    expect(m.stateDictKeys()).toEqual(ref[arch].keys);
    expect(m.numParams()).toBe(ref[arch].params);
    m.dispose();
  });

  it('the pretrained registry holds torchvision\'s weight files, and archInfo its evaluation sizes', () => {
    for (const arch of NEW_ARCHS) {
      const theirs = ref[arch].weights;
      const ours = PRETRAINED[arch];
      expect(Object.keys(ours).sort(), arch).toEqual(Object.keys(theirs).sort());
      for (const [v, w] of Object.entries(theirs)) expect(ours[v as keyof typeof ours], `${arch} ${v}`).toBe(w.file);
      expect(archInfo(arch).size, arch).toBe(theirs.IMAGENET1K_V1.crop);
    }
  });

  // (Wide ResNet's blocks are ResNeXt's with one group: its keys and shapes above cover what differs)
  it.each(['densenet121', 'resnext50_32x4d', 'efficientnet_b0', 'efficientnet_b1', 'convnext_tiny'] as const)(
    '%s: eval and train-mode outputs equal torchvision\'s (rel err < 1e-4), running statistics too',
    async (arch) => {
      const dir = tempDir();
      const nBn = Number(runPython(OUTPUTS, [arch, dir]).trim());
      const m = new Model(arch, 10);
      const r = m.loadWeights(join(dir, 'w.pth'));
      expect(r.loaded).toBe(ref[arch].keys.length);
      const x = readF32(join(dir, 'x.bin'));
      const y = await m.forward(x, [2, 3, 64, 64]);
      const evalErr = maxRelError(y.data, readF32(join(dir, 'y.bin')));
      const yt = trainForward(m, { data: x, shape: [2, 3, 64, 64], seed: 5 });
      const trainErr = maxRelError(yt, readF32(join(dir, 'yt.bin')));
      console.log(`${arch} vs torchvision: eval ${evalErr.toExponential(2)}, train ${trainErr.toExponential(2)}`);
      expect(evalErr).toBeLessThan(1e-4);
      expect(trainErr).toBeLessThan(1e-4);
      if (nBn > 0) {
        const means = readF32(join(dir, 'rm.bin'));
        m.saveWeights(join(dir, 'after.safetensors'));
        const ours = readWeightFile(join(dir, 'after.safetensors')).tensors.filter((t) => t.name.endsWith('running_mean'));
        expect(ours.length).toBe(nBn);
        const flat = new Float32Array(means.length);
        let at = 0;
        for (const t of ours) {
          const v = new Float32Array(t.data.slice().buffer);
          flat.set(v, at);
          at += v.length;
        }
        expect(maxRelError(flat, means, 1e-3)).toBeLessThan(1e-4);
      }
      m.dispose();
    },
    120_000,
  );
});

describe("fast.ai's cut and layer groups", () => {
  // fast.ai's model_meta: DenseNets split at features[7] (_densenet_split); ResNeXt, Wide ResNet,
  // EfficientNet and ConvNeXt are not in it, so its default split: the body one group, the head another
  // (the last parameter of one group, the first of the next)
  it.each([
    ['densenet121', 3, 'body.features.denseblock2.denselayer12.conv2.weight', 'body.features.transition2.norm.weight'],
    ['resnext50_32x4d', 2, 'body.layer4.2.bn3.bias', 'head.2.weight'],
    ['efficientnet_b0', 2, 'body.features.8.1.bias', 'head.2.weight'],
    ['convnext_tiny', 2, 'body.features.7.2.block.5.bias', 'head.2.weight'],
  ] as const)('%s: %i groups, the head on the body\'s real channel count', (arch, groups, lastOfFirst, firstOfSecond) => {
    const net = new native.Net({ arch, kind: 'fastai', numClasses: 3 });
    expect(net.numGroups()).toBe(groups);
    const table = net.paramTable();
    const at = (name: string) => table.findIndex((p) => p.name === name);
    expect(at(firstOfSecond)).toBe(at(lastOfFirst) + 1);
    expect(table[at(firstOfSecond)].group).toBe(table[at(lastOfFirst)].group + 1);
    expect(table[0].group).toBe(0);
    expect(table.at(-1)!.group).toBe(groups - 1);
    // the head's first BatchNorm takes the concatenated max and average pools of the body's channels
    expect(table.find((p) => p.name === 'head.2.weight')!.numel).toBe(2 * ref[arch].nf);
    // LayerNorms are norms for fast.ai (norm_types): trained when frozen, no weight decay
    if (arch === 'convnext_tiny') expect(table.find((p) => p.name === 'body.features.1.0.block.2.weight')).toMatchObject({ isNorm: true, noDecay: true });
    net.dispose();
  });
});

describe('a learner on a DenseNet', () => {
  let dir: string;
  let dls: ImageDataLoaders;
  beforeAll(async () => {
    dir = tempDir();
    await makeStripes(join(dir, 's'), 16, 48, 4);
    dls = await ImageDataLoaders.fromFolder(join(dir, 's'), { size: 32, presize: 40, bs: 8, seed: 2 });
    runPython(OUTPUTS, ['densenet121', dir]);
  }, 120_000);

  it('takes torchvision\'s weights (legacy file, 2017 key names) as its frozen body, trains, exports and predicts', async () => {
    const learn = await visionLearner(dls, 'densenet121', { pretrained: join(dir, 'w.pth'), verbose: false, metrics: [accuracy()], seed: 0 });
    expect(learn.numGroups).toBe(3);
    const body = readWeightFile(join(dir, 'w.pth')).tensors.find((t) => t.name === 'features.denseblock1.denselayer1.norm.1.weight')!;
    const mine = (await learn.state(false)).find((t) => t.name === 'model.body.features.denseblock1.denselayer1.norm1.weight')!;
    expect(Buffer.from(mine.data).equals(Buffer.from(body.data))).toBe(true);
    await learn.fitOneCycle(1, { lrMax: 1e-3 });
    const loss = learn.recorder.values.at(-1)![0];
    expect(Number.isFinite(loss)).toBe(true);
    const files = dls.valid.items.slice(0, 4).map((i) => i.path);
    const { exported, errors } = await exportRoundTrip(learn, join(dir, 'densenet.safetensors'), files);
    expect(readWeightFile(exported).metadata.arch).toBe('densenet121');
    for (const e of errors) expect(e).toBeLessThan(1e-4);
    learn.dispose();
  }, 300_000);
});
