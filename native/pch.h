// Precompiled header: LibTorch's headers dominate compile time on a 2-core machine.
#pragma once
#include <torch/torch.h>
#include <napi.h>
