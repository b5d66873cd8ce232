// The agent's sandbox against hostile code: each test runs what a misbehaving model could
// write and checks the interpreter is contained and the agent goes on serving.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "llmctl/agent/sandbox.h"
#include "llmctl/util/error.h"

namespace fs = std::filesystem;
using llmctl::agent::ExecResult;
using llmctl::agent::Sandbox;
using llmctl::agent::SandboxConfig;
using Status = ExecResult::Status;

namespace {

bool have_python() { return access("/usr/bin/python3", X_OK) == 0; }

// Bubblewrap when it works here; without it, the tests that do not depend on namespaces
// still run (rlimits and timeouts apply either way).
SandboxConfig test_config(bool need_bwrap, bool* skip, std::string* why) {
  SandboxConfig c;
  c.timeout_s = 5;
  c.memory_mb = 512;
  *skip = !have_python();
  if (*skip) {
    *why = "no /usr/bin/python3";
    return c;
  }
  std::string reason;
  if (!Sandbox::bubblewrap_usable(c, &reason)) {
    c.unsafe_no_sandbox = true;
    if (need_bwrap) {
      *skip = true;
      *why = reason;
    }
  }
  return c;
}

#define SANDBOX_OR_SKIP(var, need_bwrap)               \
  bool skip_ = false;                                  \
  std::string why_;                                    \
  auto cfg_ = test_config(need_bwrap, &skip_, &why_);  \
  if (skip_) GTEST_SKIP() << why_;                     \
  Sandbox var(cfg_)

}  // namespace

TEST(Sandbox, StatePersistsAcrossRuns) {
  SANDBOX_OR_SKIP(sb, false);
  EXPECT_EQ(sb.run("import math\nx = 41\ndef f(a):\n    return a + 1\n").status, Status::Ok);
  EXPECT_EQ(sb.run("x = f(x)").status, Status::Ok);  // reassigned
  auto r = sb.run("print(x, round(math.pi, 3))\nx * 2");
  EXPECT_EQ(r.status, Status::Ok);
  EXPECT_EQ(r.output, "42 3.142\n84\n");  // a final expression is shown, like a notebook
  EXPECT_EQ(sb.run("None").output, "");
}

TEST(Sandbox, ErrorsAreReportedAndStateSurvives) {
  SANDBOX_OR_SKIP(sb, false);
  sb.run("y = 7");
  auto r = sb.run("print('before')\n1 / 0");
  EXPECT_EQ(r.status, Status::Error);
  EXPECT_NE(r.output.find("before"), std::string::npos);
  EXPECT_NE(r.output.find("ZeroDivisionError"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("<cell-"), std::string::npos) << "the traceback names the cell";
  EXPECT_EQ(r.output.find("repl_driver"), std::string::npos) << "no driver frames: " << r.output;
  EXPECT_EQ(sb.run("def broken(:\n  pass").status, Status::Error);
  EXPECT_EQ(sb.run("raise SystemExit(3)").status, Status::Error);  // the REPL stays up
  EXPECT_EQ(sb.run("input()").status, Status::Error);              // stdin is empty, not the agent's
  auto ok = sb.run("print(y)");
  EXPECT_EQ(ok.status, Status::Ok);
  EXPECT_EQ(ok.output, "7\n");
  EXPECT_FALSE(ok.restarted);
}

TEST(Sandbox, NoNetwork) {
  SANDBOX_OR_SKIP(sb, true);
  // A server the code could reach without a network namespace.
  const int srv = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(srv, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(srv, 4), 0);
  socklen_t len = sizeof addr;
  getsockname(srv, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);
  auto r = sb.run("import socket\ns = socket.socket()\ns.settimeout(2)\ntry:\n    s.connect(('127.0.0.1', " +
                  std::to_string(port) +
                  "))\n    print('CONNECTED')\nexcept OSError as e:\n    print('blocked', e)\n"
                  "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    print('CONNECTED')\n"
                  "except OSError as e:\n    print('blocked', e)\n");
  close(srv);
  EXPECT_EQ(r.output.find("CONNECTED"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("blocked"), std::string::npos) << r.output;
}

TEST(Sandbox, WritesStayInTheWorkDir) {
  SANDBOX_OR_SKIP(sb, true);
  const std::string escape = "/tmp/llmctl_sandbox_escape_" + std::to_string(getpid());
  fs::remove(escape);
  auto r = sb.run(
      "import os\nopen('result.txt', 'w').write('kept')\n"
      "for p in ['/usr/llmctl_x', '/etc/llmctl_x', '" + escape + "']:\n"
      "    try:\n        open(p, 'w').write('x')\n        print('wrote', p)\n"
      "    except OSError as e:\n        print('refused', p, e.errno)\n");
  EXPECT_EQ(r.status, Status::Ok) << r.output;
  EXPECT_EQ(r.output.find("wrote /usr"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("wrote /etc"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(escape)) << "the sandbox's /tmp is its own";
  std::ifstream kept(sb.workdir() + "/result.txt");
  std::string s;
  kept >> s;
  EXPECT_EQ(s, "kept");
}

TEST(Sandbox, SeesNoSecretsOrParentEnvironment) {
  SANDBOX_OR_SKIP(sb, true);
  setenv("LLMCTL_TEST_SECRET", "hunter2-secret", 1);
  sb.restart();  // the environment is read at start
  const char* src = std::getenv("LLMCTL_SOURCE_DIR");
  const std::string project = src ? src : fs::current_path().string();
  auto r = sb.run(
      "import os, glob\nprint(sorted(os.environ))\n"
      "print('ssh', glob.glob(os.path.expanduser('~/.ssh/*')) + glob.glob('/root/.ssh/*') + glob.glob('/home/*/.ssh/*'))\n"
      "print('project', os.path.exists('" + project + "'))\n"
      "for pid in os.listdir('/proc'):\n"
      "    if pid.isdigit():\n"
      "        try:\n            print(open('/proc/%s/environ' % pid, 'rb').read())\n"
      "        except OSError:\n            pass\n");
  unsetenv("LLMCTL_TEST_SECRET");
  EXPECT_EQ(r.status, Status::Ok) << r.output;
  EXPECT_EQ(r.output.find("hunter2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ssh []"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("project False"), std::string::npos) << r.output;
}

TEST(Sandbox, InfiniteLoopIsKilledAtTheTimeout) {
  SANDBOX_OR_SKIP(sb, false);
  sb.run("z = 1");
  auto r = sb.run("while True:\n    pass\n");
  EXPECT_EQ(r.status, Status::Timeout);
  EXPECT_TRUE(r.restarted);
  EXPECT_LT(r.seconds, 15);
  EXPECT_NE(r.output.find("state"), std::string::npos) << "the model is told its state is gone";
  auto after = sb.run("print('alive')\nz");
  EXPECT_EQ(after.status, Status::Error);  // a fresh interpreter: z is gone
  EXPECT_NE(after.output.find("alive"), std::string::npos);
  EXPECT_NE(after.output.find("NameError"), std::string::npos);
}

TEST(Sandbox, ForkBombIsContained) {
  SANDBOX_OR_SKIP(sb, false);
  auto r = sb.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n");
  EXPECT_NE(r.status, Status::Ok);
  auto after = sb.run("print(6 * 7)");
  EXPECT_EQ(after.status, Status::Ok);
  EXPECT_EQ(after.output, "42\n");
}

TEST(Sandbox, HugeOutputIsCut) {
  bool skip = false;
  std::string why;
  auto cfg = test_config(false, &skip, &why);
  if (skip) GTEST_SKIP() << why;
  cfg.timeout_s = 60;
  cfg.output_limit = 8192;
  Sandbox sb(cfg);
  auto r = sb.run("import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)\nprint('done')");
  ASSERT_EQ(r.status, Status::Ok) << r.output.substr(0, 300);
  EXPECT_TRUE(r.truncated);
  EXPECT_EQ(r.output_bytes, (std::size_t{1} << 30) + 5);
  EXPECT_LT(r.output.size(), 8192u + 200);
  EXPECT_NE(r.output.find("output cut"), std::string::npos);
  EXPECT_EQ(sb.run("print('next')").output, "next\n");
}

TEST(Sandbox, MemoryHogGetsMemoryError) {
  SANDBOX_OR_SKIP(sb, false);
  sb.run("keep = 5");
  auto r = sb.run("x = bytearray(4 * 1024 ** 3)");
  EXPECT_EQ(r.status, Status::Error);
  EXPECT_NE(r.output.find("MemoryError"), std::string::npos) << r.output;
  EXPECT_FALSE(r.restarted);
  EXPECT_EQ(sb.run("print(keep)").output, "5\n");
}

TEST(Sandbox, CrashesAndProtocolAbuseRestartTheInterpreter) {
  SANDBOX_OR_SKIP(sb, false);
  auto r = sb.run("import os\nos._exit(3)");
  EXPECT_EQ(r.status, Status::Crashed);
  EXPECT_TRUE(r.restarted);
  EXPECT_NE(r.output.find("status 3"), std::string::npos) << r.output;
  auto forged = sb.run("import os\nos.write(4, b'{\"forged\": 1}\\n')\nimport time\ntime.sleep(1)");
  EXPECT_EQ(forged.status, Status::Crashed) << forged.output;
  EXPECT_EQ(sb.run("print('ok')").output, "ok\n");
}

TEST(Sandbox, ToolsAreLoadedAndSurviveRestarts) {
  SANDBOX_OR_SKIP(sb, false);
  const auto stubs = sb.load_tools(
      "import math\ndef derivative(f, x, h=1e-5):\n    \"\"\"Central difference.\"\"\"\n"
      "    return (f(x + h) - f(x - h)) / (2 * h)\ndef _private():\n    pass\n");
  EXPECT_NE(stubs.find("def derivative(f, x, h=1e-05):"), std::string::npos) << stubs;
  EXPECT_NE(stubs.find("Central difference."), std::string::npos);
  EXPECT_EQ(stubs.find("_private"), std::string::npos);
  EXPECT_EQ(sb.run("while True: pass").status, Status::Timeout);
  auto r = sb.run("print(round(derivative(lambda t: t * math.log(t), math.pi), 4))");
  EXPECT_EQ(r.output, "2.1447\n");
  EXPECT_THROW(sb.load_tools("def broken(:"), llmctl::Error);
}

TEST(Sandbox, CtrlCKillsTheRunningCodeAndTheNextRunWorks) {
  bool skip = false;
  std::string why;
  auto cfg = test_config(false, &skip, &why);
  if (skip) GTEST_SKIP() << why;
  std::atomic<bool> interrupt{false};
  cfg.timeout_s = 60;
  cfg.interrupt = &interrupt;
  Sandbox sb(cfg);
  std::thread ctrl_c([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    interrupt = true;
  });
  auto r = sb.run("while True:\n    pass\n");
  ctrl_c.join();
  EXPECT_EQ(r.status, Status::Interrupted);
  EXPECT_TRUE(r.restarted);
  EXPECT_LT(r.seconds, 10);
  EXPECT_NE(r.output.find("Ctrl-C"), std::string::npos) << r.output;
  interrupt = false;
  EXPECT_EQ(sb.run("print('back')").output, "back\n");
}
