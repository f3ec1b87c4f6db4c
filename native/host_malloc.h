// The C library's allocator, set for tensor work (host_malloc.cpp says why). Process-wide: glibc has one set
// of settings for every thread.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace tl {

// Applies the settings unless `mode` is "system" or the environment already sets glibc's malloc (then the
// user's choice stands). Returns what is in force: "tuned", or "system" and why.
std::string tuneHostMalloc(const std::string& mode);
// The settings "tuned" applies, as glibc's variables name them (MALLOC_MMAP_THRESHOLD_, ...): the bench runs
// PyTorch under them too.
std::vector<std::pair<std::string, int>> tunedMallocSettings();
// What tuneHostMalloc left in force ("system" before it ran).
std::string hostMallocState();
// Gives free memory back to the system (malloc_trim). The workers call it once they have been idle a while
// after heavy work, since with the tuned settings glibc no longer does it on every free.
void releaseHostMemory();

}  // namespace tl
