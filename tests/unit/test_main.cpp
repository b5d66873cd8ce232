#include <execinfo.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <csignal>

// A crash prints the stack (binary+offset frames, for addr2line) before the process dies,
// so a segfault on a machine without a debugger still says where it happened.
extern "C" void print_stack_and_die(int sig) {
  void* frames[64];
  const int n = backtrace(frames, 64);
  const char msg[] = "\n*** fatal signal; stack:\n";
  (void)!write(STDERR_FILENO, msg, sizeof msg - 1);
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

int main(int argc, char** argv) {
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) std::signal(sig, print_stack_and_die);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
