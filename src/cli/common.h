#pragma once
// Helpers shared by the subcommands: device/dtype/thread flags and JSON output.
#include <CLI/CLI.hpp>
#include <atomic>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "llmctl/engine/engine.h"
#include "llmctl/engine/sampling.h"

namespace c10 {
struct Device;
}

namespace llmctl::cli {

// Registration of each subcommand (one file per subcommand under src/cli/).
void add_train_tokenizer(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_init(CLI::App& app);
void add_eval(CLI::App& app);
void add_train(CLI::App& app);  // pretrain and sft
void add_chat(CLI::App& app);
void add_bench(CLI::App& app);
void add_serve(CLI::App& app);
void add_convert(CLI::App& app);
void add_quantize(CLI::App& app);
void add_agent(CLI::App& app);

// Flags every model-running subcommand shares.
struct RuntimeFlags {
  std::string device = "cpu";
  std::string dtype = "f32";
  int threads = 0;
  void add_to(CLI::App* sub);
  // Applies --threads (0: all cores) and checks --device is usable.
  void apply() const;
};

// The sampling flags of every generating subcommand (SPEC §3): --temperature --top-p
// --top-k --min-p --repetition-penalty --presence-penalty --frequency-penalty
// --max-new-tokens --seed --stop.
struct SamplingFlags {
  SamplingParams params;
  std::int64_t seed = -1;  // < 0: random
  void add_to(CLI::App* sub);
  // Validated; with `defaults` (the model's generation_config.json), the sampling flags the
  // user did not give take the model's values.
  SamplingParams get(const GenerationDefaults* defaults = nullptr) const;

 private:
  CLI::Option *temperature_ = nullptr, *top_p_ = nullptr, *top_k_ = nullptr, *min_p_ = nullptr,
              *repetition_penalty_ = nullptr;
};

// Engine sizing flags (KV pool, batch limits) plus --device/--dtype/--threads.
struct EngineFlags {
  EngineConfig cfg;
  RuntimeFlags rt;
  bool no_prefix_caching = false;
  void add_to(CLI::App* sub);
  EngineConfig get() const;  // applies the runtime flags too
};

// "1, 2,3" -> {1, 2, 3}; errors name `flag`.
std::vector<int> parse_id_list(const std::string& s, const std::string& flag);

// The process's own command line (for launchers that re-execute the binary).
void set_process_args(int argc, char** argv);
int process_argc();
char** process_argv();

// Thrown to end the program with this exit status and no further message (the message,
// if any, is already printed: e.g. by worker processes).
struct ExitStatus {
  int code;
};

// Ctrl-C for the REPLs (chat, agent): SIGINT sets ctrl_c() instead of killing the process;
// without SA_RESTART a blocked read returns, so the REPL notices at the prompt too.
std::atomic<bool>& ctrl_c();
void install_sigint_handler();
// The next REPL line from stdin (with a "> " prompt on a TTY); false at end of input.
// Ctrl-C at the prompt gives an empty line instead of ending the session.
bool read_repl_line(std::string& line, bool tty);

// Prints one JSON object on stdout (for --json).
void print_json(const nlohmann::json& j);

}  // namespace llmctl::cli
