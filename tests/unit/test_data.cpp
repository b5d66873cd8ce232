#include <gtest/gtest.h>

#include "llmctl/data/jsonl.h"
#include "llmctl/util/error.h"
#include "test_helpers.h"

using namespace llmctl;

TEST(JsonlReader, SkipsAndCountsMalformedLines) {
  TempDir dir;
  std::string f = dir.path + "/d.jsonl";
  write_file_atomic(f, "{\"text\": \"a\"}\n{not json\n\n[1,2]\n{\"text\": \"b\"}\r\n{\"text\": \"c\"");
  JsonlReader r(f);
  nlohmann::json j;
  std::vector<std::string> got;
  while (r.next(j)) got.push_back(j["text"]);
  EXPECT_EQ(got, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(r.malformed(), 3u);  // "{not json", "[1,2]" (not an object), truncated last line
  EXPECT_EQ(r.line_number(), 6u);
}

TEST(DocumentStream, ReadsPretrainSftAndPlainText) {
  TempDir dir;
  write_file_atomic(dir.path + "/p.jsonl", "{\"text\": \"one\"}\n{\"other\": 1}\n");
  write_file_atomic(dir.path + "/s.jsonl",
                    R"({"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})"
                    "\n");
  write_file_atomic(dir.path + "/t.txt", "line1\n\nline2\n");
  DocumentStream s({dir.path + "/p.jsonl", dir.path + "/s.jsonl", dir.path + "/t.txt"});
  std::vector<std::string> got;
  std::string t;
  while (s.next(t)) got.push_back(t);
  EXPECT_EQ(got, (std::vector<std::string>{"one", "q", "a", "line1", "line2"}));
  EXPECT_EQ(s.malformed(), 1u);  // {"other": 1} has no text
  EXPECT_EQ(s.documents(), 4u);
  EXPECT_EQ(s.bytes_read(), s.total_bytes());
}

TEST(DocumentStream, MissingFileIsAClearError) {
  EXPECT_ERROR_MENTIONS(DocumentStream({"/nonexistent/x.jsonl"}), "/nonexistent/x.jsonl");
}

TEST(Conversation, RolesAndErrors) {
  auto msgs = record_conversation(nlohmann::json::parse(
      R"({"conversations": [{"role": "system", "content": "s"}, {"content": "u"}]})"));
  ASSERT_EQ(msgs.size(), 2u);
  EXPECT_EQ(msgs[0].role, "system");
  EXPECT_EQ(msgs[1].role, "assistant");  // minimind's role-less files alternate
  EXPECT_THROW(record_conversation(nlohmann::json::parse(R"({"conversations": [{"role": "user"}]})")), Error);
  EXPECT_THROW(record_texts(nlohmann::json::parse(R"({"text": 3})")), Error);
}
