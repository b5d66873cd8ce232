#include <gtest/gtest.h>

#include <filesystem>

#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"
#include "test_helpers.h"

namespace fs = std::filesystem;
using namespace llmctl;

TEST(AtomicFile, CommitReplacesAndAbandonLeavesOldContent) {
  TempDir dir;
  std::string path = dir.path + "/f.txt";
  write_file_atomic(path, "old");
  {
    AtomicFile f(path);
    f.write("new but never committed");
  }  // destroyed without commit
  EXPECT_EQ(read_file(path), "old");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator{}), 1) << "temp file left behind";
  write_file_atomic(path, "new");
  EXPECT_EQ(read_file(path), "new");
}

TEST(ReplaceDir, SwapsInNewDirectoryAndRemovesOld) {
  TempDir dir;
  std::string dst = dir.path + "/model";
  fs::create_directories(dst);
  write_file_atomic(dst + "/a", "old");
  std::string staging = make_staging_dir(dst);
  write_file_atomic(staging + "/a", "new");
  replace_dir(staging, dst);
  EXPECT_EQ(read_file(dst + "/a"), "new");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator{}), 1);
}

TEST(MappedFile, MapsContentAndReportsMissingFile) {
  TempDir dir;
  write_file_atomic(dir.path + "/x", "hello");
  auto m = MappedFile::open(dir.path + "/x");
  ASSERT_EQ(m->size(), 5u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(m->data()), 5), "hello");
  EXPECT_THROW(MappedFile::open(dir.path + "/missing"), Error);
}
