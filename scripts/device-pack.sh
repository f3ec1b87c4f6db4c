#!/usr/bin/env bash
# Prepares .device/ for scripts/gpu-check.sh on the lent GPU machine (no Node.js, no network there):
# Node.js itself, node_modules without the compilers' tooling, a few real X-ray files for the
# end-to-end epoch, and a copy of the covid-chestxray snapshot with images downsized to 320 px (the
# original is over the 64 MiB a device call may carry). Usage: bash scripts/device-pack.sh [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/datasets/covid-chestxray}
bash ../shared/device/pack-node.sh .device >/dev/null
[ -s .device/nm.tar.xz ] || tar cf - --exclude=node_modules/typescript --exclude=node_modules/@types --exclude=node_modules/cmake-js --exclude=node_modules/typedoc --exclude=node_modules/puppeteer-core node_modules | xz -T0 -6 > .device/nm.tar.xz
node --import tsx -e "
import sharp from 'sharp';
import { mkdirSync, copyFileSync, existsSync } from 'node:fs';
import { join, basename } from 'node:path';
import { readCovidMetadata } from './src/datasets/covid.ts';
const data = process.argv[1];
const r = readCovidMetadata(join(data, 'metadata.csv'));
mkdirSync('.device/covid/images', { recursive: true });
copyFileSync(join(data, 'metadata.csv'), '.device/covid/metadata.csv');
let k = 0;
for (const it of r.items) {
  const out = join('.device/covid/images', basename(it.path));
  if (!existsSync(out)) await sharp(it.path).resize(320, 320, { fit: 'inside', withoutEnlargement: true }).toFile(out);
  if (k % 2 === 0 && k < 280) {
    mkdirSync(join('.device/xray', it.label), { recursive: true });
    const x = join('.device/xray', it.label, k + '.jpg');
    if (!existsSync(x)) await sharp(it.path).resize(256, 256, { fit: 'cover' }).jpeg({ quality: 85 }).toFile(x);
  }
  k++;
}
" "$data"
du -sh .device/*
