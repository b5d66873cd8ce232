// llmctl tokenize: encode text or decode ids, for inspection.
#include "common.h"
#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/util/error.h"

namespace llmctl::cli {

void add_tokenize(CLI::App& app) {
  struct Opts {
    std::string tokenizer, text, ids;
    bool json = false, no_special = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("tokenize", "Encode text to token ids, or decode ids to text");
  sub->add_option("--tokenizer", o->tokenizer, "Tokenizer or model directory (or a .model file)")->required();
  auto* text = sub->add_option("--text", o->text, "Text to encode");
  auto* ids = sub->add_option("--ids", o->ids, "Comma-separated token ids to decode, e.g. 1,2,3");
  text->excludes(ids);
  sub->add_flag("--no-special", o->no_special,
                "Encode special-token strings like <|im_start|> as plain text; drop them when decoding");
  sub->add_flag("--json", o->json, "Print ids, pieces and text as JSON");
  sub->callback([o, text, ids] {
    if (!*text && !*ids) throw Error("tokenize: give --text or --ids");
    auto tok = Tokenizer::load(o->tokenizer);
    std::vector<int> v = *text ? tok.encode(o->text, !o->no_special) : parse_id_list(o->ids, "--ids");
    std::string decoded = tok.decode(v, *ids && o->no_special);
    std::vector<std::string> pieces;
    for (int id : v) pieces.push_back(tok.id_to_piece(id));
    if (o->json) {
      print_json({{"ids", v}, {"pieces", pieces}, {"text", decoded}, {"count", v.size()}});
    } else if (*text) {
      for (std::size_t i = 0; i < v.size(); ++i) std::printf("%s%d", i ? " " : "", v[i]);
      std::printf("\n");
    } else {
      std::printf("%s\n", decoded.c_str());
    }
  });
}

}  // namespace llmctl::cli
