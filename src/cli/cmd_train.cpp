// llmctl pretrain / llmctl sft: one training loop (src/train), two data modes.
#include "common.h"
#include "llmctl/train/distributed.h"
#include "llmctl/train/trainer.h"
#include "llmctl/util/error.h"
#include "llmctl/util/log.h"

namespace llmctl::cli {

namespace {

CLI::App* add_training_flags(CLI::App* sub, TrainOptions& o, const std::shared_ptr<int>& nproc) {
  sub->add_option("--data", o.data, "Training data: minimind jsonl (or text, pretrain only)")
      ->required()
      ->check(CLI::ExistingFile);
  sub->add_option("--out", o.out_dir, "Run directory: checkpoints, final/, metrics.jsonl, loss_curve.svg")->required();
  sub->add_option("--eval-data", o.eval_data, "Held-out data for the eval loss")->check(CLI::ExistingFile);
  sub->add_option("--seq-len", o.seq_len, "Tokens per sample (pretrain: packed windows; sft: right-truncated)")
      ->capture_default_str();
  sub->add_option("--batch-size", o.batch_size, "Samples per micro-batch")->capture_default_str();
  sub->add_option("--grad-accum", o.grad_accum, "Micro-batches per optimizer step")->capture_default_str();
  sub->add_option("--lr", o.lr, "Peak learning rate")->capture_default_str();
  sub->add_option("--min-lr-ratio", o.min_lr_ratio, "Cosine floor as a fraction of --lr")->capture_default_str();
  sub->add_option("--warmup-steps", o.warmup_steps, "Linear warmup steps")->capture_default_str();
  sub->add_option("--weight-decay", o.weight_decay, "AdamW decoupled weight decay (not on norms, biases, embeddings)")
      ->capture_default_str();
  sub->add_option("--grad-clip", o.grad_clip, "Global gradient-norm clip")->capture_default_str();
  auto* steps = sub->add_option("--max-steps", o.max_steps, "Optimizer steps (overrides --epochs)");
  auto* epochs = sub->add_option("--epochs", o.epochs, "Passes over the data")->capture_default_str();
  steps->excludes(epochs);
  sub->add_option("--dtype", o.dtype, "bf16 (autocast over fp32 master weights) or f32")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  sub->add_option("--device", o.device, "cpu, cuda or cuda:N")->capture_default_str();
  sub->add_option("--save-every", o.save_every, "Checkpoint every N steps (0: only at the end)")->capture_default_str();
  sub->add_option("--keep-last", o.keep_last, "Keep only the newest K checkpoints (0: all)")->capture_default_str();
  sub->add_option("--eval-every", o.eval_every, "Held-out loss every N steps (needs --eval-data)")->capture_default_str();
  sub->add_option("--eval-batches", o.eval_batches, "Batches of held-out data per evaluation")->capture_default_str();
  sub->add_option("--log-every", o.log_every, "A metrics.jsonl line every N steps")->capture_default_str();
  sub->add_option("--seed", o.seed, "Seed of initialisation and data order")->capture_default_str();
  sub->add_option("--threads", o.threads, "CPU threads (0: all cores)")->capture_default_str();
  sub->add_option("--nproc", *nproc,
                  "Data-parallel processes on this machine (each takes --batch-size samples; global batch = "
                  "batch-size x grad-accum x nproc). Under torchrun/SLURM leave it out: RANK, WORLD_SIZE, "
                  "LOCAL_RANK, MASTER_ADDR and MASTER_PORT are read from the environment")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  sub->add_flag("--resume", o.resume, "Continue from the newest checkpoint in --out (same data order, optimizer, schedule)");
  return sub;
}

void report(const TrainResult& r, bool json) {
  if (!r.is_main) return;  // rank 0 speaks for the job
  if (json) {
    print_json({{"steps", r.steps}, {"final_loss", r.final_loss}, {"final_eval_loss", r.final_eval_loss},
                {"tokens_per_s", r.tokens_per_s}, {"seconds", r.seconds}, {"final", r.final_dir}});
    return;
  }
  std::printf("trained %lld steps%s in %.1f s (%.0f tokens/s), final loss %.4f%s; model: %s\n",
              static_cast<long long>(r.steps), r.world > 1 ? cat(" on ", r.world, " processes").c_str() : "",
              r.seconds, r.tokens_per_s, r.final_loss,
              r.final_eval_loss >= 0 ? cat(", eval loss ", r.final_eval_loss).c_str() : "", r.final_dir.c_str());
}

// --nproc N > 1 outside a launched job: become the launcher of N workers.
void run(const TrainOptions& o, int nproc, bool json) {
  if (nproc > 1 && DistEnv::from_env().world == 1) {
    if (int code = launch_local_workers(nproc, process_argc(), process_argv()); code != 0) throw ExitStatus{code};
    return;
  }
  report(train(o), json);
}

}  // namespace

void add_train(CLI::App& app) {
  {
    auto o = std::make_shared<TrainOptions>();
    auto json = std::make_shared<bool>(false);
    auto nproc = std::make_shared<int>(1);
    o->mode = SampleMode::Pretrain;
    o->lr = 5e-4;
    auto* sub = add_training_flags(
        app.add_subcommand("pretrain", "Pretrain a model on {\"text\"} jsonl (packed sequences, next-token loss)"), *o, nproc);
    auto* preset = sub->add_option("--preset", o->model_config, "Model preset: nano, minimind2-small, minimind2, minimind3");
    auto* config = sub->add_option("--config", o->model_config, "HF config.json-style file instead of a preset");
    preset->excludes(config);
    sub->add_option("--tokenizer", o->tokenizer, "Tokenizer directory (with --preset/--config)");
    sub->add_option("--model", o->init_model, "Continue pretraining this model directory instead");
    sub->add_flag("--json", *json, "Print a JSON summary on stdout");
    sub->callback([o, json, nproc] { run(*o, *nproc, *json); });
  }
  {
    auto o = std::make_shared<TrainOptions>();
    auto json = std::make_shared<bool>(false);
    auto nproc = std::make_shared<int>(1);
    o->mode = SampleMode::Sft;
    o->lr = 1e-5;
    auto* sub = add_training_flags(
        app.add_subcommand("sft", "Supervised fine-tuning on {\"conversations\"} jsonl (ChatML, loss on the assistant only)"),
        *o, nproc);
    sub->add_option("--model", o->init_model, "Model directory to fine-tune")->required();
    sub->add_flag("--json", *json, "Print a JSON summary on stdout");
    sub->callback([o, json, nproc] { run(*o, *nproc, *json); });
  }
}

}  // namespace llmctl::cli
