// The bundled example on the real collection, at a tiny size: folders, counts, pictures, metrics.json.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { tempDir } from './helpers/python.js';

const ROOT = join(__dirname, '..');
const DATA = join(ROOT, '..', 'shared', 'datasets', 'covid-chestxray');
if (!existsSync(DATA)) console.log(`example test skipped: no covid-chestxray collection at ${DATA}`);

describe.skipIf(!existsSync(DATA))('scripts/covid-xray.ts on the real dataset', () => {
  it('runs end to end and writes the folders, pictures, export and metrics.json', async () => {
    const out = join(tempDir(), 'cx');
    // offline, as this machine is: an empty hub cache and a weights URL where nothing listens (port 9 of the loopback)
    const env = { ...process.env, TORCH_HOME: join(out, '..', 'torch-home'), TORCHLEARN_WEIGHTS_URL: 'http://127.0.0.1:9/' };
    const log = execFileSync(join(ROOT, 'node_modules', '.bin', 'tsx'), [join(ROOT, 'scripts', 'covid-xray.ts'), '--data', DATA, '--out', out, '--size', '64', '--bs', '16', '--epochs', '1,1', '--lr-find-iters', '10', '--arch', 'resnet18', '--device', 'cpu'], { encoding: 'utf8', cwd: ROOT, env });
    expect(log).toMatch(/not a diagnostic tool/);
    // no weights to be had: the example alone falls back to training from scratch, loudly, once
    expect(log.match(/!!! No ImageNet weights: pretrained weights: cannot download http:\/\/127\.0\.0\.1:9\/resnet18-f37072fd\.pth/g)?.length).toBe(1);
    expect(log).toMatch(/The resnet18 body trains FROM SCRATCH/);
    expect(log).toMatch(/kept 293 X-ray PA images/);
    expect(log).toMatch(/epoch\s+train_loss\s+valid_loss\s+precision_score\s+recall_score\s+time/);
    expect(readdirSync(join(out, 'images', 'covid_positive')).length).toBe(216);
    expect(readdirSync(join(out, 'images', 'covid_negative')).length).toBe(77);
    // both fits' epochs (1 and 1 here) under one header
    expect(readFileSync(join(out, 'history.csv'), 'utf8').trimEnd().split('\n').length).toBe(3);
    for (const png of ['batch.png', 'lr_find.png', 'confusion_matrix.png', 'top_losses.png', 'results.png']) {
      const m = await sharp(join(out, png)).metadata();
      expect(m.format, png).toBe('png');
      expect(m.width!, png).toBeGreaterThan(300);
      expect(m.height!, png).toBeGreaterThan(200);
    }
    expect(existsSync(join(out, 'models', 'stage-1.safetensors'))).toBe(true);
    expect(existsSync(join(out, 'models', 'stage-2.safetensors'))).toBe(true);
    expect(existsSync(join(out, 'export.safetensors'))).toBe(true);
    const m = JSON.parse(readFileSync(join(out, 'metrics.json'), 'utf8'));
    expect(m.metadata).toMatchObject({ rows: 673, kept: 293, missingFiles: 5, perClass: { covid_positive: 216, covid_negative: 77 } });
    expect(m.split.train.covid_positive + m.split.valid.covid_positive).toBe(216);
    for (const k of ['accuracy', 'precision', 'recall', 'f1', 'majorityBaseline']) expect(m.valid[k]).toBeGreaterThanOrEqual(0);
    expect(m.valid.confusionMatrix.flat().reduce((a: number, b: number) => a + b, 0)).toBe(m.split.valid.covid_positive + m.split.valid.covid_negative);
    expect(m.settings).toMatchObject({ arch: 'resnet18', size: 64, bs: 16, split: 'patient' });
    expect(m.torch.version).toMatch(/^\d/);
    expect(m.timings.total).toBeGreaterThan(0);
    expect(['covid_positive', 'covid_negative']).toContain(m.prediction.label);
    // the same seed gives the same split and, on the CPU, the same numbers
    const out2 = join(tempDir(), 'cx');
    execFileSync(join(ROOT, 'node_modules', '.bin', 'tsx'), [join(ROOT, 'scripts', 'covid-xray.ts'), '--data', DATA, '--out', out2, '--size', '64', '--bs', '16', '--epochs', '1,1', '--lr-find-iters', '10', '--arch', 'resnet18', '--device', 'cpu'], { encoding: 'utf8', cwd: ROOT, env });
    const m2 = JSON.parse(readFileSync(join(out2, 'metrics.json'), 'utf8'));
    expect(m2.split).toEqual(m.split);
    expect(m2.valid).toEqual(m.valid);
  });
});
