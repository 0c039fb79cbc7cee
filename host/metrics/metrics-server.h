// The metrics endpoint: a small HTTP/1.1 server (kj-http) on the control thread's event loop.
//   GET /metrics  the Prometheus text exposition of what `source.render()` returns
//   GET /healthz  200 "ok" whenever the process answers
//   GET /readyz   200 "ready" when `source.notReady()` is null, else 503 with its reason
// Anything else is 404; methods other than GET and HEAD are 405.
//
// Control thread only. `source`, `timer` and the receiver outlive the server.

#pragma once

#include <kj/async-io.h>
#include <kj/compat/http.h>
#include <kj/string.h>

namespace payhost::host {

// What the endpoint serves; called on the control thread at each request.
class MetricsSource {
public:
  virtual ~MetricsSource() noexcept(false) = default;
  // The whole exposition text.
  virtual kj::String render() = 0;
  // Why the host is not ready to take traffic, or null when it is.
  virtual kj::Maybe<kj::String> notReady() = 0;
};

class MetricsServer final : private kj::HttpService {
public:
  MetricsServer(kj::Timer& timer, MetricsSource& source);
  ~MetricsServer() noexcept(false);
  KJ_DISALLOW_COPY(MetricsServer);

  // Serves connections from `receiver` until the promise is dropped.
  [[nodiscard]] kj::Promise<void> listen(kj::ConnectionReceiver& receiver);

private:
  kj::Promise<void> request(kj::HttpMethod method, kj::StringPtr url,
                            const kj::HttpHeaders& headers, kj::AsyncInputStream& requestBody,
                            Response& response) override;

  MetricsSource& source;
  kj::HttpHeaderTable headerTable;
  kj::HttpServer server;
};

}  // namespace payhost::host
