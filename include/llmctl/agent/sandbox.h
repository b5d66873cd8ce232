#pragma once
// A persistent Python interpreter for model-written code, run as a child process under
// bubblewrap: new user/pid/net/ipc/uts namespaces (no network), a read-only view of the
// system directories, one writable work dir, cleared environment, rlimits, and a non-root
// uid when the agent runs as root. Each execution has a wall-clock timeout that kills the
// whole sandbox; the next execution starts a fresh interpreter (state lost, said so).
// Not thread-safe: one caller drives it.
#include <sys/types.h>

#include <atomic>
#include <string>
#include <vector>

namespace llmctl::agent {

struct SandboxConfig {
  std::string python = "/usr/bin/python3";  // the interpreter (inside the sandbox too)
  std::string workdir;                      // writable dir the code sees as its cwd; "": a fresh temp dir
  double timeout_s = 30;                    // wall clock per execution
  int cpu_s = 60;                           // CPU seconds per execution (RLIMIT_CPU, moved per run)
  std::size_t output_limit = 8192;          // bytes of stdout+stderr kept per execution
  long memory_mb = 1024;                    // RLIMIT_AS
  long file_mb = 64;                        // RLIMIT_FSIZE: largest file the code may write
  long open_files = 256;                    // RLIMIT_NOFILE
  long processes = 64;                      // RLIMIT_NPROC (for the sandbox's uid)
  bool unsafe_no_sandbox = false;           // run without bubblewrap (rlimits and timeouts stay)
  std::string bwrap = "bwrap";              // bubblewrap binary (looked up on PATH)
  const std::atomic<bool>* interrupt = nullptr;  // set (Ctrl-C): the running execution is killed
};

struct ExecResult {
  enum class Status { Ok, Error, Timeout, Crashed, Interrupted };
  Status status = Status::Ok;
  std::string output;            // stdout+stderr as the model should see it (capped, with notes)
  std::size_t output_bytes = 0;  // everything the code printed
  bool truncated = false;
  bool restarted = false;        // the interpreter died: variables, imports, functions are gone
  double seconds = 0;
};

const char* status_name(ExecResult::Status s);

class Sandbox {
 public:
  explicit Sandbox(SandboxConfig cfg);
  ~Sandbox();
  Sandbox(const Sandbox&) = delete;
  Sandbox& operator=(const Sandbox&) = delete;

  // Runs one cell of code in the persistent interpreter (starting it if needed).
  ExecResult run(const std::string& code);
  // Loads tool definitions (re-run after every restart) and returns their stubs
  // (signature + docstring) for the system prompt.
  std::string load_tools(const std::string& source);
  // Forgets all state: a fresh interpreter with the tools loaded again.
  void restart();

  const std::string& workdir() const { return workdir_; }
  bool sandboxed() const { return !cfg_.unsafe_no_sandbox; }
  // One line on how code is isolated, for the user.
  std::string describe() const;

  // Whether bubblewrap can build the sandbox on this machine; `why` says why not.
  static bool bubblewrap_usable(const SandboxConfig& cfg, std::string* why);

 private:
  struct Reply {
    bool ok = false;
    std::string stubs;
  };
  void start();
  void stop();
  ExecResult execute(const std::string& op, const std::string& code, Reply* reply);
  std::vector<std::string> command_line() const;

  SandboxConfig cfg_;
  std::string workdir_;
  bool own_workdir_ = false;
  std::string tools_source_;
  pid_t pid_ = -1;
  int cmd_fd_ = -1, res_fd_ = -1, out_fd_ = -1;
};

}  // namespace llmctl::agent
