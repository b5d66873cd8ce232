#pragma once
// File helpers: atomic writes (temp file + fsync + rename) so a kill at any moment leaves
// either the old file or the new one, and read-only memory maps for large inputs.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace llmctl {

std::string read_file(const std::string& path);
bool path_exists(const std::string& path);
std::uint64_t file_size(const std::string& path);

// Writes `data` to `path` atomically.
void write_file_atomic(const std::string& path, std::string_view data);

// Streams a file into place: bytes go to a hidden temp file next to `path`; commit()
// fsyncs and renames it over `path`. Destroyed without commit(), the temp file is removed.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const void* data, std::size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

// Replaces directory `dst` by the fully written directory `src` (same parent): the old
// `dst` is moved aside first and deleted only after `src` is in place.
void replace_dir(const std::string& src, const std::string& dst);

// A fresh temp directory next to `final_dir` (same filesystem, so replace_dir can rename).
std::string make_staging_dir(const std::string& final_dir);

// Read-only memory map of a whole file; shared so tensors can keep it alive.
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace llmctl
