#pragma once
// Streaming readers for minimind data: jsonl (one JSON object per line) and plain text.
// Files are never loaded whole; a malformed line is reported as file:line, counted and
// skipped, never fatal.
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace llmctl {

struct Message {
  std::string role;  // system | user | assistant
  std::string content;
};

class JsonlReader {
 public:
  // `warn`: log malformed lines (file:line) as they are skipped; they are counted either way.
  explicit JsonlReader(std::string path, bool warn = true);
  // Next well-formed JSON object; false at end of file. Malformed lines are skipped.
  bool next(nlohmann::json& out);
  std::uint64_t line_number() const { return line_no_; }
  std::uint64_t bytes_read() const { return bytes_; }
  std::uint64_t malformed() const { return malformed_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ifstream in_;
  std::string line_;
  std::uint64_t line_no_ = 0, bytes_ = 0, malformed_ = 0;
  bool warn_;
};

// The text of a minimind record: {"text": ...} for pretrain; the contents of every turn
// of {"conversations": [...]} for sft. Throws llmctl::Error when neither is present.
std::vector<std::string> record_texts(const nlohmann::json& record);

// Parses {"conversations": [{"role","content"}, ...]}; throws llmctl::Error if malformed.
std::vector<Message> record_conversation(const nlohmann::json& record);

// Pulls the texts of a list of files one at a time: the texts of each jsonl record (by
// record_texts) for *.jsonl / *.json, one text per non-empty line for any other file.
// Records without usable text are warned about (file:line) and counted as malformed.
class DocumentStream {
 public:
  // `warn`: log skipped records (a second pass over the same files passes false).
  explicit DocumentStream(std::vector<std::string> files, bool warn = true);
  bool next(std::string& text);
  std::uint64_t documents() const { return documents_; }
  std::uint64_t malformed() const;
  std::uint64_t bytes_read() const;  // over all files so far, for progress
  std::uint64_t total_bytes() const { return total_bytes_; }

 private:
  bool open_next_file();
  std::vector<std::string> files_;
  std::size_t file_idx_ = 0;
  std::unique_ptr<JsonlReader> jsonl_;
  std::unique_ptr<std::ifstream> plain_;
  std::vector<std::string> pending_;  // texts of the current record not yet returned
  std::uint64_t documents_ = 0, malformed_done_ = 0, bad_fields_ = 0, bytes_done_ = 0,
                plain_bytes_ = 0, total_bytes_ = 0;
  bool warn_;
};

// Pulls the {"conversations": [...]} records of a list of jsonl files one at a time.
// Records that are not valid conversations are warned about (file:line) and counted.
class ConversationStream {
 public:
  explicit ConversationStream(std::vector<std::string> files);
  bool next(std::vector<Message>& conv);
  std::string where() const;  // "file:line" of the record last returned
  std::uint64_t documents() const { return documents_; }
  std::uint64_t malformed() const;
  std::uint64_t bytes_read() const;

 private:
  std::vector<std::string> files_;
  std::size_t file_idx_ = 0;
  std::unique_ptr<JsonlReader> jsonl_;
  std::uint64_t documents_ = 0, malformed_done_ = 0, bad_records_ = 0, bytes_done_ = 0;
};

}  // namespace llmctl
