/**
 * Benchmark tools (`torchlearn/bench`): the operator tables LibTorch's profiler writes (fit's and
 * predictImages' `trace` option), read and compared with PyTorch's.
 *
 * @module torchlearn/bench
 */
export { compareTraces, readTrace, type TraceOp, type TraceTable } from './learner/trace.js';
