// The public surface of torchlearn.
export { torchInfo, setNumThreads, manualSeed } from './info.js';
export type { TorchInfo } from './info.js';
export { Model, resnet18, resnet34, resnet50, resnet101, resnet152, ARCHS } from './model.js';
export type { Arch, LoadWeightsOptions, ResNetOptions } from './model.js';
export type { LoadReport, NamedTensor, DType } from './binding.js';
export { readWeightFile, writeWeightFile } from './weights/index.js';
