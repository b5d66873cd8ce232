#include "llmctl/engine/text_stream.h"

#include <algorithm>

namespace llmctl {

namespace {

// Length of the UTF-8 sequence a lead byte announces; 0 for continuation / invalid bytes.
int utf8_length(int b) {
  if (b < 0x80) return 1;
  if (b >= 0xC0 && b < 0xE0) return 2;
  if (b >= 0xE0 && b < 0xF0) return 3;
  if (b >= 0xF0 && b < 0xF8) return 4;
  return 0;
}

bool ends_with(const std::string& s, const char* p, std::size_t n) {
  return s.size() >= n && s.compare(s.size() - n, n, p, n) == 0;
}

}  // namespace

TextStream::TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop_strings)
    : tok_(&tokenizer), stops_(std::move(stop_strings)) {
  // An empty stop string would match everywhere; SamplingParams::validate rejects it.
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
}

bool TextStream::ends_mid_character() const {
  // The bytes of the ids not decoded yet (a byte-level BPE token may hold part of a
  // character, a sentencepiece byte piece one byte). Walk back over the trailing
  // continuation bytes to the lead byte that says how many are owed. Lenient on purpose
  // (overlong forms are held too): holding a hopeless byte costs one token of delay,
  // releasing a viable one would emit a broken character the full decode would not have.
  std::string tail;
  for (std::size_t i = read_offset_; i < ids_.size(); ++i) {
    if (tok_->is_special(ids_[i])) {
      tail.clear();  // a special token ends any character
      continue;
    }
    tail += tok_->token_bytes(ids_[i]);
  }
  int continuation = 0;
  for (std::size_t i = tail.size(); i > 0 && continuation < 4; --i) {
    const int b = static_cast<unsigned char>(tail[i - 1]);
    if ((b & 0xC0) == 0x80) {
      ++continuation;
      continue;
    }
    return utf8_length(b) > continuation + 1;
  }
  return false;
}

std::string TextStream::detokenize(bool final) {
  if (read_offset_ == ids_.size() || (!final && ends_mid_character())) return {};
  // Decode a window that starts at the previous chunk rather than the new ids alone, so
  // that sentencepiece's decisions at the start of a text (leading "▁", byte runs) are
  // the same in both decodes and the difference is exactly the new text.
  const auto begin = ids_.begin();
  const std::string before = tok_->decode(std::vector<int>(begin + static_cast<long>(prefix_offset_),
                                                           begin + static_cast<long>(read_offset_)),
                                          /*skip_special=*/true);
  const std::string now =
      tok_->decode(std::vector<int>(begin + static_cast<long>(prefix_offset_), ids_.end()), /*skip_special=*/true);
  // Nothing new (a skipped special token): keep the window so the context stays.
  if (now.size() <= before.size()) return {};
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return now.substr(before.size());
}

TextStream::Delta TextStream::release(bool final) {
  Delta d;
  // The earliest stop string wins (the longest when two start at the same place). Text was
  // only emitted once no stop string could start in it, so a match starts in pending_.
  std::size_t at = std::string::npos;
  for (const auto& s : stops_) {
    const std::size_t pos = pending_.find(s);
    if (pos != std::string::npos && (pos < at || (pos == at && s.size() > stop_hit_.size()))) {
      at = pos;
      stop_hit_ = s;
    }
  }
  if (at != std::string::npos) {
    d.text = pending_.substr(0, at);
    d.stopped = stopped_ = true;
    d.stop = stop_hit_;
    emitted_ += d.text;
    pending_.clear();
    return d;
  }
  // Hold back the longest tail of pending_ that some stop string starts with.
  std::size_t hold = 0;
  if (!final)
    for (const auto& s : stops_)
      for (std::size_t n = std::min(s.size() - 1, pending_.size()); n > hold; --n)
        if (ends_with(pending_, s.data(), n)) {
          hold = n;
          break;
        }
  d.text = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  emitted_ += d.text;
  return d;
}

TextStream::Delta TextStream::push(int token_id) {
  if (stopped_) return {{}, true, stop_hit_};
  ids_.push_back(token_id);
  pending_ += detokenize(/*final=*/false);
  return release(/*final=*/false);
}

std::string TextStream::finish() {
  if (stopped_) return {};
  pending_ += detokenize(/*final=*/true);
  return release(/*final=*/true).text;
}

}  // namespace llmctl
