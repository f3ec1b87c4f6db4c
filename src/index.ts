/**
 * torchlearn: fast.ai's way of training image classifiers, for TypeScript on Node.js, on LibTorch. This is the
 * library; the covid-chestxray helpers are `torchlearn/datasets/covid`, the benchmark's trace tools
 * `torchlearn/bench`.
 *
 * @module torchlearn
 */
export { torchInfo, setNumThreads, manualSeed } from './info.js';
export type { TorchInfo } from './info.js';
export {
  Model, ARCHS, TORCHVISION_WEIGHTS, archInfo, torchvisionStateDict,
  resnet18, resnet34, resnet50, resnet101, resnet152,
  resnext50_32x4d, resnext101_32x8d, resnext101_64x4d, wide_resnet50_2, wide_resnet101_2,
  densenet121, densenet161, densenet169, densenet201,
  efficientnet_b0, efficientnet_b1, efficientnet_b2, efficientnet_b3, efficientnet_b4, efficientnet_b5, efficientnet_b6, efficientnet_b7,
  convnext_tiny, convnext_small, convnext_base, convnext_large,
} from './model.js';
export type { TorchScriptBody, TorchScriptExtras } from './torchscript.js';
export type { Arch, ArchFamily, ArchInfo, LoadWeightsOptions, ModelOptions, ResNetOptions } from './model.js';
export type { LoadReport, NamedTensor, DType } from './binding.js';
export { readWeightFile, writeWeightFile } from './weights/index.js';
export type { WeightFile } from './weights/index.js';
export { PRETRAINED, WEIGHTS_VERSIONS, TORCHVISION_WEIGHTS_URL, cachedWeightFile, hubCacheDir, pretrainedFileName, weightsBaseUrl } from './weights/pretrained.js';
export type { WeightsVersion, DownloadOptions } from './weights/pretrained.js';
export { ImageDataLoaders, DataSplit, TestSet, folderItems } from './data/loaders.js';
export type { ImageStore } from './data/store.js';
export type { TableOptions, Column } from './data/sources.js';
export type { DataLoadersOptions, Item, Skipped } from './data/loaders.js';
export { augTransforms, imagenetStats, defaultPresize, DATA_DEFAULTS } from './data/transforms.js';
export type { AugOptions, ItemTransforms, ResizeMethod } from './data/transforms.js';
export type { ImageSource } from './data/images.js';
export { accuracy, errorRate, precision, recall, f1Score, rocAuc, rocAucBinary, metric, confusionMatrix } from './metrics.js';
export type { Average, Metric, MetricFn } from './metrics.js';
export { accuracyMulti, precisionMulti, recallMulti, f1ScoreMulti, rocAucMulti, labelReport } from './multilabel.js';
export type { LabelReport, MultiAverage } from './multilabel.js';
export { Learner, visionLearner, DEFAULTS } from './learner/learner.js';
export type { VisionLearnerOptions, OneCycleOptions, FitOptions, FitResult, LrFindResult, Preds, TestPreds, LossOptions } from './learner/learner.js';
export type { Suggestions } from './learner/lrfind.js';
export { saveModel, earlyStopping, csvLogger, gradientClip, gradientAccumulation, mixUp, cutMix } from './learner/callbacks.js';
export { tensorBoard } from './learner/tensorboard.js';
export type { Callback, EpochInfo, BatchInfo } from './learner/callbacks.js';
export { lrPerGroup } from './learner/schedule.js';
export type { LrSpec } from './learner/schedule.js';
export { Recorder } from './learner/recorder.js';
export { loadLearner, InferenceLearner, EXPORT_FORMAT } from './inference.js';
export type { LoadLearnerOptions, TimedPrediction } from './inference.js';
export { QueueFullError, ImageDecodeError, PredictBatcher } from './serving/batcher.js';
export type { BatchingOptions, BatchRunner, PredictTiming } from './serving/batcher.js';
export { TTA_DEFAULTS, type TtaOptions } from './tta.js';
export type { Prediction, ExportInfo } from './inference.js';
export type { Decoding } from './prediction.js';
export { ClassificationInterpretation } from './interpret.js';
export { initDistributed, distributedInfo, rankDistrib, numDistrib, isMainProcess, allreduceNumbers } from './distributed/group.js';
export type { InitDistributedOptions, DistributedInfo, DistributedBackend } from './distributed/group.js';
export { distributedEnv } from './distributed/env.js';
export type { DistributedEnv } from './distributed/env.js';
export { launch } from './distributed/launch.js';
export type { LaunchOptions } from './distributed/launch.js';
