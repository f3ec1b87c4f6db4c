// What torchlearn's CUDA kernels share: the launch shape and 8 bf16 values (one 16-byte load) as floats.
// The helpers are __host__ __device__, as are the kernels' bodies, so that the same code runs emulated on
// the CPU in the tests (test/helpers/bn_act_check.cu).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

namespace tl::kernels {

constexpr int kThreads = 256;  // per block; a multiple of channels / kVec for every shape the kernels take
constexpr int kVec = 8;        // bf16 values per 16-byte load

// memcpy, not a pointer cast, between the 16-byte vector and its bf16 pairs: reading one type through a
// pointer to another breaks C++'s aliasing rules (the host compiler at -O2 dropped such a read); compiled,
// the copies are register moves.
__host__ __device__ inline void unpack8(const uint4& v, float out[kVec]) {
  __nv_bfloat162 h[kVec / 2];
  memcpy(h, &v, sizeof v);
#pragma unroll
  for (int k = 0; k < kVec / 2; k++) {
    const float2 f = __bfloat1622float2(h[k]);
    out[2 * k] = f.x;
    out[2 * k + 1] = f.y;
  }
}

__host__ __device__ inline uint4 pack8(const float in[kVec]) {
  __nv_bfloat162 h[kVec / 2];
#pragma unroll
  for (int k = 0; k < kVec / 2; k++) h[k] = __float22bfloat162_rn(make_float2(in[2 * k], in[2 * k + 1]));
  uint4 v;
  memcpy(&v, h, sizeof v);
  return v;
}

__host__ __device__ inline float roundBf16(float f) { return __bfloat162float(__float2bfloat16_rn(f)); }

// Whether the kernels take this many channels: whole 16-byte vectors, and a group of channels per thread
// that stays the same over a grid-stride loop (kThreads a multiple of channels / kVec): ResNet's 64..2048.
inline bool channelsSupported(int channels) { return channels > 0 && channels % kVec == 0 && kThreads % (channels / kVec) == 0; }

}  // namespace tl::kernels
