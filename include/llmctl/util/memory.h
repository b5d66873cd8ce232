#pragma once
// Process-wide allocator settings for the long-running loops (training steps, engine steps).

namespace llmctl {

// Every step allocates and frees the same large tensors. glibc hands blocks above its mmap
// threshold back to the kernel on free and faults them in zeroed on the next step (5% of a
// CPU training step, 9% of a batched decode step); keeping them in the heap reuses them.
void keep_freed_memory_for_reuse();

}  // namespace llmctl
