#include "llmctl/serve/openai_client.h"

#include <httplib.h>

#include <nlohmann/json.hpp>

#include "llmctl/util/error.h"

namespace llmctl::serve {

using json = nlohmann::json;

std::string normalize_endpoint(std::string url, const std::string& flag) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  if (url.size() >= 3 && url.compare(url.size() - 3, 3, "/v1") == 0) url.resize(url.size() - 3);
  if (url.rfind("http://", 0) != 0) throw Error(flag + " must be an http:// URL, got '" + url + "'");
  return url;
}

struct OpenAIClient::Impl {
  httplib::Client http;
  explicit Impl(const std::string& url) : http(url) {}
};

OpenAIClient::OpenAIClient(const std::string& endpoint, std::string api_key, double timeout_s)
    : endpoint_(normalize_endpoint(endpoint)), api_key_(std::move(api_key)) {
  impl_ = std::make_unique<Impl>(endpoint_);
  const auto secs = static_cast<time_t>(timeout_s);
  impl_->http.set_read_timeout(secs, 0);
  impl_->http.set_write_timeout(secs, 0);
  impl_->http.set_keep_alive(false);  // a fresh connection per request: no stale keep-alive sockets
  impl_->http.set_tcp_nodelay(true);
}

OpenAIClient::~OpenAIClient() = default;

namespace {
httplib::Headers auth_headers(const std::string& api_key) {
  httplib::Headers h;
  if (!api_key.empty()) h.emplace("Authorization", "Bearer " + api_key);
  return h;
}
}  // namespace

std::string OpenAIClient::first_model() {
  auto res = impl_->http.Get("/v1/models", auth_headers(api_key_));
  if (!res) throw Error("cannot reach " + endpoint_ + ": " + httplib::to_string(res.error()));
  if (res->status != 200) throw Error("GET /v1/models answered " + std::to_string(res->status) + ": " + res->body);
  try {
    return json::parse(res->body).at("data").at(0).at("id").get<std::string>();
  } catch (const std::exception&) {
    throw Error("GET /v1/models: no model in " + res->body.substr(0, 200));
  }
}

OpenAIClient::StreamEnd OpenAIClient::stream(const std::string& path, const json& body,
                                             const std::function<bool(const json&)>& on_event) {
  StreamEnd end;
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.headers = auth_headers(api_key_);
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  std::string buf, error_body;
  bool done = false, stopped = false;
  req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
    buf.append(data, n);
    // An error answer is one JSON body, not events: keep it for the message.
    if (buf.size() < 4096 && buf.find("data:") == std::string::npos) error_body = buf;
    std::size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.rfind("data:", 0) != 0) continue;  // comments (keep-alives), event names, blank lines
      std::string payload = line.substr(5);
      if (!payload.empty() && payload.front() == ' ') payload.erase(0, 1);
      if (payload == "[DONE]") {
        done = true;
        continue;
      }
      json ev = json::parse(payload, nullptr, false);
      if (ev.is_discarded()) continue;
      if (!on_event(ev)) {
        stopped = true;
        return false;
      }
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  const bool sent = impl_->http.send(req, res, err);
  if (stopped) return end;
  if (!sent && res.status <= 0) end.error = "cannot reach " + endpoint_ + ": " + httplib::to_string(err);
  else if (res.status != 200) end.error = "HTTP " + std::to_string(res.status) + " " + (error_body + res.body).substr(0, 300);
  else if (!done) end.error = "the stream ended without [DONE]";
  return end;
}

}  // namespace llmctl::serve
