// Declarations only, so that LibTorch's CUDA headers parse on a machine without the CUDA toolkit (test/cuda-syntax.test.ts).
#pragma once
#include "cuda_runtime_api.h"
#define CUDA_VERSION 12000
