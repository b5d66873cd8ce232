#include "llmctl/util/log.h"
#include "llmctl/data/jsonl.h"


#include <algorithm>

#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"

namespace llmctl {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

constexpr std::uint64_t kMaxWarnings = 10;  // per file; the total is always reported

}  // namespace

JsonlReader::JsonlReader(std::string path, bool warn)
    : path_(std::move(path)), in_(path_, std::ios::binary), warn_(warn) {
  if (!in_) throw Error("cannot open data file " + path_);
}

bool JsonlReader::next(nlohmann::json& out) {
  while (std::getline(in_, line_)) {
    ++line_no_;
    bytes_ += line_.size() + 1;
    if (!line_.empty() && line_.back() == '\r') line_.pop_back();
    if (line_.find_first_not_of(" \t") == std::string::npos) continue;  // blank line
    out = nlohmann::json::parse(line_, nullptr, /*allow_exceptions=*/false);
    if (!out.is_discarded() && out.is_object()) return true;
    if (++malformed_ <= kMaxWarnings && warn_)
      log::warn(cat(path_, ":", line_no_, ": malformed JSON line skipped"));
  }
  return false;
}

std::vector<std::string> record_texts(const nlohmann::json& record) {
  if (auto it = record.find("text"); it != record.end()) {
    if (!it->is_string()) throw Error("field \"text\" is not a string");
    return {it->get<std::string>()};
  }
  if (record.contains("conversations")) {
    std::vector<std::string> out;
    for (auto& m : record_conversation(record)) out.push_back(std::move(m.content));
    return out;
  }
  throw Error("record has neither \"text\" nor \"conversations\"");
}

std::vector<Message> record_conversation(const nlohmann::json& record) {
  auto it = record.find("conversations");
  if (it == record.end() || !it->is_array()) throw Error("field \"conversations\" is not an array");
  std::vector<Message> out;
  for (const auto& turn : *it) {
    if (!turn.is_object() || !turn.contains("content") || !turn["content"].is_string())
      throw Error("a conversation turn lacks a string \"content\"");
    std::string role = turn.value("role", "");
    if (role.empty()) role = out.size() % 2 == 0 ? "user" : "assistant";  // minimind's old files
    out.push_back({role, turn["content"].get<std::string>()});
  }
  return out;
}

DocumentStream::DocumentStream(std::vector<std::string> files, bool warn) : files_(std::move(files)), warn_(warn) {
  for (const auto& f : files_) total_bytes_ += file_size(f);  // also checks they exist
}

std::uint64_t DocumentStream::malformed() const {
  return malformed_done_ + bad_fields_ + (jsonl_ ? jsonl_->malformed() : 0);
}

std::uint64_t DocumentStream::bytes_read() const {
  return bytes_done_ + (jsonl_ ? jsonl_->bytes_read() : plain_bytes_);
}

bool DocumentStream::open_next_file() {
  if (jsonl_) {
    malformed_done_ += jsonl_->malformed();
    bytes_done_ += jsonl_->bytes_read();
    jsonl_.reset();
  }
  if (plain_) {
    bytes_done_ += plain_bytes_;
    plain_bytes_ = 0;
    plain_.reset();
  }
  if (file_idx_ >= files_.size()) return false;
  const std::string& f = files_[file_idx_++];
  if (ends_with(f, ".jsonl") || ends_with(f, ".json")) {
    jsonl_ = std::make_unique<JsonlReader>(f, warn_);
  } else {
    plain_ = std::make_unique<std::ifstream>(f, std::ios::binary);
    if (!*plain_) throw Error("cannot open data file " + f);
  }
  return true;
}

bool DocumentStream::next(std::string& text) {
  for (;;) {
    if (!pending_.empty()) {
      text = std::move(pending_.back());
      pending_.pop_back();
      return true;
    }
    if (jsonl_) {
      nlohmann::json rec;
      if (jsonl_->next(rec)) {
        try {
          pending_ = record_texts(rec);
        } catch (const Error& e) {
          if (++bad_fields_ <= kMaxWarnings && warn_)
            log::warn(cat(jsonl_->path(), ":", jsonl_->line_number(), ": ", e.what(), "; line skipped"));
          continue;
        }
        std::reverse(pending_.begin(), pending_.end());  // keep document order
        ++documents_;
        continue;
      }
    } else if (plain_) {
      std::string line;
      if (std::getline(*plain_, line)) {
        plain_bytes_ += line.size() + 1;
        if (line.empty()) continue;
        ++documents_;
        text = std::move(line);
        return true;
      }
    }
    if (!open_next_file()) return false;
  }
}

ConversationStream::ConversationStream(std::vector<std::string> files) : files_(std::move(files)) {
  for (const auto& f : files_) file_size(f);  // checks they exist before any work starts
}

std::uint64_t ConversationStream::malformed() const {
  return malformed_done_ + bad_records_ + (jsonl_ ? jsonl_->malformed() : 0);
}

std::uint64_t ConversationStream::bytes_read() const { return bytes_done_ + (jsonl_ ? jsonl_->bytes_read() : 0); }

std::string ConversationStream::where() const {
  return jsonl_ ? cat(jsonl_->path(), ":", jsonl_->line_number()) : std::string();
}

bool ConversationStream::next(std::vector<Message>& conv) {
  for (;;) {
    if (!jsonl_) {
      if (file_idx_ >= files_.size()) return false;
      jsonl_ = std::make_unique<JsonlReader>(files_[file_idx_++]);
    }
    nlohmann::json rec;
    if (!jsonl_->next(rec)) {
      malformed_done_ += jsonl_->malformed();
      bytes_done_ += jsonl_->bytes_read();
      jsonl_.reset();
      continue;
    }
    try {
      conv = record_conversation(rec);
      ++documents_;
      return true;
    } catch (const Error& e) {
      if (++bad_records_ <= kMaxWarnings) log::warn(cat(where(), ": ", e.what(), "; line skipped"));
    }
  }
}

}  // namespace llmctl
