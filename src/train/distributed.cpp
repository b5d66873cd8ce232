#include "llmctl/train/distributed.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>
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
  Socket(Socket&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Socket& operator=(Socket&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

void set_timeouts(int fd) {
  timeval tv{};
  tv.tv_sec = dist_timeout().count();
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void send_all(int fd, const void* p, std::size_t n, int peer) {
  auto* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t k = ::send(fd, c, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) throw Error(cat("data-parallel: sending to rank ", peer, " failed: ", std::strerror(errno)));
    c += k;
    n -= static_cast<std::size_t>(k);
  }
}

void recv_all(int fd, void* p, std::size_t n, int peer) {
  auto* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t k = ::recv(fd, c, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k == 0) throw Error(cat("data-parallel: rank ", peer, " disconnected (did it fail? see its error above)"));
    if (k < 0) throw Error(cat("data-parallel: receiving from rank ", peer, " failed: ", std::strerror(errno)));
    c += k;
    n -= static_cast<std::size_t>(k);
  }
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

// The local address other ranks can reach us on: the one routing to the master.
std::string local_address_towards(const std::string& master, int port) {
  if (is_loopback(master)) return "127.0.0.1";
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  if (::getaddrinfo(master.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || !res)
    throw Error("data-parallel: cannot resolve MASTER_ADDR " + master);
  Socket s(::socket(AF_INET, SOCK_DGRAM, 0));
  int rc = ::connect(s.fd(), res->ai_addr, res->ai_addrlen);  // UDP connect: picks a route, sends nothing
  ::freeaddrinfo(res);
  sockaddr_in local{};
  socklen_t len = sizeof local;
  if (rc != 0 || ::getsockname(s.fd(), reinterpret_cast<sockaddr*>(&local), &len) != 0)
    throw Error("data-parallel: no route to MASTER_ADDR " + master);
  char buf[INET_ADDRSTRLEN];
  ::inet_ntop(AF_INET, &local.sin_addr, buf, sizeof buf);
  return buf;
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

// Each rank sends to rank+1 and receives from rank-1 over its own TCP connections.
struct Communicator::Ring {
  c10::intrusive_ptr<c10d::TCPStore> store;
  Socket to_next, from_prev;
  int next = 0, prev = 0;
};

Communicator::Communicator(const DistEnv& env) : env_(env) {
  if (env_.world == 1) return;
  ring_ = std::make_unique<Ring>();
  auto& r = *ring_;
  r.next = (env_.rank + 1) % env_.world;
  r.prev = (env_.rank + env_.world - 1) % env_.world;

  // Rendezvous. Under torchrun the agent already serves the store on MASTER_PORT.
  const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(env_.master_port);
  so.isServer = env_.rank == 0 && !(agent && std::string(agent) == "True");
  so.numWorkers = env_.world;
  so.waitWorkers = false;
  so.timeout = dist_timeout();
  r.store = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, so);

  // Listen on an ephemeral port and publish it; then connect to the next rank.
  Socket listener(::socket(AF_INET, SOCK_STREAM, 0));
  int one = 1;
  ::setsockopt(listener.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  const std::string my_ip = local_address_towards(env_.master_addr, env_.master_port);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  ::inet_pton(AF_INET, is_loopback(env_.master_addr) ? "127.0.0.1" : "0.0.0.0", &addr.sin_addr);
  if (::bind(listener.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener.fd(), 4) != 0)
    throw Error(cat("data-parallel: cannot listen: ", std::strerror(errno)));
  socklen_t len = sizeof addr;
  ::getsockname(listener.fd(), reinterpret_cast<sockaddr*>(&addr), &len);
  const std::string prefix = "llmctl/ring/";
  const std::string mine = my_ip + ":" + std::to_string(ntohs(addr.sin_port));
  r.store->set(prefix + std::to_string(env_.rank), std::vector<std::uint8_t>(mine.begin(), mine.end()));

  const std::string peer = r.store->get_to_str(prefix + std::to_string(r.next));  // waits for it
  const auto colon = peer.rfind(':');
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<std::uint16_t>(std::stoi(peer.substr(colon + 1))));
  if (::inet_pton(AF_INET, peer.substr(0, colon).c_str(), &to.sin_addr) != 1)
    throw Error("data-parallel: bad peer address " + peer);
  // Connect and accept in parallel: with two ranks each is the other's next and prev.
  std::string connect_error;
  std::thread connector([&] {
    const auto deadline = std::chrono::steady_clock::now() + dist_timeout();
    while (true) {
      Socket s(::socket(AF_INET, SOCK_STREAM, 0));
      if (::connect(s.fd(), reinterpret_cast<sockaddr*>(&to), sizeof to) == 0) {
        std::int32_t me = env_.rank;
        set_timeouts(s.fd());
        try {
          send_all(s.fd(), &me, sizeof me, r.next);
        } catch (const std::exception& e) {
          connect_error = e.what();
        }
        r.to_next = std::move(s);
        return;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        connect_error = "data-parallel: cannot connect to rank " + std::to_string(r.next) + " at " + peer;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  timeval tv{};
  tv.tv_sec = dist_timeout().count();
  ::setsockopt(listener.fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  int fd = ::accept(listener.fd(), nullptr, nullptr);
  connector.join();
  if (!connect_error.empty()) throw Error(connect_error);
  if (fd < 0) throw Error(cat("data-parallel: rank ", r.prev, " never connected: ", std::strerror(errno)));
  r.from_prev = Socket(fd);
  set_timeouts(fd);
  std::int32_t who = -1;
  recv_all(fd, &who, sizeof who, r.prev);
  if (who != r.prev) throw Error(cat("data-parallel: expected rank ", r.prev, ", got ", who));
  barrier();
}

Communicator::~Communicator() = default;

namespace {

// Ring all-reduce: a reduce-scatter (W-1 steps, each rank adds the chunk it receives) and
// an all-gather (W-1 steps, the finished chunks travel round). Each step sends one chunk
// to the next rank while receiving one from the previous.
template <typename T>
void ring_all_reduce(T* data, std::size_t n, int rank, int world, int to_next, int from_prev, int next, int prev) {
  const std::size_t W = static_cast<std::size_t>(world);
  auto chunk_begin = [&](std::size_t c) { return n * c / W; };
  auto chunk_size = [&](std::size_t c) { return chunk_begin(c + 1) - chunk_begin(c); };
  std::vector<T> incoming((n + W - 1) / W + 1);
  auto mod = [&](long v) { return static_cast<std::size_t>(((v % world) + world) % world); };
  for (int phase = 0; phase < 2; ++phase) {
    for (int s = 0; s < world - 1; ++s) {
      // reduce-scatter sends chunk rank-s and receives rank-s-1; all-gather is shifted by one.
      const std::size_t send_c = phase == 0 ? mod(rank - s) : mod(rank + 1 - s);
      const std::size_t recv_c = phase == 0 ? mod(rank - s - 1) : mod(rank - s);
      std::string send_error;
      std::thread sender([&] {
        try {
          send_all(to_next, data + chunk_begin(send_c), chunk_size(send_c) * sizeof(T), next);
        } catch (const std::exception& e) {
          send_error = e.what();
        }
      });
      try {
        recv_all(from_prev, incoming.data(), chunk_size(recv_c) * sizeof(T), prev);
      } catch (...) {
        sender.join();
        throw;
      }
      sender.join();
      if (!send_error.empty()) throw Error(send_error);
      T* dst = data + chunk_begin(recv_c);
      if (phase == 0)
        for (std::size_t i = 0; i < chunk_size(recv_c); ++i) dst[i] += incoming[i];
      else
        std::copy(incoming.begin(), incoming.begin() + static_cast<long>(chunk_size(recv_c)), dst);
    }
  }
}

}  // namespace

void Communicator::all_reduce_sum(float* data, std::size_t n) {
  if (!ring_) return;
  ring_all_reduce(data, n, env_.rank, env_.world, ring_->to_next.fd(), ring_->from_prev.fd(), ring_->next, ring_->prev);
}

void Communicator::all_reduce_sum(double* data, std::size_t n) {
  if (!ring_) return;
  ring_all_reduce(data, n, env_.rank, env_.world, ring_->to_next.fd(), ring_->from_prev.fd(), ring_->next, ring_->prev);
}

void Communicator::broadcast(float* data, std::size_t n, int root) {
  if (!ring_) return;
  if (env_.rank != root) std::fill(data, data + n, 0.0f);
  all_reduce_sum(data, n);  // x + 0 + ... + 0 == x exactly
}

void Communicator::barrier() {
  double x = 1;
  all_reduce_sum(&x, 1);
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
