#include "host/metrics/metrics-server.h"

namespace payhost::host {

namespace {

kj::Promise<void> reply(kj::HttpService::Response& response, const kj::HttpHeaderTable& table,
                        unsigned status, kj::StringPtr statusText, kj::StringPtr contentType,
                        kj::String body, bool head) {
  kj::HttpHeaders headers(table);
  headers.set(kj::HttpHeaderId::CONTENT_TYPE, contentType);
  auto stream = response.send(status, statusText, headers, body.size());
  if (head) return kj::READY_NOW;
  auto& out = *stream;
  auto bytes = body.asBytes();
  return out.write(bytes.begin(), bytes.size()).attach(kj::mv(stream), kj::mv(body));
}

constexpr kj::StringPtr TEXT = "text/plain; charset=utf-8"_kj;
// The content type Prometheus expects for the text format.
constexpr kj::StringPtr EXPOSITION = "text/plain; version=0.0.4; charset=utf-8"_kj;

}  // namespace

MetricsServer::MetricsServer(kj::Timer& timer, MetricsSource& source)
    : source(source), server(timer, headerTable, *this) {}

MetricsServer::~MetricsServer() noexcept(false) = default;

kj::Promise<void> MetricsServer::listen(kj::ConnectionReceiver& receiver) {
  return server.listenHttp(receiver);
}

kj::Promise<void> MetricsServer::request(kj::HttpMethod method, kj::StringPtr url,
                                         const kj::HttpHeaders&, kj::AsyncInputStream&,
                                         Response& response) {
  bool head = method == kj::HttpMethod::HEAD;
  if (method != kj::HttpMethod::GET && !head) {
    return reply(response, headerTable, 405, "Method Not Allowed", TEXT,
                 kj::str("only GET and HEAD\n"), false);
  }
  // The query string, if any, is ignored.
  kj::StringPtr path = url;
  kj::String withoutQuery;
  KJ_IF_MAYBE (question, url.findFirst('?')) {
    withoutQuery = kj::heapString(url.slice(0, *question));
    path = withoutQuery;
  }
  if (path == "/metrics") {
    return reply(response, headerTable, 200, "OK", EXPOSITION, source.render(), head);
  }
  if (path == "/healthz") {
    return reply(response, headerTable, 200, "OK", TEXT, kj::str("ok\n"), head);
  }
  if (path == "/readyz") {
    KJ_IF_MAYBE (reason, source.notReady()) {
      return reply(response, headerTable, 503, "Service Unavailable", TEXT,
                   kj::str("not ready: ", *reason, "\n"), head);
    }
    return reply(response, headerTable, 200, "OK", TEXT, kj::str("ready\n"), head);
  }
  return reply(response, headerTable, 404, "Not Found", TEXT,
               kj::str("not found; try /metrics, /healthz or /readyz\n"), head);
}

}  // namespace payhost::host
