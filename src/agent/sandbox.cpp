#include "llmctl/agent/sandbox.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "llmctl/util/clock.h"
#include "llmctl/util/error.h"

namespace llmctl::agent {

const char* python_driver();  // src/agent/repl_driver.py, embedded at build time

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr uid_t kNobody = 65534;  // the uid/gid code runs as when the agent is root
constexpr const char* kSandboxWorkdir = "/workspace";


// The binary `name` resolves to on PATH (or `name` itself when it has a slash); "" if none.
std::string which(const std::string& name) {
  if (name.find('/') != std::string::npos) return access(name.c_str(), X_OK) == 0 ? name : "";
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= dirs.size()) {
    const auto end = std::min(dirs.find(':', start), dirs.size());
    const std::string cand = dirs.substr(start, end - start) + "/" + name;
    if (end > start && access(cand.c_str(), X_OK) == 0) return cand;
    start = end + 1;
  }
  return "";
}

// Processes `uid` already runs: RLIMIT_NPROC counts them too, so the sandbox's own budget
// is added on top when the agent keeps its (non-root) uid.
long processes_of(uid_t uid) {
  long n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    struct stat st {};
    const auto name = e.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    if (stat(e.path().c_str(), &st) == 0 && st.st_uid == uid) ++n;
  }
  return n;
}

void set_limit(int resource, rlim_t value) {
  struct rlimit rl {value, value};
  setrlimit(resource, &rl);
}

// In a forked child, before exec: become uid/gid nobody for good (system calls only).
bool become_nobody() { return setgroups(0, nullptr) == 0 && setgid(kNobody) == 0 && setuid(kNobody) == 0; }

void close_fd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

// Reads what is there without blocking; false on EOF or error.
bool read_available(int fd, std::string& into, std::size_t keep_at_most, std::size_t& total) {
  char buf[65536];
  while (true) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
      total += static_cast<std::size_t>(n);
      if (into.size() < keep_at_most)
        into.append(buf, std::min<std::size_t>(static_cast<std::size_t>(n), keep_at_most - into.size()));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }
}

// Cuts `s` back to a whole UTF-8 character, so a capped output never ends mid-character.
void trim_partial_utf8(std::string& s) {
  std::size_t i = s.size(), back = 0;
  while (i > 0 && back < 4 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) --i, ++back;
  if (i == 0) return;
  const auto lead = static_cast<unsigned char>(s[i - 1]);
  const std::size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
  if (need > back + 1) s.resize(i - 1);
}

// What the model sees of `kept` (the first bytes of `total` printed): whole characters,
// and a note when the rest was cut.
void set_output(ExecResult& res, std::string kept, std::size_t total) {
  res.output_bytes = total;
  res.truncated = total > kept.size();
  trim_partial_utf8(kept);
  res.output = std::move(kept);
  if (res.truncated)
    res.output += "\n[output cut: " + std::to_string(total) + " bytes in all, only the first " +
                  std::to_string(res.output.size()) + " shown]";
}

std::string octal_mode(mode_t m) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%03o", static_cast<unsigned>(m & 0777));
  return buf;
}

std::string describe_exit(int status) {
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    if (sig == SIGXCPU) return "it used up its CPU time limit";
    if (sig == SIGKILL) return "it was killed (SIGKILL: out of memory?)";
    return std::string("it was killed by signal ") + strsignal(sig);
  }
  if (WIFEXITED(status)) return "it exited with status " + std::to_string(WEXITSTATUS(status));
  return "it stopped";
}

}  // namespace

const char* status_name(ExecResult::Status s) {
  switch (s) {
    case ExecResult::Status::Ok: return "ok";
    case ExecResult::Status::Error: return "error";
    case ExecResult::Status::Timeout: return "timeout";
    case ExecResult::Status::Crashed: return "crashed";
    case ExecResult::Status::Interrupted: return "interrupted";
  }
  return "?";
}

Sandbox::Sandbox(SandboxConfig cfg) : cfg_(std::move(cfg)) {
  if (access(cfg_.python.c_str(), X_OK) != 0) throw Error("--python " + cfg_.python + ": not an executable");
  if (!cfg_.unsafe_no_sandbox) {
    std::string why;
    if (!bubblewrap_usable(cfg_, &why))
      throw Error("cannot sandbox the code interpreter: " + why +
                  ". Install Debian's bubblewrap (tools/install-deps.sh does), or pass --unsafe-no-sandbox "
                  "to run model-written code with only rlimits and timeouts (no isolation)");
    cfg_.bwrap = which(cfg_.bwrap);
  }
  if (cfg_.workdir.empty()) {
    std::string tmpl = (fs::temp_directory_path() / "llmctl-agent-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw Error("cannot create a work dir in " + fs::temp_directory_path().string());
    workdir_ = tmpl;
    own_workdir_ = true;
  } else {
    std::error_code ec;
    fs::create_directories(cfg_.workdir, ec);
    if (!fs::is_directory(cfg_.workdir)) throw Error("--workdir " + cfg_.workdir + ": not a directory");
    workdir_ = fs::absolute(cfg_.workdir).lexically_normal().string();
  }
  // The code runs as nobody when we are root: the work dir must be its to write, and
  // bubblewrap (also nobody) must be able to reach it.
  if (geteuid() == 0) {
    if (chown(workdir_.c_str(), kNobody, kNobody) != 0)
      throw Error("cannot hand the work dir " + workdir_ + " to uid " + std::to_string(kNobody));
    for (auto p = fs::path(workdir_).parent_path(); sandboxed() && !p.empty(); p = p.parent_path()) {
      struct stat st {};
      if (stat(p.c_str(), &st) == 0 && !(st.st_mode & S_IXOTH) && st.st_uid != kNobody)
        throw Error("--workdir " + workdir_ + ": the sandbox runs code as uid " + std::to_string(kNobody) + ", which cannot enter " +
                    p.string() + " (mode " + octal_mode(st.st_mode) + "); choose a dir it can reach, e.g. under /tmp");
      if (p == p.root_path()) break;
    }
  }
  // A dead interpreter must not kill the agent when it writes the next command.
  std::signal(SIGPIPE, SIG_IGN);
}

Sandbox::~Sandbox() {
  stop();
  if (own_workdir_) {
    std::error_code ec;
    fs::remove_all(workdir_, ec);
  }
}

bool Sandbox::bubblewrap_usable(const SandboxConfig& cfg, std::string* why) {
  const std::string bwrap = which(cfg.bwrap);
  if (bwrap.empty()) {
    *why = "bubblewrap ('" + cfg.bwrap + "') is not installed";
    return false;
  }
  // Try it once, as the sandbox will run it: some containers forbid user namespaces.
  int err[2];
  if (pipe2(err, O_CLOEXEC) != 0) throw Error(std::string("pipe: ") + std::strerror(errno));
  const std::vector<std::string> args = {bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
                                         "--die-with-parent", "--ro-bind", "/", "/", "--", cfg.python, "-c", "pass"};
  std::vector<char*> argv;
  for (const auto& s : args) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  const bool drop_root = geteuid() == 0;
  const pid_t pid = fork();
  if (pid < 0) throw Error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    dup2(err[1], 2);
    if (drop_root && !become_nobody()) _exit(126);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(err[1]);
  std::string message;
  char buf[512];
  ssize_t n;
  while ((n = read(err[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
    if (n > 0 && message.size() < 2000) message.append(buf, static_cast<std::size_t>(n));
  close(err[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return true;
  while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
  *why = bwrap + " cannot create namespaces here (" + (message.empty() ? describe_exit(status) : message) + ")";
  return false;
}

std::string Sandbox::describe() const {
  std::string s = sandboxed() ? "bubblewrap sandbox (no network, read-only system, private /workspace)"
                              : "NO SANDBOX (--unsafe-no-sandbox): only rlimits and timeouts";
  s += "; work dir " + workdir_ + "; " + std::to_string(static_cast<int>(cfg_.timeout_s)) + " s per run, " +
       std::to_string(cfg_.memory_mb) + " MB memory";
  if (geteuid() == 0) s += "; runs as uid " + std::to_string(kNobody);
  return s;
}

std::vector<std::string> Sandbox::command_line() const {
  std::vector<std::string> python = {cfg_.python, "-I", "-u", "-c", python_driver()};
  if (!sandboxed()) return python;
  std::vector<std::string> a = {cfg_.bwrap,       "--unshare-user", "--unshare-pid", "--unshare-net",
                                "--unshare-ipc",  "--unshare-uts",  "--unshare-cgroup-try",
                                "--die-with-parent", "--hostname",  "sandbox",       "--ro-bind", "/usr", "/usr"};
  // The usual top-level system dirs: symlinks (merged /usr) stay symlinks, dirs are bound
  // read-only. Homes, /root, /tmp, /run, /var, /opt and the user's files are not there.
  for (const char* d : {"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}) {
    std::error_code ec;
    const auto st = fs::symlink_status(d, ec);
    if (ec || !fs::exists(st)) continue;
    if (fs::is_symlink(st)) a.insert(a.end(), {"--symlink", fs::read_symlink(d, ec).string(), d});
    else a.insert(a.end(), {"--ro-bind", d, d});
  }
  a.insert(a.end(), {"--ro-bind", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"});
  // An interpreter installed outside /usr (pyenv, a venv): its prefix, read-only.
  const auto py = fs::weakly_canonical(cfg_.python).parent_path().parent_path().string();
  if (py.rfind("/usr", 0) != 0 && py != "/") a.insert(a.end(), {"--ro-bind", py, py});
  a.insert(a.end(), {"--bind", workdir_, kSandboxWorkdir, "--chdir", kSandboxWorkdir, "--clearenv",
                     "--setenv", "HOME", kSandboxWorkdir, "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
                     "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--"});
  a.insert(a.end(), python.begin(), python.end());
  return a;
}

void Sandbox::start() {
  stop();
  int cmd[2], res[2], out[2];
  if (pipe2(cmd, O_CLOEXEC) != 0 || pipe2(res, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0)
    throw Error(std::string("cannot create pipes for the interpreter: ") + std::strerror(errno));
  // Everything the child needs is prepared before fork: after it, only system calls.
  const auto args = command_line();
  std::vector<char*> argv;
  for (const auto& s : args) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_s = {"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=" + workdir_};
  std::vector<char*> envp;
  for (auto& s : env_s) envp.push_back(s.data());
  envp.push_back(nullptr);
  const bool drop_root = geteuid() == 0;
  const long nproc = drop_root ? cfg_.processes : processes_of(geteuid()) + cfg_.processes;
  const std::string cwd = workdir_;
  const int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);

  const pid_t pid = fork();
  if (pid < 0) throw Error(std::string("cannot start the interpreter: fork: ") + std::strerror(errno));
  if (pid == 0) {
    setsid();  // its own process group: a timeout kills all of it
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    // Move the ends it keeps above 10 first: dup2 onto the same number would keep O_CLOEXEC,
    // and onto a lower one could clobber another end still to be placed.
    const int in_fd = fcntl(devnull, F_DUPFD, 10), out_w = fcntl(out[1], F_DUPFD, 10);
    const int cmd_r = fcntl(cmd[0], F_DUPFD, 10), res_w = fcntl(res[1], F_DUPFD, 10);
    if (in_fd < 0 || out_w < 0 || cmd_r < 0 || res_w < 0) _exit(126);
    dup2(in_fd, 0);
    dup2(out_w, 1);
    dup2(out_w, 2);
    dup2(cmd_r, 3);
    dup2(res_w, 4);
    for (int fd = 5; fd < 1024; ++fd) close(fd);
    if (chdir(cwd.c_str()) != 0) _exit(126);  // while still root (unsafe mode keeps this cwd)
    set_limit(RLIMIT_CORE, 0);
    set_limit(RLIMIT_AS, static_cast<rlim_t>(cfg_.memory_mb) << 20);
    set_limit(RLIMIT_FSIZE, static_cast<rlim_t>(cfg_.file_mb) << 20);
    set_limit(RLIMIT_NOFILE, static_cast<rlim_t>(cfg_.open_files));
    set_limit(RLIMIT_NPROC, static_cast<rlim_t>(nproc));
    struct rlimit cpu {static_cast<rlim_t>(cfg_.cpu_s), RLIM_INFINITY};
    setrlimit(RLIMIT_CPU, &cpu);
    // Root is exempt from RLIMIT_NPROC and may read everything: drop to nobody for good.
    if (drop_root && !become_nobody()) _exit(126);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  close(devnull);
  close(cmd[0]);
  close(res[1]);
  close(out[1]);
  pid_ = pid;
  cmd_fd_ = cmd[1];
  res_fd_ = res[0];
  out_fd_ = out[0];
  fcntl(res_fd_, F_SETFL, O_NONBLOCK);
  fcntl(out_fd_, F_SETFL, O_NONBLOCK);
  fcntl(cmd_fd_, F_SETFL, O_NONBLOCK);
}

void Sandbox::stop() {
  if (pid_ > 0) {
    kill(-pid_, SIGKILL);  // the process group
    kill(pid_, SIGKILL);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
  pid_ = -1;
  close_fd(cmd_fd_);
  close_fd(res_fd_);
  close_fd(out_fd_);
}

void Sandbox::restart() {
  start();  // stops the old one first
  if (!tools_source_.empty()) {
    Reply r;
    execute("tools", tools_source_, &r);
  }
}

std::string Sandbox::load_tools(const std::string& source) {
  Reply r;
  const auto res = execute("tools", source, &r);
  if (res.status != ExecResult::Status::Ok) throw Error("loading the tools failed:\n" + res.output);
  tools_source_ = source;
  return r.stubs;
}

ExecResult Sandbox::run(const std::string& code) {
  Reply r;
  return execute("exec", code, &r);
}

ExecResult Sandbox::execute(const std::string& op, const std::string& code, Reply* reply) {
  ExecResult res;
  if (pid_ <= 0) {
    if (op == "exec") restart();  // with the tools loaded
    else start();
  }
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg_.timeout_s));
  // Leftovers of an earlier run (a background process still printing) are not this run's.
  std::string scratch;
  std::size_t ignored = 0;
  read_available(out_fd_, scratch, 0, ignored);

  std::string request = json{{"op", op}, {"code", code}, {"cpu_s", cfg_.cpu_s}}.dump() + "\n";
  std::string res_buf, out;
  std::size_t sent = 0, total = 0;
  bool res_eof = false, timed_out = false, interrupted = false;
  while (true) {
    if (res_buf.find('\n') != std::string::npos || res_eof) break;
    if (cfg_.interrupt && cfg_.interrupt->load()) {
      interrupted = true;
      break;
    }
    const auto left_ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left_ms <= 0) {
      timed_out = true;
      break;
    }
    pollfd fds[3] = {{res_fd_, POLLIN, 0}, {out_fd_, POLLIN, 0}, {cmd_fd_, POLLOUT, 0}};
    const int nfds = sent < request.size() ? 3 : 2;
    if (poll(fds, nfds, static_cast<int>(std::min<long long>(left_ms, 100))) < 0 && errno != EINTR)
      throw Error(std::string("poll: ") + std::strerror(errno));
    if (nfds == 3 && (fds[2].revents & (POLLOUT | POLLERR | POLLHUP))) {
      const ssize_t n = write(cmd_fd_, request.data() + sent, request.size() - sent);
      if (n > 0) sent += static_cast<std::size_t>(n);
      else if (n < 0 && errno == EPIPE) res_eof = true;
    }
    if (fds[1].revents) read_available(out_fd_, out, cfg_.output_limit, total);
    if (fds[0].revents) {
      std::size_t n = 0;
      if (!read_available(res_fd_, res_buf, 1 << 20, n)) res_eof = res_buf.find('\n') == std::string::npos;
    }
  }
  res.seconds = seconds_since(t0);

  json answer;
  if (!timed_out && !interrupted && !res_eof) answer = json::parse(res_buf.substr(0, res_buf.find('\n')), nullptr, false);
  const bool answered = answer.is_object() && answer.contains("ok");
  if (answered) {
    read_available(out_fd_, out, cfg_.output_limit, total);  // what it printed just before answering
    reply->ok = answer["ok"].is_boolean() && answer["ok"].get<bool>();
    if (answer.contains("stubs") && answer["stubs"].is_string()) reply->stubs = answer["stubs"].get<std::string>();
    res.status = reply->ok ? ExecResult::Status::Ok : ExecResult::Status::Error;
  } else {
    // Timed out, or the interpreter died (or garbled its answer): end all of it.
    std::string why;
    if (interrupted) {
      why = "the user interrupted the code (Ctrl-C)";
      res.status = ExecResult::Status::Interrupted;
    } else if (timed_out) {
      why = "the code ran longer than " + std::to_string(static_cast<int>(cfg_.timeout_s)) + " s and was killed";
      res.status = ExecResult::Status::Timeout;
    } else {
      // It usually has exited already; give it a moment before deciding it hangs.
      int status = 0;
      bool reaped = false;
      for (int i = 0; i < 200 && !reaped; ++i) {
        reaped = waitpid(pid_, &status, WNOHANG) == pid_;
        if (!reaped) usleep(10000);
      }
      if (reaped) pid_ = -1;
      why = "the interpreter died: " + (reaped ? describe_exit(status) : std::string("it broke the protocol"));
      res.status = ExecResult::Status::Crashed;
    }
    read_available(out_fd_, out, cfg_.output_limit, total);
    stop();
    res.restarted = true;
    set_output(res, std::move(out), total);
    if (!res.output.empty() && res.output.back() != '\n') res.output += '\n';
    res.output += "[" + why + "; the interpreter was restarted and its state is lost (all variables, imports and functions)" +
                  (tools_source_.empty() ? std::string("") : " (the tools were loaded again)") + "]";
    return res;
  }
  set_output(res, std::move(out), total);
  return res;
}

}  // namespace llmctl::agent
