#include "common.h"

#include <torch/torch.h>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <thread>

#include "llmctl/util/error.h"
#include "llmctl/util/threads.h"

namespace llmctl::cli {

void RuntimeFlags::add_to(CLI::App* sub) {
  sub->add_option("--device", device, "Where to run: cpu, cuda or cuda:N")->capture_default_str();
  sub->add_option("--dtype", dtype, "Compute dtype: f32, bf16 or f16")->capture_default_str();
  sub->add_option("--threads", threads, "CPU threads (0: all cores)")->capture_default_str();
}

void RuntimeFlags::apply() const {
  int n = resolve_threads(threads);
  torch::set_num_threads(n);
  torch::Device d(torch::kCPU);
  try {
    d = torch::Device(device);
  } catch (const std::exception&) {
    throw Error("--device: '" + device + "' is not a device (use cpu, cuda or cuda:N)");
  }
  if (d.is_cuda() && !torch::cuda::is_available())
    throw Error("--device " + device + ": no CUDA GPU is available on this machine");
}

std::vector<int> parse_id_list(const std::string& s, const std::string& flag) {
  std::vector<int> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    auto b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    if (b == std::string::npos) continue;
    item = item.substr(b, e - b + 1);
    std::size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || v < INT32_MIN || v > INT32_MAX) throw Error(flag + ": '" + item + "' is not a token id");
    ids.push_back(static_cast<int>(v));
  }
  if (ids.empty()) throw Error(flag + ": no token ids given");
  return ids;
}

// Token pieces can be half a UTF-8 character; replace those bytes rather than throw.
namespace {
std::atomic<bool> g_ctrl_c{false};
void on_sigint(int) { g_ctrl_c = true; }
}  // namespace

std::atomic<bool>& ctrl_c() { return g_ctrl_c; }

void install_sigint_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  sigaction(SIGINT, &sa, nullptr);
}

bool read_repl_line(std::string& line, bool tty) {
  if (tty) std::fprintf(stderr, "> ");
  ctrl_c() = false;
  if (std::getline(std::cin, line)) return true;
  if (!ctrl_c()) return false;
  std::cin.clear();  // the interrupted read looks like end of input: go on with a fresh line
  std::fprintf(stderr, "\n");
  line.clear();
  return true;
}

void print_json(const nlohmann::json& j) { std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl; }

namespace {
int g_argc = 0;
char** g_argv = nullptr;
}  // namespace

void set_process_args(int argc, char** argv) {
  g_argc = argc;
  g_argv = argv;
}
int process_argc() { return g_argc; }
char** process_argv() { return g_argv; }

}  // namespace llmctl::cli
