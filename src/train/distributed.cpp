#include "llmctl/train/distributed.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
// LibTorch's c10d headers hide the Gloo backend unless the build says it has it (the wheel
// does: it is compiled in); defined here, not with -D, so the precompiled header stays shared.
#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include "llmctl/util/error.h"
#include "llmctl/util/log.h"

namespace llmctl {
namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > 1 << 20) throw Error(cat("environment variable ", name, "=", v, " is not a valid number"));
  return static_cast<int>(x);
}

std::chrono::seconds dist_timeout() { return std::chrono::seconds(env_int("LLMCTL_DIST_TIMEOUT", 1800)); }

class Socket {
 public:
  explicit Socket(int fd = -1) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

// The network device Gloo's pairs connect over, chosen as torch.distributed does:
// GLOO_SOCKET_IFNAME names an interface; a loopback master means a one-machine job;
// otherwise the address this host's name resolves to.
std::shared_ptr<::gloo::transport::Device> gloo_device(const DistEnv& env) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  if (is_loopback(env.master_addr)) return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

// Runs one collective; a failure (a rank died, the network went away, the timeout passed)
// becomes one clear error instead of a c10 backtrace.
void collective(const char* what, const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (const auto nl = msg.find('\n'); nl != std::string::npos) msg.resize(nl);
    throw Error(cat("data-parallel: ", what, " failed (did another rank fail? see its error above): ", msg));
  }
}

}  // namespace

DistEnv DistEnv::from_env() {
  DistEnv e;
  e.world = env_int("WORLD_SIZE", 1);
  if (e.world < 1) throw Error("WORLD_SIZE must be at least 1");
  e.rank = env_int("RANK", 0);
  e.local_rank = env_int("LOCAL_RANK", e.rank);
  if (e.rank >= e.world) throw Error(cat("RANK ", e.rank, " is not below WORLD_SIZE ", e.world));
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  e.master_port = env_int("MASTER_PORT", 29500);
  return e;
}

struct Communicator::Group {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
};

Communicator::Communicator(const DistEnv& env) : env_(env) {
  if (env_.world == 1) return;
  // Rendezvous. Under torchrun the agent already serves the store on MASTER_PORT.
  const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(env_.master_port);
  so.isServer = env_.rank == 0 && !(agent && std::string(agent) == "True");
  so.numWorkers = env_.world;
  so.waitWorkers = false;
  so.timeout = dist_timeout();
  group_ = std::make_unique<Group>();
  collective("rendezvous", [&] {
    auto tcp = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, so);
    // Our keys under their own prefix, apart from what a launcher's agent keeps there.
    auto store = c10::make_intrusive<c10d::PrefixStore>("llmctl/gloo", tcp);
    auto opts = c10d::ProcessGroupGloo::Options::create(dist_timeout());
    opts->devices.push_back(gloo_device(env_));
    group_->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env_.rank, env_.world, opts);
  });
  barrier();
}

Communicator::~Communicator() = default;

namespace {

template <typename T>
void all_reduce(c10d::ProcessGroupGloo& pg, T* data, std::size_t n) {
  std::vector<at::Tensor> t{torch::from_blob(data, {static_cast<std::int64_t>(n)}, c10::CppTypeToScalarType<T>::value)};
  collective("all-reduce", [&] { pg.allreduce(t)->wait(); });
}

}  // namespace

void Communicator::all_reduce_sum(float* data, std::size_t n) {
  if (group_) all_reduce(*group_->gloo, data, n);
}

void Communicator::all_reduce_sum(double* data, std::size_t n) {
  if (group_) all_reduce(*group_->gloo, data, n);
}

void Communicator::broadcast(float* data, std::size_t n, int root) {
  if (!group_) return;
  std::vector<at::Tensor> t{torch::from_blob(data, {static_cast<std::int64_t>(n)}, torch::kFloat32)};
  c10d::BroadcastOptions opts;
  opts.rootRank = root;
  collective("broadcast", [&] { group_->gloo->broadcast(t, opts)->wait(); });
}

void Communicator::barrier() {
  if (group_) collective("barrier", [&] { group_->gloo->barrier()->wait(); });
}

// ---- the local launcher ----

namespace {

std::vector<pid_t> g_workers;

void forward_signal(int sig) {
  for (pid_t p : g_workers)
    if (p > 0) ::kill(p, sig);
}

int free_loopback_port() {
  Socket s(::socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  ::inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  socklen_t len = sizeof a;
  if (::bind(s.fd(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(s.fd(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
    throw Error("--nproc: cannot find a free loopback port");
  return ntohs(a.sin_port);
}

}  // namespace

int launch_local_workers(int nproc, int argc, char** argv) {
  if (nproc < 1) throw Error("--nproc must be at least 1");
  const int port = env_int("MASTER_PORT", 0) > 0 ? env_int("MASTER_PORT", 0) : free_loopback_port();
  log::info(cat("launching ", nproc, " data-parallel workers on 127.0.0.1:", port));
  std::vector<char*> args(argv, argv + argc);
  args.push_back(nullptr);
  struct sigaction sa{};
  sa.sa_handler = forward_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  for (int r = 0; r < nproc; ++r) {
    pid_t pid = ::fork();
    if (pid < 0) {
      forward_signal(SIGTERM);
      throw Error(cat("--nproc: fork failed: ", std::strerror(errno)));
    }
    if (pid == 0) {
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::execv("/proc/self/exe", args.data());
      std::fprintf(stderr, "llmctl: error: cannot start worker: %s\n", std::strerror(errno));
      ::_exit(127);
    }
    g_workers.push_back(pid);
  }
  int first_failure = 0;
  for (std::size_t left = g_workers.size(); left > 0; --left) {
    int status = 0;
    pid_t pid = ::wait(&status);
    if (pid < 0) {
      if (errno == EINTR) {
        ++left;
        continue;
      }
      break;
    }
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    for (auto& p : g_workers)
      if (p == pid) p = -1;
    if (code != 0 && first_failure == 0) {
      first_failure = code;
      forward_signal(SIGTERM);  // one rank failed: the others cannot finish
    }
  }
  g_workers.clear();
  return first_failure;
}

}  // namespace llmctl
