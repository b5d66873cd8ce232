// llmctl: one binary for the whole life of a small LLM. Each subcommand lives in its own
// file under src/cli/ and only parses flags and prints; the work is in the core library.
#include <torch/torch.h>

#include <iostream>

#include "common.h"
#include "llmctl/util/log.h"
#include "llmctl/util/error.h"
#include "llmctl/util/version.h"

namespace {

// c10 errors carry a C++ backtrace; users get the first line only.
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

}  // namespace

int main(int argc, char** argv) {
  llmctl::log::init(false);
  llmctl::cli::set_process_args(argc, argv);

  CLI::App app{"llmctl: tokenizer training, pretraining, SFT, conversion, quantization and "
               "inference of small LLMs, in one C++ binary."};
  app.set_version_flag("--version", llmctl::version_string());
  app.require_subcommand(1);
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "Debug logging");
  app.parse_complete_callback([&] {
    llmctl::log::init(verbose);
  });

  llmctl::cli::add_train_tokenizer(app);
  llmctl::cli::add_tokenize(app);
  llmctl::cli::add_init(app);
  llmctl::cli::add_eval(app);
  llmctl::cli::add_train(app);
  llmctl::cli::add_chat(app);
  llmctl::cli::add_bench(app);
  llmctl::cli::add_serve(app);
  llmctl::cli::add_convert(app);
  llmctl::cli::add_quantize(app);
  llmctl::cli::add_agent(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const llmctl::cli::ExitStatus& e) {
    return e.code;
  } catch (const CLI::ParseError& e) {
    // Usage errors follow the same contract as every other error: one line, exit 1.
    std::cerr << "llmctl: error: " << first_line(e.what()) << " (see --help)" << std::endl;
    return 1;
  } catch (const llmctl::Error& e) {
    std::cerr << "llmctl: error: " << e.what() << std::endl;
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "llmctl: error: " << first_line(e.what_without_backtrace()) << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "llmctl: error: " << first_line(e.what()) << std::endl;
    return 1;
  }
  return 0;
}
