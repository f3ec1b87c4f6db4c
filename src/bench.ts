// Benchmark tools, as the subpath export torchlearn/bench: the operator tables LibTorch's profiler writes
// (fit's and predictImages' `trace` option), read and compared with PyTorch's.
export { compareTraces, readTrace, type TraceOp, type TraceTable } from './learner/trace.js';
