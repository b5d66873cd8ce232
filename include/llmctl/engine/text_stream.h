#pragma once
// Turns a request's generated token ids into text deltas as they arrive:
//  - incremental detokenisation that never emits broken UTF-8 (a multi-byte character split
//    over byte-fallback tokens is held back until complete) and handles sentencepiece's
//    leading-space marker the way a full decode of all output ids would;
//  - stop strings: text that could still become a stop string is held back; when one
//    appears, the text before it is emitted, the stop string and anything after are not.
// Invariant: the concatenation of all deltas (plus finish()) equals
// tokenizer.decode(all ids, skip_special=true), cut before the first stop string.
#include <string>
#include <vector>

#include "llmctl/tokenizer/tokenizer.h"

namespace llmctl {

class TextStream {
 public:
  TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop_strings);

  struct Delta {
    std::string text;       // safe to show now (may be empty)
    bool stopped = false;   // a stop string appeared: the request is finished
    std::string stop;       // which one
  };
  Delta push(int token_id);
  // End of the request (EOS, length, cancel): releases the held-back text, since it cannot
  // become a stop string any more. Bytes of an unfinished UTF-8 character come out as
  // U+FFFD, as in tokenizer.decode of all ids. Nothing after a stop.
  std::string finish();
  // All text emitted so far.
  const std::string& text() const { return emitted_; }

 private:
  // Decodes the ids not yet turned into text, unless they end inside a UTF-8 character
  // (`final`: decode them anyway, as a full decode would, with U+FFFD).
  std::string detokenize(bool final);
  // Moves pending_ text that cannot be part of a stop string into a Delta.
  Delta release(bool final);
  // True when the last ids are byte tokens that start a UTF-8 character but do not
  // complete it yet.
  bool ends_mid_character() const;

  const Tokenizer* tok_;
  std::vector<std::string> stops_;
  std::vector<int> ids_;
  std::string emitted_;
  // ids_[prefix_offset_, read_offset_) were decoded last time: they give the next decode
  // its context (leading-space marker, byte runs); ids_ from read_offset_ on are new.
  std::size_t prefix_offset_ = 0, read_offset_ = 0;
  std::string pending_;  // decoded but held back (possible stop-string prefix)
  bool stopped_ = false;
  std::string stop_hit_;  // the stop string that ended the stream
};

}  // namespace llmctl
