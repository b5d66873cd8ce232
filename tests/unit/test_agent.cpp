// The CodeAct loop with a scripted model: code extraction, the turn loop, observations.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>

#include "llmctl/agent/codeact.h"

using namespace llmctl::agent;

TEST(CodeAct, ExtractsPythonBlocksInOrder) {
  const std::string a =
      "First:\n```python\nx = 1\n```\nthen shell (not run):\n```bash\nls\n```\n"
      "and plain:\n```\nprint(x)\n```\n  ```py\n  y = 2\n  ```\n";
  const auto b = extract_code_blocks(a);
  ASSERT_EQ(b.size(), 3u);
  EXPECT_EQ(b[0], "x = 1\n");
  EXPECT_EQ(b[1], "print(x)\n");
  EXPECT_EQ(b[2], "  y = 2\n");
  EXPECT_TRUE(extract_code_blocks("No code here. Answer: 4").empty());
  EXPECT_TRUE(extract_code_blocks("```python\n\n```").empty());
  // Cut off by the token limit: still the model's code.
  EXPECT_EQ(extract_code_blocks("```python\nprint(1)\n"), std::vector<std::string>{"print(1)\n"});
  // M3ToolEval's tags, bare or around a fence.
  EXPECT_EQ(extract_code_blocks("<execute>\nprint(2)\n</execute> and <execute>```python\nprint(3)\n```</execute>"),
            (std::vector<std::string>{"\nprint(2)\n", "print(3)\n"}));
}

TEST(CodeAct, SystemPromptCarriesToolStubs) {
  const auto p = codeact_system_prompt("def f(x):\n    \"\"\"Doubles.\"\"\"\n");
  EXPECT_NE(p.find("```python"), std::string::npos);
  EXPECT_NE(p.find("def f(x):"), std::string::npos);
  EXPECT_NE(p.find("Answer:"), std::string::npos);
  EXPECT_EQ(codeact_system_prompt("").find("already defined"), std::string::npos);
}

namespace {

class ScriptedModel : public ChatBackend {
 public:
  explicit ScriptedModel(std::vector<std::string> replies) : replies_(std::move(replies)) {}
  std::string complete(const std::vector<llmctl::Message>& messages,
                       const std::function<void(const std::string&)>& on_delta) override {
    seen.push_back(messages);
    const auto r = next_ < replies_.size() ? replies_[next_++] : std::string("Answer: done");
    on_delta(r);
    return r;
  }
  std::string name() const override { return "scripted"; }
  std::vector<std::vector<llmctl::Message>> seen;

 private:
  std::vector<std::string> replies_;
  std::size_t next_ = 0;
};

SandboxConfig loop_config() {
  SandboxConfig c;
  c.timeout_s = 5;
  std::string why;
  c.unsafe_no_sandbox = !Sandbox::bubblewrap_usable(c, &why);
  return c;
}

}  // namespace

TEST(CodeAct, LoopRunsCodeFeedsOutputBackAndStopsAtTheAnswer) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/python3";
  Sandbox sb(loop_config());
  ScriptedModel model({"```python\nv = 6 * 7\nprint(v)\n```", "```python\nprint(1/0)\n```\n```python\nprint('never')\n```",
                       "The value is 42.\nAnswer: 42"});
  Agent agent(model, sb, codeact_system_prompt(""), 10);
  std::string streamed;
  int turns_seen = 0;
  AgentHooks hooks;
  hooks.on_delta = [&](const std::string& d) { streamed += d; };
  hooks.on_turn = [&](const TurnRecord&) { ++turns_seen; };
  const auto r = agent.run("compute", hooks);
  EXPECT_EQ(r.finish, "answer");
  EXPECT_EQ(r.final_text, "The value is 42.\nAnswer: 42");
  ASSERT_EQ(r.turns.size(), 3u);
  EXPECT_EQ(turns_seen, 3);
  EXPECT_EQ(r.turns[0].status, "ok");
  EXPECT_EQ(r.turns[1].status, "error");
  EXPECT_NE(r.turns[1].output.find("ZeroDivisionError"), std::string::npos);
  EXPECT_NE(r.turns[1].output.find("not run after the error"), std::string::npos);
  EXPECT_EQ(r.turns[1].output.find("never"), std::string::npos);
  EXPECT_NE(streamed.find("Answer: 42"), std::string::npos);
  // The model saw: system, task; then its code and the output "42".
  ASSERT_EQ(model.seen.size(), 3u);
  EXPECT_EQ(model.seen[0].size(), 2u);
  EXPECT_EQ(model.seen[1].back().role, "user");
  EXPECT_EQ(model.seen[1].back().content, "Execution output:\n```\n42\n```");
  // The interpreter keeps v for the next task in the same session; /reset forgets both.
  ScriptedModel again({"```python\nprint(v + 1)\n```", "Answer: 43"});
  Agent a2(again, sb, "", 3);
  EXPECT_NE(a2.run("more").turns[0].output.find("43"), std::string::npos);
}

TEST(CodeAct, MaxTurnsEndsALoopingModel) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/python3";
  Sandbox sb(loop_config());
  ScriptedModel model(std::vector<std::string>(10, "```python\nprint('again')\n```"));
  Agent agent(model, sb, "", 3);
  const auto r = agent.run("loop");
  EXPECT_EQ(r.finish, "max_turns");
  EXPECT_EQ(r.turns.size(), 3u);
  agent.reset();
  EXPECT_EQ(agent.messages().size(), 0u);
}

TEST(CodeAct, CtrlCDuringAReplyEndsTheTaskWithoutRunningItsCode) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/python3";
  std::atomic<bool> interrupt{false};
  Sandbox sb(loop_config());
  // The user presses Ctrl-C while this reply streams: its code must not run.
  class Interrupted : public ChatBackend {
   public:
    explicit Interrupted(std::atomic<bool>& f) : flag_(f) {}
    std::string complete(const std::vector<llmctl::Message>&, const std::function<void(const std::string&)>&) override {
      flag_ = true;
      return "```python\nopen('ran.txt', 'w').write('x')\n```";
    }
    std::string name() const override { return "interrupted"; }

   private:
    std::atomic<bool>& flag_;
  } model(interrupt);
  Agent agent(model, sb, "", 5, &interrupt);
  const auto r = agent.run("task");
  EXPECT_EQ(r.finish, "interrupted");
  ASSERT_EQ(r.turns.size(), 1u);
  EXPECT_EQ(r.turns[0].status, "interrupted");
  EXPECT_TRUE(r.turns[0].code.empty());
  EXPECT_NE(access((sb.workdir() + "/ran.txt").c_str(), F_OK), 0);
}
