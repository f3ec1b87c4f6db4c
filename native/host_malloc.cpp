#include "host_malloc.h"

#include <cstdlib>
#include <cstring>
#include <mutex>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace tl {

// A train step frees and allocates the same few hundred MB of activations and gradients every step. glibc's
// defaults are made for programs that do not: memory freed at the top of a heap above the trim threshold
// goes back to the system at once; the mmap threshold follows the largest block freed, so the first large
// blocks of each size are fresh mappings; and a thread other than the main one allocates from heaps of
// 64 MiB that are unmapped as soon as they empty. The CPU worker is such a thread. Each step then faults
// its pages in again, and the kernel zeroes every one: on the CPU that was a large share of a train step
// (docs/performance.md). The settings below keep freed memory in the process while it works:
// - M_MMAP_THRESHOLD at its largest (32 MiB on 64-bit: half a thread heap), and fixed, so tensors below it
//   come from the heaps and are reused;
// - M_TRIM_THRESHOLD high, so a free does not give the top of a heap back;
// - M_TOP_PAD of a whole thread heap, which also keeps glibc from unmapping a thread's emptied heaps.
// What is kept is returned by releaseHostMemory once a worker falls idle. PyTorch's own tuning guide gets
// the same effect by swapping in jemalloc or tcmalloc, which an addon cannot do.
namespace {
std::mutex stateMutex;
std::string state = "system";
constexpr int kMmapThreshold = 32 << 20;
constexpr int kTrimThreshold = 1 << 30;
constexpr int kTopPad = 64 << 20;

// The environment variables through which a user sets glibc's malloc (glibc reads them at start-up): if
// any is set, that choice stands.
const char* userMallocVariable() {
  static const char* names[] = {"MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_",
                                "MALLOC_ARENA_MAX"};
  for (const char* n : names)
    if (std::getenv(n)) return n;
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables && std::strstr(tunables, "glibc.malloc.")) return "GLIBC_TUNABLES";
  return nullptr;
}
}  // namespace

std::string tuneHostMalloc(const std::string& mode) {
  std::lock_guard<std::mutex> lock(stateMutex);
  if (mode == "system") return state = "system";
#if defined(__GLIBC__)
  if (const char* v = userMallocVariable()) return state = std::string("system (") + v + " is set)";
  // mallopt returns 1 on success; a preloaded allocator (jemalloc, tcmalloc) may not have these settings
  const bool ok = mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1 && mallopt(M_TRIM_THRESHOLD, kTrimThreshold) == 1 &&
                  mallopt(M_TOP_PAD, kTopPad) == 1;
  return state = ok ? "tuned" : "system (mallopt refused the settings)";
#else
  return state = "system (not glibc)";
#endif
}

std::vector<std::pair<std::string, int>> tunedMallocSettings() {
  return {{"MALLOC_MMAP_THRESHOLD_", kMmapThreshold}, {"MALLOC_TRIM_THRESHOLD_", kTrimThreshold}, {"MALLOC_TOP_PAD_", kTopPad}};
}

std::string hostMallocState() {
  std::lock_guard<std::mutex> lock(stateMutex);
  return state;
}

void releaseHostMemory() {
#if defined(__GLIBC__)
  if (hostMallocState() == "tuned") malloc_trim(0);
#endif
}

}  // namespace tl
