#pragma once
// The training loop shared by `llmctl pretrain` and `llmctl sft`: AdamW with decoupled
// weight decay, warmup + cosine LR, gradient accumulation, global-norm clipping, bf16
// autocast over fp32 master weights, NaN/Inf stop, periodic checkpoints that resume
// exactly (same data order, optimizer state and schedule), metrics.jsonl and a loss curve.
#include <cstdint>
#include <string>
#include <vector>

#include "llmctl/data/dataset.h"

namespace llmctl {

struct TrainOptions {
  SampleMode mode = SampleMode::Pretrain;
  std::vector<std::string> data, eval_data;
  std::string out_dir;
  std::string init_model;       // sft (and pretrain continuation): start from this model dir
  std::string model_config;     // pretrain from scratch: preset name or config file
  std::string tokenizer;        // pretrain from scratch: tokenizer dir
  std::int64_t seq_len = 512;
  std::int64_t batch_size = 8;
  std::int64_t grad_accum = 1;
  double lr = 5e-4;
  double min_lr_ratio = 0.1;
  std::int64_t warmup_steps = 0;
  double weight_decay = 0.1;
  double beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  double grad_clip = 1.0;
  std::int64_t max_steps = 0;   // optimizer steps; 0: derived from epochs
  double epochs = 1;
  std::string dtype = "bf16";   // autocast dtype: bf16 | f32
  std::string device = "cpu";
  std::int64_t save_every = 0;  // 0: only at the end
  std::int64_t eval_every = 0;
  std::int64_t eval_batches = 16;
  std::int64_t log_every = 1;
  std::int64_t keep_last = 2;
  std::uint64_t seed = 42;
  int threads = 0;
  bool resume = false;
  bool progress = true;  // progress bars (rank 0 only)
};

struct TrainResult {
  std::int64_t steps = 0;
  double final_loss = 0, final_eval_loss = -1, tokens_per_s = 0, seconds = 0;
  std::string final_dir;
  int world = 1;         // processes that trained
  bool is_main = true;   // rank 0 (the one that reports)
};

TrainResult train(const TrainOptions& opt);

// Writes an SVG line chart of train loss (and eval loss points) from metrics.jsonl.
void write_loss_curve(const std::string& metrics_jsonl, const std::string& svg_path);

}  // namespace llmctl
