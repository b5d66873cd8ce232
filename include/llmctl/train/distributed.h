#pragma once
// Data-parallel training across processes.
//
// Rendezvous uses c10d's TCPStore, the store torchrun and torch.distributed use, so the
// binary follows torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
// MASTER_PORT) and runs under torchrun or SLURM as a launcher. The collectives are c10d's
// ProcessGroupGloo from the same LibTorch (the wheel ships its header but not gloo's own
// headers: those come from Debian's libgloo-dev; the code is the copy inside libtorch).
// CUDA gradients are summed on the host through the same group.
//
// `llmctl pretrain --nproc N` is the single-machine launcher: it re-executes the binary N
// times on loopback with those variables set.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace llmctl {

struct DistEnv {
  int rank = 0, world = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // Reads torchrun's variables; a process without WORLD_SIZE is a world of one.
  static DistEnv from_env();
  bool is_worker_of_launch() const { return world > 1; }
};

// The ranks of one training job. With a world of one every call returns at once.
class Communicator {
 public:
  explicit Communicator(const DistEnv& env);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return env_.rank; }
  int world() const { return env_.world; }
  bool is_main() const { return env_.rank == 0; }

  // Element-wise sum over the ranks, in place; every rank ends with identical bits.
  void all_reduce_sum(float* data, std::size_t n);
  void all_reduce_sum(double* data, std::size_t n);
  // Rank `root`'s values everywhere (an all-reduce where the others contribute zeros).
  void broadcast(float* data, std::size_t n, int root);
  void barrier();

 private:
  struct Group;
  DistEnv env_;
  std::unique_ptr<Group> group_;
};

// Runs `argv` as `nproc` local worker processes (RANK 0..N-1 on 127.0.0.1 and a free
// port unless MASTER_PORT is set) and waits: returns 0 when all succeed, else the first
// failing exit status (the other workers are stopped). SIGINT/SIGTERM are forwarded.
int launch_local_workers(int nproc, int argc, char** argv);

}  // namespace llmctl
