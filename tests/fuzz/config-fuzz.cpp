// libFuzzer target: payhostd's config parser (host/config) on arbitrary text. A bad file must be
// refused with a kj::Exception; anything else (a crash, a sanitizer report, another exception
// type escaping) is a finding.
#include "host/config/daemon-config.h"

#include <kj/exception.h>

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto text = kj::heapString(reinterpret_cast<const char*>(data), size);
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 auto config = payhost::host::parseDaemonConfig(text, "/fuzz/payhostd.toml", 4);
                 (void)config;
               })) {
    (void)e;
  }
  return 0;
}
