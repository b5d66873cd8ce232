#include "llmctl/train/trainer.h"

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>
#if defined(__GLIBC__)
#endif

#include "llmctl/io/model_dir.h"
#include "llmctl/kernels/cross_entropy.h"
#include "llmctl/train/distributed.h"
#include "llmctl/util/memory.h"
#include "llmctl/train/schedule.h"
#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"
#include "llmctl/util/log.h"
#include "llmctl/util/progress.h"
#include "llmctl/util/threads.h"

namespace fs = std::filesystem;

namespace llmctl {
namespace {

constexpr std::int64_t kIgnore = -100;

struct Batch {
  torch::Tensor input, target;  // [B, L] int64; target is kIgnore where not trained on
  std::int64_t targets = 0;     // number of trained-on positions
};

// Builds a batch from samples (padded on the right to the longest one).
Batch make_batch(const TokenizedData& d, const std::vector<std::uint64_t>& samples, std::int64_t pad_id) {
  std::int64_t L = 1;
  for (auto s : samples) L = std::max<std::int64_t>(L, d.length[s] - 1);
  const auto B = static_cast<std::int64_t>(samples.size());
  Batch b;
  b.input = torch::full({B, L}, pad_id, torch::kInt64);
  b.target = torch::full({B, L}, kIgnore, torch::kInt64);
  auto in = b.input.accessor<std::int64_t, 2>();
  auto tg = b.target.accessor<std::int64_t, 2>();
  for (std::int64_t i = 0; i < B; ++i) {
    const auto begin = d.begin[samples[i]];
    const std::int64_t n = d.length[samples[i]];
    for (std::int64_t t = 0; t + 1 < n; ++t) {
      in[i][t] = d.tokens[begin + t];
      if (d.mask[begin + t + 1]) {
        tg[i][t] = d.tokens[begin + t + 1];
        ++b.targets;
      }
    }
  }
  return b;
}

// Autocast on for the scope (bf16 on CPU or CUDA); the weights stay fp32.
class AutocastScope {
 public:
  AutocastScope(bool on, c10::DeviceType dev) : on_(on), dev_(dev) {
    if (on_) {
      at::autocast::set_autocast_dtype(dev_, at::kBFloat16);
      at::autocast::set_autocast_enabled(dev_, true);
    }
  }
  ~AutocastScope() {
    if (on_) {
      at::autocast::set_autocast_enabled(dev_, false);
      at::autocast::clear_cache();
    }
  }

 private:
  bool on_;
  c10::DeviceType dev_;
};

// Sum of token cross-entropies over the batch's targets (fp32 log-softmax). The vocabulary
// projection is computed only at positions that are trained on: in SFT most positions are
// prompt (no loss), and the projection is the largest matmul of a small model.
torch::Tensor loss_sum(CausalLM& model, const Batch& b, const torch::Device& dev, bool bf16) {
  AutocastScope ac(bf16, dev.type());
  auto hidden = model->hidden_states(b.input.to(dev));
  hidden = hidden.reshape({-1, hidden.size(-1)});
  auto target = b.target.to(dev).view({-1});
  if (b.targets < target.numel()) {
    auto keep = target.ne(kIgnore).nonzero().squeeze(1);
    hidden = hidden.index_select(0, keep);
    target = target.index_select(0, keep);
  }
  return kernels::cross_entropy_sum(model->logits(hidden), target);
}

// Which sample of the data the g-th sample drawn in the run is: a fresh seeded
// permutation every epoch, so the order depends only on (seed, g) and resumes exactly.
class SampleOrder {
 public:
  SampleOrder(std::uint64_t n, std::uint64_t seed) : n_(n), seed_(seed) {}
  std::uint64_t operator()(std::uint64_t g) {
    const auto epoch = g / n_;
    if (epoch != epoch_ || order_.empty()) {
      order_ = epoch_order(n_, seed_, epoch);
      epoch_ = epoch;
    }
    return order_[g % n_];
  }

 private:
  std::uint64_t n_, seed_, epoch_ = 0;
  std::vector<std::uint64_t> order_;
};

std::int64_t checkpoint_step(const fs::path& p) {
  const std::string name = p.filename().string();
  if (name.rfind("checkpoint-", 0) != 0) return -1;
  try {
    std::size_t used = 0;
    auto v = std::stoll(name.substr(11), &used);
    return used == name.size() - 11 ? v : -1;
  } catch (const std::exception&) {
    return -1;
  }
}

// Complete checkpoints (those with trainer_state.json), oldest first.
std::vector<std::pair<std::int64_t, std::string>> list_checkpoints(const std::string& out) {
  std::vector<std::pair<std::int64_t, std::string>> v;
  if (!fs::is_directory(out)) return v;
  for (const auto& e : fs::directory_iterator(out)) {
    auto step = checkpoint_step(e.path());
    if (step >= 0 && fs::exists(e.path() / "trainer_state.json")) v.emplace_back(step, e.path().string());
  }
  std::sort(v.begin(), v.end());
  return v;
}

nlohmann::json options_json(const TrainOptions& o) {
  return {{"mode", o.mode == SampleMode::Pretrain ? "pretrain" : "sft"},
          {"data", o.data},
          {"eval_data", o.eval_data},
          {"init_model", o.init_model},
          {"model_config", o.model_config},
          {"tokenizer", o.tokenizer},
          {"seq_len", o.seq_len},
          {"batch_size", o.batch_size},
          {"grad_accum", o.grad_accum},
          {"lr", o.lr},
          {"min_lr_ratio", o.min_lr_ratio},
          {"warmup_steps", o.warmup_steps},
          {"weight_decay", o.weight_decay},
          {"betas", {o.beta1, o.beta2}},
          {"adam_eps", o.adam_eps},
          {"grad_clip", o.grad_clip},
          {"max_steps", o.max_steps},
          {"epochs", o.epochs},
          {"dtype", o.dtype},
          {"device", o.device},
          {"save_every", o.save_every},
          {"eval_every", o.eval_every},
          {"keep_last", o.keep_last},
          {"seed", o.seed}};
}

// Keeps the metrics lines up to `step` (used on resume so the curve has no duplicates).
void truncate_metrics(const std::string& path, std::int64_t step) {
  if (!path_exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.value("step", std::int64_t{0}) <= step) kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

// Sums `tensors` (all fp32 or all castable to it) over the ranks, in place, in one
// flattened message; undefined tensors are skipped.
void all_reduce_tensors(Communicator& comm, const std::vector<torch::Tensor>& tensors, bool broadcast_from_main = false) {
  if (comm.world() == 1) return;
  std::vector<torch::Tensor> parts;
  for (const auto& t : tensors)
    if (t.defined()) parts.push_back(t.detach().to(torch::kCPU, torch::kFloat32).reshape(-1));
  auto flat = torch::cat(parts);
  const auto n = flat.numel();
  if (broadcast_from_main)
    comm.broadcast(flat.data_ptr<float>(), static_cast<std::size_t>(n), 0);
  else
    comm.all_reduce_sum(flat.data_ptr<float>(), static_cast<std::size_t>(n));
  std::int64_t off = 0;
  torch::NoGradGuard ng;
  for (const auto& t : tensors)
    if (t.defined()) {
      auto v = t;  // shares storage
      v.copy_(flat.narrow(0, off, t.numel()).view(t.sizes()));
      off += t.numel();
    }
}

}  // namespace

TrainResult train(const TrainOptions& opt) {
  if (opt.out_dir.empty()) throw Error("--out is required");
  if (opt.batch_size < 1) throw Error("--batch-size must be at least 1");
  if (opt.grad_accum < 1) throw Error("--grad-accum must be at least 1");
  if (!(opt.lr > 0)) throw Error("--lr must be positive");
  if (opt.dtype != "bf16" && opt.dtype != "f32") throw Error("--dtype must be bf16 or f32 for training");
  const int threads = resolve_threads(opt.threads);
  torch::set_num_threads(threads);
  keep_freed_memory_for_reuse();
  const DistEnv denv = DistEnv::from_env();
  torch::Device dev(opt.device);
  if (dev.is_cuda() && !torch::cuda::is_available()) throw Error("--device " + opt.device + ": no CUDA GPU available");
  if (dev.is_cuda() && !dev.has_index() && denv.world > 1) {
    // One GPU per local rank unless one is named, as torchrun lays processes out; with
    // fewer GPUs than local ranks they share (gradients are summed on the host by Gloo).
    const auto gpus = static_cast<int>(torch::cuda::device_count());
    if (denv.local_rank >= gpus)
      log::warn(cat("data-parallel: local rank ", denv.local_rank, " shares a GPU (", gpus, " for more local ranks)"));
    dev = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(denv.local_rank % gpus));
  }
  const bool bf16 = opt.dtype == "bf16";
  fs::create_directories(opt.out_dir);
  Communicator comm(denv);
  const bool is_main = comm.is_main();
  const bool progress = opt.progress && is_main;
  if (comm.world() > 1 && is_main) log::info(cat("data-parallel over ", comm.world(), " processes"));

  // ---- model and tokenizer: resume > --model > preset/config + tokenizer ----
  auto checkpoints = list_checkpoints(opt.out_dir);
  std::int64_t start_step = 0;
  std::string model_dir;
  if (opt.resume) {
    if (checkpoints.empty()) throw Error("--resume: no checkpoint in " + opt.out_dir);
    start_step = checkpoints.back().first;
    model_dir = checkpoints.back().second;
    log::info(cat("resuming from ", model_dir));
  } else if (!opt.init_model.empty()) {
    model_dir = opt.init_model;
  }
  std::string tok_dir = model_dir.empty() ? opt.tokenizer : model_dir;
  if (tok_dir.empty()) throw Error("--tokenizer is required when training from a preset or config");
  auto tok = load_tokenizer(tok_dir);
  CausalLM model{nullptr};
  if (!model_dir.empty()) {
    model = load_model(model_dir, torch::kCPU, torch::kFloat32);
  } else {
    if (opt.model_config.empty()) throw Error("give --preset/--config (with --tokenizer) or --model");
    auto cfg = resolve_config(opt.model_config);
    cfg.vocab_size = tok.vocab_size();
    cfg.bos_token_id = tok.bos_id();
    cfg.eos_token_ids = {tok.eos_id()};
    cfg.pad_token_id = tok.pad_id();
    torch::manual_seed(opt.seed);
    model = CausalLM(cfg);
  }
  if (tok.vocab_size() > model->config().vocab_size)
    throw Error("the tokenizer has " + std::to_string(tok.vocab_size()) + " tokens but the model only " +
                std::to_string(model->config().vocab_size));
  if (opt.seq_len > model->config().max_position_embeddings)
    throw Error("--seq-len exceeds the model's max_position_embeddings");
  // Every rank starts from rank 0's weights (they match anyway: same seed or same files).
  all_reduce_tensors(comm, model->parameters(), /*broadcast_from_main=*/true);
  model->to(dev);
  model->train();

  // ---- data ----
  const std::string cache_dir = opt.out_dir + "/cache";
  // Rank 0 tokenizes into the cache; the others then read it (or, on a node that does not
  // share the run directory, tokenize the same files to the same result).
  if (!is_main) comm.barrier();
  auto data = load_or_tokenize(opt.data, tok, opt.mode, opt.seq_len, cache_dir, threads, progress);
  TokenizedData eval;
  if (!opt.eval_data.empty()) eval = load_or_tokenize(opt.eval_data, tok, opt.mode, opt.seq_len, cache_dir, threads, progress);
  if (is_main) comm.barrier();
  const std::int64_t per_rank = opt.batch_size * opt.grad_accum;
  const std::int64_t per_step = per_rank * comm.world();  // the global batch, in samples
  const std::int64_t total = opt.max_steps > 0
                                 ? opt.max_steps
                                 : std::max<std::int64_t>(1, static_cast<std::int64_t>(std::ceil(opt.epochs * data.size() / per_step)));
  if (opt.resume) {
    auto state = nlohmann::json::parse(read_file(model_dir + "/trainer_state.json"), nullptr, false);
    const auto saved = state.is_object() ? state.value("global_batch", std::int64_t{-1}) : -1;
    if (saved != per_step)
      throw Error(cat("--resume: ", model_dir, " was trained with a global batch of ", saved,
                      " samples, this run has ", per_step, " (batch-size x grad-accum x processes must match)"));
  }
  if (start_step >= total) throw Error("--resume: the checkpoint is at step " + std::to_string(start_step) + ", the run has " + std::to_string(total) + " steps");
  const LrSchedule sched{opt.lr, opt.min_lr_ratio, opt.warmup_steps, total};

  // ---- optimizer: no weight decay on norms, biases and embeddings ----
  std::vector<torch::Tensor> decay, no_decay;
  for (auto& p : model->named_parameters()) {
    const auto& n = p.key();
    bool skip = p.value().dim() < 2 || n.find("embed_tokens") != std::string::npos;
    (skip ? no_decay : decay).push_back(p.value());
  }
  auto adam = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(opt.lr).betas({opt.beta1, opt.beta2}).eps(opt.adam_eps).weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, adam(opt.weight_decay));
  groups.emplace_back(no_decay, adam(0.0));
  torch::optim::AdamW optimizer(groups);
  if (opt.resume) {
    torch::load(optimizer, model_dir + "/optimizer.pt");
    // The moments load on the CPU; they must live where their parameters do.
    for (auto& [key, st] : optimizer.state()) {
      auto& s = static_cast<torch::optim::AdamWParamState&>(*st);
      if (s.exp_avg().defined()) s.exp_avg(s.exp_avg().to(dev));
      if (s.exp_avg_sq().defined()) s.exp_avg_sq(s.exp_avg_sq().to(dev));
      if (s.max_exp_avg_sq().defined()) s.max_exp_avg_sq(s.max_exp_avg_sq().to(dev));
    }
  }

  const std::string metrics_path = opt.out_dir + "/metrics.jsonl";
  std::ofstream metrics;
  if (is_main) {
    auto cfg_json = options_json(opt);
    cfg_json["world_size"] = comm.world();
    write_file_atomic(opt.out_dir + "/train_config.json", cfg_json.dump(2) + "\n");
    if (opt.resume)
      truncate_metrics(metrics_path, start_step);
    else
      write_file_atomic(metrics_path, "");
    metrics.open(metrics_path, std::ios::app);
  }

  auto save_checkpoint = [&](std::int64_t step, const std::string& dir, bool with_state) {
    if (!is_main) return;
    SaveOptions so;
    so.dtype = torch::kFloat32;  // master weights: resuming must not lose precision
    so.tokenizer_dir = tok.source_dir();
    so.tokenizer = &tok;  // a tokenizer without files of its own (from a GGUF) writes them
    if (with_state)
      so.extra_files = [&](const std::string& staging) {
        torch::save(optimizer, staging + "/optimizer.pt");
        write_file_atomic(staging + "/trainer_state.json",
                          nlohmann::json{{"step", step}, {"total_steps", total}, {"seed", opt.seed},
                                         {"batch_size", opt.batch_size}, {"grad_accum", opt.grad_accum},
                                         {"seq_len", opt.seq_len}, {"samples", data.size()},
                                         {"world_size", comm.world()}, {"global_batch", per_step}}
                                  .dump(2));
      };
    model->to(torch::kCPU);
    save_model(model, dir, so);
    model->to(dev);
    if (!with_state) return;
    auto all = list_checkpoints(opt.out_dir);
    for (std::size_t i = 0; opt.keep_last > 0 && i + opt.keep_last < all.size(); ++i) fs::remove_all(all[i].second);
  };

  auto eval_loss = [&]() -> double {
    if (eval.size() == 0) return -1;
    torch::NoGradGuard ng;
    model->eval();
    double sum_n[2] = {0, 0};  // loss sum, target count; batches are split over the ranks
    for (std::int64_t i = comm.rank(); i < opt.eval_batches; i += comm.world()) {
      std::vector<std::uint64_t> ids;
      for (std::int64_t k = 0; k < opt.batch_size && static_cast<std::size_t>(i * opt.batch_size + k) < eval.size(); ++k)
        ids.push_back(i * opt.batch_size + k);
      if (ids.empty()) break;
      auto b = make_batch(eval, ids, tok.pad_id());
      sum_n[0] += loss_sum(model, b, dev, bf16).item<double>();
      sum_n[1] += static_cast<double>(b.targets);
    }
    comm.all_reduce_sum(sum_n, 2);
    model->train();
    return sum_n[1] > 0 ? sum_n[0] / sum_n[1] : -1;
  };

  // ---- loop ----
  SampleOrder order(data.size(), opt.seed);
  TrainResult r;
  Progress bar(opt.mode == SampleMode::Pretrain ? "pretrain" : "sft", static_cast<std::uint64_t>(total - start_step),
               "steps", progress);
  auto t0 = std::chrono::steady_clock::now();
  auto t_log = t0;
  std::int64_t tokens_since_log = 0, tokens_total = 0;
  std::string last_good = checkpoints.empty() ? "none" : checkpoints.back().second;
  for (std::int64_t step = start_step; step < total; ++step) {
    const double lr = sched.at(step);
    for (auto& g : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    // This rank's share of the step: samples [rank * per_rank, (rank + 1) * per_rank) of
    // the global batch, so N processes see exactly the samples one process would.
    std::vector<Batch> micro;
    double targets = 0;
    for (std::int64_t m = 0; m < opt.grad_accum; ++m) {
      std::vector<std::uint64_t> ids;
      for (std::int64_t k = 0; k < opt.batch_size; ++k)
        ids.push_back(order(static_cast<std::uint64_t>(step * per_step + comm.rank() * per_rank + m * opt.batch_size + k)));
      micro.push_back(make_batch(data, ids, tok.pad_id()));
      targets += static_cast<double>(micro.back().targets);
    }
    comm.all_reduce_sum(&targets, 1);
    optimizer.zero_grad();
    double step_loss = 0;
    for (auto& b : micro) {
      // Normalised by the whole (global) step's target count: accumulation and the sum
      // over ranks give exactly the gradient of the mean loss over the global batch.
      auto loss = loss_sum(model, b, dev, bf16) / std::max(1.0, targets);
      loss.backward();
      step_loss += loss.item<double>();
      tokens_since_log += b.input.numel() * comm.world();
      tokens_total += b.input.numel() * comm.world();
    }
    if (comm.world() > 1) {
      std::vector<torch::Tensor> grads;
      for (auto& p : model->parameters()) {
        if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
        grads.push_back(p.grad());
      }
      all_reduce_tensors(comm, grads);
      comm.all_reduce_sum(&step_loss, 1);
    }
    const double grad_norm = torch::nn::utils::clip_grad_norm_(model->parameters(), opt.grad_clip);
    if (!std::isfinite(step_loss) || !std::isfinite(grad_norm))
      throw Error(cat("loss is ", step_loss, " (gradient norm ", grad_norm, ") at step ", step + 1,
                      ": training stopped, nothing saved for this step; last good checkpoint: ", last_good,
                      " (lower --lr or check the data)"));
    optimizer.step();
    r.final_loss = step_loss;
    const std::int64_t done = step + 1;

    const bool do_eval = opt.eval_every > 0 && (done % opt.eval_every == 0 || done == total);
    const double ev = do_eval ? eval_loss() : -1;
    if (ev >= 0) r.final_eval_loss = ev;
    if (done % std::max<std::int64_t>(1, opt.log_every) == 0 || done == total || do_eval) {
      auto now = std::chrono::steady_clock::now();
      double secs = std::chrono::duration<double>(now - t_log).count();
      nlohmann::json line = {{"step", done}, {"loss", step_loss}, {"lr", lr}, {"grad_norm", grad_norm},
                             {"tokens_per_s", secs > 0 ? tokens_since_log / secs : 0.0},
                             {"epoch", static_cast<double>(done * per_step) / data.size()}};
      if (ev >= 0) line["eval_loss"] = ev;
      if (is_main) metrics << line.dump() << "\n" << std::flush;
      t_log = now;
      tokens_since_log = 0;
    }
    const double run_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    char extra[160];
    std::snprintf(extra, sizeof extra, "loss %.4f lr %.2e %s tok/s%s", step_loss, lr,
                  format_count(run_secs > 0 ? tokens_total / run_secs : 0).c_str(),
                  ev >= 0 ? cat(" eval ", ev).c_str() : "");
    bar.set(static_cast<std::uint64_t>(done - start_step), extra);
    if (opt.save_every > 0 && done % opt.save_every == 0 && done < total) {
      std::string dir = opt.out_dir + "/checkpoint-" + std::to_string(done);
      save_checkpoint(done, dir, true);
      last_good = dir;
      if (is_main) write_loss_curve(metrics_path, opt.out_dir + "/loss_curve.svg");
    }
  }
  bar.finish();
  r.steps = total;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.tokens_per_s = r.seconds > 0 ? tokens_total / r.seconds : 0;
  // The last step is a checkpoint too (resumable), and final/ is the release directory.
  save_checkpoint(total, opt.out_dir + "/checkpoint-" + std::to_string(total), true);
  r.final_dir = opt.out_dir + "/final";
  save_checkpoint(total, r.final_dir, false);
  if (is_main) {
    metrics.close();
    write_loss_curve(metrics_path, opt.out_dir + "/loss_curve.svg");
  }
  comm.barrier();  // nobody leaves before final/ is written
  r.world = comm.world();
  r.is_main = is_main;
  return r;
}

}  // namespace llmctl
